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
bench/RESULTS.md, on the tree of bench/smallfiles.py's make_tree. Also prints the serial
tail: wall seconds from the end of the file tasks (fanout.archive_files returning) to the
end of the archive (entries, commit, files cache), the part the sfarch branch overlapped."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from threadprof import Measured  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--cprofile", type=Path)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--processes", type=int, default=None,
                    help="worker processes for the small files (archiver.procfiles; default auto, 0 threads only)")
    args = ap.parse_args()
    import time
    from archiver import api, fanout
    files_end: list[float] = []
    archive_files = fanout.archive_files

    def timed(*a, **k):  # type: ignore[no-untyped-def]
        try:
            return archive_files(*a, **k)
        finally:
            files_end.append(time.perf_counter())
    fanout.archive_files = timed
    with tempfile.TemporaryDirectory() as td:
        os.environ["ARCHIVER_HOME"] = f"{td}/home"
        repo = api.open_repository(f"{td}/store", f"{td}/catalog.db", create=True)
        import resource
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        with Measured(args.cprofile is not None) as m:
            res = api.archive([str(args.src)], name="bench", repo=repo, resume=False,
                              processes=args.processes)
            tail = time.perf_counter() - files_end[-1]
        repo.close()
    print(f"id {res.id} files {res.files} chunks {res.chunks} on worker processes {res.files_by_processes}")
    print(m.summary())
    print(f"serial tail (after the file tasks) {tail:.3f} s wall")
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    children = done.ru_utime + done.ru_stime - kids.ru_utime - kids.ru_stime
    if children:  # the fork server and its workers (archiver.procfiles), waited for at the run's end
        print(f"child processes (not in the CPU above): {children:.2f} CPU-s")
    if args.cprofile:
        m.dump_profile(args.cprofile, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
