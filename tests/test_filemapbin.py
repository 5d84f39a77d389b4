"""Binary file maps (manifests.filemapbin, file map version 2): what archive writes for a file
over the threshold; read by one array view, checked as strictly as the JSON maps (one
encoding per chunk list), and JSON maps written before it still read the same."""
from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from manifests import filemapbin, model
from manifests.errors import ManifestError
from manifests.filemapbin import HEADER, MAGIC, MapRecords
from manifests.model import ChunkRef, Entry, manifest_id, parse_filemap, with_filemap

N = model.FILEMAP_THRESHOLD + 3


def big_entry(codecs: tuple[str, ...] = ("bg2", "zstd", "bg2", "raw")) -> Entry:
    refs = tuple(ChunkRef(i * 100, 100, manifest_id(f"c{i}".encode()), 90 + i % 7, codecs[i % len(codecs)])
                 for i in range(N - 1))
    refs += (ChunkRef((N - 1) * 100, 37, manifest_id(b"last"), 40, "zstd"),)  # a short last chunk
    return Entry(path="big.bin", type="file", mode=0o644, size=100 * (N - 1) + 37, mtime_ns=1, blake3="a" * 64,
                 sha256="b" * 64, chunks=refs)


def slim(e: Entry, data: bytes) -> Entry:
    return dataclasses.replace(e, chunks=(), filemap=manifest_id(data), chunk_count=len(e.chunks))


def test_new_maps_are_binary_and_read_back_exactly() -> None:
    e = big_entry()
    e2, data = with_filemap(e)
    assert data.startswith(MAGIC) and len(data) == HEADER.size + 3 * 16 + N * 49  # 49 bytes a chunk
    assert len(data) < len(model.filemap_json_bytes(e.chunks)) * 0.6
    pe = dataclasses.replace(e2, chunks=())
    assert parse_filemap(data, pe) == e.chunks
    recs = model.filemap_records(data, pe)
    assert isinstance(recs, MapRecords) and len(recs) == N
    assert list(recs) == [(c.hash, c.stored_size, c.codec) for c in e.chunks]
    assert recs.hex_hashes() == [c.hash for c in e.chunks]
    assert recs.stored_total() == sum(c.stored_size for c in e.chunks)
    assert recs.prefixes().tolist() == [int(c.hash[:16], 16) for c in e.chunks]
    assert with_filemap(e)[1] == data  # one encoding: the same chunk list gives the same map


def test_json_maps_of_earlier_archivers_read_the_same() -> None:
    e = big_entry()
    _, binary = with_filemap(e)
    js = model.filemap_json_bytes(e.chunks)
    assert js.startswith(b'{"chunks":[')
    assert parse_filemap(js, slim(e, js)) == parse_filemap(binary, slim(e, binary)) == e.chunks
    assert list(model.filemap_records(js, slim(e, js))) == list(model.filemap_records(binary, slim(e, binary)))
    # a resolved entry names its map by either form's hash: the commit finds the bytes that match
    assert model.filemap_bytes_for(dataclasses.replace(e, filemap=manifest_id(js), chunk_count=N)) == js
    assert model.filemap_bytes_for(dataclasses.replace(e, filemap=manifest_id(binary), chunk_count=N)) == binary
    assert model.filemap_bytes_for(dataclasses.replace(e, filemap="0" * 64, chunk_count=N)) is None


@pytest.mark.parametrize("codec", ["bg 2", "x" * 17, "\u00e9"])
def test_codec_names_the_table_cannot_hold_keep_the_json_form(codec: str) -> None:
    e = big_entry(("bg2", codec))
    _, data = with_filemap(e)
    assert data == model.filemap_json_bytes(e.chunks)
    assert parse_filemap(data, slim(e, data)) == e.chunks


def _records(data: bytes) -> tuple[bytes, np.ndarray]:
    _, _, k, n = HEADER.unpack_from(data)
    body = HEADER.size + k * 16
    return data[:body], np.frombuffer(data, dtype=filemapbin.RECORD, count=n, offset=body).copy()


def _edit_record(data: bytes, field: str, i: int, value: object) -> bytes:
    head, rec = _records(data)
    rec[field][i] = value
    return head + rec.tobytes()


def _swapped_codecs(rec: np.ndarray) -> np.ndarray:
    out = rec.copy()
    out["codec"] = np.choose(np.minimum(rec["codec"], 2), [1, 0, rec["codec"]])
    return out


def _variants(data: bytes) -> dict[str, bytes]:
    head, rec = _records(data)
    k = HEADER.unpack_from(data)[2]
    table = head[HEADER.size:]
    return {
        "version 1 header": data[:8] + struct.pack("<I", 1) + data[12:],
        "bad magic": b"ARCHFMAX" + data[8:],
        "truncated": data[:-1],
        "trailing byte": data + b"\0",
        "no records": head,
        "count in header": data[:16] + struct.pack("<Q", N + 1) + data[24:],
        "zero length": _edit_record(data, "length", 5, 0),
        "length over the cap": _edit_record(data, "length", 5, model.MAX_CHUNK_LENGTH + 1),
        "stored too large": _edit_record(data, "stored", 5, 100 + model.MAX_CHUNK_OVERHEAD + 1),
        "sizes do not add up": _edit_record(data, "length", 0, 99),
        "codec index out of range": _edit_record(data, "codec", 5, k),
        # the same chunk list with its first two codec names swapped (and the indexes with them)
        "codec table out of first-use order": head[:HEADER.size] + table[16:32] + table[:16] + table[32:]
        + _swapped_codecs(rec).tobytes(),
        "unused codec name": data[:12] + struct.pack("<I", k + 1) + data[16:HEADER.size] + table
        + b"lz4".ljust(16, b"\0") + rec.tobytes(),
        "codec named twice": data[:12] + struct.pack("<I", k + 1) + data[16:HEADER.size] + table
        + table[:16] + rec.tobytes(),
        "garbage after a codec name": head[:HEADER.size] + b"bg2\0\0x".ljust(16, b"\0") + table[16:] + rec.tobytes(),
        "empty codec name": head[:HEADER.size] + b"\0" * 16 + table[16:] + rec.tobytes(),
    }


@pytest.mark.parametrize("how", list(_variants(with_filemap(big_entry())[1])))
def test_a_binary_map_that_is_not_the_one_encoding_of_its_entry_is_refused(how: str) -> None:
    """Each variant is named by its own hash (so only the structure is wrong) and refused by
    both readers, in one line naming the map and the file."""
    e = big_entry()
    data = _variants(with_filemap(e)[1])[how]
    pe = slim(e, data)
    for read in (parse_filemap, model.filemap_records):
        with pytest.raises(ManifestError) as err:
            read(data, pe)
        assert "big.bin" in str(err.value) and "\n" not in str(err.value)


def test_a_tampered_or_wrongly_counted_binary_map_is_refused() -> None:
    e = big_entry()
    _, data = with_filemap(e)
    pe = slim(e, data)
    flipped = data[:-60] + bytes([data[-60] ^ 1]) + data[-59:]
    with pytest.raises(ManifestError, match="does not match its hash"):
        parse_filemap(flipped, pe)
    with pytest.raises(ManifestError, match=f"holds {N} chunks, not the {N + 1}"):
        model.filemap_records(data, dataclasses.replace(pe, chunk_count=N + 1))
    with pytest.raises(ManifestError, match="do not add up"):
        parse_filemap(data, dataclasses.replace(pe, size=pe.size + 1))
    with pytest.raises(ManifestError, match="more than the"):
        parse_filemap(data + b"\0" * model.MAX_FILEMAP_BYTES, pe)
