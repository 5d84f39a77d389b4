"""CPU of one in-process run, split by thread, optionally under cProfile: the harness of
bench/prof_smallfiles.py, prof_read.py and prof_rearchive.py.

`Measured` is a context manager around the call being measured: it samples each thread's
CPU from /proc/self/task every 50 ms (Linux; threads come and go, so a sampler keeps the
last figure of each), takes getrusage of the process before and after (every thread, user
and sys apart), and with `cprofile=True` runs every thread started inside it under
cProfile with a CPU-time clock (time.thread_time: waits do not count). cProfile roughly
doubles the CPU of small Python calls, so its numbers are proportions."""
from __future__ import annotations

import cProfile
import os
import pstats
import resource
import threading
import time
from pathlib import Path
from types import TracebackType


def thread_cpu(names: dict[int, str]) -> dict[str, tuple[str, float]]:
    """CPU seconds of each thread of this process so far, by thread id, with its family name."""
    live = {t.native_id: t.name.rstrip("0123456789_") for t in threading.enumerate()}
    names.update(live)
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (names.get(int(tid), "other"), (int(fields[11]) + int(fields[12])) / tick)
    return out


class Measured:
    """Wall, CPU and CPU per thread family of the block it wraps (see the module docstring);
    `profiles` are the cProfile profiles of its threads, merged by `dump_profile` (pass one
    list to several blocks to merge their profiles)."""

    def __init__(self, cprofile: bool = False, profiles: list[cProfile.Profile] | None = None) -> None:
        self.cprofile = cprofile
        self.profiles: list[cProfile.Profile] = profiles if profiles is not None else []
        self.by_thread: dict[str, float] = {}
        self.wall = self.user = self.sys = 0.0
        self._lock = threading.Lock()
        self._names: dict[int, str] = {}
        self._seen: dict[str, tuple[str, float]] = {}
        self._stop = threading.Event()

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def _start_profile(self, *_a: object) -> None:  # runs once in each new thread, then cProfile takes over
        p = cProfile.Profile(time.thread_time)
        with self._lock:
            self.profiles.append(p)
        p.enable()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._seen.update(thread_cpu(self._names))

    def __enter__(self) -> "Measured":
        self._base = thread_cpu(self._names)  # threads alive before: only their CPU since counts
        self._sampler = threading.Thread(target=self._sample, name="sampler", daemon=True)
        self._sampler.start()
        self._r0, self._t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        if self.cprofile:
            threading.setprofile(self._start_profile)
            self._start_profile()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.cprofile:
            threading.setprofile(None)
            for p in self.profiles:
                p.disable()
        r1, self.wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - self._t0
        self._stop.set()
        self._sampler.join()
        self._seen.update(thread_cpu(self._names))
        self.user, self.sys = r1.ru_utime - self._r0.ru_utime, r1.ru_stime - self._r0.ru_stime
        for tid, (name, c) in self._seen.items():
            self.by_thread[name] = self.by_thread.get(name, 0.0) + c - self._base.get(tid, (name, 0.0))[1]

    def summary(self) -> str:
        """One line: wall, CPU (user, sys) and CPU per thread family, largest first."""
        return (f"wall {self.wall:.2f} s, CPU {self.cpu:.2f} s (user {self.user:.2f}, sys {self.sys:.2f}); "
                f"CPU s by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                sorted(self.by_thread.items(), key=lambda kv: -kv[1]) if v >= 0.01))

    def dump_profile(self, out: Path, top: int) -> None:
        """The threads' profiles merged into OUT (pstats format), and the top entries printed."""
        st = pstats.Stats(self.profiles[0])
        for p in self.profiles[1:]:
            st.add(p)
        st.dump_stats(str(out))
        st.sort_stats("tottime").print_stats(top)
