"""Test-only: put on a Ray worker's PYTHONPATH (runtime_env env_vars) so that the worker
installs tests/rayhooks.py when it starts. Ray's worker_process_setup_hook is job-level
only, and the test session shares one Ray job."""
import os

if os.environ.get("ARCHIVER_TEST_HOOK"):
    from tests import rayhooks

    rayhooks.install()
