"""Small files archived on worker processes (archiver.procfiles): the same manifest as on
threads, dedup against the catalog, the files cache, resume, errors as one line, S3."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import blake3
import pytest

from archiver import api, fanout, layout, packs, pipeline, procfiles
from archiver.errors import InvalidOptionError, SourceChangedError
from archiver.executors import TaskLostError
from archiver.scan import scan
from manifests.model import Entry
from tests.helpers import live_children, make_small_file_tree, run_cli, tree

pytestmark = pytest.mark.packs  # workers write packs, as a real run does


def make_tree(root: Path) -> Path:
    """Empty files, nested dirs, a symlink, duplicate files (in different tasks once tasks are
    small), a file at the chunker's minimum and one above it, and a checkpoint's big files."""
    make_small_file_tree(root, dirs=4, files=40, size=lambda i, d: 50 + 97 * i + d)
    (root / "at-min.bin").write_bytes(os.urandom(512 * 1024))
    (root / "above-min.bin").write_bytes(os.urandom(700 * 1024))
    return root


@pytest.fixture
def small_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks of a few files, so a small tree makes many tasks on the two workers."""
    monkeypatch.setattr(procfiles, "TASK_FILES", 10)


def _archive(tmp_path: Path, src: Path, store: str, processes: int, **kw):  # type: ignore[no-untyped-def]
    return api.archive([src], name="m", store=store, catalog=str(tmp_path / f"{Path(store).name}.db"),
                       processes=processes, **kw)


def test_same_manifest_id_as_threads_and_deep_verify_passes(tmp_path, home, small_tasks):
    src = make_tree(tmp_path / "src")
    threads = _archive(tmp_path, src, str(tmp_path / "a"), 0)
    procs = _archive(tmp_path, src, str(tmp_path / "b"), 2)
    assert procs.id == threads.id
    assert (procs.files, procs.chunks, procs.bytes_in) == (threads.files, threads.chunks, threads.bytes_in)
    assert list((tmp_path / "b" / "packs").iterdir())  # the workers packed the small files
    report = api.verify([procs.id], store=str(tmp_path / "b"), catalog=str(tmp_path / "b.db"), deep=True)
    assert report.ok, report.problems
    out = tmp_path / "out"
    api.restore(procs.id, out, store=str(tmp_path / "b"), catalog=str(tmp_path / "b.db"))
    assert tree(out / "src") == tree(src)


def _pack_indexes(store: Path) -> list[packs.PackIndex]:
    return [packs.parse_index(p.read_bytes()) for p in (store / layout.PACK_INDEXES).rglob("*.json")]


def _archive_whose_commit_fails(tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive on workers into store "s" whose manifest cannot be written: one StoreError."""
    from archiver.errors import StoreError
    from archiver.repository import Repository

    def failing(self, *a, **k):  # type: ignore[no-untyped-def]
        raise StoreError("the manifest could not be written (test)")
    with monkeypatch.context() as m:
        m.setattr(Repository, "commit_manifest", failing)
        with pytest.raises(StoreError, match="test"):
            _archive(tmp_path, src, str(tmp_path / "s"), 2)


class _EveryTaskOnAWorkerOfItsOwn:
    """SmallFilePool's stand-in that runs each task in this process on a repository of its own,
    as a worker that never saw the other tasks: the worst case of two workers packing the
    same content at once (timing decides how often real workers do)."""

    def __init__(self, processes, jobs, take, on_error, pool=None):  # type: ignore[no-untyped-def]
        self.error = None
        if pool is not None:  # started during the scan (procfiles.PoolStarter): this stand-in runs no worker
            procfiles.workerprocs.close(pool)
        for job in jobs:
            procfiles._repository.cache_clear()
            done = procfiles.run_job(job)
            procfiles._repository(job.settings).close()
            take(done)
        procfiles._repository.cache_clear()

    def cancel(self) -> None:
        pass

    def close(self, later=None) -> None:  # type: ignore[no-untyped-def]
        pass

    def raise_error(self) -> None:
        pass


def test_the_same_content_packed_by_two_workers_counts_once(tmp_path, home, small_tasks, monkeypatch):
    """Identical small files in tasks that ran on different workers are packed twice (no dedup
    state is shared between processes), yet counted once: new_chunks and new_bytes_stored are
    the threads' (the CI flake of 2026-11-28: 144 against 143), and the archive verifies and
    restores."""
    src = make_tree(tmp_path / "src")
    threads = _archive(tmp_path, src, str(tmp_path / "a"), 0)
    monkeypatch.setattr(procfiles, "SmallFilePool", _EveryTaskOnAWorkerOfItsOwn)
    procs = _archive(tmp_path, src, str(tmp_path / "b"), 2)
    assert procs.files_by_processes > 0
    held = blake3.blake3(b"the same bytes\n").hexdigest()
    packed = [index for index in _pack_indexes(tmp_path / "b") if held in {e.hash for e in index.entries}]
    assert len(packed) > 1  # the duplicate this test is about did happen
    assert (procs.id, procs.new_chunks, procs.new_bytes_stored, procs.repaired_chunks) == \
        (threads.id, threads.new_chunks, threads.new_bytes_stored, threads.repaired_chunks)
    report = api.verify([procs.id], store=str(tmp_path / "b"), catalog=str(tmp_path / "b.db"), deep=True)
    assert report.ok, report.problems
    api.restore(procs.id, tmp_path / "out", store=str(tmp_path / "b"), catalog=str(tmp_path / "b.db"))
    assert tree(tmp_path / "out" / "src") == tree(src)


def test_a_copied_tree_stores_nothing_again(tmp_path, home, small_tasks):
    """Workers ask the catalog (read-only) about their chunks: a copy under a new path is
    deduplicated, not packed a second time."""
    src = make_tree(tmp_path / "src")
    first = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    packs_before = sorted(p.name for p in (tmp_path / "s" / "packs").iterdir())
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, symlinks=True)
    again = api.archive([copy], name="m2", store=str(tmp_path / "s"), catalog=str(tmp_path / "s.db"), processes=2)
    assert again.new_chunks == 0 and again.new_bytes_stored == 0
    assert sorted(p.name for p in (tmp_path / "s" / "packs").iterdir()) == packs_before
    assert again.chunks == first.chunks


def test_files_cache_and_reread_through_workers(tmp_path, home, small_tasks):
    src = make_tree(tmp_path / "src")
    first = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    again = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert again.files_reused == again.files and again.new_chunks == 0
    reread = _archive(tmp_path, src, str(tmp_path / "s"), 2, reread=True)
    assert reread.files_reused == 0 and reread.new_chunks == 0
    with api.open_repository(str(tmp_path / "s"), str(tmp_path / "s.db")) as repo:
        want = repo.load_manifest(first.id).entries
        assert repo.load_manifest(again.id).entries == want and repo.load_manifest(reread.id).entries == want


def test_a_file_changed_in_a_worker_is_one_error_and_the_finished_tasks_resume(tmp_path, home, small_tasks,
                                                                               monkeypatch):
    """A SourceChangedError raised in a worker reaches the caller as itself; nothing is
    committed; the files of tasks that finished were journalled and are resumed by the re-run."""
    src = make_tree(tmp_path / "src")
    victim = src / "d0" / "inner" / "f05.txt"
    body = victim.read_bytes()
    real_scan = pipeline.scan

    def scan_then_remove(*a, **k):  # type: ignore[no-untyped-def]
        got = real_scan(*a, **k)
        victim.unlink()  # after the scan, before a worker opens it
        return got
    monkeypatch.setattr(pipeline, "scan", scan_then_remove)
    with pytest.raises(SourceChangedError, match="f05.txt changed while it was being archived"):
        _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert not list((tmp_path / "s").glob("manifests/**/*"))
    monkeypatch.setattr(pipeline, "scan", real_scan)
    victim.write_bytes(body)
    os.utime(victim, ns=(1, 1))  # any mtime: the file is new to the journal
    done = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert done.resumed_files > 0
    assert done.id == _archive(tmp_path, src, str(tmp_path / "t"), 0).id


def test_a_killed_worker_is_a_lost_task_naming_its_first_file(tmp_path):
    """BrokenProcessPool becomes TaskLostError naming the first file of a lost task."""
    src = make_tree(tmp_path / "src")
    settings = api.open_repository(str(tmp_path / "s"), str(tmp_path / "c.db"), create=True).settings
    files = [s for s in scan([src]) if not s.is_dir and not s.is_link and s.size < fanout.BATCH_FILE_BELOW]
    jobs = [procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [[f]]) for f in files]
    killed: list[int] = []
    pool: procfiles.SmallFilePool

    def kill_all(_done: procfiles.SmallDone) -> None:
        if not killed:
            for pid in list(pool._pool._processes):  # noqa: SLF001 - the test kills the workers
                killed.append(pid)
                os.kill(pid, 9)
    pool = procfiles.SmallFilePool(2, jobs, kill_all, on_error=lambda: None)
    pool.close()
    assert killed
    with pytest.raises(TaskLostError, match="a worker process died") as e:
        pool.raise_error()
    assert e.value.item in {str(f.abspath) for f in files}


def test_flat_rows_carry_every_entry_field():
    """The hand-off's tuples (procfiles._flat) name every field of Entry: one added later must
    be carried too, or entries would lose it across the process boundary."""
    assert tuple(f.name for f in dataclasses.fields(Entry)) == procfiles.FLAT_FIELDS
    from manifests.model import ChunkRef
    e = Entry(path="a/b", type="file", mode=0o640, size=3, mtime_ns=7, blake3="ab" * 32, sha256="cd" * 32,
              format="safetensors", chunks=(ChunkRef(0, 3, "ef" * 32, 12, "zstd"),), tech={"k": 1})
    done = fanout.FileDone(e, [1, 2, 3, 4, 5], 1, 12, 0)
    assert procfiles.unflat(procfiles._flat(done)) == done
    link = fanout.FileDone(Entry(path="a/l", type="symlink", mode=0o777, target="b"), [1, 2, 0, 4, 5])
    assert procfiles.unflat_all([procfiles._flat(done), procfiles._flat(link), procfiles._flat(done)]) == \
        [done, link, done]  # a task's rows at once, a non-file entry among them as it is


def test_resolve_auto_explicit_and_refusals(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    many = procfiles.AUTO_MIN_FILES
    assert procfiles.resolve(None, small_files=many, local=True, sealed=False, has_settings=True, load=0.2) == 2
    assert procfiles.resolve(None, small_files=many, local=True, sealed=False, has_settings=True, load=1.5) == 0
    assert procfiles.resolve(None, small_files=many - 1, local=True, sealed=False, has_settings=True, load=0) == 0
    assert procfiles.resolve(0, small_files=10 ** 6, local=True, sealed=False, has_settings=True, load=0) == 0
    assert procfiles.resolve(3, small_files=1, local=True, sealed=False, has_settings=True, load=9) == 3
    assert procfiles.resolve(None, small_files=10 ** 6, local=True, sealed=True, has_settings=True, load=0) == 0
    assert procfiles.resolve(None, small_files=10 ** 6, local=False, sealed=False, has_settings=True, load=0) == 0
    assert procfiles.resolve(None, small_files=10 ** 6, local=True, sealed=False, has_settings=False, load=0) == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert procfiles.resolve(None, small_files=10 ** 6, local=True, sealed=False, has_settings=True, load=0) == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(procfiles.workerprocs, "unavailable", lambda: "OSError: no /dev/shm")  # auto: threads; asked: refused
    assert procfiles.resolve(None, small_files=many, local=True, sealed=False, has_settings=True, load=0) == 0
    with pytest.raises(InvalidOptionError, match="cannot start here"):
        procfiles.resolve(2, small_files=1, local=True, sealed=False, has_settings=True)
    for bad in (-1, True, 1.5):
        with pytest.raises(InvalidOptionError):
            procfiles.resolve(bad, small_files=1, local=True, sealed=False, has_settings=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="sealed"):
        procfiles.resolve(2, small_files=1, local=True, sealed=True, has_settings=True)


def test_cli_processes_option(tmp_path, home, small_tasks):
    src = make_tree(tmp_path / "src")
    base = ["--store", str(tmp_path / "s"), "--catalog", str(tmp_path / "c.db"), "archive", str(src), "--name", "m"]
    r = run_cli(*base, "--processes", "2", "--json")
    assert r.code == 0, r.err
    assert r.json()["files"] > 100
    bad = run_cli(*base, "--processes", "-1")
    assert bad.code == 2 and bad.err.strip().startswith("error: --processes") or "--processes" in bad.err
    assert len(bad.err.strip().splitlines()) == 1


def test_s3_server_store_through_workers(tmp_path, home, s3_server_url, small_tasks):
    src = make_tree(tmp_path / "src")
    local = _archive(tmp_path, src, str(tmp_path / "a"), 0)
    far = api.archive([src], name="m", store=s3_server_url, catalog=str(tmp_path / "s3.db"), processes=2)
    assert far.id == local.id
    report = api.verify([far.id], store=s3_server_url, catalog=str(tmp_path / "s3.db"), deep=True)
    assert report.ok, report.problems
    assert layout.PACKS  # packs on S3 too (S3_PACK_BELOW)


def test_object_lock_through_workers_every_pack_locked(tmp_path, home, moto_server, aws_env, monkeypatch,
                                                       small_tasks):
    """A write policy reaches the workers: every pack they write (and its index, as metadata)
    is locked as the archive asks, on an Object Lock bucket of the moto server."""
    import uuid
    import boto3
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    url = f"s3://{bucket}/p"
    src = make_tree(tmp_path / "src")
    policy = api.write_policy(lock_mode="governance", retain_until="2040-01-01")
    done = api.archive([src], name="m", store=url, catalog=str(tmp_path / "c.db"), processes=2,
                       write_policy=policy)
    assert done.id == _archive(tmp_path, src, str(tmp_path / "a"), 0).id
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="p/")
            for o in page.get("Contents", [])]
    packed = [k for k in keys if k.startswith(("p/packs/", "p/packindex/"))]
    assert len([k for k in packed if k.startswith("p/packs/")]) >= 2
    for k in packed:
        head = client.head_object(Bucket=bucket, Key=k)
        assert head["ObjectLockMode"] == "GOVERNANCE", k
        assert head["ObjectLockRetainUntilDate"].year == 2040, k


def test_ctrl_c_stops_the_pool_commits_nothing_and_the_rerun_resumes(tmp_path, home, small_tasks, monkeypatch):
    """SIGINT during a run with workers: KeyboardInterrupt reaches the caller once the running
    tasks are done, nothing is committed, no process is left behind, and the files of the
    tasks taken so far are resumed by the re-run."""
    import signal
    from multiprocessing import forkserver
    src = make_tree(tmp_path / "src")
    real = fanout._taker

    def interrupting(*a):  # type: ignore[no-untyped-def]
        take = real(*a)

        sent: list[bool] = []

        def first_then_sigint(done):  # type: ignore[no-untyped-def]
            take(done)
            if not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C would, while the other tasks run
        return first_then_sigint
    monkeypatch.setattr(fanout, "_taker", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert not list((tmp_path / "s").glob("manifests/**/*"))
    assert forkserver._forkserver._forkserver_pid is None  # the fork server this run started is gone
    monkeypatch.setattr(fanout, "_taker", real)
    done = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert done.resumed_files > 0
    assert done.id == _archive(tmp_path, src, str(tmp_path / "t"), 0).id


def test_a_workers_pack_missing_at_the_commit_commits_nothing(tmp_path, home, small_tasks, monkeypatch):
    """The driver takes no worker's word: a pack a worker reported written but that is gone
    from the store by the commit fails the LIST proof (IntegrityError), and no manifest is written."""
    from archiver.errors import IntegrityError
    src = make_tree(tmp_path / "src")
    real = fanout._taker
    store = tmp_path / "s"

    def losing(*a):  # type: ignore[no-untyped-def]
        take = real(*a)

        def take_then_lose_a_pack(done):  # type: ignore[no-untyped-def]
            take(done)
            for index in done.packs[:1]:
                (store / layout.pack(index.pack)).unlink()
        return take_then_lose_a_pack
    monkeypatch.setattr(fanout, "_taker", losing)
    with pytest.raises(IntegrityError, match="missing from the store"):
        _archive(tmp_path, src, str(store), 2)
    assert not list(store.glob("manifests/**/*"))


def _run_script(tmp_path: Path, name: str, body: str):  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    script = tmp_path / name
    script.write_text(body)
    env = dict(os.environ, ARCHIVER_HOME=str(tmp_path / "home"),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)


def test_an_unguarded_script_on_the_api_default_runs_once_on_threads(tmp_path):
    """The API's default is threads (processes=0): a script without `if __name__ ==
    "__main__"` archives once and prints once, and no worker process is started."""
    src = make_tree(tmp_path / "src")
    r = _run_script(tmp_path, "no_guard.py",
                    "import multiprocessing\n"
                    "from archiver import api\n"
                    f"done = api.archive([{str(src)!r}], name='m', store={str(tmp_path / 's')!r}, "
                    f"catalog={str(tmp_path / 'c.db')!r}, resume=False)\n"
                    "print('archived', done.files, done.files_by_processes, len(multiprocessing.active_children()),\n"
                    "      flush=True)\n")
    assert r.returncode == 0, r.stderr
    files = sum(1 for p in src.rglob('*') if p.is_file() and not p.is_symlink())
    assert r.stdout.splitlines() == [f"archived {files} 0 0"]


def test_an_unguarded_script_asking_for_workers_is_told_to_guard_it(tmp_path):
    """A script calling api.archive(processes=2) at its top level: every worker imports it
    again and dies, so the one-line error names the missing main guard (re-running, which a
    lost task otherwise suggests, cannot help), and no process is left."""
    src = make_tree(tmp_path / "src")
    r = _run_script(tmp_path, "no_guard_workers.py",
                    "import multiprocessing, sys\n"
                    "from archiver import api\n"
                    "from archiver.executors import TaskLostError\n"
                    "try:\n"
                    f"    api.archive([{str(src)!r}], name='m', store={str(tmp_path / 's')!r}, "
                    f"catalog={str(tmp_path / 'c.db')!r}, processes=2)\n"
                    "except TaskLostError as e:\n"
                    "    print('lost:', e, len(multiprocessing.active_children()), flush=True)\n")
    lost = [line for line in r.stdout.splitlines() if line.startswith("lost:")]
    assert len(lost) == 1, r.stdout + r.stderr
    assert "no_guard_workers.py has no `if __name__ == \"__main__\":` guard" in lost[0], lost[0]
    assert "processes=0" in lost[0] and lost[0].endswith(" 0")


def test_died_says_nothing_of_a_guard_for_a_guarded_main_or_none(tmp_path, monkeypatch):
    import sys
    import types
    from concurrent.futures.process import BrokenProcessPool
    from archiver import workerprocs
    e = BrokenProcessPool("A process in the process pool was terminated abruptly")
    guarded = tmp_path / "guarded.py"
    guarded.write_text('if __name__ == "__main__":\n    pass\n')
    for main in (types.ModuleType("__main__"), types.SimpleNamespace(__file__=str(guarded))):
        monkeypatch.setitem(sys.modules, "__main__", main)
        assert workerprocs.died(e) == "a worker process died (A process in the process pool was terminated abruptly)"
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__="<stdin>"))
    assert workerprocs.died(e).endswith("cannot be imported again by a worker: run it from a file")


def test_a_guarded_script_with_processes_archives_once_and_leaves_no_process(tmp_path):
    """processes=2 from a script guarded by `if __name__ == "__main__"`: each worker imports
    the script again as __mp_main__ (Python's rule for forkserver), which then does nothing;
    the archive is the threads' one, printed once, and no process outlives it."""
    src = make_tree(tmp_path / "src")
    r = _run_script(tmp_path, "guarded.py",
                    "import multiprocessing, os\n"
                    "from archiver import api, procfiles\n"
                    "procfiles.TASK_FILES = 10\n"
                    "def main():\n"
                    f"    kw = dict(name='m', resume=False)\n"
                    f"    two = api.archive([{str(src)!r}], store={str(tmp_path / 's')!r}, processes=2,\n"
                    f"                      catalog={str(tmp_path / 's.db')!r}, **kw)\n"
                    f"    one = api.archive([{str(src)!r}], store={str(tmp_path / 't')!r},\n"
                    f"                      catalog={str(tmp_path / 't.db')!r}, **kw)\n"
                    "    print('archived', two.files, two.id == one.id, two.files_by_processes > 0, one.files_by_processes,\n"
                    "          len(multiprocessing.active_children()),\n"
                    "          flush=True)\n"
                    "os.write(1, f'imported as {__name__}\\n'.encode())  # one write: workers print at once\n"
                    "if __name__ == '__main__':\n"
                    "    main()\n")
    assert r.returncode == 0, r.stderr
    files = sum(1 for p in src.rglob('*') if p.is_file() and not p.is_symlink())
    lines = r.stdout.splitlines()
    assert lines[0] == "imported as __main__" and lines[-1] == f"archived {files} True True 0 0", r.stdout + r.stderr
    # the workers imported the script again (and ran only its unguarded print)
    assert set(lines[1:-1]) <= {"imported as __mp_main__"} and len(lines) >= 3


@pytest.mark.parametrize("entry", ["module", "console-script"])
def test_the_cli_entry_points_with_workers_print_one_json_document(tmp_path, entry):
    """`python -m archiver.cli` and a console script (guarded, as pip writes it) with
    `--processes 2`: the workers' re-import of `__main__` runs nothing and prints nothing;
    stdout is the one JSON document, naming the files the workers archived."""
    import json
    import subprocess
    import sys
    src = make_tree(tmp_path / "src")
    script = tmp_path / "archiver-script"
    script.write_text("import sys\nfrom archiver.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
    launch = [sys.executable, "-m", "archiver.cli"] if entry == "module" else [sys.executable, str(script)]
    env = dict(os.environ, ARCHIVER_HOME=str(tmp_path / "home"),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    r = subprocess.run([*launch, "--store", str(tmp_path / "s"), "--catalog", str(tmp_path / "c.db"), "archive",
                        str(src), "--name", "m", "--processes", "2", "--json"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    assert 0 < doc["files_by_processes"] <= doc["files"]  # all under 1 MiB here


def test_odd_tree_same_entries_as_threads(tmp_path, home, small_tasks):
    """Hard links, files at cdc_min-1/cdc_min and BATCH_FILE_BELOW-1/BATCH_FILE_BELOW, empty
    files, non-ASCII names, duplicates within and across tasks, only small files beside one
    at the boundary: the workers' manifest is the threads' one, entry for entry."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    dup = os.urandom(3000)
    for i in range(35):
        (src / "a" / f"dup{i:02}").write_bytes(dup if i % 3 == 0 else os.urandom(10 + i * 31))
    (src / "a" / "zero").write_bytes(b"")
    (src / "a" / "zéro-ü-文件").write_bytes(b"non ascii")
    (src / "a" / "cdcmin-1").write_bytes(os.urandom(512 * 1024 - 1))
    (src / "a" / "cdcmin").write_bytes(os.urandom(512 * 1024))
    (src / "a" / "batch-1").write_bytes(os.urandom(fanout.BATCH_FILE_BELOW - 1))
    (src / "a" / "batch").write_bytes(os.urandom(fanout.BATCH_FILE_BELOW))
    os.link(src / "a" / "dup01", src / "a" / "hard01")
    os.link(src / "a" / "cdcmin", src / "hard-cdcmin")
    threads = _archive(tmp_path, src, str(tmp_path / "a"), 0)
    procs = _archive(tmp_path, src, str(tmp_path / "b"), 2)
    assert procs.files_by_processes > 0
    with api.open_repository(str(tmp_path / "a"), str(tmp_path / "a.db")) as ra, \
            api.open_repository(str(tmp_path / "b"), str(tmp_path / "b.db")) as rb:
        assert rb.load_manifest(procs.id).entries == ra.load_manifest(threads.id).entries
    assert procs.id == threads.id
    assert (procs.new_chunks, procs.chunks) == (threads.new_chunks, threads.chunks)


def test_two_archives_in_one_process_leak_nothing(tmp_path, home, small_tasks):
    """The API with processes=2 twice: no child process, thread or fd is left by either run,
    and the fork server is started again for the second."""
    import threading
    src = make_tree(tmp_path / "src")
    _archive(tmp_path, src, str(tmp_path / "w"), 0)  # warm imports/caches on threads
    fds0, threads0, kids0 = len(os.listdir("/proc/self/fd")), threading.active_count(), live_children()
    one = _archive(tmp_path, src, str(tmp_path / "s"), 2, resume=False)
    kids1 = live_children()
    fds1, threads1 = len(os.listdir("/proc/self/fd")), threading.active_count()
    two = _archive(tmp_path, src, str(tmp_path / "t"), 2, resume=False)
    assert one.files_by_processes and two.files_by_processes and one.id == two.id
    kids2 = live_children()
    assert len(os.listdir("/proc/self/fd")) <= fds1 and threading.active_count() <= threads1
    assert kids2 <= kids1 and len(kids1 - kids0) <= 1  # at most multiprocessing's resource tracker
    assert threads1 <= threads0 + 1 and fds1 <= fds0 + 2


def test_a_worker_killed_mid_archive_is_one_error_leaves_no_process_and_the_rerun_matches(tmp_path, home,
                                                                                          small_tasks, monkeypatch):
    """SIGKILL of the workers in the middle of api.archive: TaskLostError, nothing committed,
    no worker or fork server outlives the call, and the re-run commits the threads' manifest."""
    src = make_tree(tmp_path / "src")
    kids0 = live_children()
    pools: list[procfiles.SmallFilePool] = []
    real_init, real_taker = procfiles.SmallFilePool.__init__, fanout._taker

    def init(self, *a, **k):  # type: ignore[no-untyped-def]
        pools.append(self)
        real_init(self, *a, **k)

    def taker(*a):  # type: ignore[no-untyped-def]
        take = real_taker(*a)

        def kill_then_take(done):  # type: ignore[no-untyped-def]
            take(done)
            for pid in list(pools[-1]._pool._processes):  # noqa: SLF001 - the test kills the workers
                os.kill(pid, 9)
        return kill_then_take
    monkeypatch.setattr(procfiles.SmallFilePool, "__init__", init)
    monkeypatch.setattr(fanout, "_taker", taker)
    with pytest.raises(TaskLostError, match="a worker process died"):
        _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert not list((tmp_path / "s").glob("manifests/**/*"))
    assert len(live_children() - kids0) <= 1  # at most multiprocessing's resource tracker
    monkeypatch.setattr(fanout, "_taker", real_taker)
    again = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert again.id == _archive(tmp_path, src, str(tmp_path / "t"), 0).id
    report = api.verify([again.id], store=str(tmp_path / "s"), catalog=str(tmp_path / "s.db"), deep=True)
    assert report.ok, report.problems


def _error_classes() -> list[type]:
    import archiver
    import importlib
    import pkgutil
    from archiver.errors import ArchiverError
    for m in pkgutil.iter_modules(archiver.__path__):
        try:
            importlib.import_module(f"archiver.{m.name}")
        except Exception:  # noqa: BLE001 - an optional extra
            pass
    out, todo = [], [ArchiverError]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


def test_every_archiver_error_crosses_the_process_boundary_as_itself():
    """A worker's ArchiverError (rayexec.Failure, pickled) arrives as the same type with the same
    message, fields and --json error document, whatever its constructor."""
    import inspect
    import pickle
    from archiver import cli
    from archiver.rayexec import call_catching
    checked = 0
    for cls in _error_classes():
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.default is p.empty]
        args = {p.name: (7 if "code" in p.name or p.name == "pid" or p.name == "manifests" else
                         ["a", "b"] if p.name == "matches" else f"{p.name}-value") for p in params}
        try:
            err = cls(**args)
        except Exception:  # noqa: BLE001 - a constructor this probe cannot guess
            continue

        def boom(_x, err=err):  # type: ignore[no-untyped-def]
            raise err
        back = pickle.loads(pickle.dumps(call_catching(boom, None))).error()
        assert type(back) is cls
        assert str(back) == str(err) and vars(back) == vars(err), cls
        assert (cli.describe(back), back.exit_code, cli._kind(back), cli._fields(back)) == \
            (cli.describe(err), err.exit_code, cli._kind(err), cli._fields(err)), cls
        checked += 1
    assert checked >= 15


def _damage_chunks_of(tmp_path: Path, store: str, mid: str, names: list[str]) -> None:
    """Flip a byte of each named file's first chunk, in the pack that holds it."""
    with api.open_repository(store, str(tmp_path / f"{Path(store).name}.db")) as repo:
        entries = {Path(e.path).name: e for e in repo.load_manifest(mid).entries}
        for name in names:
            loc = repo._pack_locations(entries[name].chunks[0].hash)[0]  # noqa: SLF001
            pack = Path(store) / layout.pack(loc.pack)
            data = bytearray(pack.read_bytes())
            data[loc.offset + loc.stored_size // 2] ^= 0xFF
            pack.chmod(0o644)
            pack.write_bytes(bytes(data))


def test_a_damaged_packed_chunk_is_repaired_as_on_threads(tmp_path, home, small_tasks):
    """A chunk the catalog knows whose pack copy is damaged: the workers repair it by the
    threads' rules (repaired_chunks, new chunks), the manifest is the threads' one and a deep
    verify of the re-archive passes."""
    src = make_tree(tmp_path / "src")
    results = {}
    for store, processes in (("a", 0), ("b", 2)):
        first = _archive(tmp_path, src, str(tmp_path / store), 0)
        _damage_chunks_of(tmp_path, str(tmp_path / store), first.id, ["f03.txt", "f10.txt"])
        results[store] = again = api.archive([src], name="m2", store=str(tmp_path / store), reread=True,
                                             catalog=str(tmp_path / f"{store}.db"), processes=processes)
        report = api.verify([again.id], store=str(tmp_path / store), catalog=str(tmp_path / f"{store}.db"),
                            deep=True)
        assert report.ok, report.problems
    a, b = results["a"], results["b"]
    assert b.files_by_processes > 0
    assert (b.id, b.repaired_chunks, b.new_chunks) == (a.id, a.repaired_chunks, a.new_chunks)
    assert a.repaired_chunks >= 2


@pytest.mark.parametrize("change", ["replaced", "grown", "removed"])
def test_a_source_changed_after_the_scan_is_the_threads_json_error(tmp_path, home, small_tasks, monkeypatch,
                                                                   change):
    """A small file replaced by another of its size (a new inode), an empty file that grows, or
    a removed one, between the scan and the worker's read: the same --json document as on
    threads (an error, exit 1, nothing committed; the grown file is read as it is when opened)."""
    src = make_tree(tmp_path / "src")
    victim = src / "d2" / "inner" / ("empty" if change == "grown" else "f11.txt")
    body = victim.read_bytes()
    real_scan = pipeline.scan

    def scan_then_change(*a, **k):  # type: ignore[no-untyped-def]
        got = real_scan(*a, **k)
        if change == "replaced":
            tmp = victim.with_name("new")
            tmp.write_bytes(bytes(b ^ 1 for b in body))
            os.replace(tmp, victim)
        elif change == "grown":
            victim.write_bytes(b"grew")
            os.utime(victim, ns=(1, 1))  # the same entry in both runs
        else:
            victim.unlink()
        return got
    monkeypatch.setattr(pipeline, "scan", scan_then_change)
    docs = []
    for store, processes in (("a", "0"), ("b", "2")):
        victim.write_bytes(body)
        r = run_cli("--store", str(tmp_path / store), "--catalog", str(tmp_path / f"{store}.db"), "archive", str(src),
                    "--name", "m", "--processes", processes, "--json")
        docs.append({k: v for k, v in r.json().items() if k not in ("seconds", "files_by_processes")})
        if change == "grown":  # read as it is when opened (its settled fstat), as on threads
            assert r.code == 0 and docs[-1]["bytes_in"] == sum(p.stat().st_size for p in src.rglob("*")
                                                                if p.is_file() and not p.is_symlink())
            continue
        assert r.code == 1 and not list((tmp_path / store).glob("manifests/**/*")), r.out + r.err
        assert docs[-1]["kind"] == "source-changed", docs[-1]
    assert docs[0] == docs[1]


def test_files_cache_hits_mixed_with_misses_and_progress_totals(tmp_path, home, small_tasks):
    """A re-archive where some small files changed (misses, to the workers) and most did not
    (files-cache hits): the threads' manifest and counts; progress reaches its total exactly."""
    from archiver.progress import Progress

    class Counting(Progress):
        def __init__(self) -> None:
            super().__init__()
            self.totals: list[int] = []
            self.done = 0

        def start(self, label: str, total: int) -> None:
            super().start(label, total)
            self.totals.append(total)
            self.done = 0

        def advance(self, n: int) -> None:
            super().advance(n)
            self.done += n

    src = make_tree(tmp_path / "src")
    results, progress = {}, {}
    for store, processes in (("a", 0), ("b", 2)):
        _archive(tmp_path, src, str(tmp_path / store), processes)
    for i, f in enumerate(sorted((src / "d1" / "inner").glob("f*.txt"))[:25]):
        f.write_bytes(os.urandom(200 + i))
        os.utime(f, ns=(10**18 + i, 10**18 + i))
    for store, processes in (("a", 0), ("b", 2)):
        progress[store] = p = Counting()
        results[store] = _archive(tmp_path, src, str(tmp_path / store), processes, progress=p)
    a, b = results["a"], results["b"]
    assert b.files_by_processes == 25 and a.files_by_processes == 0
    assert (b.id, b.files_reused, b.new_chunks, b.new_bytes_stored) == \
        (a.id, a.files_reused, a.new_chunks, a.new_bytes_stored)
    assert progress["b"].totals == progress["a"].totals and progress["b"].done == progress["a"].done


@pytest.mark.parametrize("shape", ["only-big", "only-small", "empty-dir"])
def test_trees_with_nothing_for_one_side(tmp_path, home, small_tasks, shape):
    """processes=2 when the workers or the driver's threads get no file at all: the threads'
    manifest, no process left."""
    src = tmp_path / "src"
    src.mkdir()
    if shape == "only-big":
        (src / "big").write_bytes(os.urandom(fanout.BATCH_FILE_BELOW + 5))
    elif shape == "only-small":
        for i in range(25):
            (src / f"s{i}").write_bytes(os.urandom(i * 10))
    kids0 = live_children()
    procs = _archive(tmp_path, src, str(tmp_path / "b"), 2)
    assert procs.id == _archive(tmp_path, src, str(tmp_path / "a"), 0).id
    assert procs.files_by_processes == (25 if shape == "only-small" else 0)
    assert len(live_children() - kids0) <= 1


def test_a_ctrl_c_while_the_pool_starts_raises_and_leaves_no_process(tmp_path, monkeypatch):
    """Ctrl-C while SmallFilePool starts its workers (the driver waits for the fork server to
    report a new worker's pid): KeyboardInterrupt, no hang, no process left. It used to leave
    that worker untracked, alive, and `close` waited for the fork server forever."""
    import faulthandler
    import multiprocessing
    import signal
    from multiprocessing import forkserver
    src = make_tree(tmp_path / "src")
    settings = api.open_repository(str(tmp_path / "s"), str(tmp_path / "c.db"), create=True).settings
    files = [s for s in scan([src]) if not s.is_dir and not s.is_link and s.size < fanout.BATCH_FILE_BELOW]
    jobs = [procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files[i:i + 10]])
            for i in range(0, len(files), 10)]
    real = forkserver.read_signed
    sent: list[bool] = []

    def sigint_then_read(fd: int) -> int:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return real(fd)
    monkeypatch.setattr(forkserver, "read_signed", sigint_then_read)
    kids0 = live_children()
    faulthandler.dump_traceback_later(30, exit=True)  # a hang fails the run instead of blocking it
    try:
        with pytest.raises(KeyboardInterrupt):
            procfiles.SmallFilePool(2, jobs, lambda _done: None, on_error=lambda: None)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert sent and multiprocessing.active_children() == []
    assert forkserver._forkserver._forkserver_pid is None
    assert len(live_children() - kids0) <= 1  # at most multiprocessing's resource tracker


def test_storage_class_through_workers_on_every_pack_indexes_hot(tmp_path, home, moto_server, aws_env, monkeypatch,
                                                                   small_tasks):
    """A storage class reaches the workers: every pack they write is in it, every pack index
    (metadata) stays in the hot class, as on threads."""
    import uuid
    import boto3
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    bucket = f"cold-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    src = make_tree(tmp_path / "src")
    policy = api.write_policy(storage_class="STANDARD_IA")
    done = api.archive([src], name="m", store=f"s3://{bucket}/p", catalog=str(tmp_path / "c.db"), processes=2,
                       write_policy=policy)
    assert done.files_by_processes > 0
    assert done.id == _archive(tmp_path, src, str(tmp_path / "a"), 0).id
    objs = [o for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="p/")
            for o in page.get("Contents", [])]
    packs_ = [o for o in objs if o["Key"].startswith("p/packs/")]
    indexes = [o for o in objs if o["Key"].startswith("p/packindex/")]
    assert len(packs_) >= 2 and len(indexes) == len(packs_)
    assert {o["StorageClass"] for o in packs_} == {"STANDARD_IA"}
    assert {o.get("StorageClass", "STANDARD") for o in indexes} == {"STANDARD"}


def test_a_failed_commit_then_lost_packs_rerun_names_no_missing_chunk(tmp_path, home, small_tasks, monkeypatch):
    """Workers' packs adopted and recorded, then the commit fails; the packs are lost before the
    re-run: the journal's entries are not taken on trust (their chunks are stored again), the
    re-run's manifest is the threads' one and a deep verify finds every chunk."""
    from archiver.errors import StoreError
    from archiver.repository import Repository
    src = make_tree(tmp_path / "src")
    store = tmp_path / "s"

    def failing(self, *a, **k):  # type: ignore[no-untyped-def]
        raise StoreError("the manifest could not be written (test)")
    with monkeypatch.context() as m:
        m.setattr(Repository, "commit_manifest", failing)
        with pytest.raises(StoreError, match="test"):
            _archive(tmp_path, src, str(store), 2)
    lost = list((store / "packs").rglob("*"))
    assert any(p.is_file() for p in lost)
    for p in lost:
        if p.is_file():
            p.unlink()
    again = _archive(tmp_path, src, str(store), 2)
    assert again.id == _archive(tmp_path, src, str(tmp_path / "t"), 0).id
    report = api.verify([again.id], store=str(store), catalog=str(tmp_path / "s.db"), deep=True)
    assert report.ok, report.problems


def _early_seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """What archive_files got from the scan (PoolStarter.processes) and whether SmallFilePool
    was handed that pool."""
    seen: dict[str, object] = {}
    real_af, real_init = fanout.archive_files, procfiles.SmallFilePool.__init__

    def af(*a, **k):  # type: ignore[no-untyped-def]
        early = k.get("early")
        seen["early"] = early.processes if early is not None else None
        return real_af(*a, **k)

    def init(self, *a, **k):  # type: ignore[no-untyped-def]
        seen["handed"] = k.get("pool") is not None
        real_init(self, *a, **k)
    monkeypatch.setattr(fanout, "archive_files", af)
    monkeypatch.setattr(procfiles.SmallFilePool, "__init__", init)
    return seen


def test_the_pool_starts_during_the_scan_and_archive_files_takes_it(tmp_path, home, small_tasks, monkeypatch):
    """processes=2: the scan starts the pool (procfiles.PoolStarter), SmallFilePool runs the
    tasks on that very pool, which stops on a thread of its own while the driver commits;
    the manifest is the threads' one; no process is left once archive returns."""
    from multiprocessing import forkserver
    src = make_tree(tmp_path / "src")
    kids0 = live_children()
    seen = _early_seen(monkeypatch)
    import threading
    closed: list[str] = []
    real_close = procfiles.workerprocs.close

    def close(pool):  # type: ignore[no-untyped-def]
        real_close(pool)
        closed.append(threading.current_thread().name)
    monkeypatch.setattr(procfiles.workerprocs, "close", close)
    procs = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert seen == {"early": 2, "handed": True}
    assert closed == ["small-files-close"]  # stopped beside the commit, and done before archive returned
    assert procs.files_by_processes > 0
    assert procs.id == _archive(tmp_path, src, str(tmp_path / "t"), 0).id
    assert forkserver._forkserver._forkserver_pid is None and len(live_children() - kids0) <= 1


def test_no_early_pool_for_a_re_archive_the_files_cache_may_serve(tmp_path, home, small_tasks, monkeypatch):
    """A re-archive of paths the files cache has rows under starts no pool during the scan
    (every file may be reused: nothing for workers); with reread it does, as every file is read."""
    src = make_tree(tmp_path / "src")
    first = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    seen = _early_seen(monkeypatch)
    again = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert seen["early"] == 0 and not seen.get("handed") and again.files_reused == first.files
    assert again.new_chunks == 0
    reread = _archive(tmp_path, src, str(tmp_path / "s"), 2, reread=True)
    assert seen == {"early": 2, "handed": True} and reread.files_reused == 0 and reread.files_by_processes > 0
    assert reread.new_chunks == 0


def test_auto_starts_early_only_past_its_threshold_and_the_api_default_never(tmp_path, home, monkeypatch):
    """Auto (processes=None) starts the pool during the scan once AUTO_MIN_FILES small files
    were seen and auto_count grants workers; below the threshold it does not; processes=0
    (the API's default) builds no starter at all."""
    src = make_tree(tmp_path / "src")
    seen = _early_seen(monkeypatch)
    monkeypatch.setattr(procfiles, "auto_count", lambda busy: 2)
    monkeypatch.setattr(procfiles.workerprocs.CpuSample, "others_busy", lambda self: 0.0)
    monkeypatch.setattr(procfiles, "EARLY_MEASURE_S", 0.0)
    low = _archive(tmp_path, src, str(tmp_path / "a"), None)
    assert seen["early"] == 0 and low.files_by_processes == 0  # 165 small files < AUTO_MIN_FILES
    monkeypatch.setattr(procfiles, "AUTO_MIN_FILES", 20)
    auto = _archive(tmp_path, src, str(tmp_path / "b"), None)
    assert seen == {"early": 2, "handed": True} and auto.files_by_processes > 0
    seen.clear()
    assert _archive(tmp_path, src, str(tmp_path / "c"), 0).id == auto.id and seen["early"] is None


def test_an_error_before_archive_files_stops_the_early_pool(tmp_path, home, monkeypatch):
    """An error after the scan started the pool but before archive_files takes it (here the
    files cache's start): the error reaches the caller, and no worker or fork server is left."""
    import multiprocessing
    from multiprocessing import forkserver
    from archiver.errors import ArchiverError
    src = make_tree(tmp_path / "src")
    kids0 = live_children()
    started: list[int] = []
    real_watch = procfiles.PoolStarter.watch

    def watch(self, sources):  # type: ignore[no-untyped-def]
        real_watch(self, sources)
        started.append(self.processes)

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise ArchiverError("the files cache broke")
    monkeypatch.setattr(procfiles.PoolStarter, "watch", watch)
    monkeypatch.setattr(pipeline.FilesRun, "start", boom)
    with pytest.raises(ArchiverError, match="the files cache broke"):
        _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert 2 in started
    assert multiprocessing.active_children() == [] and forkserver._forkserver._forkserver_pid is None
    assert len(live_children() - kids0) <= 1  # at most multiprocessing's resource tracker


def test_a_ctrl_c_during_the_scan_with_the_pool_starting_leaves_no_process(tmp_path, home, monkeypatch):
    """SIGINT right after the scan started the pool (its thread still starting it):
    KeyboardInterrupt, nothing committed, no hang, no process left."""
    import faulthandler
    import multiprocessing
    import signal
    from multiprocessing import forkserver
    src = make_tree(tmp_path / "src")
    kids0 = live_children()
    real_watch = procfiles.PoolStarter.watch
    sent: list[bool] = []

    def watch(self, sources):  # type: ignore[no-untyped-def]
        real_watch(self, sources)
        if self.processes and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(procfiles.PoolStarter, "watch", watch)
    faulthandler.dump_traceback_later(30, exit=True)  # a hang fails the run instead of blocking it
    try:
        with pytest.raises(KeyboardInterrupt):
            _archive(tmp_path, src, str(tmp_path / "s"), 2)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert sent and not list((tmp_path / "s").glob("manifests/**/*"))
    assert multiprocessing.active_children() == [] and forkserver._forkserver._forkserver_pid is None
    assert len(live_children() - kids0) <= 1


def test_a_worker_reaches_each_directory_once_across_its_tasks(tmp_path, monkeypatch):
    """`_call` (a worker's entry) runs every task of the process with the process's held
    directory descriptors (`_held_dirs`): two tasks with files of the same directories reach
    and check each directory once, where tasks of their own descriptors did it per task."""
    from archiver import scan as scan_mod
    src = make_tree(tmp_path / "src")
    settings = api.open_repository(str(tmp_path / "s"), str(tmp_path / "c.db"), create=True).settings
    files = [s for s in scan([src]) if not s.is_dir and not s.is_link and s.size < fanout.BATCH_FILE_BELOW]
    jobs = [procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files[0::2]]),  # both tasks: every
            procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files[1::2]])]  # directory
    dirs = {s.parent.abspath for s in files}
    opened: list[Path] = []
    real = scan_mod.open_source

    def counting(s, dirs=None):  # type: ignore[no-untyped-def]
        if s.is_dir:
            opened.append(s.abspath)
        return real(s, dirs)
    monkeypatch.setattr(scan_mod, "open_source", counting)
    procfiles._repository.cache_clear()
    procfiles._held_dirs.cache_clear()
    try:
        for job in jobs:
            assert isinstance(procfiles.run_job(job), procfiles.SmallDone)
        per_task = list(opened)
        opened.clear()
        done = [procfiles._call(job) for job in jobs]
        assert all(isinstance(d, procfiles.SmallDone) for d in done)
        assert sorted(opened) == sorted(dirs)  # each directory once, for both tasks
        # the tasks' own descriptors: each task reaches its directories again
        assert len(per_task) == sum(len({s.parent.abspath for s in job.runs[0]}) for job in jobs) > len(dirs)
    finally:
        procfiles._held_dirs().close()
        procfiles._held_dirs.cache_clear()
        procfiles._repository(settings).close()
        procfiles._repository.cache_clear()


def test_tasks_are_guided_big_first_then_smaller_every_run_once_in_order():
    """tasks_of: every run once, in order; a task takes about 1/(GUIDE * processes) of the work
    not yet handed out (bytes plus FILE_WEIGHT a file), so tasks shrink towards the end, never
    below MIN_SHARE of the whole nor above TASK_FILES files (plus the run that crossed it)."""
    from archiver.scan import Source
    sizes = [16384 - 16 * i for i in range(1000)] + [0] * 600  # largest first, then empty files
    files = [Source(f"t/f{i}", Path(f"/t/f{i}"), False, n, 0o644, 1, i) for i, n in enumerate(sizes)]
    runs = [files[i:i + 32] for i in range(0, len(files), 32)]
    tasks = procfiles.tasks_of(runs, processes=2)
    assert [r for t in tasks for r in t] == runs
    weight = [sum(s.size + procfiles.FILE_WEIGHT for r in t for s in r) for t in tasks]
    total = sum(weight)
    run_most = 32 * (16384 + procfiles.FILE_WEIGHT)
    left = total
    for w in weight[:-1]:  # each closes once it reached its share of what was left (a run may overshoot)
        assert max(left / (procfiles.GUIDE * 2), total * procfiles.MIN_SHARE) <= w < \
            max(left / (procfiles.GUIDE * 2), total * procfiles.MIN_SHARE) + run_most
        left -= w
    assert weight[0] > 3 * weight[-2] and len(tasks) < len(files) / 100
    capped = procfiles.tasks_of(runs, per_task=64, processes=2)
    assert [r for t in capped for r in t] == runs and max(sum(map(len, t)) for t in capped) <= 64
    assert len(procfiles.tasks_of(runs, processes=1)) < len(tasks)  # one worker: bigger shares


def test_each_workers_first_task_is_small_then_guided(monkeypatch):
    """The first `processes` tasks hold at most FIRST_TASK_FILES files (a worker waits for its
    first job to be pickled and sent); the guided shares follow; every run once, in order."""
    from archiver.scan import Source
    files = [Source(f"t/f{i}", Path(f"/t/f{i}"), False, 8192, 0o644, 1, i) for i in range(3200)]
    runs = [files[i:i + 32] for i in range(0, len(files), 32)]
    monkeypatch.setattr(procfiles, "FIRST_TASK_FILES", 64)
    tasks = procfiles.tasks_of(runs, processes=2)
    assert [r for t in tasks for r in t] == runs
    counts = [sum(map(len, t)) for t in tasks]
    assert counts[:2] == [64, 64] and counts[2] > 4 * 64 and counts[2] >= max(counts[3:])


def test_a_worker_makes_its_files_journal_lines_only_when_the_run_journals(tmp_path):
    """SmallJob.journal_lines: the task hands back each file's journal line (journal.line_of of
    the very entry and snapshot it hands back, in the same order); without it, none."""
    from archiver.journal import line_of
    src = make_tree(tmp_path / "src")
    settings = api.open_repository(str(tmp_path / "s"), str(tmp_path / "c.db"), create=True).settings
    files = [s for s in scan([src]) if not s.is_dir and not s.is_link and s.size < fanout.BATCH_FILE_BELOW]
    procfiles._repository.cache_clear()
    try:
        done = procfiles.run_job(procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files], True))
        finished = [procfiles.unflat(row) for row in done.files]
        assert len(finished) == len(files)
        assert done.lines == b"".join(line_of(d.entry, d.snapshot) for d in finished)
        bare = procfiles.run_job(procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files]))
        assert bare.lines == b"" and len(bare.files) == len(files)
    finally:
        procfiles._repository(settings).close()
        procfiles._repository.cache_clear()


def test_auto_waits_for_a_measure_of_the_machine_before_starting_early(tmp_path, home, monkeypatch):
    """Auto past its threshold but too early in the scan to tell how busy the machine is
    (others_busy None, or less than EARLY_MEASURE_S watched): a later directory decides; if the
    scan ends first, archive_files decides after it, as before (the pool then starts there)."""
    src = make_tree(tmp_path / "src")
    seen = _early_seen(monkeypatch)
    monkeypatch.setattr(procfiles, "AUTO_MIN_FILES", 20)
    asked: list[float] = []
    busy: list[float | None] = [None, None, 0.0]

    def others_busy(self):  # type: ignore[no-untyped-def]
        asked.append(1.0)
        return busy[min(len(asked), len(busy)) - 1]
    monkeypatch.setattr(procfiles.workerprocs.CpuSample, "others_busy", others_busy)
    monkeypatch.setattr(procfiles, "auto_count", lambda b: 2 if b == 0.0 else 0)
    monkeypatch.setattr(procfiles, "EARLY_MEASURE_S", 0.0)
    later = _archive(tmp_path, src, str(tmp_path / "a"), None)
    assert seen == {"early": 2, "handed": True} and later.files_by_processes > 0 and len(asked) == 3
    monkeypatch.setattr(procfiles, "EARLY_MEASURE_S", 60.0)  # never watched long enough during the scan
    seen.clear()
    asked.clear()
    waited = _archive(tmp_path, src, str(tmp_path / "w"), None)
    assert seen["early"] == 0 and not asked[:-1] and waited.id == later.id  # only archive_files asked
    busy[:] = [None]  # never known during the scan
    asked.clear()
    monkeypatch.setattr(procfiles, "EARLY_MEASURE_S", 0.0)
    monkeypatch.setattr(procfiles, "auto_count", lambda b: 2)  # archive_files' own decision: workers
    seen.clear()
    never = _archive(tmp_path, src, str(tmp_path / "b"), None)
    assert seen == {"early": 0, "handed": False} and never.files_by_processes > 0 and never.id == later.id


def test_a_job_pickles_its_sources_by_directory_and_unpickles_equal(tmp_path):
    """SmallJob's pickle (what a worker unpickles between two tasks) sends a file's Source as
    its directory plus its fields: it unpickles equal, field by field (seen too), sharing its
    directory's Source, and smaller; a Source not under its directory's path goes as it is."""
    import pickle
    src = make_tree(tmp_path / "src")
    settings = api.open_repository(str(tmp_path / "s"), str(tmp_path / "c.db"), create=True).settings
    files = [s for s in scan([src], dereference=True) if not s.is_dir and s.size < fanout.BATCH_FILE_BELOW]
    assert any(s.followed for s in files)  # the link, followed
    odd = dataclasses.replace(files[0], abspath=tmp_path / "elsewhere" / files[0].abspath.name)
    runs = [files[:7], files[7:] + [odd]]
    job = procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, 3600.0, runs, True)
    blob = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
    back = pickle.loads(blob)
    assert type(back) is procfiles.SmallJob and back == job
    for got, want in zip([s for r in back.runs for s in r], [s for r in runs for s in r]):
        assert (got.abspath, got.parent, got.seen, got.followed, got.link) == \
            (want.abspath, want.parent, want.seen, want.followed, want.link)
        assert list(vars(got).items()) == list(vars(want).items()) and hash(got) == hash(want)  # as __init__ makes it
    same_dir = [s for r in back.runs for s in r if s.parent == back.runs[0][0].parent]
    assert len({id(s.parent) for s in same_dir}) == 1  # the directory's Source is sent once
    plain = pickle.dumps((settings, pipeline.ChunkPolicy(), None, 3600.0, runs, True), protocol=pickle.HIGHEST_PROTOCOL)
    assert len(blob) < len(plain)


# --- rev11: adversarial probes of the worker phase (the pool started during the scan, held dirs) ---


def _no_process_left(kids0: set[int]) -> None:
    import multiprocessing
    from multiprocessing import forkserver
    assert multiprocessing.active_children() == []
    assert forkserver._forkserver._forkserver_pid is None
    assert len(live_children() - kids0) <= 1  # at most multiprocessing's resource tracker


def _started_pool_waited(monkeypatch: pytest.MonkeyPatch, then=None) -> list[int]:  # type: ignore[no-untyped-def]
    """PoolStarter.watch, waiting for the pool's start once decided (its workers warm), then `then`."""
    started: list[int] = []
    real_watch = procfiles.PoolStarter.watch

    def watch(self, sources):  # type: ignore[no-untyped-def]
        real_watch(self, sources)
        if self._thread is not None:
            self._thread.join()
        if self._pool is not None and not started:
            started.append(self.processes)
            if then is not None:
                then()
    monkeypatch.setattr(procfiles.PoolStarter, "watch", watch)
    return started


@pytest.mark.parametrize("failure", ["fifo", "escaping-link", "removed-dir", "unsafe-name"])
def test_the_scan_failing_after_the_pool_started_is_its_own_error_and_leaves_no_process(tmp_path, home,
                                                                                        monkeypatch, failure):
    """The pool started at the scan's first small file, then the scan fails (a special file,
    a symlink out of the tree, a directory removed before the walk reached it, a name restore
    could not create): the scan's own one-line error, nothing committed, no process left."""
    from archiver.errors import ArchiverError
    src = tmp_path / "src"
    (src / "zz" / "deep").mkdir(parents=True)
    (src / "a-first.txt").write_bytes(b"small")  # the top directory: the pool starts after it
    (src / "zz" / "deep" / "f").write_bytes(b"x")
    then = None
    if failure == "fifo":
        os.mkfifo(src / "zz" / "deep" / "pipe")
    elif failure == "escaping-link":
        os.symlink("../../../../etc/passwd", src / "zz" / "deep" / "out")
    elif failure == "unsafe-name":
        (src / "zz" / "deep" / "a\\b").write_bytes(b"backslash")
    else:
        def then() -> None:  # type: ignore[misc]
            shutil.rmtree(src / "zz")
    kids0 = live_children()
    started = _started_pool_waited(monkeypatch, then)
    with pytest.raises(ArchiverError) as err:
        _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert started == [2]
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "s").glob("manifests/**/*"))
    _no_process_left(kids0)


def test_a_directory_moved_out_and_symlinked_back_before_the_workers_read_is_refused(tmp_path, home,
                                                                                    small_tasks, monkeypatch):
    """After the scan, a directory is moved outside the source and a symlink to it put in its
    place (the same inodes, the same names): a worker must not follow it (no escape through the
    held or fresh descriptors): SourceChangedError naming it, nothing committed, no process."""
    src = make_tree(tmp_path / "src")
    outside = tmp_path / "outside"
    outside.mkdir()
    kids0 = live_children()
    real_af = fanout.archive_files

    def af(*a, **k):  # type: ignore[no-untyped-def]
        os.rename(src / "d2" / "inner", outside / "inner")
        os.symlink(outside / "inner", src / "d2" / "inner")
        return real_af(*a, **k)
    monkeypatch.setattr(fanout, "archive_files", af)
    with pytest.raises(SourceChangedError, match="d2/inner"):
        _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert not list((tmp_path / "s").glob("manifests/**/*"))
    _no_process_left(kids0)


def test_a_directory_moved_out_between_two_tasks_of_one_worker_reads_only_what_the_scan_saw(tmp_path):
    """One worker (`_call`, its held descriptors), two tasks of the same directory: between
    them the directory is moved out of the source and a symlink to a look-alike directory
    (same names, same sizes) put in its place. The second task reads, through the held
    descriptor, the very inodes the scan saw, or refuses: never the look-alike's bytes."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    fake = tmp_path / "fake"
    fake.mkdir()
    for i in range(20):
        (src / "d" / f"f{i:02}").write_bytes(b"original %02d\n" % i)
        (fake / f"f{i:02}").write_bytes(b"FORGED!! %02d\n" % i)
    settings = api.open_repository(str(tmp_path / "s"), str(tmp_path / "c.db"), create=True).settings
    files = [s for s in scan([src]) if not s.is_dir]
    jobs = [procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files[:10]]),
            procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files[10:]])]
    procfiles._repository.cache_clear()
    procfiles._held_dirs.cache_clear()
    try:
        first = procfiles._call(jobs[0])
        assert isinstance(first, procfiles.SmallDone)
        os.rename(src / "d", tmp_path / "moved")
        os.symlink(fake, src / "d")
        second = procfiles._call(jobs[1])
        if isinstance(second, procfiles.SmallDone):
            want = {f"src/d/f{i:02}": blake3.blake3(b"original %02d\n" % i).hexdigest() for i in range(10, 20)}
            got = {d.entry.path: d.entry.blake3 for d in procfiles.unflat_all(second.files)}
            assert got == want
        else:
            assert isinstance(second.error(), SourceChangedError)
    finally:
        procfiles._held_dirs().close()
        procfiles._held_dirs.cache_clear()
        procfiles._repository(settings).close()
        procfiles._repository.cache_clear()


@pytest.mark.parametrize("between", ["replaced", "renamed-away-and-back", "swapped-siblings"])
def test_two_archives_back_to_back_each_reads_its_own_tree(tmp_path, home, small_tasks, between):
    """Two archives with processes=2 in one process, the tree changed between them (a
    directory replaced at the same path, one renamed away and back, two sibling directories
    swapped by name): the second archive is what threads make of the tree as it is then,
    never anything a descriptor of the first run would read."""
    src = make_tree(tmp_path / "src")
    kids0 = live_children()
    first = _archive(tmp_path, src, str(tmp_path / "s"), 2, reread=True)
    assert first.files_by_processes > 0
    if between == "replaced":
        shutil.rmtree(src / "d1" / "inner")
        (src / "d1" / "inner").mkdir()
        for i in range(40):
            (src / "d1" / "inner" / f"f{i:02}.txt").write_bytes(b"new content %d\n" % i)
    elif between == "renamed-away-and-back":
        os.rename(src / "d1", tmp_path / "away")
        (tmp_path / "away" / "inner" / "f03.txt").write_bytes(b"changed while away\n")
        os.rename(tmp_path / "away", src / "d1")
    else:
        os.rename(src / "d1", src / "tmp")
        os.rename(src / "d2", src / "d1")
        os.rename(src / "tmp", src / "d2")
    second = _archive(tmp_path, src, str(tmp_path / "s"), 2, reread=True)
    threads = _archive(tmp_path, src, str(tmp_path / "t"), 0)
    assert second.files_by_processes > 0
    with api.open_repository(str(tmp_path / "s"), str(tmp_path / "s.db")) as rs, \
            api.open_repository(str(tmp_path / "t"), str(tmp_path / "t.db")) as rt:
        assert rs.load_manifest(second.id).entries == rt.load_manifest(threads.id).entries
        assert rs.load_manifest(second.id).entries != rs.load_manifest(first.id).entries
    _no_process_left(kids0)


@pytest.mark.parametrize("headroom", [32, 112])
def test_many_directories_under_a_low_open_files_limit(tmp_path, home, monkeypatch, headroom):
    """RLIMIT_NOFILE low (the workers inherit it) and more directories than it allows open
    at once: the held descriptors stop at their limit, the rest are walked; the manifest is
    the threads' one. The limit is this process's open descriptors plus `headroom` (what
    earlier tests of the session left open is not this test's to count)."""
    import resource
    src = tmp_path / "src"
    for d in range(300):
        sub = src / f"d{d:03}"
        sub.mkdir(parents=True)
        (sub / "f").write_bytes(os.urandom(100 + d))
    threads = _archive(tmp_path, src, str(tmp_path / "t"), 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = max(int(name) for name in os.listdir("/proc/self/fd")) + 1 + headroom
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        procs = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert procs.files_by_processes == 300 and procs.id == threads.id


@pytest.mark.parametrize("when", ["scan", "tasks"])
def test_the_drivers_sigkill_with_the_early_pool_leaves_no_process(tmp_path, home, when):
    """The driver of api.archive(processes=2) killed (SIGKILL) while its scan holds the pool
    it started early (workers warm), or while its tasks run: every process of its session
    (the fork server, the workers, the resource tracker) ends, and nothing is committed. The
    journal lines the workers laid out for the tasks taken before the kill are resumed by a
    re-run (on workers, or on threads), whose manifest is the threads' one."""
    import signal
    import subprocess
    import sys
    import time
    src = make_tree(tmp_path / "src")
    hold = ("    real = procfiles.PoolStarter.watch\n"
            "    def watch(self, sources):\n"
            "        real(self, sources)\n"
            "        if self._thread is not None:\n"
            "            self._thread.join()\n"
            "            print('ready', flush=True)\n"
            "            time.sleep(120)\n"
            "    procfiles.PoolStarter.watch = watch\n") if when == "scan" else (
            "    real = fanout._taker\n"
            "    def taker(*a):\n"
            "        take = real(*a)\n"
            "        def slow(done):\n"
            "            take(done)\n"
            "            print('ready', flush=True)\n"
            "            time.sleep(120)\n"
            "        return slow\n"
            "    fanout._taker = taker\n")
    code = ("import time\n"
            "from archiver import api, fanout, procfiles\n"
            "procfiles.TASK_FILES = 10\n"
            "if __name__ == '__main__':\n" + hold +
            f"    api.archive([{str(src)!r}], name='m', store={str(tmp_path / 's')!r},\n"
            f"                catalog={str(tmp_path / 's.db')!r}, processes=2)\n")
    env = dict(os.environ, ARCHIVER_HOME=str(tmp_path / "home"),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)

    def session() -> list[int]:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == driver.pid and fields[0] != "Z":
                    out.append(int(d))
        return out
    try:
        assert driver.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        assert len(session()) >= 3  # the driver, the fork server, a worker at least
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 15
        while session() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session() == []
        assert not list((tmp_path / "s").glob("manifests/**/*"))
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    threads = _archive(tmp_path, src, str(tmp_path / "t"), 0)
    if when == "tasks":
        for name in ("s", "s.db", "home"):  # the state the kill left, for a second re-run
            (shutil.copytree if (tmp_path / name).is_dir() else shutil.copy)(tmp_path / name, tmp_path / f"kept-{name}")
        again = _archive(tmp_path, src, str(tmp_path / "s"), 2)
        assert again.resumed_files >= 10 and again.id == threads.id
        for name in ("s", "s.db", "home"):
            (shutil.rmtree if (tmp_path / name).is_dir() else os.unlink)(tmp_path / name)
            os.rename(tmp_path / f"kept-{name}", tmp_path / name)
        on_threads = _archive(tmp_path, src, str(tmp_path / "s"), 0)
        assert on_threads.resumed_files == again.resumed_files and on_threads.id == threads.id


def test_a_rerun_that_resumes_every_small_file_closes_the_early_pool_and_matches_threads(tmp_path, home,
                                                                                      small_tasks, monkeypatch):
    """The commit fails after every task was taken (all journalled); the re-run's scan starts
    the pool again (the journal does not stop it), archive_files then finds no small file left
    to do: the early pool is stopped unused, the re-run resumes them all and commits the
    threads' manifest, and no process is left."""
    src = make_tree(tmp_path / "src")
    kids0 = live_children()
    _archive_whose_commit_fails(tmp_path, src, monkeypatch)
    _no_process_left(kids0)
    seen = _early_seen(monkeypatch)
    again = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert seen["early"] == 2 and not seen.get("handed")
    assert again.files_by_processes == 0 and again.resumed_files == again.files
    assert again.id == _archive(tmp_path, src, str(tmp_path / "t"), 0).id
    _no_process_left(kids0)


def _fds_naming(path: Path) -> int:
    n = 0
    for f in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{f}").startswith(str(path))
        except OSError:
            pass
    return n


def test_a_worker_running_many_tasks_holds_a_bounded_number_of_catalog_connections(tmp_path):
    """A worker's repository lives for the pool (`_repository`), but each task runs on threads
    of its own, and each thread reading the catalog opens its own read connection: those of a
    task's threads, gone when it ends, used to stay open until the worker exited (two file
    descriptors and a page cache each, one set more per task), so a worker of many tasks ran
    out of descriptors where threads did not. They are closed once their thread is gone."""
    src = tmp_path / "src"
    for d in range(12):
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(5):
            (src / f"d{d:02}" / f"f{i}").write_bytes(os.urandom(100 + 7 * d + i))
    catalog = tmp_path / "c.db"
    settings = api.open_repository(str(tmp_path / "s"), str(catalog), create=True).settings
    api.archive([tmp_path / "src" / "d00"], name="seed", store=str(tmp_path / "s"), catalog=str(catalog))
    files = [s for s in scan([src]) if not s.is_dir]
    jobs = [procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files[k:k + 3], files[k + 3:k + 5]])
            for k in range(0, len(files), 5)]
    procfiles._repository.cache_clear()
    procfiles._held_dirs.cache_clear()
    held: list[int] = []
    try:
        for job in jobs:
            assert isinstance(procfiles._call(job), procfiles.SmallDone)
            held.append(_fds_naming(catalog))
        assert len(held) == 12 and max(held) - min(held) <= 4, held  # one task's threads' at most, not one set per task
    finally:
        procfiles._held_dirs().close()
        procfiles._held_dirs.cache_clear()
        procfiles._repository(settings).close()
        procfiles._repository.cache_clear()


def test_odd_names_same_manifest_as_threads_and_the_journal_resumes_them(tmp_path, home, small_tasks, monkeypatch):
    """Names with a quote, spaces, 255 bytes long, a leading dash, non-NFC
    dash, and a deep chain of directories: the workers' manifest (their Sources pickled by
    directory, their journal lines laid out there) is the threads' one, and a re-run after a
    failed commit resumes every file from the workers' lines."""
    src = tmp_path / "src"
    deep = src.joinpath(*[f"lvl{i}" for i in range(30)])
    deep.mkdir(parents=True)
    names = [b'quo"te', b"sp ace ", b"x" * 255, b"-dash", "ünï-ç😀".encode(), "e\u0301-nfd".encode()]
    for where in (src, deep):
        for k, n in enumerate(names):
            with open(os.path.join(os.fsencode(where), n), "wb") as f:
                f.write(os.urandom(30 + k))
    (src / "pad").mkdir()
    for i in range(30):
        (src / "pad" / f"p{i:02}").write_bytes(os.urandom(20 + i))
    threads = _archive(tmp_path, src, str(tmp_path / "t"), 0)
    _archive_whose_commit_fails(tmp_path, src, monkeypatch)
    again = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert again.resumed_files == again.files == threads.files
    assert again.id == threads.id
    fresh = _archive(tmp_path, src, str(tmp_path / "u"), 2)
    assert fresh.files_by_processes == fresh.files and fresh.id == threads.id


def test_a_worker_killed_while_the_scan_holds_the_early_pool_is_a_lost_task(tmp_path, home, small_tasks,
                                                                           monkeypatch):
    """The workers of the pool started during the scan are killed (the OOM killer) before
    archive_files takes it: the archive fails as a worker's death mid-run does (TaskLostError,
    one line), not with the pool's raw BrokenProcessPool; nothing is committed, no process is
    left, and the re-run commits the threads' manifest."""
    import time
    src = make_tree(tmp_path / "src")
    kids0 = live_children()
    pools: list[object] = []
    real_start = procfiles.PoolStarter._start

    def start(self):  # type: ignore[no-untyped-def]
        real_start(self)
        pools.append(self._pool)

    def kill_workers() -> None:
        pool = pools[-1]
        for _ in range(100):  # the workers the warm-up started
            if len(pool._processes) == 2:  # noqa: SLF001 - the test kills the workers
                break
            time.sleep(0.05)
        for pid in list(pool._processes):  # noqa: SLF001
            os.kill(pid, 9)
        for _ in range(100):  # the pool sees them gone
            if pool._broken:  # noqa: SLF001
                break
            time.sleep(0.05)
    with monkeypatch.context() as m:
        m.setattr(procfiles.PoolStarter, "_start", start)
        _started_pool_waited(m, kill_workers)
        with pytest.raises(TaskLostError, match="a worker process died") as err:
            _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "s").glob("manifests/**/*"))
    _no_process_left(kids0)
    again = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert again.id == _archive(tmp_path, src, str(tmp_path / "t"), 0).id


@pytest.mark.parametrize("early", [True, False])
def test_auto_falls_back_to_threads_when_the_pool_cannot_start(tmp_path, home, monkeypatch, early):
    """Auto (processes=None, the CLI's default) granted workers, but the pool cannot start
    (fork refused: EAGAIN under a pids limit), whether tried during the scan or after it: the
    archive is the threads' one, as where `unavailable()` says no pool can start, not an
    error; an explicit --processes still reports it."""
    import errno
    src = make_tree(tmp_path / "src")
    threads = _archive(tmp_path, src, str(tmp_path / "t"), 0)
    monkeypatch.setattr(procfiles, "AUTO_MIN_FILES", 20)
    monkeypatch.setattr(procfiles, "auto_count", lambda busy: 2)
    monkeypatch.setattr(procfiles.workerprocs.CpuSample, "others_busy", lambda self: 0.0)
    monkeypatch.setattr(procfiles, "EARLY_MEASURE_S", 0.0 if early else 60.0)
    tried: list[int] = []

    def refused(processes, preload):  # type: ignore[no-untyped-def]
        tried.append(processes)
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    monkeypatch.setattr(procfiles.workerprocs, "pool", refused)
    seen = _early_seen(monkeypatch)
    auto = _archive(tmp_path, src, str(tmp_path / "a"), None)
    assert tried and seen["early"] == (2 if early else 0)
    assert auto.files_by_processes == 0 and auto.id == threads.id
    with pytest.raises(OSError, match="temporarily unavailable"):
        _archive(tmp_path, src, str(tmp_path / "e"), 2)


def test_a_ctrl_c_during_the_commit_while_the_pool_stops_beside_it(tmp_path, home, small_tasks, monkeypatch):
    """SIGINT as the commit starts, the workers still stopping on their own thread: the
    KeyboardInterrupt reaches the caller, no process is left, and
    the re-run resumes the workers' files into the threads' manifest."""
    import faulthandler
    import signal
    from archiver.repository import Repository
    src = make_tree(tmp_path / "src")
    kids0 = live_children()
    real = Repository.commit_manifest

    def interrupted(self, *a, **k):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **k)
    faulthandler.dump_traceback_later(60, exit=True)
    try:
        with monkeypatch.context() as m:
            m.setattr(Repository, "commit_manifest", interrupted)
            with pytest.raises(KeyboardInterrupt):
                _archive(tmp_path, src, str(tmp_path / "s"), 2)
    finally:
        faulthandler.cancel_dump_traceback_later()
    _no_process_left(kids0)
    again = _archive(tmp_path, src, str(tmp_path / "s"), 2)
    assert again.resumed_files > 0 and again.id == _archive(tmp_path, src, str(tmp_path / "t"), 0).id


def test_unflat_entries_are_the_entries_init_makes() -> None:
    """`unflat_all` sets an Entry's fields in its `__dict__` rather than through the frozen
    dataclass's `__init__`: the result has the same fields in the same order, compares and
    hashes equal, pickles to the same bytes, and stays frozen."""
    import pickle
    from manifests.model import ChunkRef
    for e in (Entry(path="a/b", type="file", mode=0o640, size=3, mtime_ns=7, blake3="ab" * 32, sha256="cd" * 32,
                    format="safetensors", chunks=(ChunkRef(0, 3, "ef" * 32, 12, "zstd"),), tech={"k": 1}),
              Entry(path="c", type="file", mode=0o600, size=0, mtime_ns=9, blake3="01" * 32, sha256="23" * 32)):
        got = procfiles.unflat(procfiles._flat(fanout.FileDone(e, [1, 2, 3, 4, 5]))).entry
        assert type(got) is Entry and list(vars(got).items()) == list(vars(e).items())
        assert got == e and pickle.dumps(got) == pickle.dumps(e) and got.to_json() == e.to_json()
        if e.tech is None:
            assert hash(got) == hash(e)
        with pytest.raises(dataclasses.FrozenInstanceError):
            got.size = 4  # type: ignore[misc]


def _packed_objects(store: Path) -> dict[str, bytes]:
    """Every packed chunk object of a local store, by chunk hash, cut out by its pack's index."""
    out: dict[str, bytes] = {}
    for index in _pack_indexes(store):
        data = (store / layout.pack(index.pack)).read_bytes()
        for e in index.entries:
            out[e.hash] = data[e.offset:e.offset + e.stored_size]
    return out


def _catalog_rows(db: Path) -> dict[str, list[tuple]]:
    """The catalog's rows that do not depend on how chunks were grouped into packs."""
    import sqlite3
    con = sqlite3.connect(db)
    try:
        return {q: sorted(con.execute(q).fetchall()) for q in (
            "SELECT manifest_id, path, type, size, mode, blake3, sha256 FROM files",
            "SELECT key, stored_size, codec, owner FROM chunks",
            "SELECT manifest, chunk FROM manifest_chunks",
            "SELECT DISTINCT hash, stored_size, length FROM pack_chunks",  # two workers may pack one chunk twice
            "SELECT id, name, file_count, total_size, stored_size, json FROM manifests")}
    finally:
        con.close()


def test_workers_store_the_same_objects_and_catalog_rows_as_threads(tmp_path, home, small_tasks):
    """The workers' per-file path (Codec.encode_small into task-scoped packs, rows unflattened
    into Entries on the driver) stores what the threads' path stores: the same manifest id,
    every chunk object byte for byte (wherever its pack put it; each is `Codec().encode` of its
    chunk), the same catalog rows but for pack names and offsets."""
    import blake3
    from archiver.codecs import Codec
    src = make_tree(tmp_path / "src")
    for i in range(30):  # compressible small files too (zstd objects), some sharing content
        (src / "text" / f"t{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / "text" / f"t{i % 3}" / f"{i}.txt").write_bytes(f"row {i % 10} of a table\n".encode() * (40 + i))
    threads = _archive(tmp_path, src, str(tmp_path / "a"), 0)
    procs = _archive(tmp_path, src, str(tmp_path / "b"), 2)
    assert procs.id == threads.id and procs.files_by_processes > 0
    a, b = _packed_objects(tmp_path / "a"), _packed_objects(tmp_path / "b")
    assert a == b and len(a) > 100
    small = {blake3.blake3(p.read_bytes()).hexdigest(): p.read_bytes() for p in src.rglob("*")
             if p.is_file() and not p.is_symlink() and 0 < p.stat().st_size < 64 << 10}
    want = {h: Codec().encode(data, 0) for h, data in small.items()}
    assert {h: b[h] for h in small} == {h: enc.data for h, enc in want.items()}
    assert {enc.codec for enc in want.values()} == {"raw", "zstd"}
    assert _catalog_rows(tmp_path / "a.db") == _catalog_rows(tmp_path / "b.db")


def test_a_workers_rows_and_lines_are_what_the_batch_path_makes(tmp_path, monkeypatch):
    """A worker hands a plain small file back as a row made straight from its values
    (`_worker_batch`'s `_saved_small`), every other file (a recognised format, config.json's tech) through the
    batch's own path: rows and journal lines are exactly those of `LocalArchiveBatch._saved_small`
    with `_flat` and `line_of`, file for file, in the same order."""
    src = make_tree(tmp_path / "src")
    (src / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    files = [s for s in scan([src]) if not s.is_dir and not s.is_link and s.size < fanout.BATCH_FILE_BELOW]

    def run(name: str) -> procfiles.SmallDone:
        settings = api.open_repository(str(tmp_path / name), str(tmp_path / f"{name}.db"), create=True).settings
        procfiles._repository.cache_clear()
        try:
            return procfiles.run_job(procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files], True))
        finally:
            procfiles._repository(settings).close()
            procfiles._repository.cache_clear()
    rows = run("a")
    with monkeypatch.context() as m:
        m.setattr(procfiles._worker_batch(), "_saved_small", fanout.LocalArchiveBatch._saved_small)  # the batch's own way
        plain = run("b")
    assert rows.files == plain.files and rows.lines == plain.lines and len(rows.files) == len(files)
    assert any(len(r) == 1 or r[6] for r in rows.files) and any(len(r) > 1 and not r[7] for r in rows.files)
    assert any(len(r) > 1 and r[8] for r in rows.files)  # config.json's tech, through the batch's path


def test_a_job_names_a_file_under_its_directory_only_when_its_path_is_that_join():
    """`_JobPickler`'s test on the paths' strings: the last component where the path is its
    directory's path joined with it (the root's children too), else none (sent as it is)."""
    assert procfiles._name_under("/a/b/c.txt", "/a/b") == "c.txt"
    assert procfiles._name_under("/c.txt", "/") == "c.txt"
    assert procfiles._name_under("/a/bc/d", "/a/b") == ""
    assert procfiles._name_under("/a/b/c/d", "/a/b") == ""
    assert procfiles._name_under("/x/c.txt", "/a/b") == ""
    assert procfiles._name_under("/a/b", "/a/b") == ""


def _odd_tree(root: Path) -> Path:
    """Names the string test could get wrong: a file at the archive's root, a directory named
    like another's prefix and like a file's (d, dx, d.txt), spaces, dots, a dash, NFD and NFC
    names (distinct, no collision), empty and nested empty directories."""
    import unicodedata
    root.mkdir(parents=True)
    (root / "top.txt").write_bytes(b"at the root")
    for n in ("d.txt", "-dash", ".hidden", "..dots"):
        (root / n).write_bytes(n.encode() * 3)
    for n in ("d", "dx", "caf\u00e9", "a b", unicodedata.normalize("NFD", "\u00e9t\u00e9")):
        (root / n).mkdir()
        for i in range(12):
            (root / n / f"f{i}").write_bytes(f"{n}{i}".encode() * (i + 1))
        (root / n / unicodedata.normalize("NFD", "na\u00efve")).write_bytes(b"nfd")
    (root / "d" / "inner").mkdir()
    (root / "d" / "inner" / "x").write_bytes(b"x")
    (root / "empty").mkdir()
    (root / "deep" / "e1" / "e2").mkdir(parents=True)
    return root


def test_a_jobs_files_are_named_under_their_directory_as_the_path_test_named_them(tmp_path, monkeypatch):
    """`_name_under` (strings) says what the Path test it replaced said (`abspath.parent ==
    parent.abspath`) for every file of odd names, scanned from several spellings of the root;
    a job of them round-trips equal, each file's path rebuilt from its directory's."""
    root = _odd_tree(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    settings = api.open_repository(str(tmp_path / "s"), str(tmp_path / "c.db"), create=True).settings
    compared = 0
    for roots in (["src"], ["src/"], [str(root)], ["./src/d/.."], ["src/d", "src/dx"], ["src/top.txt"]):
        files = [s for s in scan(roots) if not s.is_dir]
        for s in files:
            if s.parent is not None:
                was = s.abspath.name if s.abspath.parent == s.parent.abspath else ""
                assert procfiles._name_under(str(s.abspath), str(s.parent.abspath)) == was, s.abspath
                compared += 1
        job = procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, [files])
        import pickle
        back = pickle.loads(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        assert back == job
        assert [(s.abspath, s.parent.abspath if s.parent else None) for s in back.runs[0]] == \
            [(s.abspath, s.parent.abspath if s.parent else None) for s in files]
    assert compared > 100


@pytest.mark.packs
def test_odd_names_archive_to_the_same_manifest_on_workers_and_threads(tmp_path, home, monkeypatch):
    """The one-pass task cut, the job's string test and the held directories keyed by path
    string: the same manifest id on worker processes (tasks of 8 files) as on threads."""
    root = _odd_tree(tmp_path / "src")
    monkeypatch.setattr(procfiles, "TASK_FILES", 8)
    monkeypatch.setattr(procfiles, "FIRST_TASK_FILES", 8)
    ids = [api.archive([root], name="m", store=str(tmp_path / f"s{p}"), catalog=str(tmp_path / f"c{p}.db"),
                       processes=p).id for p in (2, 0)]
    assert ids[0] == ids[1]
