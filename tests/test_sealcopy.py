"""archiver/sealcopy.py: replicate and repair a sealed store without any key, every object
proved by its companion's size and ciphertext BLAKE3."""
from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import run_cli, tree
from tests.test_sealing import _archive, _objects, sealed  # noqa: F401  (the fixture)


def test_replicate_and_repair_a_sealed_store_without_any_key(sealed, monkeypatch):
    s = sealed
    mid = _archive(s)
    copy = str(s["tmp"] / "copy")
    res = run_cli("--store", s["store"], "replicate", mid, "--to", copy, "--json")
    assert res.code == 0, res.err
    assert res.json()["objects_written"] >= 4
    assert run_cli("--store", s["store"], "replicate", mid, "--to", copy, "--json").json()["objects_written"] == 0
    assert (Path(copy) / "store.json").read_bytes() == (Path(s["store"]) / "store.json").read_bytes()
    src_objs = {p.relative_to(s["store"]): p.read_bytes() for p in Path(s["store"]).rglob("*") if p.is_file()
                and p.parts[len(Path(s["store"]).parts)] in ("chunks", "manifests", "keys", "audits")}
    assert all((Path(copy) / k).read_bytes() == v for k, v in src_objs.items())  # ciphertext, byte for byte
    assert run_cli("--store", copy, "verify", "--deep", mid).code == 0
    # damage the original: one chunk flipped, one deleted; heal both from the copy, no identity anywhere
    victims = _objects(s["store"], "chunks")[:2]
    for v in victims:
        os.chmod(v, 0o644)
    data = bytearray(victims[0].read_bytes())
    data[-5] ^= 0x40
    victims[0].write_bytes(bytes(data))
    victims[1].unlink()
    assert run_cli("--store", s["store"], "verify", "--deep", mid).code == 1
    res = run_cli("--store", s["store"], "repair", mid, "--from", copy, "--json")
    assert res.code == 0, res.out
    assert sorted(f["state"] for f in res.json()["fixes"]) == ["damaged", "missing"]
    assert run_cli("--store", s["store"], "verify", "--deep", mid).code == 0
    res = run_cli("--store", copy, "restore", mid, str(s["tmp"] / "from-copy"), "--identity", str(s["ids"][1]))
    assert res.code == 0, res.err and tree(s["tmp"] / "from-copy" / "ckpt") == tree(s["ckpt"])


def test_a_damaged_source_object_is_not_replicated(sealed):
    s = sealed
    mid = _archive(s)
    victim = _objects(s["store"], "chunks")[0]
    os.chmod(victim, 0o644)
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    copy = s["tmp"] / "copy"
    res = run_cli("--store", s["store"], "replicate", mid, "--to", str(copy), "--json")
    assert res.code == 1 and victim.name in res.out
    assert not (copy / "audits").exists() and not (copy / victim.relative_to(s["store"])).exists()


def test_copies_of_a_sealed_store_are_counted_by_list(sealed):
    s = sealed
    mid = _archive(s)
    copy = str(s["tmp"] / "copy")
    assert run_cli("--store", s["store"], "replicate", mid, "--to", copy).code == 0
    assert run_cli("--store", s["store"], "copies", "add", copy).code == 0
    res = run_cli("--store", s["store"], "verify", mid, "--copies", "--json")
    assert res.code == 0, res.out
    victim = _objects(copy, "chunks")[0]
    os.chmod(victim, 0o644)
    victim.unlink()
    res = run_cli("--store", s["store"], "verify", mid, "--copies", "--json")
    assert res.code == 1 and "missing" in res.out
