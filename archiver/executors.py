"""Executors: where the per-file tasks of archive, deep verify and restore run.

One small protocol (`submit(fn, item)` -> Task, `as_completed(tasks)`) with three
implementations: `InProcessExecutor` runs each task at once on the calling thread (unit tests
of the protocol, and a deterministic order), `LocalExecutor` runs several files at once on
threads of this process, `RayExecutor` sends each file to a Ray cluster (Ray is imported only
there, so the core install does not need it). The driver of a command is the only one that
touches the catalog; a task gets plain values and returns plain values."""
from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from archiver.errors import ArchiverError, InvalidOptionError, UsageError

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("local", "ray")
# Ray re-runs a task whose worker process died this many times before the command fails.
DEFAULT_RAY_RETRIES = 3


class MissingExtraError(UsageError):
    """An optional dependency a requested feature needs is not installed (`extra`: the
    archiver extra that brings it, `module`: the missing module)."""

    def __init__(self, extra: str, module: str, feature: str) -> None:
        super().__init__(f"{feature} needs the optional dependency {module!r}, which is not installed")
        self.extra = extra
        self.module = module


class TaskLostError(ArchiverError):
    """A task could not be completed: its worker died more often than retries allow (exit 1;
    nothing was recorded)."""

    def __init__(self, item: str, reason: str) -> None:
        super().__init__(f"{item}: {reason}; nothing was recorded, re-run (finished files are resumed)")
        self.item = item
        self.reason = reason


class Stopped(Exception):
    """Raised inside a task of this process that gave up because the run was stopped (see `run`)."""


class Task(Protocol):
    def result(self) -> Any:
        """The task's return value, or raises the error the task raised."""


class Executor(Protocol):
    """Runs one function per item somewhere; at most `max_inflight` tasks are in flight
    (the driver keeps to it), each may use `task_cpus` cores (and task_cpus + 2 threads)."""

    name: str
    task_cpus: int
    max_inflight: int
    distributed: bool  # tasks run in other processes: they get settings, not open objects

    def submit(self, fn: Callable[[T], R], item: T) -> Task: ...

    def as_completed(self, tasks: list[Task]) -> Iterator[Task]: ...

    def close(self) -> None: ...


@dataclass(eq=False)  # hashed by identity, like a Future
class _Done:
    """A task that already ran (InProcessExecutor)."""

    value: Any = None
    error: BaseException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class InProcessExecutor:
    """Runs each task on the calling thread when it is submitted: the protocol without any
    concurrency, for unit tests and reproducible orders."""

    name = "inprocess"
    distributed = False

    def __init__(self, task_cpus: int = 1, max_inflight: int = 1) -> None:
        self.task_cpus = check_positive(task_cpus, "task_cpus")
        self.max_inflight = check_positive(max_inflight, "max_inflight")

    def submit(self, fn: Callable[[T], R], item: T) -> Task:
        try:
            return _Done(fn(item))
        except Exception as e:  # noqa: BLE001 - re-raised by result(), as a pool would
            return _Done(error=e)

    def as_completed(self, tasks: list[Task]) -> Iterator[Task]:
        yield from tasks

    def close(self) -> None:
        pass


class LocalExecutor:
    """Threads of this process, several files at once: hashing, zstd and I/O release the
    GIL, so a directory of many files keeps every core busy; one big file still spreads
    its chunks over the per-file chunk pool."""

    name = "local"
    distributed = False
    batch_small_files = True  # each task is a hand-off to a thread: archive gives it runs of small files

    def __init__(self, task_cpus: int | None = None, max_inflight: int | None = None) -> None:
        cores = os.cpu_count() or 2
        self.task_cpus = check_positive(task_cpus if task_cpus is not None else cores, "task_cpus")
        self.max_inflight = check_positive(max_inflight if max_inflight is not None else max(2, min(8, cores)),
                                           "max_inflight")
        self._pool = concurrent.futures.ThreadPoolExecutor(self.max_inflight, thread_name_prefix="file")

    def submit(self, fn: Callable[[T], R], item: T) -> Task:
        return self._pool.submit(fn, item)

    def as_completed(self, tasks: list[Task]) -> Iterator[Task]:
        return concurrent.futures.as_completed(tasks)  # type: ignore[arg-type]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def check_positive(value: Any, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(option, f"must be a whole number >= 1, got {value!r}")
    return value


def make(name: str | None = None, *, address: str | None = None, task_cpus: int | None = None,
         max_inflight: int | None = None, max_retries: int = DEFAULT_RAY_RETRIES,
         runtime_env: dict[str, Any] | None = None) -> Executor:
    """The executor called `name` ("local", the default, or "ray"), checked now: a bad option
    or a missing Ray is refused before anything is read or written."""
    name = name or "local"
    if name not in EXECUTORS:
        raise InvalidOptionError("executor", f"must be one of {', '.join(EXECUTORS)}, not {name!r}")
    if name == "local":
        if address is not None:
            raise InvalidOptionError("ray_address", "is only used with the ray executor")
        return LocalExecutor(task_cpus, max_inflight)
    from archiver.rayexec import RayExecutor
    return RayExecutor(address=address, task_cpus=task_cpus or 1, max_inflight=max_inflight,
                       max_retries=max_retries, runtime_env=runtime_env)


def run(executor: Executor, fn: Callable[[T], R], items: Iterable[T],
        describe: Callable[[T], str] = str, stop: Callable[[], None] | None = None) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) as tasks complete, with at most `executor.max_inflight` in flight.
    The first error is raised (after the tasks in flight have finished, so none still
    writes once the caller handles it); a lost task becomes TaskLostError naming its item.
    `stop` is called at the first error or interruption (KeyboardInterrupt, a consumer that
    stops early), to tell the tasks in flight to give up rather than run to their end."""
    pending: dict[Any, T] = {}
    it = iter(items)
    error: BaseException | None = None
    try:
        while True:
            while error is None and len(pending) < executor.max_inflight:
                item = next(it, _END)
                if item is _END:
                    break
                pending[executor.submit(fn, item)] = item  # type: ignore[index]
            if not pending:
                break
            task = next(iter(executor.as_completed(list(pending))))
            item = pending.pop(task)
            try:
                value = task.result()
            except ArchiverError as e:
                error = error or e
                if stop is not None:
                    stop()
                continue
            except Exception as e:  # noqa: BLE001 - a task lost by the executor (worker death, cancellation)
                if error is not None and isinstance(e, Stopped):
                    continue  # gave up after another task's error: that error is the one to report
                error = error or _lost(describe(item), e)
                if stop is not None:
                    stop()
                continue
            if error is None:
                yield item, value
    except BaseException:
        if stop is not None:
            stop()
        raise
    finally:
        for task in list(pending):  # a consumer that stops early: let the running ones finish
            try:
                task.result()
            except BaseException:  # noqa: BLE001
                pass
    if error is not None:
        raise error


def lost(item: str, e: BaseException) -> ArchiverError:
    """The error for a task of `item` that failed other than by an ArchiverError: the
    ArchiverError a Ray worker carried back, else TaskLostError naming the item."""
    return _lost(item, e)


def _lost(item: str, e: BaseException) -> ArchiverError:
    lost = getattr(e, "archiver_error", None)  # an ArchiverError carried back from a Ray worker
    if isinstance(lost, ArchiverError):
        return lost
    return TaskLostError(item, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")


_END: Any = object()
