"""archiver.treesahead: a manifest's trees made, proved and written on a thread of their own
while the archive's last steps run. The commit takes them only for the very entries they were
made from, parses none of them again, and stores and records exactly what it would have made
itself (same manifest id, same tree and root bytes, same catalog rows)."""
from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from archiver import layout, pipeline, treesahead
from archiver.errors import ManifestError as ArchiverManifestError
from archiver.pipeline import archive
from archiver.repository import Repository
from archiver.settings import Settings
from manifests import model
from manifests.model import Entry, Manifest
from tests.helpers import RawStore


def _open(root: Path) -> Repository:
    return Repository.open(Settings.resolve(str(root / "store"), root / "cat.db"), create=True)


def _tree(root: Path, dirs: int = 4, files: int = 5) -> Path:
    for d in range(dirs):
        (root / f"d{d}" / "sub").mkdir(parents=True, exist_ok=True)
        for i in range(files):
            (root / f"d{d}" / f"f{i}.bin").write_bytes(os.urandom(100 + 13 * i + d))
        (root / f"d{d}" / "sub" / "empty.txt").write_bytes(b"")
    (root / "lone-empty-dir").mkdir(exist_ok=True)
    return root


def _entry(path: str, n: int = 0) -> Entry:
    return Entry(path=path, type="file", mode=0o644, size=0, mtime_ns=n, blake3="a" * 64, sha256="b" * 64, format="")


def _entries() -> list[Entry]:
    out = [Entry(path="top", type="dir", mode=0o755, mtime_ns=1)]
    for d in range(3):
        out.append(Entry(path=f"top/d{d}", type="dir", mode=0o755, mtime_ns=2))
        out += [_entry(f"top/d{d}/f{i}", d) for i in range(4)]
    return out


def _objects(root: Path, prefix: str) -> dict[str, bytes]:
    raw = RawStore(str(root / "store"))
    return {k: raw.read(k) for k in raw.keys(prefix)}


def _rows(root: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(root / "cat.db")
    try:
        return {"files": sorted(conn.execute("SELECT manifest_id, path, type, size, mode, blake3, sha256 FROM files")),
                "manifests": sorted(conn.execute("SELECT id, name, parent, file_count, total_size, stored_size, json "
                                                 "FROM manifests")),
                "tree_files": sorted(conn.execute("SELECT hash FROM tree_files")),
                "chunks": sorted(conn.execute("SELECT * FROM manifest_chunks"))}
    finally:
        conn.close()


@pytest.mark.parametrize("processes", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_an_archive_stores_and_records_exactly_what_a_commit_without_it_does(tmp_path, monkeypatch, processes):
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    src = _tree(tmp_path / "src")
    used: list[bool] = []
    real = treesahead.TreesAhead.made_for

    def made_for(self, entries):
        got = real(self, entries)
        used.append(got is not None)
        return got
    monkeypatch.setattr(treesahead.TreesAhead, "made_for", made_for)
    with _open(tmp_path / "a") as repo:
        a = archive(repo, [src], name="m", processes=processes)
    monkeypatch.setattr(pipeline, "trees_ahead", lambda *args: None)  # the commit makes its own
    with _open(tmp_path / "b") as repo:
        b = archive(repo, [src], name="m", processes=processes)
    # made ahead only where the LIST of worker chunks runs meanwhile (threads alone: by the commit)
    assert used == ([True] if processes else []) and (a.files_by_processes > 0) == bool(processes)
    assert a.id == b.id
    for prefix in (layout.TREES, layout.MANIFESTS):
        assert _objects(tmp_path / "a", prefix) == _objects(tmp_path / "b", prefix) != {}
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")


@pytest.mark.slow  # worker processes start (forkserver)
def test_each_tree_is_parsed_once_ahead_and_not_again_by_the_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    src = _tree(tmp_path / "src")
    parsed: list[str] = []
    threads: set[str] = set()
    real = model.check_tree

    def check(data: bytes, h: str, where: str) -> None:
        parsed.append(h)
        threads.add(threading.current_thread().name)
        real(data, h, where)
    monkeypatch.setattr(model, "check_tree", check)
    monkeypatch.setattr("archiver.repository.check_tree", model.check_tree)
    with _open(tmp_path) as repo:
        res = archive(repo, [src], name="m", processes=2)
        trees = repo.manifest_trees(repo.load_manifest(res.id))
    hashes = set(trees)
    assert sorted(parsed) == sorted(hashes)  # every tree once, none twice
    assert threads == {"trees-ahead"}  # before the commit, beside the archive's last steps


def test_entries_equal_but_not_the_same_objects_are_not_taken(tmp_path):
    """A tree is taken only for the very entry objects it was made from: equal values can
    still serialise otherwise (1 and 1.0), so the commit makes and proves its own."""
    entries = _entries()
    with _open(tmp_path) as repo:
        ahead = treesahead.TreesAhead(entries, None, repo.put_trees_ahead)
        assert ahead.made_for(entries) is not None
        assert ahead.made_for([dataclasses.replace(e) for e in entries]) is None
        assert ahead.made_for(entries[:-1]) is None
        committed = repo.commit_manifest(Manifest(name="m", entries=tuple(dataclasses.replace(e) for e in entries)),
                                         details={}, trees_ahead=ahead)
        assert committed.id == repo.committed_form(Manifest(name="m", entries=tuple(entries))).id


def test_a_tree_that_fails_its_proof_stores_no_tree_and_the_commit_refuses(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    bad = [dataclasses.replace(e, blake3="not-a-hash") if e.path == "top/d1/f2" else e for e in _entries()]
    with _open(tmp_path) as repo:
        ahead = treesahead.TreesAhead(bad, None, repo.put_trees_ahead)
        assert ahead.made_for(bad) is not None and ahead.proved == set()
        assert RawStore(str(tmp_path / "store")).keys(layout.TREES) == []  # the good ones neither
        with pytest.raises(ArchiverManifestError, match="trees do not read back.*top/d1"):
            repo.commit_manifest(Manifest(name="m", entries=tuple(bad)), trees_ahead=ahead)
    raw = RawStore(str(tmp_path / "store"))
    assert raw.keys(layout.MANIFESTS) == [] and raw.keys(layout.TREES) == []


def test_put_trees_ahead_refuses_bytes_that_do_not_hash_to_their_name(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    made = model.tree_objects(tuple(_entries()))
    assert made is not None
    top, objects, by_dir = made
    with _open(tmp_path) as repo:
        wrong = {h: (objects[top], d) for d, h in by_dir.items() if h != top and h in objects}
        assert wrong and repo.put_trees_ahead(wrong) == set()
        good = {h: (objects[h], d) for d, h in by_dir.items() if h in objects}
        assert repo.put_trees_ahead(good) == set(good)
    assert sorted(RawStore(str(tmp_path / "store")).keys(layout.TREES)) == sorted(layout.tree(h) for h in good)


def test_small_sealed_or_locked_runs_make_no_trees_ahead():
    entries = _entries()
    assert treesahead.trees_ahead(entries, None, False, lambda trees: set()) is None  # under the threshold
    big = entries * 100
    assert treesahead.trees_ahead(big, None, True, lambda trees: set()) is None  # sealed: inline
    assert treesahead.trees_ahead(big, None, False, None) is None  # a lock policy: the commit writes its own


def _listed(monkeypatch) -> None:
    """The archive takes the LIST path (as with worker processes or a resumed journal) without
    starting any: its trees are made ahead."""
    from archiver import fanout
    real = fanout.archive_files

    def archive_files(*args, **kwargs):
        done = real(*args, **kwargs)
        done.resumed = max(done.resumed, 1)
        return done
    monkeypatch.setattr(fanout, "archive_files", archive_files)


@pytest.mark.parametrize("failure", [ArchiverManifestError("stop"), KeyboardInterrupt()])
def test_an_archive_that_fails_before_its_commit_leaves_no_trees_ahead_thread(tmp_path, monkeypatch, failure):
    """The LIST (or the catalog sync) fails while the trees are still being written ahead: the
    archive raises only once that thread is done, so nothing of it runs on behind the caller
    (writing into a store it has closed) and the rerun finds a quiet store."""
    from archiver import fanout
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    src = _tree(tmp_path / "src")
    _listed(monkeypatch)
    started, release = threading.Event(), threading.Event()
    real_put = Repository.put_trees_ahead

    def slow_put(self, trees):
        started.set()
        release.wait(10)
        return real_put(self, trees)
    monkeypatch.setattr(Repository, "put_trees_ahead", slow_put)

    def check(repo, entries):
        assert started.wait(10)
        threading.Timer(0.3, release.set).start()
        raise failure
    monkeypatch.setattr(fanout, "check_chunks_stored", check)
    with _open(tmp_path) as repo:
        with pytest.raises(type(failure)):
            archive(repo, [src], name="m")
        alive = [t.name for t in threading.enumerate() if t.name.startswith("trees-ahead")]
    release.set()
    assert alive == []
    monkeypatch.undo()
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    with _open(tmp_path) as repo:  # the rerun commits, and everything it names reads back
        res = archive(repo, [src], name="m")
        assert repo.manifest_trees(repo.load_manifest(res.id))


def test_trees_written_ahead_for_an_archive_that_failed_are_not_trusted_by_a_later_commit(tmp_path, monkeypatch):
    """Trees written ahead of a commit that never came are not this repository's proof for
    the next commit: damaged (or deleted) meanwhile, that commit must write them again, not
    skip them as durable and name a tree that does not read back."""
    from archiver import fanout
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    src = _tree(tmp_path / "src")
    with monkeypatch.context() as m:
        _listed(m)

        def check(repo, entries):
            raise ArchiverManifestError("the LIST found a chunk missing")
        m.setattr(fanout, "check_chunks_stored", check)
        with _open(tmp_path) as repo:
            with pytest.raises(ArchiverManifestError):
                archive(repo, [src], name="m")
            raw = RawStore(str(tmp_path / "store"))
            trees = raw.keys(layout.TREES)
            assert trees  # written ahead, named by no manifest
            for k in trees:
                raw.write(k, b"rot")  # damaged (or gone) before the next commit
            m.undo()
            monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
            res = archive(repo, [src], name="m")  # threads only: its commit writes its trees
            by_hash = repo.manifest_trees(repo.load_manifest(res.id))
    assert by_hash and all(raw.read(layout.tree(h)) != b"rot" for h in by_hash)


@pytest.mark.integration
def test_trees_written_ahead_on_s3_stay_within_the_connection_pool(s3_server_url, tmp_path, monkeypatch, caplog):
    """TREE_WRITERS at once on one S3 client: no more than its connection pool holds, so no
    request waits for or throws away a connection ('Connection pool is full' on stderr)."""
    import logging
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    entries = [Entry(path="top", type="dir", mode=0o755, mtime_ns=1)]
    for d in range(120):
        entries.append(Entry(path=f"top/d{d:03}", type="dir", mode=0o755, mtime_ns=2))
        entries += [_entry(f"top/d{d:03}/f{i}", d) for i in range(4)]
    made = model.tree_objects(tuple(entries))
    assert made is not None
    top, objects, by_dir = made
    trees = {h: (objects[h], d) for d, h in by_dir.items() if h in objects}
    assert len(trees) > 100
    caplog.set_level(logging.WARNING, logger="urllib3")
    with Repository.open(Settings.resolve(s3_server_url, tmp_path / "cat.db"), create=True) as repo:
        assert repo.put_trees_ahead(trees) == set(trees)
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


@pytest.mark.parametrize("where", ["ahead", "both"])
def test_a_full_disk_under_trees_written_ahead_commits_nothing_unproved_and_the_rerun_commits(tmp_path, monkeypatch,
                                                                                               where):
    """ENOSPC on tree writes ahead only: they are left out and the commit writes them itself
    (same manifest as without). On the commit's writes too: one StoreError, no manifest, and
    the rerun, with space again, commits and every tree reads back."""
    from archiver import fileio
    from archiver.errors import StoreError
    from archiver.stores import local
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    src = _tree(tmp_path / "src")
    _listed(monkeypatch)
    real = local._write_all
    full = {"on": True}
    refused: list[str] = []

    def write_all(fd, data):
        name = threading.current_thread().name
        if full["on"] and name.startswith("trees") and (where == "both" or name.startswith("trees-ahead")):
            refused.append(name)
            raise OSError(28, "No space left on device")
        return real(fd, data)
    monkeypatch.setattr(local, "_write_all", write_all)
    with _open(tmp_path) as repo:
        if where == "both":
            with pytest.raises(StoreError, match="disk full|space"):
                archive(repo, [src], name="m")
            assert RawStore(str(tmp_path / "store")).keys(layout.MANIFESTS) == []
            full["on"] = False
        res = archive(repo, [src], name="m")
        trees = repo.manifest_trees(repo.load_manifest(res.id))
        assert trees and repo.is_recorded(res.id)
    assert any(n.startswith("trees-ahead") for n in refused)
    assert (where == "both") == any(not n.startswith("trees-ahead") for n in refused)
    assert not [t for t in threading.enumerate() if t.name.startswith("trees")]
