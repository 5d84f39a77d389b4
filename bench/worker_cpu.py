"""CPU seconds of the worker phase's work, measured in one process, one task after another (issue
15 item 6): what a loaded machine's wall clock cannot show (branch sfworkers).

    PYTHONPATH=. python bench/worker_cpu.py TREE --work DIR [--rounds 3] [--processes 2]

Scans TREE, groups its small files into tasks as `fanout.archive_files` does
(`procfiles.tasks_of`), then per variant, interleaved round by round, archives every task
with `procfiles.run_job` into a fresh store under DIR (the catalog created, empty) and
prints the CPU seconds of this process (user+sys, `resource.getrusage`) for the tasks, and
the CPU of pickling each task's job in and its result out (dumps and loads, as the pool's
queues do). Variants: `per-task dirs` (each task reaches and checks its directories again:
`run_job(job)`) and `held dirs` (one `scan.DirFds` for all tasks, as a worker now holds
them: `run_job(job, dirs=...)`), and with `--task-files N` the same with fixed tasks of N
files (the tasks before guided sizing)."""
from __future__ import annotations

import argparse
import pickle
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from archiver import api, fanout, pipeline, procfiles
from archiver.scan import DirFds, scan


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _jobs(tree: str, settings: Any, processes: int, per_task: int | None) -> list[procfiles.SmallJob]:
    files = sorted((s for s in scan([tree]) if not s.is_dir and not s.is_link), key=lambda s: (-s.size, s.path))
    runs = [r for r in fanout.local_batches(files) if r[0].size < fanout.BATCH_FILE_BELOW]
    if per_task:
        groups = [runs[i:i + max(1, per_task // 32)] for i in range(0, len(runs), max(1, per_task // 32))]
    else:
        groups = procfiles.tasks_of(runs, processes=processes)
    return [procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, g) for g in groups]


def _round(tree: str, work: Path, name: str, held: bool, processes: int, per_task: int | None) -> dict[str, float]:
    store = work / name
    shutil.rmtree(store, ignore_errors=True)
    for p in work.glob(f"{name}.db*"):
        p.unlink()
    settings = api.open_repository(str(store), str(work / f"{name}.db"), create=True).settings
    jobs = _jobs(tree, settings, processes, per_task)
    procfiles._repository.cache_clear()
    dirs = DirFds() if held else None
    pick = 0.0
    t0, c0 = time.monotonic(), _cpu()
    for job in jobs:
        c = _cpu()
        job = pickle.loads(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        pick += _cpu() - c
        done = procfiles.run_job(job, dirs=dirs)
        c = _cpu()
        pickle.loads(pickle.dumps(done, protocol=pickle.HIGHEST_PROTOCOL))
        pick += _cpu() - c
    out = {"tasks": len(jobs), "cpu": _cpu() - c0 - pick, "pickling": pick, "wall": time.monotonic() - t0}
    if dirs is not None:
        dirs.close()
    procfiles._repository(settings).close()
    procfiles._repository.cache_clear()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree")
    ap.add_argument("--work", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--task-files", type=int, default=0)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    variants = [("per-task dirs", False, None), ("held dirs", True, None)]
    if a.task_files:
        variants += [(f"per-task dirs, tasks of {a.task_files}", False, a.task_files),
                     (f"held dirs, tasks of {a.task_files}", True, a.task_files)]
    for r in range(a.rounds):
        for label, held, per_task in variants:
            got = _round(a.tree, work, f"v{variants.index((label, held, per_task))}", held, a.processes, per_task)
            print(f"round {r + 1} {label:34} tasks {got['tasks']:3.0f}  task CPU {got['cpu']:.3f} s  "
                  f"pickling CPU {got['pickling']:.3f} s  wall {got['wall']:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
