"""Restore into hostile destinations: symlinks planted in DEST never redirect a write."""
from __future__ import annotations


import pytest

from archiver.restorer import select
from manifests.model import Entry
from tests.helpers import make_checkpoint, run_cli, tree


@pytest.fixture
def archived(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    r = run_cli("archive", str(ckpt), "--name", "m", "--json")
    assert r.code == 0, r.err
    return r.json()["id"], ckpt


def test_symlinked_directory_in_dest_refused(archived, tmp_path):
    mid, ckpt = archived
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "ckpt").symlink_to(outside, target_is_directory=True)
    r = run_cli("restore", mid, str(dest), "--force")
    assert r.code == 1 and "symlink" in r.err and "Traceback" not in r.err, r.err
    assert list(outside.iterdir()) == []


def test_symlinked_file_in_dest_is_replaced_not_followed(archived, tmp_path):
    mid, ckpt = archived
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    dest = tmp_path / "dest"
    (dest / "ckpt").mkdir(parents=True)
    (dest / "ckpt" / "config.json").symlink_to(victim)
    r = run_cli("restore", mid, str(dest), "--force")
    assert r.code == 0, r.err
    assert victim.read_text() == "do not touch"
    assert not (dest / "ckpt" / "config.json").is_symlink()
    assert tree(dest / "ckpt") == tree(ckpt)


def test_dest_itself_a_symlink_refused(archived, tmp_path):
    mid, _ = archived
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    r = run_cli("restore", mid, str(link))
    assert r.code == 1 and "symlink" in r.err
    assert list(real.iterdir()) == []


def test_existing_file_without_force_is_kept(archived, tmp_path):
    mid, ckpt = archived
    dest = tmp_path / "dest"
    r = run_cli("restore", mid, str(dest))
    assert r.code == 0
    (dest / "ckpt" / "config.json").write_text("local edit")
    r = run_cli("restore", mid, str(dest))
    assert r.code == 2 and "not empty" in r.err
    assert (dest / "ckpt" / "config.json").read_text() == "local edit"


def test_modes_and_mtimes_restored(archived, tmp_path):
    mid, ckpt = archived
    dest = tmp_path / "dest"
    assert run_cli("restore", mid, str(dest)).code == 0
    for p in ckpt.rglob("*"):
        q = dest / "ckpt" / p.relative_to(ckpt)
        assert (q.stat().st_mode & 0o7777) == (p.stat().st_mode & 0o7777), p
        if p.is_file():
            assert q.stat().st_mtime_ns == p.stat().st_mtime_ns


def test_select_includes_parents_and_subtrees():
    es = [Entry("a", "dir", 0o755), Entry("a/b", "dir", 0o755), Entry("a/b/x.json", "file", 0o644),
          Entry("a/c.bin", "file", 0o644), Entry("d.txt", "file", 0o644)]
    assert [e.path for e in select(es, ["a/b"])] == ["a", "a/b", "a/b/x.json"]
    # fnmatch on the whole path: '*' also matches '/'
    assert [e.path for e in select(es, ["*.json"])] == ["a", "a/b", "a/b/x.json"]
    assert [e.path for e in select(es, ["a/*.bin", "d.*"])] == ["a", "a/c.bin", "d.txt"]
    assert [e.path for e in select(es, ["nomatch"])] == []
    assert select(es, []) == es
