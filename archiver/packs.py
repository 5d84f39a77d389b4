"""Packs: many small chunk objects stored as one object, found through a pack index.

A chunk object (the bytes `codecs.encode` makes; on a sealed store, those bytes sealed)
whose size is below `SMALL_OBJECT` is not stored under its own key: it is appended to a
pack, and the pack's index records, per chunk hash, where its object lies in the pack.
The chunk keeps its content address (the manifest names it by hash as before), the pack is
named by the BLAKE3 of its bytes and the index by the BLAKE3 of its canonical JSON, so both
are re-hashed on every whole read. Packs only concatenate object bytes: anything done to an
object (encoding, sealing) is done before it is packed, so packs compose with it.

Sizes: `PACK_TARGET` (16 MiB, as restic's default pack size) keeps one archive of many small
files to a few large objects: on S3 one PUT per 16 MiB instead of one per file, and in cold
classes (whose per-object overhead is ~40 KB billed) one overhead per pack, while a
single-file restore still reads only its byte ranges. `SMALL_OBJECT` (1 MiB): objects that
big already amortise a request's bytes (0.1% of 1 MiB per 1 KB of request overhead), so in a
local directory, where an object is just a file, chunks of large tensor files (up to 8 MiB)
keep their own objects. On S3 each object is also a request (a price, a round trip, and the
client's CPU per request), so there the default threshold is `S3_PACK_BELOW`, above them.
A pack closes at the first object that takes it to `PACK_TARGET` or more (so it is below
`PACK_TARGET + SMALL_OBJECT`), or when the archive commits.

Large chunk objects (`SMALL_OBJECT` up to the threshold in use, `ARCHIVER_PACK_BELOW`; the
8 MiB chunks of tensor files when it is above 8 MiB) go into packs of their own, closed at
`LARGE_PACK_TARGET`: a pack and its index are two objects, so a pack must hold three 8 MiB
chunks before it saves requests over one object per chunk, and keeping the pack below 32 MiB
keeps its buffer in the allocator's reused heap (glibc maps every larger block afresh, and
faulting in new pages costs more CPU than the copy itself). Small objects keep their own
16 MiB packs, so a small file's pack (what a cold-class thaw fetches whole) does not grow."""
from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import blake3

MiB = 1 << 20
SMALL_OBJECT = 1 * MiB      # smaller objects share 16 MiB packs; the default threshold in a local directory
MAX_PACK_BELOW = 16 * MiB   # the largest threshold allowed (above every 8 MiB chunk's object: pack them all)
S3_PACK_BELOW = MAX_PACK_BELOW  # the default threshold on S3 stores: large chunks share packs too
PACK_TARGET = 16 * MiB      # a pack is closed once it holds this many bytes
LARGE_PACK_TARGET = 24 * MiB  # ... a pack of objects of SMALL_OBJECT or more: three 8 MiB chunks
MAX_PACK_BYTES = 64 * MiB   # a reader refuses (unread) a pack or span larger than this
MAX_INDEX_BYTES = 16 * MiB  # an index of the largest pack is ~1.5 MB (16 MiB of 1-byte chunks is not made)
MAX_CHUNK_LENGTH = 32 * MiB  # as manifests: a chunk's decoded length
INDEX_FORMAT = "archiver-pack-index"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class PackFormatError(ValueError):
    """A pack index that is malformed, or does not hash to its id: never trusted."""


@dataclass(frozen=True)
class PackEntry:
    """One chunk object in a pack: bytes [offset, offset+stored_size) of the pack decode
    to `length` bytes whose BLAKE3 is `hash`."""

    hash: str
    offset: int
    stored_size: int
    length: int


@dataclass(frozen=True)
class PackIndex:
    """Where each chunk of pack `pack` (a `size`-byte object) lies, in pack order."""

    pack: str
    size: int
    entries: tuple[PackEntry, ...]

    def to_json(self) -> bytes:
        """Canonical JSON (keys sorted, no whitespace, ASCII): its BLAKE3 is the index id."""
        doc = {"chunks": [[e.hash, e.offset, e.stored_size, e.length] for e in self.entries],
               "format": INDEX_FORMAT, "pack": self.pack, "size": self.size, "version": 1}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @functools.cached_property
    def id(self) -> str:
        """BLAKE3 of `to_json()`, computed once per object (an index is immutable): the driver asks
        for each adopted index's id when it adopts it and again when it records it at the commit."""
        return blake3.blake3(self.to_json()).hexdigest()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as plain rows: a worker process hands every index of its task's packs to the
        driver, and a dataclass per entry pickles and unpickles slower (bench/RESULTS.md,
        "Small-file archive: the workers' CPU per file (branch sfworkcpu)")."""
        return (_index_of_rows, (self.pack, self.size, [(e.hash, e.offset, e.stored_size, e.length)
                                                        for e in self.entries]))


_new = object.__new__


def _entries(rows: Any) -> tuple[PackEntry, ...]:
    """PackEntry(*row) for each row, its fields set in its `__dict__` (what a frozen dataclass's
    `__init__` does one `object.__setattr__` at a time, at a higher cost per entry)."""
    out = []
    for h, offset, stored, length in rows:
        e = _new(PackEntry)
        e.__dict__.update(hash=h, offset=offset, stored_size=stored, length=length)
        out.append(e)
    return tuple(out)


def _index_of_rows(pack: str, size: int, rows: list[tuple[str, int, int, int]]) -> PackIndex:
    """The PackIndex `PackIndex.__reduce__` pickled."""
    return PackIndex(pack, size, _entries(rows))


def parse_index(data: bytes, expected_id: str | None = None) -> PackIndex:
    """A pack index, accepted only if it hashes to `expected_id`, is canonical, and its
    entries tile the pack exactly (contiguous from 0, summing to the pack size), each within
    the bounds of a chunk object; PackFormatError otherwise."""
    if len(data) > MAX_INDEX_BYTES:
        raise PackFormatError(f"pack index is {len(data)} bytes, more than {MAX_INDEX_BYTES}")
    if expected_id is not None and blake3.blake3(data).hexdigest() != expected_id:
        raise PackFormatError(f"pack index does not hash to its id {expected_id}")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise PackFormatError(f"pack index is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT or doc.get("version") != 1:
        raise PackFormatError("not an archiver-pack-index version 1")
    if set(doc) != {"chunks", "format", "pack", "size", "version"}:
        raise PackFormatError("pack index has unknown or missing fields")
    pack, size, rows = doc["pack"], doc["size"], doc["chunks"]
    if not isinstance(pack, str) or not _HEX64.match(pack):
        raise PackFormatError("pack index names no valid pack id")
    if not _is_int(size) or not 0 < size <= MAX_PACK_BYTES or not isinstance(rows, list) or not rows:
        raise PackFormatError("pack index has an invalid size or no chunks")
    entries: list[PackEntry] = []
    seen: set[str] = set()
    at = 0
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str) and _HEX64.match(row[0])
                and all(_is_int(v) for v in row[1:])):
            raise PackFormatError(f"pack index entry {row!r:.80} is malformed")
        h, offset, stored, length = row
        if offset != at or not 0 < stored <= length + 232 + 64 or not 0 <= length <= MAX_CHUNK_LENGTH:
            raise PackFormatError(f"pack index entry for {h} is out of bounds (offset {offset}, expected {at})")
        if h in seen:
            raise PackFormatError(f"pack index names chunk {h} twice")
        seen.add(h)
        entries.append(PackEntry(h, offset, stored, length))
        at += stored
    if at != size:
        raise PackFormatError(f"pack index entries sum to {at} bytes, not the pack size {size}")
    index = PackIndex(pack, size, tuple(entries))
    if index.to_json() != data:
        raise PackFormatError("pack index is not in canonical form")
    return index


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class PackBuilder:
    """An open pack: chunk objects appended in order, closed into (bytes, index)."""

    parts: list[bytes] = field(default_factory=list)
    entries: list[tuple[str, int, int]] = field(default_factory=list)  # (hash, stored_size, length)
    size: int = 0
    target: int = PACK_TARGET  # closed once it holds this many bytes (LARGE_PACK_TARGET: large objects)

    def add(self, h: str, obj: bytes, length: int) -> None:
        self.parts.append(bytes(obj))
        self.entries.append((h, len(obj), length))
        self.size += len(obj)

    @property
    def full(self) -> bool:
        return self.size >= self.target

    def __len__(self) -> int:
        return len(self.entries)

    def close(self) -> tuple[bytes, PackIndex]:
        """The pack's bytes and its index (entries in pack order)."""
        data = b"".join(self.parts)
        pid = blake3.blake3(data).hexdigest()
        rows, at = [], 0
        for h, stored, length in self.entries:
            rows.append((h, at, stored, length))
            at += stored
        return data, PackIndex(pid, len(data), _entries(rows))


def is_small(stored_size: int, below: int = SMALL_OBJECT) -> bool:
    """Whether a chunk object of this size goes into a pack (`below`: the threshold in use)."""
    return stored_size < below


def pack_target(stored_size: int) -> int:
    """The size at which a pack of objects of this size closes: small objects share 16 MiB
    packs, large ones (only packed when the threshold is above `SMALL_OBJECT`) 24 MiB ones."""
    return PACK_TARGET if stored_size < SMALL_OBJECT else LARGE_PACK_TARGET


@dataclass(frozen=True)
class PackLocation:
    """Where one chunk object lies: bytes [offset, offset+stored_size) of pack `pack` (a
    `pack_size`-byte object described by index `index_id`)."""

    pack: str
    offset: int
    stored_size: int
    length: int
    pack_size: int
    index_id: str

    def where(self) -> str:
        return f"pack {self.pack} bytes {self.offset}-{self.offset + self.stored_size}"


@dataclass
class PackState:
    """A repository's packing and pack-reading state for one process (no I/O here).

    `open`: the pack being filled (with the write policy it is for); `pending`: chunks in
    the open pack or in a pack being written (not yet durable: dedup answers from here,
    the manifest waits for `flush`); `in_flight`/`errors`: packs being written by workers;
    `written`/`written_at`: locations of packs this process wrote (the catalog learns them at the flush,
    on the committing thread); `proved`: per pack, the chunks (hash -> codec) a whole read
    of it proved intact; `store_map`: the store's own indexes, loaded once if needed."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    open: PackBuilder | None = None
    open_policy: Any = None
    open_large: PackBuilder | None = None  # the open pack of large objects (LARGE_PACK_TARGET)
    open_large_policy: Any = None
    pending: dict[str, tuple[int, str]] = field(default_factory=dict)  # hash -> (stored_size, codec)
    in_flight: int = 0
    errors: list[BaseException] = field(default_factory=list)
    written: dict[str, list[PackLocation]] = field(default_factory=dict)
    # ... the same for packs written by this run, as (index, index id, entry number) per chunk
    written_at: dict[str, list[tuple[PackIndex, str, int]]] = field(default_factory=dict)
    unrecorded: list[PackIndex] = field(default_factory=list)
    proved: dict[str, dict[str, str]] = field(default_factory=dict)
    pack_locks: dict[str, threading.Lock] = field(default_factory=dict)
    store_map: dict[str, list[PackLocation]] | None = None
    spans: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (pack, start) -> bytes of a planned span
    plan: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # pack -> planned spans (start, end)
    planned_at: dict[str, tuple[str, int]] = field(default_factory=dict)  # hash -> (pack, offset), of the plan
    planned_locs: dict[str, list[PackLocation]] = field(default_factory=dict)  # hash -> locations, of the plan
    planned_hashes: frozenset[str] = frozenset()  # every hash the plan looked up (packed or not)
    thawed: set[str] = field(default_factory=set)  # objects whose thaw this process requested

    def __post_init__(self) -> None:
        self.idle = threading.Condition(self.lock)

    def pack_lock(self, pack: str) -> threading.Lock:
        with self.lock:
            return self.pack_locks.setdefault(pack, threading.Lock())


def locations(index: PackIndex, index_id: str) -> list[tuple[str, PackLocation]]:
    """(chunk hash, location) for every entry of an index."""
    return [(e.hash, PackLocation(index.pack, e.offset, e.stored_size, e.length, index.size, index_id))
            for e in index.entries]


def plan_spans(ranges: list[tuple[int, int]], gap: int, limit: int) -> list[tuple[int, int]]:
    """Merge sorted byte ranges of one pack into spans read with one request each: ranges
    closer than `gap` bytes are joined (reading a small gap costs less than a request), and
    no span grows past `limit` bytes (memory)."""
    spans: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if spans and start - spans[-1][1] <= gap and end - spans[-1][0] <= limit:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans
