"""Where does a deep verify's wall time go: which thread does what when, in one CLI run
(issue 15 item 6: small-file deep verify <= restic's `check --read-data`).

    PYTHONPATH=. .venv/bin/python bench/verify_timeline.py [--bin-ms 20] -- --store S verify ID --deep --json

bench/wall_timeline.py's sampler (the process's CPU clock and its runnable threads every
5 ms) around `archiver.cli.main()`, with the moments of a verify stamped instead of an
archive's: imports, the event log read, each manifest load (its trees, path checks, chain
and signature checks), the chunk index, the read plan, the presence check, the deep pass
(its pack-order sort and its first small-file batch) and the event written at the end.
Prints each phase's wall and CPU seconds, the cores it kept busy and its mean runnable
threads (capped at 2), then the cores busy per bin. A phase at ~1.0 core with one runnable
thread is serial Python on the main thread; the deep pass at ~1.0-1.3 cores with two
runnable threads is its workers taking turns at the GIL (their hashing is the only part
that runs beside another thread). CPU includes the sampler (~0.01-0.02 CPU-s). Run it
after `PYTHONPATH=. python -c "import bench.measure as m; m.compile_bytecode()"` (this VM
sets PYTHONDONTWRITEBYTECODE: without cached bytecode the import phase is compilation).
Linux only."""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wall_timeline as wt  # noqa: E402  (its import stamps the process start)


def _wrap(obj: object, name: str, label: str, first_only: bool) -> None:
    """wall_timeline's wrapper, but a first-only stamp is the first call to start (the deep
    pass's workers enter their first batches at once)."""
    fn = getattr(obj, name)
    started = [False]

    def wrapped(*args, **kwargs):
        mine = not (first_only and started[0])
        started[0] = True
        if mine:
            wt.stamp(f"{label} start")
        try:
            return fn(*args, **kwargs)
        finally:
            if mine:
                wt.stamp(f"{label} end")

    setattr(obj, name, wrapped)


def _stamp_phases() -> None:
    """Wrap the functions that bound a verify's phases (first call only where they repeat)."""
    from archiver import checker, repository
    repo = repository.Repository
    for obj, name, label, first in ((repo, "open", "Repository.open", False),
                                    (repo, "read_events", "read_events", False),
                                    (checker, "_load", "_load (manifest, trees, paths)", False),
                                    (checker, "_chain_problems", "_chain_problems", False),
                                    (checker, "_uses_by_hash", "_uses_by_hash", False),
                                    (repo, "plan_reads", "plan_reads", False),
                                    (checker, "_shallow", "_shallow (presence check)", False),
                                    (checker, "_deep", "_deep", False),
                                    (repo, "pack_positions", "pack_positions", True),
                                    (checker, "_prove_batch", "first _prove_batch", True),
                                    (checker, "_append_event", "_append_event", False),
                                    (repo, "close", "Repository.close", False)):
        _wrap(obj, name, label, first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-ms", type=float, default=20.0)
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    samples: list[tuple[float, float]] = []
    runnable: list[tuple[float, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=wt._sampler, args=(stop, samples, runnable), daemon=True)
    sampler.start()
    wt.stamp("python start-up done")
    from archiver import cli
    wt.stamp("archiver imported")
    _stamp_phases()
    code = 0
    try:
        sys.argv = ["archiver", *args]
        cli.main()
    except SystemExit as e:
        code = int(e.code or 0)
    wt.stamp("cli returned")
    stop.set()
    sampler.join()
    end = time.monotonic()
    series = [(wt.T0, 0.0)] + samples + [(end, time.process_time())]

    def cpu_at(t: float) -> float:
        prev = series[0]
        for s in series:
            if s[0] >= t:
                if s[0] == prev[0]:
                    return s[1]
                return prev[1] + (s[1] - prev[1]) * (t - prev[0]) / (s[0] - prev[0])
            prev = s
        return series[-1][1]

    def runnable_in(lo: float, hi: float) -> str:
        got = [min(2, n) for t, n in runnable if lo <= t < hi]
        return f"{sum(got) / len(got):4.2f}" if got else "   -"

    print(f"process CPU {time.process_time():.2f} s, wall {end - wt.T0:.2f} s from process start", file=sys.stderr)
    print(f"{'t (s)':>7} {'+wall':>6} {'+CPU':>6} {'cores':>5} {'runnable':>8}  moment", file=sys.stderr)
    prev = wt.T0
    for t, what in wt.STAMPS + [(end, "end")]:
        dw, dc = t - prev, cpu_at(t) - cpu_at(prev)
        print(f"{t - wt.T0:7.3f} {dw:6.3f} {dc:6.3f} {dc / dw if dw > 0 else 0:5.2f} {runnable_in(prev, t):>8}  {what}",
              file=sys.stderr)
        prev = t
    bin_s = a.bin_ms / 1000
    line, t = [], wt.T0
    while t < end:
        line.append(str(min(9, int(round((cpu_at(min(t + bin_s, end)) - cpu_at(t)) / bin_s * 4)))))
        t += bin_s
    print(f"quarter-cores busy per {a.bin_ms:.0f} ms bin (8 = both cores):", file=sys.stderr)
    s = "".join(line)
    for k in range(0, len(s), 100):
        print(f"  {k * bin_s:6.2f} s {s[k:k + 100]}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
