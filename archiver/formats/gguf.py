"""GGUF (llama.cpp), versions 2 and 3, little-endian.

Layout: magic, u32 version, u64 tensor_count, u64 kv_count, kv pairs, tensor infos,
padding to `general.alignment` (default 32), tensor data. Tensor offsets are relative
to the data start, so a metadata edit shifts every tensor by a multiple of the alignment
and the tensor bytes themselves stay identical."""
from __future__ import annotations

import struct
from typing import BinaryIO

from archiver.formats import MAX_HEADER_BYTES, BoundedReader, Malformed, Region, finalize, tolerant

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 8  # ggml uses 4; leave headroom, reject nonsense
MAX_ARRAY_DEPTH = 4

# ggml type id -> (elements per block, bytes per block)
TYPE_SIZE: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
}
# Byte-grouping width: plain floats only; quantised blocks and ints get 0.
WIDTH = {0: 4, 1: 2, 30: 2, 28: 8}

# kv value type -> fixed size in bytes (8 = string and 9 = array are variable)
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


class _Cursor:
    """Sequential little-endian reader over the file head, buffered in growing blocks
    so that parsing a 100k-entry vocabulary array does not mean 100k tiny reads."""

    def __init__(self, f: BoundedReader, size: int):
        self.f = f
        self.limit = min(size, MAX_HEADER_BYTES)
        self.buf = bytearray()
        self.pos = 0

    def _need(self, n: int) -> None:
        end = self.pos + n
        if n < 0 or end > self.limit:
            raise Malformed("GGUF header runs past its limit")
        if end > len(self.buf):
            want = min(self.limit, max(end, 2 * len(self.buf), 1 << 16))
            self.f.seek(len(self.buf))
            more = self.f.read(want - len(self.buf))
            self.buf += more
            if end > len(self.buf):
                raise Malformed("GGUF header truncated")

    def take(self, fmt: str, n: int) -> tuple:
        self._need(n)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self) -> int:
        return self.take("<I", 4)[0]

    def u64(self) -> int:
        return self.take("<Q", 8)[0]

    def skip(self, n: int) -> None:
        self._need(n)
        self.pos += n

    def string(self) -> bytes:
        n = self.u64()
        self._need(n)
        s = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return s

    def skip_string(self) -> None:
        self.skip(self.u64())


def _skip_value(c: _Cursor, vtype: int, depth: int = 0) -> None:
    if vtype in _SCALAR_SIZE:
        c.skip(_SCALAR_SIZE[vtype])
    elif vtype == _STRING:
        c.skip_string()
    elif vtype == _ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise Malformed("GGUF arrays nested too deep")
        etype, n = c.u32(), c.u64()
        if etype in _SCALAR_SIZE:
            c.skip(n * _SCALAR_SIZE[etype])
        else:
            min_item = 8 if etype == _STRING else 12  # u64 length / u32 type + u64 count
            if n * min_item > c.limit - c.pos:
                raise Malformed("GGUF array longer than the header can hold")
            for _ in range(n):
                _skip_value(c, etype, depth + 1)
    else:
        raise Malformed(f"unknown GGUF value type {vtype}")


def _parse(f: BinaryIO, size: int) -> list[Region]:
    c = _Cursor(BoundedReader(f), size)
    if bytes(c.take("4s", 4)[0]) != MAGIC:
        raise Malformed("not GGUF")
    version = c.u32()
    if version not in (2, 3):
        raise Malformed(f"unsupported GGUF version {version}")
    n_tensors, n_kv = c.u64(), c.u64()
    # Each tensor info takes >= 24 bytes, each kv >= 13: bound counts by the header budget.
    if n_tensors * 24 > c.limit or n_kv * 13 > c.limit:
        raise Malformed("absurd GGUF counts")
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = c.string()
        vtype = c.u32()
        if key == b"general.alignment" and vtype == _UINT32:
            alignment = c.u32()
            if not 0 < alignment <= 1 << 30:
                raise Malformed("bad GGUF alignment")
        else:
            _skip_value(c, vtype)
    infos: list[tuple[int, int | None, int]] = []  # (relative offset, nbytes or None, width)
    for _ in range(n_tensors):
        c.skip_string()
        n_dims = c.u32()
        if n_dims > MAX_DIMS:
            raise Malformed("too many GGUF dims")
        dims = c.take(f"<{n_dims}Q", 8 * n_dims) if n_dims else ()
        gtype = c.u32()
        offset = c.u64()
        numel = 1
        for d in dims:
            numel *= d
        nbytes = None
        if gtype in TYPE_SIZE:
            block, bsize = TYPE_SIZE[gtype]
            if numel % block == 0:
                nbytes = numel // block * bsize
        infos.append((offset, nbytes, WIDTH.get(gtype, 0)))
    data_start = -(-c.pos // alignment) * alignment
    if data_start > size:
        raise Malformed("GGUF data start beyond end of file")
    infos.sort(key=lambda t: t[0])
    out: list[Region] = []
    for i, (rel, nbytes, width) in enumerate(infos):
        start = data_start + rel
        limit = data_start + infos[i + 1][0] if i + 1 < len(infos) else size
        if nbytes is None:  # unknown type: it runs to the next tensor (or end of file)
            nbytes = limit - start
        if nbytes < 0 or start + nbytes > limit:
            raise Malformed("GGUF tensor overlaps the next or the end of file")
        out.append(Region(start, nbytes, width))
    return finalize(out, size, "inconsistent GGUF tensor offsets")


regions = tolerant(_parse)  # Tensor regions of a GGUF file, or None if it is not one / is malformed.


# -- technical summary (additive: `regions` above is what the chunker uses) -------------------
TYPE_NAME = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
             11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
             18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8",
             25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0",
             39: "MXFP4"}
# llama.cpp's general.file_type (LLAMA_FTYPE_*): the quantisation of the file as a whole
FILE_TYPE = {0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0",
             8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M",
             13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S",
             17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K", 32: "MOSTLY_BF16"}
_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
MAX_SUMMARY_KEYS = 64
MAX_SUMMARY_STRING = 256  # longer strings (chat templates, licenses) are left out


def _summarize(f: BinaryIO, size: int) -> dict:
    """Scalar and short-string key/values (not tokenizer.*), tensor count, parameters per
    ggml type, of a file that `regions` accepts."""
    _parse(f, size)
    c = _Cursor(BoundedReader(f), size)
    c.take("4s", 4)
    c.u32()
    n_tensors, n_kv = c.u64(), c.u64()
    kv: dict[str, object] = {}
    for _ in range(n_kv):
        key = c.string().decode("utf-8", "replace")
        vtype = c.u32()
        if vtype in _FMT and not key.startswith("tokenizer."):
            (value,) = c.take(_FMT[vtype], _SCALAR_SIZE[vtype])
            if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
                continue
            if len(kv) < MAX_SUMMARY_KEYS:
                kv[key] = value
        elif vtype == _STRING and not key.startswith("tokenizer."):
            text = c.string().decode("utf-8", "replace")
            if len(text) <= MAX_SUMMARY_STRING and len(kv) < MAX_SUMMARY_KEYS:
                kv[key] = text
        else:
            _skip_value(c, vtype)
    params: dict[str, int] = {}
    for _ in range(n_tensors):
        c.skip_string()
        n_dims = c.u32()
        dims = c.take(f"<{n_dims}Q", 8 * n_dims) if n_dims else ()
        gtype = c.u32()
        c.u64()
        numel = 1
        for d in dims:
            numel *= d
        tname = TYPE_NAME.get(gtype, f"type{gtype}")
        params[tname] = params.get(tname, 0) + numel
    out: dict = {"format": "gguf", "tensors": n_tensors, "parameters": dict(sorted(params.items())),
                 "gguf": dict(sorted(kv.items()))}
    arch = kv.get("general.architecture")
    if isinstance(arch, str):
        out["architecture"] = arch
        if isinstance(kv.get(f"{arch}.context_length"), int):
            out["context_length"] = kv[f"{arch}.context_length"]
    ftype = kv.get("general.file_type")
    if isinstance(ftype, int) and not isinstance(ftype, bool):
        out["quantization"] = FILE_TYPE.get(ftype, f"file_type {ftype}")
    return out


def summary(f: BinaryIO, size: int) -> dict | None:
    """{format, tensors, parameters, gguf: {key: value}, architecture?, context_length?,
    quantization?} or None if not a valid GGUF file."""
    try:
        return _summarize(f, size)
    except Exception:  # noqa: BLE001 - hostile input must never raise
        return None
