"""Symlinks: a Hugging Face cache snapshot (files are symlinks into ../../blobs/) archives
its blob bytes, records repo id and revision, and refuses a blob whose SHA-256 is not its
name; --dereference follows links to regular files anywhere; other symlinks are recorded
and restored as symlinks, and a target that could leave DEST refuses the restore."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from archiver.hfcache import in_blobs, lfs_sha256, snapshot_of
from manifests.errors import UnsafePathError
from manifests.model import Entry, Manifest, parse_manifest
from manifests.paths import check_link
from tests.fixtures import make_safetensors, transformer_tensors
from tests.helpers import run_cli

REV = "0123456789abcdef0123456789abcdef01234567"


def hf_cache(root: Path, repo: str = "models--sentence-transformers--tiny-bert") -> Path:
    """A synthetic cache: LFS blobs named by SHA-256, small files by git SHA-1, one nested file."""
    base = root / "hub" / repo
    (base / "blobs").mkdir(parents=True)
    snap = base / "snapshots" / REV
    (snap / "1_Pooling").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(REV)
    weights = root / "w.safetensors"
    make_safetensors(weights, transformer_tensors(n_layers=1, hidden=16, vocab=30))
    files = {"model.safetensors": weights.read_bytes(),
             "config.json": json.dumps({"architectures": ["BertModel"], "torch_dtype": "float32"}).encode(),
             "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}
    for rel, data in files.items():
        blob = hashlib.sha256(data).hexdigest() if rel.endswith(".safetensors") else hashlib.sha1(data).hexdigest()
        (base / "blobs" / blob).write_bytes(data)
        link = snap / rel
        os.symlink("../" * (rel.count("/") + 2) + f"blobs/{blob}", link)
    return snap


def test_snapshot_detection(tmp_path):
    snap = hf_cache(tmp_path)
    s = snapshot_of(snap)
    assert (s.repo_type, s.repo_id, s.revision) == ("model", "sentence-transformers/tiny-bert", REV)
    assert snapshot_of(snap.parent) is None and snapshot_of(tmp_path) is None
    assert in_blobs(s, snap, "../../blobs/abc") == "abc" and in_blobs(s, snap, "../../refs/main") is None
    assert lfs_sha256("a" * 64) == "a" * 64 and lfs_sha256("a" * 40) is None


def test_snapshot_archives_blob_bytes_and_records_repo_and_revision(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    snap = hf_cache(tmp_path)
    r = run_cli("archive", str(snap), "--name", "tiny-bert", "--json")
    assert r.code == 0, r.err
    mid = r.json()["id"]
    m = run_cli("show", mid, "--json").json()
    assert m["manifest"]["meta"] == {"hf.repo_id": "sentence-transformers/tiny-bert", "hf.repo_type": "model",
                                     "hf.revision": REV}
    types = {e["path"]: e["type"] for e in m["manifest"]["entries"]}
    assert types[f"{REV}/model.safetensors"] == "file" and types[f"{REV}/1_Pooling/config.json"] == "file"
    assert m["summary"]["architecture"] == "BertModel" and m["summary"]["format"] == "safetensors"
    out = tmp_path / "out"
    assert run_cli("restore", mid, str(out)).code == 0
    for rel in ("model.safetensors", "config.json", "1_Pooling/config.json"):
        restored = out / REV / rel
        assert not restored.is_symlink() and restored.read_bytes() == (snap / rel).read_bytes()
    assert [row["name"] for row in run_cli("list", "--where", "meta.hf.revision=" + REV, "--json").json()] == \
        ["tiny-bert"]


def test_a_tampered_lfs_blob_makes_archive_exit_1_and_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    snap = hf_cache(tmp_path)
    blob = (snap / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    r = run_cli("archive", str(snap), "--name", "tiny-bert", "--json")
    assert r.code == 1 and "Hugging Face blob" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert run_cli("list", "--json").json() == []


def test_meta_that_contradicts_the_snapshot_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    snap = hf_cache(tmp_path)
    r = run_cli("archive", str(snap), "--name", "x", "--meta", "hf.revision=main")
    assert r.code == 2 and "contradicts the snapshot" in r.err


def link_tree(root: Path) -> dict[str, tuple[str, object]]:
    """Relative path -> ('link', target) | ('file', bytes) | ('dir', None), never following a link."""
    out: dict[str, tuple[str, object]] = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", None)
        else:
            out[rel] = ("file", p.read_bytes())
    return out


@pytest.fixture
def linked(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "real.txt").write_text("real")
    os.symlink("real.txt", src / "d" / "same-dir")
    os.symlink("../d/real.txt", src / "d" / "up-and-down")
    os.symlink("d", src / "dir-link")
    os.symlink("missing", src / "dangling")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    return src, outside


def test_symlinks_are_recorded_and_restored_as_symlinks(tmp_path, monkeypatch, linked):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src, _ = linked
    r = run_cli("archive", str(src), "--name", "links", "--json")
    assert r.code == 0, r.err
    entries = {e["path"]: e for e in run_cli("show", "links", "--json").json()["manifest"]["entries"]}
    assert entries["src/d/same-dir"] == {"path": "src/d/same-dir", "type": "symlink", "target": "real.txt",
                                         "mode": 0o777}
    assert entries["src/dangling"]["target"] == "missing"
    out = tmp_path / "out"
    res = run_cli("restore", "links", str(out), "--json")
    assert res.code == 0 and res.json()["links"] == 4, res.out
    assert link_tree(out / "src") == link_tree(src)
    assert os.readlink(out / "src" / "dir-link") == "d" and (out / "src" / "d" / "up-and-down").read_text() == "real"
    assert "src/d/same-dir -> real.txt" in run_cli("show", "links").out
    assert run_cli("verify", "links", "--deep").code == 0


def test_dereference_follows_links_to_files_anywhere(tmp_path, monkeypatch, linked):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src, outside = linked
    os.symlink(outside, src / "abs-link")
    r = run_cli("archive", str(src), "--name", "deref", "--dereference", "--json")
    assert r.code == 0, r.err
    entries = {e["path"]: e for e in run_cli("show", "deref", "--json").json()["manifest"]["entries"]}
    assert entries["src/abs-link"]["type"] == "file" and entries["src/abs-link"]["size"] == len("outside")
    assert entries["src/d/same-dir"]["type"] == "file"
    assert entries["src/dir-link"]["type"] == "symlink" and entries["src/dangling"]["type"] == "symlink"
    out = tmp_path / "out"
    assert run_cli("restore", "deref", str(out)).code == 0
    assert (out / "src" / "abs-link").read_text() == "outside" and not (out / "src" / "abs-link").is_symlink()


def test_a_link_swapped_after_the_scan_is_refused(tmp_path, monkeypatch):
    """The followed target is opened and must be the inode the scan saw."""
    from archiver import pipeline
    from archiver.scan import open_source, scan
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    os.symlink(tmp_path / "a", src / "link")
    sources = scan([src], dereference=True)
    link = next(s for s in sources if s.path == "src/link")
    assert link.followed
    os.unlink(src / "link")
    os.symlink(tmp_path / "b", src / "link")
    with pytest.raises(Exception, match="changed while it was being archived"):
        open_source(link)
    assert pipeline  # the archive path uses exactly this open


@pytest.mark.parametrize("path, target, ok", [
    ("a/l", "x", True), ("a/l", "../x", True), ("a/b/l", "../../x", True), ("a/l", "..", True),
    ("l", "../x", False), ("a/l", "../../x", False), ("l", "/etc/passwd", False), ("a/l", "x/../../..", False),
    ("a/l", "./x", False), ("a/l", "x//y", False), ("a/l", "", False), ("a/l", "x\\y", False),
])
def test_check_link(path, target, ok):
    if ok:
        check_link(path, target)
    else:
        with pytest.raises(UnsafePathError):
            check_link(path, target)


def test_restore_refuses_a_manifest_whose_link_leaves_dest(tmp_path, monkeypatch):
    """A forged manifest (ids hold, it is well-formed) with an escaping symlink: refused before any write."""
    from archiver import api
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    (tmp_path / "f").write_text("f")
    run_cli("archive", str(tmp_path / "f"), "--name", "ok")
    evil = Manifest(name="evil", entries=(Entry(path="l", type="symlink", mode=0o777, target="../../etc"),))
    assert parse_manifest(evil.canonical_json(), evil.id) == evil
    with api.open_repository() as repo:
        repo.commit_manifest(evil)
    out = tmp_path / "out"
    r = run_cli("restore", "evil", str(out))
    assert r.code != 0 and "leaves the destination" in r.err
    assert not out.exists() or not any(out.iterdir())
    v = run_cli("verify", "evil", "--json")
    assert v.code == 1 and any(p["kind"] == "unsafe-path" for p in v.json()["problems"])


def test_manifests_without_symlinks_are_unchanged(tmp_path):
    e = Entry(path="a", type="file", mode=0o644, size=0, mtime_ns=1, blake3="0" * 64, sha256="1" * 64)
    assert set(e.to_json()) == {"path", "type", "mode", "size", "mtime_ns", "blake3", "sha256", "format", "chunks"}


def test_a_link_restore_could_not_recreate_is_refused_at_archive_time(tmp_path, monkeypatch):
    """Whatever archive records, restore can create: an absolute or escaping link is refused
    (exit 2, naming --dereference); with --dereference the file it names is archived."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "outside.txt").write_text("o")
    os.symlink(tmp_path / "outside.txt", src / "abs")
    r = run_cli("archive", str(src), "--name", "x")
    assert r.code == 2 and "is absolute" in r.err and "(use --dereference)" in r.err, r.err
    assert run_cli("list", "--json").json() == []  # nothing recorded
    assert run_cli("archive", str(src), "--name", "x", "--dereference").code == 0
    os.unlink(src / "abs")
    os.symlink("../../outside.txt", src / "up")  # src/up: one level below DEST, two up leaves it
    r = run_cli("archive", str(src), "--name", "y")
    assert r.code == 2 and "leaves the destination" in r.err


def test_restore_with_force_replaces_a_file_by_the_symlink(tmp_path, monkeypatch, linked):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src, _ = linked
    assert run_cli("archive", str(src), "--name", "links").code == 0
    out = tmp_path / "out"
    (out / "src" / "d").mkdir(parents=True)
    (out / "src" / "d" / "same-dir").write_text("in the way")
    r = run_cli("restore", "links", str(out))
    assert r.code == 2 and "not empty" in r.err
    r = run_cli("restore", "links", str(out), "--force")
    assert r.code == 0, r.err
    assert os.readlink(out / "src" / "d" / "same-dir") == "real.txt"
    assert not [p for p in (out / "src" / "d").iterdir() if p.name.startswith(".archiver-tmp")]
