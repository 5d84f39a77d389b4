"""export --bagit: an RFC 8493 bag that bagit.py validates, whose data/ re-archives to
the same file hashes, built from verified bytes with bounded memory, never half-written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import bagit
import blake3
import pytest

from archiver import api
from archiver.bagit import encode_path
from archiver.chunking import ChunkPolicy
from manifests import signing
from tests.helpers import RawStore, make_checkpoint, run_cli, tree
from tests.test_profile import GOOD


@pytest.fixture
def archived(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "ck", layers=2, dim=32)
    (src / "spaced name é.txt").write_text("odd")
    (tmp_path / "m.json").write_text(json.dumps(GOOD))
    (tmp_path / "card.md").write_text("# card")
    priv, pub = api.keygen(tmp_path / "key")
    r = run_cli("archive", str(src), "--name", "m", "--label", "v1", "--profile", "model", "--meta-file",
                str(tmp_path / "m.json"), "--attach", f"model-card={tmp_path / 'card.md'}", "--sign-key", str(priv),
                "--json")
    assert r.code == 0, r.err
    return tmp_path, src, r.json()["id"], pub


def test_bag_validates_and_carries_the_manifest_profile_and_signatures(archived):
    tmp_path, src, mid, pub = archived
    r = run_cli("export", "m@v1", str(tmp_path / "bag"), "--bagit", "--trust-key", str(pub), "--json")
    assert r.code == 0, r.err
    assert r.json()["files"] == 6 and r.json()["format"] == "bagit"
    bag = bagit.Bag(str(tmp_path / "bag"))
    bag.validate()  # bagit.py's full validation: payload and tag manifests, Payload-Oxum, bagit.txt
    cli = subprocess.run([sys.executable, "-m", "bagit", "--validate", str(tmp_path / "bag")],
                         capture_output=True, text=True, timeout=120)  # `bagit.py --validate`, as the issue asks
    assert cli.returncode == 0 and "is valid" in cli.stderr, cli.stderr
    assert set(bag.algorithms) == {"sha256", "sha512"}
    info = bag.info
    assert info["External-Identifier"] == mid and info["Profile-license"] == "apache-2.0"
    assert info["Profile-retired"] == "2026-03-01" and info["Archiver-Profile"] == "archiver-model/1"
    assert info["Source-Organization"] == "Example Lab" and info["Contact-Email"] == "archive@example.org"
    payload = [p for p in (tmp_path / "bag/data").rglob("*") if p.is_file()]
    assert info["Payload-Oxum"] == f"{sum(p.stat().st_size for p in payload)}.{len(payload)}"
    assert "Bagging-Date" in info and info["Archiver-Attachment"] == "model-card: data/_archive/model-card/card.md"
    # the archiver manifest and its signature are tag files, covered by the tag manifests
    manifest = (tmp_path / "bag/archiver/manifest.json").read_bytes()
    assert blake3.blake3(manifest).hexdigest() == mid
    sigs = list((tmp_path / "bag/archiver/signatures").iterdir())
    assert len(sigs) == 1 and signing.check(signing.parse_signature(sigs[0].read_bytes()), mid)
    tagged = (tmp_path / "bag/tagmanifest-sha512.txt").read_text()
    assert "archiver/manifest.json" in tagged and f"archiver/signatures/{sigs[0].name}" in tagged
    assert "data/ck/spaced name é.txt" in (tmp_path / "bag/manifest-sha256.txt").read_text(encoding="utf-8")
    assert tree(tmp_path / "bag/data/ck") == tree(src)


def test_rearchiving_the_bag_payload_gives_the_same_file_hashes(archived):
    tmp_path, _src, mid, _ = archived
    assert run_cli("export", mid, str(tmp_path / "bag"), "--bagit").code == 0
    r = run_cli("archive", str(tmp_path / "bag" / "data"), "--name", "again", "--json")
    assert r.code == 0, r.err

    def hashes(ref: str, prefix: str) -> dict[str, tuple[str, str, int]]:
        entries = run_cli("show", ref, "--json").json()["manifest"]["entries"]
        return {prefix + e["path"]: (e["blake3"], e["sha256"], e["size"]) for e in entries if e["type"] == "file"}

    assert hashes(r.json()["id"], "") == hashes(mid, "data/")
    assert len(hashes(mid, "")) == 6  # 5 checkpoint files and the model card


def test_damage_in_the_store_stops_the_export_and_leaves_no_bag(archived):
    tmp_path, _src, mid, _ = archived
    raw = RawStore(str(tmp_path / "home" / "store"))
    key = max(raw.keys("chunks/"), key=lambda k: len(raw.read(k)))
    raw.mutate(key, lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    r = run_cli("export", mid, str(tmp_path / "bag"), "--bagit", "--json")
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "bag").exists()
    assert not [p for p in tmp_path.iterdir() if "archiver-export" in p.name]  # the staging directory is gone


def test_destination_must_be_new_or_empty(archived):
    tmp_path, _src, mid, _ = archived
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = run_cli("export", mid, str(tmp_path / "full"), "--bagit")
    assert r.code == 2 and "must not exist, or be an empty directory" in r.err
    (tmp_path / "empty").mkdir()
    assert run_cli("export", mid, str(tmp_path / "empty"), "--bagit").code == 0
    bagit.Bag(str(tmp_path / "empty")).validate()
    r = run_cli("export", mid, str(tmp_path / "other"))
    assert r.code == 2 and "give --bagit or --ocfl" in r.err


def test_export_streams_with_bounded_memory(tmp_path):
    """A 48 MiB file in 1 MiB chunks exports while Python holds a few chunks at a time."""
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "weights.bin", "wb") as f:
        for i in range(48):
            f.write(os.urandom(1 << 20))
    store, cat = str(tmp_path / "s"), str(tmp_path / "c.db")
    policy = ChunkPolicy(max_chunk=1 << 20, small_group=1 << 20, cdc_min=256 << 10, cdc_avg=512 << 10, cdc_max=1 << 20)
    res = api.archive([big], name="big", store=store, catalog=cat, policy=policy)
    tracemalloc.start()
    try:
        out = api.export(res.id, tmp_path / "bag", format="bagit", store=store, catalog=cat)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.bytes == 48 << 20
    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB"
    bagit.Bag(str(tmp_path / "bag")).validate(fast=True)


def test_manifest_paths_are_percent_encoded_as_rfc_8493_says():
    """RFC 8493 2.1.3: %, CR and LF (only those) are percent-encoded. (bagit.py 1.9 decodes
    only %0D and %0A, so it cannot validate a bag holding a file name with '%'.)"""
    assert encode_path("data/50%/a b\r\n.txt") == "data/50%25/a b%0D%0A.txt"
    assert encode_path("data/plain é.txt") == "data/plain é.txt"


def test_bag_info_labels_and_values_stay_one_line_without_colons(tmp_path):
    """Keys and values come from user metadata: a colon or newline must not forge a field."""
    from archiver.bagit import bag_info
    from manifests.model import Manifest
    m = Manifest(name="n", entries=(), meta={"a:b c": "x"},
                 profile={"id": "archiver-model/1", "data": {"runtime": {"frameworks": {"torch:cu121": "2.3"}},
                                                             "notes": "line one\nExternal-Identifier: forged"}})
    lines = [f"{k}: {v}" for k, v in bag_info("0" * 64, m, "0.0", "archiver test", "2026-01-01")]
    assert "Profile-runtime.frameworks.torch_cu121: 2.3" in lines and "Archiver-Meta-a_b_c: x" in lines
    assert "Profile-notes: line one External-Identifier: forged" in lines
    assert [line for line in lines if line.startswith("External-Identifier:")] == ["External-Identifier: " + "0" * 64]
