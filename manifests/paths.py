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
    spellings, and no file used as a directory by another entry.

    A path of plain printable ASCII is checked by `_plain_ok` and folded by lower() (what
    `fold` does to ASCII); any other goes through `check_path` and `fold`. Whether a path
    lies inside a file depends only on its parent directory, so that is asked once per
    directory (the same first offence, in the same order, as asking per path). A list of
    plain paths that passes every check is told so by whole-list steps (`_plain_all`);
    anything else, or any offence, takes the per-path loop, which raises the first one."""
    items = list(items)
    if _plain_all(items):
        return
    seen: dict[str, str] = {}
    files: set[str] = set()
    all_paths: list[tuple[str, str]] = []  # (path, its parent directory) in order
    for path, typ in items:
        if _plain_ok(path):
            key = path.lower()
        else:
            check_path(path)
            key = fold(path)
        if key in seen:
            raise UnsafePathError(path, f"collides with {seen[key]!r}")
        seen[key] = path
        if typ != "dir":  # a file or a symlink: nothing may lie below it
            files.add(key)
        all_paths.append((path, path.rpartition("/")[0]))
    if not files:
        return
    inside: dict[str, str | None] = {}  # parent directory -> the fold of the first file among its prefixes
    for path, parent in all_paths:
        if not parent:
            continue
        if parent not in inside:
            inside[parent] = _file_prefix(parent, files)
        prefix = inside[parent]
        if prefix is not None:
            raise UnsafePathError(path, f"is inside file {seen[prefix]!r}")


_PLAIN_PATH = re.compile(r"[\x20-\x39\x3b-\x5b\x5d-\x7e]{1,4096}")  # printable ASCII but ':' and '\\'


def _plain_ok(path: object) -> bool:
    """True for a path `check_path` accepts that is printable ASCII without ':' or '\\'
    (no drive letter possible, one byte per character); False means: ask check_path."""
    if not isinstance(path, str) or not _PLAIN_PATH.fullmatch(path) or path[0] == "/":
        return False
    parts = path.split("/")
    return "" not in parts and "." not in parts and ".." not in parts and max(map(len, parts)) <= MAX_NAME_BYTES


_PLAIN_JOINED = re.compile(r"[\x20-\x39\x3b-\x5b\x5d-\x7e\n]*")  # _PLAIN_PATH's characters, and the joins


def _plain_all(items: list[tuple[str, str]]) -> bool:
    """True if every path is plain (`_plain_ok`), no two fold alike, and none lies inside a
    file: what check_paths' loop would accept, asked of the whole list at once (a scan's or
    a manifest's tens of thousands of paths) with one join, one match and set operations
    instead of steps per path. False says nothing: the loop then decides, with its errors."""
    paths = [p for p, _ in items]
    try:
        joined = "\n".join(paths)
    except TypeError:  # a path that is not text: the loop says so
        return False
    if not paths or not all(paths) or max(map(len, paths)) > MAX_PATH_BYTES:
        return False
    if joined.count("\n") != len(paths) - 1 or not _PLAIN_JOINED.fullmatch(joined):
        return False  # a path holding a newline, or a character check_path must look at
    names = joined.replace("\n", "/").split("/")
    if "" in names or "." in names or ".." in names or max(map(len, names)) > MAX_NAME_BYTES:
        return False
    keys = joined.lower().split("\n")  # `fold` of plain ASCII, as the loop takes it
    if len(set(keys)) != len(keys):
        return False
    files = {k for k, (_, typ) in zip(keys, items) if typ != "dir"}
    if not files:
        return True
    parents = {p.rpartition("/")[0] for p in paths}
    return not any(parent and _file_prefix(parent, files) is not None for parent in parents)


def _file_prefix(parent: str, files: set[str]) -> str | None:
    """The fold of the shortest prefix of directory `parent` (itself included) that is a file."""
    parts = parent.split("/")
    for i in range(1, len(parts) + 1):
        prefix = fold("/".join(parts[:i]))
        if prefix in files:
            return prefix
    return None


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
