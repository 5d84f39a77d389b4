"""Tamper evidence: Ed25519-signed manifests and the predecessor chain."""
from __future__ import annotations

import json

import pytest

from manifests import signing
from archiver import layout
from manifests.model import Manifest
from tests.helpers import RawStore, make_checkpoint, run_cli


def test_sign_and_check_roundtrip(tmp_path):
    priv, pub = signing.keygen(tmp_path / "k")
    assert (priv.stat().st_mode & 0o777) == 0o600
    key = signing.load_private(priv)
    mid = "ab" * 32
    sig = signing.sign(key, mid)
    assert sig.public_key == signing.load_public(str(pub)).hex()
    assert signing.check(signing.parse_signature(sig.to_json()), mid)
    assert not signing.check(sig, "cd" * 32)  # a signature names exactly one manifest
    forged = signing.Signature(mid, sig.public_key, sig.signature[:-2] + ("00" if sig.signature[-2:] != "00" else "01"))
    assert not signing.check(forged, mid)
    with pytest.raises(Exception, match="refusing to overwrite"):
        signing.keygen(tmp_path / "k")


def test_signed_archive_verify_and_restore(env, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=2, dim=64)
    assert run_cli("keygen", str(tmp_path / "key")).code == 0
    assert run_cli("keygen", str(tmp_path / "other")).code == 0
    res = run_cli("archive", str(ckpt), "--name", "m", "--sign-key", str(tmp_path / "key"), "--json")
    assert res.code == 0, res.err
    mid = res.json()["id"]
    assert res.json()["signed_by"]
    good = run_cli("verify", mid, "--trust-key", str(tmp_path / "key.pub"), "--json")
    assert good.code == 0, good.out
    wrong = run_cli("verify", mid, "--trust-key", str(tmp_path / "other.pub"), "--json")
    assert wrong.code == 1
    assert any(p["kind"] == "signature" and "trusted" in p["detail"] for p in wrong.json()["problems"])
    r = run_cli("restore", mid, str(tmp_path / "out"), "--trust-key", str(tmp_path / "other.pub"))
    assert r.code == 1 and "not signed by any trusted key" in r.err
    assert not (tmp_path / "out").exists()
    r = run_cli("restore", mid, str(tmp_path / "out2"), "--trust-key", str(tmp_path / "key.pub"))
    assert r.code == 0, r.err
    # forge the stored signature: verify reports it even without --trust-key
    raw = RawStore(env)
    (key,) = raw.keys(layout.signatures_of(mid))
    def flip(b: bytes) -> bytes:  # same length, one hex digit of the signature changed
        obj = json.loads(b)
        s = obj["signature"]
        obj["signature"] = s[:10] + ("0" if s[10] != "0" else "1") + s[11:]
        return json.dumps(obj).encode()
    raw.mutate(key, flip)
    bad = run_cli("verify", mid, "--json")
    assert bad.code == 1
    assert any(p["kind"] == "signature" and "bad signature" in p["detail"] for p in bad.json()["problems"])


def test_unsigned_archive_fails_trust(env, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=1, dim=32)
    run_cli("keygen", str(tmp_path / "key"))
    mid = run_cli("archive", str(ckpt), "--name", "m", "--json").json()["id"]
    r = run_cli("verify", mid, "--trust-key", str(tmp_path / "key.pub"))
    assert r.code == 1 and "not signed" in r.out


def test_chain_records_predecessor_and_detects_breaks(env, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=1, dim=32)
    first = run_cli("archive", str(ckpt), "--name", "m", "--label", "a", "--json").json()
    second = run_cli("archive", str(ckpt), "--name", "m", "--label", "b", "--json").json()
    assert first["parent"] is None and second["parent"] == first["id"]
    assert run_cli("verify", second["id"]).code == 0
    raw = RawStore(env)
    raw.delete(layout.manifest(first["id"]))
    r = run_cli("verify", second["id"], "--json")
    assert r.code == 1 and any(p["kind"] == "chain" for p in r.json()["problems"])
    # a manifest claiming a predecessor of another name is a broken chain too
    other = run_cli("archive", str(ckpt), "--name", "x", "--json").json()["id"]
    shown = run_cli("show", other, "--json").json()["manifest"]
    from manifests.model import manifest_from_dict
    m = manifest_from_dict(shown)
    forged = Manifest(name="m", entries=m.entries, parent=other)
    raw.write(layout.manifest(forged.id), forged.canonical_json())
    r = run_cli("verify", forged.id, "--json")
    assert r.code == 1 and any(p["kind"] == "chain" and "named" in p["detail"] for p in r.json()["problems"])


# -- hostile signature objects: malformed, never a crash -----------------------------------------

def _deep(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


def _good_sig_json(tmp_path) -> dict:
    priv, _ = signing.keygen(tmp_path / "k")
    return json.loads(signing.sign(signing.load_private(priv), "ab" * 32).to_json())


# an extra key the parser can read (900 deep) is tolerated like any extra key, so not listed
NESTED = [(w, k, d) for w in ("whole", "manifest", "public_key", "extra") for k in ("list", "dict")
          for d in (900, 1_500, 2_000, 100_000) if not (w == "extra" and d == 900)]


@pytest.mark.parametrize("where,kind,depth", NESTED)
def test_deeply_nested_signature_is_malformed(tmp_path, depth, kind, where):
    """Nesting past the parser's stack (RecursionError inside json.loads) or past the size
    bound: SignatureError with a one-line message, never another exception."""
    obj = _good_sig_json(tmp_path)
    deep = _deep(depth, kind)
    if where == "whole":
        data = deep.encode()
    else:
        text = json.dumps(dict(obj, **{where: "@@"}))
        data = text.replace('"@@"', deep).encode()
    with pytest.raises(signing.SignatureError, match="malformed signature object") as ei:
        signing.parse_signature(data)
    assert "\n" not in str(ei.value) and len(str(ei.value)) < 300


def test_signature_size_bound(tmp_path):
    obj = _good_sig_json(tmp_path)
    ok = json.dumps(obj).encode()
    assert signing.parse_signature(ok).public_key == obj["public_key"]
    padded = json.dumps(dict(obj, pad=" " * (signing.MAX_SIGNATURE_BYTES - len(ok) - 20))).encode()
    assert len(padded) <= signing.MAX_SIGNATURE_BYTES
    signing.parse_signature(padded)  # extra keys are tolerated; only the size is bounded
    with pytest.raises(signing.SignatureError, match="at most"):
        signing.parse_signature(padded + b" " * (signing.MAX_SIGNATURE_BYTES - len(padded) + 1))
    with pytest.raises(signing.SignatureError, match="malformed"):
        signing.parse_signature(json.dumps(dict(obj, manifest=["ab" * 32])).encode())


def test_verify_json_reports_deeply_nested_signatures(env, tmp_path):
    """A store holding hostile signature objects (1500 deep: past the parser's stack;
    100000 deep: past the size bound too): `verify --json` still prints its JSON report,
    one signature problem for each, and exits 1 (not an internal error)."""
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=1, dim=32)
    mid = run_cli("archive", str(ckpt), "--name", "m", "--json").json()["id"]
    for fp, depth in (("0" * 32, 1_500), ("1" * 32, 100_000)):
        RawStore(env).write(layout.signature(mid, fp), b'{"manifest":' + _deep(depth, "list").encode() + b"}")
    r = run_cli("verify", mid, "--json")
    assert r.code == 1 and r.err == "", r.err
    rep = r.json()
    assert not rep["ok"]
    assert [p["kind"] for p in rep["problems"]] == ["signature", "signature"]
    # the 1500-deep object is parsed and refused; the 100000-deep one is refused unread (size cap)
    details = sorted(p["detail"] for p in rep["problems"])
    assert any("malformed signature object" in d for d in details), details
    assert any("refusing to read it" in d or "malformed signature object" in d for d in details), details
    h = run_cli("verify", mid)  # and the human report says the same
    assert h.code == 1 and "signature: manifest" in h.out and "Traceback" not in h.out + h.err
