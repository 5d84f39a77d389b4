"""In-process CPU of one archive of a directory, split by thread, optionally with cProfile.

    PYTHONPATH=. python bench/prof_smallfiles.py SRC [--cprofile OUT.prof] [--top N]

Archives SRC into a fresh local store (a temporary directory) with `api.archive` and prints
the manifest id, wall and CPU seconds (getrusage of the process: every thread), and CPU
seconds per thread family (`file_N` the local executor's tasks, `MainThread` scan, files
cache and commit, `trees` the commit's tree writers), sampled from /proc/self/task every
50 ms (Linux). With --cprofile, every thread runs under cProfile with a CPU-time clock
(time.thread_time: waits do not count) and the merged profile is written to OUT.prof and
its top entries printed; cProfile roughly doubles the CPU of small Python calls, so read
its numbers as proportions. Used for "Per-file archive overhead of small files" in
bench/RESULTS.md, on the tree of bench/smallfiles.py's make_tree."""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path


def thread_cpu(names: dict[int, str]) -> dict[str, tuple[str, float]]:
    """CPU seconds of each thread of this process so far, by thread id, with its family name."""
    live = {t.native_id: t.name.rstrip("0123456789_") for t in threading.enumerate()}
    names.update(live)
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (names.get(int(tid), "other"), (int(fields[11]) + int(fields[12])) / tick)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--cprofile", type=Path)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    from archiver import api
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_profile(*_a: object) -> None:  # runs once in each new thread, then cProfile takes over
        p = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(p)
        p.enable()

    with tempfile.TemporaryDirectory() as td:
        os.environ["ARCHIVER_HOME"] = f"{td}/home"
        repo = api.open_repository(f"{td}/store", f"{td}/catalog.db", create=True)
        seen: dict[str, tuple[str, float]] = {}
        names: dict[int, str] = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                seen.update(thread_cpu(names))

        sampler = threading.Thread(target=sample, name="sampler", daemon=True)
        sampler.start()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        if args.cprofile:
            threading.setprofile(start_profile)
            start_profile()
        try:
            res = api.archive([str(args.src)], name="bench", repo=repo, resume=False)
        finally:
            if args.cprofile:
                threading.setprofile(None)
                for p in profiles:
                    p.disable()
        r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
        stop.set()
        sampler.join()
        repo.close()
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    by: dict[str, float] = {}
    for name, c in seen.values():
        by[name] = by.get(name, 0.0) + c
    print(f"id {res.id} files {res.files} chunks {res.chunks}")
    print(f"wall {wall:.2f} s, CPU {cpu:.2f} s; CPU s by thread: "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])))
    if args.cprofile:
        st = pstats.Stats(profiles[0])
        for p in profiles[1:]:
            st.add(p)
        st.dump_stats(str(args.cprofile))
        st.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
