"""Turn the PATHs given to `archive` into the list of entries to store, and open them again
later as exactly the files that were scanned.

Each PATH contributes its own name as the top-level entry (a directory `ckpt/` becomes
`ckpt/...`), like `tar` and borg with relative paths. Symlinks and special files are
refused rather than silently followed or skipped: an archive must say exactly what it
holds. Paths that could not be restored safely everywhere are refused up front.

The tree may belong to someone else (root archiving a user-writable directory), so a path
is never trusted twice: every directory is listed through a descriptor opened without
following symlinks and checked to be the inode the scan saw, and `open_source` reaches a
file the same way, one component at a time from its PATH, refusing anything that is not
the very regular file (st_dev, st_ino) scanned. A file swapped for a symlink, a FIFO or
another file after the scan is refused, never read."""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from archiver.errors import ArchiverError, NotFoundError, SourceChangedError, UsageError
from manifests.errors import UnsafePathError
from manifests.paths import check_paths

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
        raise ArchiverError(f"refusing symlink {p}: archive its target instead")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ArchiverError(f"refusing special file {p}: only regular files and directories are archived")
    return st


def _name(p: Path) -> str:
    try:
        p.name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArchiverError(f"refusing {p}: file name is not valid UTF-8") from None
    return p.name


def _source(path: str, p: Path, st: os.stat_result, parent: Source | None) -> Source:
    is_dir = stat.S_ISDIR(st.st_mode)
    if not is_dir:
        _readable(p)
    return Source(path, p, is_dir, 0 if is_dir else st.st_size, stat.S_IMODE(st.st_mode), st.st_dev, st.st_ino,
                  parent, st.st_mtime_ns if is_dir else None)


def scan(paths: list[str | os.PathLike]) -> list[Source]:
    """Walk the inputs in a stable order; raise before anything is uploaded."""
    if not paths:
        raise UsageError("nothing to archive: give at least one PATH")
    out: list[Source] = []
    for raw in paths:
        p = Path(os.path.abspath(os.fspath(raw)))
        st = _classify(p, _lstat(p))
        top = _source(_name(p) if p.name else "root", p, st, None)
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
                    child = d.abspath / n
                    src = _source(f"{d.path}/{_name(child)}", child, _classify(child, _lstat(child, n, fd)), d)
                    out.append(src)
                    if src.is_dir:
                        stack.append(src)
            finally:
                os.close(fd)
    try:
        check_paths((s.path, "dir" if s.is_dir else "file") for s in out)
    except UnsafePathError as e:
        raise UsageError(f"cannot archive path {e.path!r}: {e.reason}") from None
    out.sort(key=lambda s: s.path)
    return out


def _readable(p: Path) -> None:
    if not os.access(p, os.R_OK):
        raise ArchiverError(f"cannot read {p}: permission denied")


def open_source(src: Source) -> int:
    """A descriptor of exactly what the scan saw at `src`: reached from its PATH one
    component at a time with O_NOFOLLOW, each directory and the entry itself required to
    be the same kind and the same (st_dev, st_ino) as scanned. A regular file's descriptor
    is blocking again when returned. Raises SourceChangedError, never follows a swap."""
    chain: list[Source] = []
    s: Source | None = src
    while s is not None:
        chain.append(s)
        s = s.parent
    fd: int | None = None
    try:
        for s in reversed(chain):
            nfd = _open_same(s, fd)
            if fd is not None:
                os.close(fd)
            fd = nfd
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    assert fd is not None
    return fd


def _open_same(s: Source, dir_fd: int | None) -> int:
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


def _check_same(s: Source, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise changed(s.abspath, "it was replaced by a symlink")
    if s.is_dir and not stat.S_ISDIR(st.st_mode):
        raise changed(s.abspath, "it is no longer a directory")
    if not s.is_dir and not stat.S_ISREG(st.st_mode):
        raise changed(s.abspath, "it is no longer a regular file")
    if (st.st_dev, st.st_ino) != (s.dev, s.ino):
        raise changed(s.abspath, "it was replaced by another file")
