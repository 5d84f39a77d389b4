"""Would a process pool pay for small files on this machine? The per-file work of a first
archive, on threads (as archive runs it) vs on a process pool that hands each file's results
back to the driver.

    PYTHONPATH=. python bench/procpool_probe.py TREE [--workers 2] [--batch 32]

Both modes scan TREE, then for runs of `--batch` small files (fanout.local_batches' order)
do what a small file costs before the driver's packing and recording: open (scan.open_file,
relative to the held directory), settle, read whole with the before/after fstats
(pipeline.read_small), BLAKE3, SHA-256, and the codec's encoding with its round-trip check.
`threads`: `--workers` threads of this process (the GIL shared, as today). `processes`: a
concurrent.futures process pool of `--workers` ('forkserver' context: never a plain fork of a
threaded process) that returns, per file, the path, both snapshots, both digests and the
encoded object (what the driver would need to dedup, pack and record); the driver unpickles
it. Prints wall and CPU seconds of each mode (getrusage of this process plus, for the pool,
of its workers from /proc), and the bytes and CPU the hand-off cost.
Used for "Small-file archive: lean per-file path and batched catalog hints" in
bench/RESULTS.md."""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import pickle
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from archiver import pipeline
from archiver.chunking import ChunkPolicy
from archiver.codecs import Codec
from archiver.scan import DirFds, Source, scan

_STATE: dict[str, Any] = {}  # per worker process: its codec and held directories (probe only)


def _work(batch: list[Source]) -> list[tuple[Any, ...]]:
    """Each small file of a batch: (path, before, after, blake3, sha256, encoded object, codec)."""
    codec, dirs = _STATE.setdefault("codec", Codec()), _STATE.setdefault("dirs", DirFds())
    policy = ChunkPolicy()
    out = []
    for src in batch:
        fd, before = pipeline.open_settled(src, dirs)
        if before.st_size >= policy.cdc_min:
            os.close(fd)
            continue
        small = pipeline.read_small(src, fd, before)
        data = small.data
        if data:
            b3 = codec.address(data, 0)
            enc = codec.encode(data, 0)
            obj, name = enc.data, enc.codec
        else:
            b3, obj, name = "", b"", ""
        out.append((src.path, pipeline._snapshot(small.before), pipeline._snapshot(small.after), b3,
                    hashlib.sha256(data).hexdigest(), obj, name))
    return out


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user+sys) of process `pid` so far, from /proc (Linux): the forkserver's
    workers are not this process's children, so RUSAGE_CHILDREN never sees them."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    files = [s for s in scan([args.src]) if not s.is_dir and not s.is_link]
    todo = sorted(files, key=lambda s: (-s.size, s.path))
    runs = [todo[i:i + args.batch] for i in range(0, len(todo), args.batch)]
    print(f"{len(files)} files in {len(runs)} runs of up to {args.batch}")

    c0, t0 = _cpu(resource.RUSAGE_SELF), time.monotonic()
    with ThreadPoolExecutor(args.workers) as pool:
        got = [r for rs in pool.map(_work, runs) for r in rs]
    print(f"threads:   wall {time.monotonic() - t0:.2f} s, CPU {_cpu(resource.RUSAGE_SELF) - c0:.2f} s "
          f"({len(got)} files)")

    ctx = multiprocessing.get_context("forkserver")
    c0, t0 = _cpu(resource.RUSAGE_SELF), time.monotonic()
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        started = time.monotonic()
        list(pool.map(len, [[]] * args.workers))  # the workers are up (imports done)
        up = time.monotonic() - started
        pids = list(pool._processes)  # noqa: SLF001 - a probe
        workers_up = sum(_proc_cpu(pid) for pid in pids)
        got = [r for rs in pool.map(_work, runs) for r in rs]
        workers = sum(_proc_cpu(pid) for pid in pids)
    wall = time.monotonic() - t0
    driver = _cpu(resource.RUSAGE_SELF) - c0
    print(f"processes: wall {wall:.2f} s (start-up {up:.2f}), CPU {driver + workers:.2f} s "
          f"(driver {driver:.2f}, workers {workers:.2f} of which their start-up {workers_up:.2f}) "
          f"({len(got)} files)")
    blobs = [pickle.dumps(b) for b in [got[i:i + args.batch] for i in range(0, len(got), args.batch)]]
    c0 = _cpu(resource.RUSAGE_SELF)
    for b in blobs:
        pickle.loads(b)
    print(f"hand-off: {sum(map(len, blobs)) / 1e6:.1f} MB pickled; unpickling it all {_cpu(resource.RUSAGE_SELF) - c0:.3f} "
          f"CPU-s on the driver")
    return 0


if __name__ == "__main__":
    sys.exit(main())
