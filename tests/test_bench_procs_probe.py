"""bench/procs_probe.py: its process-pool shape stores what `archive` stores, so its timings
compare the same work."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import blake3
import numpy as np
import pytest

from archiver import api
from archiver.samples import make_safetensors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import procs_probe  # noqa: E402


def _bf16(n: int) -> bytes:
    """Normal-distributed bf16 weights (the bench input's kind), made with numpy, not per element."""
    f32 = np.random.default_rng(7).normal(0.0, 0.02, n).astype(np.float32)
    return (f32.view(np.uint32) >> 16).astype(np.uint16).tobytes()


@pytest.mark.packs  # the default pack threshold, as the bench runs: the header chunk is packed
def test_pool_stores_the_same_chunk_objects_and_file_hashes_as_archive(tmp_path, home):
    """A tensor cut in a full 8 MiB chunk and a tail, plus the header: the probe (2 spawned
    workers, a ring of 2 slots, so slots are reused) writes the same chunk keys with the same
    stored total as `archive`, and feeds the same whole-file SHA-256 and BLAKE3."""
    n = 4 * 1024 * 1024 + 300_000  # elements: 8 MiB + a tail
    src = make_safetensors(tmp_path / "m.safetensors", {"w": ("BF16", [n], _bf16(n)),
                                                        "b": ("BF16", [1000], _bf16(1000))})
    res = api.archive([src], name="m", store=str(tmp_path / "real"), catalog=str(tmp_path / "real.db"))
    got = procs_probe.child(src, tmp_path / "probe", workers=2, depth=2)
    real_keys = procs_probe._chunk_keys(tmp_path / "real")
    assert got["chunks"] == res.chunks >= 3
    assert got["stored"] == res.bytes_stored
    assert got["keys"] == real_keys and len(real_keys) >= 1
    assert procs_probe._chunk_keys(tmp_path / "probe") == real_keys
    data = src.read_bytes()
    assert (got["sha256"], got["blake3"]) == (hashlib.sha256(data).hexdigest(), blake3.blake3(data).hexdigest())
