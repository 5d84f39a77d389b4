"""Interleaved A/B of `archiver archive` from several source trees, with `zstd -3 -T2` in the
same rounds: is a change to archive's wall time real, and how does it stand against zstd?

    .venv/bin/python bench/ab_archive.py --input FILE [--rounds 4] TREE [TREE ...]

Each TREE is a checkout (e.g. a base extracted with `git archive BASE | tar -x -C DIR`),
put first on PYTHONPATH of its runs and compiled to bytecode once (`measure.compile_bytecode`).
Every round runs each tree's archive of FILE into a fresh store and home, then zstd; the order
reverses every other round so neither side always runs first. Per run: wall, CPU (user + system
from wait4) and `other` (CPU the rest of the machine used meanwhile, `measure.run`): a run with
other >= 0.15 CPU-s was disturbed, and the medians are given over all runs and over the
undisturbed ones, since on a shared machine only those say anything about wall time. The input
should be an inode no one else links or touches (a hard link moves its ctime, and archive then
refuses the file as changed while archived, rightly). Linux only."""
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

from measure import compile_bytecode, run, warm  # noqa: E402
from tools import zstd_compress  # noqa: E402

DISTURBED = 0.15  # CPU-s other processes used during a run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("trees", nargs="+", type=Path)
    a = ap.parse_args()
    trees = [str(t.resolve()) for t in a.trees]
    with tempfile.TemporaryDirectory(prefix="ab-archive-", dir=HERE / ".work" if (HERE / ".work").is_dir() else None) as td:
        root = Path(td)
        src = root / "src"
        src.mkdir()
        shutil.copy2(a.input, src / a.input.name)  # an inode of its own (see the docstring)
        warm([src / a.input.name])
        for t in trees:
            compile_bytecode(dict(os.environ, PYTHONPATH=t), cwd=t)  # its own tree, not the one run from
        runs: dict[str, list] = {t: [] for t in [*trees, "zstd -3 -T2"]}
        for r in range(a.rounds):
            order = [*trees, "zstd -3 -T2"]
            for t in order if r % 2 == 0 else order[::-1]:
                if t == "zstd -3 -T2":
                    m, note = zstd_compress(src, root / "zstd-out", 2), ""
                else:
                    home = root / "home"
                    shutil.rmtree(home, ignore_errors=True)
                    home.mkdir()
                    # cwd: `python -m` puts the working directory first on sys.path, ahead of
                    # PYTHONPATH: run from a checkout, every tree would run that checkout's code
                    m = run([sys.executable, "-m", "archiver.cli", "archive", src, "--name", "ab", "--json"],
                            env=dict(os.environ, PYTHONPATH=t, ARCHIVER_HOME=str(home)), cwd=home)
                    js = json.loads(m.stdout)
                    note = f" id {js['id'][:16]} stored {js['bytes_stored']:,}"
                runs[t].append(m)
                print(f"round {r} {t}: wall {m.wall:.3f} s, CPU {m.cpu:.3f} s, other {m.other_cpu:.2f}, "
                      f"load {m.load1:.2f}{note}", flush=True)
        zstd = [m for m in runs["zstd -3 -T2"] if m.other_cpu < DISTURBED]
        for t, ms in runs.items():
            quiet = [m for m in ms if m.other_cpu < DISTURBED]
            line = (f"{t}: median wall {statistics.median(m.wall for m in ms):.3f} s, CPU "
                    f"{statistics.median(m.cpu for m in ms):.3f} s; undisturbed {len(quiet)}/{len(ms)}")
            if quiet:
                line += f": wall {statistics.median(m.wall for m in quiet):.3f} s"
                if zstd and t != "zstd -3 -T2":
                    line += f", {statistics.median(m.wall for m in quiet) / statistics.median(m.wall for m in zstd):.3f}x zstd -3 -T2"
            print(line)


if __name__ == "__main__":
    main()
