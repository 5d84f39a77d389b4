"""Run one command in a fresh child through bench/rsswrap.py and collect wall time, peak RSS,
exit code and output."""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

HERE = Path(__file__).resolve().parent
WRAPPER = HERE / "rsswrap.py"


class CommandFailed(RuntimeError):
    pass


@dataclass
class Measure:
    cmd: list[str]
    rc: int
    wall: float
    rss_mib: float
    stdout: str = ""
    stderr: str = ""
    cpu: float = 0.0  # user + system seconds of the command (and the children it waited for)
    load1: float = 0.0  # 1-minute load average just before the command started
    other_cpu: float = 0.0  # CPU seconds used by everything else on the machine meanwhile
    sync: float = 0.0  # seconds of the `sync` right after the command (flushing what it left dirty)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"cmd": " ".join(shlex.quote(c) for c in self.cmd), "rc": self.rc, "wall": round(self.wall, 4),
                "rss_mib": round(self.rss_mib, 1), "cpu_s": round(self.cpu, 3), "load1": round(self.load1, 2),
                "other_cpu_s": round(self.other_cpu, 3), "sync_s": round(self.sync, 3),
                **self.extra}


def run(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
        check: bool = True, timeout: float = 7200) -> Measure:
    """Run `cmd` via the wrapper (a small fresh process, so ru_maxrss is the command's own)."""
    os.sync()  # start clean: no dirty pages from earlier commands being written back meanwhile
    load1 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-run-") as td:
        res, out, err = (os.path.join(td, n) for n in ("res.json", "out", "err"))
        wrapper = [sys.executable, "-I", "-S", str(WRAPPER), res, out, err, "--", *map(str, cmd)]
        busy0 = _busy_seconds()
        subprocess.run(wrapper, env=dict(env) if env is not None else None, cwd=cwd, check=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
        busy1 = _busy_seconds()
        t0 = time.perf_counter()
        os.sync()
        synced = time.perf_counter() - t0
        with open(res) as f:
            r = json.load(f)
        stdout = Path(out).read_text(errors="replace")
        stderr = Path(err).read_text(errors="replace")
    m = Measure([str(c) for c in cmd], r["rc"], r["wall"], r["maxrss_kib"] / 1024, stdout, stderr,
                r.get("utime", 0.0) + r.get("stime", 0.0), load1)
    m.sync = synced
    # everything the machine's CPUs did meanwhile, less the command itself (the wrapper's
    # own startup, ~0.02 s, stays in): > ~0.1 s means something else competed for the CPUs
    m.other_cpu = max(0.0, (busy1 - busy0) - m.cpu) if busy0 is not None and busy1 is not None else 0.0
    if check and m.rc != 0:
        raise CommandFailed(f"command failed (exit {m.rc}): {' '.join(map(shlex.quote, m.cmd))}\n"
                            f"stdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}")
    return m


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds() -> float | None:
    """Busy CPU time of the whole machine so far (/proc/stat: all but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    busy = sum(v[:8]) - v[3] - v[4]  # user nice system idle iowait irq softirq steal
    return busy / _TICK


def floor_mib() -> float:
    """Peak RSS the method reports for `true`: the wrapper's own footprint, a lower bound
    on every RSS figure."""
    return run(["true"]).rss_mib


def median(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def warm(paths: Sequence[Path]) -> None:
    """Read the inputs once so every tool starts from a warm page cache (dropping the cache
    needs privileges we don't assume)."""
    buf = bytearray(16 << 20)
    mv = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(mv):
                pass


def compile_bytecode(env: Mapping[str, str] | None = None, cwd: str | None = None) -> list[str]:
    """Compile the `archiver` and `manifests` packages that benched commands import (found by
    a child with `env`, so PYTHONPATH picks a worktree's code) to bytecode, once, before
    anything is timed, as an install does (pip and distribution packages compile at install;
    restic is one binary, borg's packages ship compiled). Why: with PYTHONDONTWRITEBYTECODE
    set (this VM sets it) and no cache, every command would compile its modules again, ~0.35
    CPU-s of start-up no installed archiver pays. Returns the directories compiled.
    `cwd`: where the probe runs. `python -c` puts its working directory first on sys.path,
    before PYTHONPATH, so an A/B started from inside one checkout would compile that checkout
    for every side and leave the others compiling their modules in every timed run (~0.3 CPU-s
    and ~0.1 s of wall against them: bench/RESULTS.md, "A task's last packs synced while its
    rows are pickled (branch sfoverlap)"): the A/B scripts pass each side's own directory."""
    probe = subprocess.run([sys.executable, "-c", "import archiver, manifests; print(archiver.__path__[0]); "
                            "print(manifests.__path__[0])"], capture_output=True, text=True,
                           env=dict(env) if env is not None else None, check=True, cwd=cwd)
    dirs = probe.stdout.split()
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True,
                   env=dict(env) if env is not None else None, stdout=subprocess.DEVNULL, cwd=cwd)
    return dirs
