"""The runtime_env Ray tasks are submitted with (rayexec.worker_runtime_env), without a Ray
cluster: one OpenBLAS thread per worker unless the caller chose a number."""
from __future__ import annotations

from archiver.rayexec import worker_runtime_env


def test_workers_get_one_blas_thread_by_default():
    env = worker_runtime_env(None, {})
    assert env == {"env_vars": {"OPENBLAS_NUM_THREADS": "1"}}


def test_callers_runtime_env_is_kept_and_not_modified():
    given = {"env_vars": {"A": "b"}, "worker_process_setup_hook": "x.y"}
    env = worker_runtime_env(given, {})
    assert env == {"env_vars": {"A": "b", "OPENBLAS_NUM_THREADS": "1"}, "worker_process_setup_hook": "x.y"}
    assert given == {"env_vars": {"A": "b"}, "worker_process_setup_hook": "x.y"}


def test_a_value_the_user_set_wins():
    assert worker_runtime_env({"env_vars": {"OPENBLAS_NUM_THREADS": "8"}}, {"OPENBLAS_NUM_THREADS": "4"}) == \
        {"env_vars": {"OPENBLAS_NUM_THREADS": "8"}}
    assert worker_runtime_env(None, {"OPENBLAS_NUM_THREADS": "4"}) == {"env_vars": {"OPENBLAS_NUM_THREADS": "4"}}
