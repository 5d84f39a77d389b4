"""Cold storage classes (archiver/thaw.py, restore --thaw, verify with cold chunks) on moto,
which answers a GET of an unthawed GLACIER / DEEP_ARCHIVE object with InvalidObjectState and
implements RestoreObject. By default moto finishes a restore at once; `held_thaw` holds every
restore IN_PROGRESS (moto's state manager, manual progression) until the test moves it to
RESTORED, so the states are driven deterministically, whatever the machine's speed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import boto3
import pytest

from archiver.stores.s3 import S3Store
from tests.helpers import make_checkpoint, run_cli, tree


@pytest.fixture(scope="module")
def inprocess_moto_server() -> Iterator[str]:
    """moto's HTTP server in this process (the session-wide one runs in its own process): the
    thaw tests reach into moto's backend to hold restores IN_PROGRESS, so the server must
    share this process's backend."""
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    finally:
        server.stop()


@pytest.fixture(params=["s3-mock", pytest.param("s3-server", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> str:
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    if request.param == "s3-mock":
        return request.getfixturevalue("s3_mock_url")
    request.getfixturevalue("aws_env")
    server = request.getfixturevalue("inprocess_moto_server")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server)
    bucket = f"archiver-thaw-{os.urandom(6).hex()}"
    boto3.client("s3", endpoint_url=server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/prefix"


@pytest.fixture
def held_thaw(monkeypatch) -> Iterator[Callable[[], int]]:
    """Every RestoreObject leaves its object IN_PROGRESS (x-amz-restore ongoing-request="true")
    until the returned function moves every such object to RESTORED (moto in this process: the
    mock and the HTTP server share one backend)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.moto_api import state_manager
    from moto.s3.models import FakeKey, s3_backends

    real_restore = FakeKey.restore

    def restore_in_progress(self, days):
        real_restore(self, days)
        self._status = "IN_PROGRESS"

    def finish() -> int:
        done = 0
        for bucket in s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets.values():
            for key in bucket.keys.values():
                if isinstance(key, FakeKey) and key._status == "IN_PROGRESS":
                    key._status = "RESTORED"
                    done += 1
        return done

    monkeypatch.setattr(FakeKey, "restore", restore_in_progress)
    state_manager.set_transition("s3::keyrestore", {"progression": "manual", "times": 10 ** 9})
    try:
        yield finish
    finally:
        state_manager.unset_transition("s3::keyrestore")


def _archive(store: str, src: Path, *extra: str) -> dict:
    r = run_cli("--store", store, "archive", str(src), "--name", "m", "--json", *extra)
    assert r.code == 0, r.err
    return r.json()


def _chunk_keys(store: str) -> list[str]:
    bucket, prefix = store[5:].split("/", 1)
    c = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    return [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/chunks/").get("Contents", [])]


def test_verify_with_cold_chunks_shallow_passes_deep_reports_them_apart(store: str, tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    res = _archive(store, src, "--storage-class", "DEEP_ARCHIVE")
    assert run_cli("--store", store, "verify", "m").code == 0  # shallow: LIST only, no thaw needed
    for mode in (["--deep"], ["--sample", "1"]):
        r = run_cli("--store", store, "verify", "m", "--json", *mode)
        assert r.code == 0, r.out
        rep = r.json()
        assert rep["problems"] == [] and rep["chunks_read"] == 0
        assert len(rep["not_checked_cold"]) == res["chunks"]
        human = run_cli("--store", store, "verify", "m", *mode)
        assert human.code == 0 and "not checked (cold)" in human.out
    # cold is not a hiding place for damage: a missing cold chunk is still a problem
    bucket = store[5:].split("/")[0]
    boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL")).delete_object(
        Bucket=bucket, Key=_chunk_keys(store)[0])
    r = run_cli("--store", store, "verify", "m", "--deep", "--json")
    assert r.code == 1 and [p["kind"] for p in r.json()["problems"]] == ["missing-chunk"]
    assert len(r.json()["not_checked_cold"]) == res["chunks"] - 1


def test_rearchive_onto_cold_chunks_proves_them_by_etag_and_refuses_a_changed_one(store: str, tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    first = _archive(store, src, "--storage-class", "GLACIER")
    again = run_cli("--store", store, "archive", str(src), "--name", "m", "--label", "2", "--json")
    assert again.code == 0, again.err
    assert again.json()["new_chunks"] == 0 and again.json()["chunks"] == first["chunks"]
    # an object that is not this encoding cannot be proved without a thaw: nothing is recorded
    bucket = store[5:].split("/")[0]
    key = _chunk_keys(store)[0]
    c = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    c.put_object(Bucket=bucket, Key=key, Body=b"rotten bytes", StorageClass="GLACIER")
    bad = run_cli("--store", store, "archive", str(src), "--name", "m", "--label", "3")
    assert bad.code == 1 and len(bad.err.strip().splitlines()) == 1 and "GLACIER" in bad.err
    assert "nothing was recorded" in bad.err


def test_restore_of_cold_chunks_is_refused_before_anything_is_written(store: str, tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    res = _archive(store, src, "--storage-class", "DEEP_ARCHIVE")
    dest = tmp_path / "out"
    r = run_cli("--store", store, "restore", "m", str(dest), "--json")
    assert r.code == 2, r.err
    assert f"{res['chunks']} chunks" in r.err and "DEEP_ARCHIVE" in r.err and "--thaw" in r.err
    assert r.json()["kind"] == "cold-chunks" and r.json()["chunks"] == res["chunks"]
    assert not dest.exists()
    # STANDARD_IA and GLACIER_IR are read like STANDARD: no thaw
    src2 = tmp_path / "src2"
    src2.mkdir()
    (src2 / "weights.bin").write_bytes(os.urandom(100_000))  # shares no chunk with the cold archive
    r = run_cli("--store", store, "archive", str(src2), "--name", "ir", "--storage-class", "GLACIER_IR")
    assert r.code == 0, r.err
    assert run_cli("--store", store, "restore", "ir", str(tmp_path / "ir")).code == 0
    assert tree(tmp_path / "ir" / "src2") == tree(src2)


def test_thaw_requests_once_resumes_without_rerequesting_and_restores(
        store: str, tmp_path: Path, monkeypatch, held_thaw: Callable[[], int]) -> None:
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    (src / "copy.safetensors").write_bytes((src / "model.safetensors").read_bytes())  # same chunks twice
    res = _archive(store, src, "--storage-class", "GLACIER")
    requests: list[str] = []
    real = S3Store.request_thaw

    def counting(self, key, days, tier):
        requests.append(key)
        return real(self, key, days, tier)

    monkeypatch.setattr(S3Store, "request_thaw", counting)
    dest = tmp_path / "out"
    r = run_cli("--store", store, "restore", "m", str(dest), "--thaw", "--no-wait", "--tier", "Standard",
                "--days", "2", "--json")
    assert r.code == 0, r.err
    thaw = r.json()["thaw"]
    assert thaw["requested"] == res["chunks"] == len(requests) == len(set(requests))  # once per distinct chunk
    assert thaw["thawing"] == res["chunks"] and not thaw["ready"] and not dest.exists()
    # killed and re-run: chunks already thawing are recognised, not requested again
    again = run_cli("--store", store, "restore", "m", str(dest), "--thaw", "--no-wait", "--json")
    assert again.code == 0 and again.json()["thaw"]["requested"] == 0 and len(requests) == res["chunks"]
    # without --thaw a thawing chunk is still refused
    assert run_cli("--store", store, "restore", "m", str(dest)).code == 2
    # the thaw finishes while the restore waits: it polls (a progress line each time), then
    # restores. The thaw finishes at the first poll, so a slow machine cannot skip the wait.
    import archiver.thaw as thaw_mod
    real_poll = thaw_mod._poll

    def poll_after_finishing(repo, st):
        held_thaw()
        real_poll(repo, st)

    monkeypatch.setattr(thaw_mod, "_poll", poll_after_finishing)
    done = run_cli("--store", store, "restore", "m", str(dest), "--thaw", "--poll", "0.1")
    assert done.code == 0, done.err
    lines = [line for line in done.err.splitlines() if line.startswith("thaw: ")]
    assert len(lines) >= 2 and "0/" in lines[0] and f"{res['chunks']}/{res['chunks']} chunks readable" in lines[-1]
    assert len(requests) == res["chunks"]
    assert tree(dest / "src") == tree(src)
    # thawed chunks can be deep-verified
    v = run_cli("--store", store, "verify", "m", "--deep", "--json")
    assert v.code == 0 and v.json()["not_checked_cold"] == [] and v.json()["chunks_read"] > 0


def test_expedited_is_refused_for_deep_archive(store: str, tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    _archive(store, src, "--storage-class", "DEEP_ARCHIVE")
    r = run_cli("--store", store, "restore", "m", str(tmp_path / "out"), "--thaw", "--tier", "Expedited")
    assert r.code == 2 and "--tier" in r.err and not (tmp_path / "out").exists()


def test_deep_verify_with_thaw_checks_cold_chunks_after_thawing(s3_mock_url: str, tmp_path: Path,
                                                                 monkeypatch) -> None:
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    store = s3_mock_url
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    res = _archive(store, src, "--storage-class", "GLACIER")
    r = run_cli("--store", store, "verify", "m", "--sample", "1", "--thaw", "--tier", "Expedited", "--json")
    assert r.code == 0, r.out
    rep = r.json()
    assert rep["not_checked_cold"] == [] and rep["chunks_read"] == res["chunks"]
    assert rep["thaw"]["requested"] == res["chunks"] and rep["thaw"]["ready"]
    # damage in a thawed chunk is found like any other
    bucket, prefix = store[5:].split("/", 1)
    c = boto3.client("s3")
    key = _chunk_keys(store)[0]
    body = bytearray(c.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-1] ^= 1
    c.put_object(Bucket=bucket, Key=key, Body=bytes(body), StorageClass="GLACIER")
    bad = run_cli("--store", store, "verify", "m", "--deep", "--thaw", "--poll", "0.01", "--json")
    assert bad.code == 1 and [p["kind"] for p in bad.json()["problems"]] == ["corrupt-chunk"]
    assert bad.json()["thaw"]["requested"] == 1  # only the rewritten object needed a new thaw


def test_verify_with_thaw_no_wait_reports_the_rest_as_not_checked(s3_mock_url: str, tmp_path: Path, monkeypatch,
                                                                   held_thaw: Callable[[], int]) -> None:
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    store = s3_mock_url
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    res = _archive(store, src, "--storage-class", "DEEP_ARCHIVE")
    r = run_cli("--store", store, "verify", "m", "--deep", "--thaw", "--no-wait", "--json")
    assert r.code == 0, r.out
    assert len(r.json()["not_checked_cold"]) == res["chunks"] and r.json()["thaw"]["thawing"] == res["chunks"]
