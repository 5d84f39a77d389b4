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
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from smallfiles import change_tree  # noqa: E402
from threadprof import Measured  # noqa: E402


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
    profiles: list = []  # every round's, merged

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
            with Measured(args.cprofile is not None, profiles) as m:
                res = api.archive([str(args.src)], name="bench", repo=repo, resume=False,
                                  trust_verified_within=trust)
            first = res
            print(f"id {res.id} files {res.files} chunks {res.chunks}")
            print(m.summary())
        repo.close()
    if args.cprofile:
        m.dump_profile(args.cprofile, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
