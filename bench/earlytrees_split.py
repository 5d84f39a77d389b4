"""Where the early trees' CPU goes (archiver/earlytrees.py), for one in-process archive.

    PYTHONPATH=. python bench/earlytrees_split.py SRC [--processes 2]

Archives SRC into a fresh local store (a temporary directory, a fresh ARCHIVER_HOME) and
prints the thread CPU (time.thread_time: waits do not count) of the builder thread in all,
and summed over the calls of each piece it runs (`tree_bytes`, `manifest_id`, `check_tree`,
`EarlyTrees._make` which holds the three) and of the writers (`Repository.put_tree_made` per
tree, `put_trees_made` per batch where this checkout has it). Plain timers, no cProfile
(which roughly doubles small Python calls). Used for "Early trees: the split, and batched
durability (branch sftrees)" in bench/RESULTS.md."""
from __future__ import annotations

import argparse
import collections
import os
import tempfile
import threading
import time
from typing import Any


def _timed(owner: Any, name: str, key: str, acc: collections.Counter, calls: collections.Counter,
           lock: threading.Lock) -> None:
    """Replace owner.name by a wrapper adding its thread CPU to acc[key]."""
    real = getattr(owner, name)

    def wrapper(*a: Any, **k: Any) -> Any:
        t = time.thread_time()
        try:
            return real(*a, **k)
        finally:
            d = time.thread_time() - t
            with lock:
                acc[key] += d
                calls[key] += 1
    setattr(owner, name, wrapper)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    from archiver import api, earlytrees, repository
    acc: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    lock = threading.Lock()
    for name in ("tree_bytes", "manifest_id", "check_tree"):
        _timed(earlytrees, name, f"builder: {name}", acc, calls, lock)
    _timed(earlytrees.EarlyTrees, "_make", "builder: _make (holds the three above)", acc, calls, lock)
    _timed(earlytrees.EarlyTrees, "_run", "builder thread in all", acc, calls, lock)
    _timed(repository.Repository, "put_tree_made", "writers: put_tree_made (per tree)", acc, calls, lock)
    if hasattr(repository.Repository, "put_trees_made"):
        _timed(repository.Repository, "put_trees_made", "writers: put_trees_made (per batch)", acc, calls, lock)
    with tempfile.TemporaryDirectory() as td:
        os.environ["ARCHIVER_HOME"] = f"{td}/home"
        repo = api.open_repository(f"{td}/store", f"{td}/catalog.db", create=True)
        res = api.archive([args.src], name="bench", repo=repo, resume=False, processes=args.processes)
        repo.close()
    print(f"id {res.id}")
    for key in sorted(acc):
        print(f"{key:45s} {acc[key]:.3f} CPU-s  calls {calls[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
