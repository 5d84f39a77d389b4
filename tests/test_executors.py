"""The executor protocol: bounded in-flight tasks, errors, option checks, a missing Ray."""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from archiver import executors
from archiver.errors import InvalidOptionError, SourceChangedError
from archiver.executors import InProcessExecutor, LocalExecutor, MissingExtraError, TaskLostError, run
from tests.helpers import make_checkpoint, run_cli


def test_in_process_runs_every_item_once():
    ex = InProcessExecutor()
    got = dict(run(ex, lambda x: x * x, range(10)))
    assert got == {i: i * i for i in range(10)}


def test_local_keeps_at_most_max_inflight_tasks_running():
    ex = LocalExecutor(max_inflight=3)
    lock = threading.Lock()
    now = peak = 0

    together = threading.Barrier(3)  # the first three meet: three at once, however slow the threads start

    def task(i: int) -> int:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        if i < 3:
            together.wait(60)
        time.sleep(0.02)
        with lock:
            now -= 1
        return i

    try:
        assert sorted(i for i, _ in run(ex, task, range(12))) == list(range(12))
    finally:
        ex.close()
    assert peak == 3


def test_first_error_is_raised_after_running_tasks_finish():
    ex = LocalExecutor(max_inflight=2)
    finished = []

    def task(i: int) -> int:
        if i == 1:
            raise SourceChangedError("f1 changed")
        time.sleep(0.05)
        finished.append(i)
        return i

    try:
        with pytest.raises(SourceChangedError, match="f1 changed"):
            list(run(ex, task, range(6)))
    finally:
        ex.close()
    assert 0 in finished  # the task in flight with the failing one ran to its end
    assert len(finished) < 6  # nothing new was started after the error


def test_a_lost_task_names_its_item():
    def task(i: int) -> int:
        raise RuntimeError("worker died")

    with pytest.raises(TaskLostError, match="item-7: RuntimeError: worker died") as e:
        list(run(InProcessExecutor(), task, [7], describe=lambda i: f"item-{i}"))
    assert e.value.exit_code == 1 and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, option", [
    ({"name": "spark"}, "executor"),
    ({"name": "local", "task_cpus": 0}, "task_cpus"),
    ({"name": "local", "max_inflight": -1}, "max_inflight"),
    ({"name": "local", "address": "auto"}, "ray_address"),
])
def test_bad_options_are_refused(kwargs, option):
    name = kwargs.pop("name")
    with pytest.raises(InvalidOptionError) as e:
        executors.make(name, **kwargs)
    assert e.value.option == option


def test_missing_ray_is_a_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingExtraError) as e:
        executors.make("ray")
    assert e.value.extra == "ray" and e.value.exit_code == 2


def test_cli_missing_ray_is_one_line_exit_2(tmp_path, home, monkeypatch):
    src = make_checkpoint(tmp_path / "src", layers=1, dim=16)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if archiver[ray] were not installed
    r = run_cli("archive", str(src), "--name", "m", "--executor", "ray", "--json")
    assert r.code == 2, r.err
    assert "install archiver[ray]" in r.json()["error"] and "\n" not in r.json()["error"]
    assert not list(home.rglob("manifests/*"))  # refused before anything was written
    plain = run_cli("verify", "--all", "--deep", "--executor", "ray")
    assert plain.code == 2 and plain.err.count("\n") == 1 and "install archiver[ray]" in plain.err


def test_local_archive_of_many_files_uses_several_at_once(tmp_path, home):
    """The default local executor archives several files at once: same manifest id as one
    file at a time (max_inflight=1)."""
    from archiver import api
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02d}.txt").write_bytes(bytes([i]) * (i * 300))
    one = api.archive([src], name="m", store=str(tmp_path / "s1"), max_inflight=1)
    many = api.archive([src], name="m", store=str(tmp_path / "s2"), max_inflight=4)
    assert one.id == many.id and many.files == 40


def test_cli_bad_executor_option_is_one_line_exit_2(tmp_path, home):
    src = make_checkpoint(tmp_path / "src", layers=1, dim=16)
    r = run_cli("archive", str(src), "--name", "m", "--task-cpus", "0")
    assert r.code == 2 and r.err.count("\n") == 1 and "--task-cpus must be a whole number >= 1" in r.err
    r = run_cli("archive", str(src), "--name", "m", "--ray-address", "auto")
    assert r.code == 2 and "--ray-address is only used with the ray executor" in r.err
    assert not list(home.rglob("manifests/*"))


def test_an_error_stops_the_other_big_files_early(tmp_path, home, monkeypatch):
    """One file fails: the others in flight give up at their next chunk instead of being read
    to the end; the first error is the one reported and nothing is recorded."""
    from archiver import api, pipeline
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(os.urandom(24 << 20))  # several chunks
    (src / "small.bin").write_bytes(os.urandom(1000))
    real = pipeline.iter_chunks
    read = []
    began, stopped = threading.Event(), threading.Event()  # big.bin is being read; the run was told to stop
    real_run = executors.run

    def run_telling(executor, fn, items, describe=str, stop=None):  # type: ignore[no-untyped-def]
        def stop_then_tell() -> None:
            stop()
            stopped.set()
        return real_run(executor, fn, items, describe, stop_then_tell if stop is not None else None)

    def chunks(f, size, policy, detected=None):
        for rc in real(f, size, policy, detected=detected):
            read.append(rc.offset)
            began.set()
            if len(read) == 2:  # big.bin is in flight when small.bin's error stops the run
                assert stopped.wait(60)
            time.sleep(0.05)
            yield rc

    real_small = pipeline.read_small  # a file below the chunker's minimum is read whole through it

    def small_fails(src_, fd, before):
        if src_.path.endswith("small.bin"):
            os.close(fd)
            assert began.wait(60)  # big.bin has got going
            raise SourceChangedError("small.bin changed")
        return real_small(src_, fd, before)

    monkeypatch.setattr(executors, "run", run_telling)
    monkeypatch.setattr(pipeline, "iter_chunks", chunks)
    monkeypatch.setattr(pipeline, "read_small", small_fails)
    with pytest.raises(SourceChangedError, match="small.bin changed"):
        api.archive([src], name="m", store=str(tmp_path / "s"), max_inflight=2)
    from archiver.chunking import ChunkPolicy
    with open(big, "rb") as f:
        total = sum(1 for _ in real(f, big.stat().st_size, ChunkPolicy()))
    assert total >= 6 and 0 < len(read) < total  # big.bin was not read to its end
    assert api.list_archives(store=str(tmp_path / "s")) == []
