"""Which manifest paths are safe to create under a restore destination.

A manifest may come from an untrusted or tampered store, so every path is checked
before anything is written: relative, '/'-separated, no '..' or '.', no drive letters
or UNC prefixes, no backslashes, no unsafe characters (see `unsafe_char`), components of
at most 255 UTF-8 bytes, and no two entries that would land on the same file on a
case-insensitive or Unicode-normalising filesystem. Archive names and labels follow the
same character rule, so what `archive` accepts, `verify` passes and `restore` can write."""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable

from manifests.errors import UnsafePathError

_DRIVE = re.compile(r"^[A-Za-z]:")
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
# Characters that reorder how text is displayed (Trojan Source, CVE-2021-42574): a name
# shown as "model.bin" may really be "nib.ledom". LRE..RLO, LRI..PDI, LRM, RLM, ALM.
BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C))
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff" + "".join(sorted(BIDI_CONTROLS)) + "]")


def unsafe_char(text: str) -> str | None:
    """Why `text` cannot be a path, name or label, or None. Refused: C0 controls, DEL and
    C1 controls (terminal escapes: U+009B is CSI), lone surrogates (no UTF-8 form, so no
    file can be named so and no catalog can store it) and bidirectional controls."""
    m = _UNSAFE.search(text)
    if m is None:
        return None
    c = ord(m.group())
    if 0xD800 <= c <= 0xDFFF:
        return f"lone surrogate U+{c:04X}"
    if chr(c) in BIDI_CONTROLS:
        return f"bidirectional control U+{c:04X}"
    return f"NUL or control character U+{c:04X}"


def check_path(path: str) -> list[str]:
    """Return the path's components, or raise UnsafePathError naming the problem."""
    def bad(why: str) -> UnsafePathError:
        return UnsafePathError(path, why)

    if not isinstance(path, str) or path == "":
        raise bad("empty")
    why = unsafe_char(path)
    if why is not None:
        raise bad(why)
    if "\\" in path:
        raise bad("backslash")
    if path.startswith("/"):
        raise bad("absolute")
    if _DRIVE.match(path):
        raise bad("drive letter")
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise bad("too long")
    parts = path.split("/")
    for p in parts:
        if p == "":
            raise bad("empty component")
        if p in (".", ".."):
            raise bad(f"'{p}' component")
        if _DRIVE.match(p):
            raise bad("drive letter or alternate data stream")
        if len(p.encode("utf-8")) > MAX_NAME_BYTES:
            raise bad("component too long")
    return parts


def fold(path: str) -> str:
    """The key under which two paths collide on case-insensitive, normalising filesystems."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFKD", path).casefold())


def check_paths(items: Iterable[tuple[str, str]]) -> None:
    """Check (path, type) pairs as a whole: each path safe, no duplicates or colliding
    spellings, and no file used as a directory by another entry."""
    seen: dict[str, str] = {}
    files: set[str] = set()
    all_paths: list[list[str]] = []
    for path, typ in items:
        parts = check_path(path)
        key = fold(path)
        if key in seen:
            raise UnsafePathError(path, f"collides with {seen[key]!r}")
        seen[key] = path
        if typ != "dir":  # a file or a symlink: nothing may lie below it
            files.add(key)
        all_paths.append(parts)
    folded: dict[str, str] = {}  # directories recur for each entry under them: fold each once
    for parts in all_paths:
        for i in range(1, len(parts)):
            joined = "/".join(parts[:i])
            prefix = folded.get(joined)
            if prefix is None:
                prefix = folded[joined] = fold(joined)
            if prefix in files:
                raise UnsafePathError("/".join(parts), f"is inside file {seen[prefix]!r}")


def check_link(path: str, target: str) -> None:
    """Refuse (UnsafePathError) a symlink at `path` whose `target` could resolve outside the
    directory it is restored into. A target must be relative and in normal form: some '..'
    first, then names only (no '.', empty or later '..' components), and climb no higher
    than the link's own directory depth. Each link then resolves inside the destination on
    its own, and so does any path through several (a later '..' after a link, the one way
    chained links could climb out, is refused)."""
    why = unsafe_char(target) if isinstance(target, str) and target else "empty"
    if why is not None:
        raise UnsafePathError(path, f"symlink target {why}")
    if target.startswith("/") or "\\" in target or _DRIVE.match(target):
        raise UnsafePathError(path, f"symlink target {target!r} is absolute")
    parts = target.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if any(p in ("", ".", "..") for p in parts[ups:]):
        raise UnsafePathError(path, f"symlink target {target!r} is not in normal form (../ first, then names)")
    if ups > path.count("/"):
        raise UnsafePathError(path, f"symlink target {target!r} leaves the destination")
