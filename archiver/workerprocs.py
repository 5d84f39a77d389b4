"""Worker process pools for CPU-bound work the GIL would serialise on threads.

One small API, shared by the small-file archive (archiver.procfiles) and anything else that
wants whole cores (deep verify's proofs): `pool(processes, preload)` gives a
ProcessPoolExecutor, `close(pool)` stops it, `unavailable()` says why none can start here,
`CpuSample`/`spare_cores` tell whether the machine has a core to give it.

The pool uses the stock 'forkserver' start method: a worker is forked from a small server
process that imported `preload` once, never from the driver (forking a process that runs
threads can deadlock on a lock another thread held). As with every spawn/forkserver pool,
each worker imports the driver's `__main__` again under the name `__mp_main__` (Python's
rule: a script that starts workers must guard its top level with `if __name__ == "__main__"`);
the `archiver` console script and `python -m archiver.cli` are guarded and print nothing on
import. A worker ignores Ctrl-C (the driver stops handing out tasks and waits for the running
ones) and sees the driver's AWS_* variables of when the pool started, not those of when the
fork server started."""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from archiver.errors import ArchiverError, InvalidOptionError

__all__ = ["CpuSample", "WorkerPool", "auto_count", "close", "died", "pool", "sheltered", "spare_cores", "take_result",
           "unavailable"]

START_METHOD = "forkserver"


def _context() -> Any:
    """The stock forkserver context (ValueError where the platform has none)."""
    import multiprocessing
    return multiprocessing.get_context(START_METHOD)


def unavailable() -> str | None:
    """Why no worker process can be started here (None: they can): no forkserver on this
    platform, or no semaphores for the pool's queues (a container without /dev/shm)."""
    try:
        _context().Lock()
    except (ImportError, OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _init_worker(aws_env: dict[str, str]) -> None:
    """Ctrl-C is the driver's to handle; AWS_* are the driver's of now (boto3's credential
    chain reads the environment; the fork server's may be older); the worker ends with the
    driver (`_end_with_driver`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(aws_env)
    _end_with_driver()


def _end_with_driver() -> None:
    """Exit once the driver is gone (SIGKILL, the OOM killer): a worker waits on a call queue
    whose write end it holds itself, so it would never see EOF and would live on, keeping the
    fork server alive with it. The driver's sentinel (multiprocessing.parent_process(), 3.8+)
    becomes ready when the driver's end of it closes; where there is none, nothing is watched."""
    import multiprocessing
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return

    def watch() -> None:
        from multiprocessing.connection import wait
        wait([sentinel])
        os._exit(1)  # nothing of a task half done is committed: the driver that would commit it is gone
    threading.Thread(target=watch, name="driver-gone", daemon=True).start()


def _server() -> Any:
    """The stdlib's fork server singleton, if this Python has one where we expect it (None
    otherwise: then it is left alone and ends with the driver, as it always does)."""
    from multiprocessing import forkserver
    return getattr(forkserver, "_forkserver", None)


def take_result(fut: Any, first: str, take: Callable[[Any], None]) -> ArchiverError | None:
    """Hand a finished task's value to `take`; or return the one-line error it ended with: a
    worker's ArchiverError (sent back as a rayexec.Failure, since one with a keyword
    constructor does not unpickle), a worker's death (the pool broken: a TaskLostError naming
    `first`, the task's first file, and `died`'s words), or any other error as a lost task
    naming `first`. An error `take` raises is returned the same way."""
    from concurrent.futures.process import BrokenProcessPool
    from archiver import executors
    from archiver.rayexec import Failure
    try:
        value = fut.result()
        if isinstance(value, Failure):
            raise value.error()
        take(value)
        return None
    except ArchiverError as e:
        return e
    except BrokenProcessPool as e:
        return executors.TaskLostError(first, died(e))
    except BaseException as e:  # noqa: BLE001 - a task's unexpected error names its first file
        return executors.lost(first, e)


def died(e: BaseException) -> str:
    """Why a task was lost when its worker died (the pool broken: `e`), as words for a
    TaskLostError. Every worker imports the driver's `__main__` again, so a script that calls
    archiver at its top level without a main guard, or one read from stdin, kills every
    worker at start: then re-running cannot help, and the words say what will."""
    why = f"a worker process died ({' '.join(str(e).split())[:200]})"
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None:  # interactive, or `python -c`: nothing is imported again
        return why
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            guarded = "__main__" in f.read()
    except OSError:
        return f"{why}; the driver's script {path} cannot be imported again by a worker: run it from a file"
    if guarded:
        return why
    return (f"{why}; the driver's script {path} has no `if __name__ == \"__main__\":` guard, and each "
            f"worker imports it again: add one, or ask for processes=0")


@contextlib.contextmanager
def sheltered() -> Iterator[None]:
    """Start a pool and submit its tasks in here. Ctrl-C is held back until the block ends
    (then raised as it would have been): landing inside a submit, it could leave a worker
    started but untracked, which keeps the fork server alive, so `close` waited for it
    forever. And SIGINT is blocked in this thread meanwhile, so the fork server and the
    workers started in here are born with it blocked: a terminal's Ctrl-C (sent to the whole
    process group) cannot kill the server while it imports the preload, nor a worker before
    `_init_worker` ignores it (each with a traceback on the user's terminal)."""
    got: list[int] = []
    old: Any = None
    # (a handler installed from C, getsignal None, could not be put back: left alone)
    main = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not None
    if main:
        try:
            old = signal.signal(signal.SIGINT, lambda signum, _frame: got.append(signum))
        except (ValueError, OSError):  # not the main interpreter, or no SIGINT here
            main = False
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending SIGINT arrives now: in `got`
        if main:
            signal.signal(signal.SIGINT, old)
            if got:
                signal.raise_signal(signal.SIGINT)  # as the caller's handler would have had it


if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    class WorkerPool(ProcessPoolExecutor):
        started_server: bool


_POOL_CLASS_LOCK = threading.Lock()  # the class is made by one thread, however many ask at once


def _pool_class() -> type:
    """`WorkerPool`, made on first use. Why not at import: ProcessPoolExecutor's module imports
    multiprocessing and its connections (tempfile, shutil, subprocess, ~8 ms of CPU), which
    start-up pays in every archive, even one of a single big file that starts no pool. Made once
    (under a lock: threads starting pools at once get the one class, so `isinstance` holds) and
    kept as the module's `WorkerPool`, named so (pickled by name like any module-level class)."""
    made = globals().get("WorkerPool")
    if made is not None:
        return made
    with _POOL_CLASS_LOCK:
        made = globals().get("WorkerPool")
        if made is None:
            from concurrent.futures import ProcessPoolExecutor

            class WorkerPool(ProcessPoolExecutor):
                """A ProcessPoolExecutor that remembers whether its start started the fork server."""

                started_server: bool = False
            WorkerPool.__qualname__ = "WorkerPool"
            made = globals()["WorkerPool"] = WorkerPool  # one class, made once: no state of a run
    return made


def __getattr__(name: str) -> Any:
    """`WorkerPool` before its first use (made then: `_pool_class`)."""
    if name == "WorkerPool":
        return _pool_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pool(processes: int, preload: list[str]) -> WorkerPool:
    """A pool of `processes` workers forked from a server that imported `preload` (module
    names; a name that fails to import is skipped by multiprocessing) once. Stop it with
    `close`. Raises ValueError/OSError where `unavailable()` says why."""
    if processes < 1:
        raise ValueError(f"a worker pool needs at least one process, got {processes}")
    ctx = _context()
    server = _server()
    # The preload is the server's: it applies when the server starts (here, if none runs yet;
    # a server already running keeps the modules it has, and workers import the rest).
    ctx.set_forkserver_preload(list(preload))
    started_here = getattr(server, "_forkserver_pid", 0) is None
    aws = {n: v for n, v in os.environ.items() if n.startswith("AWS_")}
    executor = _pool_class()(processes, mp_context=ctx, initializer=_init_worker, initargs=(aws,))
    executor.started_server = started_here
    return executor


def close(executor: ProcessPoolExecutor) -> None:
    """Wait for the running tasks (those not started are cancelled), then stop the workers,
    and the fork server too if this pool's start started it."""
    executor.shutdown(wait=True, cancel_futures=True)
    # Why stop the server: it would live until the driver exits, and then, orphaned, its
    # workers' CPU would reach no one's RUSAGE_CHILDREN (a bench's or `time`'s count), and a
    # long-lived API caller would keep an idle process per run. multiprocessing has no public
    # stop; `_stop` (3.8+: waits for the server, removes its socket) is used only if present,
    # and only for a server this pool started (another pool of the driver may still use one
    # it did not start). Without it the server ends with the driver, which is correct too.
    if getattr(executor, "started_server", False):
        executor.started_server = False  # type: ignore[attr-defined]
        stop = getattr(_server(), "_stop", None)
        if callable(stop):
            stop()


@dataclass(frozen=True)
class CpuSample:
    """The machine's busy CPU seconds (/proc/stat: all but idle and iowait; None where there is
    none) and this process's own, with children, at one moment: two samples tell how many
    cores the rest of the machine kept busy in between, however long ago the 1-minute load
    average was made."""

    wall: float
    machine: float | None
    own: float

    @classmethod
    def now(cls) -> "CpuSample":
        machine = None
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
            if fields and fields[0] == "cpu":
                v = [int(x) for x in fields[1:]]
                machine = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            pass
        own = sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for a in ("ru_utime", "ru_stime"))
        return cls(time.monotonic(), machine, own)

    def others_busy(self) -> float | None:
        """Cores the rest of the machine kept busy since this sample (None if unknown, or if
        too little time passed to tell)."""
        later = CpuSample.now()
        span = later.wall - self.wall
        if self.machine is None or later.machine is None or span < 0.1:
            return None
        return max(0.0, (later.machine - self.machine) - (later.own - self.own)) / span


def spare_cores(since: CpuSample | None = None, *, busy: float | None = None) -> float:
    """Cores the rest of the machine left idle: `busy` if given, else measured since `since`
    (`CpuSample.others_busy`), else the 1-minute load average (which lags a minute behind)."""
    cores = os.cpu_count() or 1
    if busy is None and since is not None:
        busy = since.others_busy()
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return cores - busy


def auto_count(*, idle: float, busy: float | None = None, leave: int = 0, measure: bool = True) -> int:
    """Auto's count of workers, once the caller found the work big enough: one per core less
    `leave` (the driver's, when it works too), on two cores or more with `idle` of them left
    idle by the rest of the machine (`spare_cores(busy=busy)`; measure=False: the caller
    measures that itself) and where a pool can start (`unavailable`); else 0."""
    cores = os.cpu_count() or 1
    if cores < 2 or (measure and spare_cores(busy=busy) < idle) or unavailable() is not None:
        return 0
    return cores - leave


def check_count(requested: int | None) -> None:
    """A `processes` option is None (auto) or a whole number >= 0 (InvalidOptionError otherwise)."""
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 0):
        raise InvalidOptionError("processes", f"must be a whole number >= 0, got {requested!r}")


def requested_count(requested: int | None, refused: str | None) -> int | None:
    """An explicit `processes` checked (None: auto, left to the caller): a count that asks for
    workers where `refused` says why none may run, or where none can start here, is refused
    in one line (InvalidOptionError naming the option); 0 is always accepted."""
    check_count(requested)
    if not requested:
        return requested
    if refused is not None:
        raise InvalidOptionError("processes", refused)
    why_not = unavailable()
    if why_not is not None:
        raise InvalidOptionError("processes", f"worker processes cannot start here ({why_not})")
    return requested
