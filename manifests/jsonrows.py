"""Many catalog rows into SQLite as one statement per slice, without a Python object per row.

`executemany` binds each row from Python ints (a tuple, three binds, a step and a reset per
row, with the GIL held between steps): for a first 10 TB version's 1.3 million dedup rows
that per-row work is most of the commit. Here a slice of rows is one JSON text built from
the arrays by numpy (fixed-width decimal fields) and inserted by one
`INSERT ... SELECT ... FROM json_each(?)`: one step for the whole slice, during which
SQLite runs without the GIL, so the next slice's text is built while it inserts.

A row is (key, payload): the key a signed 64-bit integer written as the object member's
name ("+" or "-" and 19 zero-padded digits, read back by CAST), the payload a JSON number
that packs two non-negative columns as `high << 32 | low` (low < 2**32, high < 2**30), plus
PAYLOAD_BIAS so that every payload has 19 digits (fixed width, and JSON allows no leading
zero). Numbers outside those ranges are not packed: `packable` says so first and the caller
binds those rows as before."""
from __future__ import annotations

import functools
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import numpy as np

LOW_BITS = 32
HIGH_LIMIT = 1 << 30  # high << 32 | low, plus PAYLOAD_BIAS, stays under 10**19 (and 2**63)
PAYLOAD_BIAS = 10 ** 18  # added to every value: each has 19 digits
SLICE = 65536  # rows per statement: bounds the text (~3 MB) and keeps building and inserting in step
# SQL expressions of the three values of a json_each row made by `rows_text`
KEY_SQL = "CAST(key AS INTEGER)"
LOW_SQL = f"((value - {PAYLOAD_BIAS}) & {(1 << LOW_BITS) - 1})"
HIGH_SQL = f"((value - {PAYLOAD_BIAS}) >> {LOW_BITS})"

_WORD = 4  # the text is built as 4-byte words (uint32): four digits come from one table lookup


@functools.cache
def _tables() -> np.ndarray:
    """The four ASCII digits of 0-9999, zero-padded, as one uint32 each (little-endian, so
    the first byte is the first digit, also on a big-endian host: the words stay "<u4"). A
    constant, made once (a commit of one map calls this)."""
    import numpy as np
    table = np.frombuffer("".join(f"{i:04d}" for i in range(10000)).encode("ascii"), dtype="<u4")
    table.flags.writeable = False
    return table


def _word(text: str) -> int:
    return int.from_bytes(text.encode("ascii"), "little")


def _groups(values: np.ndarray, count: int) -> list[np.ndarray]:
    """Non-negative integers below 10**(4*count) as `count` arrays of four-digit groups
    (0-9999, most significant first): 64-bit division only to split off eight digits at a time."""
    import numpy as np
    x = values.astype(np.uint64)
    out: list[np.ndarray] = []
    e8, e4 = np.uint64(100_000_000), np.uint32(10_000)
    while len(out) < count:
        q = x // e8
        low = (x - q * e8).astype(np.uint32)  # eight digits
        a = low // e4
        out[:0] = [a, low - a * e4]
        x = q
    return out[len(out) - count:]


def decimal(values: np.ndarray, digits: int) -> np.ndarray:
    """The zero-padded decimal digits (ASCII) of non-negative integers below 10**digits, as
    an (n, digits) uint8 array."""
    import numpy as np
    padded = _tables()
    count = (digits + 3) // 4
    words = np.stack([padded[g] for g in _groups(values, count)], axis=1) if len(values) else \
        np.zeros((0, count), dtype="<u4")
    return np.ascontiguousarray(words).view(np.uint8).reshape(len(values), 4 * count)[:, 4 * count - digits:]


def _sign_magnitude(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether each int64 is negative, and its magnitude as uint64 (no overflow at -2**63:
    -(v + 1) + 1)."""
    import numpy as np
    v = values.astype(np.int64, copy=False)
    neg = v < 0
    return neg, np.where(neg, -(v + 1), v).astype(np.uint64) + neg.astype(np.uint64)


def packable(low: np.ndarray, high: np.ndarray) -> bool:
    """True if every (low, high) pair fits one payload (0 <= low < 2**32, 0 <= high < 2**30)."""
    if not len(low):
        return True
    return (int(low.min()) >= 0 and int(low.max()) < (1 << LOW_BITS)
            and int(high.min()) >= 0 and int(high.max()) < HIGH_LIMIT)


def rows_text(keys: np.ndarray, low: np.ndarray, high: np.ndarray, padded: np.ndarray | None = None) -> str:
    """One JSON object whose members, in order, are the rows: name = the key, value =
    high << 32 | low plus PAYLOAD_BIAS (so every value has 19 digits, and none a leading
    zero). `packable(low, high)` must hold. json_each reads it back as (KEY_SQL, LOW_SQL,
    HIGH_SQL). Each row is whole 4-byte words, each group of four digits one table lookup:
    `   "` `sDDD` `DDDD` x4 `" : ` ` DDD` `DDDD` x4 `,   `, where s is the sign in place of
    the first of 20 key digits (always 0: |key| <= 2**63 < 10**19), and a space that of the
    first of 20 value digits."""
    import numpy as np
    n = len(keys)
    if n == 0:
        return "{}"
    padded = _tables() if padded is None else padded
    neg, mag = _sign_magnitude(keys)
    payload = (high.astype(np.uint64) << np.uint64(LOW_BITS)) | low.astype(np.uint64)
    payload += np.uint64(PAYLOAD_BIAS)
    words = np.empty((n, 13), dtype="<u4")  # little-endian on any host: byte 0 is the word's low byte
    words[:, 0] = _word('   "')
    for i, g in enumerate(_groups(mag, 5)):
        np.take(padded, g, out=words[:, 1 + i])
    sign = np.where(neg, np.uint32(ord("-")), np.uint32(ord("+")))
    words[:, 1] = (words[:, 1] & np.uint32(0xFFFFFF00)) | sign  # the first byte (a 0) becomes the sign
    words[:, 6] = _word('" : ')
    for i, g in enumerate(_groups(payload, 5)):
        np.take(padded, g, out=words[:, 7 + i])
    words[:, 7] = (words[:, 7] & np.uint32(0xFFFFFF00)) | np.uint32(ord(" "))  # the first byte (a 0) becomes a space
    words[:, 12] = _word(",   ")
    return "{" + words.tobytes()[:-_WORD].decode("ascii") + "}"


def insert_texts(conn: sqlite3.Connection, sql: str, texts: Iterable[str]) -> None:
    """Run `sql` (one `?`: a text from `rows_text`) once per text, in order, on a second
    thread: while SQLite inserts one slice (without the GIL) the caller's generator builds
    the next (see `each_text`)."""
    each_text(conn, sql, texts)


def each_text(conn: sqlite3.Connection, sql: str, texts: Iterable[str]) -> list[Any]:
    """The first row of `sql` (one `?`) run once per text, in order, on a second thread,
    while the caller's generator builds the next text. The connection is used by one thread
    at a time (the caller's thread does not touch it until this returns); the first error
    stops the run and is raised here."""
    out: list[Any] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog-json") as pool:
        pending: Future | None = None
        try:
            for text in texts:
                if pending is not None:
                    out.append(pending.result())
                    pending = None
                pending = pool.submit(lambda t: conn.execute(sql, (t,)).fetchone(), text)
        finally:
            if pending is not None:
                out.append(pending.result())
    return out


def insert_rows(conn: sqlite3.Connection, sql: str, keys: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
    """`insert_texts` over `keys`, `low`, `high` a SLICE at a time (`packable` must hold); one
    slice or less (a commit of a few maps) on the calling thread: nothing to overlap."""
    padded = _tables()
    if len(keys) <= SLICE:
        conn.execute(sql, (rows_text(keys, low, high, padded),))
        return
    insert_texts(conn, sql, (rows_text(keys[i:i + SLICE], low[i:i + SLICE], high[i:i + SLICE], padded)
                             for i in range(0, len(keys), SLICE)))


INT_WIDTH = 20  # characters of a number in `ints_text`: a sign and up to 19 digits (|int64| <= 2**63 < 10**19)


@functools.cache
def _powers() -> np.ndarray:
    """10, 100, ..., 10**19 as uint64: a number's digit count is one more than those it reaches."""
    import numpy as np
    return np.array([10 ** i for i in range(1, INT_WIDTH)], dtype=np.uint64)


def ints_text(values: np.ndarray) -> str:
    """A JSON array of int64 `values`, in order, built by numpy without a Python object per
    value: each number right-aligned in a field of INT_WIDTH characters (spaces before it,
    which JSON allows between tokens, and a "-" just before the first digit of a negative
    one), then a comma. What json_each reads as the same integers as `json.dumps(list)`
    (the text of a dedup key lookup: ~1.3 million keys of a fine-tune touching every shard)."""
    import numpy as np
    n = len(values)
    if n == 0:
        return "[]"
    neg, mag = _sign_magnitude(values)
    # digits of each number (1 for 0): where its field starts, the rest of it spaces before
    width = np.searchsorted(_powers(), mag, side="right") + 1
    start = INT_WIDTH - width  # >= 1: the field's first character is free for the sign
    chars = np.empty((n, INT_WIDTH + 1), dtype=np.uint8)
    chars[:, INT_WIDTH] = ord(",")
    digits = decimal(mag, INT_WIDTH)
    chars[:, :INT_WIDTH] = np.where(np.arange(INT_WIDTH, dtype=np.int64) < start[:, None], np.uint8(ord(" ")), digits)
    rows = np.nonzero(neg)[0]
    chars[rows, start[rows] - 1] = ord("-")
    return "[" + chars.tobytes()[:-1].decode("ascii") + "]"
