"""Does a command keep the cores busy? Samples the state of every thread of the process
every 2 ms while it runs (issue 12 item 6: is archive's work overlapped on all cores?).

    .venv/bin/python bench/busy_cores.py [--every-ms 2] [--phases 10] -- COMMAND ARGS...

e.g. `ARCHIVER_HOME=/tmp/h bench/busy_cores.py -- .venv/bin/archiver archive SRC --name x`.
A thread in state R is on a CPU or waiting for one, so the count of runnable threads says how
many cores the process could use at that moment whatever else the machine runs (threads
waiting for the GIL, a lock or I/O sleep: S or D). Prints the share of samples with 0, 1 and
2+ runnable threads (and whether a thread was in uninterruptible I/O wait, e.g. fsync),
overall and in equal slices of the run, and the process's CPU seconds (user + system) and
wall time. Linux only (/proc)."""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time


def states(pid: int) -> list[str]:
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        out.append(st[st.rindex(")") + 2])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every-ms", type=float, default=2.0)
    ap.add_argument("--phases", type=int, default=10)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command after --")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    samples: list[tuple[float, int, int]] = []
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)  # reaped here, so its rusage is ours to read
        if pid:
            break
        s = states(p.pid)
        samples.append((time.monotonic() - t0, s.count("R"), s.count("D")))
        time.sleep(args.every_ms / 1000)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if not samples:
        print("the command ended before the first sample")
        return 1
    cpu = ru.ru_utime + ru.ru_stime
    print(f"exit {p.returncode}, wall {wall:.2f} s, CPU {cpu:.2f} s (user + system), "
          f"{cpu / wall:.2f} cores busy on average, {len(samples)} samples")
    hist = collections.Counter((min(r, 2), d > 0) for _, r, d in samples)
    for (r, d), k in sorted(hist.items()):
        print(f"  {r}{'+' if r == 2 else ''} runnable{', a thread in I/O wait' if d else ''}: {k / len(samples):.1%}")
    n = len(samples)
    for i in range(args.phases):
        seg = samples[i * n // args.phases:(i + 1) * n // args.phases]
        if seg:
            two = sum(1 for _, r, _ in seg if r >= 2) / len(seg)
            one = sum(1 for _, r, _ in seg if r == 1) / len(seg)
            print(f"  {seg[0][0]:6.2f}-{seg[-1][0]:6.2f} s: 2+ runnable {two:4.0%}, 1 runnable {one:4.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
