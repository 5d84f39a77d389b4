"""A store in a local (or mounted) directory.

Every write goes to a fsynced temp file in the destination directory and is published
with a hard link, which fails if the name exists: a reader never sees a partial object,
two writers never both win, and a crash leaves at most a stale `.tmp-*` file that every
verb ignores."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat as stat_mod
from pathlib import Path
from typing import Any, Iterator, Sequence

from archiver.directio import DirectWriter
from archiver.errors import ObjectMissingError, StoreError, UsageError
from archiver.fileio import write_all as _write_all  # a module name, so tests can inject ENOSPC
from archiver.stores.base import NotAnObjectError, ObjectInfo, ObjectTooLargeError, ObjectVersion, ShortObjectError

TMP_PREFIX = ".tmp-"
OBJECT_MODE = 0o444  # objects are immutable; read-only files guard against accidents

# Errors a user can meet on a healthy machine; each gets a plain-words message.
_ERRNO_WORDS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only filesystem",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "I/O error",
    errno.ENOTDIR: "a parent path is an object, not a directory,",
}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_SYNC_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC  # a directory opened to fsync its entries
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC  # a temp file, never an existing one
# Reads never follow a symlink and never block on a FIFO (whose open would wait for a writer).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_KINDS = ((stat_mod.S_ISLNK, "a symlink"), (stat_mod.S_ISFIFO, "a FIFO"), (stat_mod.S_ISCHR, "a character device"),
          (stat_mod.S_ISBLK, "a block device"), (stat_mod.S_ISSOCK, "a socket"), (stat_mod.S_ISDIR, "a directory"))
# os.link fails with these where the filesystem has no hard links (exFAT, some FUSE/SMB).
_NO_LINK_ERRNOS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def validate_key(key: str, *, prefix: bool = False) -> str:
    """Reject keys that could escape the store root or alias another key, so the same
    key means the same object on every backend. A `prefix` may be empty or end in '/'."""
    if not isinstance(key, str):
        raise ValueError(f"store key must be a string, not {type(key).__name__}")
    if prefix and key == "":
        return key
    body = key[:-1] if prefix and key.endswith("/") else key
    if body == "":
        raise ValueError(f"invalid store key {key!r}: empty")
    if body.startswith("/"):
        raise ValueError(f"invalid store key {key!r}: must be relative (no leading '/')")
    if "\\" in body:
        raise ValueError(f"invalid store key {key!r}: backslash not allowed")
    if any(ord(c) < 0x20 or c == "\x7f" for c in body):
        raise ValueError(f"invalid store key {key!r}: control character not allowed")
    for segment in body.split("/"):
        if segment == "":
            raise ValueError(f"invalid store key {key!r}: empty path segment")
        if segment in (".", ".."):
            raise ValueError(f"invalid store key {key!r}: '{segment}' segment not allowed")
        if segment.startswith(TMP_PREFIX):
            raise ValueError(f"invalid store key {key!r}: '{TMP_PREFIX}*' names are reserved")
    return key


def _file_kind(mode: int) -> str:
    return next((words for test, words in _KINDS if test(mode)), "of an unknown file type")


def _fsync_dir(path: Path) -> None:
    """Make a directory entry (a new file or subdirectory name) durable."""
    fd = os.open(path, _SYNC_DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(final: Path) -> Path:
    """A fresh temp name in `final`'s directory, linked to `final` once written and durable."""
    return final.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}"


def _remove_quietly(path: Path) -> None:
    """Best-effort temp cleanup: a stale .tmp-* file is harmless and must never mask
    the real outcome of a write."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """Atomic rename that refuses to replace `dst` (Linux renameat2), for filesystems
    without hard links. True if renamed, False if `dst` exists."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        raise OSError(errno.ENOTSUP, "no renameat2 on this platform") from None
    at_fdcwd, rename_noreplace = -100, 1
    rc = renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _version(st: os.stat_result) -> ObjectVersion:
    """A file's identity: a rename or link keeps it (ctime would not), a rewrite changes it."""
    return ObjectVersion(size=st.st_size, tag=f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")


class LocalStore:
    """Store rooted at a directory; keys map to relative paths under it."""

    can_replace_damaged = True
    supports_object_lock = False  # no Object Lock, no storage classes: a write policy is refused
    supports_storage_classes = False
    supports_ranges = True  # get_range: pread of a regular file

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        self._direct = DirectWriter()  # big objects bypass the page cache (archiver/directio.py)

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _error(self, exc: OSError, doing: str, key: str) -> StoreError:
        words = _ERRNO_WORDS.get(exc.errno or 0) or exc.strerror or str(exc)
        return StoreError(f"{words} {doing} {key} {'to' if doing == 'writing' else 'in'} {self.root}")

    def _make_dirs(self, directory: Path) -> None:
        """Create missing directories top-down, fsyncing each parent so the new
        entries survive a power cut together with the object written into them."""
        missing: list[Path] = []
        d = directory
        while not d.is_dir():
            missing.append(d)
            if d.parent == d:
                break
            d = d.parent
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not d.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(d)) from None
                continue
            _fsync_dir(d.parent)

    def put_if_absent(self, key: str, data: bytes, policy: Any = None) -> bool:
        """Write atomically and durably; False if the key already exists. A directory can
        neither lock an object nor tier it: a `policy` is refused before anything is written."""
        return self.put_parts_if_absent(key, (data,), policy)

    def put_parts_if_absent(self, key: str, parts: Sequence[bytes | memoryview], policy: Any = None) -> bool:
        """`put_if_absent` of the object made of `parts` in order, written piece by piece into
        the same temp file (no joined copy of the object first: codecs.Codec.encode_parts);
        just as atomic and durable: the name appears, by link, only after the whole file is
        written and fsynced."""
        if policy is not None:
            raise UsageError(f"{self.url} is a local directory: it cannot lock objects or keep them in a storage "
                             f"class (use an S3 bucket with Object Lock)")
        final = self._path(key)
        if os.path.lexists(final):
            return False
        tmp: Path | None = None
        try:
            self._make_dirs(final.parent)
            tmp = _temp_beside(final)
            size = sum(memoryview(part).nbytes for part in parts)
            fd, direct = self._direct.open(tmp, _NEW_FLAGS, OBJECT_MODE, size)
            try:
                if direct:
                    self._direct.write(fd, parts, direct)
                else:
                    for part in parts:
                        _write_all(fd, part)
                os.fsync(fd)
            finally:
                os.close(fd)
            created = self._publish(tmp, final)
            _remove_quietly(tmp)  # already gone if the no-link fallback renamed it
            tmp = None
            if created:
                _fsync_dir(final.parent)  # makes the new name (and the tmp removal) durable
            return created
        except OSError as exc:
            raise self._error(exc, "writing", key) from exc
        finally:
            if tmp is not None:
                _remove_quietly(tmp)

    def put_many_if_absent(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """`put_if_absent` of each (key, data), as atomic and durable, with durability
        reached once per batch instead of once per object (issue 15: an fsync per small
        object and per directory costs more CPU than writing it): every temp file is written,
        then all are made durable together (`fileio.sync_together`: one syncfs where it is
        durable, else an fsync each), only then linked under their names, and the
        directories of the new names made durable together the same way. Returns, per
        item, True if this call created it, False if the key already existed."""
        from archiver.fileio import sync_together  # not at import: ctypes' libc look-up is lazy there
        created = [False] * len(items)
        staged: list[tuple[int, Path, Path, int]] = []  # (item index, tmp, final, open fd)
        published = 0  # staged[:published] are linked and their temp names removed
        doing = ""  # the key being written or published, for the error
        try:
            try:
                for i, (key, data) in enumerate(items):
                    doing = key
                    final = self._path(key)
                    if os.path.lexists(final):
                        continue
                    self._make_dirs(final.parent)
                    tmp = _temp_beside(final)
                    fd = os.open(tmp, _NEW_FLAGS, OBJECT_MODE)
                    staged.append((i, tmp, final, fd))
                    _write_all(fd, data)
                sync_together([fd for _, _, _, fd in staged])
            except OSError as exc:
                raise self._error(exc, "writing", doing) from exc
            dirs: dict[Path, int] = {}
            try:
                for i, tmp, final, _ in staged:
                    doing = items[i][0]
                    created[i] = self._publish(tmp, final)
                    _remove_quietly(tmp)  # already gone if the no-link fallback renamed it
                    published += 1
                    if created[i] and final.parent not in dirs:
                        dirs[final.parent] = os.open(final.parent, _SYNC_DIR_FLAGS)
                sync_together(list(dirs.values()))  # the new names (and the temp removals) durable
            except OSError as exc:
                raise self._error(exc, "writing", doing) from exc
            finally:
                for dfd in dirs.values():
                    os.close(dfd)
            return created
        finally:
            for n, (_, tmp, _, fd) in enumerate(staged):
                try:
                    os.close(fd)
                except OSError:
                    pass
                if n >= published:  # not linked: its temp name is all there is of it
                    _remove_quietly(tmp)

    def _publish(self, tmp: Path, final: Path) -> bool:
        try:
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
        try:
            return _rename_noreplace(tmp, final)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise StoreError(
                    f"filesystem at {self.root} supports neither hard links nor no-replace "
                    "rename; cannot write objects atomically there"
                ) from exc
            raise

    def _open_object(self, key: str) -> int:
        """An fd of the regular file under `key`, opened without following a symlink at
        any level below the root and without blocking (O_NONBLOCK: opening a FIFO for
        reading would otherwise wait forever for a writer). Raises ObjectMissingError if
        absent (a directory is not an object either), NotAnObjectError for a symlink,
        FIFO, device or socket, and OSError for anything else."""
        parts = validate_key(key).split("/")
        try:
            dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectMissingError(key) from None
        fd = -1
        try:
            for name in parts[:-1]:
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                except OSError as exc:
                    self._refuse_entry(exc, dfd, name, key)
                    raise
                dfd, parent = nfd, dfd  # held first: a Ctrl-C before the close must not close the parent twice
                os.close(parent)
            try:
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dfd)
            except OSError as exc:
                self._refuse_entry(exc, dfd, parts[-1], key)
                raise
        finally:
            try:
                os.close(dfd)
            except BaseException:  # a Ctrl-C just after it: the object's fd is not the caller's yet
                if fd >= 0:
                    os.close(fd)
                raise
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise ObjectMissingError(key)
            if not stat_mod.S_ISREG(st.st_mode):
                raise NotAnObjectError(key, str(self.root), _file_kind(st.st_mode))
            os.set_blocking(fd, True)  # a regular file: O_NONBLOCK has done its job
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _refuse_entry(self, exc: OSError, dfd: int, name: str, key: str) -> None:
        """Turn a failed open of one path component into the store's answer: missing,
        or not an object (a symlink, or a socket, which open() cannot read)."""
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EOPNOTSUPP):
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                st = None
            if st is not None and not stat_mod.S_ISREG(st.st_mode) and not stat_mod.S_ISDIR(st.st_mode):
                raise NotAnObjectError(key, str(self.root), _file_kind(st.st_mode)) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ObjectMissingError(key) from None

    def get(self, key: str, max_size: int | None = None) -> bytes:
        """Whole object; ObjectMissingError if absent. Only a regular file is read (never
        through a symlink), and with `max_size` only if its size is within it."""
        with self._reading(key) as (fd, size):
            if max_size is not None and size > max_size:
                raise ObjectTooLargeError(key, str(self.root), size, max_size)
            with open(fd, "rb", closefd=False) as f:
                if max_size is None:
                    return f.read()
                data = f.read(size + 1)  # one more byte than fstat said: EOF, or it grew
                if len(data) > size and len(data) <= max_size:
                    data += f.read(max_size + 1 - len(data))
            if len(data) > max_size:
                raise ObjectTooLargeError(key, str(self.root), len(data), max_size)
            return data

    @contextlib.contextmanager
    def _reading(self, key: str) -> Iterator[tuple[int, int]]:
        """(fd, size) of the object opened for reading (a regular file, never through a
        symlink); OS errors on the way become store errors naming the key; closed after."""
        try:
            fd = self._open_object(key)
        except OSError as exc:
            raise self._error(exc, "reading", key) from exc
        try:
            yield fd, os.fstat(fd).st_size
        except OSError as exc:
            raise self._error(exc, "reading", key) from exc
        finally:
            os.close(fd)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of the object (pread; the same refusals as `get`)."""
        if start < 0 or length < 0:
            raise ValueError(f"invalid range {start}+{length}")
        with self._reading(key) as (fd, size):
            if start + length > size:
                raise ShortObjectError(key, str(self.root), size, start + length)
            parts: list[bytes] = []
            got = 0
            while got < length:
                piece = os.pread(fd, length - got, start + got)
                if not piece:
                    raise ShortObjectError(key, str(self.root), start + got, start + length)
                parts.append(piece)
                got += len(piece)
            return b"".join(parts)

    def stat(self, key: str) -> ObjectInfo | None:
        """Size of one object, or None if absent; a directory, symlink, FIFO, device or
        socket is not an object (so `get` would refuse it) and counts as absent."""
        try:
            fd = self._open_object(key)
        except (ObjectMissingError, NotAnObjectError):
            return None
        except OSError as exc:
            raise self._error(exc, "reading", key) from exc
        try:
            return ObjectInfo(key=key, size=os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in the same byte order S3 uses,
        streamed directory by directory (never the whole store in memory)."""
        validate_key(prefix, prefix=True)  # now, not at the first next()
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Start at the deepest directory the prefix fully names.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base.split("/")) if base else self.root
        try:
            yield from self._walk(start, f"{base}/" if base else "", prefix)
        except OSError as exc:
            raise self._error(exc, "listing", prefix or "/") from exc

    def _walk(self, directory: Path, rel: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        items: list[tuple[str, os.DirEntry[str], bool]] = []
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX):
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            # A directory sorts as "name/" so the walk matches global key order.
            items.append((entry.name + "/" if is_dir else entry.name, entry, is_dir))
        items.sort(key=lambda item: item[0])
        for sort_name, entry, is_dir in items:
            key = rel + sort_name
            if is_dir:
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif key.startswith(prefix) and entry.is_file(follow_symlinks=False):
                yield ObjectInfo(key=key, size=entry.stat(follow_symlinks=False).st_size)

    # -- repair (the one exception to "never overwritten"; see RepairableStore) --------------

    def get_versioned(self, key: str, max_size: int) -> tuple[bytes | None, ObjectVersion]:
        """The object and the identity of the file it was read from (fstat of the open
        file, so the two always match); None for the bytes if larger than `max_size`, or if
        what sits under the key is not a regular file (a FIFO, device or symlink: damage,
        never read, and replaceable like any damaged object)."""
        try:
            fd = self._open_object(key)
        except NotAnObjectError:
            try:
                return None, _version(os.lstat(self._path(key)))
            except FileNotFoundError:
                raise ObjectMissingError(key) from None
        except OSError as exc:
            raise self._error(exc, "reading", key) from exc
        try:
            st = os.fstat(fd)
            version = _version(st)
            if st.st_size > max_size:
                return None, version
            with open(fd, "rb", closefd=False) as f:
                data = f.read(max_size + 1)
            return (None if len(data) > max_size else data), version
        except OSError as exc:
            raise self._error(exc, "reading", key) from exc
        finally:
            os.close(fd)

    def replace_damaged(self, key: str, data: bytes, expected: ObjectVersion, quarantine_key: str) -> bool:
        """Move the damaged file to `quarantine_key` (a rename: never deleted, never half
        copied), then publish `data` with put_if_absent (True, even if a concurrent writer
        published first). If the file at `key` is no longer `expected` (another writer
        repaired or replaced it), nothing is replaced: whatever was moved aside by mistake
        is put back and False is returned. Between the move and the publish a reader can
        find the key absent for an instant (the archiver then writes it, verify reports it
        missing); it never sees a partial object."""
        final, aside = self._path(key), self._path(quarantine_key)
        try:
            st = os.lstat(final)  # the entry itself: a planted symlink is quarantined, not followed
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._error(exc, "reading", key) from exc
        if _version(st) != expected:
            return False
        try:
            self._make_dirs(aside.parent)
            if not self._move_noreplace(final, aside):
                raise StoreError(f"quarantine name {quarantine_key} already exists in {self.root}")
            moved = os.lstat(aside)
            if _version(moved) != expected:  # replaced between our stat and the move
                self._put_back(aside, final)
                return False
            _fsync_dir(aside.parent)
            _fsync_dir(final.parent)
        except FileNotFoundError:
            return False  # gone between the stat and the move: someone else moved it
        except OSError as exc:
            raise self._error(exc, "quarantining", key) from exc
        self.put_if_absent(key, data)
        return True

    @staticmethod
    def _move_noreplace(src: Path, dst: Path) -> bool:
        """Atomic rename that never replaces `dst` (False if it exists). A rename moves
        exactly the file that is there, so no concurrent writer's file can be unlinked."""
        try:
            return _rename_noreplace(src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        if os.path.lexists(dst):  # no renameat2 here; the quarantine name is unique anyway
            return False
        os.rename(src, dst)
        return True

    def _put_back(self, aside: Path, final: Path) -> None:
        """Undo a move that took the wrong object: publish it again under its key unless the
        key was filled meanwhile, in which case it stays in quarantine (kept, not deleted)."""
        if self._publish(aside, final):
            _remove_quietly(aside)  # a second name of the same file (or already renamed away)
            _fsync_dir(final.parent)
