"""replicate and repair through the fault-injecting proxy (lost responses, resets, dropped
connections): they converge, and no copy ever holds a manifest naming a missing chunk."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import boto3
import pytest

from archiver import layout
from manifests.model import parse_manifest
from tests.conftest import _delete_bucket
from tests.faultproxy import FaultProxy
from tests.helpers import RawStore, make_checkpoint, run_cli

pytestmark = pytest.mark.integration

CHUNK = r"/c/chunks/[0-9a-f]{2}/[0-9a-f]{64}$"
MANIFEST = r"/c/manifests/[0-9a-f]{64}\.json$"
SIGNATURE = r"/c/signatures/"
LIST = r"[?&]list-type=2(&|$)"


@pytest.fixture
def env(tmp_path: Path, moto_server: str, aws_env, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """(local source with one signed archive, S3 copy URL through the proxy, proxy, direct client)."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    for var in ("ARCHIVER_STORE", "ARCHIVER_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    direct = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    direct.create_bucket(Bucket=bucket)
    src = str(tmp_path / "src")
    assert run_cli("keygen", str(tmp_path / "key")).code == 0
    ck = make_checkpoint(tmp_path / "ck", layers=3, dim=64)
    assert run_cli("--store", src, "archive", str(ck), "--name", "m", "--sign-key", str(tmp_path / "key")).code == 0
    with FaultProxy(moto_server) as proxy:
        yield src, f"s3://{bucket}/c?endpoint={proxy.url}", proxy, direct, bucket
    _delete_bucket(direct, bucket)


def copy_keys(direct, bucket: str, prefix: str) -> list[str]:
    resp = direct.list_objects_v2(Bucket=bucket, Prefix="c/" + prefix)
    return sorted(o["Key"][2:] for o in resp.get("Contents", []) or [])


def no_manifest_names_a_missing_chunk(direct, bucket: str) -> None:
    chunks = set(copy_keys(direct, bucket, layout.CHUNKS))
    for key in copy_keys(direct, bucket, layout.MANIFESTS):
        body = direct.get_object(Bucket=bucket, Key="c/" + key)["Body"].read()
        for h in parse_manifest(body).unique_chunks():
            assert layout.chunk(h) in chunks


def test_replicate_converges_through_lost_responses_and_resets(env) -> None:
    src, dst, proxy, direct, bucket = env
    # prepare the copy (store marker and probe) first, so the faults land on replicate's own writes
    assert run_cli("store", "check", dst).code == 0
    proxy.add("lose_response", method="PUT", path=CHUNK, times=2)
    proxy.add("reset", method="PUT", path=CHUNK, times=1, skip=1)
    proxy.add("drop", method="GET", path=LIST, times=1)
    proxy.add("lose_response", method="PUT", path=MANIFEST, times=1)
    proxy.add("reset", method="PUT", path=SIGNATURE, times=1)
    r = run_cli("--store", src, "replicate", "--all", "--to", dst, "--json")
    assert r.code == 0, r.out + r.err
    assert len(proxy.faults()) >= 5  # every fault really fired
    no_manifest_names_a_missing_chunk(direct, bucket)
    for prefix in (layout.CHUNKS, layout.MANIFESTS, layout.SIGNATURES):
        assert copy_keys(direct, bucket, prefix) == RawStore(src).keys(prefix)
    proxy.clear()
    again = run_cli("--store", src, "replicate", "--all", "--to", dst, "--json")
    assert again.code == 0 and again.json()["objects_written"] == 0
    assert run_cli("--store", dst, "verify", "--all", "--deep").code == 0


def test_replicate_cut_short_by_faults_then_converges(env, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst, proxy, direct, bucket = env
    assert run_cli("store", "check", dst).code == 0
    monkeypatch.setenv("ARCHIVER_S3_MAX_ATTEMPTS", "2")
    proxy.add("reset", method="PUT", path=CHUNK, times=None, skip=1)  # the first chunk lands, the rest never
    failed = run_cli("--store", src, "replicate", "--all", "--to", dst, "--json")
    assert failed.code == 1 and failed.json()["kind"] == "store"  # one line, no traceback
    assert copy_keys(direct, bucket, layout.MANIFESTS) == []  # no manifest without every chunk
    no_manifest_names_a_missing_chunk(direct, bucket)
    present = len(copy_keys(direct, bucket, layout.CHUNKS))
    proxy.clear()
    r = run_cli("--store", src, "replicate", "--all", "--to", dst, "--json")
    assert r.code == 0, r.out + r.err
    total = sum(len(RawStore(src).keys(p)) for p in (layout.CHUNKS, layout.MANIFESTS, layout.SIGNATURES))
    assert r.json()["objects_written"] == total - present
    assert run_cli("--store", dst, "verify", "--all", "--deep").code == 0


def test_repair_of_an_s3_copy_through_lost_responses(env) -> None:
    src, dst, proxy, direct, bucket = env
    assert run_cli("--store", src, "replicate", "--all", "--to", dst).code == 0
    chunks = copy_keys(direct, bucket, layout.CHUNKS)
    full = "c/" + chunks[0]
    body = direct.get_object(Bucket=bucket, Key=full)["Body"].read()
    direct.put_object(Bucket=bucket, Key=full, Body=body[:-1] + bytes([body[-1] ^ 1]))
    direct.delete_object(Bucket=bucket, Key="c/" + chunks[1])
    proxy.add("lose_response", method="PUT", path=CHUNK, times=2)  # the If-Match replace and the plain put
    proxy.add("reset", method="GET", path=CHUNK, times=1)
    r = run_cli("--store", dst, "repair", "--from", src, "--json")
    assert r.code == 0, r.out + r.err
    assert sorted(f["action"] for f in r.json()["fixes"]) == ["replaced", "written"]
    assert len(proxy.faults()) == 3
    proxy.clear()
    assert run_cli("--store", dst, "verify", "--all", "--deep").code == 0
