"""repair: damaged or missing chunks, manifests and signatures healed from a copy whose
bytes prove good; copies only read; an object bad everywhere reported and left alone."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from archiver import api, layout
from manifests.model import Manifest, parse_manifest
from tests.helpers import RawStore, make_checkpoint, run_cli


def flip(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path, home: Path) -> str:
    return request.getfixturevalue("s3_mock_url") if request.param == "s3" else str(tmp_path / "target")


def setup_pair(target: str, tmp_path: Path, copy: str | None = None) -> tuple[str, str, Manifest]:
    """A signed archive in `target`, replicated to a local copy."""
    copy = copy or str(tmp_path / "copy")
    assert run_cli("keygen", str(tmp_path / "key")).code == 0
    ck = make_checkpoint(tmp_path / "ck", layers=3, dim=64)
    (ck / "blob.bin").write_bytes(os.urandom(30000))
    r = run_cli("--store", target, "archive", str(ck), "--name", "m", "--sign-key", str(tmp_path / "key"))
    assert r.code == 0, r.err
    mid = r.out.strip()
    assert run_cli("--store", target, "replicate", "--all", "--to", copy).code == 0
    return mid, copy, parse_manifest(RawStore(target).read(layout.manifest(mid)))


def snapshot(url: str) -> dict[str, bytes]:
    raw = RawStore(url)
    return {k: raw.read(k) for k in raw.keys("")}


def test_repair_heals_chunks_manifest_and_signature(target: str, tmp_path: Path) -> None:
    mid, copy, m = setup_pair(target, tmp_path)
    hashes = sorted(m.unique_chunks())
    raw = RawStore(target)
    raw.mutate(layout.chunk(hashes[0]), flip)
    raw.delete(layout.chunk(hashes[1]))
    raw.mutate(layout.manifest(mid), flip)
    sig_key = raw.keys(layout.signatures_of(mid))[0]
    raw.mutate(sig_key, lambda b: b.replace(b'"', b"'", 1))
    before_copy = snapshot(copy)
    assert run_cli("--store", target, "verify", "--all", "--deep").code == 1  # appends a fixity event
    damaged = snapshot(target)

    plan = run_cli("--store", target, "repair", "--from", copy, "--dry-run", "--json")
    assert plan.code == 0, plan.err
    fixes = {(f["kind"], f["name"]): f for f in plan.json()["fixes"]}
    assert fixes[("chunk", hashes[0])]["state"] == "damaged"
    assert fixes[("chunk", hashes[1])]["state"] == "missing"
    assert fixes[("manifest", mid)]["state"] == "damaged"
    assert [f for k, f in fixes.items() if k[0] == "signature"][0]["state"] == "damaged"
    assert all(f["action"] == "planned" and f["source"] for f in fixes.values())
    assert snapshot(target) == damaged  # a dry run changes nothing

    r = run_cli("--store", target, "repair", "--from", copy, "--json")
    assert r.code == 0, r.out + r.err
    res = r.json()
    assert res["repaired"] == 4
    assert {f["action"] for f in res["fixes"]} == {"replaced", "written"}
    v = run_cli("--store", target, "verify", "--all", "--deep", "--trust-key", str(tmp_path / "key.pub"))
    assert v.code == 0, v.out
    assert snapshot(copy) == before_copy  # the copy is only read
    if not target.startswith("s3://"):
        quarantined = raw.keys(layout.QUARANTINE)
        assert len(quarantined) == 3  # the damaged chunk, manifest and signature, kept
    with api.open_repository(target) as repo:
        audit = [a for a in repo.audit_log() if a.event == "repair"]
    assert audit[-1].ok and audit[-1].details["repaired"] == 4
    again = run_cli("--store", target, "repair", "--from", copy, "--json")
    assert again.code == 0 and again.json()["fixes"] == []


def test_bad_on_every_copy_is_reported_and_nothing_replaced(tmp_path: Path, home: Path) -> None:
    target = str(tmp_path / "target")
    mid, copy, m = setup_pair(target, tmp_path)
    h = sorted(m.unique_chunks())[0]
    RawStore(target).mutate(layout.chunk(h), flip)
    RawStore(copy).write(layout.chunk(h), flip(flip(flip(RawStore(copy).read(layout.chunk(h))))))
    damaged = RawStore(target).read(layout.chunk(h))
    r = run_cli("--store", target, "repair", "--from", copy, "--json")
    assert r.code == 1
    res = r.json()
    users = {e.path for e in m.files if any(c.hash == h for c in e.chunks)}
    named = [p for p in res["problems"] if p["chunk"] == h]
    assert {p["path"] for p in named} == users and all(p["manifest"] == mid for p in named)
    assert res["fixes"][0]["action"] == "none" and copy in res["fixes"][0]["rejected"][0]
    assert RawStore(target).read(layout.chunk(h)) == damaged
    assert RawStore(target).keys(layout.QUARANTINE) == []
    human = run_cli("--store", target, "repair", "--from", copy)
    assert human.code == 1 and h in human.out and "no healthy copy" in human.out


def test_copy_serving_wrong_bytes_is_rejected_for_a_good_one(tmp_path: Path, home: Path) -> None:
    target = str(tmp_path / "target")
    mid, bad_copy, m = setup_pair(target, tmp_path)
    good_copy = str(tmp_path / "copy2")
    assert run_cli("--store", target, "replicate", "--all", "--to", good_copy).code == 0
    h = sorted(m.unique_chunks())[0]
    RawStore(bad_copy).mutate(layout.chunk(h), flip)
    RawStore(target).delete(layout.chunk(h))
    r = run_cli("--store", target, "repair", "--from", bad_copy, "--from", good_copy, "--json")
    assert r.code == 0, r.out
    fix = r.json()["fixes"][0]
    assert fix["source"] == good_copy and fix["rejected"][0].startswith(bad_copy)
    assert run_cli("--store", target, "verify", "--all", "--deep").code == 0


def test_repair_an_s3_target_from_a_copy_on_another_endpoint(tmp_path: Path, home: Path, s3_server_url: str,
                                                            moto_server: str) -> None:
    """Target on the HTTP S3 server (If-Match replace), copy local; then the other way round."""
    mid, copy, m = setup_pair(s3_server_url, tmp_path)
    h = sorted(m.unique_chunks())[0]
    RawStore(s3_server_url).mutate(layout.chunk(h), flip)
    r = run_cli("--store", s3_server_url, "repair", m.name, "--from", copy, "--json")
    assert r.code == 0, r.out + r.err
    assert r.json()["fixes"][0]["action"] == "replaced"
    assert run_cli("--store", s3_server_url, "verify", "--all", "--deep").code == 0
    RawStore(copy).delete(layout.chunk(h))
    back = run_cli("--store", copy, "repair", "--from", f"{s3_server_url}?endpoint={moto_server}", "--json")
    assert back.code == 0 and back.json()["fixes"][0]["action"] == "written"
    assert run_cli("--store", copy, "verify", "--all", "--deep").code == 0


def test_repair_usage(tmp_path: Path, home: Path) -> None:
    target = str(tmp_path / "target")
    setup_pair(target, tmp_path)
    assert run_cli("--store", target, "repair").code == 2
    assert run_cli("--store", target, "repair", "m", "--all", "--from", str(tmp_path / "copy")).code == 2
    same = run_cli("--store", target, "repair", "--from", target, "--json")
    assert same.code == 2 and "itself" in same.json()["error"]
    missing = run_cli("--store", target, "repair", "--from", str(tmp_path / "nowhere"), "--json")
    assert missing.code != 0


def test_sampled_repair_lists_everything_and_reads_a_fraction(tmp_path: Path, home: Path) -> None:
    target = str(tmp_path / "target")
    mid, copy, m = setup_pair(target, tmp_path)
    hashes = sorted(m.unique_chunks())
    assert len(hashes) >= 3
    raw = RawStore(target)
    raw.delete(layout.chunk(hashes[0]))  # LIST finds it whatever the sample
    assert run_cli("--store", target, "repair", "--sample", "0", "--from", copy).code == 2
    r = run_cli("--store", target, "repair", "--sample", "0.01", "--from", copy, "--json")
    assert r.code == 0, r.out
    res = r.json()
    assert res["chunks_checked"] == 2  # the missing chunk and one stalest chunk, not all
    assert [f["name"] for f in res["fixes"]] == [hashes[0]]
    raw.mutate(layout.chunk(hashes[1]), flip)  # same size: only a read finds it
    full = run_cli("--store", target, "repair", "--sample", "1", "--from", copy, "--json").json()
    assert full["chunks_checked"] == len(hashes) and [f["name"] for f in full["fixes"]] == [hashes[1]]
    assert run_cli("--store", target, "verify", "--all", "--deep").code == 0
