"""The worker process pool (archiver.workerprocs): stock forkserver, preload, Ctrl-C left to
the driver, the driver's AWS_* of now, the fork server stopped when the pool started it, the
idle-core measure."""
from __future__ import annotations

import os
import signal
import sys

import pytest

from archiver import workerprocs


def loaded(names: list[str]) -> dict[str, bool]:
    """In a worker: which modules it has (the server's preload is inherited)."""
    return {n: n in sys.modules for n in names}


def test_pool_runs_work_in_workers_with_preload_sigint_ignored_and_aws_env_of_now(monkeypatch):
    assert workerprocs.unavailable() is None
    monkeypatch.setenv("AWS_PROFILE", "pool-time")
    monkeypatch.delenv("AWS_REGION", raising=False)
    p = workerprocs.pool(2, ["archiver.packs"])
    try:
        pids = {p.submit(os.getpid).result(timeout=60) for _ in range(4)}
        assert os.getpid() not in pids
        assert p.submit(signal.getsignal, signal.SIGINT).result(timeout=60) == signal.SIG_IGN
        assert p.submit(os.getenv, "AWS_PROFILE").result(timeout=60) == "pool-time"
        assert p.submit(loaded, ["archiver.packs"]).result(timeout=60) == {"archiver.packs": True}
    finally:
        workerprocs.close(p)
    assert p.started_server is False  # reset by close: a second close does nothing
    workerprocs.close(p)
    from multiprocessing import forkserver
    server = getattr(forkserver, "_forkserver", None)
    if hasattr(server, "_forkserver_pid"):  # the server this pool started is stopped and waited for
        assert server._forkserver_pid is None
    import multiprocessing
    assert multiprocessing.active_children() == []


def test_pool_refuses_no_processes():
    with pytest.raises(ValueError):
        workerprocs.pool(0, [])


def test_unavailable_says_why(monkeypatch):
    def no_forkserver():  # type: ignore[no-untyped-def]
        raise ValueError("cannot find context for 'forkserver'")
    monkeypatch.setattr(workerprocs, "_context", no_forkserver)
    assert workerprocs.unavailable() == "ValueError: cannot find context for 'forkserver'"


def test_cpu_sample_counts_only_the_rest_of_the_machine(monkeypatch):
    """The machine's busy seconds less this process's own (its busy threads and waited
    children are not another's load, which would turn auto off), per second of wall."""
    before = workerprocs.CpuSample(100.0, 10.0, 1.0)
    monkeypatch.setattr(workerprocs.CpuSample, "now", classmethod(lambda cls: cls(102.0, 14.0, 2.5)))
    assert before.others_busy() == pytest.approx(1.25)  # (4 busy - 1.5 own) / 2 s
    assert workerprocs.CpuSample(100.0, None, 1.0).others_busy() is None  # no /proc/stat
    assert workerprocs.CpuSample(101.95, 10.0, 1.0).others_busy() is None  # too short to tell
    monkeypatch.setattr(workerprocs.CpuSample, "now", classmethod(lambda cls: cls(102.0, 11.0, 9.0)))
    assert before.others_busy() == 0.0  # never negative


def test_spare_cores_measured_else_load_average(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert workerprocs.spare_cores(busy=1.5) == 2.5
    monkeypatch.setattr(workerprocs.CpuSample, "now", classmethod(lambda cls: cls(102.0, 14.0, 2.5)))
    assert workerprocs.spare_cores(workerprocs.CpuSample(100.0, 10.0, 1.0)) == pytest.approx(2.75)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 1.0, 1.0))
    assert workerprocs.spare_cores(workerprocs.CpuSample(100.0, None, 1.0)) == 0.5  # no /proc/stat
    assert workerprocs.spare_cores() == 0.5
