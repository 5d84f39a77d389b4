"""A commit's `chunks` and `manifest_chunks` rows as one statement each, over fixed-width
records in a blob.

`executemany` steps SQLite once per row and takes the GIL back between steps. Beside the
files cache's own row writes on another thread (archiver.filescache), every step of the two
hands the GIL over: a first archive of 25,000 small files spent ~0.15 CPU-s (~0.23 s wall)
binding its 20,000 `chunks` and 20,000 `manifest_chunks` rows, about twice what the same
inserts cost alone. Here each insert is one `INSERT ... SELECT` over a blob of fixed-width
records (`substr` of a blob is O(1), unlike of a text), walked by `json_each` over an array
(a row's `key` is its index) or a recursive counter: one step, during which SQLite runs
without the GIL. The rows are the same as executemany's; a value outside its record's
fixed width makes the builder return False and the caller binds the rows as before. (The
`files` rows stay bound row by row: formatting their records in Python cost more than the
binding saved, ~0.14 vs ~0.10 CPU-s for 25,500 rows with no other thread running.)"""
from __future__ import annotations

import json
import sqlite3
from typing import Iterable, Sequence

HASH_HEX = 64  # a chunk hash in hex
HASH_BYTES = 32
INT_WIDTH = 20  # a right-aligned int64 (sign and 19 digits)
_INT_LOW, _INT_HIGH = -(1 << 63), 1 << 63  # SQLite's INTEGER: CAST saturates beyond it, executemany refuses


def _field(blob: str, start: int, width: int) -> str:
    """SQL of bytes [start, start + width) of the record at json_each's `key`, as text."""
    return f"CAST(substr({blob}, key * {{w}} + {start + 1}, {width}) AS TEXT)"


_COUNTER = "WITH RECURSIVE n(key) AS (SELECT 0 UNION ALL SELECT key + 1 FROM n WHERE key + 1 < ?{n}) "


def insert_hash_set(conn: sqlite3.Connection, row: int, hashes: Iterable[str]) -> bool:
    """INSERT OR IGNORE one `manifest_chunks` row (manifest `row`, 32-byte hash) per hex hash,
    in hash order (lowercase hex sorts as its bytes do), in one statement; False (nothing
    inserted) unless every hash is 64 lowercase hex digits."""
    ordered = sorted(hashes)
    text = "".join(ordered)
    if len(text) != HASH_HEX * len(ordered) or not _lower_hex(text):
        return False
    if ordered:
        conn.execute(_COUNTER.format(n=1) + "INSERT OR IGNORE INTO manifest_chunks(manifest, chunk) "
                     f"SELECT ?2, substr(?3, key * {HASH_BYTES} + 1, {HASH_BYTES}) FROM n",
                     (len(ordered), row, bytes.fromhex(text)))
    return True


def _lower_hex(text: str) -> bool:
    return text.isascii() and not text.strip("0123456789abcdef")


CHUNKS_SQL = ("INSERT OR IGNORE INTO chunks(key, stored_size, codec, owner) SELECT "
              f"CAST({_field('?2', 0, INT_WIDTH)} AS INTEGER), CAST({_field('?2', INT_WIDTH, INT_WIDTH)} AS INTEGER), "
              "value, ?3 FROM json_each(?1)").replace("{w}", str(2 * INT_WIDTH))


def insert_chunks(conn: sqlite3.Connection, rows: Sequence[tuple[int, int, str, int | None]]) -> bool:
    """INSERT OR IGNORE the `chunks` rows (key, stored size, codec, owner), in order, one
    owner for all, in one statement; False (nothing inserted) if a value does not fit its
    record or the owners differ."""
    if not rows:
        return True
    # column by column: the checks and the formatting run in C (map, min, max, set), not as a
    # Python loop over the rows (bench/RESULTS.md, branch sfcommit2)
    if set(map(len, rows)) != {4}:  # zip would drop a longer row's extra values; executemany refuses it
        return False
    keys, stored, codecs, owners = zip(*rows)
    owner = owners[0]
    if {*map(type, keys), *map(type, stored)} != {int} or set(map(type, codecs)) != {str} or set(owners) != {owner}:
        return False
    if min(keys) < _INT_LOW or max(keys) >= _INT_HIGH or min(stored) < _INT_LOW or max(stored) >= _INT_HIGH:
        return False
    blob = "".join(map(_RECORD.format, keys, stored)).encode("ascii")
    if len(blob) != 2 * INT_WIDTH * len(rows):
        return False
    conn.execute(CHUNKS_SQL, (json.dumps(codecs, ensure_ascii=False), blob, owner))
    return True


_RECORD = f"{{:{INT_WIDTH}d}}{{:{INT_WIDTH}d}}"  # one `chunks` record: key and stored size, right-aligned


PACK_RECORD = HASH_HEX + 3 * INT_WIDTH  # a chunk's hash, then its offset, stored size and length
PACK_SQL = (_COUNTER.format(n=3) + 'INSERT OR IGNORE INTO pack_chunks(hash, pack, "offset", stored_size, length) '
            f"SELECT CAST(substr(?1, key * {PACK_RECORD} + 1, {HASH_HEX}) AS TEXT), ?2, "
            + ", ".join(f"CAST(CAST(substr(?1, key * {PACK_RECORD} + {HASH_HEX + i * INT_WIDTH + 1}, {INT_WIDTH}) "
                        "AS TEXT) AS INTEGER)" for i in range(3)) + " FROM n")


def insert_pack_entries(conn: sqlite3.Connection, pack: str, entries: Sequence[tuple[str, int, int, int]]) -> bool:
    """INSERT OR IGNORE the `pack_chunks` rows of one pack ((hash, offset, stored size,
    length) per chunk, in order) in one statement: a pack's rows recorded on a thread beside
    the archive's own work (archiver.repository.flush_packs_behind) then take the GIL once,
    not at every row. False (nothing inserted) unless every hash is 64 lowercase hex digits
    and every number a 64-bit int."""
    if not entries:
        return True
    if set(map(len, entries)) != {4}:  # zip would drop a longer entry's extra values; the row-by-row insert refuses it
        return False
    hashes, offsets, stored, lengths = zip(*entries)
    if set(map(type, hashes)) != {str}:
        return False
    text = "".join(hashes)
    if len(text) != HASH_HEX * len(entries) or not _lower_hex(text) or {*map(len, hashes)} != {HASH_HEX}:
        return False
    numbers = (*offsets, *stored, *lengths)
    if set(map(type, numbers)) != {int} or min(numbers) < _INT_LOW or max(numbers) >= _INT_HIGH:
        return False
    blob = "".join(map(_PACK_FORMAT.format, hashes, offsets, stored, lengths)).encode("ascii")
    if len(blob) != PACK_RECORD * len(entries):
        return False
    conn.execute(PACK_SQL, (blob, pack, len(entries)))
    return True


_PACK_FORMAT = f"{{}}{{:{INT_WIDTH}d}}{{:{INT_WIDTH}d}}{{:{INT_WIDTH}d}}"
