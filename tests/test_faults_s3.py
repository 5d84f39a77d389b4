"""S3 faults, injected over real HTTP: a fault proxy (tests/faultproxy.py) on 127.0.0.1
in front of moto's server answers 503 SlowDown / 500, resets or drops connections, cuts
GET bodies mid-stream, loses PUT responses after moto stored the object, and rejects
checksum headers like some S3-compatible servers. The archiver must retry with backoff,
resume cut downloads with ranged GETs (re-hashing what it reads), and when retries run
out fail with one clear line and no manifest. Buckets are checked with a boto3 client
that talks to moto directly, never through the proxy."""
from __future__ import annotations

import functools
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.retries.standard import ExponentialBackoff

import archiver.settings
from archiver.errors import StoreError
from archiver.stores import ObjectInfo, S3Options, open_store
from archiver.stores.s3 import MiB
from tests.conftest import _delete_bucket
from tests.faultproxy import FaultProxy
from tests.helpers import make_checkpoint, run_cli, tree

pytestmark = pytest.mark.integration

CHUNKS = r"/prefix/chunks/[0-9a-f]{2}/[0-9a-f]{64}$"  # a chunk object's request target
MANIFESTS = r"/prefix/manifests/[0-9a-f]{64}\.json$"
LIST = r"[?&]list-type=2(&|$)"


@dataclass
class S3Env:
    url: str  # s3://bucket/prefix, reached through the proxy (AWS_ENDPOINT_URL)
    bucket: str
    proxy: FaultProxy
    direct: Any  # boto3 client straight to moto

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.direct.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"prefix/{prefix}")
        return sorted(o["Key"][len("prefix/"):] for page in pages for o in page.get("Contents", []) or [])

    def uploads(self) -> list[dict]:
        return self.direct.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []) or []


@pytest.fixture
def proxy(moto_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server) as p:
        yield p
    assert not [e for e in p.errors if not isinstance(e, (ConnectionError, TimeoutError))], p.errors


@pytest.fixture
def s3(moto_server: str, proxy: FaultProxy, aws_env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Env]:
    """A fresh bucket on moto (mock_aws in other tests resets moto's global state, so
    never share one), the archiver pointed at it through the proxy, an empty home."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    monkeypatch.delenv("ARCHIVER_CATALOG", raising=False)
    direct = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    direct.create_bucket(Bucket=bucket)
    yield S3Env(f"s3://{bucket}/prefix", bucket, proxy, direct)
    _delete_bucket(direct, bucket)


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every delay botocore's standard retry mode computes (and then sleeps)."""
    delays: list[float] = []
    real = ExponentialBackoff.delay_amount

    def spy(self, context):
        delay = real(self, context)
        delays.append(delay)
        return delay

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", spy)
    return delays


def fast_retries(monkeypatch: pytest.MonkeyPatch, **options: Any) -> None:
    """Make the stores the CLI opens use these S3Options (e.g. few attempts)."""
    monkeypatch.setattr(archiver.settings, "S3Options", functools.partial(S3Options, **options))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~8.5 MB of tensors: several chunk objects, plus small JSON/text ones. Built once
    (it takes ~2 s) and only ever read."""
    return make_checkpoint(tmp_path_factory.mktemp("src") / "ckpt", layers=4, dim=1024)


def one_line_error(r) -> str:
    assert r.code == 1, (r.code, r.out, r.err)
    assert "Traceback" not in r.err
    assert r.err.startswith("archiver: error: ") and r.err.count("\n") == 1, r.err
    return r.err.strip()


def archive_ok(s3: S3Env, ckpt: Path, name: str = "model") -> dict:
    r = run_cli("--store", s3.url, "archive", str(ckpt), "--name", name, "--json")
    assert r.code == 0, r.err
    return r.json()


def verify_and_restore(s3: S3Env, mid: str, ckpt: Path, dest: Path) -> None:
    v = run_cli("--store", s3.url, "verify", mid, "--deep", "--json")
    assert v.code == 0, v.out + v.err
    assert v.json()["ok"] and v.json()["problems"] == []
    r = run_cli("--store", s3.url, "restore", mid, str(dest), "--json")
    assert r.code == 0, r.err
    assert tree(dest / ckpt.name) == tree(ckpt)


def nothing_recorded(s3: S3Env) -> None:
    """No manifest in the bucket (seen by moto directly) and none in the catalog."""
    s3.proxy.clear()
    s3.proxy.reject_checksums = False
    assert s3.keys("manifests/") == []
    r = run_cli("--store", s3.url, "list", "--json")
    if "store.json" in s3.keys():
        assert r.code == 0, r.err
        assert r.json() == []
    else:  # failed before the store was even created
        assert r.code == 2 and "no archiver store" in r.err


def target(s3: S3Env, key: str) -> str:
    """Regex for exactly the request target of `key` (no query)."""
    return re.escape(f"/{s3.bucket}/prefix/{key}") + "$"


# -- 1. transient faults are retried with backoff ---------------------------------------


@pytest.mark.parametrize("kind", ["slowdown", "internal", "reset", "drop"])
def test_store_ops_survive_transient_faults(s3: S3Env, kind: str, backoffs: list[float]) -> None:
    store = open_store(s3.url, create=True)
    key = "chunks/ab/" + "ab" * 32
    data = os.urandom(300_000)
    # SlowDown is a throttling error: botocore backs off rand * 1 s, 2 s, ...; keep it short
    n = 1 if kind == "slowdown" else 3
    ops = [("PUT", target(s3, key)), ("GET", target(s3, key)), ("HEAD", target(s3, key)), ("GET", LIST)]
    for method, path in ops:
        s3.proxy.add(kind, method=method, path=path, times=n)
    s3.proxy.reset_log()
    backoffs.clear()
    started = time.monotonic()
    assert store.put_if_absent(key, data) is True
    assert store.get(key) == data
    assert store.stat(key) == ObjectInfo(key, len(data))
    assert [o.key for o in store.list("chunks/")] == [key]
    elapsed = time.monotonic() - started

    for method, path in ops:  # n faults, then the retry that got through
        seen = s3.proxy.requests(method, path)
        assert [s.fault for s in seen] == [kind] * n + [None], (method, path, seen)
        assert seen[-1].status == 200
        for failed, retry in zip(seen, seen[1:]):
            assert retry.at > failed.at
    assert s3.proxy.by_method() == {"PUT": n + 1, "GET": 2 * (n + 1), "HEAD": n + 1}, s3.proxy.seen
    assert len(backoffs) == 4 * n and sum(backoffs) > 0
    assert elapsed >= sum(backoffs)  # botocore really slept between the attempts
    if kind == "slowdown":
        assert max(backoffs) <= 1.0  # first retry of a throttled request: rand * 1 s
    else:
        assert max(backoffs) <= 0.05 * 2 ** (n - 1)  # non-throttling: rand * 50 ms * 2^i
    assert s3.direct.get_object(Bucket=s3.bucket, Key=f"prefix/{key}")["Body"].read() == data


def test_mixed_faults_on_one_put_are_retried(s3: S3Env, backoffs: list[float]) -> None:
    store = open_store(s3.url, create=True)
    key = "chunks/cd/" + "cd" * 32
    for kind in ("slowdown", "internal", "reset", "drop"):  # throttling first: its backoff is 1 s * 2^i
        s3.proxy.add(kind, method="PUT", path=target(s3, key))
    backoffs.clear()
    assert store.put_if_absent(key, b"payload") is True
    assert [s.fault for s in s3.proxy.requests("PUT", target(s3, key))] == [
        "slowdown", "internal", "reset", "drop", None]
    assert len(backoffs) == 4
    assert store.get(key) == b"payload"


# -- 2. bodies cut mid-stream are resumed with ranged GETs ------------------------------


def test_cut_get_resumed_with_ranged_get(s3: S3Env) -> None:
    store = open_store(s3.url, create=True)
    key = "chunks/ef/" + "ef" * 32
    data = os.urandom(3 * MiB + 5)
    assert store.put_if_absent(key, data) is True
    first_cut, second_cut = 1 * MiB + 3, 1 * MiB
    s3.proxy.add("cut", method="GET", path=target(s3, key), ranged=False, cut_at=first_cut)
    s3.proxy.add("cut", method="GET", path=target(s3, key), ranged=True, cut_at=second_cut)
    assert store.get(key) == data
    gets = s3.proxy.requests("GET", target(s3, key))
    assert [g.fault for g in gets] == ["cut", "cut", None]
    assert s3.proxy.ranges(target(s3, key)) == [f"bytes={first_cut}-", f"bytes={first_cut + second_cut}-"]
    etag = s3.direct.head_object(Bucket=s3.bucket, Key=f"prefix/{key}")["ETag"]
    assert [g.headers.get("if-match") for g in gets] == [None, etag, etag]  # the same object, resumed


def test_cut_chunk_gets_during_verify_and_restore(s3: S3Env, ckpt: Path, tmp_path: Path) -> None:
    res = archive_ok(s3, ckpt)
    assert res["chunks"] >= 3
    s3.proxy.reset_log()
    # the first GET of every chunk object is cut halfway: each must be resumed
    s3.proxy.add("cut", method="GET", path=CHUNKS, ranged=False, times=None)
    verify_and_restore(s3, res["id"], ckpt, tmp_path / "out")
    cuts = s3.proxy.requests("GET", CHUNKS, fault="cut")
    assert len(cuts) >= 2 * res["chunks"]  # verify --deep and restore each read every chunk
    ranged = [s for s in s3.proxy.requests("GET", CHUNKS) if s.range]
    assert len(ranged) == len(cuts)
    for cut in cuts:  # each cut GET is followed by a ranged GET of the same object from byte N > 0
        resume = next(s for s in ranged if s.target == cut.target and s.at > cut.at)
        assert re.fullmatch(r"bytes=[1-9][0-9]*-", resume.range)
        assert resume.status == 206


# -- 3. a lost PUT response: the retry gets 412, the object is read back and checked ----


@pytest.mark.parametrize("what", ["chunk", "manifest"])
def test_lost_put_response(s3: S3Env, ckpt: Path, tmp_path: Path, what: str) -> None:
    pattern = CHUNKS if what == "chunk" else MANIFESTS
    s3.proxy.add("lose_response", method="PUT", path=pattern, times=1)
    res = archive_ok(s3, ckpt)
    lost = s3.proxy.requests("PUT", pattern, fault="lose_response")
    assert len(lost) == 1 and lost[0].status == 200  # moto stored it; the client never heard
    puts = s3.proxy.requests("PUT", re.escape(lost[0].target) + "$")
    assert [(p.fault, p.status) for p in puts] == [("lose_response", 200), (None, 412)]
    reads = [g for g in s3.proxy.requests("GET", re.escape(lost[0].target) + "$") if g.at > puts[1].at]
    assert reads and reads[0].status == 200  # read back (and re-hashed) after the 412
    if what == "chunk":
        assert res["new_chunks"] == res["chunks"] - 1  # the lost one is not counted as new
    else:
        assert lost[0].target.endswith(f"/manifests/{res['id']}.json")
    assert s3.keys("manifests/") == [f"manifests/{res['id']}.json"]
    verify_and_restore(s3, res["id"], ckpt, tmp_path / "out")


# -- 4. retries run out: one clear line, no manifest, nothing in the catalog -------------


@pytest.mark.parametrize(
    "fault, fragment",
    [
        (dict(action="slowdown", method="PUT", path=CHUNKS), "SlowDown"),
        (dict(action="internal", method="PUT", path=CHUNKS), "InternalError"),
        (dict(action="reset", method="PUT", path=CHUNKS), "cannot reach S3 endpoint"),
        (dict(action="reset"), "cannot reach S3 endpoint"),  # every connection
    ],
    ids=["chunk-puts-503", "chunk-puts-500", "chunk-puts-reset", "every-request-reset"],
)
def test_retries_exhausted_fail_cleanly(s3: S3Env, ckpt: Path, monkeypatch, fault: dict, fragment: str) -> None:
    fast_retries(monkeypatch, max_attempts=2)
    fault = dict(fault)
    s3.proxy.add(fault.pop("action"), times=None, **fault)
    started = time.monotonic()
    r = run_cli("--store", s3.url, "archive", str(ckpt), "--name", "model")
    assert time.monotonic() - started < 10
    line = one_line_error(r)
    assert fragment in line, line
    failed = s3.proxy.faults()
    assert failed
    for method, t in {(f.method, f.target) for f in failed}:  # each tried exactly max_attempts times
        assert s3.proxy.count(method, re.escape(t) + "$") == 2, (method, t)
    nothing_recorded(s3)
    if "method" in fault:
        assert s3.keys("chunks/") == []  # every chunk PUT failed


# -- 5. failed multipart uploads are aborted ----------------------------------------------


@pytest.mark.parametrize(
    "action, method, path",
    [
        ("internal", "PUT", r"[?&]partNumber=2(&|$)"),  # UploadPart of part 2
        ("reset", "PUT", r"[?&]partNumber=2(&|$)"),
        ("slowdown", "POST", r"\?uploadId="),  # CompleteMultipartUpload
    ],
    ids=["upload-part-500", "upload-part-reset", "complete-503"],
)
def test_failed_multipart_upload_is_aborted(s3: S3Env, action: str, method: str, path: str) -> None:
    options = S3Options(multipart_threshold=5 * MiB, min_part_size=5 * MiB, max_attempts=2)
    store = open_store(s3.url, create=True, s3_options=options)
    key = "chunks/mp/" + "01" * 32
    s3.proxy.add(action, method=method, path=path, times=None)
    s3.proxy.add("slowdown", method="DELETE", path=r"[?&]uploadId=", times=1)  # the abort is retried too
    with pytest.raises(StoreError) as excinfo:
        store.put_if_absent(key, os.urandom(12 * MiB))
    message = str(excinfo.value)
    assert "\n" not in message
    assert f"s3://{s3.bucket}/prefix/{key}" in message or "cannot reach S3 endpoint" in message, message
    assert len(s3.proxy.requests(method, path, fault=action)) == 2
    aborts = s3.proxy.requests("DELETE", r"[?&]uploadId=")
    assert [(a.fault, a.status) for a in aborts] == [("slowdown", 503), (None, 204)]
    assert s3.uploads() == []  # nothing left in progress (moto asked directly)
    assert s3.keys("chunks/") == []
    s3.proxy.clear()
    assert not store.exists(key)


def test_multipart_survives_transient_part_failures(s3: S3Env) -> None:
    options = S3Options(multipart_threshold=5 * MiB, min_part_size=5 * MiB)
    store = open_store(s3.url, create=True, s3_options=options)
    key = "chunks/mp/" + "02" * 32
    data = os.urandom(11 * MiB)
    s3.proxy.add("reset", method="PUT", path=r"[?&]partNumber=1(&|$)", times=2)
    s3.proxy.add("internal", method="PUT", path=r"[?&]partNumber=3(&|$)", times=1)
    s3.proxy.add("drop", method="POST", path=r"\?uploadId=", times=1)  # Complete: lost, retried
    assert store.put_if_absent(key, data) is True
    assert store.get(key) == data
    assert s3.uploads() == []
    assert s3.proxy.count("DELETE") == 0


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", r"\?uploads(&|$)"),  # CreateMultipartUpload: the retry starts a second upload
        ("PUT", r"[?&]partNumber=2(&|$)"),  # UploadPart: retried, same part number
        ("POST", r"\?uploadId="),  # CompleteMultipartUpload: the retry finds it completed
    ],
    ids=["create", "upload-part", "complete"],
)
def test_multipart_lost_responses_leave_no_upload(s3: S3Env, method: str, path: str) -> None:
    options = S3Options(multipart_threshold=5 * MiB, min_part_size=5 * MiB)
    store = open_store(s3.url, create=True, s3_options=options)
    key = "chunks/mp/" + "04" * 32
    data = os.urandom(11 * MiB)
    s3.proxy.add("lose_response", method=method, path=path)
    assert store.put_if_absent(key, data) is True
    assert [s.fault for s in s3.proxy.requests(method, path)] == ["lose_response", None]
    assert store.get(key) == data
    assert s3.uploads() == []  # an upload whose creation reply was lost is found and aborted


# -- 6. servers that reject checksum headers: ARCHIVER_S3_CHECKSUM=when_required ----------


@pytest.mark.parametrize(
    "answer, strict",
    [
        ((400, "InvalidArgument", None), False),  # Backblaze B2: names the header
        ((400, "InvalidArgument", None), True),  # ... also refusing x-amz-checksum-mode on GETs
        ((400, "InvalidArgument", "Invalid Argument."), False),  # OVH and others: says nothing
        ((400, "AuthorizationHeaderMalformed", "BadRequest(400)"), False),  # Qumulo
    ],
    ids=["b2", "b2-checksum-mode", "generic-invalid-argument", "authorization-header-malformed"],
)
def test_checksum_rejecting_server_default_client_hint(s3: S3Env, ckpt: Path, answer: tuple, strict: bool) -> None:
    s3.proxy.reject_checksums = True
    s3.proxy.reject_checksum_mode = strict
    s3.proxy.checksum_error = answer
    r = run_cli("--store", s3.url, "archive", str(ckpt), "--name", "model")
    line = one_line_error(r)
    assert "ARCHIVER_S3_CHECKSUM=when_required" in line, line
    assert "another region" not in line
    assert s3.proxy.count(fault="reject-checksum") == 1  # a 400 is not retried
    nothing_recorded(s3)


def test_checksum_when_required_full_cycle(s3: S3Env, ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    s3.proxy.reject_checksums = True
    s3.proxy.reject_checksum_mode = True
    monkeypatch.setenv("ARCHIVER_S3_CHECKSUM", "when_required")
    res = archive_ok(s3, ckpt)
    verify_and_restore(s3, res["id"], ckpt, tmp_path / "out")
    # multipart too, still verified by the server through Content-MD5
    store = open_store(s3.url, s3_options=S3Options(multipart_threshold=5 * MiB, min_part_size=5 * MiB,
                                                    checksum_when_required=True))
    data = os.urandom(11 * MiB)
    assert store.put_if_absent("chunks/mp/" + "03" * 32, data) is True
    assert store.get("chunks/mp/" + "03" * 32) == data
    assert s3.proxy.count(fault="reject-checksum") == 0
    puts = s3.proxy.requests("PUT")
    assert puts and all("content-md5" in p.headers for p in puts if p.query.get("partNumber") or
                        re.search(CHUNKS, p.target))


# -- 7. unreachable endpoint, missing bucket ----------------------------------------------


def test_unreachable_endpoint_via_cli(aws_env, monkeypatch, tmp_path: Path, ckpt: Path) -> None:
    # bound and never listening, held for the whole test: every connection to it is refused,
    # and no other process (nor one of ours, as an ephemeral port) can take the port meanwhile
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_CATALOG", raising=False)
    fast_retries(monkeypatch, max_attempts=2, connect_timeout=2)
    with sock:
        for args in (["archive", str(ckpt), "--name", "model"], ["list"], ["verify", "--all"],
                     ["restore", "model", str(tmp_path / "out")]):
            started = time.monotonic()
            r = run_cli("--store", "s3://some-bucket/prefix", *args)
            assert time.monotonic() - started < 5
            line = one_line_error(r)
            assert line.startswith(f"archiver: error: cannot reach S3 endpoint http://127.0.0.1:{port}"), line
    assert not (tmp_path / "out").exists()


def test_missing_bucket_via_cli(s3: S3Env, monkeypatch, tmp_path: Path, ckpt: Path) -> None:
    fast_retries(monkeypatch, max_attempts=2)
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    for args in (["archive", str(ckpt), "--name", "model"], ["list"],
                 ["restore", "model", str(tmp_path / "out")]):
        started = time.monotonic()
        r = run_cli("--store", f"s3://{bucket}/prefix", *args)
        assert time.monotonic() - started < 5
        line = one_line_error(r)
        assert line == f"archiver: error: bucket {bucket} does not exist (S3 endpoint {s3.proxy.url})", line
    assert bucket not in [b["Name"] for b in s3.direct.list_buckets()["Buckets"]]
