"""archiver/sealing.py and sealed stores end to end: encryption to custodians, write-only
archive hosts, keyed addresses, restore with identities, audit without keys, rotation,
and the tool-free restore with the real `age` binary (docs/FORMAT.md, "Sealed stores")."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import pyrage
import pytest

from archiver import sealing
from archiver.errors import IdentityError
from archiver.repository import Repository
from archiver.settings import Settings
from tests.helpers import make_checkpoint, run_cli, tree

DOC = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


def _identity(path: Path) -> str:
    """Write an age identity file (age-keygen's format); return its recipient."""
    ident = pyrage.x25519.Identity.generate()
    recipient = str(ident.to_public())
    path.write_text(f"# public key: {recipient}\n{ident}\n")
    return recipient


@pytest.fixture
def sealed(tmp_path, home):
    """A sealed store for custodians 1 and 2 (identity 3 is an outsider), and a checkpoint."""
    ids = {n: tmp_path / f"id{n}.txt" for n in (1, 2, 3)}
    rec = {n: _identity(p) for n, p in ids.items()}
    store = str(tmp_path / "store")
    res = run_cli("--store", store, "store", "init", "--encrypt-to", rec[1], "--encrypt-to", rec[2], "--json")
    assert res.code == 0, res.err
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    return {"store": store, "ids": ids, "rec": rec, "ckpt": ckpt, "init": res.json(), "tmp": tmp_path}


def _archive(s, path=None, name="m") -> str:
    res = run_cli("--store", s["store"], "archive", str(path or s["ckpt"]), "--name", name, "--json")
    assert res.code == 0, res.err
    return res.json()["id"]


def _objects(store: str, prefix: str) -> list[Path]:
    return sorted(p for p in (Path(store) / prefix).rglob("*") if p.is_file())


# -- the age envelope ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 65535, 65536, 65537, 300_000])
def test_age_envelope_has_exact_size_and_rage_reads_it(n):
    ident = pyrage.x25519.Identity.generate()
    data = os.urandom(n)
    enc = sealing.age_encrypt(data, sealing._recipient_bytes(str(ident.to_public())))
    assert len(enc) + sealing.PREFIX_LEN == sealing.sealed_size(n)
    assert sealing.unsealed_size(sealing.sealed_size(n)) == n
    # sizes no plaintext seals to: below the header, or a partial STREAM tag after a full chunk
    assert sealing.unsealed_size(sealing.sealed_size(0) - 1) is None
    assert sealing.unsealed_size(sealing.sealed_size(65536) + 1) is None
    assert pyrage.decrypt(bytes(enc), [ident]) == data  # rage, an independent reader, agrees
    key = sealing.private_key(ident)
    assert sealing.age_decrypt(enc, key) == data
    for bad in (enc[:-1], enc[:len(enc) - 17], enc[:-1] + bytes([enc[-1] ^ 1]),
                enc[:100] + bytes([enc[100] ^ 1]) + enc[101:]):
        with pytest.raises(sealing.AgeFormatError):
            sealing.age_decrypt(bad, key)
    with pytest.raises(sealing.AgeFormatError):
        sealing.age_decrypt(enc, sealing.private_key(pyrage.x25519.Identity.generate()))


def test_a_bad_recipient_is_one_line_exit_2(tmp_path, home):
    res = run_cli("--store", str(tmp_path / "s"), "store", "init", "--encrypt-to", "age1notakey")
    assert res.code == 2 and "--encrypt-to is not an age X25519 recipient" in res.err
    assert len(res.err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


# -- archive, restore, identities ------------------------------------------------------------------
def test_sealed_round_trip_hides_content_and_plaintext_hashes(sealed):
    s = sealed
    mid = _archive(s)
    raw = b"".join(p.read_bytes() for p in _objects(s["store"], "chunks") + _objects(s["store"], "manifests"))
    vocab = (s["ckpt"] / "tokenizer" / "vocab.txt").read_bytes()
    assert vocab[:64] not in raw and b"vocab.txt" not in raw and b"layers.0" not in raw
    names = {p.name for p in _objects(s["store"], "chunks")}
    repo_side = run_cli("--store", s["store"], "show", mid, "--json").json()["manifest"]  # the host's catalog copy
    plain = {c[2] for e in repo_side["entries"] for c in e.get("chunks", [])}
    assert plain and not names & plain  # addresses are keyed: no plaintext BLAKE3 in any key
    for p in _objects(s["store"], "chunks"):
        assert p.read_bytes().startswith(b"archiver-sealed/1 ")
        assert sealing.unsealed_size(p.stat().st_size) is not None
    res = run_cli("--store", s["store"], "restore", mid, str(s["tmp"] / "out"), "--identity", str(s["ids"][2]))
    assert res.code == 0, res.err
    assert tree(s["tmp"] / "out" / "ckpt") == tree(s["ckpt"])


def test_env_identity_restores(sealed, monkeypatch):
    s = sealed
    mid = _archive(s)
    monkeypatch.setenv("ARCHIVER_IDENTITY", str(s["ids"][1]))
    res = run_cli("--store", s["store"], "restore", mid, str(s["tmp"] / "out"))
    assert res.code == 0, res.err and tree(s["tmp"] / "out" / "ckpt") == tree(s["ckpt"])


@pytest.mark.parametrize("who", [None, 3])
def test_missing_or_wrong_identity_is_one_line_exit_2_nothing_written(sealed, who):
    s = sealed
    mid = _archive(s)
    dest = s["tmp"] / "out"
    args = ("--identity", str(s["ids"][who])) if who else ()
    res = run_cli("--store", s["store"], "restore", mid, str(dest), *args, "--json")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "--identity" in res.err
    assert res.json()["kind"] == "identity" and not dest.exists()


def test_archive_host_holds_only_public_keys_and_cannot_read_another_run(sealed):
    s = sealed
    mid_a = _archive(s)
    other = s["tmp"] / "other"
    other.mkdir()
    (other / "w.bin").write_bytes(os.urandom(200_000))
    mid_b = _archive(s, other, "n")
    kids = {p.parent.name for p in _objects(s["store"], "keys/runs")}
    assert len(kids) == 2  # one run key per archiving process
    # the host: address key file only, a fresh process (catalog copies do not count)
    settings = Settings.resolve(s["store"], s["tmp"] / "fresh.db")
    with Repository.open(settings) as repo:
        assert repo.sealed and not repo.has_identities
        for mid in (mid_a, mid_b):
            with pytest.raises(IdentityError):
                repo.fetch_manifest(mid)


def test_dedup_across_runs_by_keyed_address(sealed):
    s = sealed
    _archive(s)
    before = _objects(s["store"], "chunks")
    res = run_cli("--store", s["store"], "archive", str(s["ckpt"]), "--name", "again", "--label", "x", "--json")
    assert res.code == 0, res.err
    assert _objects(s["store"], "chunks") == before  # a second run (its own run key) wrote no chunk
    assert res.json()["files_reused"] == 0  # no files cache on a sealed store: every file is read


def test_archive_without_address_key_or_identity_is_refused(sealed, tmp_path, monkeypatch):
    s = sealed
    Path(s["init"]["address_key_file"]).unlink()
    res = run_cli("--store", s["store"], "archive", str(s["ckpt"]), "--name", "m")
    assert res.code == 2 and "address key" in res.err and len(res.err.strip().splitlines()) == 1
    assert not _objects(s["store"], "manifests")


# -- audit without keys, bad input ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "forge-header", "missing-key"])
def test_truncated_forged_or_keyless_objects_are_one_line_each(sealed, damage):
    s = sealed
    mid = _archive(s)
    ident = str(s["ids"][1])
    victim = max(_objects(s["store"], "chunks"), key=lambda p: p.stat().st_size)
    os.chmod(victim, 0o644)
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-100])
        expect = "stored size"
    elif damage == "forge-header":
        obj = victim.read_bytes()
        body = obj[sealing.PREFIX_LEN:].replace(b"-> X25519 ", b"-> X25519 A", 1)  # a stanza one byte off
        forged = obj[:sealing.PREFIX_LEN] + body[:len(obj) - sealing.PREFIX_LEN]
        victim.write_bytes(forged)
        expect = "does not decrypt"
    else:
        for p in _objects(s["store"], "keys/runs"):
            os.chmod(p, 0o644)
            p.unlink()
        res = run_cli("--store", s["store"], "restore", mid, str(s["tmp"] / "o"), "--identity", ident)
        assert res.code == 2 and "missing from the store" in res.err and len(res.err.strip().splitlines()) == 1
        assert not (s["tmp"] / "o").exists()
        res = run_cli("--store", s["store"], "verify", "--deep", mid, "--json")
        assert res.code == 1 and any("run key" in p["detail"] for p in res.json()["problems"])
        return
    res = run_cli("--store", s["store"], "verify", "--deep", mid, "--identity", ident, "--json")
    assert res.code == 1 and any(expect in p["detail"] for p in res.json()["problems"]), res.out
    assert run_cli("--store", s["store"], "verify", "--deep", mid).code == 1  # and without a key


# -- rotation -------------------------------------------------------------------------------------
def test_rotate_removes_a_custodian_and_adds_one_without_rewriting_chunks(sealed):
    s = sealed
    mid = _archive(s)
    chunks = {p: p.read_bytes() for p in _objects(s["store"], "chunks")}
    res = run_cli("--store", s["store"], "key", "rotate", "--remove", s["rec"][2], "--add", s["rec"][3],
                  "--identity", str(s["ids"][1]), "--json")
    assert res.code == 0, res.err
    assert res.json()["generation"] == 1 and res.json()["run_keys"] == 1
    assert {p: p.read_bytes() for p in _objects(s["store"], "chunks")} == chunks  # never rewritten
    later = s["tmp"] / "later"
    later.mkdir()
    (later / "x.bin").write_bytes(os.urandom(100_000))
    mid2 = _archive(s, later, "later")
    for m in (mid, mid2):
        res = run_cli("--store", s["store"], "restore", m, str(s["tmp"] / f"no-{m[:6]}"),
                      "--identity", str(s["ids"][2]))
        assert res.code == 2 and not (s["tmp"] / f"no-{m[:6]}").exists()  # the removed custodian
        for n in (1, 3):  # the remaining and the added one restore everything
            dest = s["tmp"] / f"ok-{n}-{m[:6]}"
            res = run_cli("--store", s["store"], "restore", m, str(dest), "--identity", str(s["ids"][n]))
            assert res.code == 0, res.err
    assert tree(s["tmp"] / f"ok-3-{mid[:6]}" / "ckpt") == tree(s["ckpt"])


def test_rotate_refuses_bad_requests(sealed):
    s = sealed
    base = ("--store", s["store"], "key", "rotate", "--identity", str(s["ids"][1]))
    assert run_cli(*base).code == 2
    res = run_cli(*base, "--remove", s["rec"][3])
    assert res.code == 2 and "--remove names a recipient the store does not have" in res.err
    res = run_cli(*base, "--remove", s["rec"][1], "--remove", s["rec"][2])
    assert res.code == 2 and "no recipient" in res.err
    res = run_cli("--store", s["store"], "key", "rotate", "--identity", str(s["ids"][3]), "--add", s["rec"][3])
    assert res.code == 2  # an outsider cannot rotate
    assert not (Path(s["store"]) / "keys" / "sets" / "00000001.json").exists()


# -- tool-free restore with the real age binary ---------------------------------------------------
def _doc_script(name: str) -> str:
    for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S):
        if f'"""Usage: {name}' in b:
            return b
    raise AssertionError(f"{name} not in docs/FORMAT.md")


def test_doc_script_restores_a_sealed_archive_with_age_and_zstd(sealed):
    for tool in ("age", "zstd", "b3sum"):
        if shutil.which(tool) is None:
            pytest.skip(f"the {tool} command is not installed")
    s = sealed
    mid = _archive(s)
    work = s["tmp"] / "work"
    work.mkdir()
    for name in ("decode_chunk.py", "restore_sealed_by_hand.py"):
        (work / name).write_text(_doc_script(name))
    dest = s["tmp"] / "by-hand"
    subprocess.run([sys.executable, "restore_sealed_by_hand.py", s["store"], mid, str(dest), str(s["ids"][2])],
                   cwd=work, check=True, capture_output=True)
    assert tree(dest / "ckpt") == tree(s["ckpt"])
    assert blake3.blake3((dest / "ckpt" / "config.json").read_bytes()).digest() == \
        blake3.blake3((s["ckpt"] / "config.json").read_bytes()).digest()


def test_sealed_store_on_every_backend(store_url, tmp_path, home):
    """init, archive, keyless deep verify, restore with an identity: local, mock S3, HTTP S3."""
    rec = _identity(tmp_path / "id.txt")
    assert run_cli("--store", store_url, "store", "init", "--encrypt-to", rec).code == 0
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    res = run_cli("--store", store_url, "archive", str(ckpt), "--name", "m", "--json")
    assert res.code == 0, res.err
    mid = res.json()["id"]
    assert run_cli("--store", store_url, "verify", "--deep", mid).code == 0
    res = run_cli("--store", store_url, "restore", mid, str(tmp_path / "out"), "--identity", str(tmp_path / "id.txt"))
    assert res.code == 0, res.err
    assert tree(tmp_path / "out" / "ckpt") == tree(ckpt)


def test_events_of_a_sealed_store_show_no_names_paths_or_plaintext_hashes(sealed):
    s = sealed
    mid = _archive(s, name="secret-model-name")
    assert run_cli("--store", s["store"], "verify", "--deep", mid, "--identity", str(s["ids"][1])).code == 0
    plain = {c[2] for e in run_cli("--store", s["store"], "show", mid, "--json").json()["manifest"]["entries"]
             for c in e.get("chunks", [])}
    evs = _objects(s["store"], "events")
    assert len(evs) >= 2
    for p in evs:
        text = p.read_text()
        assert "secret-model-name" not in text and "ckpt" not in text and '"sealed"' in text
        assert not any(h in text for h in plain)
    res = run_cli("--store", s["store"], "events", "--json")
    assert res.code == 0, res.err  # the chain still checks without keys


def test_catalog_rebuild_of_a_sealed_store_needs_an_identity(sealed):
    s = sealed
    mid = _archive(s)
    fresh = str(s["tmp"] / "fresh.db")
    res = run_cli("--store", s["store"], "--catalog", fresh, "catalog", "rebuild")
    assert res.code == 2 and "--identity" in res.err and len(res.err.strip().splitlines()) == 1
    res = run_cli("--store", s["store"], "--catalog", fresh, "catalog", "rebuild", "--identity", str(s["ids"][2]))
    assert res.code == 0, res.err
    assert mid in run_cli("--store", s["store"], "--catalog", fresh, "list", "--json").out


def test_a_forged_recipient_set_is_refused_by_archive_hosts(sealed, tmp_path):
    s = sealed
    intruder = _identity(tmp_path / "intruder.txt")
    forged = Path(s["store"]) / "keys" / "sets" / "00000001.json"
    forged.write_bytes(sealing.recipient_set(1, [intruder], os.urandom(32)))  # the bucket writer lacks the key
    res = run_cli("--store", s["store"], "archive", str(s["ckpt"]), "--name", "m")
    assert res.code == 2 and "not authenticated" in res.err and len(res.err.strip().splitlines()) == 1
    assert not _objects(s["store"], "keys/runs") and not _objects(s["store"], "chunks")


def test_archive_keys_and_chunk_lookups_use_sealed_addresses(sealed):
    """What retention (Object Lock), thaw and cost planning act on are the objects really stored."""
    s = sealed
    mid = _archive(s)
    settings = Settings.resolve(s["store"], None, identities=[str(s["ids"][1])])
    with Repository.open(settings, read_only=True) as repo:
        m = repo.load_manifest(mid)
        keys = repo.archive_keys(mid, m)
        assert all((Path(s["store"]) / k).is_file() for k in keys)
        assert any(k.startswith("audits/") for k in keys) and any(k.startswith("keys/runs/") for k in keys)
        assert repo.chunk_state(next(iter(m.unique_chunks()))) is None  # a local store has no HEAD state
        assert repo.chunk_classes(m.unique_chunks()) == {}


def test_distributed_executors_are_refused_on_a_sealed_store(sealed):
    """A worker process would seal under a run key of its own that the driver's companion
    never lists: archive, verify and restore refuse a distributed executor, before any task."""
    from types import SimpleNamespace

    from archiver import api, fanout
    from archiver.errors import InvalidOptionError
    s = sealed
    with api.open_repository(s["store"]) as repo:
        assert repo.sealed
        with pytest.raises(InvalidOptionError) as e:
            fanout.worker_settings(repo, SimpleNamespace(distributed=True, name="ray"))
    assert e.value.option == "executor" and "local executor" in e.value.reason
    with api.open_repository(s["store"]) as repo:  # the local executor stays allowed
        assert fanout.worker_settings(repo, SimpleNamespace(distributed=False, name="local")) is None
