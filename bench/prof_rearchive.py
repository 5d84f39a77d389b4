"""In-process CPU of a re-archive of a directory (issue 15: unchanged and 1%-changed), split
by thread, optionally with cProfile.

    PYTHONPATH=. python bench/prof_rearchive.py SRC [--change 0.01] [--trust] [--cprofile OUT.prof] [--top N]

Archives SRC into a fresh local store (not measured), optionally rewrites a fraction of its
`f*.bin` files (bench/smallfiles.py's change_tree: give it a COPY of the shared tree), and
then measures one more `api.archive` of it: the files cache reuses unchanged files and
proves their chunks (read back by default; with --trust, after a deep verify, trusted within
`--trust-verified-within 86400`). Prints wall and CPU seconds (getrusage: every thread) and
CPU per thread family as bench/prof_smallfiles.py does; --cprofile as there."""
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from prof_smallfiles import thread_cpu  # noqa: E402
from smallfiles import change_tree  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--change", type=float, default=0.0, help="fraction of f*.bin files rewritten before")
    ap.add_argument("--trust", action="store_true", help="deep verify first, then trust it")
    ap.add_argument("--rounds", type=int, default=1, help="re-archives measured one after the other")
    ap.add_argument("--cprofile", type=Path)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    from archiver import api
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_profile(*_a: object) -> None:
        p = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(p)
        p.enable()

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as td:
        os.environ["ARCHIVER_HOME"] = f"{td}/home"
        repo = api.open_repository(f"{td}/store", f"{td}/catalog.db", create=True)
        first = api.archive([str(args.src)], name="bench", repo=repo, resume=False)
        for rnd in range(args.rounds):
            if args.change:
                print(f"changed {change_tree(args.src, args.change, int(time.time()) + rnd)} files")
            trust = None
            if args.trust:
                api.verify([first.id], deep=True, repo=repo)
                trust = 86400.0
            seen: dict[str, tuple[str, float]] = {}
            names: dict[int, str] = {}
            base = {k: v for k, v in thread_cpu(names).items()}
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
                res = api.archive([str(args.src)], name="bench", repo=repo, resume=False,
                                  trust_verified_within=trust)
            finally:
                if args.cprofile:
                    threading.setprofile(None)
                    for p in profiles:
                        p.disable()
            r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
            stop.set()
            sampler.join()
            seen.update(thread_cpu(names))
            first = res
            cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
            by: dict[str, float] = {}
            for tid, (name, c) in seen.items():
                by[name] = by.get(name, 0.0) + c - base.get(tid, (name, 0.0))[1]
            print(f"id {res.id} files {res.files} chunks {res.chunks}")
            print(f"wall {wall:.2f} s, CPU {cpu:.2f} s; CPU s by thread: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]) if v >= 0.01))
        repo.close()
    if args.cprofile:
        st = pstats.Stats(profiles[0])
        for p in profiles[1:]:
            st.add(p)
        st.dump_stats(str(args.cprofile))
        st.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
