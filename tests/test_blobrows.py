"""manifests/blobrows.py: a commit's chunk rows as one statement each record exactly the
rows executemany records (values, types, order of the first seen), refuse what does not fit,
and an archive's catalog is the same table for table as with the rows bound one by one."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from archiver import api
from manifests import blobrows
from tests.helpers import make_checkpoint

SCHEMA = [
    'CREATE TABLE "files" ("manifest_id" TEXT, "path" TEXT, "type" TEXT, "size" INTEGER, "mode" INTEGER, '
    '"blake3" TEXT, "sha256" TEXT, PRIMARY KEY ("manifest_id", "path"))',
    'CREATE TABLE "manifest_chunks" ("manifest" INTEGER, "chunk" BLOB, PRIMARY KEY ("manifest", "chunk")) '
    'WITHOUT ROWID',
    'CREATE TABLE "chunks" ("key" INTEGER PRIMARY KEY, "stored_size" INTEGER, "codec" TEXT, "owner" INTEGER)',
    'CREATE TABLE "pack_chunks" ("hash" TEXT, "pack" TEXT, "offset" INTEGER, "stored_size" INTEGER, '
    '"length" INTEGER, PRIMARY KEY ("hash", "pack"))',
]
HEX_A, HEX_B, HEX_C = "0" * 64, "ab" * 32, "f" * 64


def _twins() -> tuple[sqlite3.Connection, sqlite3.Connection]:
    out = []
    for _ in range(2):
        conn = sqlite3.connect(":memory:", isolation_level=None)
        for s in SCHEMA:
            conn.execute(s)
        out.append(conn)
    return out[0], out[1]


def _rows(conn: sqlite3.Connection, table: str) -> list[tuple]:
    """Every row with each value's SQLite type, in rowid (insertion) or key order."""
    cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
    select = ", ".join(f'"{c}", typeof("{c}")' for c in cols)
    return conn.execute(f'SELECT {select} FROM "{table}"').fetchall()


def test_chunk_rows_and_hash_sets_are_those_of_executemany():
    rows = [(-2 ** 63, 0, "raw", None), (-1, 7, "zstd", None), (0, 2 ** 40, "zstd+planes", None),
            (2 ** 63 - 1, 5, "raw", None)]
    hashes = [HEX_C, HEX_A, HEX_B]
    fast, slow = _twins()
    for conn in (fast, slow):
        conn.execute("INSERT INTO chunks VALUES (0, 1, 'old', 9)")  # a known key: OR IGNORE keeps the first
    assert blobrows.insert_chunks(fast, rows)
    slow.executemany("INSERT OR IGNORE INTO chunks VALUES (?,?,?,?)", rows)
    assert blobrows.insert_hash_set(fast, 3, hashes)
    slow.executemany("INSERT OR IGNORE INTO manifest_chunks VALUES (?,?)",
                     [(3, bytes.fromhex(h)) for h in sorted(hashes)])
    assert _rows(fast, "chunks") == _rows(slow, "chunks")
    assert _rows(fast, "manifest_chunks") == _rows(slow, "manifest_chunks")
    assert fast.execute("SELECT owner FROM chunks WHERE key = -1").fetchone() == (None,)
    assert blobrows.insert_chunks(fast, [(r[0], r[1], r[2], 4) for r in rows[:1]] + [(5, 1, "raw", 4)])
    assert fast.execute("SELECT owner, codec FROM chunks WHERE key = 5").fetchone() == (4, "raw")


def test_pack_rows_are_those_of_executemany():
    """One pack's rows in one statement: the same values, types and insertion order as
    binding each row, the first of a hash named twice kept (INSERT OR IGNORE), 64-bit bounds."""
    entries = [(HEX_B, 0, 10, 12), (HEX_A, 10, 2 ** 63 - 1, 0), (HEX_B, 99, 1, 1), (HEX_C, -2 ** 63, 0, 5)]
    fast, slow = _twins()
    for pack in ("p" * 64, "q" * 64):
        assert blobrows.insert_pack_entries(fast, pack, entries)
        slow.executemany('INSERT OR IGNORE INTO pack_chunks(hash, pack, "offset", stored_size, length) '
                         'VALUES (?,?,?,?,?)', [(h, pack, o, s, n) for h, o, s, n in entries])
    assert _rows(fast, "pack_chunks") == _rows(slow, "pack_chunks") and len(_rows(fast, "pack_chunks")) == 6
    assert blobrows.insert_pack_entries(fast, "r", []) and fast.total_changes == 6


@pytest.mark.parametrize("call", [
    lambda c: blobrows.insert_pack_entries(c, "p", [(HEX_A, 0, 1, 1), ("AB" * 32, 1, 1, 1)]),  # upper case
    lambda c: blobrows.insert_pack_entries(c, "p", [(HEX_A, 0, 1, 1), (HEX_B[:-1], 1, 1, 1)]),  # short
    lambda c: blobrows.insert_pack_entries(c, "p", [(HEX_A[:-1], 0, 1, 1), (HEX_B + "0", 1, 1, 1)]),  # shifted
    lambda c: blobrows.insert_pack_entries(c, "p", [(HEX_A, 0, 1, 1), (HEX_B, 2 ** 63, 1, 1)]),  # past int64
    lambda c: blobrows.insert_pack_entries(c, "p", [(HEX_A, 0, 1.0, 1)]),  # not an int
    lambda c: blobrows.insert_pack_entries(c, "p", [(HEX_A, 0, 1, True)]),
    lambda c: blobrows.insert_pack_entries(c, "p", [(None, 0, 1, 1)]),
    # a ragged entry (zip would drop its extra value): refused, as binding it row by row does
    lambda c: blobrows.insert_pack_entries(c, "p", [(HEX_A, 0, 1, 1), (HEX_B, 1, 1, 1, 99)]),
])
def test_pack_rows_that_do_not_fit_are_refused_and_nothing_inserted(call):
    conn, _ = _twins()
    assert call(conn) is False
    assert not _rows(conn, "pack_chunks")


@pytest.mark.parametrize("call", [
    lambda c: blobrows.insert_chunks(c, [(1, 1, "raw", None), (2, 1, "raw", 7)]),  # owners differ
    lambda c: blobrows.insert_chunks(c, [(True, 1, "raw", None)]),
    lambda c: blobrows.insert_chunks(c, [(1, 1, "raw", None), (1 << 63, 1, "raw", None)]),  # past int64
    lambda c: blobrows.insert_chunks(c, [(-(1 << 63) - 1, 1, "raw", None), (1, 1, "raw", None)]),
    lambda c: blobrows.insert_chunks(c, [(1, 1, "raw", None), (2, 1 << 63, "raw", None)]),
    lambda c: blobrows.insert_chunks(c, [(1, 1.0, "raw", None)]),  # not an int
    lambda c: blobrows.insert_chunks(c, [(1, 1, "raw", None), (2, 1, None, None)]),  # codec not text
    lambda c: blobrows.insert_chunks(c, [(1, 1, "raw", 7), (2, 1, "raw", 7, 99)]),  # ragged: zip would drop 99
    lambda c: blobrows.insert_hash_set(c, 1, [HEX_A, "AB" * 32]),  # upper case: not the bytes' order
    lambda c: blobrows.insert_hash_set(c, 1, [HEX_A[:-1]]),
])
def test_a_value_outside_its_record_is_refused_and_nothing_inserted(call):
    conn, _ = _twins()
    assert call(conn) is False
    assert all(not _rows(conn, t) for t in ("files", "chunks", "manifest_chunks", "pack_chunks"))


def test_nothing_to_insert_runs_no_statement():
    conn, _ = _twins()
    assert blobrows.insert_chunks(conn, [])
    assert blobrows.insert_hash_set(conn, 1, [])
    assert conn.total_changes == 0


def _dump(path: Path) -> dict[str, list[tuple]]:
    """Every table's rows with their types, sorted; what differs between two runs by design
    left out: times, the writer's id and its event (audit, events_seen, info, recorded_at)."""
    conn = sqlite3.connect(path)
    out = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
        if table in ("audit", "events_seen", "info"):
            continue
        cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")') if r[1] != "recorded_at"]
        select = ", ".join(f'"{c}", typeof("{c}")' for c in cols)
        out[table] = sorted(conn.execute(f'SELECT {select} FROM "{table}"').fetchall(), key=repr)
    conn.close()
    return out


def _spied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(builder, whether it inserted) of every call: the blob side must take the one-statement path."""
    calls: list[tuple[str, bool]] = []
    for name in ("insert_chunks", "insert_hash_set", "insert_pack_entries"):
        def spy(*a, _f=getattr(blobrows, name), _n=name, **k):
            got = _f(*a, **k)
            calls.append((_n, got))
            return got
        monkeypatch.setattr(blobrows, name, spy)
    return calls


def _row_by_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog as before blobrows: every builder refuses, so executemany binds each row."""
    for name in ("insert_chunks", "insert_hash_set", "insert_pack_entries"):
        monkeypatch.setattr(blobrows, name, lambda *a, **k: False)


def test_an_archive_and_its_files_cache_rearchive_record_the_same_rows_as_row_by_row(
        tmp_path, home, monkeypatch, store_url):
    """On threads, on every store."""
    _same_rows_as_row_by_row(tmp_path, monkeypatch, store_url, processes=0)


def test_an_archive_on_worker_processes_records_the_same_rows_as_row_by_row(tmp_path, home, monkeypatch):
    """On worker processes (they archive to local stores only)."""
    _same_rows_as_row_by_row(tmp_path, monkeypatch, str(tmp_path / "store"), processes=2)


def _same_rows_as_row_by_row(tmp_path, monkeypatch, store_url: str, processes: int) -> None:
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    (src / "many").mkdir()
    for i in range(40):
        (src / "many" / f"f{i:02d}.txt").write_bytes(b"x%d" % (i % 30) * (i + 1))
    dumps = []
    for side in ("blob", "row"):
        with monkeypatch.context() as m:
            calls = _spied(m) if side == "blob" else _row_by_row(m)
            store = f"{store_url}-{side}" if store_url.startswith("/") else f"{store_url.rstrip('/')}/{side}"
            catalog = tmp_path / f"{side}.db"
            api.archive([src], name="m", store=store, catalog=catalog, processes=processes)
            api.archive([src], name="m", store=store, catalog=catalog, processes=processes)
        dumps.append(_dump(catalog))
        if side == "blob":
            assert {n for n, ok in calls if ok} >= {"insert_chunks", "insert_hash_set"}
            assert all(ok for _, ok in calls)
    assert dumps[0] == dumps[1]
    assert len(dumps[0]["files"]) > 40 and len(dumps[0]["chunks"]) > 30 and len(dumps[0]["manifests"]) == 2


@pytest.mark.packs
def test_a_packed_archive_records_the_same_pack_rows_as_row_by_row(tmp_path, home, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        (src / f"f{i:02d}.txt").write_bytes(b"small %d " % i * (i + 3))
    dumps = []
    for side in ("blob", "row"):
        with monkeypatch.context() as m:
            calls = _spied(m) if side == "blob" else _row_by_row(m)
            api.archive([src], name="p", store=str(tmp_path / f"store-{side}"), catalog=tmp_path / f"{side}.db",
                        processes=0)
        dumps.append(_dump(tmp_path / f"{side}.db"))
        if side == "blob":
            assert all(ok for _, ok in calls) and ("insert_pack_entries", True) in calls
    assert dumps[0]["pack_chunks"] and dumps[0]["packs"]
    # which pack a chunk lands in is the threads' race: the rows are compared but for the pack's name and place
    for d in dumps:
        d["pack_chunks"] = sorted(((r[0], r[1], r[6], r[7], r[8], r[9]) for r in d["pack_chunks"]), key=repr)
        d["packs"] = len(d["packs"])
    assert dumps[0] == dumps[1]
