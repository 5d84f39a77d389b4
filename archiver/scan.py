"""Turn the PATHs given to `archive` into the list of entries to store.

Each PATH contributes its own name as the top-level entry (a directory `ckpt/` becomes
`ckpt/...`), like `tar` and borg with relative paths. Symlinks and special files are
refused rather than silently followed or skipped: an archive must say exactly what it
holds. Paths that could not be restored safely everywhere are refused up front."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from archiver.errors import ArchiverError, NotFoundError, UsageError
from manifests.errors import UnsafePathError
from manifests.paths import check_paths


@dataclass(frozen=True)
class Source:
    path: str          # archive path ('/'-separated, relative)
    abspath: Path
    is_dir: bool
    size: int
    mode: int
    mtime_ns: int | None = None  # directories: recorded so restore can set it back (files re-stat when read)


def _classify(p: Path) -> os.stat_result:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise NotFoundError(f"no such file or directory: {p}") from None
    except OSError as e:
        raise ArchiverError(f"cannot read {p}: {e.strerror}") from None
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


def scan(paths: list[str | os.PathLike]) -> list[Source]:
    """Walk the inputs in a stable order; raise before anything is uploaded."""
    if not paths:
        raise UsageError("nothing to archive: give at least one PATH")
    out: list[Source] = []
    for raw in paths:
        p = Path(os.path.abspath(os.fspath(raw)))
        st = _classify(p)
        top = _name(p) if p.name else "root"
        if stat.S_ISREG(st.st_mode):
            _readable(p)
            out.append(Source(top, p, False, st.st_size, stat.S_IMODE(st.st_mode)))
            continue
        out.append(Source(top, p, True, 0, stat.S_IMODE(st.st_mode), st.st_mtime_ns))
        stack = [(p, top)]
        while stack:
            d, rel = stack.pop()
            try:
                names = sorted(os.listdir(d))
            except OSError as e:
                raise ArchiverError(f"cannot read directory {d}: {e.strerror}") from None
            for n in reversed(names):  # reversed + stack pop = sorted order overall
                child = d / n
                cst = _classify(child)
                crel = f"{rel}/{_name(child)}"
                if stat.S_ISDIR(cst.st_mode):
                    out.append(Source(crel, child, True, 0, stat.S_IMODE(cst.st_mode), cst.st_mtime_ns))
                    stack.append((child, crel))
                else:
                    _readable(child)
                    out.append(Source(crel, child, False, cst.st_size, stat.S_IMODE(cst.st_mode)))
    try:
        check_paths((s.path, "dir" if s.is_dir else "file") for s in out)
    except UnsafePathError as e:
        raise UsageError(f"cannot archive path {e.path!r}: {e.reason}") from None
    out.sort(key=lambda s: s.path)
    return out


def _readable(p: Path) -> None:
    if not os.access(p, os.R_OK):
        raise ArchiverError(f"cannot read {p}: permission denied")
