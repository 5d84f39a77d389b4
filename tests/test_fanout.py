"""One task per file, without Ray: an in-process executor that calls itself distributed runs
the worker side (store-only repositories opened from Settings) and the driver's merging."""
from __future__ import annotations

import dataclasses
import os

import pytest

from archiver import api, events, fanout
from archiver.errors import IntegrityError, UsageError
from archiver.executors import InProcessExecutor
from archiver.repository import Repository
from tests.helpers import make_checkpoint, tree


class Workers(InProcessExecutor):
    """Runs each task here, but as a distributed executor would: with Settings, not objects."""

    name = "workers"
    distributed = True


def test_archive_through_workers_same_id_and_counts(tmp_path, home):
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    local = api.archive([src], name="m", store=str(tmp_path / "a"))
    far = api.archive([src], name="m", store=str(tmp_path / "b"), executor=Workers())
    assert far.id == local.id
    assert (far.new_chunks, far.new_bytes_stored, far.chunks) == (local.new_chunks, local.new_bytes_stored,
                                                                  local.chunks)


def test_workers_store_file_maps_and_the_driver_checks_their_chunks(tmp_path, home, monkeypatch):
    """Manifest v2 through workers: a worker stores the map of a file over the threshold after
    its chunks and returns a slim entry; the id is the local one, and the driver's LIST check
    reads the map, so a chunk missing behind a map still commits nothing."""
    from manifests import model
    monkeypatch.setattr(model, "FILEMAP_THRESHOLD", 1)
    from archiver import layout
    from manifests.model import parse_manifest
    from tests.helpers import RawStore
    src = make_checkpoint(tmp_path / "src", layers=3, dim=512)  # model.safetensors: several chunks
    local = api.archive([src], name="m", store=str(tmp_path / "a"))
    far = api.archive([src], name="m", store=str(tmp_path / "b"), executor=Workers())
    assert far.id == local.id
    m = parse_manifest(RawStore(str(tmp_path / "b")).read(layout.manifest(far.id)), expected_id=far.id)
    big = next(e for e in m.files if e.filemap)
    assert list((tmp_path / "b" / "filemaps").rglob("*.bin"))  # binary maps, named by their form
    with api.open_repository(str(tmp_path / "b")) as repo:
        slim = dataclasses.replace(big, chunks=())
        fanout.check_chunks_stored(repo, [slim])  # the map's chunks are all there
        victim = repo.filemap_chunks(slim)[0].hash
        next((tmp_path / "b" / "chunks").rglob(victim)).unlink()
        with pytest.raises(IntegrityError, match=f"chunk {victim} of .* is missing from the store"):
            fanout.check_chunks_stored(repo, [slim])


def test_distributed_needs_settings(tmp_path, home):
    repo = api.open_repository(str(tmp_path / "s"), create=True)
    try:
        repo.settings = None  # a Repository built by hand knows no Settings to give workers
        with pytest.raises(UsageError, match="needs a repository opened from Settings"):
            fanout.worker_settings(repo, Workers())
    finally:
        repo.close()


def test_check_chunks_stored_refuses_missing_or_resized(tmp_path, home):
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    store = str(tmp_path / "s")
    a = api.archive([src], name="m", store=store)
    m = api.show(a.id, store=store)[1]
    with api.open_repository(store) as repo:
        fanout.check_chunks_stored(repo, m.files)  # all there
        e = next(e for e in m.files if e.chunks)
        bad = dataclasses.replace(e, chunks=(dataclasses.replace(e.chunks[0], stored_size=e.chunks[0].stored_size + 1),))
        with pytest.raises(IntegrityError, match="bytes in the store, not"):
            fanout.check_chunks_stored(repo, [bad])
        gone = dataclasses.replace(e, chunks=(dataclasses.replace(e.chunks[0], hash="ab" * 32),))
        with pytest.raises(IntegrityError, match="is missing from the store; nothing was recorded"):
            fanout.check_chunks_stored(repo, [gone])


def test_deep_verify_through_workers_matches_local(tmp_path, home):
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    store = tmp_path / "s"
    a = api.archive([src], name="m", store=str(store))
    chunks = sorted(p for p in (store / "chunks").rglob("*") if p.is_file())
    chunks[0].write_bytes(chunks[0].read_bytes()[:-1] + b"\x00")
    os.unlink(chunks[-1])
    local = api.verify([a.id], deep=True, store=str(store))
    far = api.verify([a.id], deep=True, store=str(store), executor=Workers())
    assert not local.ok
    assert far.problems == local.problems  # the same Problems, in the same order
    assert (far.chunks_read, far.bytes_read, far.files_hashed) == (local.chunks_read, local.bytes_read,
                                                                   local.files_hashed)


def test_restore_through_workers_with_include(tmp_path, home):
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    store = str(tmp_path / "s")
    a = api.archive([src], name="m", store=store)
    out = tmp_path / "out"
    res = api.restore(a.id, out, store=store, executor=Workers())
    assert res.ok and tree(out / "src") == tree(src)
    part = tmp_path / "part"
    res = api.restore(a.id, part, store=store, include=["src/tokenizer"], executor=Workers())
    assert res.ok and res.files == 1 and sorted(p.name for p in (part / "src").iterdir()) == ["tokenizer"]


@pytest.mark.packs
def test_workers_read_packed_chunks_through_the_stores_indexes(tmp_path, home):
    """Workers have no catalog: chunks packed by a local archive are found through the
    store's pack indexes, so deep verify and restore through workers see what local ones see,
    and a re-archive through workers commits the same id."""
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    store = tmp_path / "s"
    fanout.worker_repository.cache_clear()
    a = api.archive([src], name="m", store=str(store))
    assert any((store / "packs").rglob("*")) and not any((store / "chunks").rglob("*"))
    far = api.verify([a.id], deep=True, store=str(store), executor=Workers())
    assert far.ok and far.files_hashed == api.verify([a.id], deep=True, store=str(store)).files_hashed
    out = tmp_path / "out"
    assert api.restore(a.id, out, store=str(store), executor=Workers()).ok and tree(out / "src") == tree(src)
    again = api.archive([src], name="w", store=str(store), executor=Workers())  # its chunks are all packed
    assert again.id == api.archive([src], name="w", store=str(tmp_path / "other")).id
    assert api.verify([again.id], deep=True, store=str(store)).ok
    fanout.worker_repository.cache_clear()


def test_worker_repository_has_no_catalog(tmp_path, home):
    s = api.open_repository(str(tmp_path / "s"), create=True)
    settings = s.settings
    s.close()
    r = Repository.store_only(settings)
    ev = r.append_event(events.Event(events.FIXITY_CHECK))
    assert ev.catalog_error is not None and ev.store_error is None  # its own chain in the store, no catalog
    r.close()


def test_the_driver_reads_each_workers_file_map_once(tmp_path, home, monkeypatch):
    """The LIST check reads a worker's map and hands it to commit_manifest, which neither
    fetches nor parses it again; the catalog still records every chunk behind it."""
    from manifests import model
    monkeypatch.setattr(model, "FILEMAP_THRESHOLD", 1)
    src = make_checkpoint(tmp_path / "src", layers=3, dim=512)
    reads: dict[str, int] = {}
    real = Repository.filemap_object

    def counted(self, e):
        reads[e.filemap] = reads.get(e.filemap, 0) + 1
        return real(self, e)

    monkeypatch.setattr(Repository, "filemap_object", counted)
    far = api.archive([src], name="m", store=str(tmp_path / "b"), executor=Workers())
    assert reads and set(reads.values()) == {1}
    with api.open_repository(str(tmp_path / "b")) as repo:
        m = repo.load_manifest(far.id)
        assert sorted({r[3] for r in repo.chunk_coverage()}) == sorted(m.unique_chunks())


# -- small files in batches (local executor) -------------------------------------------------
def _small_tree(root, n=40):
    root.mkdir()
    for i in range(n):
        (root / f"f{i:02d}.bin").write_bytes(os.urandom(100 + 37 * i) if i % 5 else b"")
    return root


def test_local_batches_keep_big_files_alone_and_every_file_once():
    from pathlib import Path

    from archiver.scan import Source
    sizes = [5 << 20, fanout.BATCH_FILE_BELOW, 3 << 20] + [10 << 10] * 70 + [0] * 5
    todo = [Source(f"f{i}", Path(f"/x/f{i}"), False, n, 0o644, 1, i) for i, n in enumerate(sizes)]
    runs = fanout.local_batches(todo)
    assert [s.path for r in runs for s in r] == [s.path for s in todo]  # same order, each once
    assert runs[:3] == [[todo[0]], [todo[1]], [todo[2]]]  # BATCH_FILE_BELOW and up: a task each
    assert all(len(r) > 1 for r in runs[3:]) and len(runs) < len(todo) // 4  # the rest share tasks


def test_small_files_in_batches_same_id_as_one_task_per_file(tmp_path, home, monkeypatch):
    """The local executor hands small files over a batch at a time; the manifest (and its id)
    and the counts are those of one task per file (InProcessExecutor)."""
    from archiver.executors import LocalExecutor
    src = _small_tree(tmp_path / "src")
    calls = []
    real = fanout.LocalArchiveBatch.__call__

    def counting(self, batch):
        calls.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(fanout.LocalArchiveBatch, "__call__", counting)
    one = api.archive([src], name="m", store=str(tmp_path / "a"), executor=InProcessExecutor())
    assert calls == [1] * 40
    calls.clear()
    batched = api.archive([src], name="m", store=str(tmp_path / "b"), executor=LocalExecutor(max_inflight=2))
    assert sum(calls) == 40 and len(calls) < 40
    assert batched.id == one.id and (batched.files, batched.chunks) == (one.files, one.chunks)


class _Killed(BaseException):
    """As a SIGINT would stop the driver in the middle of a batch."""


def test_a_kill_mid_batch_resumes_the_files_it_finished(tmp_path, home, monkeypatch):
    """Each file of a batch is journalled when it is done, not when its batch is: a run
    killed in the middle of a batch resumes the batch's finished files, same id."""
    from archiver import pipeline
    from archiver.executors import LocalExecutor
    from archiver.journal import JOURNAL_DIR
    src = _small_tree(tmp_path / "src")
    clean = api.archive([src], name="m", store=str(tmp_path / "clean"))
    real = pipeline.open_settled  # each file of a batch is opened through it
    seen = []

    def dying(src_, *a, **kw):
        if len(seen) == 10:
            raise _Killed()
        seen.append(src_.path)
        return real(src_, *a, **kw)

    monkeypatch.setattr(pipeline, "open_settled", dying)
    store = str(tmp_path / "s")
    with pytest.raises(_Killed):
        api.archive([src], name="m", store=store, executor=LocalExecutor(max_inflight=1))
    lines = [ln for j in (home / JOURNAL_DIR).glob("*.jsonl") for ln in j.read_text().splitlines()]
    assert len(lines) == 10  # all in the first batch (40 small files), journalled one by one
    monkeypatch.setattr(pipeline, "open_settled", real)
    res = api.archive([src], name="m", store=store)
    assert res.resumed_files == 10 and res.id == clean.id


def test_an_unexpected_error_in_a_batch_names_its_file(tmp_path, home, monkeypatch):
    """A file failing with something other than an ArchiverError is a TaskLostError naming
    that file (not the first of its batch), and nothing is committed."""
    from archiver import pipeline
    from archiver.executors import LocalExecutor, TaskLostError
    src = _small_tree(tmp_path / "src")
    real = pipeline.open_settled

    def failing(src_, *a, **kw):
        if src_.path.endswith("f07.bin"):
            raise RuntimeError("disk on fire")
        return real(src_, *a, **kw)

    monkeypatch.setattr(pipeline, "open_settled", failing)
    store = str(tmp_path / "s")
    with pytest.raises(TaskLostError, match=r"f07\.bin.*disk on fire") as err:
        api.archive([src], name="m", store=store, executor=LocalExecutor(max_inflight=2))
    assert "f06.bin" not in str(err.value) and "f39.bin" not in str(err.value)
    assert api.list_archives(store=store) == []


def test_a_stopped_batch_starts_no_more_files(tmp_path):
    """Once the run is stopped (another file's error, Ctrl-C), a batch task gives up before
    its next file, even one with no chunk to report progress on (an empty file)."""
    from archiver.executors import Stopped
    from archiver.progress import Progress
    from archiver.scan import scan
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"e{i}").write_bytes(b"")
    files = [s for s in scan([src]) if not s.is_dir]
    progress = fanout.StoppableProgress(Progress())
    done = []
    from archiver.chunking import ChunkPolicy
    task = fanout.LocalArchiveBatch(None, None, ChunkPolicy(), 2, progress, on_done=lambda s, d: (done.append(s.path),
                                                                                       progress.stop()))
    with pytest.raises(Stopped):
        task(files)
    assert done == [files[0].path]


@pytest.mark.packs
def test_a_batch_of_small_files_asks_the_catalog_once_not_per_chunk(tmp_path, home, monkeypatch):
    """A batch of small files gets its chunks' pack locations and known chunks in one
    Repository.chunk_hints call (two queries), never one known_chunk / pack_locations per
    chunk; chunks a recorded pack holds are found through those hints (proved by a read of
    the pack, not written again), and the ids are those of a run without batches."""
    import shutil

    from archiver.executors import InProcessExecutor, LocalExecutor
    from manifests.catalog import Catalog
    src = _small_tree(tmp_path / "src")
    store = str(tmp_path / "s")
    first = api.archive([src], name="m", store=store)
    copy = tmp_path / "copy" / "src"  # same bytes, other inodes: the files cache reuses nothing
    shutil.copytree(src, copy)
    (copy / "new.bin").write_bytes(b"a chunk no batch has seen")
    calls = {"known_chunk": 0, "pack_locations": 0, "known_chunks": 0}
    for name in calls:
        real = getattr(Catalog, name)
        monkeypatch.setattr(Catalog, name, lambda self, *a, _n=name, _r=real: calls.__setitem__(_n, calls[_n] + 1)
                            or _r(self, *a))
    again = api.archive([copy], name="m", store=store, executor=LocalExecutor(max_inflight=1))
    assert calls["known_chunk"] == 0 and calls["known_chunks"] == 2  # one per batch: 32 files, then 9
    assert calls["pack_locations"] == 2
    assert (again.new_chunks, again.chunks) == (1, first.chunks + 1)  # the packed ones were found, proved
    monkeypatch.undo()
    one = api.archive([copy], name="m", store=str(tmp_path / "t"), executor=InProcessExecutor())
    assert one.id == api.archive([copy], name="m", store=str(tmp_path / "u")).id  # batched, fresh store
    entries = []
    for where, mid in ((store, again.id), (str(tmp_path / "t"), one.id)):
        r = api.open_repository(where)
        try:
            entries.append(r.load_manifest(mid).entries)
        finally:
            r.close()
    assert entries[0] == entries[1]  # same entries whether the chunks were found or written
    assert api.verify([again.id], deep=True, store=store).ok


@pytest.mark.parametrize("trees_ahead", [True, False])
def test_worker_tasks_are_cut_as_the_runs_then_directories_would_cut_them(tmp_path, home, monkeypatch, trees_ahead):
    """archive_files cuts the worker processes' small-file runs in one pass: whole directories in
    path order where trees are made ahead (more than TREE_THRESHOLD entries), else largest first;
    the very runs `local_batches` of the largest-first order, then `directories_together`, made."""
    from archiver import parallel, procfiles
    from archiver.scan import scan
    from tests.helpers import make_small_file_tree
    src = make_small_file_tree(tmp_path / "src", dirs=3 if trees_ahead else 2, files=400 if trees_ahead else 30,
                               size=lambda i, d: 10 + (i * 37 + d * 11) % 900)
    cut: list[list[list]] = []
    real = procfiles.tasks_of

    def tasks_of(runs, *a, **k):  # type: ignore[no-untyped-def]
        cut.append(runs)
        return real(runs, *a, **k)
    monkeypatch.setattr(procfiles, "tasks_of", tasks_of)
    monkeypatch.setattr(fanout, "batches", lambda items, size: parallel.batches(items, size, most=7))  # runs of 7
    api.archive([src], name="m", store=str(tmp_path / "s"), catalog=str(tmp_path / "c.db"), processes=2)
    files = [s for s in scan([src]) if not s.is_dir and not s.is_link]
    runs = [r for r in fanout.local_batches(sorted(files, key=lambda s: (-s.size, s.path)))
            if r[0].size < fanout.BATCH_FILE_BELOW]
    want = fanout.directories_together(runs) if trees_ahead else runs
    assert len(cut) == 1 and len(want) > 3
    assert [[s.path for s in r] for r in cut[0]] == [[s.path for s in r] for r in want]
