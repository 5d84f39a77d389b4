"""Chunking: exact coverage, streaming CDC == whole-buffer CDC, tensor-aligned cuts,
dedup across header edits and partial tensor changes, bounded memory, change detection."""
from __future__ import annotations

import io
import json
import os
import random
import struct
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
from blake3 import blake3
from fastcdc.fastcdc_cy import chunk_generator

from archiver.chunking import SMALL_GAP, ChunkPolicy, RawChunk, Span, cdc_stream, describe_plan, iter_chunks, plan
from archiver.errors import SourceChangedError
from archiver.formats import Region, detect_regions
from tests.fixtures import make_gguf, make_safetensors, make_torch_zip, random_tensor_bytes, transformer_tensors

SMALL = ChunkPolicy(max_chunk=64 * 1024, small_group=16 * 1024, cdc_min=2048, cdc_avg=8192, cdc_max=32 * 1024)
MiB = 1024 * 1024


def chunks_of(path: Path, policy: ChunkPolicy = ChunkPolicy()) -> list[RawChunk]:
    with open(path, "rb") as f:
        return list(iter_chunks(f, os.path.getsize(path), policy))


def assert_exact_cover(chunks: list[RawChunk], data: bytes) -> None:
    pos = 0
    for c in chunks:
        assert c.offset == pos and len(c.data) > 0
        pos += len(c.data)
    assert pos == len(data)
    assert b"".join(c.data for c in chunks) == data


def whole_buffer_cdc(data: bytes, p: ChunkPolicy) -> list[tuple[int, int]]:
    return [(c.offset, c.length) for c in chunk_generator(memoryview(data), p.cdc_min, p.cdc_avg, p.cdc_max, False, None)]


class ShortReads(io.RawIOBase):
    """A file that returns at most `step` bytes per read, like a pipe or network FS."""

    def __init__(self, data: bytes, step: int):
        self._b = io.BytesIO(data)
        self.step = step

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._b.seek(offset, whence)

    def tell(self) -> int:
        return self._b.tell()

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self._b.read(min(len(b), self.step))
        b[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        return self._b.read(self.step if n < 0 else min(n, self.step))


# ---------------------------------------------------------------- basics


def test_empty_file_has_no_chunks(tmp_path: Path) -> None:
    p = tmp_path / "e"
    p.write_bytes(b"")
    assert chunks_of(p) == []


def test_small_file_is_one_chunk(tmp_path: Path) -> None:
    t = {"a": ("F32", [100], random_tensor_bytes("F32", 100, 1))}
    p = make_safetensors(tmp_path / "m.safetensors", t)  # a weights file, but < cdc_min
    chunks = chunks_of(p)
    assert len(chunks) == 1 and chunks[0].width == 0 and chunks[0].data == p.read_bytes()


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        ChunkPolicy(cdc_min=10)
    with pytest.raises(ValueError):
        ChunkPolicy(cdc_min=4 * MiB, cdc_avg=2 * MiB)
    with pytest.raises(ValueError):
        ChunkPolicy(max_chunk=MiB, small_group=2 * MiB)


# ---------------------------------------------------------------- streaming CDC


@pytest.mark.parametrize("window", [None, 32 * 1024, 32 * 1024 + 1, 48 * 1024 + 7, 100_000, 1 << 30])
def test_streaming_cdc_equals_whole_buffer(window: int | None) -> None:
    rng = random.Random(42)
    # random data plus long zero runs (max-size cuts) plus repeated blocks
    block = rng.randbytes(50_000)
    data = rng.randbytes(700_000) + b"\0" * 200_000 + block * 3 + rng.randbytes(123_457)
    expected = whole_buffer_cdc(data, SMALL)
    got = list(cdc_stream(io.BytesIO(data), 0, len(data), SMALL, window=window))
    assert [(c.offset, len(c.data)) for c in got] == expected
    assert b"".join(c.data for c in got) == data


@pytest.mark.parametrize("step", [1000, 4097, 65536])
def test_streaming_cdc_with_short_reads(step: int) -> None:
    data = random.Random(step).randbytes(400_000)
    got = list(iter_chunks(ShortReads(data, step), len(data), SMALL))
    assert [(c.offset, len(c.data)) for c in got] == whole_buffer_cdc(data, SMALL)
    assert_exact_cover(got, data)


def test_streaming_cdc_default_policy_matches_whole_file(tmp_path: Path) -> None:
    rng = random.Random(9)
    data = rng.randbytes(30 * MiB) + b"\0" * (9 * MiB) + rng.randbytes(3 * MiB + 17)
    p = tmp_path / "blob"
    p.write_bytes(data)
    chunks = chunks_of(p)
    assert [(c.offset, len(c.data)) for c in chunks] == whole_buffer_cdc(data, ChunkPolicy())
    assert_exact_cover(chunks, data)
    assert all(c.width == 0 for c in chunks)


def test_cdc_of_a_sub_range(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(300_000)
    f = io.BytesIO(data)
    f.seek(1000)
    got = list(cdc_stream(f, 1000, 250_000, SMALL, window=40_000))
    assert [(c.offset - 1000, len(c.data)) for c in got] == whole_buffer_cdc(data[1000:250_000], SMALL)


# ---------------------------------------------------------------- plan rules


def _spans(regions: list[Region], size: int, policy: ChunkPolicy = SMALL) -> list[Span]:
    spans = list(plan(regions, size, policy))
    pos = 0
    for s in spans:
        assert s.start == pos and s.end > s.start
        pos = s.end
    assert pos == size
    return spans


def test_plan_groups_small_same_width_tensors() -> None:
    # header 100 bytes, then 6 x 4 KiB fp32, then 3 x 4 KiB bf16
    regions = [Region(100 + i * 4096, 4096, 4) for i in range(6)]
    regions += [Region(100 + (6 + i) * 4096, 4096, 2) for i in range(3)]
    size = 100 + 9 * 4096
    spans = _spans(regions, size)
    assert [(s.start, s.end - s.start, s.width, s.cdc) for s in spans] == [
        (0, 100, 0, True),
        (100, 16384, 4, False),  # 4 tensors fill small_group exactly
        (100 + 16384, 8192, 4, False),
        (100 + 24576, 12288, 2, False),  # width change starts a new group
    ]


def test_plan_splits_big_tensors_on_element_boundaries() -> None:
    policy = ChunkPolicy(max_chunk=9_999, small_group=1000, cdc_min=64, cdc_avg=256, cdc_max=1024)
    regions = [Region(8, 35_000, 8), Region(35_008, 25_000, 4), Region(60_008, 9_999, 2)]
    spans = _spans(regions, 70_007, policy)
    tensor_spans = [(s.start, s.end - s.start, s.width) for s in spans if not s.cdc]
    assert tensor_spans == [
        (8, 9_992, 8), (10_000, 9_992, 8), (19_992, 9_992, 8), (29_984, 5_024, 8),
        (35_008, 9_996, 4), (45_004, 9_996, 4), (55_000, 5_008, 4),
        (60_008, 9_999, 2),  # <= max_chunk: one chunk even though > small_group
    ]


def test_plan_gaps() -> None:
    # small gaps (alignment padding, zip local headers) ride with the tensor before them;
    # big gaps and the trailer are content-defined chunks of their own
    regions = [Region(64, 1000, 4), Region(1088, 1000, 4), Region(2088 + SMALL_GAP + 1, 1000, 4)]
    size = regions[-1].end + 500
    spans = _spans(regions, size)
    assert [(s.start, s.end, s.width, s.cdc) for s in spans] == [
        (0, 64, 0, True),
        (64, 2088, 4, False),  # both tensors and the 24-byte gap between them
        (2088, 2088 + SMALL_GAP + 1, 0, True),
        (regions[-1].offset, regions[-1].end, 4, False),
        (regions[-1].end, size, 0, True),
    ]


def test_plan_does_not_group_misaligned_tensors() -> None:
    regions = [Region(0, 6, 4), Region(6, 8, 4), Region(14, 2, 2), Region(16, 6, 2)]
    spans = _spans(regions, 22)
    assert [(s.start, s.end) for s in spans] == [(0, 6), (6, 14), (14, 22)]


def test_plan_gap_that_would_overflow_max_chunk_is_separate() -> None:
    policy = ChunkPolicy(max_chunk=8192, small_group=4096, cdc_min=64, cdc_avg=256, cdc_max=1024)
    regions = [Region(0, 8192, 4), Region(8192 + 100, 4, 4)]
    spans = _spans(regions, 8296, policy)
    assert [(s.start, s.end, s.width) for s in spans] == [(0, 8192, 4), (8192, 8292, 0), (8292, 8296, 4)]


def test_plan_is_shift_invariant() -> None:
    rng = random.Random(1)
    lengths = [rng.choice([64, 500, 4096, 20_000, 100_000, 300_000]) for _ in range(200)]
    widths = [rng.choice([0, 2, 4]) for _ in lengths]

    def layout(base: int) -> tuple[list[Region], int]:
        out, pos = [], base
        for n, w in zip(lengths, widths):
            out.append(Region(pos, n, w))
            pos += n + rng.choice([0, 0, 32, 5000])
        return out, pos

    rng.seed(5)
    a, size_a = layout(128)
    rng.seed(5)
    b, size_b = layout(128 + 777)
    sa = [(s.start - 128, s.end - 128, s.width) for s in _spans(a, size_a) if not s.cdc]
    sb = [(s.start - 905, s.end - 905, s.width) for s in _spans(b, size_b) if not s.cdc]
    assert sa == sb


# ---------------------------------------------------------------- real formats


def _check_tensor_alignment(chunks: list[RawChunk], regions: list[Region]) -> int:
    """Every width>0 chunk starts inside a region of that width, a multiple of the width
    from the tensor start; returns how many tensor chunks were checked."""
    checked = 0
    for c in chunks:
        if c.width == 0:
            continue
        owner = next(r for r in regions if r.offset <= c.offset < r.end)
        assert owner.width == c.width
        assert (c.offset - owner.offset) % c.width == 0
        checked += 1
    return checked


@pytest.mark.parametrize("fmt", ["safetensors", "gguf", "torchzip"])
def test_weights_files_cover_exactly_and_align(tmp_path: Path, fmt: str) -> None:
    tensors = transformer_tensors(n_layers=3, hidden=64, vocab=512, dtype="BF16", seed=1)
    tensors["extra.f32"] = ("F32", [20_000], random_tensor_bytes("F32", 20_000, 99))
    maker = {"safetensors": make_safetensors, "gguf": make_gguf, "torchzip": make_torch_zip}[fmt]
    p = maker(tmp_path / "m", tensors)
    data = p.read_bytes()
    chunks = chunks_of(p, SMALL)
    assert_exact_cover(chunks, data)
    with open(p, "rb") as f:
        got_fmt, regions = detect_regions(f, len(data))
    assert got_fmt == fmt
    assert _check_tensor_alignment(chunks, regions) >= 10
    assert max(len(c.data) for c in chunks) <= SMALL.max_chunk
    assert {c.width for c in chunks} == {0, 2, 4}
    # the 80 KB fp32 tensor is split into 64 KiB + rest from its own start
    big = next(r for r in regions if r.length == 80_000)
    pieces = [c for c in chunks if big.offset <= c.offset < big.end]
    assert [c.offset - big.offset for c in pieces] == [0, 65_536]
    # only non-tensor bytes are width 0
    tensor_bytes = sum(r.length for r in regions)
    assert sum(len(c.data) for c in chunks if c.width) >= tensor_bytes - sum(
        r.length for r in regions if r.width == 0
    )


def _hashes(chunks: list[RawChunk]) -> dict[str, int]:
    return {blake3(c.data).hexdigest(): len(c.data) for c in chunks}


def test_header_edit_changes_only_header_chunks(tmp_path: Path) -> None:
    tensors = transformer_tensors(n_layers=2, hidden=64, vocab=512, seed=2)
    a = chunks_of(make_safetensors(tmp_path / "a", tensors), SMALL)
    meta = {"format": "pt", "note": "x" * 1001, "more": "y" * 37}
    b = chunks_of(make_safetensors(tmp_path / "b", tensors, metadata=meta), SMALL)
    with open(tmp_path / "b", "rb") as f:
        first_tensor = detect_regions(f, (tmp_path / "b").stat().st_size)[1][0].offset
    ha = _hashes(a)
    new = [c for c in b if blake3(c.data).hexdigest() not in ha]
    assert new and all(c.offset + len(c.data) <= first_tensor and c.width == 0 for c in new)
    tensor_a = [blake3(c.data).hexdigest() for c in a if c.width]
    tensor_b = [blake3(c.data).hexdigest() for c in b if c.width]
    assert tensor_a == tensor_b and len(tensor_a) > 10


def test_gguf_metadata_edit_keeps_tensor_chunks(tmp_path: Path) -> None:
    tensors = transformer_tensors(n_layers=2, hidden=64, vocab=512, dtype="F16", seed=4)
    a = chunks_of(make_gguf(tmp_path / "a", tensors, kv={"general.name": "m"}), SMALL)
    b = chunks_of(make_gguf(tmp_path / "b", tensors, kv={"general.name": "m2", "x": [1, 2, 3]}), SMALL)
    ta = {blake3(c.data).hexdigest() for c in a if c.width}
    tb = {blake3(c.data).hexdigest() for c in b if c.width}
    assert ta == tb and len(ta) > 5


def test_torchzip_pickle_edit_keeps_tensor_chunks(tmp_path: Path) -> None:
    tensors = transformer_tensors(n_layers=2, hidden=64, vocab=512, dtype="F32", seed=5)
    renamed = {"model." + k: v for k, v in tensors.items()}  # data.pkl grows, storages shift
    a = chunks_of(make_torch_zip(tmp_path / "a", tensors), SMALL)
    b = chunks_of(make_torch_zip(tmp_path / "b", renamed), SMALL)
    ta = {blake3(c.data).hexdigest() for c in a if c.width}
    tb = {blake3(c.data).hexdigest() for c in b if c.width}
    assert ta == tb and len(ta) > 5


def test_dedup_after_header_edit_and_ten_percent_tensor_change(tmp_path: Path) -> None:
    tensors = transformer_tensors(n_layers=6, hidden=128, vocab=1024, dtype="F32", seed=6)
    policy = ChunkPolicy(max_chunk=256 * 1024, small_group=64 * 1024, cdc_min=4096, cdc_avg=16384, cdc_max=65536)
    a = chunks_of(make_safetensors(tmp_path / "a", tensors, metadata={"format": "pt"}), policy)

    # 10% of the tensors, stratified by size (every 10th in size order) so the sample
    # has the model's mix of matrices, biases and norms rather than only big or small ones
    names = list(tensors)
    by_size = sorted(names, key=lambda n: (len(tensors[n][2]), names.index(n)))
    changed = by_size[5::10]
    assert abs(len(changed) - len(names) / 10) < 1
    edited = dict(tensors)
    for k, name in enumerate(changed):
        dtype, shape, old = tensors[name]
        edited[name] = (dtype, shape, random_tensor_bytes(dtype, len(old) // 4, 10_000 + k))
    meta = {"format": "pt", "fine_tuned_from": "a", "notes": "lr=1e-5 " * 40}
    pb = make_safetensors(tmp_path / "b", edited, metadata=meta)
    b = chunks_of(pb, policy)

    seen = _hashes(a)
    total = pb.stat().st_size
    new_bytes = sum(n for h, n in _hashes(b).items() if h not in seen)
    changed_bytes = sum(len(tensors[n][2]) for n in changed)
    assert 0.05 * total < changed_bytes < 0.12 * total  # precondition: a representative 10%
    assert new_bytes <= 0.15 * total, (new_bytes, total)
    # unseen bytes = changed tensors + header + at most one small group per changed tensor
    assert changed_bytes <= new_bytes <= changed_bytes + 4096 + len(changed) * policy.small_group


# ---------------------------------------------------------------- resources and errors


def _peak_while_iterating(path: Path, policy: ChunkPolicy = ChunkPolicy()) -> tuple[int, int, int]:
    size = path.stat().st_size
    tracemalloc.start()
    try:
        n = total = 0
        with open(path, "rb") as f:
            for c in iter_chunks(f, size, policy):
                n += 1
                total += len(c.data)
        return tracemalloc.get_traced_memory()[1], n, total
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_memory_bounded_on_large_unrecognised_file(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    size = 256 * MiB
    with open(p, "wb") as f:  # sparse, with some real data at both ends
        f.write(random.Random(1).randbytes(3 * MiB))
        f.truncate(size)
    peak, n, total = _peak_while_iterating(p)
    assert total == size and n >= 32
    # 2*cdc_max window + the chunk being built + the one the caller still holds
    assert peak < 4.5 * ChunkPolicy().max_chunk, peak


@pytest.mark.slow
def test_memory_bounded_on_large_tensor_file(tmp_path: Path) -> None:
    p = make_safetensors(tmp_path / "m.safetensors", {"w": ("F32", [1], b"\0" * 4)})
    header = p.read_bytes()[:-4]
    n = struct.unpack("<Q", header[:8])[0]
    h = json.loads(header[8 : 8 + n])
    h["w"] = {"dtype": "F32", "shape": [64 * MiB], "data_offsets": [0, 256 * MiB]}
    hb = json.dumps(h).encode()
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        f.truncate(8 + len(hb) + 256 * MiB)
    peak, n, total = _peak_while_iterating(p)
    assert n == 1 + 32 and total == p.stat().st_size
    assert peak < 3 * ChunkPolicy().max_chunk, peak


@pytest.mark.parametrize("kind", ["cdc", "tensors"])
def test_truncated_file_raises_source_changed(tmp_path: Path, kind: str) -> None:
    if kind == "cdc":
        p = tmp_path / "blob"
        p.write_bytes(random.Random(0).randbytes(300_000))
    else:
        p = make_safetensors(tmp_path / "m", transformer_tensors(n_layers=1, hidden=64, vocab=512))
    size = p.stat().st_size
    with open(p, "rb") as f:
        it = iter_chunks(f, size, SMALL)
        first = next(it)
        os.truncate(p, size - 5000)
        with pytest.raises(SourceChangedError) as err:
            for _ in it:
                pass
    assert first.offset == 0
    assert "\n" not in str(err.value) and "changed" in str(err.value)


def test_stat_size_larger_than_file_raises(tmp_path: Path) -> None:
    p = tmp_path / "blob"
    p.write_bytes(random.Random(0).randbytes(100_000))
    with open(p, "rb") as f, pytest.raises(SourceChangedError):
        list(iter_chunks(f, 100_001, SMALL))


@pytest.mark.parametrize("kind", ["cdc", "tensors", "tiny"])
def test_file_longer_than_size_raises(tmp_path: Path, kind: str) -> None:
    if kind == "cdc":
        p = tmp_path / "blob"
        p.write_bytes(random.Random(0).randbytes(300_000))
    elif kind == "tiny":
        p = tmp_path / "tiny"
        p.write_bytes(b"abc")
    else:
        p = make_safetensors(tmp_path / "m", transformer_tensors(n_layers=1, hidden=64, vocab=512))
    size = p.stat().st_size
    with open(p, "ab") as g:
        g.write(b"more")
    with open(p, "rb") as f, pytest.raises(SourceChangedError) as err:
        list(iter_chunks(f, size, SMALL))
    assert "longer" in str(err.value)


def test_file_position_does_not_matter(tmp_path: Path) -> None:
    p = make_gguf(tmp_path / "m", transformer_tensors(n_layers=1, hidden=64, vocab=512, dtype="F16"))
    size = p.stat().st_size
    with open(p, "rb") as f:
        f.seek(0, 2)
        moved = list(iter_chunks(f, size, SMALL))
    assert moved == chunks_of(p, SMALL)


def test_describe_plan(tmp_path: Path) -> None:
    p = make_safetensors(tmp_path / "m", transformer_tensors(n_layers=1, hidden=64, vocab=512))
    text = describe_plan(p, SMALL)
    assert "format=safetensors" in text and "tensor regions" in text


@pytest.mark.integration
def test_real_minilm_checkpoint(minilm: Path) -> None:
    weights = minilm / "model.safetensors"
    size = weights.stat().st_size
    t0 = time.perf_counter()
    chunks = chunks_of(weights)
    elapsed = time.perf_counter() - t0
    with open(weights, "rb") as f:
        fmt, regions = detect_regions(f, size)
    assert fmt == "safetensors" and len(regions) > 100
    pos = 0
    for c in chunks:
        assert c.offset == pos
        pos += len(c.data)
    assert pos == size
    assert Counter(c.width for c in chunks)[4] >= 10
    assert _check_tensor_alignment(chunks, regions) >= 10
    assert max(len(c.data) for c in chunks) <= ChunkPolicy().max_chunk
    print(f"minilm: {len(chunks)} chunks, {size / elapsed / 1e6:.0f} MB/s")


def test_short_reads_on_weights_file(tmp_path: Path) -> None:
    p = make_torch_zip(tmp_path / "m.bin", transformer_tensors(n_layers=2, hidden=64, vocab=512))
    data = p.read_bytes()
    got = list(iter_chunks(ShortReads(data, 999), len(data), SMALL))
    assert got == chunks_of(p, SMALL)
    assert any(c.width for c in got)
