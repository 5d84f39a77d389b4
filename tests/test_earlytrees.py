"""Trees made ahead while the files are archived (archiver.earlytrees): the same manifest,
store objects and catalog as when the commit makes them all (worker processes, threads, a
re-archive through the files cache, S3), each tree proved once and written once, and any
failure ahead left to the commit."""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from archiver import api, earlytrees, layout, procfiles
from archiver.repository import Repository
from manifests import model
from manifests.model import TREE_THRESHOLD, Entry, tree_children, tree_objects
from tests.helpers import RawStore

DIRS, PER_DIR = 24, 44  # over TREE_THRESHOLD entries: the manifest is committed through trees


def make_tree(root: Path) -> Path:
    """DIRS directories (two nested, one empty) of small files, empty files and a symlink."""
    for d in range(DIRS):
        sub = root / f"d{d:02}" / ("inner" if d % 5 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(PER_DIR):
            (sub / f"f{i:02}").write_bytes(b"" if i % 9 == 0 else os.urandom(1 + 37 * i + d))
    (root / "empty-dir").mkdir()
    os.symlink("d00/inner/f01", root / "link")
    return root


@pytest.fixture
def small_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks of a few files, so directories complete task by task on the two workers, and
    batches of a few trees, so trees are written while the workers' tasks are still taken."""
    monkeypatch.setattr(procfiles, "TASK_FILES", 40)
    monkeypatch.setattr(earlytrees, "BATCH", 4)


_REAL_BATCH = Repository.put_trees_made


def _per_tree(put):  # type: ignore[no-untyped-def]
    """A `put_trees_made` that writes each tree of a batch by `put(self, h, data)` (a test's
    per-tree hook around the real `put_tree_made`)."""
    def batch(self, trees):  # type: ignore[no-untyped-def]
        for h, data in trees:
            put(self, h, data)
    return batch


@contextlib.contextmanager
def without_ahead() -> Iterator[None]:
    """The commit makes every tree (the base behaviour)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(earlytrees.EarlyTrees, "start", classmethod(lambda cls, *a, **k: None))
        yield


def _store_objects(url: str) -> dict[str, bytes]:
    """Every object but events (they carry times) and the store's probe, by key."""
    raw = RawStore(url)
    out = {}
    for prefix in ("manifests/", "trees/", "chunks/", "filemaps/", "signatures/"):
        for k in raw.keys(prefix):
            out[k] = raw.read(k)
    return out


def _catalog_rows(path: Path) -> dict[str, list[tuple]]:
    """The catalog's rows that record archives (not times): manifests, files, chunks, trees."""
    con = sqlite3.connect(path)
    try:
        return {
            "manifests": con.execute("SELECT id, name, label, parent, file_count, total_size, stored_size, json "
                                     "FROM manifests ORDER BY id").fetchall(),
            "files": con.execute("SELECT * FROM files ORDER BY manifest_id, path").fetchall(),
            "chunks": con.execute("SELECT * FROM chunks ORDER BY key").fetchall(),
            "manifest_chunks": con.execute("SELECT * FROM manifest_chunks ORDER BY manifest, chunk").fetchall(),
            "tree_files": con.execute("SELECT * FROM tree_files ORDER BY hash").fetchall(),
        }
    finally:
        con.close()


def _archive(tmp_path: Path, src: Path, store: str, name: str, processes: int):  # type: ignore[no-untyped-def]
    cat = tmp_path / f"{abs(hash(store))}.db"
    return api.archive([src], name=name, store=store, catalog=str(cat), processes=processes), cat


@pytest.mark.parametrize("processes", [2, 0])
def test_same_archive_as_trees_made_at_commit(tmp_path, home, small_tasks, processes):
    src = make_tree(tmp_path / "src")
    ahead, cat_a = _archive(tmp_path, src, str(tmp_path / "a"), "m", processes)
    with without_ahead():
        base, cat_b = _archive(tmp_path, src, str(tmp_path / "b"), "m", processes)
    assert ahead.id == base.id
    assert _store_objects(str(tmp_path / "a")) == _store_objects(str(tmp_path / "b"))
    assert _catalog_rows(cat_a) == _catalog_rows(cat_b)
    report = api.verify([ahead.id], store=str(tmp_path / "a"), catalog=str(cat_a), deep=True)
    assert report.ok, report.problems


def _change(src: Path) -> None:
    """The same change on each copy, with the same times: one file rewritten, one added."""
    (src / "d03" / "f05").write_bytes(b"changed after the first archive")
    (src / "d07" / "new").write_bytes(b"a new file")
    for p in (src / "d03" / "f05", src / "d07" / "new", src / "d03", src / "d07"):
        os.utime(p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))


def test_same_re_archive_through_the_files_cache(tmp_path, home, small_tasks):
    """An unchanged directory keeps the previous tree, a changed one gets a new tree: the same
    ids, objects and rows as when the commit makes them."""
    make_tree(tmp_path / "a-src" / "src")
    shutil.copytree(tmp_path / "a-src" / "src", tmp_path / "b-src" / "src", symlinks=True)  # times kept
    results = {}
    for side in ("a", "b"):
        store, src = str(tmp_path / side), tmp_path / f"{side}-src" / "src"
        with without_ahead() if side == "b" else contextlib.nullcontext():
            first, cat = _archive(tmp_path, src, store, "m", 2)
            _change(src)
            second, cat = _archive(tmp_path, src, store, "m", 2)
        assert second.files_reused > 0
        results[side] = (first.id, second.id, _store_objects(store), _catalog_rows(cat))
    assert results["a"][:2] == results["b"][:2]
    assert results["a"][2] == results["b"][2]
    assert results["a"][3] == results["b"][3]


@pytest.mark.packs  # small chunks packed, as by default: on S3 a PUT per small file is not what this tests
def test_same_archive_on_each_store(tmp_path, home, store_url):
    """Threads on every store (nothing made ahead there), the same as the commit's trees."""
    src = make_tree(tmp_path / "src")
    ahead = api.archive([src], name="m", store=store_url, catalog=str(tmp_path / "a.db"), processes=0)
    _same_trees_as_the_commits(tmp_path, src, store_url, ahead.id, 0)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.packs  # small chunks packed, as by default: on S3 a PUT per small file is not what this tests
def test_same_archive_on_s3_through_workers(tmp_path, home, s3_server_url, small_tasks, monkeypatch):
    """Worker processes writing to S3 (moto's HTTP server): trees made ahead are PUT there,
    the same objects and manifest as the commit's own on a local store, and it verifies."""
    src = make_tree(tmp_path / "src")
    made: list[str] = []
    real_put = Repository.put_tree_made
    monkeypatch.setattr(Repository, "put_trees_made", _per_tree(lambda self, h, data: (made.append(h), real_put(self, h, data))))
    ahead = api.archive([src], name="m", store=s3_server_url, catalog=str(tmp_path / "a.db"), processes=2)
    assert ahead.files_by_processes > 0 and made
    _same_trees_as_the_commits(tmp_path, src, s3_server_url, ahead.id, 2)


def test_each_tree_proved_and_written_once(tmp_path, home, small_tasks, monkeypatch):
    """The trees made ahead are proved there (check_tree) and written there: the commit's own
    proof parses none again and writes none again; all of them are the manifest's."""
    src = make_tree(tmp_path / "src")
    at_commit: list[str] = []
    real_check = model.check_tree
    monkeypatch.setattr(model, "check_tree", lambda data, h, where: (at_commit.append(h), real_check(data, h, where)))
    written: list[str] = []
    real_put = Repository.put_tree_made
    monkeypatch.setattr(Repository, "put_trees_made", _per_tree(lambda self, h, data: (written.append(h), real_put(self, h, data))))
    commit_puts: list[dict] = []
    real_puts = Repository._put_trees
    monkeypatch.setattr(Repository, "_put_trees", lambda self, trees, hot=None: (commit_puts.append(dict(trees)),
                                                                                   real_puts(self, trees, hot))[1])
    res, cat = _archive(tmp_path, src, str(tmp_path / "s"), "m", 2)
    with api.open_repository(str(tmp_path / "s"), cat) as repo:
        m = repo.load_manifest(res.id)
    named = set(tree_objects(m.entries)[1])
    assert len(named) > DIRS
    assert sorted(written) == sorted(named)  # each once, every one the manifest names
    assert at_commit == []  # the commit's prove_trees found them all proved ahead
    assert commit_puts == [{}]


def test_a_tree_write_that_fails_ahead_is_written_by_the_commit(tmp_path, home, small_tasks, monkeypatch,
                                                                 ):
    src = make_tree(tmp_path / "src")
    from archiver.errors import StoreError
    failed: list[str] = []

    def flaky(self, h, data):  # type: ignore[no-untyped-def]
        if not failed:
            failed.append(h)
            raise StoreError("the tree could not be written (test)")
        return Repository._put_tree(self, h, data, None)
    monkeypatch.setattr(Repository, "put_trees_made", _per_tree(flaky))
    res, _ = _archive(tmp_path, src, str(tmp_path / "a"), "m", 2)
    with without_ahead():
        base, _ = _archive(tmp_path, src, str(tmp_path / "b"), "m", 2)
    assert failed and res.id == base.id
    assert RawStore(str(tmp_path / "a")).read(layout.tree(failed[0]))
    assert _store_objects(str(tmp_path / "a")) == _store_objects(str(tmp_path / "b"))


def test_a_failed_archive_commits_no_manifest(tmp_path, home, small_tasks, monkeypatch):
    """An error while the workers' results are taken (here the driver cannot adopt a late
    task's packs) fails the archive after trees were made ahead: they may stay, unreferenced,
    never a manifest or a catalog row; the builder stops."""
    from archiver.errors import StoreError
    src = make_tree(tmp_path / "src")
    taken: list[int] = []
    real_adopt = Repository.adopt_packs

    def adopt(self, indexes):  # type: ignore[no-untyped-def]
        taken.append(1)
        if len(taken) == 4:  # the first tasks' directories are complete: wait for a tree made ahead
            for _ in range(200):  # bounded: 10 s at most
                if made:
                    break
                time.sleep(0.05)
            raise StoreError("the packs could not be adopted (test)")
        return real_adopt(self, indexes)
    monkeypatch.setattr(Repository, "adopt_packs", adopt)
    made: list[str] = []
    real_put = Repository.put_tree_made
    monkeypatch.setattr(Repository, "put_trees_made", _per_tree(lambda self, h, data: (made.append(h), real_put(self, h, data))))
    with pytest.raises(StoreError, match="test"):
        _archive(tmp_path, src, str(tmp_path / "s"), "m", 2)
    assert made  # trees were made ahead before the failure
    assert RawStore(str(tmp_path / "s")).keys("manifests/") == []
    for _ in range(200):  # bounded: 10 s at most
        if not [t for t in threading.enumerate() if t.name.startswith("early-trees")]:
            break
        time.sleep(0.05)
    assert [t.name for t in threading.enumerate() if t.name.startswith("early-trees")] == []
    with api.open_repository(str(tmp_path / "s"), tmp_path / f"{abs(hash(str(tmp_path / 's')))}.db") as repo:
        assert repo.list_archives() == []


def test_threads_leave_the_trees_to_the_commit(tmp_path, home, monkeypatch):
    """On threads (no worker processes) no builder runs beside them: only the trees complete
    from the start (none here: every directory has files) are made ahead."""
    made: list[str] = []
    real_put = Repository.put_tree_made
    monkeypatch.setattr(Repository, "put_trees_made", _per_tree(lambda self, h, data: (made.append(h), real_put(self, h, data))))
    res, _ = _archive(tmp_path, make_tree(tmp_path / "src"), str(tmp_path / "s"), "m", 0)
    assert res.files > TREE_THRESHOLD and made == []


def test_tree_children_agrees_with_tree_objects():
    def entries(paths: list[tuple[str, bool]]) -> list[Entry]:
        return [Entry(path=p, type="dir", mode=0o755) if d else
                Entry(path=p, type="symlink", mode=0o777, target="x") for p, d in paths]
    cases = [
        [("a", True), ("a/b", False), ("c", False)],
        [("a", True), ("a", True)],
        [("a/b", False)],  # no entry for its directory
        [("a", True), ("a/../b", False)],
        [("a", False), ("a", False)],
        [("", False)],
        [("a", True), ("a/b", True), ("a/b/c", False), ("d", False)],
    ]
    for paths in cases:
        got = tree_children(paths)
        made = tree_objects(entries(paths))
        assert (got is None) == (made is None), paths
        if got is not None:
            assert set(got) == set(made[2]), paths
            assert sorted(i for idx in got.values() for i in idx) == list(range(len(paths)))
    assert tree_children([("a", True), ("a/b", False), ("c", False)]) == {"": [0, 2], "a": [1]}


def test_not_started_where_the_commit_makes_no_trees(tmp_path):
    from archiver.scan import scan

    class Repo:
        sealed = False
    small = tmp_path / "few"
    small.mkdir()
    (small / "f").write_bytes(b"x")
    assert earlytrees.EarlyTrees.start(Repo(), scan([small]), {}, None, None) is None  # inline manifest
    big = make_tree(tmp_path / "big")
    sources = scan([big])
    assert len(sources) > TREE_THRESHOLD
    assert earlytrees.EarlyTrees.start(Repo(), sources, {}, None, write_policy=object()) is None
    assert earlytrees.EarlyTrees.start(Repo(), sources, {}, None, None, processes=0) is None  # threads
    Repo.sealed = True
    assert earlytrees.EarlyTrees.start(Repo(), sources, {}, None, None) is None


def test_a_failure_after_the_files_leaves_no_thread_behind(tmp_path, home, small_tasks, monkeypatch):
    """An error between the last file and the commit (here the catalog sync): the builder
    makes what is left and ends, its writers too; no manifest is written."""
    from archiver.errors import StoreError

    def failing(self):  # type: ignore[no-untyped-def]
        raise StoreError("the catalog could not be synced (test)")
    monkeypatch.setattr(Repository, "sync_catalog", failing)
    src = make_tree(tmp_path / "src")
    with pytest.raises(StoreError, match="test"):
        _archive(tmp_path, src, str(tmp_path / "s"), "m", 2)
    for _ in range(200):  # bounded: 10 s at most
        if not [t for t in threading.enumerate() if t.name.startswith("early-trees")]:
            break
        time.sleep(0.05)
    assert [t.name for t in threading.enumerate() if t.name.startswith("early-trees")] == []
    assert RawStore(str(tmp_path / "s")).keys("manifests/") == []
    assert RawStore(str(tmp_path / "s")).keys("trees/")  # made ahead, unreferenced: allowed


def _early_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("early-trees") and t.is_alive()]


@pytest.mark.parametrize("error", ["store", "interrupt"])
def test_an_archive_failing_after_the_files_returns_with_no_early_write_under_way(tmp_path, home, small_tasks,
                                                                                  monkeypatch, error):
    """An error (or Ctrl-C) between the last file and the commit: by the time api.archive
    raises, the builder and its writers are stopped, not still writing trees into a store
    whose repository is closed (here each tree write is slow, so writes are under way)."""
    from archiver.errors import StoreError
    real_put = Repository.put_tree_made
    started = _slow_tree_writes(monkeypatch, 0.2)
    real_sync = Repository.sync_catalog

    def failing(self):  # type: ignore[no-untyped-def]
        if error == "interrupt":
            raise KeyboardInterrupt
        raise StoreError("the catalog could not be synced (test)")
    monkeypatch.setattr(Repository, "sync_catalog", failing)
    src = make_tree(tmp_path / "src")
    with pytest.raises(KeyboardInterrupt if error == "interrupt" else StoreError):
        _archive(tmp_path, src, str(tmp_path / "s"), "m", 2)
    left = _early_threads()
    import multiprocessing
    workers = multiprocessing.active_children()
    n = len(started)
    time.sleep(0.5)
    assert left == [] and len(started) == n  # nothing left running, no tree written afterwards
    assert workers == []  # nor a worker process
    assert RawStore(str(tmp_path / "s")).keys("manifests/") == []
    monkeypatch.setattr(Repository, "put_trees_made", _REAL_BATCH)  # a rerun commits the archive the commit
    monkeypatch.setattr(Repository, "sync_catalog", real_sync)  # alone would have made
    _rerun_is_the_commits_own(tmp_path, src)


def test_a_tree_made_from_stale_entries_is_not_the_commits(tmp_path, home, small_tasks, monkeypatch):
    """A file whose entry reached the builder first as another entry (equal but for its hash,
    then again as the one the commit records: a file retried, replaced or grown): the
    tree made from the stale entry, and its parents', are not the manifest's; the commit's own
    trees are, the same as when the commit makes them all."""
    import dataclasses
    src = make_tree(tmp_path / "src")
    stale: list[str] = []
    real_add = earlytrees.EarlyTrees.add

    def add(self, entries):  # type: ignore[no-untyped-def]
        entries = list(entries)
        for e in entries:
            if e.path.endswith("d03/f05") or e.path.endswith("d05/inner/f07"):
                old = dataclasses.replace(e, blake3="0" * 64, mtime_ns=e.mtime_ns + 1)
                stale.append(e.path)
                real_add(self, [old])  # first the stale entry, then (ignored by the builder) the real one
        real_add(self, entries)
    monkeypatch.setattr(earlytrees.EarlyTrees, "add", add)
    made: dict[str, bytes] = {}
    real_put = Repository.put_tree_made
    monkeypatch.setattr(Repository, "put_trees_made", _per_tree(lambda self, h, data: (made.__setitem__(h, data),
                                                                                       real_put(self, h, data))[1]))
    ahead, cat = _archive(tmp_path, src, str(tmp_path / "a"), "m", 2)
    with without_ahead():
        base, _ = _archive(tmp_path, src, str(tmp_path / "b"), "m", 2)
    assert len(stale) == 2 and ahead.id == base.id
    with api.open_repository(str(tmp_path / "a"), cat) as repo:
        named = set(tree_objects(repo.load_manifest(ahead.id).entries)[1])
    assert [h for h, data in made.items() if b"0" * 64 in data]  # stale trees were made and written ahead
    assert not {h for h, data in made.items() if b"0" * 64 in data} & named  # no stale tree is named
    assert {k for k in _store_objects(str(tmp_path / "b")) if k.startswith("trees/")} <= \
        {k for k in _store_objects(str(tmp_path / "a")) if k.startswith("trees/")}
    assert api.verify([ahead.id], store=str(tmp_path / "a"), catalog=str(cat), deep=True).ok


def make_odd_tree(root: Path) -> Path:
    """Directories that complete out of path order: names sorting differently bytewise and as
    text, "a/b" against "a.b" and "a-b", deep nesting, a directory of only subdirectories,
    empty ones, and one directory whose files span many tasks."""
    names = ["a", "a.b", "a-b", "a b", "a0", "é", "z", "Ω", "\U0001f600", "_", "~"]
    for n in names:
        for sub in ("", "b", "b/c", "b.c"):
            d = root / n / sub
            d.mkdir(parents=True, exist_ok=True)
            for i in range(3):
                (d / f"f{i}{n}").write_bytes(os.urandom(10 + i))
    deep = root / "deep"
    for k in range(12):
        deep = deep / f"l{k}"
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"leaf")
    (root / "only-dirs" / "x" / "empty").mkdir(parents=True)
    (root / "only-dirs" / "y").mkdir()
    (root / "only-dirs" / "y" / "f").write_bytes(b"y")
    big = root / "many"
    big.mkdir()
    for i in range(900):  # over TREE_THRESHOLD entries in all
        (big / f"{i:04}").write_bytes(os.urandom(1 + i % 50))
    (big / "empty").write_bytes(b"")
    os.symlink("../a/b", root / "many" / "to-a-b")
    return root


def test_directories_completing_out_of_order_same_archive(tmp_path, home, small_tasks, monkeypatch):
    src = make_odd_tree(tmp_path / "src")
    made: list[str] = []
    real_put = Repository.put_tree_made
    monkeypatch.setattr(Repository, "put_trees_made", _per_tree(lambda self, h, data: (made.append(h), real_put(self, h, data))))
    ahead, cat_a = _archive(tmp_path, src, str(tmp_path / "a"), "m", 2)
    with without_ahead():
        base, cat_b = _archive(tmp_path, src, str(tmp_path / "b"), "m", 2)
    assert made and ahead.id == base.id
    assert _store_objects(str(tmp_path / "a")) == _store_objects(str(tmp_path / "b"))
    assert _catalog_rows(cat_a) == _catalog_rows(cat_b)
    assert api.verify([ahead.id], store=str(tmp_path / "a"), catalog=str(cat_a), deep=True).ok


def test_no_early_thread_left_once_the_archive_returns(tmp_path, home, small_tasks, monkeypatch):
    """Slow tree writes ahead: the commit waits for them, and once api.archive returns no
    builder or writer is left, none writes afterwards."""
    started = _slow_tree_writes(monkeypatch, 0.05)
    res, cat = _archive(tmp_path, make_tree(tmp_path / "src"), str(tmp_path / "s"), "m", 2)
    assert started and _early_threads() == []
    n = len(started)
    time.sleep(0.2)
    assert len(started) == n
    assert api.verify([res.id], store=str(tmp_path / "s"), catalog=str(cat)).ok


def test_ctrl_c_while_the_files_are_archived_stops_the_trees_ahead(tmp_path, home, small_tasks, monkeypatch):
    """Ctrl-C (SIGINT to the driver) once a tree was made ahead, while the workers' tasks are
    still taken: KeyboardInterrupt goes up as itself, no manifest or catalog row, no thread
    behind, and a rerun (resuming the journal) commits the archive the commit alone would make."""
    import signal
    src = make_tree(tmp_path / "src")
    made: list[str] = []
    real_put = Repository.put_tree_made

    def put(self, h, data):  # type: ignore[no-untyped-def]
        if not made:
            os.kill(os.getpid(), signal.SIGINT)
        made.append(h)
        return real_put(self, h, data)
    monkeypatch.setattr(Repository, "put_trees_made", _per_tree(put))
    real_adopt = Repository.adopt_packs

    def adopt(self, indexes):  # type: ignore[no-untyped-def]
        if made:
            time.sleep(0.3)  # the driver is still taking results when the signal arrives
        return real_adopt(self, indexes)
    monkeypatch.setattr(Repository, "adopt_packs", adopt)
    _fails_cleanly_then_reruns(tmp_path, src, monkeypatch, KeyboardInterrupt, made, real_adopt, real_put)


def test_same_counts_with_duplicates_across_directories(tmp_path, home, small_tasks):
    """Files of the same bytes in many directories (tasks cut in path order ahead, by size
    in the base): the same new chunks, bytes stored and result fields as the base."""
    src = tmp_path / "src"
    for d in range(30):
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(40):
            (src / f"d{d:02}" / f"f{i:02}").write_bytes(b"same %d" % (i % 7) if i % 3 else os.urandom(20 + i))
    ahead, _ = _archive(tmp_path, src, str(tmp_path / "a"), "m", 2)
    with without_ahead():
        base, _ = _archive(tmp_path, src, str(tmp_path / "b"), "m", 2)
    fields = ("id", "files", "dirs", "bytes_in", "bytes_stored", "new_bytes_stored", "chunks", "new_chunks",
              "repaired_chunks", "resumed_files", "files_reused")
    assert {f: getattr(ahead, f) for f in fields} == {f: getattr(base, f) for f in fields}


def test_a_worker_killed_after_trees_were_made_ahead(tmp_path, home, small_tasks, monkeypatch):
    """A worker process killed (SIGKILL) once trees were made ahead: the archive fails with
    one error, leaves no manifest, no early-trees thread and no worker behind; the rerun
    commits the commit's own archive."""
    import multiprocessing
    import signal
    from archiver.errors import ArchiverError
    src = make_tree(tmp_path / "src")
    made: list[str] = []
    real_put = Repository.put_tree_made

    def put(self, h, data):  # type: ignore[no-untyped-def]
        if not made:
            for p in multiprocessing.active_children():
                os.kill(p.pid, signal.SIGKILL)
        made.append(h)
        return real_put(self, h, data)
    monkeypatch.setattr(Repository, "put_trees_made", _per_tree(put))
    real_adopt = Repository.adopt_packs
    monkeypatch.setattr(Repository, "adopt_packs", lambda self, idx: (time.sleep(0.1) if made else None,
                                                                      real_adopt(self, idx))[1])
    _fails_cleanly_then_reruns(tmp_path, src, monkeypatch, ArchiverError, made, real_adopt, real_put)


def _rerun_is_the_commits_own(tmp_path, src) -> None:  # type: ignore[no-untyped-def]
    """After a failed archive into tmp_path/s: the rerun commits the archive the commit alone
    makes (same id as with nothing made ahead, into tmp_path/b) and it verifies deep."""
    again, cat = _archive(tmp_path, src, str(tmp_path / "s"), "m", 2)
    with without_ahead():
        base, _ = _archive(tmp_path, src, str(tmp_path / "b"), "m", 2)
    assert again.id == base.id
    assert api.verify([again.id], store=str(tmp_path / "s"), catalog=str(cat), deep=True).ok


def _same_trees_as_the_commits(tmp_path, src, store: str, ahead_id: str, processes: int) -> None:  # type: ignore[no-untyped-def]
    """The archive `ahead_id` in `store` (catalog tmp_path/a.db) has the id and tree objects the
    commit alone makes (on a local store, nothing made ahead), and it verifies deep."""
    other = str(tmp_path / "local-b")
    with without_ahead():
        base = api.archive([src], name="m", store=other, catalog=str(tmp_path / "b.db"), processes=processes)
    assert ahead_id == base.id
    assert {k: v for k, v in _store_objects(store).items() if k.startswith("trees/")} == \
        {k: v for k, v in _store_objects(other).items() if k.startswith("trees/")}
    report = api.verify([ahead_id], store=store, catalog=str(tmp_path / "a.db"), deep=True)
    assert report.ok, report.problems


def _slow_tree_writes(monkeypatch, seconds: float) -> list[str]:  # type: ignore[no-untyped-def]
    """Each tree written ahead waits `seconds` first (so writes are under way): the hashes started."""
    real_put = Repository.put_tree_made
    started: list[str] = []

    def slow_put(self, h, data):  # type: ignore[no-untyped-def]
        started.append(h)
        time.sleep(seconds)
        return real_put(self, h, data)
    monkeypatch.setattr(Repository, "put_trees_made", _per_tree(slow_put))
    return started


def _fails_cleanly_then_reruns(tmp_path, src, monkeypatch, error: type, made: list[str],  # type: ignore[no-untyped-def]
                               real_adopt, real_put) -> None:
    """The archive into tmp_path/s raises `error` after trees were made ahead, with no
    early-trees thread, worker process or manifest left; with the real verbs back, the rerun
    commits the commit's own archive."""
    import multiprocessing
    with pytest.raises(error):
        _archive(tmp_path, src, str(tmp_path / "s"), "m", 2)
    assert made and _early_threads() == [] and multiprocessing.active_children() == []
    assert RawStore(str(tmp_path / "s")).keys("manifests/") == []
    monkeypatch.setattr(Repository, "adopt_packs", real_adopt)
    monkeypatch.setattr(Repository, "put_trees_made", _REAL_BATCH)
    _rerun_is_the_commits_own(tmp_path, src)


def test_trees_made_ahead_are_written_in_synced_batches_on_a_local_store(tmp_path, home, monkeypatch):
    """On a local store the trees made ahead go through `put_many_if_absent` (one sync per
    batch, not two fsyncs per tree), in batches of at most BATCH (the default, not the
    tests' small one), and the archive is the very one the commit alone makes."""
    from archiver.stores.local import LocalStore
    batches: list[list[str]] = []
    real_many = LocalStore.put_many_if_absent
    monkeypatch.setattr(LocalStore, "put_many_if_absent",
                        lambda self, items: (batches.append([k for k, _ in items]), real_many(self, items))[1])
    src = make_tree(tmp_path / "src")
    ahead, cat = _archive(tmp_path, src, str(tmp_path / "a"), "m", 2)
    with without_ahead():
        base, _ = _archive(tmp_path, src, str(tmp_path / "b"), "m", 2)
    assert ahead.id == base.id
    written = [k for b in batches for k in b]
    assert written and all(1 < len(b) <= earlytrees.BATCH for b in batches) and len(set(written)) == len(written)
    assert all(k.startswith("trees/") for k in written)
    assert set(written) <= set(RawStore(str(tmp_path / "a")).keys("trees/"))
    assert _store_objects(str(tmp_path / "a")) == _store_objects(str(tmp_path / "b"))
