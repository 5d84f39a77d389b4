"""Crash safety: kill -9 an archive at several points, re-run, and check that it
completes with the same manifest id, uploads only the missing chunks, and that no
manifest in the store ever references a missing chunk."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import RawStore, make_checkpoint, run_cli

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def crash_run(env: dict, spec: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.crashrunner", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**env, "CRASH_AT": spec}, timeout=300)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    home = tmp_path / "home"
    store = tmp_path / "store"
    env = {**os.environ, "ARCHIVER_HOME": str(home), "ARCHIVER_STORE": str(store)}
    env.pop("ARCHIVER_CATALOG", None)
    monkeypatch.setenv("ARCHIVER_HOME", str(home))
    monkeypatch.setenv("ARCHIVER_STORE", str(store))
    # ~40 MB of bf16 tensors: tens of chunks, so a crash can land mid-upload
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=10, dim=1400)
    return env, store, ckpt


def reference_id(tmp_path: Path, ckpt: Path) -> tuple[str, int]:
    """The id and chunk count an uninterrupted archive gives, in a separate store."""
    r = run_cli("--store", str(tmp_path / "ref-store"), "--catalog", str(tmp_path / "ref.db"),
                "archive", str(ckpt), "--name", "model", "--json")
    assert r.code == 0, r.err
    return r.json()["id"], r.json()["chunks"]


def no_manifest_references_missing_chunks(store: Path) -> None:
    raw = RawStore(str(store))
    present = set(k.rsplit("/", 1)[-1] for k in raw.keys("chunks"))
    import json
    for key in raw.keys("manifests"):
        m = json.loads(raw.read(key))
        for e in m["entries"]:
            for c in e.get("chunks", []):
                assert c[2] in present, f"{key} references missing chunk {c[2]}"


@pytest.mark.parametrize("spec", ["put:1", "put:7", "record", "commit"])
def test_kill9_then_rerun(setup, tmp_path, spec):
    env, store, ckpt = setup
    want, nchunks = reference_id(tmp_path, ckpt)
    p = crash_run(env, spec, "archive", str(ckpt), "--name", "model", "--json")
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr)
    no_manifest_references_missing_chunks(store)
    # nothing half-recorded: the catalog has no manifest yet
    assert run_cli("list", "--json").json() == []
    stored_before = len(RawStore(str(store)).keys("chunks"))
    assert (stored_before < nchunks) if spec.startswith("put") else (stored_before == nchunks)
    r = run_cli("archive", str(ckpt), "--name", "model", "--json")
    assert r.code == 0, r.err
    res = r.json()
    assert res["id"] == want
    assert res["new_chunks"] == nchunks - stored_before  # only what was missing is uploaded
    assert run_cli("verify", want, "--deep").code == 0
    no_manifest_references_missing_chunks(store)
    rows = run_cli("list", "--json").json()
    assert [x["id"] for x in rows] == [want]


def test_catalog_commit_is_all_or_nothing(setup, tmp_path):
    env, store, ckpt = setup
    p = crash_run(env, "commit", "archive", str(ckpt), "--name", "model")
    assert p.returncode == -signal.SIGKILL
    db = next((tmp_path / "home").rglob("*.db"))
    conn = sqlite3.connect(db)
    for table in ("manifests", "files", "manifest_chunks", "manifest_filemaps", "chunks", "audit"):
        assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
