"""replicate: copies are identical, proved, ordered, idempotent and crash-safe."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from archiver import layout
from manifests.model import parse_manifest
from tests.helpers import RawStore, make_checkpoint, run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local-local", "local-s3", "s3-s3", "s3-local"])
def pair(request: pytest.FixtureRequest, tmp_path: Path, home: Path) -> tuple[str, str]:
    """(source URL, copy URL) on each combination of backends (S3: the in-process mock)."""
    src_kind, dst_kind = request.param.split("-")
    if "s3" in (src_kind, dst_kind):
        s3 = request.getfixturevalue("s3_mock_url")  # s3://archiver-test/prefix
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="archiver-copy")
    src = s3 if src_kind == "s3" else str(tmp_path / "src")
    dst = "s3://archiver-copy/copy" if dst_kind == "s3" else str(tmp_path / "dst")
    return src, dst


def archive_two(src: str, tmp_path: Path, key: Path | None = None) -> tuple[str, str]:
    """Two versions of one name (a chain), signed if `key` is given."""
    ck = make_checkpoint(tmp_path / "ck", layers=2, dim=64)
    sign = ["--sign-key", str(key)] if key else []
    r1 = run_cli("--store", src, "archive", str(ck), "--name", "m", "--label", "v1", *sign)
    assert r1.code == 0, r1.err
    (ck / "extra.bin").write_bytes(os.urandom(20000))
    r2 = run_cli("--store", src, "archive", str(ck), "--name", "m", "--label", "v2", *sign)
    assert r2.code == 0, r2.err
    return r1.out.strip(), r2.out.strip()


def objects(url: str, prefix: str) -> dict[str, bytes]:
    raw = RawStore(url)
    return {k: raw.read(k) for k in raw.keys(prefix)}


def test_replicate_copies_identically_and_is_idempotent(pair: tuple[str, str], tmp_path: Path) -> None:
    src, dst = pair
    assert run_cli("keygen", str(tmp_path / "key")).code == 0
    v1, v2 = archive_two(src, tmp_path, tmp_path / "key")

    r = run_cli("--store", src, "replicate", "--all", "--to", dst, "--json")
    assert r.code == 0, r.err
    res = r.json()
    assert res["ok"] and res["manifests"] == [v1, v2]
    for prefix in (layout.CHUNKS, layout.MANIFESTS, layout.SIGNATURES):
        assert objects(src, prefix) == objects(dst, prefix)  # same keys, same bytes
    expected = sum(len(objects(src, p)) for p in (layout.CHUNKS, layout.MANIFESTS, layout.SIGNATURES))
    assert res["objects_written"] == expected

    again = run_cli("--store", src, "replicate", "--all", "--to", dst, "--json")
    assert again.code == 0 and again.json()["objects_written"] == 0

    # the copy stands on its own: a fresh catalog rebuilt from it has the same names, labels, chain
    cat = str(tmp_path / "fresh.db")
    assert run_cli("--store", dst, "--catalog", cat, "catalog", "rebuild").code == 0
    rows = run_cli("--store", dst, "--catalog", cat, "list", "--json").json()
    src_rows = run_cli("--store", src, "list", "--json").json()
    shape = lambda rs: [(x["id"], x["name"], x["label"], x["parent"]) for x in rs]  # noqa: E731
    assert shape(rows) == shape(src_rows)
    v = run_cli("--store", dst, "--catalog", cat, "verify", "--all", "--deep", "--trust-key", str(tmp_path / "key.pub"))
    assert v.code == 0, v.out + v.err
    # and so does the catalog replicate recorded for the copy
    assert run_cli("--store", dst, "verify", "--all", "--trust-key", str(tmp_path / "key.pub")).code == 0


def test_replicate_is_audited_on_both_sides(tmp_path: Path, home: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    archive_two(src, tmp_path)
    assert run_cli("--store", src, "replicate", "--all", "--to", dst).code == 0
    from archiver import api
    with api.open_repository(src) as repo:
        rows = [a for a in repo.audit_log() if a.event == "replicate"]
    assert rows and rows[-1].ok and rows[-1].details["objects_written"] > 0
    assert rows[-1].details["to"].endswith("dst")
    with api.open_repository(dst) as repo:
        rows = repo.audit_log()
        # one audit row per manifest copied in (the event's rows, as catalog rebuild would replay them)
        assert [a.event for a in rows] == ["replicate", "replicate"]
        assert all(a.ok and a.details["direction"] == "in" for a in rows)
        log = repo.read_events()
    # and in the copy's own event log, as a PREMIS replication event naming the manifests
    (rec,) = [r for r in log.records if r.event.type == "replication"]
    assert rec.event.ok and len(rec.event.manifest_ids) == 2 and not log.problems


def test_ref_brings_its_ancestors(tmp_path: Path, home: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    v1, v2 = archive_two(src, tmp_path)
    res = run_cli("--store", src, "replicate", "m@v2", "--to", dst, "--json").json()
    assert res["manifests"] == [v1, v2]


def test_damaged_source_chunk_never_spreads(tmp_path: Path, home: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    ck = make_checkpoint(tmp_path / "ck", layers=2, dim=64)
    bad_mid = run_cli("--store", src, "archive", str(ck), "--name", "bad").out.strip()
    other = tmp_path / "other"
    other.mkdir()
    (other / "w.bin").write_bytes(os.urandom(5000))
    good_mid = run_cli("--store", src, "archive", str(other), "--name", "good").out.strip()
    m = parse_manifest(RawStore(src).read(layout.manifest(bad_mid)))
    entry = next(e for e in m.files if e.chunks)
    h = entry.chunks[0].hash
    RawStore(src).mutate(layout.chunk(h), lambda b: b[:-1] + bytes([b[-1] ^ 1]))

    r = run_cli("--store", src, "replicate", "--all", "--to", dst, "--json")
    assert r.code == 1
    res = r.json()
    named = [p for p in res["problems"] if p["chunk"] == h]
    assert named and named[0]["manifest"] == bad_mid and named[0]["path"] == entry.path
    assert res["manifests"] == [good_mid]
    copy = RawStore(dst)
    assert layout.chunk(h) not in copy.keys(layout.CHUNKS)
    assert copy.keys(layout.MANIFESTS) == [layout.manifest(good_mid)]
    human = run_cli("--store", src, "replicate", "--all", "--to", dst)
    assert human.code == 1 and h in human.out and bad_mid[:16] in human.out


def test_copy_holding_a_different_object_is_reported(tmp_path: Path, home: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    v1, _ = archive_two(src, tmp_path)
    assert run_cli("--store", src, "replicate", "--all", "--to", dst).code == 0
    h = next(k for k in RawStore(dst).keys(layout.CHUNKS))
    RawStore(dst).write(h, b"x")  # a different size under the key: never overwritten by replicate
    r = run_cli("--store", src, "replicate", "--all", "--to", dst, "--json")
    assert r.code == 1 and any(p["kind"] == "size-mismatch" for p in r.json()["problems"])
    assert RawStore(dst).read(h) == b"x"


def _all_objects(url: str) -> set[str]:
    raw = RawStore(url)
    return {k for p in (layout.CHUNKS, layout.MANIFESTS, layout.SIGNATURES) for k in raw.keys(p)}


def _no_manifest_names_a_missing_chunk(url: str) -> None:
    raw = RawStore(url)
    chunks = set(raw.keys(layout.CHUNKS))
    for key in raw.keys(layout.MANIFESTS):
        for h in parse_manifest(raw.read(key)).unique_chunks():
            assert layout.chunk(h) in chunks, f"{key} names missing chunk {h}"


@pytest.mark.parametrize("spec", ["put:2", "put:4", "record"])
def test_kill9_then_rerun_writes_only_what_was_missing(tmp_path: Path, home: Path, spec: str) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    assert run_cli("keygen", str(tmp_path / "key")).code == 0
    archive_two(src, tmp_path, tmp_path / "key")
    env = {**os.environ, "CRASH_AT": spec, "PYTHONPATH": str(ROOT)}
    crashed = subprocess.run([sys.executable, "-m", "tests.crashrunner", "--store", src, "replicate", "--all",
                              "--to", dst], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -9, crashed.stderr
    _no_manifest_names_a_missing_chunk(dst)
    before = _all_objects(dst)
    total = _all_objects(src)
    assert before < total
    r = run_cli("--store", src, "replicate", "--all", "--to", dst, "--json")
    assert r.code == 0, r.err
    assert r.json()["objects_written"] == len(total - before)
    assert _all_objects(dst) == total
    assert run_cli("--store", dst, "verify", "--all", "--deep").code == 0


def test_replicate_usage_errors(tmp_path: Path, home: Path) -> None:
    src = str(tmp_path / "src")
    archive_two(src, tmp_path)
    assert run_cli("--store", src, "replicate", "--to", str(tmp_path / "d")).code == 2
    assert run_cli("--store", src, "replicate", "m", "--all", "--to", str(tmp_path / "d")).code == 2
    same = run_cli("--store", src, "replicate", "--all", "--to", src, "--json")
    assert same.code == 2 and "itself" in same.json()["error"]
    bad = run_cli("--store", src, "replicate", "--all", "--to", "s3://b/p?colour=red", "--json")
    assert bad.code == 2 and "colour" in bad.json()["error"]
