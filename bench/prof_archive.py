"""Profile `archiver archive` on one input and print where the time goes.

    .venv/bin/python bench/prof_archive.py [SRC] [--cprofile] [--op archive|verify|restore]

Default SRC: bench/.work/inputs/llm-bf16/data (made by bench/run.py). With py-spy on PATH
(or PY_SPY=/path/to/py-spy) it samples every thread (the work happens in the worker pool,
which cProfile cannot see: it profiles the calling thread only) and prints the top
functions by own time ("self": samples where it is the innermost Python frame, i.e. it
or the C code it called was running) and by inclusive time, as % of all non-idle samples
(2 CPUs: up to 200% of wall time). With --cprofile, or without py-spy, it runs cProfile in
the main thread and prints its top entries (worker time then shows up only as waits).
py-spy is not a dependency: `pip install --target /tmp/pyspy py-spy` and PY_SPY=/tmp/pyspy/bin/py-spy."""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = ROOT / ".venv" / "bin" / "python"


def frame_name(fr: str) -> str:
    # py-spy raw frames look like "func (path/to/file.py:123)"; keep func + short file
    name, _, rest = fr.partition(" (")
    path = rest.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(path.split("/")[-2:]) if path else ""
    return f"{name} [{short}]" if short else name


def frame_line(fr: str) -> str:
    name, _, rest = fr.partition(" (")
    path, _, line = rest.rstrip(")").rpartition(":")
    return f"{name} [{'/'.join(path.split('/')[-2:])}:{line}]"


def summarize_raw(path: Path, top: int) -> None:
    lines_c: collections.Counter[str] = collections.Counter()
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        n = int(n)
        raw_frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        frames = [frame_name(f) for f in raw_frames]
        if not frames:
            continue
        lines_c[frame_line(raw_frames[-1])] += n
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"\n{total} non-idle samples")
    print("\ntop by self time (% of non-idle samples):")
    for f, n in self_c.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("\ntop source lines by self time:")
    for f, n in lines_c.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("\ntop by inclusive time:")
    for f, n in incl.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", nargs="?", default=str(HERE / ".work" / "inputs" / "llm-bf16" / "data"))
    ap.add_argument("--op", choices=["archive", "verify", "restore"], default="archive")
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    src = Path(args.src).resolve()
    pyspy = os.environ.get("PY_SPY") or shutil.which("py-spy")
    with tempfile.TemporaryDirectory(prefix="prof-", dir=HERE / ".work") as td:
        env = dict(os.environ, ARCHIVER_HOME=str(Path(td) / "home"))
        base = [str(PY), "-m", "archiver.cli"]
        mid = None
        if args.op != "archive":  # archive first (not profiled)
            out = subprocess.run(base + ["archive", str(src), "--name", "prof", "--json"], env=env, check=True,
                                 capture_output=True, text=True, cwd=ROOT).stdout
            mid = json.loads(out)["id"]
        cmd = {"archive": ["archive", str(src), "--name", "prof", "--json"],
               "verify": ["verify", str(mid), "--deep", "--json"],
               "restore": ["restore", str(mid), str(Path(td) / "dest"), "--json"]}[args.op]
        t0 = time.monotonic()
        if pyspy and not args.cprofile:
            raw = Path(td) / "stacks.txt"
            subprocess.run([pyspy, "record", "--threads", "--rate", "200", "--format", "raw", "-o", str(raw),
                            "--", *base, *cmd], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            print(f"{args.op} of {src} under py-spy: {time.monotonic() - t0:.1f} s wall")
            summarize_raw(raw, args.top)
        else:
            prof = Path(td) / "p.prof"
            subprocess.run([str(PY), "-m", "cProfile", "-o", str(prof), "-m", "archiver.cli", *cmd], env=env,
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            print(f"{args.op} of {src} under cProfile (main thread only): {time.monotonic() - t0:.1f} s wall")
            import pstats
            st = pstats.Stats(str(prof))
            st.sort_stats("tottime").print_stats(args.top)
            st.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
