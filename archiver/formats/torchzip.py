"""PyTorch zip checkpoints (torch.save since 1.6; .bin/.pt/.pth).

A ZIP whose `<prefix>/data/<key>` members are stored (uncompressed) tensor storages,
64-byte aligned, next to `<prefix>/data.pkl` which describes the tensors. Regions are the
stored members' data ranges; widths come from the storage types named in data.pkl,
which is only *scanned* with pickletools (never unpickled: a checkpoint is untrusted)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, BinaryIO

from archiver.formats import MAX_HEADER_BYTES, BoundedReader, Malformed, Region, finalize, tolerant

if TYPE_CHECKING:  # zipfile (and shutil under it) is imported by the readers, not at every start-up
    import zipfile

MAGIC = b"PK\x03\x04"
MAX_MEMBERS = 1_000_000
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes

STORAGE_WIDTH = {
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "DoubleStorage": 8,
}

_STRING_OPS = {
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
    "SHORT_BINUNICODE", "BINUNICODE8",
}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


class _Global(tuple):
    """(module, name) of a GLOBAL reference seen in the pickle."""


_UNKNOWN = object()


def storage_widths(pkl: bytes) -> dict[str, int]:
    """Map storage key -> element width from torch's persistent ids
    ('storage', torch.<X>Storage, key, location, numel), by simulating only the pickle
    stack effects needed to see those tuples. Anything not understood is skipped, and
    an unknown key later defaults to width 0 (a width is only a compression hint)."""
    return _scan_pickle(pkl)[0]


_Scan = tuple[dict[str, int], dict[str, tuple[str, int]], int]  # widths, storages, tensor count
_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
               ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_qtensor")}


def _scan_pickle(pkl: bytes) -> _Scan:
    """(storage key -> width, storage key -> (storage type, numel), tensor count): the
    tensor count is how often a torch tensor rebuild function is referenced (each reference
    is one REDUCE building one tensor; a Parameter wraps one such call)."""
    import pickletools  # here: every archive detects formats, few files are torch zips
    widths: dict[str, int] = {}
    storages: dict[str, tuple[str, int]] = {}
    tensors = 0
    stack: list[object] = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    try:
        for op, arg, _pos in pickletools.genops(pkl):
            name = op.name
            if name in _STRING_OPS:
                stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
            elif name in _INT_OPS:
                stack.append(arg)
            elif name == "GLOBAL":
                mod, _, attr = str(arg).partition(" ")
                stack.append(_Global((mod, attr)))
                tensors += (mod, attr) in _REBUILDERS
            elif name == "STACK_GLOBAL":
                attr, mod = stack.pop(), stack.pop()
                stack.append(_Global((mod, attr)))
                tensors += (mod, attr) in _REBUILDERS
            elif name in _PUT_OPS:
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in _GET_OPS:
                got = memo.get(arg, _UNKNOWN)
                stack.append(got)
                tensors += isinstance(got, _Global) and tuple(got) in _REBUILDERS
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "TUPLE":
                k = marks.pop()
                t = tuple(stack[k:])
                del stack[k:]
                stack.append(t)
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in _TUPLE_N:
                n = _TUPLE_N[name]
                t = tuple(stack[-n:])
                del stack[-n:]
                stack.append(t)
            elif name == "BINPERSID":
                pid = stack.pop()
                _record(widths, pid)
                _record_storage(storages, pid)
                stack.append(_UNKNOWN)
            else:  # generic stack effect from the opcode table
                before, after = op.stack_before, op.stack_after
                if pickletools.markobject in before:
                    k = marks.pop()
                    del stack[k:]
                    below = before.index(pickletools.markobject)
                else:
                    below = len(before)
                if below:
                    if below > len(stack):
                        break
                    del stack[len(stack) - below :]
                stack.extend(_UNKNOWN for _ in after)
    except Exception:  # noqa: BLE001 - truncated/odd pickles: keep what we learned
        pass
    return widths, storages, tensors


# torch storage class -> the dtype name used in safetensors headers
STORAGE_DTYPE = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
                 "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
                 "ByteStorage": "U8", "BoolStorage": "BOOL"}


def _record_storage(storages: dict[str, tuple[str, int]], pid: object) -> None:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        return
    stype, key, numel = pid[1], pid[2], pid[4]
    if isinstance(key, str) and isinstance(numel, int) and not isinstance(numel, bool) and numel >= 0:
        name = stype[1] if isinstance(stype, _Global) and stype[0] == "torch" else "?"
        storages[key] = (STORAGE_DTYPE.get(name, name), numel)


def _record(widths: dict[str, int], pid: object) -> None:
    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
        return
    stype, key = pid[1], pid[2]
    if not isinstance(key, str):
        return
    width = 0
    if isinstance(stype, _Global) and stype[0] == "torch":
        width = STORAGE_WIDTH.get(stype[1], 0)
    if widths.get(key, width) != width:  # one storage seen with two dtypes: no hint
        width = 0
    widths[key] = width


def _data_offset(f: BoundedReader, header_offset: int) -> int:
    f.seek(header_offset)
    raw = f.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise Malformed("truncated local header")
    sig, _v, flags, _m, _t, _d, _crc, _cs, _us, nlen, xlen = _LOCAL_HEADER.unpack(raw)
    if sig != MAGIC or flags & 1:
        raise Malformed("bad or encrypted local header")
    return header_offset + _LOCAL_HEADER.size + nlen + xlen


def _open_checkpoint(zf: zipfile.ZipFile) -> tuple[str, list[zipfile.ZipInfo], _Scan] | None:
    """(member prefix, every member, the scan of `<prefix>/data.pkl`) of a torch.save zip,
    or None for a zip that is not a torch checkpoint; the one way regions and the summary
    find and read data.pkl. Too many members or an oversized data.pkl raise Malformed."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise Malformed("too many zip members")
    pkls = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
    if len(pkls) != 1:
        return None
    if pkls[0].file_size > MAX_HEADER_BYTES:
        raise Malformed("data.pkl too large")
    return pkls[0].filename[: -len("data.pkl")], infos, _scan_pickle(zf.read(pkls[0]))


def _parse(f: BinaryIO, size: int) -> list[Region] | None:
    import zipfile
    r = BoundedReader(f)
    with zipfile.ZipFile(r) as zf:
        found = _open_checkpoint(zf)
        if found is None:
            return None  # a zip, but not a torch checkpoint
        prefix, infos, (widths, _storages, _tensors) = found
        data_dir = prefix + "data/"
        out: list[Region] = []
        for info in infos:
            name = info.filename
            if not name.startswith(data_dir) or "/" in name[len(data_dir) :] or name == data_dir:
                continue
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                continue  # compressed storage: its bytes are not the tensor's bytes
            start = _data_offset(r, info.header_offset)
            out.append(Region(start, info.file_size, widths.get(name[len(data_dir) :], 0)))
    return finalize(out, size, "inconsistent zip member ranges")


regions = tolerant(_parse)  # Tensor-storage regions of a torch.save zip, or None if it is not one / is malformed.


# -- technical summary (additive: `regions` above is what the chunker uses) -------------------
def _summarize(f: BinaryIO, size: int) -> dict | None:
    import zipfile
    with zipfile.ZipFile(BoundedReader(f)) as zf:
        found = _open_checkpoint(zf)
    if found is None:
        return None
    _widths, storages, tensors = found[2]
    elements: dict[str, int] = {}
    for dtype, numel in storages.values():
        elements[dtype] = elements.get(dtype, 0) + numel
    # storage elements, not tensor parameters: views share a storage, so this is what is stored
    return {"format": "torchzip", "tensors": tensors, "storages": len(storages),
            "parameters": dict(sorted(elements.items()))}


def summary(f: BinaryIO, size: int) -> dict | None:
    """{format, tensors, storages, parameters: {dtype: storage elements}} or None. The pickle
    is only scanned, never unpickled."""
    try:
        return _summarize(f, size)
    except Exception:  # noqa: BLE001 - hostile input must never raise
        return None
