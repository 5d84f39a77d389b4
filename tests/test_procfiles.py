"""Small files archived on worker processes (archiver.procfiles): the same manifest as on
threads, dedup against the catalog, the files cache, resume, errors as one line, S3."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from archiver import api, fanout, layout, pipeline, procfiles
from archiver.errors import InvalidOptionError, SourceChangedError
from archiver.executors import TaskLostError
from archiver.scan import scan
from manifests.model import Entry
from tests.helpers import make_checkpoint, run_cli, tree

pytestmark = pytest.mark.packs  # workers write packs, as a real run does


def make_tree(root: Path) -> Path:
    """Empty files, nested dirs, a symlink, duplicate files (in different tasks once tasks are
    small), a file at the chunker's minimum and one above it, and a checkpoint's big files."""
    make_checkpoint(root / "ckpt", layers=2, dim=64)
    for d in range(4):
        sub = root / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(40):
            body = b"the same bytes\n" if i % 7 == 0 else os.urandom(50 + 97 * i + d)
            (sub / f"f{i:02}.txt").write_bytes(body)
        (sub / "empty").write_bytes(b"")
    (root / "empty-dir").mkdir()
    (root / "at-min.bin").write_bytes(os.urandom(512 * 1024))
    (root / "above-min.bin").write_bytes(os.urandom(700 * 1024))
    os.symlink("d0/inner/f01.txt", root / "link")
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
    monkeypatch.setattr(procfiles, "unavailable", lambda: "OSError: no /dev/shm")  # auto: threads; asked: refused
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
