"""Interleaved A/B of what the reads right after an archive cost: each tree archives FILE into
a fresh store, then runs `verify --deep` and `restore` of it; prints the two read commands'
CPU (user + system, wait4) and wall. Why: objects written with O_DIRECT (archiver/directio.py)
are not in the page cache, so a read right after goes to the disk (bench/RESULTS.md, branch
bigwall2).

    .venv/bin/python bench/ab_reads_after.py --input FILE --scratch DIR [--rounds 4] TREE [TREE ...]

Each TREE is a checkout put first on PYTHONPATH of its runs (compiled to bytecode once); the
order reverses every other round; `other` is the CPU the rest of the machine used meanwhile
(`measure.run`), so runs on a busy machine can be told apart. Linux only."""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import compile_bytecode, run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--scratch", type=Path, required=True, help="a directory for the stores and restores (emptied)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("trees", nargs="+", type=Path)
    a = ap.parse_args()
    trees = [str(t.resolve()) for t in a.trees]
    for t in trees:
        compile_bytecode(dict(os.environ, PYTHONPATH=t), cwd=t)  # its own tree, not the one run from
    res: dict[tuple[str, str], list] = {(t, c): [] for t in trees for c in ("verify", "restore")}
    for r in range(a.rounds):
        for t in trees if r % 2 == 0 else trees[::-1]:
            shutil.rmtree(a.scratch, ignore_errors=True)
            a.scratch.mkdir(parents=True)
            env = dict(os.environ, PYTHONPATH=t, ARCHIVER_HOME=str(a.scratch / "home"))
            base = [sys.executable, "-m", "archiver.cli", "--store", str(a.scratch / "s"), "--catalog",
                    str(a.scratch / "s.db")]
            made = run([*base, "archive", str(a.input), "--name", "t", "--json"], env=env)
            ver = run([*base, "verify", "t", "--deep", "--json"], env=env)
            rest = run([*base, "restore", "t", str(a.scratch / "out"), "--json"], env=env)
            res[(t, "verify")].append(ver)
            res[(t, "restore")].append(rest)
            print(f"round {r} {t}: archive {made.wall:.3f} s; verify --deep wall {ver.wall:.3f} s, CPU {ver.cpu:.3f} s, "
                  f"other {ver.other_cpu:.2f}; restore wall {rest.wall:.3f} s, CPU {rest.cpu:.3f} s, other "
                  f"{rest.other_cpu:.2f}; load {rest.load1:.2f}", flush=True)
    for (t, c), ms in res.items():
        print(f"{t} {c}: median wall {statistics.median(m.wall for m in ms):.3f} s, CPU "
              f"{statistics.median(m.cpu for m in ms):.3f} s")
    shutil.rmtree(a.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
