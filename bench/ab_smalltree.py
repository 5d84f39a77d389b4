"""Interleaved A/B of `archiver archive` of a directory tree (e.g. the small-file tree of
bench/smallfiles.py) from several checkouts: is a change to the archive's wall time real?

    .venv/bin/python bench/ab_smalltree.py --src /work/sf/t/tree [--rounds 4] [--processes 2] TREE [TREE ...]

Each TREE is a checkout (e.g. a base from `git archive BASE | tar -x -C DIR`), put first on
PYTHONPATH of its runs, which run in it (`python -m` puts the working directory first on
sys.path, before PYTHONPATH), and compiled to bytecode once. Every round archives SRC once per tree
into a fresh store, catalog and home (no files cache), the order reversed every other round.
Per run: wall, CPU (user + system from wait4) and `other` (CPU-s the rest of the machine used
meanwhile, `measure.run`): medians over all runs and over those with other < 0.15 CPU-s."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import compile_bytecode, run  # noqa: E402

DISTURBED = 0.15  # CPU-s other processes used during a run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--processes", default="2")
    ap.add_argument("--work", type=Path, default=None, help="where the stores go (default: a temp dir)")
    ap.add_argument("trees", nargs="+", type=Path)
    a = ap.parse_args()
    trees = [str(t.resolve()) for t in a.trees]
    with tempfile.TemporaryDirectory(prefix="ab-smalltree-", dir=a.work) as td:
        root = Path(td)
        for t in trees:
            compile_bytecode(dict(os.environ, PYTHONPATH=t), cwd=t)  # its own tree, not the one run from
        runs: dict[str, list] = {t: [] for t in trees}
        for r in range(a.rounds):
            for t in trees if r % 2 == 0 else trees[::-1]:
                for d in ("home", "store"):
                    shutil.rmtree(root / d, ignore_errors=True)
                (root / "store.db").unlink(missing_ok=True)
                m = run([sys.executable, "-m", "archiver.cli", "--store", root / "store", "--catalog",
                         root / "store.db", "archive", a.src, "--name", "ab", "--processes", a.processes, "--json"],
                        env=dict(os.environ, PYTHONPATH=t, HOME=str(root / "home"), ARCHIVER_HOME=str(root / "home")),
                        cwd=t)  # `-m` puts the working directory before PYTHONPATH: run from the tree itself
                js = json.loads(m.stdout)
                runs[t].append(m)
                print(f"round {r} {t}: wall {m.wall:.3f} s, CPU {m.cpu:.3f} s, other {m.other_cpu:.2f}, "
                      f"load {m.load1:.2f} id {js['id'][:16]}", flush=True)
        for t, ms in runs.items():
            quiet = [m for m in ms if m.other_cpu < DISTURBED]
            line = (f"{t}: median wall {statistics.median(m.wall for m in ms):.3f} s, CPU "
                    f"{statistics.median(m.cpu for m in ms):.3f} s; undisturbed {len(quiet)}/{len(ms)}")
            if quiet:
                line += (f": wall {statistics.median(m.wall for m in quiet):.3f} s, "
                         f"CPU {statistics.median(m.cpu for m in quiet):.3f} s")
            print(line)


if __name__ == "__main__":
    main()
