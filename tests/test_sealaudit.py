"""archiver/sealaudit.py: `verify --deep` of a sealed store without keys re-hashes every
object's ciphertext against the archive's public companion and names what is damaged."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers import run_cli
from tests.test_sealing import _archive, _objects, sealed  # noqa: F401  (the fixture)


def test_keyless_deep_verify_finds_a_bit_flip_precisely_and_the_aead_too(sealed):
    s = sealed
    mid = _archive(s)
    assert run_cli("--store", s["store"], "verify", "--deep", mid).code == 0
    victim = max(_objects(s["store"], "chunks"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    os.chmod(victim, 0o644)
    victim.write_bytes(bytes(data))
    res = run_cli("--store", s["store"], "verify", "--deep", mid, "--json")
    assert res.code == 1
    probs = res.json()["problems"]
    assert len(probs) == 1 and probs[0]["chunk"] == victim.name and "ciphertext BLAKE3" in probs[0]["detail"]
    res = run_cli("--store", s["store"], "verify", "--deep", mid, "--identity", str(s["ids"][1]), "--json")
    assert res.code == 1 and any("does not decrypt" in p["detail"] for p in res.json()["problems"])
    res = run_cli("--store", s["store"], "restore", mid, str(s["tmp"] / "o"), "--identity", str(s["ids"][1]))
    assert res.code == 1 and "does not decrypt" in res.err


def test_signed_companion_is_checked_and_required_with_trust_key(sealed):
    s = sealed
    key = s["tmp"] / "sign"
    assert run_cli("keygen", str(key)).code == 0
    pub = next(p for p in s["tmp"].iterdir() if p.name.startswith("sign") and p.name.endswith(".pub"))
    res = run_cli("--store", s["store"], "archive", str(s["ckpt"]), "--name", "m", "--sign-key", str(key), "--json")
    assert res.code == 0, res.err
    mid = res.json()["id"]
    assert run_cli("--store", s["store"], "verify", "--deep", mid, "--trust-key", str(pub)).code == 0
    comp = Path(s["store"]) / "audits" / f"{mid}.json"
    os.chmod(comp, 0o644)
    doc = json.loads(comp.read_text())
    doc["objects"][0][1] += 1  # a forger's edit, re-serialised canonically
    comp.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    res = run_cli("--store", s["store"], "verify", "--deep", mid, "--json")
    assert res.code == 1 and "bad signature" in res.out
    other = _archive(s, s["ckpt"].parent, "unsigned")  # unsigned: refused when a signer is required
    res = run_cli("--store", s["store"], "verify", "--deep", other, "--trust-key", str(pub), "--json")
    assert res.code == 1 and "not signed by any trusted key" in res.out
