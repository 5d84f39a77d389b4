"""Turn the PATHs given to `archive` into the list of entries to store, and open them again
later as exactly the files that were scanned.

Each PATH contributes its own name as the top-level entry (a directory `ckpt/` becomes
`ckpt/...`), like `tar` and borg with relative paths. Special files are refused rather than
silently skipped: an archive must say exactly what it holds. A symlink is recorded as a
symlink (its target, never followed), unless `dereference` asks for the regular file it
names, or it lies in a Hugging Face cache snapshot and names a blob (archiver.hfcache).
A followed link's target is opened and must be the inode (st_dev, st_ino) the scan saw. Paths that could not be restored safely everywhere are refused up front.

The tree may belong to someone else (root archiving a user-writable directory), so a path
is never trusted twice: every directory is listed through a descriptor opened without
following symlinks and checked to be the inode the scan saw, and `open_source` reaches a
file the same way, one component at a time from its PATH, refusing anything that is not
the very regular file (st_dev, st_ino) scanned. A file swapped for a symlink, a FIFO or
another file after the scan is refused, never read."""
from __future__ import annotations

import errno
import os
import resource
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from archiver.errors import ArchiverError, NotFoundError, RefusedSourceError, SourceChangedError, UsageError
from archiver.hfcache import Snapshot, in_blobs, snapshot_of
from manifests.errors import UnsafePathError
from manifests.paths import check_link, check_paths

# O_NONBLOCK: opening a FIFO (or a device) swapped in after the scan must not block; the
# fstat that follows refuses it. O_NOCTTY: a terminal swapped in must not become ours.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


@dataclass(frozen=True)
class Source:
    path: str          # archive path ('/'-separated, relative)
    abspath: Path
    is_dir: bool
    size: int
    mode: int
    dev: int           # identity seen by the scan: what is read later must be this inode
    ino: int
    parent: Source | None = field(default=None, repr=False)  # containing directory; None for a PATH
    mtime_ns: int | None = None  # directories: recorded so restore can set it back (files re-stat when read)
    link: str | None = None  # a symlink recorded as such: its target (never followed)
    followed: bool = False   # a symlink followed to a regular file: dev/ino/size/mode are the target's
    blob: str | None = None  # followed into a Hugging Face cache's blobs/: the blob's name
    # (dev, ino, size, mtime_ns, ctime_ns) the scan saw (of a followed link's target): what the
    # files cache compares, taken before any read, so no second stat of each file is needed
    seen: tuple[int, int, int, int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def is_link(self) -> bool:
        return self.link is not None


def changed(path: Path | str, what: str) -> SourceChangedError:
    """The one message for a source that is not what the scan saw, or moved while being read."""
    return SourceChangedError(f"{path} changed while it was being archived ({what}); nothing was recorded, re-run")


def _lstat(p: Path, name: str | None = None, dir_fd: int | None = None) -> os.stat_result:
    try:
        return os.stat(p if name is None else name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise NotFoundError(f"no such file or directory: {p}") from None
    except OSError as e:
        raise ArchiverError(f"cannot read {p}: {e.strerror}") from None


def _classify(p: Path, st: os.stat_result) -> os.stat_result:
    if stat.S_ISLNK(st.st_mode):
        raise RefusedSourceError(str(p), "archive its target instead", "symlink")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise RefusedSourceError(str(p), "only regular files and directories are archived", "special file")
    return st


def _name(p: Path) -> str:
    try:
        p.name.encode("utf-8")
    except UnicodeEncodeError:
        raise RefusedSourceError(str(p), "file name is not valid UTF-8") from None
    return p.name


# A listed name joined to its directory without pathlib parsing it again (each name came
# from listdir: one component, no separator); plain joining where the private helper is gone.
_make_child = getattr(Path, "_make_child_relpath", None)


def _child(d: Path, n: str) -> Path:
    return _make_child(d, n) if _make_child is not None else d / n


def child(d: Path, n: str) -> Path:
    """`d / n` as the scan makes its entries' paths (procfiles rebuilds a job's Sources with it)."""
    return _make_child(d, n) if _make_child is not None else d / n


def _entry_name(n: str, p: Path) -> str:
    """`_name(p)` for a name read from p's directory (n == p.name), without pathlib."""
    try:
        n.encode("utf-8")
    except UnicodeEncodeError:
        raise RefusedSourceError(str(p), "file name is not valid UTF-8") from None
    return n


_new = object.__new__


def _plain(path: str, p: Path, is_dir: bool, size: int, mode: int, dev: int, ino: int, parent: Source | None,
           mtime_ns: int | None, seen: tuple[int, int, int, int, int] | None) -> Source:
    """`Source(...)` of a directory or regular file (no link), its fields set in its `__dict__` in
    field order: a frozen dataclass's `__init__` sets them one `object.__setattr__` at a time,
    once per entry of the tree on the scan's single core (equal to `Source(...)`: tested)."""
    src = _new(Source)
    src.__dict__.update(path=path, abspath=p, is_dir=is_dir, size=size, mode=mode, dev=dev, ino=ino, parent=parent,
                        mtime_ns=mtime_ns, link=None, followed=False, blob=None, seen=seen)
    return src


def _source(path: str, p: Path, st: os.stat_result, parent: Source | None, dir_fd: int | None = None) -> Source:
    is_dir = stat.S_ISDIR(st.st_mode)
    if is_dir:
        return _plain(path, p, True, 0, stat.S_IMODE(st.st_mode), st.st_dev, st.st_ino, parent, st.st_mtime_ns, None)
    _readable(p, dir_fd)
    return _plain(path, p, False, st.st_size, stat.S_IMODE(st.st_mode), st.st_dev, st.st_ino, parent, None,
                  _seen(st))


def _seen(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _link_source(path: str, p: Path, st: os.stat_result, parent: Source | None, dir_fd: int | None,
                 dereference: bool, snapshot: Snapshot | None) -> Source:
    """A symlink: followed to the regular file it names (with `dereference`, or into a
    Hugging Face snapshot's blobs/), else recorded as a symlink with its target."""
    name = str(p) if dir_fd is None else p.name
    try:
        target = os.readlink(name, dir_fd=dir_fd)
    except OSError as e:
        raise ArchiverError(f"cannot read symlink {p}: {e.strerror}") from None
    blob = in_blobs(snapshot, p.parent, target) if snapshot is not None else None
    if dereference or blob is not None:
        try:
            tst = os.stat(name, dir_fd=dir_fd, follow_symlinks=True)
        except OSError:
            tst = None  # dangling: recorded as the symlink it is
        if tst is not None and stat.S_ISREG(tst.st_mode):
            _readable(p)
            return Source(path, p, False, tst.st_size, stat.S_IMODE(tst.st_mode), tst.st_dev, tst.st_ino, parent,
                          followed=True, blob=blob, seen=_seen(tst))
    return Source(path, p, False, 0, stat.S_IMODE(st.st_mode), st.st_dev, st.st_ino, parent, link=target)


def scan(paths: list[str | os.PathLike], *, dereference: bool = False,
         on_dir: Callable[[list[Source]], None] | None = None) -> list[Source]:
    """Walk the inputs in a stable order; raise before anything is uploaded. Symlinks are
    recorded as symlinks, or followed to the regular file they name with `dereference` and,
    always, inside a Hugging Face cache snapshot (into its blobs/). `on_dir`: called with the
    sources found so far after each directory (archive starts its worker pool meanwhile:
    procfiles.PoolStarter)."""
    if not paths:
        raise UsageError("nothing to archive: give at least one PATH")
    out: list[Source] = []
    for raw in paths:
        p = Path(os.path.abspath(os.fspath(raw)))
        snapshot = snapshot_of(p)
        lst = _lstat(p)
        if stat.S_ISLNK(lst.st_mode):
            top = _link_source(_name(p) if p.name else "root", p, lst, None, None, dereference, snapshot)
        else:
            top = _source(_name(p) if p.name else "root", p, _classify(p, lst), None)
        out.append(top)
        stack = [top] if top.is_dir else []
        while stack:
            d = stack.pop()
            fd = open_source(d)  # the directory the scan saw, not whatever its path names now
            try:
                try:
                    names = sorted(os.listdir(fd))
                except OSError as e:
                    raise ArchiverError(f"cannot read directory {d.abspath}: {e.strerror}") from None
                for n in reversed(names):  # reversed + stack pop = sorted order overall
                    child = _child(d.abspath, n)
                    cst = _lstat(child, n, fd)
                    if stat.S_ISLNK(cst.st_mode):
                        src = _link_source(f"{d.path}/{_entry_name(n, child)}", child, cst, d, fd, dereference,
                                           snapshot)
                    else:
                        src = _source(f"{d.path}/{_entry_name(n, child)}", child, _classify(child, cst), d, fd)
                    out.append(src)
                    if src.is_dir:
                        stack.append(src)
            finally:
                os.close(fd)
            if on_dir is not None:
                on_dir(out)
    try:
        check_paths((s.path, "dir" if s.is_dir else "file") for s in out)
    except UnsafePathError as e:
        raise UsageError(f"cannot archive path {e.path!r}: {e.reason}") from None
    for s in out:  # what archive records, restore must be able to create: no link out of DEST
        if s.is_link:
            try:
                check_link(s.path, s.link or "")
            except UnsafePathError as e:
                err = UsageError(f"cannot archive symlink {s.abspath} -> {s.link!r}: {e.reason}; restore could "
                                 f"not recreate it safely")
                err.remedy = "dereference"
                raise err from None
    out.sort(key=lambda s: s.path)
    return out


def _readable(p: Path, dir_fd: int | None = None) -> None:
    """Refuse an unreadable file before anything is written (`dir_fd`: its directory's
    descriptor, held by the scan: the kernel does not walk the whole path again)."""
    if not os.access(p if dir_fd is None else p.name, os.R_OK, dir_fd=dir_fd):
        raise ArchiverError(f"cannot read {p}: permission denied")


class DirFds:
    """Descriptors of the directories a run's files lie in, each reached by `open_source`
    (checked to be the directory the scan saw) once and held until `close`: the files of a
    directory are then opened relative to that very inode, without walking and checking the
    whole chain again for each file. At most `limit` are held (the rest are walked as before)."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            limit = 4096 if soft == resource.RLIM_INFINITY else max(16, min(4096, soft // 4))
        self.limit = limit
        self._fds: dict[tuple[str, int, int], int] = {}
        self._lock = threading.Lock()

    def get(self, d: Source) -> int | None:
        """The held descriptor of directory `d` (opened now if need be), or None if full."""
        # the path's string (pathlib keeps it): a worker's job brings new Path objects, which a
        # tuple key of Paths would compare part by part (Path.__eq__) for every file
        key = (str(d.abspath), d.dev, d.ino)
        with self._lock:
            fd = self._fds.get(key)
            if fd is not None or len(self._fds) >= self.limit:
                return fd
        fd = open_source(d)
        with self._lock:
            held = self._fds.setdefault(key, fd)
        if held != fd:  # another thread opened it meanwhile
            os.close(fd)
        return held

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)


def open_source(src: Source, dirs: DirFds | None = None) -> int:
    """A descriptor of exactly what the scan saw at `src`: reached from its PATH one
    component at a time with O_NOFOLLOW, each directory and the entry itself required to
    be the same kind and the same (st_dev, st_ino) as scanned. A regular file's descriptor
    is blocking again when returned. Raises SourceChangedError, never follows a swap.
    With `dirs`, a file is opened relative to its directory's held descriptor (DirFds)."""
    if dirs is not None and src.parent is not None and not src.is_dir:
        dfd = dirs.get(src.parent)
        if dfd is not None:
            return _open_same(src, dfd)
    chain: list[Source] = []
    s: Source | None = src
    while s is not None:
        chain.append(s)
        s = s.parent
    fd: int | None = None
    try:
        for s in reversed(chain):
            nfd = _open_same(s, fd)
            fd, parent = nfd, fd  # held first: a Ctrl-C before the close must not close the parent twice
            if parent is not None:
                os.close(parent)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    assert fd is not None
    return fd


def _open_same(s: Source, dir_fd: int | None) -> int:
    if s.followed:
        return _open_followed(s, dir_fd)
    name = str(s.abspath) if dir_fd is None else s.abspath.name
    try:  # look before opening: a FIFO or device swapped in is refused without being opened
        _check_same(s, os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise changed(s.abspath, "it was removed") from None
        raise ArchiverError(f"cannot read {s.abspath}: {e.strerror}") from None
    try:
        fd = os.open(name, _OPEN_FLAGS | (os.O_DIRECTORY if s.is_dir else 0), dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENOENT, errno.ENOTDIR, errno.ENXIO):
            raise changed(s.abspath, "it was replaced or removed") from None  # in the window after the look
        raise ArchiverError(f"cannot read {s.abspath}: {e.strerror}") from None
    try:
        _check_same(s, os.fstat(fd))
        if not s.is_dir:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(src: Source, dirs: DirFds | None) -> tuple[int, os.stat_result]:
    """A regular file the scan saw (not a followed link), opened in one open(2) relative to
    its directory's held descriptor, with the fstat that proved it (kind, st_dev, st_ino):
    `open_source` without the look-before-open stat. O_NOFOLLOW refuses a symlink swapped
    in, O_NONBLOCK keeps a FIFO from blocking and O_NOCTTY a terminal from becoming ours;
    the fstat refuses those and any other file before a byte is read. (A device node cannot
    be linked into the tree by whoever may write it: mknod needs CAP_MKNOD, and a hard link
    cannot cross into /dev's filesystem.) The descriptor stays non-blocking: that changes
    nothing for a regular file's read(2), and a read that says otherwise is retried
    blocking (`read_whole`). Falls back to `open_source` (with its stat) when the directory
    has no held descriptor."""
    dfd = dirs.get(src.parent) if dirs is not None and src.parent is not None and not src.followed else None
    if dfd is None:
        fd = open_source(src, dirs)
        try:
            return fd, os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
    try:
        fd = os.open(src.abspath.name, _OPEN_FLAGS, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENOENT, errno.ENOTDIR, errno.ENXIO):
            raise changed(src.abspath, "it was replaced or removed") from None
        raise ArchiverError(f"cannot read {src.abspath}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        _check_same(src, st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_whole(fd: int, size: int) -> bytes:
    """The bytes of a descriptor from its current offset, up to `size` + 1 (one more than
    expected, so a file that grew shows it): read(2) until `size` bytes are in or it ends."""
    parts: list[bytes] = []
    got = 0
    while got <= size:
        try:
            b = os.read(fd, size + 1 - got)
        except BlockingIOError:  # not a plain regular file after all: wait for its bytes
            os.set_blocking(fd, True)
            continue
        if not b:
            break
        parts.append(b)
        got += len(b)
        if got == size:  # the size was right; the caller's fstat after the read proves no growth
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _check_same(s: Source, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise changed(s.abspath, "it was replaced by a symlink")
    if s.is_dir and not stat.S_ISDIR(st.st_mode):
        raise changed(s.abspath, "it is no longer a directory")
    if not s.is_dir and not stat.S_ISREG(st.st_mode):
        raise changed(s.abspath, "it is no longer a regular file")
    if (st.st_dev, st.st_ino) != (s.dev, s.ino):
        raise changed(s.abspath, "it was replaced by another file")


def _open_followed(s: Source, dir_fd: int | None) -> int:
    """Open a followed symlink's target: the link is resolved by the kernel (its directory was
    reached without following any), and the descriptor must be the very regular file the
    scan saw at the end of it (st_dev, st_ino), or SourceChangedError."""
    name = str(s.abspath) if dir_fd is None else s.abspath.name
    try:
        fd = os.open(name, _OPEN_FLAGS & ~os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.ENXIO):
            raise changed(s.abspath, "its symlink target was replaced or removed") from None
        raise ArchiverError(f"cannot read {s.abspath}: {e.strerror}") from None
    try:
        _check_same(s, os.fstat(fd))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
