"""The SQLite catalog: an index of manifests and a ledger of what was done.

The store is the source of truth; the catalog makes lookups cheap (which chunks exist,
which manifest a name or label points to) and keeps an append-only audit log of archive
and verify runs. Manifest rows, their file and chunk rows, and audit rows are immutable:
triggers abort UPDATE, DELETE and INSERT OR REPLACE, so a bug or a stray script cannot
quietly rewrite history.

Versions of one name form a chain (each manifest names its predecessor as `parent`), and
that chain, not a clock, says which version is newest: NAME resolves to the head of its
chain, and a fork or a second root makes NAME ambiguous instead of silently picking one.

Locking: WAL, so readers never wait for writers. Writes use BEGIN IMMEDIATE with a short
busy timeout; the writer leaves its pid in `<catalog>.lock` (under an flock, so a stale
mark is ignored) and a writer that times out names the holder instead of hanging. A
catalog opened with read_only=True is never created, migrated or locked by opening it;
it is read through SQLite's mode=ro, so it works on a read-only file or filesystem."""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import json
import os
import re
import socket
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import blake3
# numpy is imported inside the functions that use it: a command's start-up imports this module,
# and numpy's import (with its BLAS threads) belongs after the CLI has set OPENBLAS_NUM_THREADS
# and off the serial head of an archive (bench/RESULTS.md, branch hotpath)
if TYPE_CHECKING:
    import numpy as np

from manifests import blobrows, jsonrows
from manifests.errors import (AmbiguousReference, CatalogError, CatalogLocked, CatalogReadOnly, CatalogStoreMismatch,
                              ManifestError, UnknownReference)
from manifests.fields import index_fields
from manifests.filemapbin import MapRecords
from manifests.model import ChunkRef, Entry, Manifest, manifest_id, parse_manifest
from manifests.model import parent_of, tree_objects

SCHEMA_VERSION = 7  # 2: index on (name, parent) for chain lookups; endpoint in the store binding
# 3: events_seen, the store events (archiver.events) this catalog has recorded or replayed; fields,
#    the searchable metadata of manifests (manifests.fields)
# 4: manifest_chunks (which distinct chunks each manifest names inline, as two rowids) replaces
#    chunk_refs (one row of path, offset, length and hash text per chunk reference, which nothing
#    read but fixity's per-manifest chunk set); a v2 file map's chunks are recorded once per map
#    (filemaps, filemap_chunks) and a manifest names its maps (manifest_filemaps), so a version
#    that keeps its large files costs one row per file, not per chunk
# 5: chunk hashes as 32-byte BLOBs: `chunks` is one WITHOUT ROWID B-tree keyed by the hash (no
#    rowid table plus a text index, no unread first_seen), and manifest_chunks / filemap_chunks
#    name chunks by that hash, so recording a chunk is two sorted key inserts and no lookup;
#    filemaps.fresh_stored: a map's stored bytes if none of its chunks was known when it was
#    recorded (NULL otherwise), and chunks.owner: the map that first recorded a chunk (NULL: an
#    inline set, or recorded before schema 5), so a version's stored size is summed per fresh
#    map plus a union over its other chunks only (Catalog._stored_size)
# 6: `chunks` is keyed by the first 8 bytes of the hash (an INTEGER PRIMARY KEY, chunk_key): a
#    dedup hint that a caller confirms against the full key before trusting it (the store's own
#    object); filemap_chunks is gone: a map's chunks are read from the map object in the store
#    (chunk_coverage, _stored_size of a version naming a map that reused chunks), as
#    load_manifest does, so a new chunk costs one ~25-byte row instead of two 32-byte-key rows
# 7: `files` is one WITHOUT ROWID B-tree keyed by (manifest_id, path) (not a rowid table plus an
#    index holding the 64-character id and the path a second time), and its rows go in before
#    their manifest's row, in the same transaction: the insert trigger asks the small
#    `manifests` table whether the manifest is already recorded (then the row is refused)
#    instead of probing `files` itself for the row's key, so INSERT OR REPLACE of a recorded
#    row, and any new row under a recorded manifest, still abort
BUSY_TIMEOUT_MS = 5_000  # how long a writer waits for another writer before CatalogLocked
ID_PREFIX_MIN = 4

_IMMUTABLE = ("manifests", "files", "audit", "fields", "manifest_chunks", "manifest_filemaps")
_HEX = frozenset("0123456789abcdef")

_SCHEMA = """
CREATE TABLE "info" ("key" TEXT PRIMARY KEY, "value" TEXT);
CREATE TABLE "manifests" ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL, "label" TEXT, "parent" TEXT,
    "recorded_at" REAL, "file_count" INTEGER, "total_size" INTEGER, "stored_size" INTEGER, "json" BLOB NOT NULL);
CREATE INDEX "idx_manifests_name_recorded_at" ON "manifests" ("name", "recorded_at");
CREATE TABLE "files" ("manifest_id" TEXT REFERENCES "manifests"("id"), "path" TEXT, "type" TEXT, "size" INTEGER,
    "mode" INTEGER, "blake3" TEXT, "sha256" TEXT, PRIMARY KEY ("manifest_id", "path"));
CREATE TABLE "chunks" ("hash" TEXT PRIMARY KEY, "stored_size" INTEGER, "codec" TEXT, "first_seen" REAL);
CREATE TABLE "chunk_checks" ("hash" TEXT PRIMARY KEY, "last_verified" REAL, "ok" INTEGER);
CREATE TABLE "audit" ("seq" INTEGER PRIMARY KEY, "at" REAL, "event" TEXT, "manifest_id" TEXT, "ok" INTEGER,
    "details" TEXT);
"""
# Each step takes a catalog from schema version N to N+1, inside the opening write transaction.
_MIGRATIONS: dict[int, str] = {
    1: 'CREATE INDEX IF NOT EXISTS "idx_manifests_name_parent" ON "manifests" ("name", "parent");',
    # 2 -> 3: the store events this catalog has recorded or replayed (archiver.events), and
    # searchable metadata (manifests.fields.index_fields), one row per (key, value); manifests
    # recorded before it cannot hold a profile, tech or attachments, so there is nothing to backfill
    # but their meta, which `catalog rebuild` indexes (search by meta.* covers manifests recorded since)
    2: 'CREATE TABLE IF NOT EXISTS "events_seen" ("key" TEXT PRIMARY KEY, "writer" TEXT, "seq" INTEGER, '
       '"hash" TEXT, "at" REAL);'
       'CREATE TABLE IF NOT EXISTS "fields" ("manifest_id" TEXT REFERENCES "manifests"("id"), "key" TEXT, '
       '"seq" INTEGER, "value" TEXT, "num" REAL, PRIMARY KEY ("manifest_id", "key", "seq"));'
       'CREATE INDEX IF NOT EXISTS "idx_fields_key_value" ON "fields" ("key", "value" COLLATE NOCASE);'
       'CREATE INDEX IF NOT EXISTS "idx_fields_key_num" ON "fields" ("key", "num")',
    # 3 -> 4: the distinct chunks of each manifest, backfilled from chunk_refs, which is then
    # dropped (its rows are in each manifest's JSON, kept in "manifests"). A new catalog
    # never had chunk_refs: the step creates it empty first so the same SQL serves both.
    3: 'CREATE TABLE IF NOT EXISTS "manifest_chunks" ("manifest" INTEGER, "chunk" INTEGER, '
       'PRIMARY KEY ("manifest", "chunk")) WITHOUT ROWID;'
       'CREATE TABLE IF NOT EXISTS "chunk_refs" ("manifest_id" TEXT, "path" TEXT, "seq" INTEGER, '
       '"offset" INTEGER, "length" INTEGER, "hash" TEXT);'
       'INSERT OR IGNORE INTO "manifest_chunks" ("manifest", "chunk") SELECT m.rowid, c.rowid FROM '
       '"chunk_refs" r JOIN "manifests" m ON m.id = r.manifest_id JOIN "chunks" c ON c.hash = r.hash;'
       'DROP TABLE "chunk_refs";'
       'CREATE TABLE IF NOT EXISTS "filemaps" ("hash" TEXT PRIMARY KEY, "chunk_count" INTEGER, "size" INTEGER);'
       'CREATE TABLE IF NOT EXISTS "filemap_chunks" ("filemap" INTEGER, "chunk" INTEGER, '
       'PRIMARY KEY ("filemap", "chunk")) WITHOUT ROWID;'
       'CREATE TABLE IF NOT EXISTS "manifest_filemaps" ("manifest" INTEGER, "filemap" INTEGER, '
       'PRIMARY KEY ("manifest", "filemap")) WITHOUT ROWID',
    # 4 -> 5: the three chunk tables rebuilt with the hash as a 32-byte BLOB key (unhex: see
    # _connect), in key order; the old tables (and their triggers) are dropped, the new renamed
    4: 'CREATE TABLE "chunks_v5" ("hash" BLOB PRIMARY KEY, "stored_size" INTEGER, "codec" TEXT, "owner" INTEGER) '
       'WITHOUT ROWID;'
       'INSERT INTO "chunks_v5" ("hash", "stored_size", "codec") SELECT unhex(hash), stored_size, codec '
       'FROM "chunks" ORDER BY hash;'
       'CREATE TABLE "manifest_chunks_v5" ("manifest" INTEGER, "chunk" BLOB, '
       'PRIMARY KEY ("manifest", "chunk")) WITHOUT ROWID;'
       'INSERT INTO "manifest_chunks_v5" ("manifest", "chunk") SELECT mc.manifest, unhex(c.hash) '
       'FROM "manifest_chunks" mc JOIN "chunks" c ON c.rowid = mc.chunk ORDER BY 1, 2;'
       'CREATE TABLE "filemap_chunks_v5" ("filemap" INTEGER, "chunk" BLOB, '
       'PRIMARY KEY ("filemap", "chunk")) WITHOUT ROWID;'
       'INSERT INTO "filemap_chunks_v5" ("filemap", "chunk") SELECT fc.filemap, unhex(c.hash) '
       'FROM "filemap_chunks" fc JOIN "chunks" c ON c.rowid = fc.chunk ORDER BY 1, 2;'
       'DROP TABLE "manifest_chunks";'
       'DROP TABLE "filemap_chunks";'
       'DROP TABLE "chunks";'
       'ALTER TABLE "chunks_v5" RENAME TO "chunks";'
       'ALTER TABLE "manifest_chunks_v5" RENAME TO "manifest_chunks";'
       'ALTER TABLE "filemap_chunks_v5" RENAME TO "filemap_chunks";'
       'ALTER TABLE "filemaps" ADD COLUMN "fresh_stored" INTEGER',
    # 5 -> 6: chunks re-keyed by chunk_key (the first of two full hashes sharing a key wins:
    # the row is a hint), in key order; filemap_chunks dropped (the maps are in the store)
    5: 'CREATE TABLE "chunks_v6" ("key" INTEGER PRIMARY KEY, "stored_size" INTEGER, "codec" TEXT, "owner" INTEGER);'
       'INSERT OR IGNORE INTO "chunks_v6" ("key", "stored_size", "codec", "owner") '
       'SELECT chunk_key_blob(hash), stored_size, codec, owner FROM "chunks" ORDER BY hash;'
       'DROP TABLE "filemap_chunks";'
       'DROP TABLE "chunks";'
       'ALTER TABLE "chunks_v6" RENAME TO "chunks"',
    # 6 -> 7: files rebuilt WITHOUT ROWID, in key order; the old table (and its triggers) dropped,
    # the new one renamed and made immutable with the per-manifest insert rule (_immutable).
    # Only rows of recorded manifests with a path are carried over: a client with foreign keys
    # off (SQLite's default) could add rows under no recorded manifest, or a NULL path, to a v6
    # table; the new table's foreign key and NOT NULL key would refuse them and with them every
    # writable open of the catalog (archive, sync, rebuild), and they are no manifest's history
    6: 'CREATE TABLE "files_v7" ("manifest_id" TEXT REFERENCES "manifests"("id"), "path" TEXT, "type" TEXT, '
       '"size" INTEGER, "mode" INTEGER, "blake3" TEXT, "sha256" TEXT, PRIMARY KEY ("manifest_id", "path")) '
       'WITHOUT ROWID;'
       'INSERT INTO "files_v7" ("manifest_id", "path", "type", "size", "mode", "blake3", "sha256") '
       'SELECT manifest_id, path, type, size, mode, blake3, sha256 FROM "files" '
       'WHERE manifest_id IN (SELECT id FROM "manifests") AND path IS NOT NULL ORDER BY manifest_id, path;'
       'DROP TABLE "files";'
       'ALTER TABLE "files_v7" RENAME TO "files"',
}
# Migration steps that create tables also make them immutable (see _immutable).
_MIGRATION_TABLES: dict[int, tuple[str, ...]] = {2: ("fields",), 3: ("manifest_chunks", "filemap_chunks",
                                                                        "manifest_filemaps"),
                                                 4: ("manifest_chunks", "filemap_chunks"), 6: ("files",)}
BLOB_KEYS = 5  # the first schema version whose chunk tables are keyed by 32-byte hashes
PREFIX_KEYS = 6  # the first whose `chunks` is keyed by chunk_key and that has no filemap_chunks
_KEY_BIAS = 1 << 63


def chunk_key(h: str) -> int:
    """The `chunks` key of hex hash `h`: its first 8 bytes as a signed 64-bit integer (biased,
    so key order is hash order). Two hashes can share a key (at 1.3 million chunks, a chance
    of about 5e-8 that any two do), so a row found by it is a hint: dedup proves the store's
    object under the full hash before trusting it, and a collision can at most misstate one
    chunk in a statistic (stored size, coverage). ValueError if `h` is not hex."""
    return int(h[:16], 16) - _KEY_BIAS


def _records(refs: Iterable[ChunkRef] | Iterable[tuple[str, int, str]]) -> Iterable[tuple[str, int, str]]:
    """(hash, stored size, codec) of each chunk, from ChunkRefs or such triples."""
    refs = refs if isinstance(refs, (list, tuple)) else list(refs)
    if refs and isinstance(refs[0], ChunkRef):
        return [(c.hash, c.stored_size, c.codec) for c in refs]  # type: ignore[union-attr]
    return refs  # type: ignore[return-value]


def _fresh_sum(total: int | None, batch: int | None) -> int | None:
    """The stored bytes of a manifest's inline chunks, batch by batch, while each batch was
    wholly new (`_record_chunks`): a later batch naming an earlier one's chunk finds its key
    taken, so fresh batches are disjoint and their sums add up; None once one was not."""
    return None if total is None or batch is None else total + batch


def map_keys(recs: MapRecords) -> np.ndarray:
    """chunk_key of every chunk of a map, as int64, from the hashes' first 8 bytes at once:
    flipping the top bit of the big-endian prefix is the bias of chunk_key."""
    import numpy as np
    return (recs.prefixes().astype(np.uint64) ^ np.uint64(_KEY_BIAS)).view(np.int64)


# File map refs recorded together when a manifest is recorded (rebuild, sync, copies): as
# arrays (manifests.filemapbin.MapRecords) ~45 bytes a ref, so ~90 MB at most.
MAP_BULK_REFS = 2_000_000
_INSERT_SLICE = 65536  # rows per executemany call: bounds the Python ints alive at once
_SQL_SAFE_CODEC = re.compile(r"[A-Za-z0-9_.+-]{0,64}\Z")  # a codec name that can be an SQL literal as is


def _insert_rows(conn: sqlite3.Connection, sql: str, *columns: np.ndarray) -> None:
    """executemany of `sql` over the columns, a slice at a time."""
    for i in range(0, len(columns[0]), _INSERT_SLICE):
        conn.executemany(sql, zip(*(c[i:i + _INSERT_SLICE].tolist() for c in columns)))


def _known_keys(conn: sqlite3.Connection, keys: np.ndarray) -> np.ndarray:
    """Which of `keys` the `chunks` table holds (a bool per key), asked in one statement per
    slice: the keys as one JSON array, joined in SQLite, answered as the array indexes of the
    keys it does not hold (json_each's `key` of an array element is its index), so a
    fine-tune's lookup, whose keys are nearly all known, returns almost nothing to parse."""
    import numpy as np
    # a slice at a time (the JSON text stays small), joined on a second thread while the next
    # slice's text is built (jsonrows.each_text; SQLite runs without the GIL)
    sql = ("SELECT count(*), group_concat(j.key) FROM json_each(?) j LEFT JOIN chunks c ON c.key = j.value "
           "WHERE c.key IS NULL")
    slices = range(0, len(keys), _INSERT_SLICE)
    texts = (_json_ints(keys[i:i + _INSERT_SLICE]) for i in slices)
    answers = (jsonrows.each_text(conn, sql, texts) if len(slices) > 1  # one slice (a probe): nothing to overlap
               else [conn.execute(sql, (t,)).fetchone() for t in texts])
    known = np.ones(len(keys), dtype=bool)
    for i, (count, got) in zip(slices, answers):
        unknown = np.array(got.split(",") if got else [], dtype=np.int64)
        n = len(keys[i:i + _INSERT_SLICE])
        if len(unknown) != count or (count and (int(unknown.min()) < 0 or int(unknown.max()) >= n)):
            raise CatalogError(f"chunk key lookup answered {count} unknown keys out of range for {n}")
        known[i + unknown] = False
    return known


def _json_ints(values: np.ndarray) -> str:
    """The JSON array of int64 `values` for json_each, built by numpy (jsonrows.ints_text)."""
    return jsonrows.ints_text(values)


def _insert_map_keys(conn: sqlite3.Connection, maps: list[tuple[int, MapRecords]]) -> dict[int, int | None] | None:
    """Insert the `chunks` rows of file maps (rowid, records) new to the catalog, keys sorted
    across all of them (one pass over the B-tree instead of one random walk per map), built
    from arrays: no Python object per chunk but the ints handed to SQLite. Returns each
    map's stored bytes if it is fresh (every chunk new to the catalog, so it owns them all),
    else None for it; or None for all (nothing inserted) if a key repeats among them: the
    caller then records them map by map, so each owns exactly the chunks it records first.
    Without repeats a map owns exactly its keys the catalog did not know, as map by map.
    Several maps: a first version's are all new (a sample of keys is looked up first, then
    one insert says so); otherwise (a fine-tune's maps reuse most chunks) the keys already
    known are found in one statement and only the others inserted."""
    if not maps:  # a version of small files only: numpy is not imported for nothing
        return {}
    import numpy as np
    keys = np.concatenate([map_keys(r) for _, r in maps])
    order = np.argsort(keys)  # not stable: equal keys are refused below, before anything is written
    keys = keys[order]
    if len(keys) > 1 and not bool((keys[1:] != keys[:-1]).all()):
        return None
    stored = np.concatenate([r.stored for _, r in maps])[order]
    owners = np.repeat(np.array([fm for fm, _ in maps], dtype=np.int64), [len(r) for _, r in maps])[order]
    names: dict[str, int] = {}  # codec name -> one id across the maps
    ids = np.concatenate([np.array([names.setdefault(c, len(names)) for c in r.codecs] or [0], dtype=np.int64)
                          [r.codec_ids] for _, r in maps])[order]
    if len(maps) > 1:
        sample = keys[::max(1, len(keys) // 256)]
        if not _known_keys(conn, sample).any():
            conn.execute("SAVEPOINT map_keys")
            if _insert_key_rows(conn, keys, stored, owners, ids, names):
                conn.execute("RELEASE map_keys")
                return {fm: r.stored_total() for fm, r in maps}
            conn.execute("ROLLBACK TO map_keys")
            conn.execute("RELEASE map_keys")
        known = _known_keys(conn, keys)
        marked = np.zeros(int(owners.max()) + 1 if len(owners) else 1, dtype=bool)  # owners: filemaps rowids (> 0)
        marked[owners[known]] = True
        stale = set(np.flatnonzero(marked).tolist())  # maps with a chunk the catalog knew
        new = ~known
        if not _insert_key_rows(conn, keys[new], stored[new], owners[new], ids[new], names):
            raise CatalogError("chunk keys changed during a write transaction")
        return {fm: (None if fm in stale else r.stored_total()) for fm, r in maps}
    all_new = _insert_key_rows(conn, keys, stored, owners, ids, names)
    return {fm: (r.stored_total() if all_new else None) for fm, r in maps}


def _insert_key_rows(conn: sqlite3.Connection, keys: np.ndarray, stored: np.ndarray, owners: np.ndarray,
                     ids: np.ndarray, names: dict[str, int]) -> bool:
    """INSERT OR IGNORE one `chunks` row per key (sorted, distinct); True if every row was new."""
    import numpy as np
    before = conn.total_changes
    if all(_SQL_SAFE_CODEC.match(c) for c in names):
        # one pass per codec (a model has a handful), the name a literal: one parameter
        # fewer to bind per row (~10% of the insert); each pass is still in key order
        for name, cid in names.items():
            pick = ids == cid if len(names) > 1 else slice(None)
            if jsonrows.packable(stored[pick], owners[pick]):
                # one INSERT ... SELECT per slice of rows, no Python object per row (manifests/jsonrows.py)
                jsonrows.insert_rows(conn, f"INSERT OR IGNORE INTO chunks(key, stored_size, codec, owner) SELECT "
                                     f"{jsonrows.KEY_SQL}, {jsonrows.LOW_SQL}, '{name}', {jsonrows.HIGH_SQL} "
                                     f"FROM json_each(?)", keys[pick], stored[pick], owners[pick])
                continue
            _insert_rows(conn, f"INSERT OR IGNORE INTO chunks(key, stored_size, codec, owner) VALUES (?,?,'{name}',?)",
                         keys[pick], stored[pick], owners[pick])
    else:
        codec_of = np.array(list(names), dtype=object)[ids]
        _insert_rows(conn, "INSERT OR IGNORE INTO chunks(key, stored_size, codec, owner) VALUES (?,?,?,?)",
                     keys, stored, codec_of, owners)
    return conn.total_changes - before == len(keys)


class _Shared:
    """The chunks of one version's maps that are not fresh, for Catalog._stored_size: hash ->
    stored size of refs read as objects, and the arrays of maps read as arrays."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.maps: list[MapRecords] = []

    def __bool__(self) -> bool:
        return bool(self.sizes or self.maps)

    def distinct_total(self) -> int | None:
        """The stored bytes of the distinct chunks when no two chunks share a key (then each is
        distinct, and `distinct` would keep them all): their sum, found by sorting the keys
        alone, not their order; None if two do (then `distinct` tells the chunks apart)."""
        import numpy as np
        keys = np.sort(np.concatenate([np.array([chunk_key(h) for h in self.sizes], dtype=np.int64)]
                                      + [map_keys(r) for r in self.maps]))
        if len(keys) > 1 and not bool((keys[1:] != keys[:-1]).all()):
            return None
        return sum(self.sizes.values()) + sum(int(r.stored.sum(dtype=np.uint64)) for r in self.maps)

    def distinct(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The distinct chunks, by full hash (two hashes sharing a key are two chunks), sorted
        by key, each with the stored size first given for it (objects first, then the maps in
        the order they were named): (keys, stored sizes, raw 32-byte hashes as an (n, 32)
        uint8 array in the order given, and the row of `raw` of each distinct chunk)."""
        import numpy as np
        legacy = list(self.sizes)
        keys = np.concatenate([np.array([chunk_key(h) for h in legacy], dtype=np.int64)]
                              + [map_keys(r) for r in self.maps])
        raw = np.frombuffer(bytes.fromhex("".join(legacy)) + b"".join(r.hashes for r in self.maps),
                            dtype=np.uint8).reshape(-1, 32)
        sizes = np.concatenate([np.array(list(self.sizes.values()), dtype=np.uint64)]
                               + [r.stored.astype(np.uint64) for r in self.maps])
        order = np.argsort(keys, kind="stable")  # stable: the first given of equal keys comes first
        ks = keys[order]
        keep = np.ones(len(ks), dtype=bool)
        if len(ks) > 1:
            same = np.nonzero(ks[1:] == ks[:-1])[0]  # position i repeats the key of i - 1 ...
            keep[same + 1] = False  # ... and, almost always, its chunk
            collide = same[~(raw[order[same]] == raw[order[same + 1]]).all(axis=1)]
            for i in collide.tolist():  # two hashes share a key (rare): keep each hash's first
                start = i
                while start > 0 and ks[start - 1] == ks[i]:
                    start -= 1
                seen: set[bytes] = set()
                j = start
                while j < len(ks) and ks[j] == ks[i]:
                    hb = raw[order[j]].tobytes()
                    keep[j] = hb not in seen
                    seen.add(hb)
                    j += 1
        return ks[keep], sizes[order][keep], raw, order[keep]


def _hash_sizes(refs: Any) -> tuple[tuple[str, int], ...]:
    """(hash, stored size) of each chunk of a map: from its arrays in bulk (MapRecords), or
    from ChunkRefs or (hash, stored size, codec) triples."""
    if isinstance(refs, MapRecords):
        return tuple(zip(refs.hex_hashes(), refs.stored.tolist()))
    return tuple((c.hash, c.stored_size) if isinstance(c, ChunkRef) else (c[0], c[1]) for c in refs)


def _select_in(conn: sqlite3.Connection, select: str, column: str, values: list[Any],
               tail: str = "") -> Iterator[tuple[Any, ...]]:
    """The rows of `select WHERE column IN (values) tail`, asked 500 values at a time (under
    SQLite's limit of bound parameters per statement)."""
    for i in range(0, len(values), 500):
        part = values[i:i + 500]
        yield from conn.execute(f'{select} WHERE {column} IN ({",".join("?" * len(part))}){tail}', part)


def _chunk_key_blob(b: bytes) -> int:
    return int.from_bytes(b[:8], "big") - _KEY_BIAS


@dataclass(frozen=True)
class ManifestRow:
    id: str
    name: str
    label: str | None
    parent: str | None
    recorded_at: float | None  # None: unknown (recorded by a catalog rebuild, which never invents times)
    file_count: int
    total_size: int
    stored_size: int

    def to_dict(self) -> dict[str, Any]:
        """The shape `archiver list --json` prints."""
        return {"id": self.id, "name": self.name, "label": self.label, "parent": self.parent,
                "recorded_at": self.recorded_at, "files": self.file_count, "size": self.total_size,
                "stored": self.stored_size}


@dataclass(frozen=True)
class AuditRow:
    seq: int
    at: float
    event: str
    manifest_id: str | None
    ok: bool
    details: dict[str, Any]


@dataclass(frozen=True)
class Chain:
    """How the manifests recorded under one name link up through `parent`.

    A root has no parent among them (none at all, or one that is not a recorded manifest
    of this name); a head is named as parent by none of them. One root and one head: the
    versions form a single line and the head is the newest. Anything else is a fork, a
    second chain or (in a forged catalog) a cycle, and the newest version is unknowable."""

    name: str
    ids: tuple[str, ...]  # in recording order
    parent: dict[str, str | None]  # the parent among these ids, or None for a root
    depth: dict[str, int]  # steps from the root of its chain
    roots: tuple[str, ...]
    heads: tuple[str, ...]
    labels: dict[str, str | None]
    cyclic: bool = False

    @property
    def linear(self) -> bool:
        return len(self.roots) == 1 and len(self.heads) == 1 and not self.cyclic

    def problem(self) -> str | None:
        """Why NAME does not name one newest version, or None."""
        if self.cyclic:
            return "has a cycle in its chain of parents (the catalog was tampered with)"
        parts = []
        if len(self.roots) > 1:
            parts.append(f"{len(self.roots)} separate chains (roots {_short(self.roots)})")
        if len(self.heads) > 1:
            parts.append(f"{len(self.heads)} newest versions (heads {_short(self.heads)})")
        return "has " + " and ".join(parts) if parts else None


def _short(ids: Iterable[str]) -> str:
    return ", ".join(i[:12] for i in ids)


def _chain(name: str, rows: list[tuple[str, str | None, str | None]]) -> Chain:
    """Build a Chain from (id, parent, label) rows in recording order, without recursion
    (a name may have any number of versions)."""
    ids = tuple(r[0] for r in rows)
    known = set(ids)
    parent = {i: (p if p in known and p != i else None) for i, p, _ in rows}
    has_child = {p for p in parent.values() if p is not None}
    depth: dict[str, int] = {}
    cyclic = False
    for start in ids:
        path: list[str] = []
        on_path: set[str] = set()
        node: str | None = start
        while node is not None and node not in depth and node not in on_path:
            on_path.add(node)
            path.append(node)
            node = parent[node]
        if node is not None and node in on_path:  # walked into a loop: no root above it
            cyclic = True
            base = -1
        else:
            base = -1 if node is None else depth[node]
        for n in reversed(path):
            base += 1
            depth[n] = base
    roots = tuple(i for i in ids if parent[i] is None)
    heads = tuple(i for i in ids if i not in has_child)
    return Chain(name, ids, parent, depth, roots, heads, {i: label for i, _, label in rows}, cyclic)


def _is_hex(s: str) -> bool:
    return bool(s) and all(ch in _HEX for ch in s)


def _errcode(e: sqlite3.Error) -> int:
    return getattr(e, "sqlite_errorcode", 0) & 0xFF


def _busy(e: sqlite3.Error) -> bool:
    return _errcode(e) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(e)


def _full(e: BaseException) -> bool:
    """SQLite's "database or disk is full" (SQLITE_FULL): the disk, or a page limit."""
    return isinstance(e, sqlite3.Error) and (_errcode(e) == sqlite3.SQLITE_FULL or "is full" in str(e))


def _readonly(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    return isinstance(e, sqlite3.Error) and (_errcode(e) == sqlite3.SQLITE_READONLY or "readonly" in str(e))


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False,
                           uri=uri)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    # migration 4 -> 5 turns hex text into BLOBs; SQLite has unhex() only from 3.41
    conn.create_function("unhex", 1, bytes.fromhex, deterministic=True)
    conn.create_function("chunk_key_blob", 1, _chunk_key_blob, deterministic=True)  # migration 5 -> 6, inline sets
    return conn


def _connect_rw(path: Path) -> sqlite3.Connection:
    conn = _connect(str(path))
    try:
        _to_wal(conn)
    except BaseException:
        conn.close()
        raise
    conn.execute("PRAGMA synchronous=FULL")
    # a page cache of up to 64 MiB (default 2 MiB): recording a 10 TB archive's million new
    # chunks inserts random hashes into B-trees far larger than 2 MiB, which thrashes without it
    conn.execute("PRAGMA cache_size=-65536")
    return conn


def _to_wal(conn: sqlite3.Connection) -> None:
    """`switch_to_wal` for up to BUSY_TIMEOUT_MS."""
    switch_to_wal(conn, BUSY_TIMEOUT_MS / 1000)


def switch_to_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Switch the file to WAL (set once; a no-op read after). SQLite answers the switch with
    "database is locked" at once, without its busy handler, while another process is doing
    the same to a brand-new file; so it is asked again for up to `timeout_s` (the files
    cache's file is opened the same way)."""
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if not _busy(e) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _connect_ro(path: Path) -> sqlite3.Connection:
    """Read without ever writing. A WAL catalog needs its -shm file; on a read-only
    directory with no -wal left over (nothing uncommitted), `immutable` reads the file as is."""
    base = "file:" + urllib.parse.quote(str(path.absolute()))
    conn = _connect(base + "?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as e:
        conn.close()
        if not (_readonly(e) or _errcode(e) == sqlite3.SQLITE_CANTOPEN) or Path(f"{path}-wal").exists():
            raise
    conn = _connect(base + "?mode=ro&immutable=1", uri=True)
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return conn


def store_identity(url: str, endpoint: str | None) -> str:
    """How a store is named in messages and in the binding: its URL, plus the S3
    endpoint when it is not AWS's (two services can have buckets of the same name)."""
    return url if not endpoint else f"{url} at {endpoint}"



def _across_migration(read: Callable[..., Any]) -> Callable[..., Any]:
    """For readers that branch on the schema: a Catalog opened read-only remembers the schema
    it first read, and another process's writable open may migrate the file meanwhile. A
    query that then names a table or column the file no longer has is asked once more with
    the schema read afresh; failing again, it is a CatalogError (one line), never a raw
    sqlite3 error."""
    @functools.wraps(read)
    def again(self: "Catalog", *args: Any, **kwargs: Any) -> Any:
        try:
            return read(self, *args, **kwargs)
        except sqlite3.OperationalError as e:
            if not str(e).startswith(("no such table", "no such column")):
                raise
        self._keys_blob = self._keys_schema = None
        try:
            return read(self, *args, **kwargs)
        except sqlite3.OperationalError as e:
            raise CatalogError(f"catalog {self.path}: {e}") from None
    return again

class Catalog:
    """One catalog file, bound to one store (its URL and, for S3-compatible services, its
    endpoint), recorded on first use."""

    def __init__(self, path: str | Path, store_url: str, *, endpoint: str | None = None,
                 read_only: bool = False) -> None:
        self.path = Path(path)
        self.store_url = store_url
        self.endpoint = endpoint or None
        self.read_only = read_only
        self._local = threading.local()
        # one per thread that read (`_reader`), with that thread: closed once it is gone, or by close()
        self._readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        # guards `_readers` alone: a thread opening its read connection never waits for a
        # write transaction of another thread (which holds `_lock` until it commits)
        self._readers_lock = threading.Lock()
        self._lock = threading.RLock()  # re-entrant: a nested write() joins the outer transaction
        self._holder = _HolderMark(Path(f"{self.path}.lock"))
        self._savepoints = 0
        self._memory = False
        self._w: sqlite3.Connection | None = None  # the writer; in read-only mode opened on the first write
        self._keys_blob: bool | None = None  # chunk tables keyed by BLOB (schema 5); None: not looked up yet
        self._keys_schema: int | None = None  # the schema the read connection sees; None: not looked up yet
        try:
            if read_only:
                self._conn = self._open_reading()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = _connect_rw(self.path)
                try:
                    self._prepare(conn)
                except BaseException:
                    conn.close()
                    raise
                self._conn = self._w = conn
        except (OSError, sqlite3.Error) as e:
            if read_only or not _readonly(e):
                raise CatalogError(f"cannot open catalog {self.path}: {e}") from None
            raise CatalogReadOnly(str(self.path), str(e)) from None

    # -- opening: schema, migration, store binding -------------------------------------------
    def _open_reading(self) -> sqlite3.Connection:
        """The read-only connection; a catalog that does not exist (or was never set up)
        reads as an empty one, in memory, without creating anything."""
        if self.path.exists() and self.path.stat().st_size > 0:
            conn = _connect_ro(self.path)
            try:
                if self._schema_version(conn) is not None:
                    self._check_binding(conn)
                    return conn
            except BaseException:
                conn.close()
                raise
            conn.close()
        conn = _connect(":memory:")
        self._memory = True
        self._create(conn)
        return conn

    def _schema_version(self, conn: sqlite3.Connection) -> int | None:
        """The catalog's schema version (None: not set up yet); refuses a newer one."""
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='info'").fetchone() is None:
            return None
        row = conn.execute("SELECT value FROM info WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 1
        if version > SCHEMA_VERSION:
            raise CatalogError(f"catalog {self.path} has schema version {version}; this archiver reads up to "
                               f"{SCHEMA_VERSION} (upgrade archiver)")
        return version

    def _create(self, conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT the caller's transaction
            if statement.strip():
                conn.execute(statement)
        for sql in _MIGRATIONS.values():
            for statement in sql.split(";"):
                conn.execute(statement)
        for table in _IMMUTABLE:
            _immutable(conn, table)
        conn.executemany("INSERT INTO info(key, value) VALUES (?, ?)",
                         [("schema_version", str(SCHEMA_VERSION)), ("store", self.store_url),
                          ("endpoint", self.endpoint or "")])

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Create, migrate and bind as needed. Only these steps write, and only when
        needed, so opening a current catalog takes no lock."""
        version = self._schema_version(conn)
        if version != SCHEMA_VERSION or not self._check_binding(conn):
            with self._txn(conn):
                version = self._schema_version(conn)  # another process may have done it meanwhile
                if version is None:
                    self._create(conn)
                else:
                    for step in range(version, SCHEMA_VERSION):
                        for statement in _MIGRATIONS[step].split(";"):
                            conn.execute(statement)
                        for table in _MIGRATION_TABLES.get(step, ()):
                            _immutable(conn, table)
                    conn.execute("INSERT OR REPLACE INTO info(key, value) VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
                    if not self._check_binding(conn):
                        conn.execute("INSERT OR IGNORE INTO info(key, value) VALUES ('store', ?)", (self.store_url,))
                        conn.execute("INSERT OR IGNORE INTO info(key, value) VALUES ('endpoint', ?)",
                                     (self.endpoint or "",))
                        self._check_binding(conn)

    def _check_binding(self, conn: sqlite3.Connection) -> bool:
        """True if the catalog is fully bound to this store; raises if bound to another.
        A catalog bound before endpoints were recorded has no 'endpoint' row: it takes
        the current one on its next writable open (AWS stores: none, as before)."""
        info = dict(conn.execute("SELECT key, value FROM info WHERE key IN ('store', 'endpoint')").fetchall())
        if "store" not in info:
            return False
        bound_endpoint = info.get("endpoint")
        if info["store"] != self.store_url or (bound_endpoint is not None
                                               and (bound_endpoint or None) != self.endpoint):
            raise CatalogStoreMismatch(str(self.path), store_identity(info["store"], bound_endpoint or None),
                                       store_identity(self.store_url, self.endpoint))
        return bound_endpoint is not None

    # -- transactions ------------------------------------------------------------------------
    def write(self) -> "_Txn":
        """BEGIN IMMEDIATE ... COMMIT: all or nothing. Waits up to BUSY_TIMEOUT_MS for
        another writer, then raises CatalogLocked naming it. Nested, it is a savepoint of
        the outer transaction: its failure undoes only its own part."""
        return _Txn(self)

    def _txn(self, conn: sqlite3.Connection) -> "_Txn":
        return _Txn(self, conn)

    def _writer(self) -> sqlite3.Connection:
        """The connection writes go through; a read-only catalog opens it on first use
        (creating or migrating the file if need be), or says why it cannot."""
        if not self.read_only:
            return self._conn
        if self._w is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = _connect_rw(self.path)
            except (OSError, sqlite3.Error) as e:
                raise CatalogReadOnly(str(self.path), str(e)) from None
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._w = conn
            self._keys_blob = None  # opening it may have migrated the file under the read connections
            self._keys_schema = None
        return self._w

    def _blob_keys(self) -> bool:
        """True if the chunk tables are keyed by 32-byte hashes (schema 5); False only for a
        catalog read read-only before its migration, whose readers use the text keys."""
        if self._keys_blob is None:
            self._keys_blob = (self._schema_version(self._conn) or SCHEMA_VERSION) >= BLOB_KEYS
        return self._keys_blob

    def _prefix_keys(self) -> bool:
        """True if `chunks` is keyed by chunk_key and maps' chunks are not in the catalog
        (schema 6); False only for a catalog read read-only before its migration."""
        if self._keys_schema is None:
            self._keys_schema = self._schema_version(self._conn) or SCHEMA_VERSION
        return self._keys_schema >= PREFIX_KEYS

    def _begin(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if _busy(e):
                raise CatalogLocked(str(self.path), *self._holder.read()) from None
            if _readonly(e):
                raise CatalogReadOnly(str(self.path), str(e)) from None
            raise CatalogError(f"catalog {self.path}: {e}") from None
        self._holder.mark()

    def _reader(self) -> sqlite3.Connection:
        """Per-thread read connection so worker threads can ask `has_chunk` concurrently."""
        if self._memory:
            return self._conn
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect_ro(self.path) if self.read_only else _connect_rw(self.path)
            self._local.conn = conn
            # the connections of threads that ended meanwhile are closed now: a catalog that
            # outlives its threads (a worker process's, open for all its tasks, each task on
            # threads of its own) would otherwise hold one more per thread until `close`
            with self._readers_lock:
                gone = [c for t, c in self._readers if not t.is_alive()]
                self._readers = [(t, c) for t, c in self._readers if t.is_alive()]
                self._readers.append((threading.current_thread(), conn))
            for c in gone:
                c.close()
        return conn

    def close_thread_reader(self) -> None:
        """Close the calling thread's read connection (`_reader`), if it has one: for a thread
        that ends before the catalog is closed (a restore's own "restore-head" thread), whose
        connection would otherwise stay open, one more per such thread, until `close`."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        del self._local.conn
        with self._readers_lock:
            self._readers = [(t, c) for t, c in self._readers if c is not conn]
        conn.close()

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for _, conn in readers:
            conn.close()
        if self._w is not None and self._w is not self._conn:
            self._w.close()
        self._conn.close()
        self._holder.close()

    # -- manifests ---------------------------------------------------------------------------
    def has_manifest(self, mid: str) -> bool:
        return self._conn.execute("SELECT 1 FROM manifests WHERE id=?", (mid,)).fetchone() is not None

    def record_manifest(self, m: Manifest, data: bytes, *, event_details: dict[str, Any] | None = None,
                        at: float | None = None, time_unknown: bool = False,
                        filemap_chunks: Callable[[Entry], Iterable[ChunkRef]] | None = None,
                        trees: dict[str, str] | None = None) -> bool:
        """Record a manifest (already durably in the store) with its files, its distinct
        chunks and known chunks in one transaction. Idempotent: False if it was already recorded.
        `at` defaults to now; time_unknown=True records no time at all (a rebuild knows
        what the store holds, not when it was archived). Manifest v2: the chunks of a file
        map this catalog has not recorded yet are recorded once for the map; for an entry
        without its chunk list in memory they come from `filemap_chunks(entry)` (the
        repository fetches and checks the map), one map at a time, so a 10 TB archive's
        million refs are never all in memory, and a map already recorded is not fetched.
        An error raised by it rolls the whole record back. Manifest v3: `trees` (directory ->
        tree hash, as `tree_objects(m.entries)` made them for the commit) saves building them again."""
        mid = manifest_id(data)  # `data` is m's canonical JSON: its hash is m.id, without serialising m again
        check_recordable(mid, m)
        now = time.time() if at is None else at
        when = None if time_unknown else now
        with self.write() as conn:
            if conn.execute("SELECT 1 FROM manifests WHERE id=?", (mid,)).fetchone() is not None:
                return False
            files = m.files
            # the manifest's rowid is taken now (in the write transaction) so its chunk set can
            # be recorded, and its stored size summed, before the immutable row is written
            row = conn.execute("SELECT COALESCE(MAX(rowid), 0) + 1 FROM manifests").fetchone()[0]
            batch: list[ChunkRef] = []
            shared = _Shared()  # chunks of this version's maps that are not fresh
            # the stored bytes of the inline chunks while every batch of them was new to the
            # catalog (a first archive): then no query needs to sum them (see _stored_size)
            fresh: int | None = 0
            maps = False
            read = self._record_new_maps(conn, (e for e in files if e.filemap), filemap_chunks)
            if read:  # maps just recorded that reused chunks: their records are at hand
                def fetch_again(e: Entry, fetch: Any = filemap_chunks) -> Any:
                    got = read.get(e.filemap)
                    return got if got is not None else fetch(e)
                filemap_chunks = fetch_again
            for e in files:
                if e.filemap:
                    maps = True
                    self._record_filemap(conn, row, e, filemap_chunks, shared)
                    continue
                batch.extend(e.chunks)
                if len(batch) >= 65536:
                    fresh = _fresh_sum(fresh, self._record_chunks(conn, "manifest_chunks", row, batch))
                    batch = []
            fresh = _fresh_sum(fresh, self._record_chunks(conn, "manifest_chunks", row, batch))
            stored = fresh if fresh is not None and not maps else self._stored_size(conn, row, shared)
            # the files rows first: their trigger refuses rows under a recorded manifest (schema
            # 7), and their reference to it is checked at COMMIT, once its row is in (SQLite
            # turns defer_foreign_keys off again at the end of the transaction)
            # files rows already under this unrecorded id did not come from here (a client with
            # foreign keys off, or rows slipped in earlier in this transaction once they were
            # deferred): recording the manifest would make them part of its immutable history
            if conn.execute("SELECT 1 FROM files WHERE manifest_id=? LIMIT 1", (mid,)).fetchone() is not None:
                raise CatalogError(f"catalog {self.path}: files rows of manifest {mid[:16]} are there before it is "
                                   "recorded (written by another client); move the catalog aside and run "
                                   "'archiver catalog rebuild'")
            conn.execute("PRAGMA defer_foreign_keys=ON")
            conn.executemany('INSERT INTO files(manifest_id, path, type, size, mode, blake3, sha256) '
                             'VALUES (?,?,?,?,?,?,?)',
                             ((mid, e.path, e.type, e.size, e.mode, e.blake3, e.sha256)
                              for e in self._new_tree_entries(conn, m, trees)))
            conn.execute("INSERT INTO manifests(rowid, id, name, label, parent, recorded_at, file_count, total_size, "
                         "stored_size, json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (row, mid, m.name, m.label, m.parent, when, len(files), m.total_size, stored, data))
            conn.executemany('INSERT INTO fields(manifest_id, key, seq, value, num) VALUES (?,?,?,?,?)',
                             field_rows(mid, m))
            if event_details is not None:
                self._audit(conn, "archive", mid, True, event_details, now)
        return True

    def _stored_size(self, conn: sqlite3.Connection, row: int, shared: "_Shared") -> int:
        """Stored bytes of the distinct chunks manifest `row` names, without a union over all
        of them. A fresh map (none of its chunks known when it was recorded) recorded each of
        its chunks first, so it owns them all: fresh maps are disjoint, their sums add up (one
        row each), and a chunk of any other set is in one of them exactly when its owner is
        one of them. The rest, this version's inline chunks and `shared` (the chunks of its
        maps that are not fresh, read from the maps: what a fine-tune's changed files bring),
        is deduplicated here, by chunk_key, as arrays (a fine-tune touching every shard of a
        10 TB model brings 1.3 million of them)."""
        import numpy as np
        fresh = conn.execute("SELECT f.rowid, f.fresh_stored FROM manifest_filemaps mf JOIN filemaps f "
                             "ON f.rowid = mf.filemap WHERE mf.manifest = ? AND f.fresh_stored IS NOT NULL",
                             (row,)).fetchall()
        owners = {fm for fm, _ in fresh}
        total = sum(size for _, size in fresh)
        inline = conn.execute("SELECT mc.chunk, c.stored_size, c.owner FROM manifest_chunks mc JOIN chunks c "
                              "ON c.key = chunk_key_blob(mc.chunk) WHERE mc.manifest = ?", (row,)).fetchall()
        if not inline and not owners:  # only the shared chunks (a fine-tune's maps): their sum, if distinct
            whole = shared.distinct_total()
            if whole is not None:
                return total + whole
        keys, sizes, raw, rows = shared.distinct()
        if inline:
            ik = np.array([_chunk_key_blob(bytes(b)) for b, _, _ in inline], dtype=np.int64)
            candidates = np.isin(ik, keys).tolist()
            for (blob, size, owner), k, maybe in zip(inline, ik.tolist(), candidates):
                if maybe:  # its key is among the shared chunks: is its hash?
                    i = int(np.searchsorted(keys, k))
                    while i < len(keys) and keys[i] == k and raw[rows[i]].tobytes() != bytes(blob):
                        i += 1
                    if i < len(keys) and keys[i] == k:
                        continue  # counted with the shared chunks
                if owner is None or owner not in owners:
                    total += size
        if len(keys) and owners:  # leave out the shared chunks a fresh map of this version owns
            owned: list[int] = []
            for i in range(0, len(keys), _INSERT_SLICE):
                got = conn.execute("SELECT group_concat(c.key) FROM json_each(?) j JOIN chunks c ON c.key = j.value "
                                   "WHERE c.owner IN (SELECT value FROM json_each(?))",
                                   (_json_ints(keys[i:i + _INSERT_SLICE]), json.dumps(sorted(owners)))).fetchone()[0]
                owned.extend(int(k) for k in got.split(",")) if got else None
            if owned:
                sizes = sizes[~np.isin(keys, np.array(owned, dtype=np.int64))]
        return total + int(sizes.sum(dtype=np.uint64))

    # Manifest v3: the trees whose entries have `files` rows (under the first manifest that
    # named them). Created on first write (not a schema step): a catalog without it has none.
    _TREE_TABLE = 'CREATE TABLE IF NOT EXISTS "tree_files" ("hash" TEXT PRIMARY KEY)'

    def _new_tree_entries(self, conn: sqlite3.Connection, m: Manifest,
                          trees: dict[str, str] | None = None) -> Iterable[Entry]:
        """The entries of `m` that get `files` rows: all of a v1/v2 manifest's; of a v3
        manifest's, only those listed by a tree no recorded manifest named before, so an
        unchanged re-archive adds no per-file rows. `trees`: directory -> tree hash, if known."""
        if not m.tree:
            return m.entries
        if trees is None:
            made = tree_objects(m.entries)
            if made is None or made[0] != m.tree:
                raise ManifestError(f"manifest entries do not rebuild its tree {m.tree[:16]}")
            trees = made[2]
        elif trees.get("") != m.tree:
            raise ManifestError(f"the trees given are not those of manifest tree {m.tree[:16]}")
        by_dir = trees
        conn.execute(self._TREE_TABLE)
        hashes = set(by_dir.values())
        known = {h for (h,) in conn.execute('SELECT hash FROM tree_files WHERE hash IN (SELECT value FROM json_each(?))',
                                            (json.dumps(sorted(hashes)),))}
        conn.executemany('INSERT OR IGNORE INTO tree_files(hash) VALUES (?)', [(h,) for h in sorted(hashes - known)])
        if not known:  # no tree of it recorded yet (a first archive): every entry, without a lookup each
            return m.entries
        return [e for e in m.entries if by_dir[parent_of(e.path)] not in known]

    def known_trees(self, hashes: Iterable[str]) -> set[str]:
        """Those of `hashes` that a recorded manifest named as a tree (read and checked when
        it was committed or recorded): a commit need not parse them again."""
        conn = self._reader()
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='tree_files'").fetchone() is None:
            return set()
        return {h for h in hashes if conn.execute("SELECT 1 FROM tree_files WHERE hash=?", (h,)).fetchone()}

    def filemap_shape(self, h: str) -> tuple[int, int] | None:
        """(chunk_count, size) of a file map this catalog has recorded (checked then), else None."""
        row = self._reader().execute("SELECT chunk_count, size FROM filemaps WHERE hash=?", (h,)).fetchone()
        return (row[0], row[1]) if row else None

    def record_filemaps(self, maps: Iterable[tuple[Entry, Iterable[ChunkRef] | list[tuple[str, int, str]]]]
                        ) -> set[str]:
        """Record file maps (durable in the store, each checked against its entry) and their
        chunks (ChunkRefs, or (hash, stored size, codec) as manifests.model.filemap_records
        reads them), in one transaction, before any manifest names them: `commit_manifest`
        does so while proving maps a worker wrote, so each map is parsed once. A fact about
        the store like a chunk row: a map no recorded manifest names yet is harmless (as a
        chunk no manifest names is in the store). Returns the hashes of the maps recorded now
        that are not fresh (they reused known chunks): recording a manifest that names them
        reads their chunks for its stored size, so a caller still holding their records can
        hand them over (record_manifest's `filemap_chunks`) instead of a second fetch."""
        with self.write() as conn:
            return self._record_maps(conn, maps)

    def _record_maps(self, conn: sqlite3.Connection, maps: Iterable[tuple[Entry, Any]]) -> set[str]:
        """Record file maps and their chunks (see record_filemaps): those new to the catalog
        and read as arrays have their dedup keys inserted together (_insert_map_keys).
        Returns the hashes of the maps recorded now that are not fresh."""
        bulk: list[tuple[int, MapRecords]] = []  # new maps read as arrays: their keys go in together
        hashes: dict[int, str] = {}  # rowid -> hash of the maps in `bulk`
        reused: set[str] = set()
        for e, chunks in maps:
            if isinstance(chunks, MapRecords) and conn.execute("SELECT 1 FROM filemaps WHERE hash=?",
                                                               (e.filemap,)).fetchone() is None:
                fm = conn.execute("INSERT INTO filemaps(hash, chunk_count, size) VALUES (?, ?, ?)",
                                  (e.filemap, e.chunk_count, e.size)).lastrowid
                bulk.append((fm, chunks))
                hashes[fm] = e.filemap
                continue
            _, was_fresh, read_now = self._filemap_row(conn, dataclasses.replace(e, chunks=()), lambda _, c=chunks: c)
            if read_now is not None and not was_fresh:
                reused.add(e.filemap)
        fresh = _insert_map_keys(conn, bulk)
        if fresh is None:
            fresh = {fm: self._record_chunks(conn, "filemaps", fm, r) for fm, r in bulk}
        conn.executemany("UPDATE filemaps SET fresh_stored = ? WHERE rowid = ?",
                         [(total, fm) for fm, total in fresh.items() if total is not None])
        return reused | {hashes[fm] for fm, total in fresh.items() if total is None}

    def _record_new_maps(self, conn: sqlite3.Connection, entries: Iterable[Entry],
                         fetch: Callable[[Entry], Any] | None) -> dict[str, Any]:
        """Before a manifest's rows: the maps its unresolved entries name that this catalog has
        not recorded, fetched (`fetch`, e.g. the repository's filemap_records) and recorded
        together, up to MAP_BULK_REFS refs at a time, as a commit records a worker's maps: a
        rebuild or sync of another host's 10 TB version then costs what its commit did.
        Returns the records of the maps recorded now that are not fresh (the manifest's stored
        size reads their chunks: they are not fetched twice)."""
        kept: dict[str, Any] = {}
        if fetch is None:
            return kept
        batch: list[tuple[Entry, Any]] = []
        refs = 0
        seen: set[str] = set()

        def flush() -> None:
            self._record_maps(conn, batch)
            for e, recs in batch:
                if conn.execute("SELECT fresh_stored FROM filemaps WHERE hash=?", (e.filemap,)).fetchone()[0] is None:
                    kept[e.filemap] = recs

        for e in entries:
            if e.resolved or e.filemap in seen or conn.execute("SELECT 1 FROM filemaps WHERE hash=?",
                                                              (e.filemap,)).fetchone() is not None:
                continue
            seen.add(e.filemap)
            batch.append((e, fetch(e)))
            refs += e.chunk_count
            if refs >= MAP_BULK_REFS:
                flush()
                batch, refs = [], 0
        flush()
        return kept

    def _record_filemap(self, conn: sqlite3.Connection, row: int, e: Entry,
                        fetch: Callable[[Entry], Iterable[ChunkRef]] | None, shared: "_Shared") -> None:
        """Manifest `row` names file map `e.filemap`; its chunks are recorded the first time it
        is seen. A map that is not fresh (it reused known chunks) adds its chunks to `shared`
        (for _stored_size), read from the map: the catalog does not keep them."""
        fm, fresh, refs = self._filemap_row(conn, e, fetch)
        conn.execute("INSERT OR IGNORE INTO manifest_filemaps(manifest, filemap) VALUES (?, ?)", (row, fm))
        if fresh:
            return
        if refs is None:
            refs = e.chunks if e.resolved else self._fetch(e, fetch)
        if isinstance(refs, MapRecords):  # kept as arrays: _stored_size deduplicates them in bulk
            shared.maps.append(refs)
            return
        for h, stored, _ in _records(refs):
            shared.sizes.setdefault(h, stored)

    @staticmethod
    def _fetch(e: Entry, fetch: Callable[[Entry], Iterable[ChunkRef]] | None) -> Iterable[ChunkRef]:
        if fetch is None:
            raise ManifestError(f"file map {e.filemap[:16]} of {e.path!r} was not given to the catalog")
        return fetch(e)

    def _filemap_row(self, conn: sqlite3.Connection, e: Entry, fetch: Callable[[Entry], Iterable[ChunkRef]] | None
                     ) -> tuple[int, bool, Iterable[ChunkRef] | None]:
        """(rowid, fresh, the chunks if they were read now) of file map `e.filemap`, recording
        it and its chunks if it is new."""
        known = conn.execute("SELECT rowid, chunk_count, size, fresh_stored FROM filemaps WHERE hash=?",
                             (e.filemap,)).fetchone()
        if known is None:
            refs = e.chunks if e.resolved else self._fetch(e, fetch)
            if not isinstance(refs, (tuple, list, MapRecords)):
                refs = tuple(refs)
            fm = conn.execute("INSERT INTO filemaps(hash, chunk_count, size) VALUES (?, ?, ?)",
                              (e.filemap, e.chunk_count, e.size)).lastrowid
            fresh = self._record_chunks(conn, "filemaps", fm, refs)
            if fresh is not None:
                conn.execute("UPDATE filemaps SET fresh_stored = ? WHERE rowid = ?", (fresh, fm))
            return fm, fresh is not None, refs
        # the map was checked against an entry of this count and size when first recorded
        fm, count, size, fresh_stored = known
        if (count, size) != (e.chunk_count, e.size):
            raise ManifestError(f"file map {e.filemap[:16]} holds {count} chunks and {size} bytes, not the "
                                f"{e.chunk_count} and {e.size} of {e.path!r}")
        return fm, fresh_stored is not None, None

    @staticmethod
    def _record_chunks(conn: sqlite3.Connection, table: str, row: int, refs: Iterable[ChunkRef]) -> int | None:
        """Known chunks (the first stored size and codec seen for a key win) and, for
        table "manifest_chunks", the inline chunk set of manifest `row` (full 32-byte hashes);
        for "filemaps" the chunks of map `row`, which owns those new to the catalog (the map
        itself, in the store, lists them). Keys go in sorted and distinct, so inserts land
        next to each other in the B-tree. Returns the stored bytes of these distinct chunks if
        every one was new (see _stored_size), else None."""
        owner = row if table == "filemaps" else None
        if isinstance(refs, MapRecords) and owner is not None:
            got = _insert_map_keys(conn, [(owner, refs)])
            if got is not None:
                return got[owner]
            refs = list(refs)  # a key named twice in the map: the first ref of each, below
        bias = _KEY_BIAS
        recs = _records(refs)
        # chunk_key, inlined (a million a version); a map's hashes are almost always distinct
        rows = [(int(h[:16], 16) - bias, stored, codec, owner) for h, stored, codec in recs]
        if len({r[0] for r in rows}) == len(rows):  # distinct keys, so distinct hashes
            hashes = [r[0] for r in recs]
            rows.sort()
        else:  # a hash named twice, or two sharing a key: the first ref of each hash, then of each key
            first: dict[str, tuple[int, int, str, int | None]] = {}
            for (h, _, _), r in zip(recs, rows):
                first.setdefault(h, r)
            hashes = list(first)
            rows = sorted({r[0]: r for r in reversed(list(first.values()))}.values())
        if not rows:
            return 0
        before = conn.total_changes
        if not blobrows.insert_chunks(conn, rows):  # one statement, without the GIL (manifests/blobrows.py)
            conn.executemany("INSERT OR IGNORE INTO chunks(key, stored_size, codec, owner) VALUES (?,?,?,?)", rows)
        fresh = conn.total_changes - before == len(rows) == len(hashes)  # a shared key is not proof of freshness
        if table == "manifest_chunks" and not blobrows.insert_hash_set(conn, row, hashes):
            conn.executemany("INSERT OR IGNORE INTO manifest_chunks(manifest, chunk) VALUES (?, ?)",
                             [(row, b) for b in sorted(bytes.fromhex(h) for h in hashes)])
        return sum(r[1] for r in rows) if fresh else None

    def manifest_rows(self, name: str | None = None) -> list[ManifestRow]:
        """Oldest first, and never a version before its parent: ordered by recording
        time, where a version counts as no older than its parent (clocks skew) and an
        unknown time (a rebuild's row) as older than every known one; then by chain position."""
        sql = "SELECT id, name, label, parent, recorded_at, file_count, total_size, stored_size FROM manifests"
        args: tuple = ()
        if name is not None:
            sql += " WHERE name=?"
            args = (name,)
        rows = [ManifestRow(*r) for r in self._conn.execute(sql + " ORDER BY rowid", args)]
        by_name: dict[str, list[tuple[str, str | None, str | None]]] = {}
        for r in rows:
            by_name.setdefault(r.name, []).append((r.id, r.parent, r.label))
        when = {r.id: (float("-inf") if r.recorded_at is None else r.recorded_at) for r in rows}
        depth: dict[str, int] = {}
        for n, members in by_name.items():
            chain = _chain(n, members)
            depth.update(chain.depth)
            for i in sorted(chain.ids, key=chain.depth.__getitem__):  # parents before children
                p = chain.parent[i]
                if p is not None:
                    when[i] = max(when[i], when[p])
        order = {r.id: i for i, r in enumerate(rows)}
        return sorted(rows, key=lambda r: (when[r.id], depth[r.id], order[r.id]))

    def search(self, conditions: Iterable[Condition], name: str | None = None) -> list[ManifestRow]:
        """The manifest rows (in `manifest_rows` order) that meet every condition."""
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='fields'").fetchone() is None:
            raise CatalogError(f"catalog {self.path} predates search (schema version "
                               f"{self._schema_version(self._conn)}); open it writable once to upgrade it")
        ids = search_ids(self._conn, conditions)
        return [r for r in self.manifest_rows(name) if r.id in ids]

    def fields_of(self, mid: str) -> list[tuple[str, str]]:
        """The (key, value) pairs indexed for one manifest."""
        return [(k, v) for k, v in self._conn.execute(
            "SELECT key, value FROM fields WHERE manifest_id=? ORDER BY key, seq", (mid,))]

    def manifest_bytes(self, mid: str) -> bytes:
        row = self._conn.execute("SELECT json FROM manifests WHERE id=?", (mid,)).fetchone()
        if row is None:
            raise UnknownReference(mid, f"manifest {mid} is not in the catalog")
        return bytes(row[0])

    def load_manifest(self, mid: str) -> Manifest:
        """Parse the catalog copy, re-checking it against its id (the catalog is not trusted either)."""
        return parse_manifest(self.manifest_bytes(mid), expected_id=mid)

    def chain(self, name: str) -> Chain:
        """The chain of every manifest recorded under `name` (empty if none)."""
        rows = self._conn.execute("SELECT id, parent, label FROM manifests WHERE name=? ORDER BY rowid",
                                  (name,)).fetchall()
        return _chain(name, rows)

    def latest(self, name: str) -> str | None:
        """The version a new archive of `name` follows (its parent): the head of the
        name's chain. If the chain has forked, the most recently recorded head, so
        archiving goes on; resolving NAME stays ambiguous and verify reports the fork."""
        chain = self.chain(name)
        if not chain.ids:
            return None
        if len(chain.heads) == 1:
            return chain.heads[0]
        candidates = chain.heads or chain.ids
        placeholders = ",".join("?" * len(candidates))
        row = self._conn.execute(
            f"SELECT id FROM manifests WHERE id IN ({placeholders}) "
            "ORDER BY recorded_at IS NOT NULL DESC, recorded_at DESC, rowid DESC LIMIT 1", candidates).fetchone()
        return row[0]

    def resolve(self, ref: str) -> str:
        """The manifest id a reference names. Qualified references are never ambiguous
        between kinds: `id:PREFIX` (>= 4 hex digits) is only an id, `name:NAME[@LABEL]`
        only a name. Unqualified: 64 hex digits are always an id; NAME@LABEL is a label;
        anything else is a NAME, or an id prefix if it is >= 4 hex digits, and a reference
        that is both is refused (AmbiguousReference naming both)."""
        if ref.startswith("id:"):
            return self._by_id(ref, ref[3:].lower())
        if ref.startswith("name:"):
            return self._by_name(ref, ref[5:])
        lowered = ref.lower()
        if len(lowered) == 64 and _is_hex(lowered):
            return self._by_id(ref, lowered)
        if "@" in ref:
            return self._by_name(ref, ref)
        if len(lowered) >= ID_PREFIX_MIN and _is_hex(lowered):
            ids = self._prefix_matches(lowered)
            if ids and self._conn.execute("SELECT 1 FROM manifests WHERE name=?", (ref,)).fetchone():
                chain = self.chain(ref)
                named = list(chain.heads) if len(chain.heads) > 1 else [self.latest(ref) or ""]
                raise AmbiguousReference(
                    ref, ids + named,
                    f"reference {ref!r} is ambiguous: it is the name of {len(chain.ids)} archive(s) (newest "
                    f"{_short(named)}) and a prefix of id {_short(ids)}; write name:{ref} or id:{ref}")
            if ids:
                return self._unique(ref, ids)
        return self._by_name(ref, ref)

    def _prefix_matches(self, prefix: str) -> list[str]:
        return [r[0] for r in self._conn.execute(
            "SELECT id FROM manifests WHERE id >= ? AND id < ? ORDER BY id LIMIT 3", (prefix, prefix + "g"))]

    def _unique(self, ref: str, ids: list[str]) -> str:
        if len(ids) > 1:
            raise AmbiguousReference(ref, ids, f"id prefix {ref!r} is ambiguous: it starts ids {_short(ids)}"
                                               f"{' and more' if len(ids) > 2 else ''}; give more digits")
        return ids[0]

    def _by_id(self, ref: str, prefix: str) -> str:
        if not (ID_PREFIX_MIN <= len(prefix) <= 64 and _is_hex(prefix)):
            raise UnknownReference(ref, f"{ref!r} is not an id or an id prefix ({ID_PREFIX_MIN} to 64 hex digits)")
        ids = self._prefix_matches(prefix)
        if not ids:
            raise UnknownReference(ref, f"no archive has an id starting {prefix!r}")
        return self._unique(ref, ids)

    def _by_name(self, ref: str, spec: str) -> str:
        """NAME: the head of the name's chain. NAME@LABEL: the newest version with that
        label (the only one, or the deepest in a single unforked chain)."""
        name, label = spec.rsplit("@", 1) if "@" in spec else (spec, None)
        chain = self.chain(name)
        if not chain.ids:
            raise UnknownReference(ref, f"no archive named {name!r}" if label is not None or ref != spec else None)
        how = f"; name one by id (id:PREFIX){'' if label else ' or NAME@LABEL'}"
        if label is None:
            if chain.linear:
                return chain.heads[0]
            raise AmbiguousReference(ref, list(chain.heads),
                                     f"archive name {name!r} is ambiguous: it {chain.problem()}{how}")
        with_label = [i for i in chain.ids if chain.labels[i] == label]
        if not with_label:
            raise UnknownReference(ref, f"no archive named {name!r} with label {label!r}")
        if len(with_label) == 1:
            return with_label[0]
        if not chain.linear:
            raise AmbiguousReference(ref, with_label, f"reference {ref!r} is ambiguous: {len(with_label)} archives "
                                                      f"named {name!r} have label {label!r}, and the name "
                                                      f"{chain.problem()}{how}")
        return max(with_label, key=lambda i: chain.depth[i])

    # -- chunks ------------------------------------------------------------------------------
    @_across_migration
    def known_chunk(self, h: str) -> tuple[int, str] | None:
        """(stored_size, codec) of a chunk some recorded manifest references, else None.
        Schema 6 answers by chunk_key: a hint that the store's object under `h` must confirm
        before anyone trusts it (dedup proves it; see chunk_key)."""
        key: str | bytes | int = h
        if self._prefix_keys():
            try:
                key = chunk_key(h)
            except ValueError:  # not a hash: no chunk has it
                return None
            row = self._reader().execute("SELECT stored_size, codec FROM chunks WHERE key=?", (key,)).fetchone()
            return (row[0], row[1]) if row else None
        if self._blob_keys():
            try:
                key = bytes.fromhex(h)
            except ValueError:  # not a hash: no chunk has it
                return None
        row = self._reader().execute("SELECT stored_size, codec FROM chunks WHERE hash=?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    @_across_migration
    def known_chunks(self, hashes: Iterable[str]) -> dict[str, tuple[int, str]]:
        """`known_chunk` of many chunks in a few queries (a batch of small files asks once, not
        once per chunk): hash -> (stored_size, codec) of each one known; the same hints."""
        by_key: dict[Any, list[str]] = {}
        prefix, blob = self._prefix_keys(), (not self._prefix_keys() and self._blob_keys())
        for h in dict.fromkeys(hashes):
            try:
                key: Any = chunk_key(h) if prefix else bytes.fromhex(h) if blob else h
            except ValueError:  # not a hash: no chunk has it
                continue
            by_key.setdefault(key, []).append(h)
        col = "key" if prefix else "hash"
        keys = list(by_key)
        out: dict[str, tuple[int, str]] = {}
        for key, size, codec in _select_in(self._reader(), f'SELECT "{col}", stored_size, codec FROM chunks',
                                           f'"{col}"', keys):
            for h in by_key.get(key, ()):
                out[h] = (size, codec)
        return out

    def chunk_check(self, h: str) -> tuple[float, bool] | None:
        """(when, ok) of the last deep check of a chunk, or None if it was never checked."""
        row = self._reader().execute("SELECT last_verified, ok FROM chunk_checks WHERE hash=?", (h,)).fetchone()
        return (row[0], bool(row[1])) if row else None

    def chunk_checks(self, hashes: Iterable[str]) -> dict[str, tuple[float, bool]]:
        """`chunk_check` of many chunks in a few queries: (when, ok) of each one ever checked."""
        wanted = list(dict.fromkeys(hashes))
        return {h: (when, bool(ok)) for h, when, ok in
                _select_in(self._reader(), "SELECT hash, last_verified, ok FROM chunk_checks", "hash", wanted)}

    def chunks_by_staleness(self, hashes: Iterable[str]) -> list[str]:
        """Order chunks least recently verified first (never-verified first of all)."""
        wanted = list(dict.fromkeys(hashes))
        last = dict(_select_in(self._conn, "SELECT hash, last_verified FROM chunk_checks", "hash", wanted))
        return sorted(wanted, key=lambda h: (last.get(h, 0.0), h))

    def mark_verified(self, results: Iterable[tuple[str, bool]], at: float | None = None) -> None:
        now = time.time() if at is None else at
        with self.write() as conn:
            conn.executemany(
                "INSERT INTO chunk_checks(hash, last_verified, ok) VALUES (?,?,?) "
                "ON CONFLICT(hash) DO UPDATE SET last_verified=excluded.last_verified, ok=excluded.ok",
                ((h, now, int(ok)) for h, ok in results))

    # -- audit -------------------------------------------------------------------------------
    def _audit(self, conn: sqlite3.Connection, event: str, mid: str | None, ok: bool, details: dict[str, Any],
               at: float) -> None:
        conn.execute(
            "INSERT INTO audit(at, event, manifest_id, ok, details) VALUES (?,?,?,?,?)",
            (at, event, mid, int(ok), json.dumps(details, sort_keys=True)))

    def audit(self, event: str, mid: str | None, ok: bool, details: dict[str, Any]) -> None:
        with self.write() as conn:
            self._audit(conn, event, mid, ok, details, time.time())

    def audit_log(self, mid: str | None = None) -> list[AuditRow]:
        sql = "SELECT seq, at, event, manifest_id, ok, details FROM audit"
        args: tuple = ()
        if mid is not None:
            sql += " WHERE manifest_id=?"
            args = (mid,)
        return [AuditRow(s, a, e, m, bool(o), json.loads(d)) for s, a, e, m, o, d in
                self._conn.execute(sql + " ORDER BY seq", args)]

    # -- named settings kept in the info table (copies of the store, store checks) -----------
    _RESERVED_INFO = ("schema_version", "store", "endpoint")

    def info_items(self, prefix: str) -> dict[str, str]:
        """Every info row whose key starts with `prefix` (e.g. 'copy:'), key -> value."""
        rows = self._conn.execute("SELECT key, value FROM info WHERE substr(key, 1, ?) = ? ORDER BY key",
                                  (len(prefix), prefix)).fetchall()
        return dict(rows)

    def set_info(self, key: str, value: str) -> None:
        """Record a named setting; the catalog's own rows (schema, binding) are never touched."""
        if key in self._RESERVED_INFO or ":" not in key:
            raise ValueError(f"info key {key!r} is reserved or has no 'kind:' prefix")
        with self.write() as conn:
            conn.execute("INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)", (key, value))

    def delete_info(self, key: str) -> bool:
        """Forget a named setting; False if it was not there."""
        if key in self._RESERVED_INFO or ":" not in key:
            raise ValueError(f"info key {key!r} is reserved or has no 'kind:' prefix")
        with self.write() as conn:
            return conn.execute("DELETE FROM info WHERE key=?", (key,)).rowcount > 0


    # -- store events (archiver.events): what this catalog has recorded -----------------------
    def info_value(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM info WHERE key=?", (key,)).fetchone()
        if row is None and self._w is not None and self._w is not self._conn:
            row = self._w.execute("SELECT value FROM info WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def claim_info(self, key: str, value: str) -> str:
        """Set `key` to `value` unless it is set already; the value it holds afterwards
        (two processes claiming at once agree on the first one)."""
        with self.write() as conn:
            conn.execute("INSERT OR IGNORE INTO info(key, value) VALUES (?, ?)", (key, value))
            return conn.execute("SELECT value FROM info WHERE key=?", (key,)).fetchone()[0]

    def event_seen(self, key: str) -> bool:
        return self._conn.execute('SELECT 1 FROM events_seen WHERE "key"=?', (key,)).fetchone() is not None \
            if self._has_events_table() else False

    def seen_events(self) -> list[tuple[str, str, int, str]]:
        """(key, writer, seq, hash) of every store event this catalog recorded, by writer and seq."""
        if not self._has_events_table():
            return []
        return self._conn.execute('SELECT "key", writer, seq, hash FROM events_seen ORDER BY writer, seq').fetchall()

    def _has_events_table(self) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='events_seen'").fetchone() is not None

    def record_event(self, key: str | None, writer: str, seq: int, h: str, at: float,
                     rows: Iterable[tuple[str, str | None, bool, dict[str, Any]]],
                     checks: Iterable[tuple[str, bool]]) -> bool:
        """Record one store event in one transaction: its audit rows and chunk check times
        (all at the event's own time `at`), and its key, so a replay never records it twice.
        key None: the event could not be written to the store; record the rows only.
        False if the event was recorded before."""
        with self.write() as conn:
            if key is not None:
                if conn.execute('SELECT 1 FROM events_seen WHERE "key"=?', (key,)).fetchone() is not None:
                    return False
                conn.execute('INSERT INTO events_seen("key", writer, seq, hash, at) VALUES (?,?,?,?,?)',
                             (key, writer, seq, h, at))
            for event, mid, ok, details in rows:
                known = mid is not None and conn.execute("SELECT 1 FROM manifests WHERE id=?",
                                                         (mid,)).fetchone() is not None
                self._audit(conn, event, mid if known else None, ok, details, at)
            conn.executemany(
                "INSERT INTO chunk_checks(hash, last_verified, ok) VALUES (?,?,?) "
                "ON CONFLICT(hash) DO UPDATE SET last_verified=excluded.last_verified, ok=excluded.ok "
                "WHERE excluded.last_verified >= chunk_checks.last_verified",
                ((c, at, int(ok)) for c, ok in checks))
        return True

    def record_event_lists(self, key: str | None, writer: str, seq: int, h: str, at: float,
                           rows: Iterable[tuple[str, str | None, bool, dict[str, Any]]],
                           ok: Iterable[str], failed: Iterable[str]) -> bool:
        """`record_event` with the chunk checks given as the event's two lists (intact,
        damaged), each written by one statement over a JSON array instead of a bound row per
        chunk (a deep verify's event names every chunk it read); sorted, so the rows go into
        the table's index in its order. Same rows, same rule (a later check wins; a chunk in
        both lists ends damaged, as `record_event` of events.chunk_results leaves it), same
        one transaction. A list of more than `jsonrows.SLICE` goes in a slice per statement
        (bounds each text, well under SQLite's longest string)."""
        with self.write() as conn:
            if not self.record_event(key, writer, seq, h, at, rows, ()):
                return False
            for hashes, flag in ((ok, 1), (failed, 0)):
                listed = sorted(hashes)
                for i in range(0, len(listed), jsonrows.SLICE):
                    conn.execute(
                        "INSERT INTO chunk_checks(hash, last_verified, ok) SELECT value, ?, ? FROM json_each(?) "
                        "WHERE true ON CONFLICT(hash) DO UPDATE SET last_verified=excluded.last_verified, "
                        "ok=excluded.ok WHERE excluded.last_verified >= chunk_checks.last_verified",
                        (at, flag, json.dumps(listed[i:i + jsonrows.SLICE])))
        return True

    @_across_migration
    def chunk_coverage(self, filemap_chunks: Callable[[Entry], Iterable[ChunkRef]] | None = None
                       ) -> list[tuple[str, str, str | None, str, int, float | None, bool | None]]:
        """(manifest id, name, label, chunk, stored size, last deep check, ok) for every distinct
        chunk of every recorded manifest: what `fixity status` summarises. Schema 6 keeps a
        manifest's inline chunks; a file map's come from `filemap_chunks(entry)` (the
        repository fetches and checks the map), once per map. A catalog read read-only before
        its schema 4 migration still has its chunk_refs rows: read those; one read before its
        schema 5 migration names chunks by rowid and hex text; before 6, maps' chunks by BLOB."""
        if self._prefix_keys():
            return self._chunk_coverage_v6(filemap_chunks)
        sets = ("SELECT manifest, chunk FROM manifest_chunks UNION SELECT mf.manifest, fc.chunk FROM "
                "manifest_filemaps mf JOIN filemap_chunks fc ON fc.filemap = mf.filemap")
        if self._blob_keys():
            return [(m, n, lb, bytes(h).hex(), s, t, None if ok is None else bool(ok))
                    for m, n, lb, h, s, t, ok in self._conn.execute(
                        f"WITH mc(manifest, chunk) AS ({sets}) "
                        "SELECT m.id, m.name, m.label, c.hash, c.stored_size, k.last_verified, k.ok "
                        "FROM mc JOIN manifests m ON m.rowid = mc.manifest JOIN chunks c ON c.hash = mc.chunk "
                        "LEFT JOIN chunk_checks k ON k.hash = lower(hex(c.hash)) ORDER BY m.rowid, c.hash")]
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='manifest_chunks'").fetchone() is None:
            sets = ("SELECT DISTINCT m.rowid, c.rowid FROM chunk_refs r JOIN manifests m ON m.id = r.manifest_id "
                    "JOIN chunks c ON c.hash = r.hash")
        return [(m, n, lb, h, s, t, None if ok is None else bool(ok)) for m, n, lb, h, s, t, ok in self._conn.execute(
            f"WITH mc(manifest, chunk) AS ({sets}) "
            "SELECT m.id, m.name, m.label, c.hash, c.stored_size, k.last_verified, k.ok "
            "FROM mc JOIN manifests m ON m.rowid = mc.manifest JOIN chunks c ON c.rowid = mc.chunk "
            "LEFT JOIN chunk_checks k ON k.hash = c.hash ORDER BY m.rowid, c.hash")]

    def _chunk_coverage_v6(self, fetch: Callable[[Entry], Iterable[ChunkRef]] | None
                           ) -> list[tuple[str, str, str | None, str, int, float | None, bool | None]]:
        conn = self._conn
        checks = {h: (t, None if ok is None else bool(ok))
                  for h, t, ok in conn.execute("SELECT hash, last_verified, ok FROM chunk_checks")}
        maps: dict[str, tuple[tuple[str, int], ...]] = {}  # map hash -> (chunk, stored size): each map read once
        out: list[tuple[str, str, str | None, str, int, float | None, bool | None]] = []
        for row, mid, name, label in conn.execute("SELECT rowid, id, name, label FROM manifests ORDER BY rowid").fetchall():
            sizes: dict[str, int] = {}
            for blob, size in conn.execute("SELECT mc.chunk, c.stored_size FROM manifest_chunks mc JOIN chunks c "
                                           "ON c.key = chunk_key_blob(mc.chunk) WHERE mc.manifest = ?", (row,)):
                sizes.setdefault(bytes(blob).hex(), size)
            for fh, count, size in conn.execute("SELECT f.hash, f.chunk_count, f.size FROM manifest_filemaps mf "
                                                "JOIN filemaps f ON f.rowid = mf.filemap WHERE mf.manifest = ? "
                                                "ORDER BY f.rowid", (row,)).fetchall():
                refs = maps.get(fh)
                if refs is None:
                    e = Entry(path=f"file map {fh[:16]}", type="file", mode=0o644, size=size, filemap=fh,
                              chunk_count=count)
                    refs = maps[fh] = _hash_sizes(self._fetch(e, fetch))
                for h, stored in refs:
                    sizes.setdefault(h, stored)
            out.extend((mid, name, label, h, sizes[h], *checks.get(h, (None, None))) for h in sorted(sizes))
        return out

    # -- pack indexes (archiver.packs): a cache of the store's index objects ---------------
    # Created on first write (not a schema step), so a catalog without them reads as empty:
    # the store's index objects are the truth and `catalog rebuild` records them again.
    _PACK_TABLES = ('CREATE TABLE IF NOT EXISTS "packs" ("pack" TEXT PRIMARY KEY, "size" INTEGER, '
                    '"index_id" TEXT)',
                    'CREATE TABLE IF NOT EXISTS "pack_chunks" ("hash" TEXT, "pack" TEXT, "offset" INTEGER, '
                    '"stored_size" INTEGER, "length" INTEGER, PRIMARY KEY ("hash", "pack"))')

    def record_pack(self, pack: str, size: int, index_id: str,
                    entries: Iterable[tuple[str, int, int, int]]) -> bool:
        """Record one pack index: (hash, offset, stored_size, length) per chunk. False if known."""
        with self.write() as conn:
            new = self._record_pack(conn, pack, size, index_id, entries)
        self._pack_tables_seen = True  # committed: any connection sees the tables now
        return new

    def _record_pack(self, conn: sqlite3.Connection, pack: str, size: int, index_id: str,
                     entries: Iterable[tuple[str, int, int, int]]) -> bool:
        for statement in self._PACK_TABLES:
            conn.execute(statement)
        if conn.execute('SELECT 1 FROM packs WHERE pack=?', (pack,)).fetchone() is not None:
            return False
        conn.execute('INSERT INTO packs(pack, size, index_id) VALUES (?,?,?)', (pack, size, index_id))
        entries = list(entries)
        if not blobrows.insert_pack_entries(conn, pack, entries):  # one statement, without the GIL
            conn.executemany('INSERT OR IGNORE INTO pack_chunks(hash, pack, "offset", stored_size, length) '
                             'VALUES (?,?,?,?,?)', ((h, pack, o, s, n) for h, o, s, n in entries))
        return True

    def record_packs(self, packs: Iterable[tuple[str, int, str, Iterable[tuple[str, int, int, int]]]]) -> int:
        """`record_pack` of each (pack, size, index_id, entries), all in one transaction (one
        commit, one WAL fsync, for the packs a commit flushes); returns how many were new."""
        with self.write():
            return sum(self.record_pack(*p) for p in packs)

    def record_packs_apart(self, packs: Iterable[tuple[str, int, str, Iterable[tuple[str, int, int, int]]]]) -> int:
        """`record_packs` through a connection of its own, opened for this one transaction, for
        a thread recording them while another thread of the process reads through the
        catalog's own connection (archiver.repository.flush_packs_behind): the reads neither
        share a connection with the writes nor see them before they commit. Writers of this
        process still take turns (the catalog's lock), so another write waits for this one."""
        if self._memory or self.read_only:
            return self.record_packs(packs)
        try:
            conn = _connect_rw(self.path)
        except (OSError, sqlite3.Error) as e:
            raise CatalogError(f"catalog {self.path}: {e}") from None
        try:
            with self._txn(conn):
                new = sum(self._record_pack(conn, *p) for p in packs)
        finally:
            conn.close()
        self._pack_tables_seen = True  # only once committed: readers of other connections ask for them at once
        return new

    # A catalog without pack tables is asked again after this long: another process may create them
    # meanwhile (this one's record_pack notes them at once); missing a pack that briefly costs a
    # dedup (the chunk is packed again), never a read (the store's own indexes are consulted).
    PACK_TABLES_RECHECK_S = 1.0

    def _has_pack_tables(self, conn: sqlite3.Connection) -> bool:
        """Asked before every pack lookup (once per small chunk archived): once the tables are
        seen they are remembered, since no schema change drops them; their absence for
        PACK_TABLES_RECHECK_S."""
        if getattr(self, "_pack_tables_seen", False):
            return True
        if time.monotonic() < getattr(self, "_pack_tables_absent_until", 0.0):
            return False
        seen = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='pack_chunks'").fetchone() \
            is not None
        if seen:
            self._pack_tables_seen = True
        else:
            self._pack_tables_absent_until = time.monotonic() + self.PACK_TABLES_RECHECK_S
        return seen

    def pack_locations(self, hashes: Iterable[str]) -> dict[str, list[tuple[str, int, int, int, int, str]]]:
        """hash -> [(pack, offset, stored_size, length, pack_size, index_id)] for each of
        `hashes` recorded in a pack, oldest pack first."""
        conn = self._reader()
        out: dict[str, list[tuple[str, int, int, int, int, str]]] = {}
        if not self._has_pack_tables(conn):
            return out
        wanted = list(dict.fromkeys(hashes))
        for h, *loc in _select_in(conn, 'SELECT c.hash, c.pack, c."offset", c.stored_size, c.length, p.size, '
                                        'p.index_id FROM pack_chunks c JOIN packs p ON p.pack = c.pack', "c.hash",
                                  wanted, " ORDER BY p.rowid"):
            out.setdefault(h, []).append(tuple(loc))  # type: ignore[arg-type]
        return out

    def pack_location_rows(self, hashes: list[str]) -> tuple[list[tuple[str, str, int, int, int]],
                                                             dict[str, tuple[int, int, str]]]:
        """`pack_locations` as flat rows, for a read plan of a whole archive: ((hash, pack,
        offset, stored_size, length) of each recorded location of `hashes`, in no order;
        pack -> (its age rank, size, index_id) for each pack they name). Two statements, the
        hashes as one JSON array, rather than a join and a sort per 500 hashes; a location
        whose pack is not recorded is not one (the join drops it too): the caller skips it."""
        conn = self._reader()
        if not hashes or not self._has_pack_tables(conn):
            return [], {}
        rows = conn.execute('SELECT hash, pack, "offset", stored_size, length FROM pack_chunks '
                            'WHERE hash IN (SELECT value FROM json_each(?))', (json.dumps(hashes),)).fetchall()
        names = list({r[1]: None for r in rows})
        packs = {p: (rank, size, iid) for rank, p, size, iid in conn.execute(
            'SELECT rowid, pack, size, index_id FROM packs WHERE pack IN (SELECT value FROM json_each(?))',
            (json.dumps(names),))}
        return rows, packs

    def file_count(self, mids: list[str]) -> int:
        """The files the manifests `mids` record, summed (those the catalog knows)."""
        row = self._reader().execute('SELECT COALESCE(SUM(file_count), 0) FROM manifests '
                                     'WHERE id IN (SELECT value FROM json_each(?))', (json.dumps(mids),)).fetchone()
        return int(row[0])

    def archive_pack_rows(self, mids: list[str], max_length: int) -> tuple[list[tuple[str, str, int, int, int]],
                                                                            dict[str, tuple[int, int, str]]]:
        """`pack_location_rows` of the packed chunks of at most `max_length` bytes that
        manifests `mids` name inline (`manifest_chunks`), found without the manifests: what a
        deep verify can start reading before it has loaded them. A hint like every catalog
        row: the reader proves what it reads against the manifests it then loads."""
        conn = self._reader()
        if not mids or not self._has_pack_tables(conn):
            return [], {}
        rows = conn.execute('SELECT pc.hash, pc.pack, pc."offset", pc.stored_size, pc.length FROM manifests m '
                            'JOIN manifest_chunks mc ON mc.manifest = m.rowid '
                            'JOIN pack_chunks pc ON pc.hash = lower(hex(mc.chunk)) '
                            'WHERE m.id IN (SELECT value FROM json_each(?)) AND pc.length <= ?',
                            (json.dumps(mids), max_length)).fetchall()
        names = list({r[1]: None for r in rows})
        packs = {p: (rank, size, iid) for rank, p, size, iid in conn.execute(
            'SELECT rowid, pack, size, index_id FROM packs WHERE pack IN (SELECT value FROM json_each(?))',
            (json.dumps(names),))}
        return rows, packs

    def pack_entries(self, pack: str) -> list[tuple[str, int, int, int]]:
        """(hash, offset, stored_size, length) of every chunk of one recorded pack, in pack order."""
        conn = self._reader()
        if not self._has_pack_tables(conn):
            return []
        return conn.execute('SELECT hash, "offset", stored_size, length FROM pack_chunks WHERE pack=? '
                            'ORDER BY "offset"', (pack,)).fetchall()

    def object_counts(self) -> tuple[int, int]:
        """(chunks recorded, packs recorded): what a LIST of the store would roughly page through."""
        conn = self._reader()
        chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return chunks, (conn.execute("SELECT count(*) FROM packs").fetchone()[0] if self._has_pack_tables(conn) else 0)

    def known_packs(self) -> set[str]:
        conn = self._reader()
        return set() if not self._has_pack_tables(conn) else {r[0] for r in conn.execute("SELECT pack FROM packs")}


def _immutable(conn: sqlite3.Connection, table: str) -> None:
    pk = {"manifests": "id = NEW.id", "files": "manifest_id = NEW.manifest_id AND path = NEW.path",
          "fields": "manifest_id = NEW.manifest_id AND key = NEW.key AND seq = NEW.seq",
          "audit": "seq = NEW.seq", "manifest_chunks": "", "filemap_chunks": "", "manifest_filemaps": "",
          # schema 1-3 only (tests build old catalogs with it); migration 3 -> 4 drops the table
          "chunk_refs": "manifest_id = NEW.manifest_id AND path = NEW.path AND seq = NEW.seq"}[table]
    msg = f"{table} rows are immutable"
    # a manifest_chunks row is all key: a second INSERT of it changes nothing (and recording
    # a manifest inserts each shared chunk OR IGNORE), so only UPDATE and DELETE are refused.
    # A files row goes in before its manifest's row (schema 7, record_manifest), so one probe
    # of the small `manifests` table refuses a row under a recorded manifest: INSERT OR REPLACE
    # of a recorded row and a row added to a recorded manifest alike (per row, the probe of
    # `files` itself for the row's key was most of the trigger's cost: bench/RESULTS.md, sfcommit2)
    when = ("WHEN EXISTS (SELECT 1 FROM manifests WHERE id = NEW.manifest_id)" if table == "files"
            else f"WHEN EXISTS (SELECT 1 FROM {table} WHERE {pk})")
    inserts = (("INSERT", when),) if pk else ()
    for verb, when in (("UPDATE", ""), ("DELETE", ""), *inserts):
        conn.execute(f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} {when} "
                     f"BEGIN SELECT RAISE(ABORT, '{msg}'); END")


def check_recordable(mid: str, m: Manifest) -> None:
    """ManifestError, with the reason, unless the catalog can record `m` faithfully: a path
    listed twice, or text that is not valid Unicode (a lone surrogate in a name, label,
    meta, path or codec cannot be stored as UTF-8), would fail halfway or be mangled."""
    seen: set[str] = set()
    parts: list[str] = []  # every text at once: one encode for the common case, all valid
    add = parts.append
    for e in m.entries:
        if e.path in seen:
            raise ManifestError(f"manifest {mid[:16]} lists path {e.path!r} twice")
        seen.add(e.path)
        add(e.path)
        add(e.type)
        add(e.format)
        for c in e.chunks:
            add(c.codec)
    try:
        "".join(parts).encode("utf-8")
        entries_ok = True
    except UnicodeEncodeError:  # find which one, below
        entries_ok = False
    texts = [("name", m.name), ("label", m.label or "")]
    texts += [(f"meta {k!r}", k + v) for k, v in m.meta.items()]
    if not entries_ok:
        texts += [(f"path {e.path!r}", e.path + e.type + e.format + "".join(c.codec for c in e.chunks))
                  for e in m.entries]
    for where, text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ManifestError(f"manifest {mid[:16]} has text that is not valid Unicode in {where}") from None


class _HolderMark:
    """`<catalog>.lock`: the pid and host of the process holding the write lock, kept
    under an flock while it holds it. SQLite does the locking; this file only lets a
    waiter name the holder (a mark without its flock is stale and ignored)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._held = False

    def mark(self) -> None:
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            for _ in range(20):  # a waiter reading the mark holds a shared flock for a moment
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.001)
            else:
                return
            self._held = True
            text = f"{os.getpid()} {socket.gethostname()}\n".encode()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text, 0)
        except OSError:
            pass  # informational only: a read-only directory, say

    def clear(self) -> None:
        if self._fd is None or not self._held:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass
        self._held = False

    def read(self) -> tuple[int | None, str | None]:
        """(pid, host) of the live holder, or (None, None) if no process left a live mark."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None, None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: the mark is live
                fields = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
                if fields and fields[0].isdigit():
                    host = fields[1] if len(fields) > 1 and fields[1] != socket.gethostname() else None
                    return int(fields[0]), host
                return None, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None, None
        except OSError:
            return None, None
        finally:
            os.close(fd)

    def close(self) -> None:
        self.clear()
        if self._fd is not None:
            fd, self._fd = self._fd, None  # forgotten first: a Ctrl-C between the two must not close it twice
            os.close(fd)


class _Txn:
    def __init__(self, cat: Catalog, conn: sqlite3.Connection | None = None) -> None:
        self.cat, self.conn_override = cat, conn
        self.owner = False
        self.savepoint: str | None = None

    def __enter__(self) -> sqlite3.Connection:
        cat = self.cat
        cat._lock.acquire()
        try:
            conn = self.conn_override or cat._writer()
            if conn.in_transaction:  # nested use from the same catalog: a savepoint of the outer one
                cat._savepoints += 1
                self.savepoint = f"sp{cat._savepoints}"
                conn.execute(f"SAVEPOINT {self.savepoint}")
            else:
                cat._begin(conn)
                self.owner = True
        except BaseException:  # e.g. busy timeout: __exit__ will not run, so release here
            cat._lock.release()
            raise
        self.conn = conn
        return conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.owner:
                self.cat._holder.clear()
                try:
                    if exc_type is None:
                        self.conn.execute("COMMIT")
                    elif self.conn.in_transaction:  # SQLite may have rolled it back itself (SQLITE_FULL)
                        self.conn.execute("ROLLBACK")
                except BaseException as e:
                    if self.conn.in_transaction:  # a failed COMMIT (disk full, say) must not leave it open
                        self.conn.execute("ROLLBACK")
                    if _full(e):
                        raise self._full_error(e) from None
                    raise
            elif self.savepoint is not None:
                if exc_type is not None:
                    self.conn.execute(f"ROLLBACK TO {self.savepoint}")
                self.conn.execute(f"RELEASE {self.savepoint}")
        finally:
            self.cat._lock.release()
        if self.owner and exc is not None and _full(exc):  # rolled back: nothing of it was recorded
            raise self._full_error(exc) from None

    def _full_error(self, e: BaseException) -> CatalogError:
        """A full disk under the catalog, as one line naming it (never a raw sqlite3 error)."""
        return CatalogError(f"catalog {self.cat.path}: disk full, nothing of this write was recorded ({e})")


def default_catalog_path(home: Path, store_url: str, default_store_url: str, endpoint: str | None = None) -> Path:
    """The default store keeps `catalog.db` beside it; any other store gets its own file
    under `catalogs/` so one catalog never mixes two stores. An S3-compatible endpoint is
    part of the store's name (without one, the path is what it always was)."""
    if store_url == default_store_url and not endpoint:
        return home / "catalog.db"
    name = store_url if not endpoint else f"{store_url}\n{endpoint}"
    return home / "catalogs" / (blake3.blake3(name.encode()).hexdigest()[:16] + ".db")


MAX_FIELD_TEXT = 4096  # longer values are indexed by their first characters only


def field_rows(mid: str, m: Manifest) -> list[tuple[str, str, int, str, float | None]]:
    """The `fields` rows of a manifest: (id, key, seq, text value, numeric value or None).
    Booleans are 'true'/'false' text, numbers also numeric, None is 'null'."""
    rows = []
    seq: dict[str, int] = {}
    for key, value in index_fields(m):
        n = seq.get(key, 0)
        seq[key] = n + 1
        num = None
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text, num = str(value), float(value)
        elif value is None:
            text = "null"
        else:
            text = str(value)[:MAX_FIELD_TEXT]
        rows.append((mid, key, n, text, num))
    return rows


@dataclass(frozen=True)
class Condition:
    """One search condition: KEY OP VALUE (see `parse_condition`)."""

    key: str
    op: str
    value: str


_OPS = ("<=", ">=", "!=", "=", "<", ">", "~")


def parse_condition(text: str) -> Condition:
    """'license=apache-2.0', 'retired>=2026-01-01', 'name~all-*': the first operator after a
    non-empty key splits it. ValueError if there is none."""
    for i, ch in enumerate(text):
        for op in _OPS:
            if text.startswith(op, i) and i > 0:
                return Condition(text[:i].strip(), op, text[i + len(op):].strip())
    raise ValueError(f"{text!r} is not KEY OP VALUE with OP one of {' '.join(_OPS)}")


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def _condition_sql(c: Condition) -> tuple[str, list[Any]]:
    """A SELECT of the ids of the manifests that meet `c`: one range of the (key, value) or
    (key, num) index, never a scan per manifest."""
    base = "SELECT manifest_id FROM fields WHERE key = ? AND "
    num = _number(c.value)
    if c.op == "=":
        if num is not None:
            return (f"{base}num = ? UNION {base}value = ? COLLATE NOCASE", [c.key, num, c.key, c.value])
        return f"{base}value = ? COLLATE NOCASE", [c.key, c.value]
    if c.op == "!=":
        same, args = _condition_sql(Condition(c.key, "=", c.value))
        return f"SELECT manifest_id FROM fields WHERE key = ? EXCEPT SELECT * FROM ({same})", [c.key, *args]
    if c.op == "~":
        return f"{base}value GLOB ?", [c.key, c.value]
    if num is not None:
        return f"{base}num {c.op} ?", [c.key, num]
    return f"{base}num IS NULL AND value {c.op} ?", [c.key, c.value]


def search_ids(conn: sqlite3.Connection, conditions: Iterable[Condition]) -> set[str]:
    """Ids of the manifests that meet every condition (the intersection of each one's ids)."""
    parts, args = [], []
    for c in conditions:
        sql, a = _condition_sql(c)
        parts.append(f"SELECT * FROM ({sql})")
        args += a
    if not parts:
        return {r[0] for r in conn.execute("SELECT id FROM manifests")}
    return {r[0] for r in conn.execute(" INTERSECT ".join(parts), args)}
