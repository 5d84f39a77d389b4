"""File maps in binary form (file map version 2): fixed-width little-endian records.

A 10 TB archive has ~1.3 million chunk refs, and its first commit reads each of them from a
worker's file map. As canonical JSON (file map version 1) that costs ~100 bytes and a few
microseconds of Python per ref; here a ref is one 49-byte record, so a whole map is read by
one `numpy.frombuffer` and checked with array operations, and the catalog takes its keys
and sizes as arrays. The map is still content-addressed (its name is the BLAKE3 of its
bytes) and has exactly one encoding per chunk list, so an unchanged file keeps its map.

Layout (docs/FORMAT.md, "Version 2: file maps"): a 24-byte header (MAGIC, u32 version 2,
u32 codec count K, u64 chunk count N), K codec names of 16 bytes (ASCII, NUL-padded, in
order of first use, each used), then N records: 32-byte BLAKE3 of the chunk, u64 length,
u64 stored size, u8 index into the codec names. Offsets are implied: chunks are contiguous
from 0. No archiver import: the reader's limits come from manifests.model."""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

# numpy is imported inside the functions that use it: a command's start-up imports this module,
# and numpy's import (with its BLAS threads) belongs after the CLI has set OPENBLAS_NUM_THREADS
# and off the serial head of an archive (bench/RESULTS.md, branch hotpath)
if TYPE_CHECKING:
    import numpy as np

from manifests.errors import ManifestError

MAGIC = b"ARCHFMAP"  # never the first bytes of a JSON map, which starts with '{'
VERSION = 2
HEADER = struct.Struct("<8sIIQ")  # magic, version, codec count, chunk count
CODEC_WIDTH = 16
MAX_CODECS = 255
RECORD_FIELDS = [("hash", "V32"), ("length", "<u8"), ("stored", "<u8"), ("codec", "u1")]  # 49 bytes, packed
RECORD_SIZE = 49


def _record() -> np.dtype:
    """The record's numpy dtype (RECORD), made where numpy is first needed."""
    import numpy as np
    return np.dtype(RECORD_FIELDS)


def __getattr__(name: str) -> object:
    """RECORD, the record's numpy dtype, for callers that name it (PEP 562: made on first use)."""
    if name == "RECORD":
        return _record()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CODEC_NAME = re.compile(rb"[A-Za-z0-9_.+-]{1,16}\Z")


@dataclass(frozen=True, eq=False)
class MapRecords:
    """(hash, stored size, codec) of each chunk of one file map, as arrays: what the catalog
    records of a map (keys and sizes in bulk) without a Python object per chunk. Iterating
    yields (hex hash, stored size, codec) triples, as the JSON reader's records."""

    hashes: bytes  # N x 32 raw BLAKE3 digests, in map order
    stored: np.ndarray  # uint64 (N,)
    codec_ids: np.ndarray  # uint8 (N,), indexes into codecs
    codecs: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.stored)

    def __iter__(self) -> Iterator[tuple[str, int, str]]:
        hx = self.hashes.hex()
        names = self.codecs
        for i, (st, c) in enumerate(zip(self.stored.tolist(), self.codec_ids.tolist())):
            yield hx[64 * i:64 * i + 64], st, names[c]

    def hex_hashes(self) -> list[str]:
        hx = self.hashes.hex()
        return [hx[i:i + 64] for i in range(0, len(hx), 64)]

    def prefixes(self) -> np.ndarray:
        """The first 8 bytes of each hash as big-endian uint64 (so numeric order is hash order)."""
        import numpy as np
        return np.frombuffer(self.hashes, dtype=">u8").reshape(-1, 4)[:, 0] if self.hashes else np.zeros(0, ">u8")

    def stored_total(self) -> int:
        import numpy as np
        return int(self.stored.sum(dtype=np.uint64))

    @classmethod
    def from_triples(cls, triples: list[tuple[str, int, str]]) -> "MapRecords":
        """From (hex hash, stored size, codec) triples (a JSON map's records)."""
        import numpy as np
        names: dict[str, int] = {}
        ids = [names.setdefault(c, len(names)) for _, _, c in triples]
        if len(names) > MAX_CODECS:  # a JSON map may name any codecs: keep them as they are
            raise ValueError("too many codec names for MapRecords")
        return cls(bytes.fromhex("".join(h for h, _, _ in triples)),
                   np.array([s for _, s, _ in triples], dtype=np.uint64),
                   np.array(ids, dtype=np.uint8), tuple(names))


def encodable(codecs: set[str]) -> bool:
    """Whether chunks with these codec names can be written in binary form."""
    return len(codecs) <= MAX_CODECS and all(c.isascii() and _CODEC_NAME.match(c.encode()) for c in codecs)


def encode(lengths: list[int], hashes: list[str], stored: list[int], codecs: list[str]) -> bytes:
    """The binary file map of one chunk list (the caller checks `encodable` first)."""
    import numpy as np
    table: dict[str, int] = {}
    ids = [table.setdefault(c, len(table)) for c in codecs]
    rec = np.zeros(len(hashes), dtype=_record())
    raw = np.frombuffer(bytes.fromhex("".join(hashes)), dtype="V32")
    rec["hash"] = raw
    rec["length"] = lengths
    rec["stored"] = stored
    rec["codec"] = ids
    names = b"".join(n.encode("ascii").ljust(CODEC_WIDTH, b"\0") for n in table)
    return HEADER.pack(MAGIC, VERSION, len(table), len(hashes)) + names + rec.tobytes()


def is_binary(data: bytes) -> bool:
    return data[:len(MAGIC)] == MAGIC


def decode(data: bytes, count: int, size: int, max_length: int, max_overhead: int, what: str
           ) -> tuple[np.ndarray, MapRecords]:
    """(lengths, records) of a binary map whose hash the caller has checked, refused
    (ManifestError naming `what`) unless it is the one encoding of `count` chunks that are
    contiguous from 0, 1 to `max_length` bytes long, at most `max_overhead` bytes larger
    stored, and add up to `size`."""
    import numpy as np
    def need(cond: bool, why: str) -> None:
        if not cond:
            raise ManifestError(f"malformed manifest: {what} {why}")

    need(len(data) >= HEADER.size, "is shorter than its header")
    magic, version, k, n = HEADER.unpack_from(data)
    need(magic == MAGIC and version == VERSION, f"has an unknown header (version {version})")
    need(n == count, f"holds {n} chunks, not the {count} its entry says")
    need(1 <= k <= MAX_CODECS or (k == 0 and n == 0), f"names {k} codecs")
    body = HEADER.size + k * CODEC_WIDTH
    need(len(data) == body + n * RECORD_SIZE, f"is {len(data)} bytes, not the {body + n * RECORD_SIZE} "
                                                  f"of {n} records")
    names = []
    for i in range(k):
        raw = data[HEADER.size + i * CODEC_WIDTH:HEADER.size + (i + 1) * CODEC_WIDTH]
        name = raw.rstrip(b"\0")
        need(bool(_CODEC_NAME.match(name)) and raw == name.ljust(CODEC_WIDTH, b"\0"), f"codec name {i}")
        names.append(name.decode("ascii"))
    need(len(set(names)) == k, "names a codec twice")
    rec = np.frombuffer(data, dtype=_record(), count=n, offset=body)
    lengths, stored, ids = rec["length"], rec["stored"], rec["codec"]
    need(bool(((lengths >= 1) & (lengths <= max_length)).all()), "has a chunk length out of bounds")
    need(bool((stored <= lengths + max_overhead).all()), "has a stored size larger than its chunk's object can be")
    need(int(lengths.sum(dtype=np.uint64)) == size, "chunks do not add up to its file's size")
    # canonical: every index names a codec, and the names are in order of first use
    if n:  # a pass per codec name (a map has a handful): cheaper than sorting the indexes
        counts = np.bincount(ids, minlength=k)
        first = [int(np.argmax(ids == c)) for c in range(k)] if len(counts) == k else []
        need(len(counts) == k and bool(counts.all()) and first == sorted(first),
             "codec names are not those used, in order of first use")
    return lengths, MapRecords(rec["hash"].tobytes(), stored.astype(np.uint64), ids.copy(), tuple(names))
