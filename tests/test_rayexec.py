"""archive / verify --deep / restore on Ray give what the local executor gives; worker deaths
are retried, errors are not; a hostile manifest is refused before any task is submitted.
One local Ray (2 CPUs) for the whole session (conftest.ray_session)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from archiver import api, layout
from archiver.errors import SourceChangedError, UnsafePathError
from archiver.executors import TaskLostError
from archiver.rayexec import RayExecutor
from manifests.model import Entry, Manifest
from tests.conftest import RAY_WORKER_ENV
from tests.fixtures import make_gguf, make_torch_zip, random_tensor_bytes, transformer_tensors
from tests.helpers import make_checkpoint, run_cli, tree

pytestmark = pytest.mark.usefixtures("ray_session")


def fixture_checkpoint(root: Path) -> Path:
    """safetensors (bf16 + fp32), GGUF, torch zip, an empty file and an empty directory."""
    src = make_checkpoint(root, layers=2, dim=64)
    make_gguf(root / "model.gguf", {"w": ("F32", [64, 4], random_tensor_bytes("F32", 256, seed=3))},
              kv={"general.name": "t"})
    make_torch_zip(root / "model.pt", transformer_tensors(n_layers=1, hidden=16, vocab=32))
    return src


def hooked(how: str, **kw) -> RayExecutor:
    """A Ray executor whose workers run the test-only hook of tests/rayhooks.py (installed at
    worker start by tests/rayhook_site/sitecustomize.py, through runtime_env only)."""
    site = Path(__file__).resolve().parent / "rayhook_site"  # its sitecustomize installs the hook
    root = Path(__file__).resolve().parent.parent
    env = {"env_vars": {**RAY_WORKER_ENV, "ARCHIVER_TEST_HOOK": how,
                        "PYTHONPATH": os.pathsep.join([str(site), str(root), os.environ.get("PYTHONPATH", "")])}}
    return RayExecutor(task_cpus=1, max_inflight=2, runtime_env=env, **kw)


@pytest.mark.parametrize("where", ["local", pytest.param("s3-server", marks=pytest.mark.integration)])
def test_same_manifest_id_local_and_ray(where, tmp_path, home, request):
    src = fixture_checkpoint(tmp_path / "src")
    if where == "local":
        stores = [str(tmp_path / "local"), str(tmp_path / "ray")]
    else:
        base = request.getfixturevalue("s3_server_url")
        stores = [base + "-local", base + "-ray"]
    local = api.archive([src], name="m", store=stores[0], executor="local")
    r = run_cli("--store", stores[1], "archive", str(src), "--name", "m", "--executor", "ray", "--task-cpus", "1",
                "--max-inflight", "3", "--json")
    assert r.code == 0, r.out + r.err
    assert r.json()["id"] == local.id and r.json()["files"] == local.files == 6
    assert r.json()["chunks"] == local.chunks and r.json()["resumed_files"] == 0
    v = run_cli("--store", stores[1], "verify", "--all", "--deep", "--executor", "ray", "--json")
    assert v.code == 0 and v.json()["files_hashed"] == 6, v.out


def test_worker_killed_mid_file_is_retried_same_id(tmp_path, home):
    src = fixture_checkpoint(tmp_path / "src")
    local = api.archive([src], name="m", store=str(tmp_path / "local"))
    store = str(tmp_path / "ray")
    marker = tmp_path / "killed-once"
    res = api.archive([src], name="m", store=store, executor=hooked(f"kill-once:{marker}"))
    assert marker.exists()  # a worker really was SIGKILLed after a chunk of some file
    assert res.id == local.id
    v = api.verify([res.id], deep=True, store=store)
    assert v.ok and v.files_hashed == 6  # no manifest names a missing chunk


def test_retries_exhausted_exit_1_nothing_recorded(tmp_path, home):
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(5000))
    store = str(tmp_path / "store")
    with pytest.raises(TaskLostError) as e:
        api.archive([src], name="m", store=store, executor=hooked("kill-always", max_retries=1))
    assert e.value.exit_code == 1 and "\n" not in str(e.value) and "w.bin" in str(e.value)
    assert api.list_archives(store=store) == []  # no catalog row
    assert not list((tmp_path / "store" / "manifests").rglob("*.json")) if (tmp_path / "store" / "manifests").exists() \
        else True  # no manifest


def test_source_changed_is_not_retried(tmp_path, home):
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(5000))
    counter = tmp_path / "attempts"
    store = str(tmp_path / "store")
    with pytest.raises(SourceChangedError):
        api.archive([src], name="m", store=store, executor=hooked(f"touch:{counter}", max_retries=3))
    assert len(counter.read_text().splitlines()) == 1
    assert api.list_archives(store=store) == []


def _damage(store: Path) -> None:
    """Flip a byte in one chunk object and delete another."""
    chunks = sorted(p for p in (store / "chunks").rglob("*") if p.is_file())
    data = bytearray(chunks[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunks[0].write_bytes(bytes(data))
    chunks[-1].unlink()


def test_deep_verify_ray_reports_what_local_reports(tmp_path, home):
    src = fixture_checkpoint(tmp_path / "src")
    store = tmp_path / "store"
    a = api.archive([src], name="m", store=str(store))
    _damage(store)
    local = api.verify([a.id], deep=True, store=str(store))
    ray = api.verify([a.id], deep=True, store=str(store), executor="ray", task_cpus=1)
    assert not local.ok and len(local.problems) >= 2
    assert [p.line() for p in ray.problems] == [p.line() for p in local.problems]
    assert (ray.chunks_read, ray.files_hashed) == (local.chunks_read, local.files_hashed)
    r = run_cli("--store", str(store), "verify", a.id, "--deep", "--executor", "ray", "--json")
    assert r.code == 1 and len(r.json()["problems"]) == len(local.problems)


def test_restore_ray_byte_identical(tmp_path, home):
    src = fixture_checkpoint(tmp_path / "src")
    store = str(tmp_path / "store")
    a = api.archive([src], name="m", store=store)
    out = tmp_path / "out"
    r = run_cli("--store", store, "restore", a.id, str(out), "--executor", "ray", "--json")
    assert r.code == 0, r.out + r.err
    assert tree(out / "src") == tree(src)


def test_restore_ray_never_leaves_a_damaged_file_under_its_name(tmp_path, home):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(4000))
    (src / "b.bin").write_bytes(os.urandom(4000))
    store = tmp_path / "store"
    a = api.archive([src], name="m", store=str(store))
    m = api.show(a.id, store=str(store))[1]
    bad = next(e for e in m.files if e.path == "src/a.bin").chunks[0].hash
    (store / layout.chunk(bad)).write_bytes(b"\0" * 10)
    res = api.restore(a.id, tmp_path / "out", store=str(store), executor="ray", task_cpus=1)
    assert not res.ok and [p.path for p in res.problems] == ["src/a.bin"]
    left = sorted(p.name for p in (tmp_path / "out" / "src").iterdir())
    assert left == ["b.bin"]  # neither a.bin nor a temp file


class Spy:
    """Wraps an executor and counts submitted tasks."""

    def __init__(self, inner: RayExecutor) -> None:
        self.inner = inner
        self.submitted = 0
        self.name, self.distributed = inner.name, inner.distributed
        self.task_cpus, self.max_inflight = inner.task_cpus, inner.max_inflight

    def submit(self, fn, item):
        self.submitted += 1
        return self.inner.submit(fn, item)

    def as_completed(self, tasks):
        return self.inner.as_completed(tasks)

    def close(self) -> None:
        pass


def test_restore_ray_refuses_hostile_manifest_before_any_task(tmp_path, home):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(4000))
    store = tmp_path / "store"
    a = api.archive([src], name="m", store=str(store))
    m = api.show(a.id, store=str(store))[1]
    evil = Manifest(name="evil", entries=m.entries + (
        Entry(path="src/link", type="symlink", mode=0o777, target="../../../../etc"),))
    (store / layout.manifest(evil.id)).write_bytes(evil.canonical_json())
    spy = Spy(RayExecutor(task_cpus=1))
    with pytest.raises(UnsafePathError):
        api.restore(evil.id, tmp_path / "out", store=str(store), executor=spy)
    assert spy.submitted == 0 and not (tmp_path / "out" / "src" / "a.bin").exists()


def test_workers_run_with_one_blas_thread(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    ex = RayExecutor(task_cpus=1, max_inflight=1)
    assert ex.submit(os.getenv, "OPENBLAS_NUM_THREADS").result() == "1"
