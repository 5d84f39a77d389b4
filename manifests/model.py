"""Manifest records and their canonical JSON form.

A manifest names every file and directory of one archive and, per file, the ordered
chunks that rebuild it. Its id is the BLAKE3 of its canonical JSON bytes, so the id
proves the content: a manifest fetched from anywhere is accepted only if it hashes to
the id it was asked for. The JSON is deterministic (no wall-clock time) so re-running
an interrupted archive yields the same id; times live in the catalog's audit log."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import blake3

from manifests.errors import ManifestError

FORMAT = "archiver-manifest"
VERSION = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
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


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: bytes [offset, offset+length) whose BLAKE3 is `hash`."""

    offset: int
    length: int
    hash: str
    stored_size: int
    codec: str

    def to_json(self) -> list:
        return [self.offset, self.length, self.hash, self.stored_size, self.codec]


@dataclass(frozen=True)
class Entry:
    """A file or directory. Directories carry only path and mode."""

    path: str
    type: str  # "file" | "dir"
    mode: int
    size: int = 0
    mtime_ns: int = 0
    blake3: str = ""
    sha256: str = ""
    format: str = ""
    chunks: tuple[ChunkRef, ...] = ()

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    def to_json(self) -> dict[str, Any]:
        if self.type == "dir":
            return {"path": self.path, "type": "dir", "mode": self.mode}
        return {
            "path": self.path,
            "type": "file",
            "mode": self.mode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "blake3": self.blake3,
            "sha256": self.sha256,
            "format": self.format,
            "chunks": [c.to_json() for c in self.chunks],
        }


@dataclass(frozen=True)
class Manifest:
    name: str
    entries: tuple[Entry, ...]
    label: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    parent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "label": self.label,
            "meta": dict(sorted(self.meta.items())),
            "parent": self.parent,
            "entries": [e.to_json() for e in sorted(self.entries, key=lambda e: e.path)],
        }

    def canonical_json(self) -> bytes:
        """Sorted keys, no whitespace, ASCII only: the same manifest always gives the same bytes."""
        return canonical(self.to_dict())

    @property
    def id(self) -> str:
        return manifest_id(self.canonical_json())

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if e.is_file]

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
    m = manifest_from_dict(obj)
    # Compare against the parsed manifest's own serialisation, not just `canonical(obj)`:
    # unsorted entries, a missing/extra key or `"version":true` re-serialise the same way
    # but give a Manifest whose id differs from the id of these bytes.
    if canonical(obj) != data or m.canonical_json() != data:
        raise ManifestError("manifest is not in canonical form")
    return m


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ManifestError(f"malformed manifest: {what}")


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def manifest_from_dict(obj: Any) -> Manifest:
    _need(isinstance(obj, dict), "not an object")
    _need(obj.get("format") == FORMAT, "wrong format marker")
    _need(obj.get("version") == VERSION, f"unsupported version {obj.get('version')!r}")
    name, label, meta, parent = obj.get("name"), obj.get("label"), obj.get("meta"), obj.get("parent")
    _need(isinstance(name, str) and name != "", "name")
    _need(label is None or isinstance(label, str), "label")
    _need(isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()), "meta")
    _need(parent is None or is_hash(parent), "parent")
    raw_entries = obj.get("entries")
    _need(isinstance(raw_entries, list), "entries")
    entries = tuple(_entry(e) for e in raw_entries)
    return Manifest(name=name, label=label, meta=dict(meta), parent=parent, entries=entries)


def _entry(e: Any) -> Entry:
    _need(isinstance(e, dict), "entry is not an object")
    path, typ, mode = e.get("path"), e.get("type"), e.get("mode")
    _need(isinstance(path, str), "entry path")
    _need(_int(mode) and mode <= 0o7777, f"mode of {path!r}")
    if typ == "dir":
        return Entry(path=path, type="dir", mode=mode)
    _need(typ == "file", f"type of {path!r}")
    size, mtime = e.get("size"), e.get("mtime_ns")
    _need(_int(size), f"size of {path!r}")
    _need(isinstance(mtime, int) and not isinstance(mtime, bool), f"mtime of {path!r}")
    _need(is_hash(e.get("blake3")), f"blake3 of {path!r}")
    _need(is_hash(e.get("sha256")), f"sha256 of {path!r}")
    _need(isinstance(e.get("format"), str), f"format of {path!r}")
    raw_chunks = e.get("chunks")
    _need(isinstance(raw_chunks, list), f"chunks of {path!r}")
    chunks = []
    pos = 0
    for c in raw_chunks:
        _need(isinstance(c, list) and len(c) == 5, f"chunk record of {path!r}")
        off, length, h, stored, codec = c
        _need(_int(off) and off == pos, f"chunk offsets of {path!r} are not contiguous")
        _need(_int(length) and length > 0, f"chunk length in {path!r}")
        if length > MAX_CHUNK_LENGTH:  # (not _need: no message is built for the usual case)
            _need(False, f"chunk length {length} in {path!r} is more than the {MAX_CHUNK_LENGTH} a chunk can be")
        _need(is_hash(h), f"chunk hash in {path!r}")
        _need(_int(stored), f"chunk stored size in {path!r}")
        if stored > length + MAX_CHUNK_OVERHEAD:
            _need(False, f"chunk stored size {stored} in {path!r} is more than a {length}-byte chunk's object can be")
        _need(isinstance(codec, str), f"chunk codec in {path!r}")
        chunks.append(ChunkRef(off, length, h, stored, codec))
        pos += length
    _need(pos == size, f"chunks of {path!r} do not add up to its size")
    return Entry(
        path=path, type="file", mode=mode, size=size, mtime_ns=mtime, blake3=e["blake3"],
        sha256=e["sha256"], format=e["format"], chunks=tuple(chunks),
    )
