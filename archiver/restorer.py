"""restore: rebuild files byte-for-byte from a manifest, or refuse.

All manifest paths are checked before anything is written. Files are created relative
to directory file descriptors opened with O_NOFOLLOW, so a symlink planted in DEST
cannot redirect a write. Each file is written under a temporary name, its chunks are
fetched in parallel, decoded and re-hashed, the whole file is hashed (BLAKE3 + SHA-256),
fsynced, and only then renamed into place: a damaged file never appears under its final
name. A damaged file is reported and skipped; the others are still restored."""
from __future__ import annotations

import errno
import fnmatch
import os
import secrets
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from archiver.errors import (DestinationError, DestinationFullError, FileHashError,
                             IntegrityError, UnsafePathError, translated)
from archiver.fileio import write_all
from archiver.parallel import default_workers, window_for
from archiver.problems import Outcome, Problem, chunk_problem, file_hash_problem
from archiver.progress import Progress
from archiver.repository import Repository
from manifests.model import Entry
from manifests.paths import check_paths

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
WRITEBACK_EVERY = 64 * 1024 * 1024


@dataclass
class RestoreResult(Outcome):
    id: str
    dest: str
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)


def select(entries: Iterable[Entry], include: Iterable[str]) -> list[Entry]:
    """Entries whose whole path matches any glob (fnmatch: `*` also matches '/'), or that lie
    below a matching directory, plus the directories that contain them."""
    globs = list(include)
    entries = list(entries)
    if not globs:
        return entries
    def hit(p: str) -> bool:
        parts = p.split("/")
        return any(fnmatch.fnmatchcase("/".join(parts[:i]), g) for g in globs for i in range(1, len(parts) + 1))
    chosen = {e.path for e in entries if hit(e.path)}
    parents = {"/".join(p.split("/")[:i]) for p in chosen for i in range(1, p.count("/") + 1)}
    return [e for e in entries if e.path in chosen or e.path in parents]


def restore(repo: Repository, ref: str, dest: str | os.PathLike, *, include: Iterable[str] = (),
            force: bool = False, workers: int | None = None, trusted: list[bytes] | None = None,
            progress: Progress | None = None) -> RestoreResult:
    """With `trusted` public keys, refuse unless one of them signed the manifest."""
    started = time.monotonic()
    progress = progress or Progress()
    mid = repo.resolve(ref)
    m = repo.load_manifest(mid)
    if trusted:
        bad = repo.signature_problems(mid, trusted)
        if bad:
            raise IntegrityError(f"refusing to restore {mid[:16]}: {'; '.join(bad)}")
    with translated():
        check_paths((e.path, e.type) for e in m.entries)  # all of them, before any write
    chosen = select(m.entries, include)
    if include and not chosen:
        raise DestinationError(str(dest), f"the include patterns matched nothing in {mid[:16]}", exit_code=2)
    root = Path(dest)
    _prepare_dest(root, force)
    result = RestoreResult(id=mid, dest=str(root))
    nworkers = workers or default_workers()
    progress.start(f"restore {m.name}", sum(e.size for e in chosen))
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        with ThreadPoolExecutor(nworkers, thread_name_prefix="restore") as pool:
            for e in chosen:
                if e.is_file:
                    _restore_file(repo, mid, root_fd, e, pool, window_for(nworkers), result, progress, force)
                else:
                    os.close(_open_dir(root_fd, e.path.split("/"), create=True))
                    result.dirs += 1
        for e in sorted((e for e in chosen if not e.is_file), key=lambda e: -e.path.count("/")):
            fd = _open_dir(root_fd, e.path.split("/"), create=False)
            try:
                os.fchmod(fd, e.mode)
                os.fsync(fd)
            finally:
                os.close(fd)
        os.fsync(root_fd)
    finally:
        os.close(root_fd)
        progress.finish()
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _prepare_dest(root: Path, force: bool) -> None:
    if root.is_symlink():
        raise UnsafePathError(f"destination {root} is a symlink; give the real directory")
    if root.exists():
        if not root.is_dir():
            raise DestinationError(str(root), "exists and is not a directory", exit_code=2)
        if any(root.iterdir()) and not force:
            raise DestinationError(str(root), "destination is not empty", remedy="force", exit_code=2)
    else:
        try:
            root.mkdir(parents=True)
        except OSError as e:
            raise DestinationError(str(root), f"cannot create the destination: {e.strerror}") from None


def _open_dir(root_fd: int, parts: list[str], *, create: bool) -> int:
    """Walk `parts` below root_fd without following symlinks; returns an fd of the last."""
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError(
                        f"refusing to restore through {'/'.join(parts[:i + 1])!r} in the destination: "
                        f"it is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _restore_file(repo: Repository, mid: str, root_fd: int, e: Entry, pool: ThreadPoolExecutor, window: int,
                  result: RestoreResult, progress: Progress, force: bool) -> None:
    parts = e.path.split("/")
    dir_fd = _open_dir(root_fd, parts[:-1], create=True)
    name = parts[-1]
    # 200 bytes of the name, not characters: a 255-byte name of 3-byte characters must fit too
    tmp = f".{name.encode()[:200].decode('utf-8', 'ignore')}.{secrets.token_hex(6)}.archiver-tmp"
    fd = -1
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o600, dir_fd=dir_fd)
        # Every chunk is re-hashed, and the whole file with BLAKE3, by stream_file.
        written = flushed = 0
        for piece in repo.stream_file(e, pool, window, keep_going=True, sha256=False):
            if piece.error is not None:  # stop at the first bad chunk: this file cannot be restored
                result.problems.append(chunk_problem(mid, e, piece.ref, piece.error))
                return
            data = piece.data
            assert data is not None
            write_all(fd, data)
            written += len(data)
            if written - flushed >= WRITEBACK_EVERY:
                # start writeback now, so the final fsync does not wait for the whole file
                os.posix_fadvise(fd, flushed, written - flushed, os.POSIX_FADV_DONTNEED)
                flushed = written
            progress.advance(len(data))
        os.fchmod(fd, e.mode)
        os.fsync(fd)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        os.close(fd)
        fd = -1
        _check_target(dir_fd, name, e.path, force)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        tmp = ""
        os.fsync(dir_fd)
        result.files += 1
        result.bytes += e.size
    except FileHashError:
        result.problems.append(file_hash_problem(mid, e))
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise DestinationFullError(e.path) from None
        raise DestinationError(e.path, f"cannot write: {err.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
        os.close(dir_fd)


def _check_target(dir_fd: int, name: str, path: str, force: bool) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise DestinationError(path, "cannot restore: a directory is in the way")
    if not force:
        raise DestinationError(path, "cannot restore: it already exists", remedy="force")

