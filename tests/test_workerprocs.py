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


def _sigint_blocked_or_ignored(pid: int) -> bool:
    """Whether SIGINT is blocked or ignored in process `pid` (/proc/<pid>/status masks)."""
    with open(f"/proc/{pid}/status") as f:
        masks = dict(line.split(":", 1) for line in f if line.startswith(("SigBlk", "SigIgn")))
    bit = 1 << (signal.SIGINT - 1)
    return any(int(v.strip(), 16) & bit for v in masks.values())


def test_ctrl_c_never_reaches_the_fork_server_or_a_worker_before_its_initializer():
    """A terminal's Ctrl-C goes to the whole process group: the fork server (which imports the
    preload before it ignores SIGINT) and a new worker (before `_init_worker`) would die with a
    traceback on the user's terminal and a lost task. Started by `sheltered_start`, both are
    born with SIGINT blocked; the driver's own handler is untouched."""
    from multiprocessing import forkserver
    before = signal.getsignal(signal.SIGINT)
    with workerprocs.sheltered():
        p = workerprocs.pool(1, ["archiver.packs"])
        try:
            worker = p.submit(os.getpid)
        except BaseException:
            workerprocs.close(p)
            raise
    try:
        wpid = worker.result(timeout=60)
        server = forkserver._forkserver._forkserver_pid
        assert server and _sigint_blocked_or_ignored(server)
        assert _sigint_blocked_or_ignored(wpid)
        assert not _sigint_blocked_or_ignored(os.getpid())
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        workerprocs.close(p)


def test_a_ctrl_c_inside_the_pools_start_is_raised_after_it_and_leaves_no_process(monkeypatch):
    """SIGINT landing inside a submit while a worker starts (the driver waits for the fork
    server, which imports the preload, to report the worker's pid) used to leave that worker
    started but untracked: it kept the fork server alive and `close` waited for the server
    forever. Held back by `sheltered`, it is raised once the pool is whole, and the pool closes
    cleanly, leaving no process."""
    import faulthandler
    import multiprocessing
    from multiprocessing import forkserver
    faulthandler.dump_traceback_later(30, exit=True)  # a hang fails the run instead of blocking it
    real = forkserver.read_signed
    sent: list[bool] = []

    def sigint_then_read(fd: int) -> int:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C while the new worker's pid is awaited
        return real(fd)
    monkeypatch.setattr(forkserver, "read_signed", sigint_then_read)
    p = None
    try:
        with pytest.raises(KeyboardInterrupt):
            try:
                with workerprocs.sheltered():
                    p = workerprocs.pool(2, ["archiver.packs"])
                    futures = [p.submit(os.getpid) for _ in range(3)]
            finally:
                if p is not None:
                    workerprocs.close(p)
        assert sent and all(f.done() for f in futures)
        assert multiprocessing.active_children() == []
        assert forkserver._forkserver._forkserver_pid is None
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_the_drivers_sigkill_leaves_no_worker_or_fork_server():
    """The driver killed (SIGKILL, the OOM killer) while its workers run: each worker (busy or
    idle, waiting on the call queue whose write end it holds itself) used to live on forever,
    and kept the fork server alive with it. They end once the driver is gone."""
    import subprocess
    import time
    code = ("import os, sys, time\n"
            "from multiprocessing import forkserver\n"
            "from archiver import workerprocs\n"
            "if __name__ == '__main__':\n"
            "    p = workerprocs.pool(2, ['archiver.packs'])\n"
            "    busy = p.submit(time.sleep, 60)\n"
            "    pids = {p.submit(os.getpid).result(timeout=60) for _ in range(6)}\n"
            "    print(forkserver._forkserver._forkserver_pid, *sorted(set(p._processes) | pids), flush=True)\n"
            "    time.sleep(60)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        pids = [int(x) for x in driver.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(pids) >= 2
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 15
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and
                     open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        assert not alive, f"left behind: {alive}"
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # whatever the test left, ended by its process group
        except ProcessLookupError:
            pass


def test_a_python_without_the_private_fork_server_attributes_still_works(monkeypatch):
    """`_forkserver`, `_forkserver_pid` and `_stop` are private: where a Python has none of them
    the pool runs and closes the same (the server then ends with the driver, or with its
    workers' driver-watch), and sheltered() works off the main thread too."""
    import threading
    monkeypatch.setattr(workerprocs, "_server", lambda: object())
    p = workerprocs.pool(1, [])
    try:
        assert p.started_server is False
        assert p.submit(os.getpid).result(timeout=60) != os.getpid()
    finally:
        workerprocs.close(p)
    errors: list[BaseException] = []

    def off_main() -> None:
        try:
            with workerprocs.sheltered():
                pass
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    t = threading.Thread(target=off_main)
    t.start()
    t.join()
    assert not errors
    monkeypatch.undo()
    from multiprocessing import forkserver
    forkserver._forkserver._stop()  # the server this test left running (its pool did not start it "here")


def test_importing_the_archive_path_starts_no_multiprocessing():
    """An archive that starts no pool (one big file) does not pay at start-up for
    multiprocessing and ProcessPoolExecutor's module (tempfile, shutil, subprocess, ...): they
    are imported when a pool starts; `WorkerPool` is still the pools' class."""
    import subprocess
    import sys
    code = ("import sys, archiver.cli, archiver.pipeline, archiver.fanout, archiver.procfiles, archiver.packproof, "
            "archiver.procrestore; print(sorted(m for m in ('multiprocessing', 'concurrent.futures.process', "
            "'subprocess', 'tempfile') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from concurrent.futures import ProcessPoolExecutor
    assert issubclass(workerprocs.WorkerPool, ProcessPoolExecutor)
    assert workerprocs.WorkerPool is workerprocs._pool_class()


def test_worker_pool_is_one_class_made_once_even_when_first_used_by_threads_at_once(monkeypatch):
    """`WorkerPool`, made on first use, is one class however many threads first use it at once
    (two archives started together by an API caller: a pool each): a pool made by any of them is
    an instance of `workerprocs.WorkerPool`. It pickles by name like any module-level class."""
    import concurrent.futures
    import pickle
    import threading
    import time
    from concurrent.futures import ProcessPoolExecutor

    class SlowToSubclass(ProcessPoolExecutor):  # widens the window between the check and the store
        def __init_subclass__(cls, **kwargs):
            time.sleep(0.05)
            super().__init_subclass__(**kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", SlowToSubclass)
    if hasattr(workerprocs._pool_class, "cache_clear"):
        workerprocs._pool_class.cache_clear()
    monkeypatch.delitem(workerprocs.__dict__, "WorkerPool", raising=False)  # not made yet
    start, made = threading.Barrier(4), []

    def first_use():
        start.wait()
        made.append(workerprocs._pool_class())
    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in made}) == 1 and made[0] is workerprocs.WorkerPool
    assert pickle.loads(pickle.dumps(workerprocs.WorkerPool)) is workerprocs.WorkerPool
    if hasattr(workerprocs._pool_class, "cache_clear"):
        workerprocs._pool_class.cache_clear()  # the next test's first use makes the stock one again
