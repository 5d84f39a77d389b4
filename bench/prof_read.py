"""In-process CPU of a deep verify or a restore of one archive, split by thread, optionally with cProfile.

    PYTHONPATH=. python bench/prof_read.py verify|restore --store S [--catalog C] --id ID
                                           [--dest DIR] [--cprofile OUT.prof] [--top N]

The read-side twin of bench/prof_smallfiles.py: runs `api.verify(deep=True)` or
`api.restore` of archive ID from store S (archived once beforehand, e.g. of the tree of
bench/smallfiles.py's make_tree) and prints wall and CPU seconds (getrusage of the process:
every thread, user and sys apart) and CPU seconds per thread family (`verify-files`,
`restore-files`: the per-file tasks; `MainThread`: manifest, plan, renames), sampled from
/proc/self/task every 50 ms (Linux). A restore goes into DEST (a fresh temporary directory
by default), removed afterwards. With --cprofile, every thread runs under cProfile with a
CPU-time clock (time.thread_time: waits do not count), merged into OUT.prof, and its top
entries printed; cProfile roughly doubles the CPU of small Python calls, so read its
numbers as proportions. Used for "Deep verify and restore of small files: per-pack reads"
in bench/RESULTS.md."""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from threadprof import Measured  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("verify", "restore"))
    ap.add_argument("--store", required=True)
    ap.add_argument("--catalog")
    ap.add_argument("--id", required=True)
    ap.add_argument("--dest", type=Path)
    ap.add_argument("--cprofile", type=Path)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    from archiver import api
    scratch = tempfile.mkdtemp(prefix="prof-read-")
    dest = args.dest or Path(scratch) / "dest"
    repo = api.open_repository(args.store, args.catalog, read_only=True)
    with Measured(args.cprofile is not None) as m:
        if args.command == "verify":
            rep = api.verify([args.id], deep=True, repo=repo)
            summary = f"ok {rep.ok} problems {len(rep.problems)} chunks read {rep.chunks_read} files {rep.files_hashed}"
        else:
            res = api.restore(args.id, dest, repo=repo)
            summary = f"ok {res.ok} problems {len(res.problems)} files {res.files} bytes {res.bytes}"
    repo.close()
    shutil.rmtree(scratch, ignore_errors=True)
    if args.dest is None:
        shutil.rmtree(dest, ignore_errors=True)
    print(summary)
    print(m.summary())
    if args.cprofile:
        m.dump_profile(args.cprofile, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
