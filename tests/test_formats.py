"""Weights-format detection: correct regions for good files, None (never an exception,
never an unbounded read) for garbage, truncated and hostile files."""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import struct
import zipfile
from pathlib import Path

import pytest

from archiver.formats import MAX_HEADER_BYTES, Region, detect_regions, gguf, safetensors, torchzip
from archiver.formats.torchzip import storage_widths
from tests.fixtures import (
    make_gguf,
    make_safetensors,
    make_torch_zip,
    random_tensor_bytes,
    torch_state_dict_pickle,
    transformer_tensors,
)

MIXED = {
    "a.weight": ("F32", [16, 8], random_tensor_bytes("F32", 128, 1)),
    "b.weight": ("BF16", [33], random_tensor_bytes("BF16", 33, 2)),
    "c.ids": ("I64", [2, 5], random_tensor_bytes("I64", 10, 3)),
    "d.weight": ("F16", [300], random_tensor_bytes("F16", 300, 4)),
    "e.weight": ("F64", [7], random_tensor_bytes("F64", 7, 5)),
    "f.mask": ("U8", [9], random_tensor_bytes("U8", 9, 6)),
}
WIDTHS = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 0, "U8": 0, "I8": 0}


class CountingFile(io.RawIOBase):
    """File wrapper recording how many bytes detection actually read."""

    def __init__(self, path: Path):
        self._f = open(path, "rb")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.bytes_read += len(data)
        return data

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self._f.readinto(b)
        self.bytes_read += n or 0
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def detect(path: Path) -> tuple[str, list[Region]] | None:
    with open(path, "rb") as f:
        return detect_regions(f, os.path.getsize(path))


def detect_counting(path: Path) -> tuple[tuple[str, list[Region]] | None, int]:
    cf = CountingFile(path)
    try:
        return detect_regions(cf, os.path.getsize(path)), cf.bytes_read
    finally:
        cf.close()


def assert_regions_hold_tensors(path: Path, regions: list[Region], tensors) -> None:
    data = path.read_bytes()
    assert [data[r.offset : r.end] for r in regions] == [t[2] for t in tensors.values()]
    assert [r.width for r in regions] == [WIDTHS[t[0]] for t in tensors.values()]


# ---------------------------------------------------------------- safetensors


def test_safetensors_regions(tmp_path: Path) -> None:
    p = make_safetensors(tmp_path / "m.safetensors", MIXED, metadata={"format": "pt"})
    fmt, regions = detect(p)
    assert fmt == "safetensors"
    (n,) = struct.unpack("<Q", p.read_bytes()[:8])
    assert regions[0].offset == 8 + n
    assert_regions_hold_tensors(p, regions, MIXED)
    assert safetensors.regions(open(p, "rb"), p.stat().st_size) == regions


def test_safetensors_fp8_and_unknown_dtypes_have_width_0(tmp_path: Path) -> None:
    t = {"x": ("F8_E4M3", [4], b"\1\2\3\4"), "y": ("F4_WHATEVER", [8], b"\0" * 4), "z": ("I8", [2], b"\0\1")}
    _fmt, regions = detect(make_safetensors(tmp_path / "m", t))
    assert [(r.length, r.width) for r in regions] == [(4, 0), (4, 0), (2, 0)]


def _raw_safetensors(path: Path, header: object, data: bytes, pad: bool = True) -> Path:
    hb = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)
    return path


@pytest.mark.parametrize(
    "header",
    [
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},  # overlap
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},  # beyond end of file
        {"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}},  # reversed
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}},  # negative
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}},  # not ints
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [False, True]}},  # bools
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},  # shape mismatch
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}},  # not a pair
        {"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}},  # shape not list
        {"a": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}},  # dtype not str
        {"a": [0, 8]},  # entry not an object
        [1, 2, 3],  # header not an object
        {"a": {"dtype": "F32", "shape": [2**70], "data_offsets": [0, 8]}},  # absurd shape
    ],
)
def test_safetensors_inconsistent_headers_are_rejected(tmp_path: Path, header: object) -> None:
    p = _raw_safetensors(tmp_path / "bad", header, b"\0" * 12)
    assert detect(p) is None


def test_safetensors_garbage_headers(tmp_path: Path) -> None:
    cases = [
        b"",
        b"\x05",
        struct.pack("<Q", 2**63) + b"{}" + b"\0" * 100,  # absurd header length
        struct.pack("<Q", 1000) + b"{}",  # header longer than the file
        struct.pack("<Q", 6) + b"[1,2]\0",  # not an object, not '{'
        struct.pack("<Q", 8) + b"{not js}",  # not JSON
        struct.pack("<Q", 8) + b"{\"a\":\xff}",  # not UTF-8
        struct.pack("<Q", 200_006) + b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # deep nesting
    ]
    for i, raw in enumerate(cases):
        p = tmp_path / f"g{i}"
        p.write_bytes(raw)
        assert detect(p) is None, raw[:20]


def test_safetensors_header_over_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    p = tmp_path / "huge"
    n = MAX_HEADER_BYTES + 8
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", n) + b'{"a":')
        f.truncate(n + 4096)  # sparse
    result, nread = detect_counting(p)
    assert result is None
    assert nread <= 64


def test_safetensors_header_length_2_63_reads_little(tmp_path: Path) -> None:
    p = tmp_path / "hostile"
    p.write_bytes(struct.pack("<Q", 2**63) + b"{" + b" " * 4096)
    result, nread = detect_counting(p)
    assert result is None and nread <= 64


def test_safetensors_empty_tensors_are_skipped(tmp_path: Path) -> None:
    t = {"e": ("F32", [0], b""), "x": ("F32", [2], b"\0" * 8), "e2": ("F32", [0, 4], b"")}
    _fmt, regions = detect(make_safetensors(tmp_path / "m", t))
    assert [(r.length, r.width) for r in regions] == [(8, 4)]


# ---------------------------------------------------------------- GGUF

GGUF_TENSORS = {
    "tok_embd.weight": ("F32", [8, 16], random_tensor_bytes("F32", 128, 10)),
    "blk.0.attn_q.weight": ("F16", [33], random_tensor_bytes("F16", 33, 11)),
    "blk.0.ffn.weight": ("Q8_0", [64, 2], random_tensor_bytes("U8", 4 * 34, 12)),  # 4 blocks of 34
    "blk.0.norm": ("BF16", [3], random_tensor_bytes("BF16", 3, 13)),
    "blk.0.f64": ("F64", [5], random_tensor_bytes("F64", 5, 14)),
    "blk.0.ids": ("I32", [6], random_tensor_bytes("I32", 6, 15)),
}
GGUF_KV = {
    "general.architecture": "llama",
    "general.name": "tiny",
    "llama.context_length": 4096,
    "llama.rope.freq_base": 10000.0,
    "tokenizer.ggml.tokens": [f"tok{i}" for i in range(500)],
    "tokenizer.ggml.scores": [float(i) for i in range(500)],
    "tokenizer.ggml.token_type": [1] * 500,
    "tokenizer.ggml.add_bos_token": True,
    "nested": (9, [["a", "b"], ["c"]]),
    "big": (10, 2**40),
}


def test_gguf_regions(tmp_path: Path) -> None:
    p = make_gguf(tmp_path / "m.gguf", GGUF_TENSORS, kv=GGUF_KV)
    fmt, regions = detect(p)
    assert fmt == "gguf"
    data = p.read_bytes()
    assert [data[r.offset : r.end] for r in regions] == [t[2] for t in GGUF_TENSORS.values()]
    assert [r.width for r in regions] == [4, 2, 0, 2, 8, 0]
    assert all(r.offset % 32 == 0 for r in regions)
    assert gguf.regions(open(p, "rb"), len(data)) == regions


def test_gguf_alignment_kv_is_honoured(tmp_path: Path) -> None:
    p = make_gguf(tmp_path / "m.gguf", GGUF_TENSORS, kv={"general.alignment": 256, **GGUF_KV})
    _fmt, regions = detect(p)
    data = p.read_bytes()
    assert all(r.offset % 256 == 0 for r in regions)
    assert [data[r.offset : r.end] for r in regions] == [t[2] for t in GGUF_TENSORS.values()]


def test_gguf_version_2_and_unknown_type(tmp_path: Path) -> None:
    t = {"a": (99, [10], b"\7" * 10), "b": ("F32", [2], b"\1" * 8)}
    _fmt, regions = detect(make_gguf(tmp_path / "m", t, version=2))
    # unknown type: runs to the next tensor's offset (including alignment padding)
    assert [(r.length, r.width) for r in regions] == [(32, 0), (8, 4)]


def _gguf_head(version: int = 3, n_tensors: int = 0, n_kv: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def test_gguf_hostile_headers(tmp_path: Path) -> None:
    s = lambda b: struct.pack("<Q", len(b)) + b  # noqa: E731
    cases = {
        "v1": _gguf_head(1),
        "v4": _gguf_head(4),
        "big_endian": b"GGUF" + struct.pack(">IQQ", 3, 0, 0),
        "huge_tensor_count": _gguf_head(3, 2**60, 0),
        "huge_kv_count": _gguf_head(3, 0, 2**62),
        "huge_key": _gguf_head(3, 0, 1) + struct.pack("<Q", 2**40) + b"k",
        "huge_string_value": _gguf_head(3, 0, 1) + s(b"k") + struct.pack("<IQ", 8, 2**50),
        "huge_array": _gguf_head(3, 0, 1) + s(b"k") + struct.pack("<IIQ", 9, 8, 2**62),
        "huge_scalar_array": _gguf_head(3, 0, 1) + s(b"k") + struct.pack("<IIQ", 9, 10, 2**61),
        "bad_value_type": _gguf_head(3, 0, 1) + s(b"k") + struct.pack("<I", 77),
        "deep_arrays": _gguf_head(3, 0, 1) + s(b"k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 50,
        "zero_alignment": _gguf_head(3, 0, 1) + s(b"general.alignment") + struct.pack("<II", 4, 0),
        "too_many_dims": _gguf_head(3, 1, 0) + s(b"t") + struct.pack("<I", 1000),
        "tensor_beyond_eof": _gguf_head(3, 1, 0) + s(b"t") + struct.pack("<IQIQ", 1, 1000, 0, 0),
        "huge_dims": _gguf_head(3, 1, 0) + s(b"t") + struct.pack("<I4QIQ", 4, *[2**63] * 4, 0, 0),
        "overlap": _gguf_head(3, 2, 0)
        + s(b"a") + struct.pack("<IQIQ", 1, 16, 0, 0)
        + s(b"b") + struct.pack("<IQIQ", 1, 16, 0, 32),
    }
    for name, raw in cases.items():
        p = tmp_path / name
        p.write_bytes(raw + b"\0" * 256)
        result, nread = detect_counting(p)
        assert result is None, name
        assert nread < 1 << 20, name


# ---------------------------------------------------------------- torch zip


def test_torchzip_regions_and_widths(tmp_path: Path) -> None:
    p = make_torch_zip(tmp_path / "pytorch_model.bin", MIXED)
    fmt, regions = detect(p)
    assert fmt == "torchzip"
    assert_regions_hold_tensors(p, regions, MIXED)
    assert all(r.offset % 64 == 0 for r in regions)  # torch-style alignment kept
    assert torchzip.regions(open(p, "rb"), p.stat().st_size) == regions


def test_torchzip_pickle_is_well_formed_and_scanned() -> None:
    pkl = torch_state_dict_pickle(MIXED)

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):  # never import anything real
            if (module, name) == ("collections", "OrderedDict"):
                return dict
            return lambda *a: (module, name, a)

        def persistent_load(self, pid):
            return pid

    obj = Restricted(io.BytesIO(pkl)).load()
    assert list(obj) == list(MIXED)
    assert obj["a.weight"][2][0][2] == "0" and obj["a.weight"][2][2] == (16, 8)
    assert storage_widths(pkl) == {"0": 4, "1": 2, "2": 0, "3": 2, "4": 8, "5": 0}


def test_storage_widths_protocol_4_stack_global() -> None:
    # ('storage', torch.BFloat16Storage, 'k7', 'cpu', 3) via STACK_GLOBAL and MEMOIZE
    def u(s: str) -> bytes:
        return b"\x8c" + bytes([len(s)]) + s.encode() + b"\x94"

    pkl = (
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00"
        + b"(" + u("storage") + u("torch") + u("BFloat16Storage") + b"\x93\x94"
        + u("k7") + u("cpu") + b"K\x03t\x94Q"
        + b"(" + b"h\x00" + b"h\x03" + u("k8") + b"h\x05" + b"K\x01tQ"  # memo reuse
        + b"\x86."
    )
    assert storage_widths(pkl) == {"k7": 2, "k8": 2}


def test_storage_widths_garbage_never_raises() -> None:
    rng = random.Random(5)
    good = torch_state_dict_pickle(MIXED)
    for _ in range(300):
        b = bytearray(good)
        for _ in range(rng.randint(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        assert isinstance(storage_widths(bytes(b[: rng.randrange(len(b) + 1)])), dict)
    assert storage_widths(b"") == {}
    assert storage_widths(b"\x80\x02Q.") == {}  # BINPERSID on an empty stack


def test_zip_without_data_pkl_is_not_a_checkpoint(tmp_path: Path) -> None:
    p = tmp_path / "pkg.whl"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("pkg/model/data/0", b"\0" * 5000)
        zf.writestr("pkg/__init__.py", b"")
    assert detect(p) is None


def test_compressed_storage_members_are_not_regions(tmp_path: Path) -> None:
    t = {"a": ("F32", [256], b"\0" * 1024), "b": ("F32", [4], random_tensor_bytes("F32", 4, 1))}
    p = tmp_path / "m.pt"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("m/data.pkl", torch_state_dict_pickle(t))
        zf.writestr("m/data/0", t["a"][2], compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("m/data/1", t["b"][2], compress_type=zipfile.ZIP_STORED)
    _fmt, regions = detect(p)
    data = p.read_bytes()
    assert len(regions) == 1 and data[regions[0].offset : regions[0].end] == t["b"][2]
    assert regions[0].width == 4


def test_zip_hostile_central_directory_reads_little(tmp_path: Path) -> None:
    p = tmp_path / "hostile.bin"
    size = 300 * 1024 * 1024
    eocd = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, 200 * 1024 * 1024, 0, 0)
    with open(p, "wb") as f:
        f.write(b"PK\x03\x04" + b"\0" * 26)
        f.truncate(size - len(eocd))
        f.seek(size - len(eocd))
        f.write(eocd)
    result, nread = detect_counting(p)
    assert result is None
    assert nread < 1 << 20


# ---------------------------------------------------------------- all formats


def _fixture_files(tmp_path: Path) -> dict[str, Path]:
    small = transformer_tensors(n_layers=1, hidden=8, vocab=16, seed=3)
    return {
        "safetensors": make_safetensors(tmp_path / "f.safetensors", small, {"k": "v"}),
        "gguf": make_gguf(tmp_path / "f.gguf", small, kv={"general.name": "x", "toks": ["a", "b"]}),
        "torchzip": make_torch_zip(tmp_path / "f.bin", small),
    }


def _valid_or_none(result: tuple[str, list[Region]] | None, size: int) -> bool:
    if result is None:
        return True
    _fmt, regions = result
    prev = 0
    for r in regions:
        if r.offset < prev or r.length <= 0 or r.end > size or r.width not in (0, 2, 4, 8):
            return False
        prev = r.end
    return True


def test_truncated_files_never_raise(tmp_path: Path) -> None:
    for fmt, p in _fixture_files(tmp_path).items():
        data = p.read_bytes()
        assert detect(p)[0] == fmt
        cut = tmp_path / "cut"
        for n in list(range(0, 200)) + list(range(200, len(data), 7)):
            cut.write_bytes(data[:n])
            res = detect(cut)
            assert _valid_or_none(res, n), (fmt, n)


def test_fuzzed_headers_never_raise(tmp_path: Path) -> None:
    rng = random.Random(1234)
    for fmt, p in _fixture_files(tmp_path).items():
        data = p.read_bytes()
        bad = tmp_path / "bad"
        for _ in range(300):
            b = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(min(len(b), 2048)) if rng.random() < 0.8 else rng.randrange(len(b))
                b[i] = rng.randrange(256)
            bad.write_bytes(bytes(b))
            assert _valid_or_none(detect(bad), len(b)), fmt


def test_random_bytes_and_other_files_are_not_weights(tmp_path: Path) -> None:
    rng = random.Random(7)
    samples = [rng.randbytes(n) for n in (0, 1, 7, 8, 9, 100, 10_000)]
    samples += [b'{"vocab": {"a": 1}}', b"GGUF", b"PK\x03\x04" + rng.randbytes(100)]
    for i, raw in enumerate(samples):
        p = tmp_path / f"r{i}"
        p.write_bytes(raw)
        assert detect(p) is None


def test_detect_with_size_smaller_than_file_rejects_out_of_range(tmp_path: Path) -> None:
    p = make_safetensors(tmp_path / "m", MIXED)
    with open(p, "rb") as f:
        assert detect_regions(f, p.stat().st_size - 1) is None
