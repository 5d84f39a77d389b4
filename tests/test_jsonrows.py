"""manifests.jsonrows: rows as one JSON text per slice, read back by json_each exactly."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from manifests import jsonrows

READ = f"SELECT {jsonrows.KEY_SQL}, {jsonrows.LOW_SQL}, {jsonrows.HIGH_SQL} FROM json_each(?)"
EDGE_KEYS = [-2 ** 63, -2 ** 63 + 1, -10 ** 18, -1, 0, 1, 9, 10 ** 18, 2 ** 63 - 2, 2 ** 63 - 1]


def _read(text: str) -> list[tuple[int, int, int]]:
    conn = sqlite3.connect(":memory:")
    try:
        return conn.execute(READ, (text,)).fetchall()
    finally:
        conn.close()


def test_rows_read_back_exactly_at_the_edges_of_every_field():
    """Keys over the whole int64 range (both ends, zero, one digit, 19 digits), low 0 and
    2**32 - 1, high 0 and 2**30 - 1: json_each gives back each row as it was, in order."""
    keys = np.array(EDGE_KEYS, dtype=np.int64)
    low = np.array([0, 2 ** 32 - 1, 1, 9, 10, 4096, 2 ** 31, 123456789, 2 ** 32 - 2, 0], dtype=np.int64)
    high = np.array([0, 2 ** 30 - 1, 1, 0, 999, 2 ** 29, 7, 2 ** 30 - 2, 0, 2 ** 30 - 1], dtype=np.int64)
    assert jsonrows.packable(low, high)
    assert _read(jsonrows.rows_text(keys, low, high)) == list(zip(EDGE_KEYS, low.tolist(), high.tolist()))


def test_random_rows_read_back_exactly():
    rng = np.random.default_rng(12)
    keys = rng.integers(-2 ** 63, 2 ** 63 - 1, 5000, dtype=np.int64, endpoint=True)
    low = rng.integers(0, 2 ** 32, 5000, dtype=np.int64)
    high = rng.integers(0, 2 ** 30, 5000, dtype=np.int64)
    assert _read(jsonrows.rows_text(keys, low, high)) == list(zip(keys.tolist(), low.tolist(), high.tolist()))


def test_no_rows_is_an_empty_object():
    empty = np.zeros(0, dtype=np.int64)
    assert jsonrows.rows_text(empty, empty, empty) == "{}"
    assert _read("{}") == []


@pytest.mark.parametrize("low, high, ok", [([0, 2 ** 32 - 1], [0, 2 ** 30 - 1], True),
                                           ([2 ** 32], [0], False), ([-1], [0], False),
                                           ([0], [2 ** 30], False), ([0], [-1], False), ([], [], True)])
def test_packable_says_which_values_fit_a_payload(low, high, ok):
    assert jsonrows.packable(np.array(low, dtype=np.int64), np.array(high, dtype=np.int64)) is ok


def test_decimal_is_zero_padded():
    got = jsonrows.decimal(np.array([0, 7, 1234, 10 ** 19 - 1], dtype=np.uint64), 19)
    assert [bytes(r).decode() for r in got] == [f"{v:019d}" for v in (0, 7, 1234, 10 ** 19 - 1)]


@pytest.mark.parametrize("slice_rows", [7, 50])
def test_insert_rows_inserts_every_slice_in_order(monkeypatch, slice_rows):
    """Slices go in one statement each (on the second thread when there are several), all
    of them, in order."""
    monkeypatch.setattr(jsonrows, "SLICE", slice_rows)
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, a INTEGER, b INTEGER, seq INTEGER)")
    keys = np.arange(-25, 25, dtype=np.int64) * 3
    low, high = np.arange(50, dtype=np.int64) * 11, np.arange(50, dtype=np.int64) % 5
    conn.execute("BEGIN")
    jsonrows.insert_rows(conn, f"INSERT INTO t (k, a, b, seq) SELECT {jsonrows.KEY_SQL}, {jsonrows.LOW_SQL}, "
                               f"{jsonrows.HIGH_SQL}, (SELECT count(*) FROM t) FROM json_each(?)", keys, low, high)
    conn.execute("COMMIT")
    rows = conn.execute("SELECT k, a, b, seq FROM t ORDER BY k").fetchall()
    assert [r[:3] for r in rows] == list(zip(keys.tolist(), low.tolist(), high.tolist()))
    assert [r[3] for r in rows] == [slice_rows * (i // slice_rows) for i in range(50)]  # each saw the slices before


def test_insert_rows_stops_at_the_first_failing_slice():
    """A statement that fails (here a key already taken) raises in the caller; later slices are not run."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, a INTEGER, b INTEGER)")
    conn.execute("INSERT INTO t VALUES (3, 0, 0)")
    sql = (f"INSERT INTO t (k, a, b) SELECT {jsonrows.KEY_SQL}, {jsonrows.LOW_SQL}, {jsonrows.HIGH_SQL} "
           "FROM json_each(?)")
    one = np.array([1], dtype=np.int64)
    texts = [jsonrows.rows_text(np.array([k], dtype=np.int64), one, one) for k in (1, 3, 5)]
    with pytest.raises(sqlite3.IntegrityError):
        jsonrows.insert_texts(conn, sql, iter(texts))
    assert [r[0] for r in conn.execute("SELECT k FROM t ORDER BY k")] == [1, 3]


def test_insert_texts_raises_what_building_a_text_raises():
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, a INTEGER, b INTEGER)")
    sql = (f"INSERT INTO t (k, a, b) SELECT {jsonrows.KEY_SQL}, {jsonrows.LOW_SQL}, {jsonrows.HIGH_SQL} "
           "FROM json_each(?)")
    one = np.array([1], dtype=np.int64)

    def texts():
        yield jsonrows.rows_text(one, one, one)
        raise ValueError("no more")

    with pytest.raises(ValueError, match="no more"):
        jsonrows.insert_texts(conn, sql, texts())
    assert conn.execute("SELECT k, a, b FROM t").fetchall() == [(1, 1, 1)]


def test_each_text_answers_each_text_in_order():
    """The lookup form: the first row of the statement for each text, in the texts' order."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    keys = [np.array(k, dtype=np.int64) for k in ([5, -7], [], [2 ** 63 - 1], [1, 2, 3])]
    zero = [np.zeros(len(k), dtype=np.int64) for k in keys]
    got = jsonrows.each_text(conn, f"SELECT count(*), total({jsonrows.KEY_SQL}) FROM json_each(?)",
                             (jsonrows.rows_text(k, z, z) for k, z in zip(keys, zero)))
    assert got == [(2, -2.0), (0, 0.0), (1, float(2 ** 63 - 1)), (3, 6.0)]


def _json_each_ints(text: str) -> list[tuple[int, str]]:
    conn = sqlite3.connect(":memory:")
    try:
        return conn.execute("SELECT value, type FROM json_each(?) ORDER BY key", (text,)).fetchall()
    finally:
        conn.close()


def test_ints_text_reads_back_as_the_integers_json_dumps_writes():
    """The numpy-built array of a dedup key lookup (fixed-width fields, spaces before each
    number) reads back, by json.loads and by SQLite's json_each, as the same integers, each an
    integer, in order, as the array json.dumps writes: at the int64 ends and at every
    change of digit count, both signs, and over random keys."""
    import json
    bounds = [s * v for k in range(1, 19) for v in (10 ** k - 1, 10 ** k, 10 ** k + 1) for s in (1, -1)]
    rng = np.random.default_rng(5)
    for values in (EDGE_KEYS + bounds, rng.integers(-2 ** 63, 2 ** 63 - 1, size=5000, dtype=np.int64).tolist(), [7]):
        text = jsonrows.ints_text(np.array(values, dtype=np.int64))
        assert json.loads(text) == values
        assert _json_each_ints(text) == _json_each_ints(json.dumps(values)) == [(v, "integer") for v in values]
        assert len(text) == 2 + len(values) * (jsonrows.INT_WIDTH + 1) - 1  # fixed width
    assert jsonrows.ints_text(np.zeros(0, dtype=np.int64)) == "[]"
