"""Manifest records and their canonical JSON form.

A manifest names every file and directory of one archive and, per file, the ordered
chunks that rebuild it. Its id is the BLAKE3 of its canonical JSON bytes, so the id
proves the content: a manifest fetched from anywhere is accepted only if it hashes to
the id it was asked for. The JSON is deterministic (no wall-clock time) so re-running
an interrupted archive yields the same id; times live in the catalog's audit log."""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import blake3
# numpy is imported inside the functions that use it: a command's start-up imports this module,
# and numpy's import (with its BLAS threads) belongs after the CLI has set OPENBLAS_NUM_THREADS
# and off the serial head of an archive (bench/RESULTS.md, branch hotpath)
if TYPE_CHECKING:
    import numpy as np

from manifests import filemapbin
from manifests.errors import ManifestError
from manifests.filemapbin import MapRecords
from manifests.paths import unsafe_char

FORMAT = "archiver-manifest"
VERSION = 1
# Version 2 = version 1 plus file maps (below); a manifest with no file map is written as
# version 1, byte for byte, so every id made before file maps existed still holds.
VERSION_FILEMAPS = 2
FILEMAP_FORMAT = "archiver-filemap"
# A file with more than this many chunks keeps its chunk list in its own file map object
# (`filemaps/<h[0:2]>/<h>.bin`, or `.json` for a JSON map; h = BLAKE3 of its bytes) and its root entry carries only
# `filemap` (h) and `chunk_count`. 128 chunks is 1 GiB at the default 8 MiB chunk and ~13 KB
# of inline JSON: below it, one more object (a PUT, a GET on every read) costs more than it
# saves; above it, a 10 TB archive's root manifest stays ~300 bytes per file instead of
# ~100 bytes per chunk, and an unchanged large file's map is shared by every version.
FILEMAP_THRESHOLD = 128
# A file map is one file's chunk records (~102 bytes each as JSON, 49 in binary): 32 MiB holds
# ~300,000 chunks as JSON (a 2.5 TB file at 8 MiB), ~680,000 in binary, and a forged larger
# object is refused unread.
MAX_FILEMAP_BYTES = 32 * 1024 * 1024
# Version 3 = version 2 plus trees (below). A manifest with more than TREE_THRESHOLD entries
# keeps them in content-addressed directory listings (`trees/<h[0:2]>/<h>.json`, h = BLAKE3
# of its bytes), one per directory, each naming its subdirectories' trees by hash, restic
# style; the root manifest names the top tree and the entry count. An unchanged directory
# has the same tree in every version, so an unchanged re-archive adds only a root manifest.
# Below the threshold one manifest object is cheaper than a GET per directory, and every
# manifest made before trees keeps its bytes and id.
VERSION_TREES = 3
TREE_FORMAT = "archiver-tree"
TREE_THRESHOLD = 1000
# A tree is one directory's entries (~300 bytes each, file maps keep long chunk lists out):
# the manifest's own cap holds over a million entries in one directory.
MAX_TREE_BYTES = 512 * 1024 * 1024
# Trees may share subtrees (two identical directories name one tree), so a few small objects
# could describe any number of entries: a root may declare at most this many (a 512 MiB
# inline manifest holds fewer), and resolving stops once its declared count is passed.
MAX_TREE_ENTRIES = 10_000_000
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SURROGATE = re.compile("[\ud800-\udfff]")
# The mtimes `restore` can set: os.utime takes whole seconds that fit a 64-bit time_t
# (floor(ns / 1e9) in [-2**63, 2**63 - 1]), and that range holds every mtime os.stat can
# report, so an archive never records one that restore cannot write back.
MTIME_NS_MIN = -(2**63) * 10**9
MTIME_NS_MAX = 2**63 * 10**9 - 1
# A manifest is read whole and parsed into objects (~10x its size in memory), so its size
# is capped, and a larger object is refused before it is read. 512 MiB holds the manifest of
# a 10 TB archive (~134 MB with 8 MiB chunks, ~100 bytes per chunk record) with room for
# smaller chunks, while a forged 2 GiB object is refused unread.
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
# The longest chunk a manifest may declare. The chunker never cuts one longer than
# ChunkPolicy's max_chunk / cdc_max (8 MiB by default; a policy above this cap is refused),
# and verify/restore hold about one decoded chunk per worker (up to 16), so this keeps a
# forged manifest of maximal chunks near 1 GiB instead of letting one 65 KB object declare
# a 2 GiB chunk. 4x the default leaves room to tune the policy.
MAX_CHUNK_LENGTH = 32 * 1024 * 1024
# The most a stored chunk object can exceed its chunk: a section is compressed only when
# that makes it smaller, so an object is the chunk's bytes at most, plus its 16-byte header
# and up to 9 section descriptors of 24 bytes (8 byte planes and a tail). Mirrors
# archiver.codecs (checked by tests/test_codecs.py), which this package must not import.
MAX_CHUNK_OVERHEAD = 16 + 9 * 24
# Structured metadata (a profile's data, a file's technical summary) is free-form JSON from
# the archiving user or a weights header: bounded so a hostile manifest cannot make a reader
# recurse or index without end. 1 MiB of canonical JSON and 32 levels hold any model card
# summary; documents go in as attachments.
MAX_METADATA_BYTES = 1024 * 1024
MAX_METADATA_DEPTH = 32
# Attachments live under this top-level directory of the manifest (see ATTACHMENTS in docs/PROFILE.md).
ATTACH_DIR = "_archive"
_ROLE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of a file: bytes [offset, offset+length) whose BLAKE3 is `hash`.
    Slotted: a 10 TB archive holds ~1.3 million of them, and a dict per ref doubles that."""

    offset: int
    length: int
    hash: str
    stored_size: int
    codec: str

    def to_json(self) -> list:
        return [self.offset, self.length, self.hash, self.stored_size, self.codec]


@dataclass(frozen=True)
class Entry:
    """A file or directory. Directories carry path, mode and, when it was recorded, mtime_ns:
    manifests written before directory mtimes were recorded have none (None), and must keep
    serialising to the same bytes so their ids still hold."""

    path: str
    type: str  # "file" | "dir"
    mode: int
    size: int = 0
    mtime_ns: int | None = None  # files always have one (None serialises as 0)
    blake3: str = ""
    sha256: str = ""
    format: str = ""
    chunks: tuple[ChunkRef, ...] = ()
    # files: technical metadata read from the file (format, tensors, parameters ...), or None;
    # omitted from the JSON when None, so manifests made before it keep their bytes and ids
    tech: dict[str, Any] | None = None
    target: str = ""  # symlinks only: the link's target, as read
    # files with more than FILEMAP_THRESHOLD chunks (manifest v2): the BLAKE3 of the file map
    # holding the chunk list, and its length. `chunks` is then () until the map is resolved
    # (manifests.model.parse_filemap); the JSON carries these two instead of `chunks` either way.
    filemap: str = ""
    chunk_count: int = 0

    @property
    def resolved(self) -> bool:
        """False for a v2 entry whose chunk list is still in its unfetched file map."""
        return not self.filemap or len(self.chunks) == self.chunk_count

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @property
    def is_symlink(self) -> bool:
        return self.type == "symlink"

    def to_json(self) -> dict[str, Any]:
        if self.type == "dir":
            d: dict[str, Any] = {"path": self.path, "type": "dir", "mode": self.mode}
            if self.mtime_ns is not None:
                d["mtime_ns"] = self.mtime_ns
            return d
        if self.type == "symlink":
            return {"path": self.path, "type": "symlink", "mode": self.mode, "target": self.target}
        d = {
            "path": self.path,
            "type": "file",
            "mode": self.mode,
            "size": self.size,
            "mtime_ns": 0 if self.mtime_ns is None else self.mtime_ns,
            "blake3": self.blake3,
            "sha256": self.sha256,
            "format": self.format,
        }
        if self.filemap:
            d["filemap"] = self.filemap
            d["chunk_count"] = self.chunk_count
        else:
            d["chunks"] = [c.to_json() for c in self.chunks]
        if self.tech is not None:
            d["tech"] = self.tech
        return d


@dataclass(frozen=True)
class Manifest:
    name: str
    entries: tuple[Entry, ...]
    label: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    # {"id": "archiver-model/1", "data": {...}}: structured metadata checked against a
    # profile's schema when archived; None (omitted from the JSON) when none was given
    profile: dict[str, Any] | None = None
    # (role, path) of each attached document, a file entry under ATTACH_DIR/; omitted when empty
    attachments: tuple[tuple[str, str], ...] = ()
    # manifest v3: the hash of the top directory's tree and how many entries the trees hold.
    # `entries` is () until the trees are resolved (`resolve_trees`); the JSON carries these
    # two instead of `entries` either way.
    tree: str = ""
    entry_count: int = 0

    @property
    def resolved(self) -> bool:
        """False for a v3 manifest whose entries are still in its unfetched trees."""
        return not self.tree or len(self.entries) == self.entry_count

    def to_dict(self) -> dict[str, Any]:
        if self.tree:
            version = VERSION_TREES
        else:
            version = VERSION_FILEMAPS if any(e.filemap for e in self.entries) else VERSION
        d = {
            "format": FORMAT,
            "version": version,
            "name": self.name,
            "label": self.label,
            "meta": dict(sorted(self.meta.items())),
            "parent": self.parent,
        }
        if self.tree:
            d["tree"] = self.tree
            d["entry_count"] = self.entry_count
        else:
            d["entries"] = [e.to_json() for e in sorted(self.entries, key=lambda e: e.path)]
        if self.profile is not None:
            d["profile"] = self.profile
        if self.attachments:
            d["attachments"] = [{"path": p, "role": r} for r, p in sorted(self.attachments, key=lambda a: a[1])]
        return d

    def canonical_json(self) -> bytes:
        """Sorted keys, no whitespace, ASCII only: the same manifest always gives the same bytes."""
        return canonical(self.to_dict())

    @property
    def id(self) -> str:
        return manifest_id(self.canonical_json())

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if e.type == "file"]  # not e.is_file: a property call per entry

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def stored_size(self) -> int:
        """Stored bytes of the distinct chunks this manifest references."""
        seen: dict[str, int] = {}
        for e in self.files:
            for c in e.chunks:
                seen[c.hash] = c.stored_size
        return sum(seen.values())

    def unique_chunks(self) -> dict[str, ChunkRef]:
        out: dict[str, ChunkRef] = {}
        for e in self.files:
            for c in e.chunks:
                out.setdefault(c.hash, c)
        return out


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def manifest_id(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def is_hash(s: object) -> bool:
    return isinstance(s, str) and bool(_HEX64.match(s))


def text_problem(value: object) -> str | None:
    """Why `value` cannot be a manifest's name, label, meta key or meta value, or None.

    It must be a str with no character a path may not hold (`paths.unsafe_char`: controls,
    lone surrogates, which is how undecodable command-line bytes arrive, bidi controls)
    and no line or paragraph separator: they break or spoof the one-line listings."""
    if not isinstance(value, str):
        return f"is not a string ({type(value).__name__})"
    why = unsafe_char(value)
    if why is not None:
        return "is not valid UTF-8" if why.startswith("lone surrogate") else f"contains {why}"
    for ch in value:
        if unicodedata.category(ch) in ("Zl", "Zp"):
            return f"contains line separator U+{ord(ch):04X}"
    return None


def parse_manifest(data: bytes, expected_id: str | None = None) -> Manifest:
    """Parse and structurally validate manifest bytes. If `expected_id` is given the
    bytes must hash to it (a tampered or substituted manifest is refused), and they must
    be canonical (so the id really names this content)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest too large: {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
    if expected_id is not None and manifest_id(data) != expected_id:
        raise ManifestError(f"manifest {expected_id[:16]} does not match its id (tampered or corrupt)")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest is not valid JSON: {e}") from None
    except RecursionError:  # '[[[[...' deeper than the interpreter's stack: hostile, not a crash
        raise ManifestError("malformed manifest: JSON nested too deeply") from None
    m = manifest_from_dict(obj)
    # Compare against the parsed manifest's own serialisation, not just `canonical(obj)`:
    # unsorted entries, a missing/extra key or `"version":true` re-serialise the same way
    # but give a Manifest whose id differs from the id of these bytes.
    try:
        same = canonical(obj) == data and m.canonical_json() == data
    except RecursionError:  # nesting json.loads took but json.dumps does not (unknown keys)
        raise ManifestError("malformed manifest: JSON nested too deeply") from None
    if not same:
        raise ManifestError("manifest is not in canonical form")
    return m


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ManifestError(f"malformed manifest: {what}")


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def is_mtime_ns(v: object) -> bool:
    """An int mtime (ns since the epoch) that `os.utime` can set: see MTIME_NS_MIN/MAX."""
    return isinstance(v, int) and not isinstance(v, bool) and MTIME_NS_MIN <= v <= MTIME_NS_MAX


def _text(v: object, what: str) -> None:
    """A name or label: non-empty text without controls, bidi overrides or lone surrogates,
    the characters `unsafe_char` refuses in paths (they rewrite terminals and listings)."""
    if not isinstance(v, str) or v == "":
        raise ManifestError(f"malformed manifest: {what}")
    why = unsafe_char(v)
    _need(why is None, f"{what} has a {why}")


def is_utf8(text: str) -> bool:
    """False for a str holding a lone surrogate: it has no UTF-8 form to store or print."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _brief(v: object) -> str:
    """A short repr for an error message: hostile values can be huge or deeply nested."""
    if isinstance(v, (list, dict)):
        return type(v).__name__
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def manifest_from_dict(obj: Any) -> Manifest:
    _need(isinstance(obj, dict), "not an object")
    _need(obj.get("format") == FORMAT, "wrong format marker")
    version = obj.get("version")
    _need(version in (VERSION, VERSION_FILEMAPS, VERSION_TREES) and not isinstance(version, bool),
          f"unsupported version {_brief(version)}")
    name, label, meta, parent = obj.get("name"), obj.get("label"), obj.get("meta"), obj.get("parent")
    _text(name, "name")
    if label is not None:
        _text(label, "label")
    _need(isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()), "meta")
    # older archives may hold controls in meta values (escaped on output); a lone surrogate has
    # no UTF-8 form at all, so no catalog can index it and nothing can print it
    _need(all(is_utf8(k) and is_utf8(v) for k, v in meta.items()), "meta is not valid UTF-8")
    _need(parent is None or is_hash(parent), "parent")
    if version == VERSION_TREES:
        return _tree_root(obj, name, label, meta, parent)
    raw_entries = obj.get("entries")
    _need(isinstance(raw_entries, list), "entries")
    entries = tuple(_entry(e) for e in raw_entries)
    # a v2 manifest names at least one file map and a v1 none (else it is not canonical)
    _need((version == VERSION_FILEMAPS) == any(e.filemap for e in entries), f"version {version} with"
          f"{'out' if version == VERSION_FILEMAPS else ''} file maps")
    profile = _profile(obj)
    attachments: tuple[tuple[str, str], ...] = ()
    if "attachments" in obj:
        attachments = _attachments(obj["attachments"], entries)
    return Manifest(name=name, label=label, meta=dict(meta), parent=parent, entries=entries, profile=profile,
                    attachments=attachments)


def _profile(obj: dict) -> dict[str, Any] | None:
    if "profile" not in obj:
        return None
    profile = obj["profile"]
    _need(isinstance(profile, dict) and set(profile) == {"id", "data"}, "profile is not {id, data}")
    _text(profile["id"], "profile id")
    _need(isinstance(profile["data"], dict), "profile data is not an object")
    metadata_problem(profile["data"], "profile data")
    return profile


def _tree_root(obj: dict, name: str, label: str | None, meta: dict, parent: str | None) -> Manifest:
    """A v3 root manifest: its entries are in trees (`resolve_trees`), so its attachments are
    checked against them when they are resolved."""
    _need("entries" not in obj, "version 3 with entries")
    tree, count = obj.get("tree"), obj.get("entry_count")
    _need(is_hash(tree), "tree")
    _need(_int(count) and TREE_THRESHOLD < count <= MAX_TREE_ENTRIES, "entry count")
    attachments: tuple[tuple[str, str], ...] = ()
    if "attachments" in obj:
        raw = obj["attachments"]
        _need(isinstance(raw, list) and raw, "attachments is not a non-empty list")
        for a in raw:
            _need(isinstance(a, dict) and set(a) == {"path", "role"} and is_role(a["role"])
                  and isinstance(a["path"], str) and a["path"].startswith(ATTACH_DIR + "/"),
                  f"attachment {_brief(a)}")
        attachments = tuple((a["role"], a["path"]) for a in raw)
    return Manifest(name=name, label=label, meta=dict(meta), parent=parent, entries=(), profile=_profile(obj),
                    attachments=attachments, tree=tree, entry_count=count)


def _attachments(raw: Any, entries: tuple[Entry, ...]) -> tuple[tuple[str, str], ...]:
    """Each attachment names a role and a file entry of this manifest under ATTACH_DIR/."""
    _need(isinstance(raw, list) and raw, "attachments is not a non-empty list")
    files = {e.path for e in entries if e.is_file}
    out = []
    for a in raw:
        _need(isinstance(a, dict) and set(a) == {"path", "role"}, "attachment is not {path, role}")
        role, path = a["role"], a["path"]
        _need(isinstance(role, str) and bool(_ROLE.match(role)), f"attachment role {_brief(role)}")
        _need(isinstance(path, str) and path.startswith(ATTACH_DIR + "/") and path in files,
              f"attachment {_brief(path)} is not a file under {ATTACH_DIR}/")
        out.append((role, path))
    return tuple(out)


def is_role(role: object) -> bool:
    """An attachment role: lowercase letters, digits, '.', '_', '-', at most 64, e.g. 'model-card'."""
    return isinstance(role, str) and bool(_ROLE.match(role))


def metadata_problem(value: Any, what: str) -> None:
    """Refuse (ManifestError) structured metadata a reader could not take safely: deeper
    than MAX_METADATA_DEPTH, larger than MAX_METADATA_BYTES, a non-finite number (JSON has
    none, json.loads accepts them) or text without a UTF-8 form."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            _need(depth <= MAX_METADATA_DEPTH, f"{what} is nested deeper than {MAX_METADATA_DEPTH}")
            items = list(v.items()) if isinstance(v, dict) else [("", x) for x in v]
            for k, x in items:
                _need(is_utf8(k), f"{what} has a key that is not valid UTF-8")
                stack.append((x, depth + 1))
        elif isinstance(v, str):
            _need(is_utf8(v), f"{what} has text that is not valid UTF-8")
        elif isinstance(v, float):
            _need(v == v and v not in (float("inf"), float("-inf")), f"{what} has a non-finite number")
        else:
            _need(v is None or isinstance(v, (bool, int)), f"{what} has a value that is not JSON")
    size = len(canonical(value))
    _need(size <= MAX_METADATA_BYTES, f"{what} is {size} bytes, more than the {MAX_METADATA_BYTES} allowed")


def _entry(e: Any) -> Entry:
    _need(isinstance(e, dict), "entry is not an object")
    path, typ, mode = e.get("path"), e.get("type"), e.get("mode")
    _need(isinstance(path, str), "entry path")
    # Path safety is check_paths' job (verify reports it as unsafe-path); here only what no
    # path can be: text without UTF-8 form, which no filesystem or catalog can hold.
    _need(not _SURROGATE.search(path), f"entry path {_brief(path)} has a lone surrogate")
    _need(_int(mode) and mode <= 0o7777, f"mode of {path!r}")
    if typ == "dir":
        dir_mtime = e.get("mtime_ns")  # absent in manifests made before directory mtimes were recorded
        _need("mtime_ns" not in e or is_mtime_ns(dir_mtime), f"mtime of {path!r} is not an int restore can set")
        return Entry(path=path, type="dir", mode=mode, mtime_ns=dir_mtime)
    if typ == "symlink":
        target = e.get("target")
        _need(set(e) == {"path", "type", "mode", "target"}, f"symlink {path!r} has unknown fields")
        _need(isinstance(target, str) and target != "" and "\0" not in target and is_utf8(target)
              and len(target.encode("utf-8")) <= 4096, f"target of symlink {path!r}")
        return Entry(path=path, type="symlink", mode=mode, target=target)
    _need(typ == "file", f"type of {path!r}")
    size, mtime = e.get("size"), e.get("mtime_ns")
    _need(_int(size), f"size of {path!r}")
    _need(is_mtime_ns(mtime), f"mtime of {path!r} is not an int restore can set")
    _need(is_hash(e.get("blake3")), f"blake3 of {path!r}")
    _need(is_hash(e.get("sha256")), f"sha256 of {path!r}")
    _need(isinstance(e.get("format"), str), f"format of {path!r}")
    tech = None
    if "tech" in e:
        tech = e["tech"]
        _need(isinstance(tech, dict), f"tech of {path!r} is not an object")
        metadata_problem(tech, f"tech of {path!r}")
    if "filemap" in e:
        fm, count = e.get("filemap"), e.get("chunk_count")
        _need("chunks" not in e and is_hash(fm), f"file map of {path!r}")
        _need(_int(count) and count > FILEMAP_THRESHOLD, f"chunk count of {path!r}")
        _need(size <= count * MAX_CHUNK_LENGTH and size >= count, f"size of {path!r} does not fit {count} chunks")
        return Entry(path=path, type="file", mode=mode, size=size, mtime_ns=mtime, blake3=e["blake3"],
                     sha256=e["sha256"], format=e["format"], tech=tech, filemap=fm, chunk_count=count)
    _need("chunk_count" not in e, f"chunk count of {path!r} without a file map")
    raw_chunks = e.get("chunks")
    _need(isinstance(raw_chunks, list), f"chunks of {path!r}")
    # more inline chunks than the threshold would be a file map in a manifest archiver writes;
    # accepted (v1 manifests made before file maps can hold any number)
    chunks = _chunk_list(raw_chunks, size, path)
    return Entry(
        path=path, type="file", mode=mode, size=size, mtime_ns=mtime, blake3=e["blake3"],
        sha256=e["sha256"], format=e["format"], chunks=chunks, tech=tech,
    )


def _chunk_list(raw_chunks: list, size: int, path: str) -> tuple[ChunkRef, ...]:
    """Chunk records, checked: contiguous from 0, bounded, adding up to the file's size.
    One combined test per record (a 10 TB archive has ~1.3 million); `_chunk_problem` says
    what is wrong with a record that fails it."""
    chunks = []
    append = chunks.append
    codecs: dict[str, str] = {}  # one str per codec name: a million refs share a handful
    pos = 0
    match = _HEX64.match
    for c in raw_chunks:
        if type(c) is list and len(c) == 5:
            off, length, h, stored, codec = c
            if (type(off) is int and off == pos and type(length) is int and 0 < length <= MAX_CHUNK_LENGTH
                    and type(h) is str and match(h) and type(stored) is int
                    and 0 <= stored <= length + MAX_CHUNK_OVERHEAD and type(codec) is str):
                append(ChunkRef(off, length, h, stored, codecs.setdefault(codec, codec)))
                pos += length
                continue
        _chunk_problem(c, pos, path)
    _need(pos == size, f"chunks of {path!r} do not add up to its size")
    return tuple(chunks)


def _chunk_problem(c: Any, pos: int, path: str) -> None:
    """Raise the ManifestError that says why chunk record `c` (expected at `pos`) is refused."""
    _need(isinstance(c, list) and len(c) == 5, f"chunk record of {path!r}")
    off, length, h, stored, codec = c
    _need(_int(off) and off == pos, f"chunk offsets of {path!r} are not contiguous")
    _need(_int(length) and length > 0, f"chunk length in {path!r}")
    _need(length <= MAX_CHUNK_LENGTH,
          f"chunk length {length} in {path!r} is more than the {MAX_CHUNK_LENGTH} a chunk can be")
    _need(is_hash(h), f"chunk hash in {path!r}")
    _need(_int(stored), f"chunk stored size in {path!r}")
    _need(stored <= length + MAX_CHUNK_OVERHEAD,
          f"chunk stored size {stored} in {path!r} is more than a {length}-byte chunk's object can be")
    _need(isinstance(codec, str), f"chunk codec in {path!r}")
    _need(False, f"chunk record of {path!r}")


# -- file maps (manifest v2) ---------------------------------------------------------------------
def filemap_bytes(chunks: tuple[ChunkRef, ...] | list[ChunkRef]) -> bytes:
    """The file map archiver writes for a chunk list: binary (file map version 2,
    manifests.filemapbin) when its codec names fit the binary codec table (every codec
    archiver has), else canonical JSON (`filemap_json_bytes`). It names no path, so the same
    content has the same map (and hash) in every version written this way."""
    if filemapbin.encodable({c.codec for c in chunks}) and all(is_hash(c.hash) for c in chunks):
        return filemapbin.encode([c.length for c in chunks], [c.hash for c in chunks],
                                 [c.stored_size for c in chunks], [c.codec for c in chunks])
    return filemap_json_bytes(chunks)


def filemap_json_bytes(chunks: tuple[ChunkRef, ...] | list[ChunkRef]) -> bytes:
    """The canonical JSON file map (file map version 1, every map written before binary maps):
    `{"chunks":[...],"format":"archiver-filemap","version":1}`."""
    return canonical({"chunks": [c.to_json() for c in chunks], "format": FILEMAP_FORMAT, "version": 1})


def filemap_bytes_for(e: Entry) -> bytes | None:
    """The map bytes of a resolved entry `e` that hash to its `filemap`, in whichever form it
    was written (binary, or JSON by an earlier archiver), else None (the map is not its chunks)."""
    for make in (filemap_bytes, filemap_json_bytes):
        data = make(e.chunks)
        if manifest_id(data) == e.filemap:
            return data
    return None


def needs_filemap(e: Entry) -> bool:
    """True for a file over the threshold whose map is not made yet: `with_filemap` replaces
    exactly these entries (so a tree made from one of them is not the commit's)."""
    return e.is_file and not e.filemap and len(e.chunks) > FILEMAP_THRESHOLD


def with_filemap(e: Entry) -> tuple[Entry, bytes | None]:
    """(the entry as a v2 manifest records it, its file map bytes or None). A file over the
    threshold gets `filemap`/`chunk_count` and keeps its chunks in memory; any other entry
    (or one that already has its map) is returned as is."""
    if not needs_filemap(e):
        return e, None
    data = filemap_bytes(e.chunks)
    return replace(e, filemap=manifest_id(data), chunk_count=len(e.chunks)), data


def with_filemaps(m: Manifest) -> Manifest:
    """`m` with every file over the threshold recorded through a file map (see with_filemap)."""
    if not any(map(needs_filemap, m.entries)):
        return m  # with_filemap leaves every entry (a tree of small files): no tuple made
    return replace(m, entries=tuple(with_filemap(e)[0] for e in m.entries))  # at least one entry is replaced


def parse_filemap(data: bytes, e: Entry) -> tuple[ChunkRef, ...]:
    """The chunk list of entry `e` from its file map's bytes: they must hash to `e.filemap`,
    be canonical, and hold exactly `e.chunk_count` chunks that add up to `e.size`. Binary
    (version 2) and JSON (version 1) maps are told apart by their first bytes."""
    import numpy as np
    binary = _binary_filemap(data, e)
    if binary is not None:
        lengths, recs = binary
        offsets = [0]
        offsets.extend(np.cumsum(lengths[:-1], dtype=np.uint64).tolist())
        return tuple(ChunkRef(o, n, h, st, c) for o, n, (h, st, c) in zip(offsets, lengths.tolist(), recs))
    plain = _plain_filemap(data, e)
    if plain is not None:
        return tuple(ChunkRef(*c) for c in plain)
    return _parse_filemap_json(data, e)


# A file map in plain canonical form (what filemap_bytes writes for codec names that need no
# JSON escape: every map archiver writes) is read with one regular expression instead of
# JSON objects: its records, each followed by a comma and the next record or by the end,
# must tile the chunk list exactly (their lengths add up to it), which proves it canonical.
# Anything else goes through the JSON reader, which accepts or refuses it with the same
# checks and messages.
_PLAIN_NUM = "(0|[1-9][0-9]{0,18})"
_PLAIN_HEAD = '{"chunks":['
_PLAIN_TAIL = '],"format":"%s","version":1}' % FILEMAP_FORMAT
_PLAIN_FIELDS = re.compile(r'\[%s,([1-9][0-9]{0,18}),"([0-9a-f]{64})",%s,"([A-Za-z0-9_.+-]*)"\](?:,(?=\[)|\Z)'
                           % (_PLAIN_NUM, _PLAIN_NUM))
_PLAIN_FIXED = len('[,,"",,""]') + 64  # a record's length besides its four variable fields


def _plain_filemap(data: bytes, e: Entry) -> list[tuple[int, int, str, int, str]] | None:
    """(offset, length, hash, stored size, codec) of each chunk of a map in plain canonical
    form that passes every check of parse_filemap; None for any other bytes (the JSON reader
    then decides, and says what is wrong)."""
    if len(data) > MAX_FILEMAP_BYTES or manifest_id(data) != e.filemap:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not (text.startswith(_PLAIN_HEAD) and text.endswith(_PLAIN_TAIL)) or len(text) < len(_PLAIN_HEAD + _PLAIN_TAIL):
        return None
    section = text[len(_PLAIN_HEAD):len(text) - len(_PLAIN_TAIL)]
    fields = _PLAIN_FIELDS.findall(section)
    if len(fields) != e.chunk_count:
        return None
    return _tiled(section, fields, e.size, {})  # one str per codec name: a million refs share a handful


def _tiled(section: str, fields: list[tuple[str, str, str, str, str]], size: int, codecs: dict[str, str],
           make: Callable[..., Any] | None = None) -> list[Any] | None:
    """The chunk records `fields` (what _PLAIN_FIELDS found in `section`) as (offset, length,
    hash, stored size, codec) tuples, or made by `make`, if they pass the checks of
    `_chunk_list`, tile `section` exactly (canonical, nothing skipped between them) and add
    up to `size`; else None. Shared by the plain file-map and tree readers."""
    out: list[Any] = []
    append = out.append
    pos = 0
    width = 0  # the variable part of the records' lengths
    for off, length, h, stored, codec in fields:
        n, st = int(length), int(stored)
        if int(off) != pos or n > MAX_CHUNK_LENGTH or st > n + MAX_CHUNK_OVERHEAD:
            return None
        rec = (pos, n, h, st, codecs.setdefault(codec, codec))
        append(rec if make is None else make(*rec))
        pos += n
        width += len(off) + len(length) + len(stored) + len(codec)
    tiled = width + len(fields) * (_PLAIN_FIXED + 1) - (1 if fields else 0) == len(section)
    return out if tiled and pos == size else None


def filemap_records(data: bytes, e: Entry) -> MapRecords | list[tuple[str, int, str]]:
    """(hash, stored size, codec) of each chunk in entry `e`'s file map, checked as
    parse_filemap checks it (the same errors), without a ChunkRef per chunk: what the catalog
    records of a map a worker wrote. MapRecords (arrays; a binary map is read without any
    Python work per chunk), or triples for a JSON map naming more codecs than it indexes."""
    binary = _binary_filemap(data, e)
    if binary is not None:
        return binary[1]
    plain = _plain_filemap(data, e)
    if plain is None:
        triples = [(c.hash, c.stored_size, c.codec) for c in _parse_filemap_json(data, e)]
    else:
        triples = [(h, st, codec) for _, _, h, st, codec in plain]
    try:
        return MapRecords.from_triples(triples)
    except ValueError:  # more codec names than the arrays index: the triples as they are
        return triples


def _binary_filemap(data: bytes, e: Entry) -> tuple[Any, MapRecords] | None:
    """(lengths, records) of a binary map (manifests.filemapbin) checked against entry `e`
    (bound, hash, then its own checks: ManifestError), or None for a map that is not binary."""
    if not filemapbin.is_binary(data):
        return None
    if len(data) > MAX_FILEMAP_BYTES:
        raise ManifestError(f"file map of {e.path!r} is {len(data)} bytes, more than the {MAX_FILEMAP_BYTES} allowed")
    if manifest_id(data) != e.filemap:
        raise ManifestError(f"file map {e.filemap[:16]} of {e.path!r} does not match its hash (tampered or corrupt)")
    return filemapbin.decode(data, e.chunk_count, e.size, MAX_CHUNK_LENGTH, MAX_CHUNK_OVERHEAD,
                             f"file map {e.filemap[:16]} of {e.path!r}")


def _parse_filemap_json(data: bytes, e: Entry) -> tuple[ChunkRef, ...]:
    if len(data) > MAX_FILEMAP_BYTES:
        raise ManifestError(f"file map of {e.path!r} is {len(data)} bytes, more than the {MAX_FILEMAP_BYTES} allowed")
    if manifest_id(data) != e.filemap:
        raise ManifestError(f"file map {e.filemap[:16]} of {e.path!r} does not match its hash (tampered or corrupt)")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ManifestError(f"file map {e.filemap[:16]} of {e.path!r} is not valid JSON") from None
    _need(isinstance(obj, dict) and set(obj) == {"chunks", "format", "version"}
          and obj["format"] == FILEMAP_FORMAT and obj["version"] == 1 and isinstance(obj["chunks"], list),
          f"file map {e.filemap[:16]} of {e.path!r}")
    _need(len(obj["chunks"]) == e.chunk_count, f"file map of {e.path!r} holds {len(obj['chunks'])} chunks, "
                                               f"not the {e.chunk_count} its entry says")
    chunks = _chunk_list(obj["chunks"], e.size, e.path)
    _need(all(is_utf8(c.codec) for c in chunks), f"chunk codec in {e.path!r} is not valid UTF-8")
    # the records are exact ints and strs (checked above), so the parsed object's canonical
    # form is the map's: comparing it proves the bytes canonical without building the refs' JSON
    _need(canonical(obj) == data, f"file map of {e.path!r} is not in canonical form")
    return chunks


# -- trees (manifest v3) -------------------------------------------------------------------------
def parent_of(path: str) -> str:
    """The directory holding `path` in a tree ("" for the top): the one rule trees are grouped by."""
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _plain_path(path: str) -> bool:
    """A path a tree can hold: components that are names (not empty, '.' or '..')."""
    parts = path.split("/")
    return "" not in parts and "." not in parts and ".." not in parts


def tree_objects(entries: tuple[Entry, ...] | list[Entry], previous: Mapping[str, PreviousTree] | None = None
                 ) -> tuple[str, dict[str, bytes], dict[str, str]] | None:
    """(top tree hash, hash -> tree bytes, directory path -> its tree hash) for `entries`, or
    None when they do not form a tree (a path with an empty, '.' or '..' component, a path
    listed twice, or an entry whose parent directory has no entry): such a manifest keeps
    its entries inline. Each tree lists one directory's entries by name, sorted; a
    directory entry with entries under it names their tree in `tree`.
    `previous` (directory -> a tree read for it earlier: `PreviousTree`): a directory whose
    entries are that tree's own (`same_as_previous`) keeps its bytes, not serialised again."""
    where = tree_children((e.path, e.type == "dir") for e in entries)
    if where is None:
        return None
    children = {d: [entries[i] for i in idx] for d, idx in where.items()}
    hashes: dict[str, str] = {}
    objects: dict[str, bytes] = {}
    for d in sorted(children, key=lambda p: -p.count("/") - (p != "")):  # deepest first
        old = previous.get(d) if previous else None
        if old is not None and same_as_previous(children[d], hashes, old):
            data, h = old.data, old.hash
        else:
            data = tree_bytes(children[d], hashes)
            h = manifest_id(data)
        if h != EMPTY_TREE or d == "":  # an empty directory names no tree
            objects[h] = data
        hashes[d] = h
    return hashes[""], objects, hashes


def tree_children(items: Iterable[tuple[str, bool]]) -> dict[str, list[int]] | None:
    """directory path ("" for the top) -> the positions in `items` ((path, is a directory),
    in order) of its entries, or None when they do not form a tree (a path with an empty, '.'
    or '..' component, a path listed twice, or an entry whose parent directory has no entry).
    `tree_objects` groups its entries by it; a caller that knows the paths before the entries
    (the scan, before any file is read) lays out the trees it will make (archiver.earlytrees)."""
    items = list(items)
    children: dict[str, list[int]] = {"": []}
    for path, is_dir in items:
        if not _plain_path(path) or path in children and is_dir:
            return None
        if is_dir:
            children[path] = []
    seen: set[str] = set()
    for i, (path, _) in enumerate(items):
        parent = parent_of(path)
        if parent not in children or path in seen:
            return None
        seen.add(path)
        children[parent].append(i)
    return children


@dataclass(frozen=True)
class PreviousTree:
    """A tree read for a directory (its hash, bytes, and the entries and subtree hashes
    `parse_tree` returns for them), offered to `tree_objects` for reuse. The bytes must hash
    to `hash` (checked when it is offered: `previous_tree`)."""

    hash: str
    data: bytes
    entries: tuple[tuple[Entry, str], ...]


def previous_tree(h: str, data: bytes, entries: Iterable[tuple[Entry, str]]) -> PreviousTree | None:
    """A PreviousTree of bytes that hash to `h`, else None (never offer bytes under another name)."""
    return PreviousTree(h, data, tuple(entries)) if manifest_id(data) == h else None


def same_as_previous(entries: list[Entry], hashes: dict[str, str], old: PreviousTree) -> bool:
    """True if `tree_bytes(entries, hashes)` is `old.data` without serialising: the same names,
    each file the very Entry object read from that tree (equal values could still
    serialise otherwise, e.g. 1 and 1.0 in `tech`), each directory and symlink equal in its
    fields of ints and text (a directory with the same subtree hash)."""
    if len(entries) != len(old.entries):
        return False
    by_path = {e.path: (e, sub) for e, sub in old.entries}
    for e in entries:
        got = by_path.get(e.path)
        if got is None:
            return False
        was, sub = got
        if e.type == "dir":
            if was.type != "dir" or (e.mode, e.mtime_ns) != (was.mode, was.mtime_ns) \
                    or type(e.mode) is not int or not (e.mtime_ns is None or type(e.mtime_ns) is int):
                return False
            now = hashes.get(e.path, EMPTY_TREE)
            if (now if now != EMPTY_TREE else "") != sub:
                return False
        elif e.type == "symlink":  # made afresh from the scan each run: equal text and mode
            if was.type != "symlink" or type(e.mode) is not int or type(e.target) is not str \
                    or (e.mode, e.target) != (was.mode, was.target) or sub:
                return False
        elif e is not was:
            return False
    return True


def tree_bytes(entries: list[Entry], hashes: dict[str, str]) -> bytes:
    """The canonical tree of one directory: its entries as the manifest records them, with
    `name` (the last path component) for `path`, sorted by name, and `tree` on each directory
    that has entries (its hash in `hashes`, by directory path). Entries of exact ints and
    text without tech (what a scan makes) are laid out by formatting (`_row_plain`), the
    same bytes `canonical` writes (tests/test_trees.py compares them); any other tree is
    serialised by `canonical` (`_tree_bytes_json`)."""
    rows: list[tuple[str, str]] = []
    for e in entries:
        name = e.path.rsplit("/", 1)[-1]
        sub = hashes[e.path] if e.type == "dir" and e.path in hashes and _has_children(e.path, hashes) else ""
        row = _row_plain(e, name, sub)
        if row is None:
            return _tree_bytes_json(entries, hashes)
        rows.append((name, row))
    rows.sort(key=lambda r: r[0])
    return b'{"entries":[%s],"format":"%s","version":1}' % (",".join([r for _, r in rows]).encode("ascii"),
                                                            TREE_FORMAT.encode())


_jstr = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # a str as canonical() writes it


def _row_plain(e: Entry, name: str, sub: str) -> str | None:
    """The canonical JSON of entry `e`'s tree row (sorted keys, no spaces, ASCII), laid out
    by formatting; None for a row only `canonical` writes (tech, a value not an exact int or
    str, an unknown type)."""
    if type(e.mode) is not int:
        return None
    if e.type == "file":
        if e.tech is not None or not (e.mtime_ns is None or type(e.mtime_ns) is int) or type(e.size) is not int \
                or type(e.blake3) is not str or type(e.sha256) is not str or type(e.format) is not str:
            return None
        if e.filemap:
            if type(e.filemap) is not str or type(e.chunk_count) is not int:
                return None
            middle = '"chunk_count":%d,"filemap":%s' % (e.chunk_count, _jstr(e.filemap))
        else:
            parts = []
            for c in e.chunks:
                if type(c.offset) is not int or type(c.length) is not int or type(c.stored_size) is not int \
                        or type(c.hash) is not str or type(c.codec) is not str:
                    return None
                parts.append('[%d,%d,%s,%d,%s]' % (c.offset, c.length, _jstr(c.hash), c.stored_size, _jstr(c.codec)))
            middle = '"chunks":[%s]' % ",".join(parts)
        return '{"blake3":%s,%s,"format":%s,"mode":%d,"mtime_ns":%d,"name":%s,"sha256":%s,"size":%d,"type":"file"}' % (
            _jstr(e.blake3), middle, _jstr(e.format), e.mode, 0 if e.mtime_ns is None else e.mtime_ns, _jstr(name),
            _jstr(e.sha256), e.size)
    if e.type == "dir":
        if e.mtime_ns is not None and type(e.mtime_ns) is not int:
            return None
        mtime = "" if e.mtime_ns is None else ',"mtime_ns":%d' % e.mtime_ns
        tree = ',"tree":%s' % _jstr(sub) if sub else ""
        return '{"mode":%d%s,"name":%s%s,"type":"dir"}' % (e.mode, mtime, _jstr(name), tree)
    if e.type == "symlink" and type(e.target) is str:
        return '{"mode":%d,"name":%s,"target":%s,"type":"symlink"}' % (e.mode, _jstr(name), _jstr(e.target))
    return None


def _tree_bytes_json(entries: list[Entry], hashes: dict[str, str]) -> bytes:
    """tree_bytes by `canonical`: any entries."""
    rows = []
    for e in entries:
        j = e.to_json()
        del j["path"]
        j["name"] = e.path.rsplit("/", 1)[-1]
        if e.type == "dir" and e.path in hashes and _has_children(e.path, hashes):
            j["tree"] = hashes[e.path]
        rows.append(j)
    rows.sort(key=lambda j: j["name"])
    return canonical({"entries": rows, "format": TREE_FORMAT, "version": 1})


def _has_children(path: str, hashes: dict[str, str]) -> bool:
    return hashes[path] != EMPTY_TREE


EMPTY_TREE = manifest_id(canonical({"entries": [], "format": TREE_FORMAT, "version": 1}))


def with_trees(m: Manifest) -> Manifest:
    """`m` as it is committed: through trees (tree, entry_count set; entries kept in memory)
    when it has more than TREE_THRESHOLD entries that form a tree, else inline."""
    return with_trees_made(m)[0]


def with_trees_made(m: Manifest, previous: Mapping[str, PreviousTree] | None = None
                    ) -> tuple[Manifest, tuple[str, dict[str, bytes], dict[str, str]] | None]:
    """`with_trees(m)` and the `tree_objects` it made (None when inline), so a commit builds
    its trees once and hands the same objects to the store, the proof and the catalog;
    `previous`: trees read earlier that unchanged directories keep (see `tree_objects`)."""
    if len(m.entries) > TREE_THRESHOLD:
        made = tree_objects(m.entries, previous)
        if made is not None:
            return replace(m, tree=made[0], entry_count=len(m.entries)), made
    return (replace(m, tree="", entry_count=0) if m.tree else m), None


def prove_trees(m: Manifest, objects: dict[str, bytes], by_dir: dict[str, str], known: Any = ()) -> int:
    """ManifestError unless the reader reads `m`'s trees (`tree_objects(m.entries)`: objects,
    by_dir) as exactly `m.entries`. Each tree not in `known` is parsed with the reader's own
    checks (`parse_tree`), canonical form included: its bytes being `tree_bytes` of the
    directory's entries, a tree that re-serialises to them holds entries whose JSON is the
    entries' JSON, so the list need not be compared again (hence `check_tree`: the reader's
    checks without the entries it would build). A tree in `known` (bytes already
    parsed and proved under this very hash, e.g. by an earlier commit) is not parsed again:
    the same hash is the same bytes, which read the same. Returns how many were parsed."""
    _need(m.tree == by_dir.get("") and m.entry_count == len(m.entries),
          "manifest does not name the top tree and entry count of its entries")
    parsed: set[str] = set()
    for d, h in sorted(by_dir.items()):
        if h in known or h in parsed or (h == EMPTY_TREE and d):  # an empty directory names no tree
            continue
        check_tree(objects[h], h, d)
        parsed.add(h)
    if m.attachments:  # as resolve_trees checks them once the entries are read
        _attachments([{"path": p, "role": r} for r, p in m.attachments], tuple(m.entries))
    return len(parsed)


def check_tree(data: bytes, h: str, where: str) -> None:
    """ManifestError unless `parse_tree(data, h, where)` accepts the bytes: every check it
    makes, with the same errors, but a tree in plain canonical form builds no Entry or
    ChunkRef (a commit proving the trees it made would discard them)."""
    _tree_bytes_ok(data, h, where)
    if _plain_tree(data, where, build=False) is None:
        _parse_tree_json(data, h, where)


def _tree_bytes_ok(data: bytes, h: str, where: str) -> None:
    label = where or "/"
    if len(data) > MAX_TREE_BYTES:
        raise ManifestError(f"tree {h[:16]} of {label!r} is {len(data)} bytes, more than the {MAX_TREE_BYTES} allowed")
    if manifest_id(data) != h:
        raise ManifestError(f"tree {h[:16]} of {label!r} does not match its hash (tampered or corrupt)")


def parse_tree(data: bytes, h: str, where: str) -> list[tuple[Entry, str]]:
    """The entries of the tree of directory `where` ("" for the top) from its bytes: they must
    hash to `h` and be canonical. Returns (entry with its full path, its subtree's hash or "")."""
    _tree_bytes_ok(data, h, where)
    plain = _plain_tree(data, where)
    if plain is not None:
        return plain
    return _parse_tree_json(data, h, where)


# A tree in plain canonical form (what tree_bytes writes for entries whose names, formats,
# codecs and link targets need no JSON escape and which carry no `tech`: the trees of the
# small-file archives whose reading is what a restore or deep verify of them costs) is read
# with one regular expression per entry instead of JSON objects, a dict per entry and a
# re-serialisation: the entries must tile the list exactly (each followed by a comma and the
# next or by the end), hold only the canonical keys in order, pass every check `_entry` makes
# and be sorted by unique name, which proves the bytes canonical. Anything else goes through
# the JSON reader, which accepts or refuses it with the same checks and messages.
_PT_STR = r'[\x20\x21\x23-\x5b\x5d-\x7e]'  # printable ASCII but '"' and '\\': JSON writes them as is
_PT_INT = "(0|-?[1-9][0-9]{0,30})"
_PT_HEX = "([0-9a-f]{64})"
_PT_HEAD = b'{"entries":['
_PT_TAIL = b'],"format":"%s","version":1}' % TREE_FORMAT.encode()
_PT_ENTRY = re.compile(
    r'\{"blake3":%s,(?:"chunks":\[((?:\[[^\[\]]*\],?)*)\]|"chunk_count":%s,"filemap":%s),"format":"(%s*)",'
    r'"mode":%s,"mtime_ns":%s,"name":"(%s+)","sha256":%s,"size":%s,"type":"file"\}'
    r'|\{"mode":%s(?:,"mtime_ns":%s)?,"name":"(%s+)"(?:,"tree":%s)?,"type":"dir"\}'
    r'|\{"mode":%s,"name":"(%s+)","target":"(%s{1,4096})","type":"symlink"\}'
    % (f'"{_PT_HEX}"', _PLAIN_NUM, f'"{_PT_HEX}"', _PT_STR, _PLAIN_NUM, _PT_INT, _PT_STR, f'"{_PT_HEX}"', _PLAIN_NUM,
       _PLAIN_NUM, _PT_INT, _PT_STR, f'"{_PT_HEX}"', _PLAIN_NUM, _PT_STR, _PT_STR))


def _plain_tree(data: bytes, where: str, build: bool = True) -> list[tuple[Entry, str]] | None:
    """parse_tree's answer for a tree in plain canonical form that passes every check of the
    JSON reader (its bytes already checked against their hash); None for any other bytes (the
    JSON reader then decides, and says what is wrong). build=False: the same checks, but no
    Entry or ChunkRef is made: [] for bytes that pass (`check_tree`)."""
    if not (data.startswith(_PT_HEAD) and data.endswith(_PT_TAIL)) or len(data) <= len(_PT_HEAD + _PT_TAIL):
        return None
    try:
        text = data[len(_PT_HEAD):len(data) - len(_PT_TAIL)].decode("ascii")
    except UnicodeDecodeError:
        return None
    prefix = where + "/" if where else ""
    out: list[tuple[Entry, str]] = []
    append = out.append
    match = _PT_ENTRY.match
    codecs: dict[str, str] = {}
    pos, end, last = 0, len(text), None
    while True:
        m = match(text, pos)
        if m is None:
            return None
        (b3, chunks, count, fm, fmt, mode, mtime, name, sha, size,
         dmode, dmtime, dname, sub, lmode, lname, target) = m.groups()
        if name is not None:  # a file
            mode_i, mtime_i, size_i = int(mode), int(mtime), int(size)
            if not MTIME_NS_MIN <= mtime_i <= MTIME_NS_MAX:
                return None
            if chunks is None:
                n = int(count)
                if n <= FILEMAP_THRESHOLD or not n <= size_i <= n * MAX_CHUNK_LENGTH:
                    return None
                if build:
                    e = Entry(prefix + name, "file", mode_i, size_i, mtime_i, b3, sha, fmt, filemap=fm, chunk_count=n)
            elif build:
                refs = _plain_one_chunk(chunks, size_i, codecs)  # most small files: no chunk or one
                if refs is None:
                    refs = _plain_chunks(chunks, size_i, codecs)
                    if refs is None:
                        return None
                elif refs is _NOT_PLAIN:
                    return None
                e = _file_entry(prefix + name, mode_i, size_i, mtime_i, b3, sha, fmt, refs)
            elif _tiled(chunks, _PLAIN_FIELDS.findall(chunks), size_i, codecs) is None:  # as _plain_chunks checks
                return None
            sub = ""
        elif dname is not None:
            name, mode_i = dname, int(dmode)
            mtime_i = None if dmtime is None else int(dmtime)
            if mtime_i is not None and not MTIME_NS_MIN <= mtime_i <= MTIME_NS_MAX or sub == EMPTY_TREE:
                return None
            if build:
                e = Entry(prefix + name, "dir", mode_i, mtime_ns=mtime_i)
            sub = sub or ""
        else:
            name, mode_i = lname, int(lmode)
            if build:
                e = Entry(prefix + name, "symlink", mode_i, target=target)
            sub = ""
        if mode_i > 0o7777 or "/" in name or name in (".", "..") or (last is not None and name <= last):
            return None
        last = name
        if build:
            append((e, sub))
        pos = m.end()
        if pos == end:
            return out
        if text[pos] != "," or pos + 1 == end:
            return None
        pos += 1


# The chunk list of a plain tree entry of one chunk, in full: a file of one chunk starts at 0.
_PLAIN_ONE = re.compile(r'\[0,([1-9][0-9]{0,18}),"([0-9a-f]{64})",%s,"([A-Za-z0-9_.+-]*)"\]' % _PLAIN_NUM)
_NOT_PLAIN = object()  # `_plain_one_chunk`: a list of no chunk or one that fails a check


def _plain_one_chunk(section: str, size: int, codecs: dict[str, str]) -> tuple[ChunkRef, ...] | object | None:
    """`_plain_chunks` of a list of no chunk or one, without the general tiling loop: the
    refs, `_NOT_PLAIN` for a list `_plain_chunks` would refuse (the same checks), or None
    for a list of more chunks or of any other form (`_plain_chunks` then decides)."""
    if not section:
        return () if size == 0 else _NOT_PLAIN  # no records: they add up to 0
    m = _PLAIN_ONE.fullmatch(section)
    if m is None:
        return None
    length, h, stored, codec = m.groups()
    n, st = int(length), int(stored)
    if n != size or n > MAX_CHUNK_LENGTH or st > n + MAX_CHUNK_OVERHEAD:
        return _NOT_PLAIN
    return (ChunkRef(0, n, h, st, codecs.setdefault(codec, codec)),)


_new_entry = object.__new__
_set = object.__setattr__


def _file_entry(path: str, mode: int, size: int, mtime_ns: int, blake3: str, sha256: str, fmt: str,
                chunks: tuple[ChunkRef, ...]) -> Entry:
    """Entry(path, "file", mode, size, mtime_ns, blake3, sha256, fmt, chunks), equal in every
    field (defaults for the rest), made without the frozen dataclass's __init__ (one
    object.__setattr__ per field): the tree reader makes one per file of an archive. Entry
    has no __post_init__ and no slots, so its fields are its __dict__."""
    e = _new_entry(Entry)
    _set(e, "__dict__", {"path": path, "type": "file", "mode": mode, "size": size, "mtime_ns": mtime_ns,
                         "blake3": blake3, "sha256": sha256, "format": fmt, "chunks": chunks, "tech": None,
                         "target": "", "filemap": "", "chunk_count": 0})
    return e


def _plain_chunks(section: str, size: int, codecs: dict[str, str]) -> tuple[ChunkRef, ...] | None:
    """The chunk records of a plain tree entry, checked as `_chunk_list` checks them, if they
    tile `section` exactly (canonical); else None."""
    refs = _tiled(section, _PLAIN_FIELDS.findall(section), size, codecs, ChunkRef)
    return None if refs is None else tuple(refs)


def _parse_tree_json(data: bytes, h: str, where: str) -> list[tuple[Entry, str]]:
    """parse_tree by the JSON reader: any bytes, with the error that says what is wrong."""
    label = where or "/"
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ManifestError(f"tree {h[:16]} of {label!r} is not valid JSON") from None
    _need(isinstance(obj, dict) and set(obj) == {"entries", "format", "version"} and obj["format"] == TREE_FORMAT
          and obj["version"] == 1 and isinstance(obj["entries"], list), f"tree {h[:16]} of {label!r}")
    _need(h == EMPTY_TREE or obj["entries"], f"tree {h[:16]} of {label!r} is empty")
    out: list[tuple[Entry, str]] = []
    prefix = where + "/" if where else ""
    for raw in obj["entries"]:
        _need(isinstance(raw, dict), f"entry of tree {h[:16]}")
        raw = dict(raw)
        name, sub = raw.pop("name", None), raw.pop("tree", "")
        _need(isinstance(name, str) and "/" not in name and name not in ("", ".", ".."),
              f"name {_brief(name)} in tree of {label!r}")
        _need("path" not in raw, f"path in tree of {label!r}")
        e = _entry({**raw, "path": prefix + name})
        _need(sub == "" or (e.type == "dir" and is_hash(sub) and sub != EMPTY_TREE), f"subtree of {e.path!r}")
        out.append((e, sub))
    # the entries re-serialise to these exact bytes: sorted, unique names, no unknown keys
    names = [e.path[len(prefix):] for e, _ in out]
    _need(len(set(names)) == len(names), f"tree of {label!r} lists a name twice")
    _need(_tree_json(out, names) == data, f"tree {h[:16]} of {label!r} is not in canonical form")
    return out


def _tree_json(out: list[tuple[Entry, str]], names: list[str]) -> bytes:
    """tree_bytes for parsed (entry, subtree hash) pairs and their names (no Entry copied)."""
    rows = []
    for (e, sub), name in zip(out, names):
        j = e.to_json()
        del j["path"]
        j["name"] = name
        if sub:
            j["tree"] = sub
        rows.append(j)
    rows.sort(key=lambda j: j["name"])
    return canonical({"entries": rows, "format": TREE_FORMAT, "version": 1})


def resolve_trees(m: Manifest, fetch: Any, *, stop: bool = True) -> tuple[Manifest, list[tuple[str, str, str]]]:
    """`m` with the entries of its trees, each tree's bytes from `fetch(hash, directory)` and
    checked (`parse_tree`); at most `m.entry_count` entries are read. Returns the manifest and
    the trees that could not be read: (directory, hash, why). With stop=True the first bad
    tree raises ManifestError; else the manifest comes back with the entries that could be
    read (unresolved: `m.resolved` False), so verify can check everything else."""
    if m.resolved:
        return m, []
    entries: list[Entry] = []
    bad: list[tuple[str, str, str]] = []
    fetched: dict[str, bytes] = {}  # identical directories share a tree: fetched once
    todo = [("", m.tree)]
    while todo:
        where, h = todo.pop()
        try:
            if h not in fetched:
                fetched[h] = fetch(h, where)
            got = parse_tree(fetched[h], h, where)
        except ManifestError as err:
            if stop:
                raise
            bad.append((where, h, str(err)))
            continue
        for e, sub in got:
            entries.append(e)
            _need(len(entries) <= m.entry_count, f"trees hold more than the {m.entry_count} entries the manifest says")
            if sub:
                todo.append((e.path, sub))
    entries.sort(key=lambda e: e.path)
    if not bad:
        _need(len(entries) == m.entry_count, f"trees hold {len(entries)} entries, not the {m.entry_count} "
                                             "the manifest says")
        if m.attachments:
            _attachments([{"path": p, "role": r} for r, p in m.attachments], tuple(entries))
    return replace(m, entries=tuple(entries)), bad
