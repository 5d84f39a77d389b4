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
