"""Deterministic, hand-built weights files for tests (no torch/numpy available).

The safetensors writer and the weight generator live in archiver.samples (shared with
bench/ and the demo) and are re-exported here; this module adds GGUF and torch zip.
`tensors` arguments are {name: (dtype, shape, raw bytes)}; GGUF additionally accepts
ggml type names ("Q8_0", ...) or integer ggml type ids.
"""
from __future__ import annotations

import functools
import struct
import zipfile
from pathlib import Path

from archiver import samples
from archiver.samples import ITEM_SIZE, Tensors, check_tensor_len, numel
from archiver.samples import make_safetensors  # noqa: F401 - re-exported

# The suite builds the same weights hundreds of times (make_checkpoint's defaults, the crash
# tests' 40 MB checkpoint per test), and the generator draws each element in Python: made
# once per session instead. Bytes are immutable, so every caller may share them.
random_tensor_bytes = functools.lru_cache(maxsize=128)(samples.random_tensor_bytes)


def transformer_tensors(
    n_layers: int = 4, hidden: int = 64, vocab: int = 256, dtype: str = "F32", seed: int = 0
) -> Tensors:
    """A BERT-ish state dict: embeddings, per-layer attention/MLP matrices plus small
    biases and norms (the mix of big and tiny tensors that grouping has to handle)."""
    spec: list[tuple[str, list[int]]] = [("embeddings.word_embeddings.weight", [vocab, hidden])]
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        for m in ("query", "key", "value"):
            spec += [(p + f"attention.self.{m}.weight", [hidden, hidden]), (p + f"attention.self.{m}.bias", [hidden])]
        spec += [
            (p + "attention.output.dense.weight", [hidden, hidden]),
            (p + "attention.output.dense.bias", [hidden]),
            (p + "attention.output.LayerNorm.weight", [hidden]),
            (p + "attention.output.LayerNorm.bias", [hidden]),
            (p + "intermediate.dense.weight", [4 * hidden, hidden]),
            (p + "intermediate.dense.bias", [4 * hidden]),
            (p + "output.dense.weight", [hidden, 4 * hidden]),
            (p + "output.dense.bias", [hidden]),
        ]
    out: Tensors = {}
    for k, (name, shape) in enumerate(spec):
        out[name] = (dtype, shape, random_tensor_bytes(dtype, numel(shape), seed * 100_003 + k))
    return out


# --------------------------------------------------------------------------- GGUF

GGML_TYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q8_1": 9,
    "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "Q8_K": 15,
    "I8": 24, "I16": 25, "I32": 26, "I64": 27, "F64": 28, "BF16": 30,
}


def _gguf_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _gguf_scalar_type(v: object) -> int:
    if isinstance(v, bool):
        return 7
    if isinstance(v, int):
        if 0 <= v < 1 << 32:
            return 4
        if -(1 << 31) <= v < 1 << 31:
            return 5
        return 11
    if isinstance(v, float):
        return 6
    if isinstance(v, (str, bytes)):
        return 8
    if isinstance(v, list):
        return 9
    raise TypeError(f"no GGUF type for {v!r}")


_GGUF_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_value(vtype: int, v: object) -> bytes:
    if vtype == 8:
        return _gguf_str(v)  # type: ignore[arg-type]
    if vtype == 9:
        items = list(v)  # type: ignore[call-overload]
        etype = _gguf_scalar_type(items[0]) if items else 4
        if etype == 4 and any(isinstance(x, int) and not 0 <= x < 1 << 32 for x in items):
            etype = 11
        return struct.pack("<IQ", etype, len(items)) + b"".join(_gguf_value(etype, x) for x in items)
    return struct.pack(_GGUF_FMT[vtype], v)


def make_gguf(
    path: str | Path,
    tensors: dict[str, tuple[str | int, list[int], bytes]],
    kv: dict[str, object] | None = None,
    version: int = 3,
) -> Path:
    """Write a GGUF file. `kv` values are typed by Python type (int -> u32, float -> f32,
    str, bool, list -> array) or given explicitly as (gguf value type id, value).
    `general.alignment` (default 32) is honoured for tensor offsets and data start.
    Shapes are in ggml order (ne0 first)."""
    kv = dict(kv or {})
    alignment = kv.get("general.alignment", 32)
    if isinstance(alignment, tuple):
        alignment = alignment[1]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv)))
    for key, value in kv.items():
        if isinstance(value, tuple):
            vtype, value = value
        else:
            vtype = _gguf_scalar_type(value)
        out += _gguf_str(key) + struct.pack("<I", vtype) + _gguf_value(vtype, value)
    rel = 0
    layout: list[tuple[int, bytes]] = []
    for name, (gtype, shape, data) in tensors.items():
        tid = GGML_TYPES[gtype] if isinstance(gtype, str) else gtype
        if isinstance(gtype, str) and gtype in ITEM_SIZE:
            check_tensor_len(name, gtype, shape, data)
        rel = -(-rel // alignment) * alignment
        out += _gguf_str(name) + struct.pack("<I", len(shape))
        out += struct.pack(f"<{len(shape)}Q", *shape) if shape else b""
        out += struct.pack("<IQ", tid, rel)
        layout.append((rel, data))
        rel += len(data)
    out += b"\0" * (-len(out) % alignment)
    data_start = len(out)
    for rel, data in layout:
        out += b"\0" * (data_start + rel - len(out))
        out += data
    path = Path(path)
    path.write_bytes(bytes(out))
    return path


# --------------------------------------------------------------------------- torch zip

STORAGE_TYPES = {
    "F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage", "F64": "DoubleStorage",
    "I64": "LongStorage", "I32": "IntStorage", "I16": "ShortStorage", "I8": "CharStorage",
    "U8": "ByteStorage", "BOOL": "BoolStorage",
}


class _PickleWriter:
    """Hand-assembled protocol-2 pickle with a memo, the way the C pickler writes torch's
    state dicts (repeated strings/globals become BINGETs) - torch itself isn't available
    to import, so pickle.Pickler cannot save references to its classes."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.memo: dict[object, int] = {}

    def _put(self, key: object) -> None:
        idx = len(self.memo)
        self.memo[key] = idx
        self.out += b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx)

    def _get(self, key: object) -> bool:
        idx = self.memo.get(key)
        if idx is None:
            return False
        self.out += b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx)
        return True

    def op(self, raw: bytes) -> None:
        self.out += raw

    def string(self, s: str) -> None:
        if not self._get(("s", s)):
            b = s.encode()
            self.out += b"X" + struct.pack("<I", len(b)) + b
            self._put(("s", s))

    def global_(self, module: str, name: str) -> None:
        if not self._get(("g", module, name)):
            self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
            self._put(("g", module, name))

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -(1 << 31) <= v < 1 << 31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(b)]) + b

    def int_tuple(self, vals: list[int]) -> None:
        if len(vals) == 0:
            self.out += b")"
            return
        if len(vals) > 3:
            self.out += b"("
        for v in vals:
            self.int_(v)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(vals), b"t")


def torch_state_dict_pickle(tensors: Tensors) -> bytes:
    """data.pkl for an OrderedDict {name: _rebuild_tensor_v2(storage, 0, shape, stride,
    False, OrderedDict())} with storages as persistent ids
    ('storage', torch.<X>Storage, key, 'cpu', numel) - torch.save's layout."""
    w = _PickleWriter()
    w.global_("collections", "OrderedDict")
    w.op(b")R")
    w.op(b"(")  # MARK for SETITEMS
    for key, (name, (dtype, shape, _data)) in enumerate(tensors.items()):
        w.string(name)
        w.global_("torch._utils", "_rebuild_tensor_v2")
        w.op(b"(")  # args tuple
        w.op(b"(")  # persistent id tuple
        w.string("storage")
        w.global_("torch", STORAGE_TYPES[dtype])
        w.string(str(key))
        w.string("cpu")
        w.int_(numel(shape))
        w.op(b"tQ")  # TUPLE, BINPERSID
        w.int_(0)  # storage offset
        w.int_tuple(list(shape))
        stride, acc = [], 1
        for d in reversed(shape):
            stride.append(acc)
            acc *= d
        w.int_tuple(stride[::-1])
        w.op(b"\x89")  # NEWFALSE: requires_grad
        w.global_("collections", "OrderedDict")
        w.op(b")R")  # backward hooks
        w.op(b"tR")  # TUPLE, REDUCE
    w.op(b"u.")  # SETITEMS, STOP
    return bytes(w.out)


def make_torch_zip(path: str | Path, tensors: Tensors, prefix: str = "archive") -> Path:
    """Write a torch.save-style zip: <prefix>/data.pkl, byteorder, data/<key> storages,
    version, .data/serialization_id; every member stored, data 64-byte aligned via an
    'FB' padding extra field (as PyTorch's writer does)."""
    members: list[tuple[str, bytes]] = [
        (f"{prefix}/data.pkl", torch_state_dict_pickle(tensors)),
        (f"{prefix}/byteorder", b"little"),
    ]
    for key, (name, (dtype, shape, data)) in enumerate(tensors.items()):
        check_tensor_len(name, dtype, shape, data)
        members.append((f"{prefix}/data/{key}", data))
    members.append((f"{prefix}/version", b"3\n"))
    members.append((f"{prefix}/.data/serialization_id", b"%040d" % len(tensors)))
    path = Path(path)
    with open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            pad = -(fh.tell() + 30 + len(name.encode()) + 4) % 64
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            zf.writestr(info, data)
    return path
