"""The collector kept off an archive run's long-lived objects (archiver.heap): frozen while the
run lasts, everything walked again after it (also after an error), so no garbage outlives it."""
from __future__ import annotations

import gc
import pickle
import weakref

import pytest

from archiver import api, fanout, heap, pipeline, procfiles
from archiver.errors import NotFoundError
from archiver.scan import scan
from tests.helpers import make_small_file_tree


class _Node:
    """An object in a reference cycle (only the cyclic collector frees it)."""

    def __init__(self) -> None:
        self.me = self


def test_frozen_freezes_what_is_alive_and_unfreezes_on_exit_and_on_error() -> None:
    assert gc.get_freeze_count() == 0
    keep = [object() for _ in range(100)]
    with heap.frozen():
        assert gc.get_freeze_count() >= len(keep)
        made = [[i] for i in range(50)]
        before = gc.get_freeze_count()
        heap.settle()
        assert gc.get_freeze_count() >= before + len(made)
    assert gc.get_freeze_count() == 0
    with pytest.raises(ValueError):
        with heap.frozen():
            raise ValueError("boom")
    assert gc.get_freeze_count() == 0


def test_a_cycle_frozen_during_the_run_is_collected_after_it() -> None:
    with heap.frozen():
        node = _Node()
        ref = weakref.ref(node)
        heap.settle()  # the cycle is in the permanent generation now
        del node
        gc.collect()
        assert ref() is not None  # out of the collector's walks while the run lasts
    gc.collect()
    assert ref() is None  # walked again once the run ended: freed


@pytest.mark.packs
def test_an_archive_settles_as_it_goes_and_leaves_nothing_frozen(tmp_path, home, monkeypatch):
    """Through worker processes and on threads: the run settles (the scan's directories, each
    task taken), and once it returns (or fails) nothing is left frozen; same manifest both ways."""
    src = make_small_file_tree(tmp_path / "src", dirs=3, files=20, size=lambda i, d: 40 + 31 * i + d)
    seen: list[int] = []
    real = heap.settle

    def settle() -> None:
        real()
        seen.append(gc.get_freeze_count())
    monkeypatch.setattr(heap, "settle", settle)
    monkeypatch.setattr(procfiles, "TASK_FILES", 10)
    ids = []
    for processes in (2, 0):
        r = api.archive([src], name="m", store=str(tmp_path / f"s{processes}"),
                        catalog=str(tmp_path / f"c{processes}.db"), processes=processes)
        ids.append(r.id)
        assert gc.get_freeze_count() == 0
    assert ids[0] == ids[1]
    assert seen and all(n > 0 for n in seen)
    with pytest.raises(NotFoundError):
        api.archive([tmp_path / "missing"], name="m", store=str(tmp_path / "s2"), catalog=str(tmp_path / "c2.db"),
                    processes=2)
    assert gc.get_freeze_count() == 0


def test_a_worker_task_and_its_jobs_unpickling_leave_nothing_frozen(tmp_path, monkeypatch):
    """A worker runs each task frozen (its job's Sources, its modules and repository out of
    the walks) and unpickles each job frozen; neither leaves anything frozen behind."""
    src = make_small_file_tree(tmp_path / "src", dirs=2, files=5, size=lambda i, d: 10 + i + d)
    settings = api.open_repository(str(tmp_path / "s"), str(tmp_path / "c.db"), create=True).settings
    files = [s for s in scan([src]) if not s.is_dir and not s.is_link and s.size < fanout.BATCH_FILE_BELOW]
    job = procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files])
    back = pickle.loads(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == job and gc.get_freeze_count() == 0
    during: list[int] = []

    def run_job(j, dirs=None):  # type: ignore[no-untyped-def]
        during.append(gc.get_freeze_count())
        return procfiles.SmallDone()
    monkeypatch.setattr(procfiles, "run_job", run_job)
    assert isinstance(procfiles._call(back), procfiles.SmallDone)
    assert during and during[0] > 0 and gc.get_freeze_count() == 0


def test_a_freeze_the_caller_made_first_is_kept_through_a_run(tmp_path, home):
    """A caller that froze its own heap first (a server before it forks its workers, so their
    pages stay shared) keeps that freeze: gc.unfreeze at the run's end would undo it whole."""
    src = make_small_file_tree(tmp_path / "src", dirs=2, files=5, size=lambda i, d: 40 + i + d)
    node = _Node()
    ref = weakref.ref(node)
    gc.freeze()  # the caller's: its cycle stays out of the collector's walks (permanent generation)
    del node
    try:
        with heap.frozen():
            heap.settle()
        api.archive([src], name="m", store=str(tmp_path / "s"), catalog=str(tmp_path / "c.db"), processes=0)
        gc.collect()
        assert ref() is not None and gc.get_freeze_count() > 0  # still frozen: not walked, not freed
    finally:
        gc.unfreeze()
    gc.collect()
    assert ref() is None  # the caller's own unfreeze


def test_the_commands_own_freeze_is_undone_at_the_runs_end(monkeypatch):
    """The process's command (archiver.cli) freezes its imports' objects and ends with the
    command: a run freezes on top of that and unfreezes it all at its end, as before."""
    monkeypatch.setattr(heap, "_command_owns", False)
    try:
        heap.command_freeze()
        assert gc.get_freeze_count() > 0
        with heap.frozen():
            made = [[i] for i in range(50)]
            before = gc.get_freeze_count()
            heap.settle()
            assert gc.get_freeze_count() >= before + len(made)
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_runs_at_once_share_one_freeze_undone_when_the_last_ends():
    """Two runs in one process (threads): the first to end leaves the other's objects frozen."""
    a, b = heap.frozen(), heap.frozen()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert gc.get_freeze_count() > 0  # b still runs
    heap.settle()
    b.__exit__(None, None, None)
    assert gc.get_freeze_count() == 0


def test_a_settle_after_the_run_ended_freezes_nothing():
    """A thread of a run that already ended (its small-file collector taking a last task after
    a Ctrl-C) would freeze with no unfreeze to follow: for the life of the process."""
    with heap.frozen():
        pass
    heap.settle()
    assert gc.get_freeze_count() == 0


@pytest.mark.packs
def test_a_task_taken_after_an_interrupted_archive_leaves_no_garbage_frozen(tmp_path, home, monkeypatch):
    """Ctrl-C twice while the driver waits for the small-file collector: the archive raises
    KeyboardInterrupt while the collector thread still takes a finished task (and settles). The
    garbage alive then (here a 32 MiB cycle) must be freed by the next collection, not frozen
    for the rest of the process (measured with tracemalloc)."""
    import threading
    import tracemalloc
    src = make_small_file_tree(tmp_path / "src", dirs=2, files=20, size=lambda i, d: 40 + 31 * i + d)
    monkeypatch.setattr(procfiles, "TASK_FILES", 10)
    go, taking = threading.Event(), threading.Event()
    real_taker, real_close = fanout._taker, procfiles.SmallFilePool.close
    pools: list[procfiles.SmallFilePool] = []

    def taker(*a, **k):  # type: ignore[no-untyped-def]
        take = real_taker(*a, **k)

        def held(done):  # type: ignore[no-untyped-def]
            taking.set()
            go.wait()
            take(done)
        return held

    def close(self, later=None):  # type: ignore[no-untyped-def]
        pools.append(self)
        taking.wait()  # a task is being taken on the collector thread
        raise KeyboardInterrupt  # the user's Ctrl-C, each time the driver waits for it
    monkeypatch.setattr(fanout, "_taker", taker)
    monkeypatch.setattr(procfiles.SmallFilePool, "close", close)
    gc.disable()
    tracemalloc.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            api.archive([src], name="m", store=str(tmp_path / "s"), catalog=str(tmp_path / "c.db"), processes=2)
        assert gc.get_freeze_count() == 0
        node = _Node()
        node.load = bytearray(32 << 20)
        del node  # garbage only the cyclic collector frees, alive when the late task settles
        go.set()
        real_close(pools[0])  # the collector thread ends (its take done), then the workers stop
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        assert held < 16 << 20, f"{held >> 20} MiB still held"
        assert gc.get_freeze_count() == 0
    finally:
        go.set()
        tracemalloc.stop()
        gc.enable()
        gc.unfreeze()


def test_a_settle_frees_the_young_garbage_rather_than_freezing_it_for_the_run():
    """The garbage made just before a settle (an S3 request's parser cycle, an exception's
    traceback holding a chunk's bytes) is freed then, not held frozen until the run ends
    (a 32 MiB cycle, measured with tracemalloc while the run still lasts)."""
    import tracemalloc
    tracemalloc.start()
    try:
        with heap.frozen():
            gc.disable()
            try:
                node = _Node()
                node.load = bytearray(32 << 20)
                ref = weakref.ref(node)
                del node  # garbage in the youngest generation, only the cyclic collector frees it
                heap.settle()
            finally:
                gc.enable()
            gc.collect()
            held = tracemalloc.get_traced_memory()[0]
            assert ref() is None and held < 16 << 20, f"{held >> 20} MiB still held"
    finally:
        tracemalloc.stop()
