"""End-to-end CLI tests, run once per backend: local directory, S3 via mock_aws, and S3
over real HTTP (moto's ThreadedMotoServer on 127.0.0.1)."""
from __future__ import annotations


import pytest

from archiver import layout
from tests.helpers import RawStore, make_checkpoint, run_cli, tree


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "src" / "ckpt")


def archive(ckpt, *extra):
    r = run_cli("archive", str(ckpt), "--name", "model", "--label", "v1", *extra, "--json")
    assert r.code == 0, r.err
    return r.json()


def chunk_keys_of(mid: str) -> list[tuple[str, str, int]]:
    """(chunk key, file path, length) for every chunk of a manifest, via show --json."""
    r = run_cli("show", mid, "--json")
    assert r.code == 0, r.err
    out = []
    for e in r.json()["manifest"]["entries"]:
        for off, length, h, stored, codec in e.get("chunks", []):
            out.append((layout.chunk(h), e["path"], length))
    return out


def test_archive_list_show_verify_restore(env, ckpt, tmp_path):
    res = archive(ckpt, "--meta", "owner=infra")
    assert res["files"] == 4 and res["dirs"] == 3
    assert res["bytes_in"] == sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert res["new_chunks"] == res["chunks"] > 0
    assert 0 < res["bytes_stored"] == res["new_bytes_stored"] < res["bytes_in"]
    mid = res["id"]
    # second archive of the same content stores nothing new
    again = run_cli("archive", str(ckpt), "--name", "model", "--label", "v2", "--json").json()
    assert again["new_chunks"] == 0 and again["new_bytes_stored"] == 0
    assert again["parent"] == mid
    # human output is the id
    plain = run_cli("archive", str(ckpt), "--name", "other")
    assert plain.code == 0 and len(plain.out.strip()) == 64

    rows = run_cli("list", "--json").json()
    assert [r["name"] for r in rows] == ["model", "model", "other"]
    assert run_cli("list", "--name", "model", "--json").json()[0]["id"] == mid
    for ref in (mid, mid[:10], "model@v1"):
        shown = run_cli("show", ref, "--json")
        assert shown.code == 0 and shown.json()["id"] == mid
    m = run_cli("show", "model@v1", "--json").json()["manifest"]
    assert m["meta"] == {"owner": "infra"} and m["name"] == "model"
    paths = {e["path"]: e for e in m["entries"]}
    assert paths["ckpt/empty_dir"]["type"] == "dir"
    assert paths["ckpt/empty.txt"]["size"] == 0 and paths["ckpt/empty.txt"]["chunks"] == []
    assert paths["ckpt/model.safetensors"]["format"] == "safetensors"
    assert "ckpt/tokenizer/vocab.txt" in run_cli("show", mid).out

    for args in ([mid], [mid, "--deep"], [mid, "--sample", "0.5"], ["--all", "--deep"]):
        v = run_cli("verify", *args, "--json")
        assert v.code == 0, v.out + v.err
        rep = v.json()
        assert rep["ok"] and rep["problems"] == []
        assert rep["chunks_checked"] == res["chunks"] or args[0] == "--all"
    deep = run_cli("verify", mid, "--deep", "--json").json()
    assert deep["files_hashed"] == 4 and deep["bytes_read"] == res["bytes_in"]

    dest = tmp_path / "out"
    r = run_cli("restore", "model@v1", str(dest), "--json")
    assert r.code == 0, r.err
    assert r.json()["files"] == 4
    assert tree(dest / "ckpt") == tree(ckpt)
    # non-empty destination refused without --force, accepted with it
    r = run_cli("restore", mid, str(dest))
    assert r.code == 2 and "not empty" in r.err and "Traceback" not in r.err
    r = run_cli("restore", mid, str(dest), "--force")
    assert r.code == 0, r.err
    assert tree(dest / "ckpt") == tree(ckpt)
    # --include
    inc = tmp_path / "inc"
    r = run_cli("restore", mid, str(inc), "--include", "ckpt/tokenizer", "--include", "*.json", "--json")
    assert r.code == 0, r.err
    got = {p.relative_to(inc).as_posix() for p in inc.rglob("*") if p.is_file()}
    assert got == {"ckpt/tokenizer/vocab.txt", "ckpt/config.json"}


def test_catalog_rebuild_from_store_alone(env, ckpt, tmp_path):
    first = archive(ckpt)["id"]
    second = run_cli("archive", str(ckpt), "--name", "model", "--label", "v2", "--json").json()["id"]
    for f in (tmp_path / "home").rglob("*.db*"):
        f.unlink()
    assert run_cli("list", "--json").json() == []
    r = run_cli("catalog", "rebuild", "--json")
    assert r.code == 0, r.err
    assert sorted(r.json()["added"]) == sorted([first, second])
    assert [x["id"] for x in run_cli("list", "--json").json()] == [first, second]
    assert run_cli("show", "model", "--json").json()["id"] == second  # chain order kept
    assert run_cli("verify", "--all", "--deep").code == 0
    # the rebuilt catalog knows the chunks: a new archive stores nothing new
    assert run_cli("archive", str(ckpt), "--name", "model", "--json").json()["new_chunks"] == 0


def _largest_chunk(mid: str) -> tuple[str, str, int]:
    return max(chunk_keys_of(mid), key=lambda t: t[2])


def _bomb(length: int) -> bytes:
    """A well-formed chunk object whose zstd frame really inflates to 64 MiB (a decompression bomb)."""
    import struct

    import zstandard
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(b"\0" * (64 << 20))
    return (b"ARCK" + bytes([1, 0, 0, 1]) + struct.pack("<Q", length)
            + bytes([1]) + bytes(7) + struct.pack("<QQ", len(frame), length) + frame)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "swap", "trailing", "bomb"])
def test_corruption_detected_and_restore_refused(env, ckpt, tmp_path, damage):
    mid = archive(ckpt)["id"]
    raw = RawStore(env)
    key, path, _ = _largest_chunk(mid)
    if damage == "flip":
        raw.mutate(key, lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF]) + b[len(b) // 2 + 1:])
    elif damage == "truncate":
        raw.mutate(key, lambda b: b[: len(b) - 7])
    elif damage == "trailing":
        raw.mutate(key, lambda b: b + b"\0junk")
    elif damage == "delete":
        raw.delete(key)
    elif damage == "bomb":
        length = next(length for k, _, length in chunk_keys_of(mid) if k == key)
        raw.write(key, _bomb(length))
    else:
        other = next(k for k, p, _ in chunk_keys_of(mid) if k != key and p == path)
        a, b = raw.read(key), raw.read(other)
        if len(a) == len(b):  # keep sizes plausible: swap contents of two same-file chunks
            raw.write(key, b)
            raw.write(other, a)
        else:
            raw.write(key, b)
    deep = run_cli("verify", mid, "--deep", "--json")
    assert deep.code == 1
    probs = deep.json()["problems"]
    h = key.rsplit("/", 1)[-1]
    assert any(p["chunk"] == h and p["path"] == path and p["offset"] is not None and p["manifest"] == mid
               for p in probs), probs
    if damage in ("truncate", "delete", "trailing"):
        shallow = run_cli("verify", mid, "--json")
        assert shallow.code == 1 and any(p["chunk"] == h for p in shallow.json()["problems"])
    human = run_cli("verify", mid, "--deep")
    assert human.code == 1 and h in human.out and path in human.out
    dest = tmp_path / "out"
    r = run_cli("restore", mid, str(dest))
    assert r.code == 1 and "Traceback" not in r.err
    final = dest / path
    assert not final.exists(), "a damaged file must never appear under its final name"
    assert not [p for p in final.parent.iterdir() if "archiver-tmp" in p.name]
    # the undamaged files were still restored and are correct
    assert (dest / "ckpt" / "config.json").read_bytes() == (ckpt / "config.json").read_bytes()


def test_tampered_manifest_refused(env, ckpt, tmp_path):
    mid = archive(ckpt)["id"]
    raw = RawStore(env)
    raw.mutate(layout.manifest(mid), lambda b: b.replace(b'"owner"', b'"ownex"') if b'"owner"' in b
               else b.replace(b'"model"', b'"mode1"'))
    for f in (tmp_path / "home").rglob("*.db*"):
        f.unlink()
    r = run_cli("catalog", "rebuild")
    assert r.code == 1 and "does not match its id" in r.err
    r = run_cli("restore", mid, str(tmp_path / "out"))
    assert r.code != 0 and "does not match its id" in r.err
    assert not (tmp_path / "out" / "ckpt").exists()


@pytest.mark.parametrize("evil", ["../escape.txt", "/etc/evil", "C:/evil", "a/../../evil", "ok/\x00nul",
                                  "dup", "a\\b"])
def test_path_traversal_manifest_refused(env, ckpt, tmp_path, evil):
    from manifests.model import ChunkRef, Entry, Manifest
    mid = archive(ckpt)["id"]
    shown = run_cli("show", mid, "--json").json()["manifest"]
    src = next(e for e in shown["entries"] if e["path"] == "ckpt/config.json")
    good = Entry(path="ckpt/config.json", type="file", mode=0o644, size=src["size"], mtime_ns=src["mtime_ns"],
                 blake3=src["blake3"], sha256=src["sha256"], chunks=tuple(ChunkRef(*c) for c in src["chunks"]))
    entries = [good]
    if evil == "dup":
        entries += [good, Entry(path="CKPT/config.json", type="file", mode=0o644, size=good.size,
                                mtime_ns=0, blake3=good.blake3, sha256=good.sha256, chunks=good.chunks)]
    else:
        entries.append(Entry(path=evil, type="file", mode=0o644, size=good.size, mtime_ns=0, blake3=good.blake3,
                             sha256=good.sha256, chunks=good.chunks))
    m = Manifest(name="evil", entries=tuple(entries))
    RawStore(env).write(layout.manifest(m.id), m.canonical_json())
    dest = tmp_path / "out"
    r = run_cli("restore", m.id, str(dest))
    assert r.code == 1, r.out + r.err
    assert "unsafe path" in r.err and "Traceback" not in r.err
    assert not dest.exists() or not any(dest.iterdir()), "nothing may be written"
    assert not (tmp_path / "escape.txt").exists()
    v = run_cli("verify", m.id, "--json")
    assert v.code == 1 and any(p["kind"] == "unsafe-path" for p in v.json()["problems"])


def test_errors_are_one_line(env, ckpt, tmp_path):
    r = run_cli("archive", str(tmp_path / "nope"), "--name", "x")
    assert r.code == 1 and r.err.count("\n") == 1 and "no such file" in r.err
    archive(ckpt)
    for ref in ("unknown-name", "ffff", "deadbeef" * 8):
        r = run_cli("show", ref)
        assert r.code != 0 and r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
    r = run_cli("verify", "nope")
    assert r.code != 0 and "Traceback" not in r.err
    r = run_cli("verify")
    assert r.code == 2
    link = tmp_path / "src" / "link"
    link.symlink_to(ckpt / "config.json")
    r = run_cli("archive", str(link), "--name", "x")  # an absolute link restore could not recreate
    assert r.code == 2 and "symlink" in r.err and "(use --dereference)" in r.err
    r = run_cli("archive", str(ckpt), "--name", "bad@name")
    assert r.code == 2
    r = run_cli("archive", str(ckpt), "--name", "x", "--meta", "novalue")
    assert r.code == 2 and "KEY=VALUE" in r.err


def test_symlink_inside_directory_refused(env, ckpt):
    """An absolute symlink could not be restored inside DEST: refused (exit 2), suggesting
    --dereference, and nothing recorded (relative links are recorded: tests/test_hfcache.py)."""
    (ckpt / "link.bin").symlink_to(ckpt / "model.safetensors")
    r = run_cli("archive", str(ckpt), "--name", "x")
    assert r.code == 2 and "symlink" in r.err and "link.bin" in r.err and "(use --dereference)" in r.err
    assert run_cli("list", "--json").json() == []


def test_audit_log_records_archive_and_verify(env, ckpt):
    from archiver.repository import Repository
    mid = archive(ckpt)["id"]
    run_cli("verify", mid)
    run_cli("verify", mid, "--deep")
    with Repository.open() as repo:
        events = [(a.event, a.details.get("mode")) for a in repo.audit_log(mid)]
    assert events == [("archive", None), ("verify", "shallow"), ("verify", "deep")]
