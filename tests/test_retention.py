"""Object Lock and storage classes (archiver/retention.py, the S3 store's lock support, the
Repository's retention verbs, `verify --retention`, `retention extend`), on moto with a
bucket created with ObjectLockEnabledForBucket=True: in-process (mock_aws) and over HTTP."""
from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path
from typing import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from archiver import api
from archiver.errors import InvalidOptionError
from archiver.retention import Lock, WritePolicy, add_period, make_policy, parse_record
from archiver.settings import S3Options
from archiver.stores import open_store
from archiver.stores.s3 import S3Store
from tests.helpers import make_checkpoint, run_cli

UTC = dt.timezone.utc


def _client() -> object:
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"), region_name="us-east-1")


@pytest.fixture(params=["s3-mock", pytest.param("s3-server", marks=pytest.mark.integration)])
def lock_url(request: pytest.FixtureRequest, aws_env, monkeypatch, tmp_path) -> Iterator[str]:
    """A store location in a fresh bucket with Object Lock enabled (and so versioning)."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    if request.param == "s3-mock":
        from moto import mock_aws
        with mock_aws():
            _client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
            yield f"s3://{bucket}/p"
        return
    server = request.getfixturevalue("moto_server")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server)
    _client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    yield f"s3://{bucket}/p"


def _objects(url: str) -> dict[str, dict]:
    """key (below the prefix) -> HeadObject of every object of the store."""
    bucket, prefix = url[5:].split("/", 1)
    c = _client()
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix) + 1:]] = c.head_object(Bucket=bucket, Key=o["Key"])
    return out


def _until(head: dict) -> dt.datetime | None:
    t = head.get("ObjectLockRetainUntilDate")
    return None if t is None else t.astimezone(UTC)


# -- the policy record, pure ----------------------------------------------------------------

def test_policy_options_are_checked_and_resolved() -> None:
    now = dt.datetime(2026, 2, 28, 12, 0, tzinfo=UTC)
    p = make_policy(lock_mode="governance", retain_for="30y", now=now)
    assert p == WritePolicy(Lock("GOVERNANCE", dt.datetime(2056, 2, 28, 12, 0, tzinfo=UTC)))
    assert add_period(dt.datetime(2024, 2, 29, tzinfo=UTC), "1y", "x") == dt.datetime(2025, 2, 28, tzinfo=UTC)
    assert add_period(now, "90d", "x") == now + dt.timedelta(days=90)
    p = make_policy(lock_mode="COMPLIANCE", retain_until="2040-01-01", legal_hold=True,
                    storage_class="deep_archive", now=now)
    assert p is not None and p.lock.legal_hold and p.storage_class == "DEEP_ARCHIVE"
    assert p.for_metadata().storage_class is None and p.for_metadata().lock == p.lock
    assert make_policy(now=now) is None and make_policy(storage_class="STANDARD", now=now) is None
    for kwargs, option in [({"lock_mode": "governance"}, "retain_until"),
                           ({"retain_for": "3y"}, "lock_mode"),
                           ({"lock_mode": "strict", "retain_for": "3y"}, "lock_mode"),
                           ({"lock_mode": "governance", "retain_for": "3 decades"}, "retain_for"),
                           ({"lock_mode": "governance", "retain_until": "2020-01-01"}, "retain_until"),
                           ({"lock_mode": "governance", "retain_until": "soon"}, "retain_until"),
                           ({"lock_mode": "governance", "retain_until": "2040-01-01", "retain_for": "1y"},
                            "retain_for"),
                           ({"storage_class": "GLACIER_FLEXIBLE"}, "storage_class")]:
        with pytest.raises(InvalidOptionError) as e:
            make_policy(now=now, **kwargs)
        assert e.value.option == option


def test_locks_merge_longer_and_stronger_never_shorter() -> None:
    a = Lock("GOVERNANCE", dt.datetime(2040, 1, 1, tzinfo=UTC))
    b = Lock("COMPLIANCE", dt.datetime(2035, 1, 1, tzinfo=UTC), legal_hold=True)
    m = a.merge(b)
    assert m == Lock("COMPLIANCE", dt.datetime(2040, 1, 1, tzinfo=UTC), True)
    assert m.covers(a) and m.covers(b) and not a.covers(b) and not b.covers(a)
    assert "less than" in (b.shortfall(a) or "") and Lock().shortfall(a) == "no Object Lock retention"
    p = WritePolicy(b, "GLACIER")
    assert parse_record(p.record("ab" * 32), "ab" * 32) == b
    with pytest.raises(ValueError):
        parse_record(p.record("ab" * 32), "cd" * 32)


# -- refused before any write ---------------------------------------------------------------

def test_lock_on_a_local_store_is_refused_before_any_write(tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    for flags in (["--lock-mode", "governance", "--retain-for", "1y"], ["--storage-class", "GLACIER"],
                  ["--legal-hold"]):
        r = run_cli("--store", str(tmp_path / "store"), "--catalog", str(tmp_path / "c.db"), "archive", str(src),
                    "--name", "m", *flags)
        assert r.code == 2, r.err
        assert len(r.err.strip().splitlines()) == 1 and "cannot" in r.err
        assert not (tmp_path / "store").exists() and not (tmp_path / "c.db").exists()


def test_lock_on_a_bucket_without_object_lock_is_refused_before_any_write(s3_store_url: str, tmp_path: Path,
                                                                          monkeypatch) -> None:
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    r = run_cli("--store", s3_store_url, "archive", str(src), "--name", "m", "--lock-mode", "compliance",
                "--retain-until", "2040-01-01", "--json")
    assert r.code == 2 and "not created with Object Lock" in r.err and len(r.err.strip().splitlines()) == 1
    assert r.json()["option"] == "lock_mode"
    bucket = s3_store_url[5:].split("/")[0]
    assert _client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


# -- every object locked, chunks in their class --------------------------------------------

def test_every_object_locked_chunks_in_their_class_and_locked_versions_cannot_be_deleted(
        lock_url: str, tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    key = tmp_path / "sign"
    assert run_cli("keygen", str(key)).code == 0
    r = run_cli("--store", lock_url, "archive", str(src), "--name", "m", "--sign-key", str(key), "--lock-mode",
                "governance", "--retain-until", "2040-01-01", "--legal-hold", "--storage-class", "GLACIER", "--json")
    assert r.code == 0, r.err
    assert r.json()["retention"] == {"lock_mode": "GOVERNANCE", "retain_until": "2040-01-01T00:00:00Z",
                                     "legal_hold": True, "storage_class": "GLACIER"}
    objs = _objects(lock_url)
    kinds = {k.split("/")[0] for k in objs}
    # events: the archive's ingestion event, locked like the rest; _probe: store check's scratch object
    assert kinds == {"store.json", "chunks", "manifests", "signatures", "retention", "events", "_probe"}
    assert any(k.startswith("events/") for k in objs)
    for k, head in objs.items():
        if k == "store.json" or k.startswith("_probe/"):
            continue
        assert head["ObjectLockMode"] == "GOVERNANCE", k
        assert _until(head) == dt.datetime(2040, 1, 1, tzinfo=UTC), k
        assert head["ObjectLockLegalHoldStatus"] == "ON", k
        assert head.get("StorageClass", "STANDARD") == ("GLACIER" if k.startswith("chunks/") else "STANDARD"), k
    # A locked version cannot be deleted, not even by naming the version.
    bucket, prefix = lock_url[5:].split("/", 1)
    c = _client()
    chunk = next(k for k in objs if k.startswith("chunks/"))
    with pytest.raises(ClientError) as e:
        c.delete_object(Bucket=bucket, Key=f"{prefix}/{chunk}", VersionId=objs[chunk]["VersionId"])
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    # list, show and shallow verify need no thaw
    assert run_cli("--store", lock_url, "verify", "m").code == 0
    assert run_cli("--store", lock_url, "show", "m").code == 0


def test_v2_with_a_later_date_extends_v1s_shared_chunks_and_nothing_is_ever_shortened(
        lock_url: str, tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    base = ["--store", lock_url, "archive", str(src), "--name", "m", "--lock-mode", "governance", "--json"]
    v1 = run_cli(*base, "--retain-until", "2040-01-01")
    assert v1.code == 0, v1.err
    (src / "config.json").write_text('{"changed": true}')  # v2 shares every tensor chunk with v1
    v2 = run_cli(*base, "--retain-until", "2050-01-01")
    assert v2.code == 0, v2.err
    assert 0 < v2.json()["new_chunks"] < v2.json()["chunks"]
    objs = _objects(lock_url)
    m1 = api.show(v1.json()["id"], store=lock_url)[1]
    m2 = api.show(v2.json()["id"], store=lock_url)[1]
    shared = set(m1.unique_chunks()) & set(m2.unique_chunks())
    assert shared
    for h in m2.unique_chunks():
        assert _until(objs[f"chunks/{h[:2]}/{h}"]) == dt.datetime(2050, 1, 1, tzinfo=UTC)
    assert _until(objs[f"manifests/{v1.json()['id']}.json"]) == dt.datetime(2040, 1, 1, tzinfo=UTC)
    # v3 with an earlier date: nothing it shares is shortened
    v3 = run_cli(*base, "--label", "short", "--retain-until", "2035-01-01")
    assert v3.code == 0, v3.err
    objs = _objects(lock_url)
    for h in m2.unique_chunks():
        assert _until(objs[f"chunks/{h[:2]}/{h}"]) == dt.datetime(2050, 1, 1, tzinfo=UTC)
    # compliance on top of governance: the mode is raised, the date kept
    v4 = run_cli(*base, "--label", "c", "--lock-mode", "compliance", "--retain-until", "2045-01-01")
    assert v4.code == 0, v4.err
    objs = _objects(lock_url)
    for h in m2.unique_chunks():
        head = objs[f"chunks/{h[:2]}/{h}"]
        assert head["ObjectLockMode"] == "COMPLIANCE" and _until(head) == dt.datetime(2050, 1, 1, tzinfo=UTC)


def test_verify_retention_extend_and_survive_a_catalog_rebuild(lock_url: str, tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "src", layers=1, dim=64)
    key = tmp_path / "sign"
    run_cli("keygen", str(key))
    r = run_cli("--store", lock_url, "archive", str(src), "--name", "m", "--sign-key", str(key),
                "--lock-mode", "governance", "--retain-until", "2040-01-01", "--json")
    assert r.code == 0, r.err
    mid = r.json()["id"]
    ok = run_cli("--store", lock_url, "verify", "m", "--retention", "--json")
    assert ok.code == 0, ok.out
    nobj = ok.json()["retention_checked"]
    assert nobj == r.json()["chunks"] + 3  # chunks, manifest, signature, retention record
    short = run_cli("--store", lock_url, "verify", "m", "--retention", "--retain-until", "2045-01-01", "--json")
    assert short.code == 1
    assert {p["kind"] for p in short.json()["problems"]} == {"retention"}
    assert len(short.json()["problems"]) == nobj
    ext = run_cli("--store", lock_url, "retention", "extend", "m", "--until", "2045-01-01", "--json")
    assert ext.code == 0, ext.err
    assert run_cli("--store", lock_url, "verify", "m", "--retention", "--retain-until", "2045-01-01").code == 0
    # an earlier date never shortens anything
    assert run_cli("--store", lock_url, "retention", "extend", "m", "--until", "2041-01-01").code == 0
    assert run_cli("--store", lock_url, "verify", "m", "--retention", "--retain-until", "2045-01-01").code == 0
    # the recorded policy is in the store: a rebuilt catalog still knows what to expect
    catalogs = [p for p in (tmp_path / "home").rglob("*") if p.is_file()]  # db, -wal, -shm, .lock
    for cat in catalogs:
        cat.unlink()
    assert run_cli("--store", lock_url, "catalog", "rebuild").code == 0
    # someone shortens one chunk's lock (governance can be bypassed with the permission)
    bucket, prefix = lock_url[5:].split("/", 1)
    h = sorted(api.show(mid, store=lock_url)[1].unique_chunks())[0]
    _client().put_object_retention(Bucket=bucket, Key=f"{prefix}/chunks/{h[:2]}/{h}", BypassGovernanceRetention=True,
                                   Retention={"Mode": "GOVERNANCE", "RetainUntilDate": dt.datetime(2030, 1, 1)})
    bad = run_cli("--store", lock_url, "verify", "m", "--retention", "--json")
    assert bad.code == 1
    problems = bad.json()["problems"]
    assert len(problems) == 1 and h in problems[0]["detail"] and "less than 2045" in problems[0]["detail"]


def test_verify_and_extend_retention_on_a_local_store_are_usage_errors(tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    store = str(tmp_path / "store")
    assert run_cli("--store", store, "archive", str(src), "--name", "m").code == 0
    r = run_cli("--store", store, "verify", "m", "--retention")
    assert r.code == 2 and "--retention" in r.err
    r = run_cli("--store", store, "retention", "extend", "m", "--until", "2040-01-01")
    assert r.code == 2 and "--until" in r.err and len(r.err.strip().splitlines()) == 1


def test_verify_retention_of_an_unlocked_archive_is_a_problem(lock_url: str, tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    assert run_cli("--store", lock_url, "archive", str(src), "--name", "m").code == 0
    r = run_cli("--store", lock_url, "verify", "m", "--retention", "--json")
    assert r.code == 1 and "no Object Lock policy" in r.json()["problems"][0]["detail"]
    r = run_cli("--store", lock_url, "verify", "m", "--retention", "--retain-until", "2030-01-01", "--json")
    assert r.code == 1 and all("no Object Lock retention" in p["detail"] for p in r.json()["problems"])


# -- the PUTs themselves ----------------------------------------------------------------------

@pytest.mark.parametrize("when_required", [False, True], ids=["checksum", "when-required"])
def test_locked_puts_always_carry_an_explicit_checksum(lock_url: str, when_required: bool) -> None:
    opts = S3Options(checksum_when_required=when_required, multipart_threshold=6 * 1024 * 1024,
                     min_part_size=5 * 1024 * 1024)
    policy = make_policy(lock_mode="compliance", retain_until="2040-01-01", storage_class="DEEP_ARCHIVE")
    store = open_store(lock_url, create=True, s3_options=opts, policy=policy)
    assert isinstance(store, S3Store)
    sent: list[tuple[str, dict]] = []
    for op in ("PutObject", "CreateMultipartUpload", "UploadPart"):
        store.client.meta.events.register(f"before-send.s3.{op}",
                                          lambda request, op=op, **_: sent.append((op, dict(request.headers))))
    assert store.put_if_absent("chunks/aa/small", b"x" * 100, policy)
    assert store.put_if_absent("chunks/aa/large", os.urandom(7 * 1024 * 1024), policy)
    for op, headers in sent:
        h = {k.lower(): v for k, v in headers.items()}
        has_sum = any(k in h for k in ("content-md5", "x-amz-sdk-checksum-algorithm", "x-amz-checksum-crc32",
                                       "x-amz-checksum-algorithm"))
        # every body goes with a checksum; CreateMultipartUpload has no body (its parts carry one)
        assert has_sum or (op == "CreateMultipartUpload" and when_required), (op, h)
        if op != "CreateMultipartUpload" and when_required:
            assert "content-md5" in h
        if op != "UploadPart":
            assert h["x-amz-object-lock-mode"] == b"COMPLIANCE" and h["x-amz-storage-class"] == b"DEEP_ARCHIVE"
            assert h["x-amz-object-lock-retain-until-date"].startswith(b"2040-01-01T00:00:00")
    assert {op for op, _ in sent} == {"PutObject", "CreateMultipartUpload", "UploadPart"}
    for key in ("chunks/aa/small", "chunks/aa/large"):
        state = store.object_state(key)
        assert state is not None and state.lock_mode == "COMPLIANCE" and state.storage_class == "DEEP_ARCHIVE"
        assert state.retain_until == dt.datetime(2040, 1, 1, tzinfo=UTC)


# -- replication carries the lock ------------------------------------------------------------

def test_replicate_applies_the_same_lock_on_the_copy(lock_url: str, tmp_path: Path) -> None:
    """A locked archive replicated to another locked bucket is locked there exactly as at the
    source (chunks, manifest, signatures, retention record); `verify --retention` passes on the
    copy. A copy that cannot hold a lock (a local directory) still gets the archive, and the
    result says it is unlocked there."""
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    r = run_cli("--store", lock_url, "archive", str(src), "--name", "m", "--lock-mode", "governance",
                "--retain-until", "2041-06-01", "--json")
    assert r.code == 0, r.err
    bucket = f"locked-copy-{uuid.uuid4().hex[:8]}"
    _client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    copy = f"s3://{bucket}/c"
    out = run_cli("--store", lock_url, "replicate", "--all", "--to", copy, "--json")
    assert out.code == 0, out.err
    assert out.json()["unlocked"] == []
    objs = _objects(copy)
    locked = {k: h for k, h in objs.items() if k.split("/")[0] in ("chunks", "manifests", "signatures", "retention")}
    assert any(k.startswith("chunks/") for k in locked) and any(k.startswith("retention/") for k in locked)
    for k, head in locked.items():
        assert head["ObjectLockMode"] == "GOVERNANCE", k
        assert _until(head) == dt.datetime(2041, 6, 1, tzinfo=UTC), k
    assert run_cli("--store", copy, "verify", "m", "--retention").code == 0
    local = run_cli("--store", lock_url, "replicate", "--all", "--to", str(tmp_path / "plain"), "--json")
    assert local.code == 0 and local.json()["unlocked"] == [r.json()["id"]]


@pytest.mark.parametrize("form", ["binary", "json"])
def test_file_maps_are_locked_and_extended_under_the_key_of_their_form(lock_url: str, tmp_path: Path, form: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Binary maps (`.bin`) and JSON maps as earlier archivers wrote them (`.json`) are locked
    with the archive, checked by `verify --retention` and extended by `retention extend`."""
    from manifests import model
    monkeypatch.setattr(model, "FILEMAP_THRESHOLD", 1)  # any file of more than one chunk gets a map
    src = make_checkpoint(tmp_path / "src", layers=3, dim=512)
    (src / "blob.bin").write_bytes(os.urandom(3 << 20))
    with monkeypatch.context() as mp:
        if form == "json":
            mp.setattr(model, "filemap_bytes", model.filemap_json_bytes)
        r = run_cli("--store", lock_url, "archive", str(src), "--name", "m", "--lock-mode", "governance",
                    "--retain-until", "2040-01-01", "--json")
    assert r.code == 0, r.err
    maps = [k for k in _objects(lock_url) if k.startswith("filemaps/")]
    assert maps and all(k.endswith(".bin" if form == "binary" else ".json") for k in maps)
    assert all(_objects(lock_url)[k]["ObjectLockMode"] == "GOVERNANCE" for k in maps)
    assert run_cli("--store", lock_url, "verify", "m", "--retention").code == 0
    assert run_cli("--store", lock_url, "verify", "m", "--retention", "--retain-until", "2045-01-01").code == 1
    assert run_cli("--store", lock_url, "retention", "extend", "m", "--until", "2045-01-01").code == 0
    objs = _objects(lock_url)
    assert all(_until(objs[k]) == dt.datetime(2045, 1, 1, tzinfo=UTC) for k in maps)
    assert run_cli("--store", lock_url, "verify", "m", "--retention", "--retain-until", "2045-01-01").code == 0
