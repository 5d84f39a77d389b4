"""Would chunk encoding in worker PROCESSES (no shared GIL, chunks in shared memory) shorten
the wall of a big-file archive on this machine? A probe for issue 12 item 6, not used by
archiver itself.

    flock /work/bench.lock .venv/bin/python bench/procs_probe.py --input FILE [--rounds 4] \
        [--shapes threads,procs1x4,procs2x6,borg]

Every round runs each shape once on a private copy of FILE (its own inode), each into a fresh
store, in an order that reverses every other round; each run is a fresh process timed by
`measure.run` (wall; CPU = user + system of the command and every child it reaped, from
wait4; `other` = CPU the rest of the machine used meanwhile: >= 0.15 CPU-s is "disturbed").

- `threads`: the real CLI, `archiver archive FILE --name x --json`, as bench/ab_archive.py
  runs it (fresh store and ARCHIVER_HOME): the baseline of the same batch.
- `procsWxD`: this script's `--child` mode. A driver plans the file's chunks exactly as the
  archive does (formats.detect_regions, chunking.plan; a CDC span through chunking.cdc_stream),
  reads each chunk with `readinto` into one slot of a ring of D `multiprocessing.shared_memory`
  segments, hands the slot to a pool of W spawned worker processes, then feeds the chunk to the
  whole-file SHA-256 and BLAKE3 (digests.FileDigest) on the reading thread while a worker encodes
  it. A worker does the per-chunk work of the real archive through archiver's own functions:
  BLAKE3 of the chunk (Codec.address), Codec.encode_parts (byte-plane split, zstd, round-trip
  check) and the durable write LocalStore.put_parts_if_absent(layout.chunk(h)) into a fresh
  store; the slot is free again once the worker answers. A chunk whose object is small enough for
  a pack (packs.is_small) is encoded and counted but not written (the CLI packs it: one header
  chunk here). Not done: the catalog, the manifest, the file map, signatures (the CLI's commit,
  a few ms here). The child prints its pool start-up (spawn + import + attach, up to every worker
  having answered once), its body (first read to last answer) and its getrusage(SELF) +
  getrusage(CHILDREN) after the pool is shut down (both workers reaped), the total stored size
  and its chunk keys, which the parent compares with the CLI's store.
- `procsWxDf`: the same, the pool forked (not spawned) right after the driver imported the
  codec and store modules, before any other thread runs: the cheapest start-up a pool can have
  (a forkserver with those modules preloaded would sit between the two). `procsWxDfn`: forked,
  and no whole-file hashes: not a valid archive, an upper bound of what the driver's serial
  SHA-256 + BLAKE3 cost the wall.
- `borg`: `borg create -C zstd,3` into a fresh repository (as bench/cpu_per_gib.py runs it).

Prints every run, then per shape the medians (all runs and undisturbed ones) of wall, CPU and
cores busy (CPU / wall), the child's start-up and body, and the ratios to borg's median wall.
Linux only."""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DISTURBED = 0.15  # CPU-s other processes used during a run (as bench/ab_archive.py)

_W: dict[str, Any] = {}  # per worker process: its codec, store and attached slots (probe only)


# -- the worker process -------------------------------------------------------------------

def _attach(names: list[str], store_root: str) -> None:
    """Pool initializer: attach the ring's segments (not registered with the resource tracker:
    the driver owns and unlinks them) and open the store and codec once per worker."""
    from multiprocessing import resource_tracker

    from archiver.codecs import Codec
    from archiver.stores.local import LocalStore

    register = resource_tracker.register
    resource_tracker.register = lambda *a, **k: None  # type: ignore[assignment]
    try:
        _W["slots"] = [shared_memory.SharedMemory(name=n) for n in names]
    finally:
        resource_tracker.register = register  # type: ignore[assignment]
    _W["codec"] = Codec()
    _W["store"] = LocalStore(Path(store_root))


def _ping(_: int) -> int:
    """A no-op task: the pool answering W of them marks it as started (each submit spawns a
    worker, so all W are started; the last may still be importing when the body begins)."""
    return os.getpid()


def _encode(slot: int, n: int, width: int) -> tuple[int, str, int, str, bool]:
    """Per-chunk work of the archive on slot `slot`'s first `n` bytes: (slot, BLAKE3, stored
    size, codec, written)."""
    from archiver import layout, packs

    mv = _W["slots"][slot].buf[:n]
    try:
        codec, store = _W["codec"], _W["store"]
        h = codec.address(mv, width)
        parts = codec.encode_parts(mv, width)
        if packs.is_small(parts.size):
            return slot, h, parts.size, parts.codec, False
        written = store.put_parts_if_absent(layout.chunk(h), parts.parts)
        return slot, h, parts.size, parts.codec, written
    finally:
        mv.release()


# -- the driver (child mode) -------------------------------------------------------------

def _readinto(fd: int, buf: memoryview, offset: int) -> None:
    got = 0
    while got < len(buf):
        k = os.preadv(fd, [buf[got:]], offset + got)
        if not k:
            raise SystemExit(f"input ended at byte {offset + got}")
        got += k


def child(path: Path, store: Path, workers: int, depth: int, start: str = "spawn",
          file_hash: bool = True) -> dict[str, Any]:
    """The `procs` shape: see the module docstring. `start`: the pool's start method;
    `file_hash=False`: skip the whole-file hashes (an upper bound, not a valid archive)."""
    from archiver.chunking import ChunkPolicy, cdc_stream, plan
    from archiver.digests import FileDigest
    from archiver.formats import detect_regions

    t0 = time.perf_counter()
    if start == "fork":  # the workers inherit the driver's imports (no other thread runs yet)
        import archiver.codecs, archiver.layout, archiver.packs, archiver.stores.local  # noqa: F401, E401
    policy = ChunkPolicy()
    slot_size = max(policy.max_chunk, policy.cdc_max)
    ring = [shared_memory.SharedMemory(create=True, size=slot_size) for _ in range(depth)]
    try:
        pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(start),
                                      initializer=_attach, initargs=([s.name for s in ring], str(store)))
        with pool:
            list(pool.map(_ping, range(workers)))
            t_started = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                fmt = detect_regions(f, size)
                f.seek(0)
                spans = list(plan(fmt[1] if fmt else [], size, policy))
                digest = FileDigest()
                free = list(range(depth))
                busy: set[cf.Future] = set()
                results: list[tuple[int, str, int, str, bool]] = []
                pieces = 0

                def take() -> int:
                    nonlocal busy
                    while not free:
                        done, busy = cf.wait(busy, return_when=cf.FIRST_COMPLETED)
                        for fu in done:
                            r = fu.result()
                            results.append(r)
                            free.append(r[0])
                    return free.pop()

                def hand(slot: int, n: int, width: int) -> None:
                    nonlocal pieces
                    busy.add(pool.submit(_encode, slot, n, width))
                    mv = ring[slot].buf[:n]
                    if file_hash:
                        digest.update(mv)  # while a worker encodes the same chunk
                    mv.release()
                    pieces += 1

                for sp in spans:
                    if sp.cdc:
                        f.seek(sp.start)
                        for rc in cdc_stream(f, sp.start, sp.end, policy):
                            slot = take()
                            ring[slot].buf[:len(rc.data)] = rc.data
                            hand(slot, len(rc.data), 0)
                        continue
                    n = sp.end - sp.start
                    slot = take()
                    mv = ring[slot].buf[:n]
                    _readinto(f.fileno(), mv, sp.start)
                    mv.release()
                    hand(slot, n, sp.width)
                for fu in cf.as_completed(busy):
                    results.append(fu.result())
                sums = (digest.sha256, digest.blake3)
            t_body = time.perf_counter()
    finally:
        for s in ring:
            s.close()
            s.unlink()
    t_end = time.perf_counter()
    ru_s, ru_c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"chunks": pieces, "stored": sum(r[2] for r in results), "written": sum(r[4] for r in results),
            "keys": sorted(r[1] for r in results if r[4]), "sha256": sums[0], "blake3": sums[1],
            "startup_s": t_started - t0, "body_s": t_body - t_started, "inside_s": t_end - t0,
            "cpu_self": ru_s.ru_utime + ru_s.ru_stime, "cpu_children": ru_c.ru_utime + ru_c.ru_stime}


# -- the parent: interleaved rounds ---------------------------------------------------------

def _chunk_keys(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "chunks").glob("*/*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--shapes", default="threads,procs1x4,procs2x4,procs2x8,borg",
                    help="comma-separated: threads, procsWxD (W spawned workers, ring depth D; procsWxDf: "
                         "forked after the driver's imports, the cheapest start-up; a trailing n: no whole-file "
                         "hashes, an upper bound only), borg")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, default=6, help=argparse.SUPPRESS)
    ap.add_argument("--start", default="spawn", choices=("spawn", "fork"), help=argparse.SUPPRESS)
    ap.add_argument("--no-file-hash", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.input, a.store, a.workers, a.depth, a.start, not a.no_file_hash)))
        return

    sys.path.insert(0, str(HERE))
    from measure import compile_bytecode, run, warm
    from tools import Borg

    shapes = a.shapes.split(",")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    compile_bytecode(env, cwd=str(REPO))
    with tempfile.TemporaryDirectory(prefix="procs-probe-") as td:
        root = Path(td)
        src = root / "src"
        src.mkdir()
        shutil.copy2(a.input, src / a.input.name)  # an inode of its own (bench/ab_archive.py)
        inp = src / a.input.name
        warm([inp])
        runs: dict[str, list[tuple[Any, dict[str, Any]]]] = {s: [] for s in shapes}
        ref_keys: list[str] | None = None
        for r in range(a.rounds):
            for s in shapes if r % 2 == 0 else shapes[::-1]:
                work = root / "work"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                info: dict[str, Any] = {}
                if s == "threads":
                    m = run([sys.executable, "-m", "archiver.cli", "archive", inp, "--name", "x", "--json"],
                            env=dict(env, ARCHIVER_HOME=str(work)), cwd=work)
                    js = json.loads(m.stdout)
                    keys = _chunk_keys(work / "store")
                    ref_keys = ref_keys or keys
                    info = {"stored": js["bytes_stored"], "keys_same": keys == ref_keys, "nkeys": len(keys)}
                elif s == "borg":
                    b = Borg(work)
                    m = b.archive(src)
                    info = {"stored": b.stored()}
                else:
                    w, d = (int(x) for x in s.removeprefix("procs").rstrip("fn").split("x"))
                    m = run([sys.executable, str(HERE / "procs_probe.py"), "--child", "--input", inp,
                             "--store", work / "store", "--workers", str(w), "--depth", str(d),
                             "--start", "fork" if "f" in s else "spawn", *(["--no-file-hash"] if s.endswith("n") else [])],
                            env=env, cwd=work)
                    info = json.loads(m.stdout)
                    keys = info.pop("keys")
                    info["nkeys"] = len(keys)
                    info["keys_same"] = None if ref_keys is None else keys == ref_keys
                runs[s].append((m, info))
                extra = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items()
                         if k not in ("sha256", "blake3")}
                print(f"round {r} {s}: wall {m.wall:.3f} s, CPU {m.cpu:.3f} s, busy {m.cpu / m.wall:.2f}, "
                      f"other {m.other_cpu:.2f} {extra}", flush=True)
        shutil.rmtree(root / "work", ignore_errors=True)

    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else float("nan")

    borg = med([m.wall for m, _ in runs.get("borg", [])])
    print(f"\n| shape | wall all | CPU | cores busy | undisturbed | wall undist. | startup | body | / borg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s, ms in runs.items():
        quiet = [m for m, _ in ms if m.other_cpu < DISTURBED]
        wall, qwall = med([m.wall for m, _ in ms]), med([m.wall for m in quiet])
        cpu = med([m.cpu for m, _ in ms])
        busy = med([m.cpu / m.wall for m, _ in ms])
        st = med([i["startup_s"] for _, i in ms if "startup_s" in i])
        body = med([i["body_s"] for _, i in ms if "body_s" in i])
        print(f"| {s} | {wall:.3f} | {cpu:.3f} | {busy:.2f} | {len(quiet)}/{len(ms)} | {qwall:.3f} | "
              f"{st:.3f} | {body:.3f} | {wall / borg:.3f} |")


if __name__ == "__main__":
    main()
