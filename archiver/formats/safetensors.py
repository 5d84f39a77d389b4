"""safetensors: u64 LE header length N, N bytes of JSON, then the tensor data.

Tensor `data_offsets` are relative to 8+N, so adding metadata moves every tensor; the
chunker needs the absolute ranges to keep tensor chunks stable across such edits."""
from __future__ import annotations

import json
import struct
from typing import BinaryIO

from archiver.formats import MAX_HEADER_BYTES, BoundedReader, Malformed, Region, finalize, tolerant

# Element sizes, used to check shape against byte length (catches a mis-detected file).
ITEM_SIZE = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}
# Byte-grouping width: floats only (planes of an int or fp8 tensor don't separate usefully).
WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def looks_like(head: bytes, size: int) -> bool:
    """Cheap sniff of the first 8+ bytes: a plausible header length (the JSON's first
    byte is checked by `regions`)."""
    if len(head) < 8:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return 2 <= n <= MAX_HEADER_BYTES and 8 + n <= size


def _int(v: object) -> int:
    if type(v) is not int:  # bool is an int subclass; reject it
        raise Malformed("not an integer")
    return v


def _parse(f: BinaryIO, size: int) -> list[Region]:
    r = BoundedReader(f)
    r.seek(0)
    head = r.read(8)
    if len(head) != 8:
        raise Malformed("short file")
    (n,) = struct.unpack("<Q", head)
    if not (2 <= n <= MAX_HEADER_BYTES) or 8 + n > size:
        raise Malformed("implausible header length")
    raw = r.read(n)
    if len(raw) != n or raw[:1] != b"{":
        raise Malformed("short or non-JSON header")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise Malformed("header is not an object")
    base = 8 + n
    out: list[Region] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise Malformed("tensor entry is not an object")
        dtype = info.get("dtype")
        shape = info.get("shape")
        offs = info.get("data_offsets")
        if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offs, list):
            raise Malformed("tensor entry lacks dtype/shape/data_offsets")
        if len(offs) != 2:
            raise Malformed("data_offsets is not a pair")
        begin, end = _int(offs[0]), _int(offs[1])
        if begin < 0 or end < begin or base + end > size:
            raise Malformed("tensor outside the file")
        item = ITEM_SIZE.get(dtype)
        if item is not None:
            numel = 1
            for d in shape:
                d = _int(d)
                if d < 0:
                    raise Malformed("negative dimension")
                numel *= d
                if numel * item > size:
                    raise Malformed("shape larger than the file")
            if numel * item != end - begin:
                raise Malformed("shape does not match byte length")
        out.append(Region(base + begin, end - begin, WIDTH.get(dtype, 0)))
    return finalize(out, size, "overlapping tensors")


regions = tolerant(_parse)  # Tensor regions of a safetensors file, or None if it is not one / is malformed.


# -- technical summary (additive: `regions` above is what the chunker uses) -------------------
MAX_SUMMARY_METADATA = 64 * 1024  # __metadata__ larger than this is left out of the manifest


def _summarize(f: BinaryIO, size: int) -> dict:
    """Tensor count, parameters per dtype and the __metadata__ string map of a file that
    `regions` accepts (the same header checks run first)."""
    _parse(f, size)
    r = BoundedReader(f)
    r.seek(0)
    (n,) = struct.unpack("<Q", r.read(8))
    header = json.loads(r.read(n))
    params: dict[str, int] = {}
    tensors = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors += 1
        numel = 1
        for d in info["shape"]:
            numel *= d
        params[info["dtype"]] = params.get(info["dtype"], 0) + numel
    out: dict = {"format": "safetensors", "tensors": tensors, "parameters": dict(sorted(params.items()))}
    meta = header.get("__metadata__")
    if isinstance(meta, dict) and meta and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        if len(json.dumps(meta)) <= MAX_SUMMARY_METADATA:
            out["metadata"] = dict(sorted(meta.items()))
    return out


def summary(f: BinaryIO, size: int) -> dict | None:
    """{format, tensors, parameters: {dtype: count}, metadata?} or None if not a valid safetensors file."""
    try:
        return _summarize(f, size)
    except Exception:  # noqa: BLE001 - hostile input must never raise
        return None
