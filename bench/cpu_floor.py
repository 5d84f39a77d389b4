"""The floor of archive's CPU per GiB: each step the archive of a bf16 file must do, once,
on one real 8 MiB chunk that stays hot in the cache (issue 12 item 6).

    .venv/bin/python bench/cpu_floor.py [--input FILE] [--size-mib 1024]

Input: bench/cpu_per_gib.py's generated bf16 safetensors (or --input; a tensor chunk of width
2 is taken from the middle of its data). Each step runs 10 times, best of 5, timed with the
thread's CPU clock (user + system, so other processes on a shared machine do not count), and
is printed in CPU-s per GiB of input: reading from the page cache into a reused buffer,
BLAKE3 (archive does it twice: the chunk's address and the whole-file hash), SHA-256, the
byte-plane split, zstd of the planes as the encoder does it (both probes, the
exponent plane whole), the round-trip decode-and-compare, the object join, writing the object
with fsync. Their sum (BLAKE3 twice) plus Python start-up is what no amount of removing copies
can go below; the gap to bench/cpu_per_gib.py's stage sum is memory traffic and kernel work."""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import blake3  # noqa: E402

from archiver import malloc  # noqa: E402
from archiver.codecs import Codec, _sample, split_planes  # noqa: E402
from archiver.fileio import write_all  # noqa: E402

GiB = 1 << 30
CHUNK = 8 << 20


def per_gib(fn: Callable[[], object], nbytes: int, reps: int = 10, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.thread_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.thread_time() - t) / reps)
    return best / nbytes * GiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, help="a bf16 safetensors file (default: cpu_per_gib's input)")
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the generated input (default 1024)")
    args = ap.parse_args()
    malloc.tune()
    if args.input is None:
        from cpu_per_gib import make_input
        args.input = make_input(args.size_mib)
    import numpy as np

    size = args.input.stat().st_size
    fd = os.open(args.input, os.O_RDONLY)
    start = 8 + int.from_bytes(os.pread(fd, 8, 0), "little")  # safetensors: the data after the header
    at = start + (max(0, size // 2 - CHUNK // 2 - start) & ~1)  # an element boundary of bf16 data
    buf = bytearray(CHUNK)
    got = os.preadv(fd, [buf], at)
    chunk = bytes(buf[:got])
    n = len(chunk) - len(chunk) % 2
    codec = Codec()
    planes = np.empty((2, n // 2), dtype=np.uint8)
    split_planes(chunk, 2, planes)
    comp = codec._compressor(None)  # the encoder's plane setting
    views = [memoryview(planes[0]), memoryview(planes[1])]
    frame = comp.compress(views[1])
    obj = codec.encode(chunk, 2).data
    tmp = Path(tempfile.mkdtemp(prefix="cpu-floor-"))

    def put() -> None:
        p = tmp / "object"
        out = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(out, obj)
            os.fsync(out)
        finally:
            os.close(out)
        p.unlink()

    steps: list[tuple[str, Callable[[], object], int]] = [
        ("read (page cache -> reused buffer)", lambda: os.preadv(fd, [buf], at), 1),
        ("BLAKE3 (address + whole file: x2)", lambda: blake3.blake3(chunk).digest(), 2),
        ("SHA-256 (whole file)", lambda: hashlib.sha256(chunk).digest(), 1),
        ("byte-plane split", lambda: split_planes(chunk, 2, planes), 1),
        ("zstd: both probes + exponent plane", lambda: [comp.compress(_sample(v)) for v in views] + [comp.compress(views[1])], 1),
        ("round trip: decode + compare", lambda: codec._round_trips(frame, views[1]), 1),
        ("object join", lambda: b"".join([bytes(88), views[0], frame]), 1),
        ("write object + fsync", put, 1),
    ]
    total = 0.0
    print(f"{args.input} at byte {at}: CPU-s per GiB, hot cache, best of 5 x 10")
    for name, fn, times in steps:
        v = per_gib(fn, len(chunk)) * times
        total += v
        print(f"  {name:38s} {v:6.3f}")
    print(f"  {'sum':38s} {total:6.3f}   (+ Python start-up: `archiver --version`)")
    os.close(fd)
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
