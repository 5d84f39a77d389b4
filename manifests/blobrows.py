"""A commit's per-row catalog inserts as one statement each, over fixed-width records in a blob.

`executemany` steps SQLite once per row and takes the GIL back between steps. Beside the
files cache's own row writes on another thread (archiver.filescache), every step of the two
hands the GIL over, so a first archive of 25,000 small files spent ~2x the insert's own CPU
in its `files`, `chunks` and `manifest_chunks` rows. Here each insert is one
`INSERT ... SELECT` over a blob of fixed-width records (`substr` of a blob is O(1), unlike
of a text), walked by `json_each` over an array (a row's `key` is its index) or a recursive
counter: one step, during which SQLite runs without the GIL. The rows are the same as
executemany's; a value outside a record's fixed width makes the builder return None and
the caller binds the rows as before."""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable, Sequence

HASH_HEX = 64  # a BLAKE3 / SHA-256 in hex
HASH_BYTES = 32
INT_WIDTH = 20  # a right-aligned int64 (sign and 19 digits)
_TYPES = {"file": "f", "dir": "d", "symlink": "l"}
_TYPE_SQL = "CASE {c} WHEN 'f' THEN 'file' WHEN 'd' THEN 'dir' ELSE 'symlink' END"
_INT_LOW, _INT_HIGH = -(1 << 63), 1 << 63  # SQLite's INTEGER: CAST saturates beyond it, executemany refuses
# a files record: type (1), size, mode, blake3 (64 or spaces), sha256 (64 or spaces)
FILE_RECORD = 1 + 2 * INT_WIDTH + 2 * HASH_HEX


def _field(blob: str, start: int, width: int) -> str:
    """SQL of bytes [start, start + width) of the record at json_each's `key`, as text."""
    return f"CAST(substr({blob}, key * {{w}} + {start + 1}, {width}) AS TEXT)"


def _int_ok(v: Any) -> bool:
    return type(v) is int and _INT_LOW <= v < _INT_HIGH


def _hash_ok(h: Any) -> bool:
    """A hash field: "" or 64 characters without a space at either end (rtrim gives it back)."""
    return type(h) is str and (h == "" or (len(h) == HASH_HEX and h.isascii() and h[-1] != " " and h[0] != " "))


FILES_SQL = ("INSERT INTO files(manifest_id, path, type, size, mode, blake3, sha256) SELECT ?1, value, "
             + _TYPE_SQL.format(c=_field("?3", 0, 1)) + ", "
             f"CAST({_field('?3', 1, INT_WIDTH)} AS INTEGER), "
             f"CAST({_field('?3', 1 + INT_WIDTH, INT_WIDTH)} AS INTEGER), "
             f"rtrim({_field('?3', 1 + 2 * INT_WIDTH, HASH_HEX)}, ' '), "
             f"rtrim({_field('?3', 1 + 2 * INT_WIDTH + HASH_HEX, HASH_HEX)}, ' ') "
             "FROM json_each(?2)").replace("{w}", str(FILE_RECORD))


def file_records(entries: Sequence[Any]) -> tuple[str, bytes] | None:
    """(JSON array of the paths, blob of the other columns) of `files` rows for `entries`
    (path, type, size, mode, blake3, sha256), in order; None if a value does not fit its
    record (the caller binds those rows one by one)."""
    fields: list[str] = []
    add = fields.append
    types = _TYPES
    for e in entries:
        t, size, mode, b3, sha = types.get(e.type), e.size, e.mode, e.blake3, e.sha256
        if t is None or not (_int_ok(size) and _int_ok(mode) and _hash_ok(b3) and _hash_ok(sha)):
            return None
        add(f"{t}{size:{INT_WIDTH}d}{mode:{INT_WIDTH}d}{b3:{HASH_HEX}}{sha:{HASH_HEX}}")
    paths = json.dumps([e.path for e in entries], ensure_ascii=False)
    blob = "".join(fields).encode("ascii")
    if len(blob) != FILE_RECORD * len(fields):
        return None
    return paths, blob


def insert_files(conn: sqlite3.Connection, mid: str, entries: Sequence[Any]) -> bool:
    """Insert the `files` rows of `entries` under manifest `mid` in one statement; False
    (nothing inserted) if `file_records` refuses them."""
    records = file_records(entries)
    if records is None:
        return False
    if entries:
        conn.execute(FILES_SQL, (mid, *records))
    return True


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
    owner = rows[0][3]
    fields: list[str] = []
    add = fields.append
    for key, stored, codec, own in rows:
        if not (_int_ok(key) and _int_ok(stored) and type(codec) is str and own == owner):
            return False
        add(f"{key:{INT_WIDTH}d}{stored:{INT_WIDTH}d}")
    blob = "".join(fields).encode("ascii")
    if len(blob) != 2 * INT_WIDTH * len(fields):
        return False
    conn.execute(CHUNKS_SQL, (json.dumps([r[2] for r in rows], ensure_ascii=False), blob, owner))
    return True
