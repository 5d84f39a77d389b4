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
bench/RESULTS.md.

`--own-packs STORE_DIR`: a third comparison, workers that write their own packs. Each task
(a run of `--batch`-file batches, about an eighth of a worker's share) also appends every
encoded object to its own pack builder (archiver.packs: 16 MiB packs), writes each full
pack and its index to the local store STORE_DIR (put_if_absent: atomic, fsynced) and its
last one at the task's end, and hands back per file only (path, snapshots, digests, stored
size, codec, pack id): no object bytes. Run on threads (each thread its own builder) and on
the process pool; the driver then lists the packs written (the LIST a commit would check).
Used for "Small-file archive: overlapping the commit (branch sfarch)" in bench/RESULTS.md."""
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
from typing import Any, Iterator

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
    for src, small, enc in _read_batch(batch, codec, dirs, policy):
        b3, obj, name = (enc[0], enc[1].data, enc[1].codec) if enc else ("", b"", "")
        out.append((src.path, pipeline._snapshot(small.before), pipeline._snapshot(small.after), b3,
                    hashlib.sha256(small.data).hexdigest(), obj, name))
    return out


def _read_batch(batch: list[Source], codec: Codec, dirs: DirFds, policy: ChunkPolicy) -> Iterator[tuple[Any, ...]]:
    """(source, its read, (blake3, encoded) or None if empty) of each small file of a batch,
    as archive's small-file path reads it (files of the chunker's minimum or more skipped)."""
    for src in batch:
        fd, before = pipeline.open_settled(src, dirs)
        if before.st_size >= policy.cdc_min:
            os.close(fd)
            continue
        small = pipeline.read_small(src, fd, before)
        data = small.data
        yield src, small, ((codec.address(data, 0), codec.encode(data, 0)) if data else None)


def _work_packs(job: tuple[list[list[Source]], str]) -> list[tuple[Any, ...]]:
    """`_work` of several batches, each object appended to this task's own packs, written to
    the store at `job[1]` as they fill and at the end: (path, before, after, blake3, sha256,
    stored size, codec, pack) per file, no object bytes."""
    from archiver import packs
    from archiver.stores import open_store
    batches, url = job
    codec, dirs = Codec(), DirFds()
    store = open_store(url)
    policy = ChunkPolicy()
    out: list[tuple[Any, ...]] = []
    builder = packs.PackBuilder()
    waiting: list[int] = []  # rows of `out` whose pack is the open builder

    def flush() -> None:
        nonlocal builder
        if not len(builder):
            return
        data, index = builder.close()
        store.put_if_absent(f"packs/{index.pack}", data)
        raw = index.to_json()
        store.put_if_absent(f"packindex/{__import__('blake3').blake3(raw).hexdigest()}", raw)
        for i in waiting:
            out[i] = out[i][:7] + (index.pack,)
        waiting.clear()
        builder = packs.PackBuilder()

    for batch in batches:
        for src, small, got in _read_batch(batch, codec, dirs, policy):
            row: tuple[Any, ...]
            if got:
                b3, enc = got
                builder.add(b3, enc.data, len(small.data))
                row = (src.path, pipeline._snapshot(small.before), pipeline._snapshot(small.after), b3,
                       hashlib.sha256(small.data).hexdigest(), len(enc.data), enc.codec, "")
                waiting.append(len(out))
            else:
                row = (src.path, pipeline._snapshot(small.before), pipeline._snapshot(small.after), "",
                       hashlib.sha256(small.data).hexdigest(), 0, "", "")
            out.append(row)
            if builder.full:
                flush()
    flush()
    dirs.close()
    return out


def _own_packs(args: Any, runs: list[list[Source]]) -> None:
    """The --own-packs comparison: threads, then processes, each task writing its packs."""
    import shutil
    from archiver.stores import open_store
    per = max(1, len(runs) // (8 * args.workers))
    jobs_of = lambda url: [(runs[i:i + per], url) for i in range(0, len(runs), per)]  # noqa: E731
    for mode in ("threads", "processes"):
        url = str(args.own_packs / mode)
        shutil.rmtree(url, ignore_errors=True)
        open_store(url, create=True)
        jobs = jobs_of(url)
        c0, t0 = _cpu(resource.RUSAGE_SELF), time.monotonic()
        up = workers_up = workers = 0.0
        if mode == "threads":
            with ThreadPoolExecutor(args.workers) as tpool:
                got = [r for rs in tpool.map(_work_packs, jobs) for r in rs]
        else:
            with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("forkserver")) as ppool:
                started = time.monotonic()
                list(ppool.map(len, [[]] * args.workers))
                up = time.monotonic() - started
                pids = list(ppool._processes)  # noqa: SLF001 - a probe
                workers_up = sum(_proc_cpu(pid) for pid in pids)
                got = [r for rs in ppool.map(_work_packs, jobs) for r in rs]
                workers = sum(_proc_cpu(pid) for pid in pids)
        listed = len(list(open_store(url).list("packs/")))
        wall = time.monotonic() - t0
        driver = _cpu(resource.RUSAGE_SELF) - c0
        print(f"own packs, {mode}: wall {wall:.2f} s (start-up {up:.2f}), CPU {driver + workers:.2f} s "
              f"(driver {driver:.2f}, workers {workers:.2f} of which their start-up {workers_up:.2f}); "
              f"{len(got)} files, {len(jobs)} tasks, {listed} packs; hand-off "
              f"{len(pickle.dumps(got)) / 1e6:.1f} MB pickled")
        shutil.rmtree(url, ignore_errors=True)


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
    ap.add_argument("--own-packs", type=Path, metavar="STORE_DIR")
    args = ap.parse_args()
    files = [s for s in scan([args.src]) if not s.is_dir and not s.is_link]
    todo = sorted(files, key=lambda s: (-s.size, s.path))
    runs = [todo[i:i + args.batch] for i in range(0, len(todo), args.batch)]
    print(f"{len(files)} files in {len(runs)} runs of up to {args.batch}")
    if args.own_packs is not None:
        _own_packs(args, runs)
        return 0

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
