"""The Ray executor: one Ray task per file, on the cluster the driver joins.

Ray is imported only here (the `archiver[ray]` extra). A task that raises is not retried
(SourceChangedError, integrity errors: re-running cannot help, and retrying would hide
them); a task whose worker process died (OOM killer, preemption, a lost node) is re-run by
Ray up to `max_retries` times, which is safe because every write is put_if_absent of a
content-addressed object and only the driver commits. An ArchiverError crosses back as
its class, message and fields (exceptions with keyword constructors do not pickle)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from archiver.errors import ArchiverError
from archiver.executors import MissingExtraError, check_positive


@dataclass
class Failure:
    """An ArchiverError raised in a worker, as plain values."""

    cls: type
    message: str
    fields: dict[str, Any]

    def error(self) -> ArchiverError:
        err = self.cls.__new__(self.cls)
        Exception.__init__(err, self.message)
        err.__dict__.update(self.fields)
        return err


def call_catching(fn: Callable[[Any], Any], item: Any) -> Any:
    """Run `fn(item)` in a worker, returning an ArchiverError as a Failure value."""
    try:
        return fn(item)
    except ArchiverError as e:
        return Failure(type(e), str(e), dict(e.__dict__))


# Environment variables every worker gets unless the caller chose a value: numpy's OpenBLAS
# starts a spinning thread per extra core of the node at import, and archiver never
# multiplies matrices (the CLI process sets the same for itself: cli._one_blas_thread).
WORKER_ENV_DEFAULTS = {"OPENBLAS_NUM_THREADS": "1"}


def worker_runtime_env(runtime_env: Mapping[str, Any] | None, driver_env: Mapping[str, str]) -> dict[str, Any]:
    """The runtime_env each task is submitted with: `runtime_env` (not modified) with every
    WORKER_ENV_DEFAULTS variable added to its env_vars, unless the caller set it there or in
    the driver's environment `driver_env` (whose value then goes to the workers, which do
    not inherit the driver's environment on a cluster)."""
    out = dict(runtime_env or {})
    env = dict(out.get("env_vars") or {})
    for name, default in WORKER_ENV_DEFAULTS.items():
        if name not in env:
            env[name] = driver_env.get(name, default)
    out["env_vars"] = env
    return out


class _RayTask:
    def __init__(self, ref: Any, ray: Any) -> None:
        self.ref = ref
        self._ray = ray

    def result(self) -> Any:
        value = self._ray.get(self.ref)
        if isinstance(value, Failure):
            raise value.error()
        return value

    def __hash__(self) -> int:
        return hash(self.ref)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _RayTask) and other.ref == self.ref


class RayExecutor:
    """Tasks on Ray: `address` None joins the cluster named by RAY_ADDRESS or starts a local
    one; "auto" joins the running cluster of this node. Each task asks for `task_cpus` CPUs."""

    name = "ray"
    distributed = True

    def __init__(self, *, address: str | None = None, task_cpus: int = 1, max_inflight: int | None = None,
                 max_retries: int = 3, runtime_env: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise MissingExtraError("ray", "ray", "the ray executor") from None
        self._ray = ray
        self.task_cpus = check_positive(task_cpus, "task_cpus")
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        if max_inflight is None:  # enough to keep every CPU of the cluster busy, and one more round queued
            cpus = int(ray.cluster_resources().get("CPU", 1))
            max_inflight = max(1, 2 * cpus // self.task_cpus)
        self.max_inflight = check_positive(max_inflight, "max_inflight")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            from archiver.errors import InvalidOptionError
            raise InvalidOptionError("max_retries", f"must be a whole number >= 0, got {max_retries!r}")
        options: dict[str, Any] = {"num_cpus": self.task_cpus, "max_retries": max_retries,
                                   "retry_exceptions": False}
        options["runtime_env"] = worker_runtime_env(runtime_env, os.environ)
        self._remote = ray.remote(call_catching).options(**options)

    def submit(self, fn: Callable[[Any], Any], item: Any) -> _RayTask:
        return _RayTask(self._remote.remote(fn, item), self._ray)

    def as_completed(self, tasks: list[_RayTask]) -> Iterator[_RayTask]:
        left = {t.ref: t for t in tasks}
        while left:
            done, _ = self._ray.wait(list(left), num_returns=1)
            for ref in done:
                yield left.pop(ref)

    def close(self) -> None:
        pass  # the Ray session outlives a command run from Python; the CLI process exits anyway
