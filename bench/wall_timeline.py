"""Where does archive's wall time go: the single-threaded head and tail of one CLI run,
measured in process (issue 12 item 6: archive wall vs `zstd -T2` needs both cores busy
from start to end).

    PYTHONPATH=. .venv/bin/python bench/wall_timeline.py [--bin-ms 20] -- --store S archive SRC --name x

Runs `archiver.cli.main()` on the given arguments in this process (as the console script
does), after stamping the moments that bound the phases (interpreter start from /proc,
imports done, store and catalog open, scan done, first and last chunk read, chunk pool
drained, catalog sync, manifest commit, files-cache commit, return), while a sampler
thread records the process's CPU clock and counts this process's threads in state R (on
a CPU or waiting for one; /proc/self/task/*/stat) every 5 ms. Prints each phase's wall
and CPU seconds and mean runnable threads (capped at 2), then per 20 ms bin the cores
busy and the runnable threads: the serial head (start-up, scan, header parse) and tail
(last chunks, fsyncs, commit) show as seconds with one thread runnable, whatever else
the machine runs. CPU includes the sampler (~0.01-0.02 CPU-s); the interpreter's exit
after the return is not covered. Linux only."""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def _process_start() -> float:
    """time.monotonic() of this process's start (10 ms resolution: clock ticks since boot)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / TICK
    return time.monotonic() - age


T0 = _process_start()
STAMPS: list[tuple[float, str]] = []


def stamp(what: str) -> None:
    STAMPS.append((time.monotonic(), what))


def _runnable(me: int) -> int:
    """Threads of this process (but the sampler) in state R: on a CPU or waiting for one."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                n += f.read().rsplit(")", 1)[1][1] == "R"
        except OSError:
            continue
    return n


def _sampler(stop: threading.Event, out: list[tuple[float, float]], runnable: list[tuple[float, int]]) -> None:
    me = threading.get_native_id()
    while not stop.is_set():
        out.append((time.monotonic(), time.process_time()))
        runnable.append((time.monotonic(), _runnable(me)))
        time.sleep(0.005)


def _wrap(obj: object, name: str, label: str, first_only: bool = False) -> None:
    fn = getattr(obj, name)
    seen = [False]

    def wrapped(*a, **k):
        if not (first_only and seen[0]):
            stamp(f"{label} start")
        try:
            return fn(*a, **k)
        finally:
            if not (first_only and seen[0]):
                stamp(f"{label} end")
            seen[0] = True

    setattr(obj, name, wrapped)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-ms", type=float, default=20.0)
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    return run_cli(a.args[1:] if a.args[:1] == ["--"] else a.args, a.bin_ms, _stamp_archive_and_restore)


def _stamp_archive_and_restore() -> None:
    """Wrap the functions that bound an archive's and a restore's phases."""
    from archiver import pipeline, repository, fanout, filescache
    _wrap(repository.Repository, "open", "Repository.open")
    _wrap(pipeline, "scan", "scan")
    _wrap(filescache.FilesRun, "start", "FilesRun.start")
    _wrap(fanout, "archive_files", "archive_files")
    _wrap(repository.Repository, "sync_catalog", "sync_catalog")
    _wrap(repository.Repository, "commit_manifest", "commit_manifest")
    _wrap(filescache.FilesRun, "commit", "files cache commit")
    _wrap(repository.Repository, "close", "Repository.close")
    from archiver import restorer  # restore's phases (branch sfrestore2)
    _wrap(repository.Repository, "load_manifest", "load_manifest")
    _wrap(restorer, "remove_stale_temps", "remove_stale_temps")
    _wrap(repository.Repository, "plan_reads", "plan_reads")
    _wrap(repository.Repository, "pack_positions", "pack_positions")
    _wrap(restorer, "_restore_small", "_restore_small")
    _wrap(restorer, "_finish_dirs", "_finish_dirs")
    _wrap(restorer, "_append_event", "_append_event")
    _wrap(repository.Repository, "read_chunks", "first read_chunks", first_only=True)
    if hasattr(restorer, "_stage_unnamed"):
        _wrap(restorer, "_stage_unnamed", "first file staged", first_only=True)
    inner = pipeline.iter_chunks

    def chunks(*a, **k):
        n = 0
        for rc in inner(*a, **k):
            if n == 0:
                stamp("first chunk read")
            n += 1
            yield rc
        stamp(f"last chunk read ({n} chunks)")

    pipeline.iter_chunks = chunks


def run_cli(args: list[str], bin_ms: float, stamp_phases: Any) -> int:
    """`archiver ARGS` in this process under the sampler, with `stamp_phases()` wrapping the
    functions whose moments are stamped (after the import of archiver.cli); prints the
    phases' wall, CPU, cores busy and runnable threads, then the per-bin lines. Shared by
    bench/verify_timeline.py."""
    samples: list[tuple[float, float]] = []
    runnable: list[tuple[float, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sampler, args=(stop, samples, runnable), daemon=True)
    cpu_at_start = time.process_time()
    sampler.start()
    stamp("python start-up done")
    from archiver import cli
    stamp("archiver imported")
    stamp_phases()
    code = 0
    try:
        sys.argv = ["archiver", *args]
        cli.main(end_process=False)  # as the console script calls it, but returning: the report follows
    except SystemExit as e:
        code = int(e.code or 0)
    stamp("cli returned")
    stop.set()
    sampler.join()
    end = time.monotonic()
    print(f"process CPU {time.process_time():.2f} s (of which before this script's first line "
          f"{cpu_at_start:.2f}), wall {end - T0:.2f} s from process start", file=sys.stderr)
    series = [(T0, 0.0)] + samples + [(end, time.process_time())]

    def cpu_at(t: float) -> float:
        prev = series[0]
        for s in series:
            if s[0] >= t:
                if s[0] == prev[0]:
                    return s[1]
                return prev[1] + (s[1] - prev[1]) * (t - prev[0]) / (s[0] - prev[0])
            prev = s
        return series[-1][1]

    prev_t = T0
    def runnable_in(a: float, b: float) -> str:
        got = [min(2, n) for t, n in runnable if a <= t < b]
        return f"{sum(got) / len(got):4.2f}" if got else "   -"

    print(f"{'t (s)':>7} {'+wall':>6} {'+CPU':>6} {'cores':>5} {'runnable':>8}  moment", file=sys.stderr)
    for t, what in STAMPS + [(end, "end")]:
        dw = t - prev_t
        dc = cpu_at(t) - cpu_at(prev_t)
        print(f"{t - T0:7.3f} {dw:6.3f} {dc:6.3f} {dc / dw if dw > 0 else 0:5.2f} {runnable_in(prev_t, t):>8}  {what}",
              file=sys.stderr)
        prev_t = t
    bin_s = bin_ms / 1000
    t = T0
    line = []
    while t < end:
        dc = cpu_at(min(t + bin_s, end)) - cpu_at(t)
        line.append(min(9, int(round(dc / bin_s * 4))))
        t += bin_s
    print(f"quarter-cores busy per {bin_ms:.0f} ms bin (8 = both cores):", file=sys.stderr)
    s = "".join(str(x) for x in line)
    for k in range(0, len(s), 100):
        print(f"  {k * bin_s:6.2f} s {s[k:k + 100]}", file=sys.stderr)
    rline = []
    t = T0
    while t < end:
        got = [min(2, n) for tt, n in runnable if t <= tt < t + bin_s]
        rline.append(str(round(4 * sum(got) / len(got))) if got else "-")
        t += bin_s
    print(f"quarter-threads runnable (of 2, capped) per {bin_ms:.0f} ms bin, whatever else the machine runs:",
          file=sys.stderr)
    s = "".join(rline)
    for k in range(0, len(s), 100):
        print(f"  {k * bin_s:6.2f} s {s[k:k + 100]}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
