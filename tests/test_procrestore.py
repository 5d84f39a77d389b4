"""Small files restored on worker processes (archiver.procrestore): the same tree as on
threads, damage reported and never named, a killed worker is one error and leaves no process,
hostile manifests and DESTs refused before any worker writes."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from archiver import api, layout, procrestore, restorer, workerprocs
from archiver.errors import DestinationError, InvalidOptionError, UnsafePathError
from archiver.executors import TaskLostError
from archiver.procfiles import worker_settings
from archiver.restorer import is_temp_name
from manifests.model import Entry, Manifest
from tests.helpers import live_children, make_checkpoint, make_small_file_tree, run_cli, tree
from tests.test_packs import damage_packed

pytestmark = pytest.mark.packs  # small files in packs, as a real archive stores them


def make_tree(root: Path) -> Path:
    """Small files in nested dirs (some of the same bytes), empty files, modes, an empty dir,
    a symlink, and a checkpoint whose bigger files stay on the driver's threads."""
    return make_small_file_tree(root, dirs=3, files=30, size=lambda i, d: 40 + 61 * i + d, modes=True)


@pytest.fixture
def archived(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, str, str]:
    """(source, store, catalog, id), and tasks of a few files so the two workers get many."""
    monkeypatch.setattr(procrestore, "TASK_FILES", 8)
    monkeypatch.setattr(procrestore, "DRIVER_RUNS_TASKS", False)  # every task on a worker (one test turns it on)
    src = make_tree(tmp_path / "src")
    store, catalog = str(tmp_path / "store"), str(tmp_path / "c.db")
    done = api.archive([src], name="m", store=store, catalog=catalog)
    return src, store, catalog, done.id


def _restore(archived: tuple[Path, str, str, str], dest: Path, processes: int | None,  # type: ignore[no-untyped-def]
             **kw):
    _src, store, catalog, mid = archived
    return api.restore(mid, dest, store=store, catalog=catalog, processes=processes, **kw)


def _small_files(src: Path, most: int) -> list[Path]:
    return [p for p in src.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size <= most]


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.lstat().st_mtime_ns for p in root.rglob("*") if not p.is_symlink()}


def test_same_tree_modes_and_mtimes_as_threads(archived, tmp_path):
    src = archived[0]
    threads = _restore(archived, tmp_path / "a", 0)
    procs = _restore(archived, tmp_path / "b", 2)
    assert threads.ok and procs.ok, procs.problems
    small = _small_files(src, restorer.SMALL_FILE)
    assert procs.files_by_processes == len(small) and threads.files_by_processes == 0
    assert (procs.files, procs.bytes, procs.dirs, procs.links) == (threads.files, threads.bytes, threads.dirs,
                                                                   threads.links)
    assert tree(tmp_path / "b") == tree(tmp_path / "a")
    assert tree(tmp_path / "b" / "src") == tree(src)
    assert _mtimes(tmp_path / "b") == _mtimes(tmp_path / "a")
    assert os.readlink(tmp_path / "b" / "src" / "link") == "d0/inner/f01.txt"
    assert not [q for q in (tmp_path / "b").rglob("*") if is_temp_name(q.name)]


def test_a_task_is_one_sync_batch_capped_in_files_and_in_bytes(archived, tmp_path, monkeypatch):
    """A worker syncs its task once, so a task holds no more than the threads' sync batch:
    restorer.SYNC_BATCH_BYTES as well as the file count (2,048 files of up to 1 MiB each would
    otherwise be 2 GiB waiting on one sync). Order is kept; a file bigger than the cap is a
    task of its own; the tree restores the same."""
    rows = [(f"f{i}", 0o644, 0, size, "", None) for i, size in enumerate([300, 300, 500, 10, 2000, 1, 1, 1])]
    tasks = procrestore.tasks_of(rows, 3, most_bytes=1000)
    assert [[r[0] for r in t] for t in tasks] == [["f0", "f1"], ["f2", "f3"], ["f4"], ["f5", "f6", "f7"]]
    assert [r for t in tasks for r in t] == rows
    monkeypatch.setattr(restorer, "SYNC_BATCH_BYTES", 2000)
    made: list[int] = []
    real = procrestore.tasks_of
    monkeypatch.setattr(procrestore, "tasks_of", lambda *a, **k: made.append(len(real(*a, **k))) or real(*a, **k))
    procs = _restore(archived, tmp_path / "b", 2)
    small = _small_files(archived[0], restorer.SMALL_FILE)
    assert procs.ok and procs.files_by_processes == len(small)
    assert made and made[0] > -(-len(small) // procrestore.TASK_FILES)  # more tasks than by count alone
    assert tree(tmp_path / "b" / "src") == tree(archived[0])


def test_big_files_stay_on_threads_and_the_rest_on_workers(archived, tmp_path, monkeypatch):
    monkeypatch.setattr(restorer, "SMALL_FILE", 1000)  # the driver's size rule decides what goes to workers
    src = archived[0]
    res = _restore(archived, tmp_path / "out", 1)
    small = _small_files(src, 1000)
    assert res.ok and res.files_by_processes == len(small) < res.files
    assert tree(tmp_path / "out" / "src") == tree(src)


def test_the_driver_takes_tasks_back_from_the_pool_and_the_tree_is_the_same(archived, tmp_path, monkeypatch):
    monkeypatch.setattr(procrestore, "DRIVER_RUNS_TASKS", True)
    src = archived[0]
    ran_here: list[int] = []
    real_run = procrestore.run_job

    def run_job(job, repo=None):  # type: ignore[no-untyped-def]
        ran_here.append(len(job.files))  # (only the driver's calls: a worker runs its own module)
        return real_run(job, repo)
    monkeypatch.setattr(procrestore, "run_job", run_job)
    res = _restore(archived, tmp_path / "out", 1)
    small = _small_files(src, restorer.SMALL_FILE)
    assert res.ok and ran_here and res.files_by_processes == len(small) - sum(ran_here)
    assert tree(tmp_path / "out" / "src") == tree(src)
    assert _restore(archived, tmp_path / "t", 0).ok
    assert _mtimes(tmp_path / "out") == _mtimes(tmp_path / "t")


def test_a_damaged_chunk_is_reported_and_never_named(archived, tmp_path):
    src, store, _catalog, _mid = archived
    _pack, victim = damage_packed(store, lambda index: len(index.entries) // 2, 0x01)
    res = _restore(archived, tmp_path / "out", 2)
    bad = sorted({p.path for p in res.problems})
    assert bad and all(p.kind == "corrupt-chunk" and p.chunk == victim.hash for p in res.problems)
    out = tmp_path / "out"
    for path in bad:
        assert not (out / path).exists()  # never under its final name (nor any other)
    assert not [q for q in out.rglob("*") if is_temp_name(q.name)]
    for p in src.rglob("*"):  # everything else whole
        rel = f"src/{p.relative_to(src).as_posix()}"
        if p.is_file() and not p.is_symlink() and rel not in bad:
            assert (out / rel).read_bytes() == p.read_bytes()
    threads = _restore(archived, tmp_path / "t", 0)
    assert res.problems == threads.problems  # the same problems, in the same order


def test_a_killed_worker_is_one_error_and_leaves_no_process(archived, tmp_path, monkeypatch):
    kids0 = live_children()
    real_wait = procrestore.SmallRestore.wait

    def wait(self, take, repo):  # type: ignore[no-untyped-def]
        def kill_then_take(done):  # type: ignore[no-untyped-def]
            take(done)
            for pid in list(self._pool._processes):  # noqa: SLF001 - the test kills the workers
                os.kill(pid, 9)
        return real_wait(self, kill_then_take, repo)
    monkeypatch.setattr(procrestore.SmallRestore, "wait", wait)
    with pytest.raises(TaskLostError, match="a worker process died") as e:
        _restore(archived, tmp_path / "out", 2)
    assert len(str(e.value).splitlines()) == 1
    assert len(live_children() - kids0) <= 1  # at most multiprocessing's resource tracker
    out, src = tmp_path / "out", archived[0]
    assert not [q for q in out.rglob("*") if is_temp_name(q.name)]
    for q in out.rglob("*"):  # whatever is named is whole
        if q.is_file() and not q.is_symlink():
            assert q.read_bytes() == (src / q.relative_to(out / "src")).read_bytes()


def test_the_cli_processes_option_and_a_bad_count_refused_in_one_line(archived, tmp_path):
    _src, store, catalog, mid = archived
    base = ["--store", store, "--catalog", catalog, "restore", mid]
    r = run_cli(*base, str(tmp_path / "out"), "--processes", "2", "--json")
    assert r.code == 0, r.err
    assert r.json()["files_by_processes"] > 0 and r.json()["ok"]
    bad = run_cli(*base, str(tmp_path / "out2"), "--processes", "-1")
    assert bad.code == 2 and "--processes" in bad.err and len(bad.err.strip().splitlines()) == 1
    assert not (tmp_path / "out2").exists()  # refused before anything is written


def test_hostile_manifests_are_refused_before_any_worker_starts(archived, tmp_path, monkeypatch):
    _src, store, catalog, mid = archived
    started: list[int] = []
    real_pool = workerprocs.pool
    monkeypatch.setattr(workerprocs, "pool", lambda n, preload: started.append(n) or real_pool(n, preload))
    m = api.show(mid, store=store, catalog=catalog)[1]
    first = next(e for e in m.entries if e.is_file and e.chunks)
    for evil in (Entry(path="../escape.txt", type="file", mode=0o644, size=first.size, mtime_ns=1,
                       blake3=first.blake3, sha256=first.sha256, chunks=first.chunks),
                 Entry(path="src/evil-link", type="symlink", mode=0o777, target="../../../../etc")):
        bad = Manifest(name="evil", entries=m.entries + (evil,))
        (Path(store) / layout.manifest(bad.id)).write_bytes(bad.canonical_json())
        with pytest.raises(UnsafePathError):
            api.restore(bad.id, tmp_path / "out", store=store, catalog=catalog, processes=2)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not (tmp_path / "escape.txt").exists()
    assert started == []


def test_a_worker_writes_nothing_below_a_dest_that_is_not_the_drivers(archived, tmp_path):
    _src, store, catalog, mid = archived
    repo = api.open_repository(store, catalog)
    m = repo.load_manifest(mid)
    (tmp_path / "real").mkdir()
    (tmp_path / "other").mkdir()
    st = os.stat(tmp_path / "real")
    rows = [procrestore.file_row(e) for e in m.entries if procrestore.eligible(e)][:3]
    job = procrestore.RestoreJob(worker_settings(repo.settings), mid, str(tmp_path / "other"),
                                 (st.st_dev, st.st_ino), False, 0o777, rows)
    with pytest.raises(UnsafePathError, match="replaced"):
        procrestore.run_job(job)
    assert not list((tmp_path / "other").iterdir())
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(UnsafePathError):
        procrestore.run_job(procrestore.RestoreJob(job.settings, mid, str(tmp_path / "link"), job.root_id, False,
                                                   0o777, rows))
    assert not list((tmp_path / "real").iterdir())
    repo.close()


def test_force_replaces_existing_files_and_planted_symlinks_without_following_them(archived, tmp_path):
    src = archived[0]
    inner = tmp_path / "out" / "src" / "d1" / "inner"
    inner.mkdir(parents=True)
    (inner / "f03.txt").write_bytes(b"mine")
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    os.symlink(victim, inner / "f04.txt")
    res = _restore(archived, tmp_path / "out", 2, force=True)
    assert res.ok and res.files_by_processes > 0
    for name in ("f03.txt", "f04.txt"):
        assert not (inner / name).is_symlink()
        assert (inner / name).read_bytes() == (src / "d1" / "inner" / name).read_bytes()
    assert victim.read_bytes() == b"untouched"


def test_resolve_auto_explicit_and_refusals(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    many = procrestore.AUTO_MIN_FILES
    kw = dict(local=True, sealed=False, has_settings=True, distributed=False)
    assert procrestore.resolve(None, small_files=many, busy=0.2, **kw) == 1  # and the driver
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert procrestore.resolve(None, small_files=many, busy=0.2, **kw) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert procrestore.resolve(None, small_files=many, busy=1.5, **kw) == 0
    assert procrestore.resolve(None, small_files=many - 1, busy=0, **kw) == 0
    assert procrestore.resolve(0, small_files=10 ** 6, busy=0, **kw) == 0
    assert procrestore.resolve(3, small_files=1, busy=9, **kw) == 3
    assert procrestore.resolve(None, small_files=many, busy=0, **{**kw, "local": False}) == 0  # S3: explicit only
    assert procrestore.resolve(2, small_files=1, busy=0, **{**kw, "local": False}) == 2
    for bad_kw, words in (({"sealed": True}, "sealed"), ({"distributed": True}, "local executor"),
                          ({"has_settings": False}, "Settings")):
        assert procrestore.resolve(None, small_files=many, busy=0, **{**kw, **bad_kw}) == 0
        with pytest.raises(InvalidOptionError, match=words):
            procrestore.resolve(2, small_files=many, **{**kw, **bad_kw})
    for bad in (-1, True, 1.5):
        with pytest.raises(InvalidOptionError):
            procrestore.resolve(bad, small_files=1, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert procrestore.resolve(None, small_files=many, busy=0, **kw) == 0


def test_an_s3_store_restores_through_workers_when_asked(tmp_path, home, s3_server_url, monkeypatch):
    """Auto keeps an S3 store on threads; `--processes N` reaches it from the workers (the
    driver's resolved endpoint and AWS_* variables go with each task)."""
    monkeypatch.setattr(procrestore, "TASK_FILES", 8)
    monkeypatch.setattr(procrestore, "DRIVER_RUNS_TASKS", False)
    src = make_tree(tmp_path / "src")
    catalog = str(tmp_path / "s3.db")
    done = api.archive([src], name="m", store=s3_server_url, catalog=catalog)
    res = api.restore(done.id, tmp_path / "out", store=s3_server_url, catalog=catalog, processes=1)
    assert res.ok and res.files_by_processes > 0, res.problems
    assert tree(tmp_path / "out" / "src") == tree(src)


def test_a_task_taken_back_from_the_pool_is_never_taken_twice():
    """Future.cancel() is True again for a future cancelled already: the driver must not run
    a task it took back (or one an error cancelled) a second time."""
    import threading
    from concurrent.futures import Future
    jobs = [object(), object(), object()]
    sr = object.__new__(procrestore.SmallRestore)  # no pool: the hand-back rule alone
    sr._lock = threading.Lock()
    sr._jobs = [jobs[0]]
    started, pending = Future(), Future()
    started.set_running_or_notify_cancel()  # a worker runs it
    sr._futures = {started: jobs[1], pending: jobs[2]}
    taken = [sr._take_back(), sr._take_back(), sr._take_back(), sr._take_back()]
    assert taken == [jobs[0], jobs[2], None, None]
    assert list(sr._futures) == [started] and pending.cancelled()


def test_an_unguarded_script_on_the_api_default_restores_once_on_threads(tmp_path):
    """The API's default is threads (processes=0): a script without `if __name__ ==
    "__main__"` restores once, prints once and starts no process (a worker would import it again)."""
    import subprocess
    import sys
    src = make_tree(tmp_path / "src")
    script = tmp_path / "no_guard.py"
    script.write_text("import multiprocessing\n"
                      "from archiver import api\n"
                      f"done = api.archive([{str(src)!r}], name='m', store={str(tmp_path / 's')!r}, resume=False)\n"
                      f"res = api.restore(done.id, {str(tmp_path / 'out')!r}, store={str(tmp_path / 's')!r})\n"
                      "print('restored', res.ok, res.files, res.files_by_processes,"
                      " len(multiprocessing.active_children()), flush=True)\n")
    env = dict(os.environ, ARCHIVER_HOME=str(tmp_path / "home"), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    files = sum(1 for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    assert r.stdout.splitlines() == [f"restored True {files} 0 0"]


def test_problems_keep_the_manifests_order_whichever_side_restores_the_small_file(tmp_path, home):
    """A small file of several chunks (a safetensors header and its tensors, 512 KiB - 1 MiB)
    stays on the driver's threads, one chunk or none goes to a worker: with both damaged,
    the problems (and --json, and the event's first lines) come in the manifest's order, as
    on threads, not the threads' files first."""
    src = tmp_path / "src"
    make_checkpoint(src / "m", layers=1, dim=600)  # model.safetensors: ~720 KB, header + tensors
    (src / "a.txt").write_bytes(b"first in the manifest\n")
    store, catalog = str(tmp_path / "store"), str(tmp_path / "c.db")
    mid = api.archive([src], name="m", store=store, catalog=catalog).id
    m = api.show(mid, store=store, catalog=catalog)[1]
    st = next(e for e in m.entries if e.path.endswith("model.safetensors"))
    assert len(st.chunks) > 1 and st.size <= restorer.SMALL_FILE and not procrestore.eligible(st)
    for prefix in (layout.PACKS, "chunks"):  # every chunk missing
        shutil.rmtree(Path(store) / prefix, ignore_errors=True)
    threads = api.restore(mid, tmp_path / "t", store=store, catalog=catalog, processes=0)
    procs = api.restore(mid, tmp_path / "p", store=store, catalog=catalog, processes=2)
    assert procs.files_by_processes == procs.files > 0  # the empty files, on workers
    assert [p.path for p in threads.problems][:2] == ["src/a.txt", "src/m/config.json"]
    assert [p.line() for p in procs.problems] == [p.line() for p in threads.problems]


def test_workers_restore_where_proc_is_not_mounted(archived, tmp_path):
    """Without /proc (a chroot, a minimal container) an unnamed file cannot be named (its link
    goes through /proc/self/fd): the threads then write under temp names, and so must a
    worker, rather than fail every file with "cannot write"."""
    import json
    import subprocess
    import sys
    src, store, catalog, mid = archived
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "umount -l /proc && test ! -e /proc/self/fd"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot unmount /proc in a mount namespace here: {probe.stderr.decode().strip()}")
    script = tmp_path / "no_proc.py"
    script.write_text("import json, sys\n"
                      "from archiver import api, procrestore\n"
                      "if __name__ == '__main__':\n"
                      "    procrestore.TASK_FILES, procrestore.DRIVER_RUNS_TASKS = 8, False  # every task on a worker\n"
                      "    res = api.restore(sys.argv[1], sys.argv[2], store=sys.argv[3], catalog=sys.argv[4],\n"
                      "                      processes=int(sys.argv[5]))\n"
                      "    print(json.dumps(res.to_dict()))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    for n in (0, 2):
        dest = tmp_path / f"out{n}"
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            'umount -l /proc && exec "$@"', "sh", sys.executable, str(script), mid, str(dest), store,
                            catalog, str(n)],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["ok"] and doc["files_by_processes"] == (doc["files"] if n else 0), doc
        assert tree(dest / "src") == tree(src)
        assert not [q for q in dest.rglob("*") if is_temp_name(q.name)]


def test_processes_on_a_sealed_store_are_refused_in_words_that_say_why():
    """The refusal named the very thing that was wrong as a need: "worker processes need a
    sealed store", on a sealed store."""
    kw = dict(small_files=1, local=True, has_settings=True, distributed=False)
    with pytest.raises(InvalidOptionError) as e:
        procrestore.resolve(2, sealed=True, **kw)
    assert "need a sealed store" not in str(e.value) and "unsealed" in str(e.value)
    from archiver import procfiles  # archive's, the same words
    with pytest.raises(InvalidOptionError) as e:
        procfiles.resolve(2, small_files=1, local=True, sealed=True, has_settings=True)
    assert "need a sealed store" not in str(e.value) and "unsealed" in str(e.value)


def test_a_workers_memory_stays_bounded_by_a_batch_not_by_its_task(tmp_path):
    """A worker read every chunk of its task (up to 2,048 files of up to 1 MiB) before writing
    the first: 400 files of 1 MiB of zeros (a store of a few hundred KB) took ~430 MB in the
    worker, where the threads take a few MB (they read a run of parallel.BATCH_BYTES at a time)."""
    import subprocess
    import sys
    script = tmp_path / "mem.py"
    script.write_text(
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from archiver import api, procrestore\n"
        "if __name__ == '__main__':\n"
        "    w = Path(sys.argv[1])\n"
        "    (w / 'src').mkdir()\n"
        "    for i in range(400):\n"
        "        with open(w / 'src' / f'f{i:03}', 'wb') as f:\n"
        "            f.truncate(1 << 20)\n"
        "    done = api.archive([w / 'src'], name='m', store=str(w / 'store'), catalog=str(w / 'c.db'))\n"
        "    procrestore.DRIVER_RUNS_TASKS = False  # the one task on the worker\n"
        "    res = api.restore(done.id, w / 'out', store=str(w / 'store'), catalog=str(w / 'c.db'), processes=1)\n"
        "    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024\n"
        "    print(res.ok, res.files, res.files_by_processes, kids)\n")
    env = dict(os.environ, ARCHIVER_HOME=str(tmp_path / "home"),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    ok, files, by_procs, worker_mib = r.stdout.split()
    assert (ok, files, by_procs) == ("True", "400", "400")
    assert int(worker_mib) < 200, f"a worker took {worker_mib} MiB"
    assert all(p.stat().st_size == 1 << 20 for p in (tmp_path / "out" / "src").iterdir())


def test_a_directory_swapped_for_a_symlink_is_never_written_through(archived, tmp_path, monkeypatch):
    """A directory of DEST replaced by a symlink to elsewhere after the driver made it: a
    worker refuses to walk through it (one UnsafePathError) and writes nothing there; the same
    for a task run directly against a DEST with such a symlink planted."""
    src, store, catalog, mid = archived
    outside = tmp_path / "outside"
    outside.mkdir()
    real_make = restorer._make_dirs

    def make_then_swap(root_fd, dirs, stop=None):  # type: ignore[no-untyped-def]
        real_make(root_fd, dirs, stop)
        inner = tmp_path / "out" / "src" / "d1" / "inner"
        os.rmdir(inner)  # made, still empty: the pool is still starting
        os.symlink(outside, inner)
    monkeypatch.setattr(restorer, "_make_dirs", make_then_swap)
    with pytest.raises(UnsafePathError, match="src/d1/inner") as e:
        _restore(archived, tmp_path / "out", 2)
    assert len(str(e.value).splitlines()) == 1 and (tmp_path / "out" / "src" / "d1" / "inner").is_symlink()
    assert not list(outside.iterdir())
    monkeypatch.setattr(restorer, "_make_dirs", real_make)
    repo = api.open_repository(store, catalog)
    m = repo.load_manifest(mid)
    dest = tmp_path / "direct"
    (dest / "src" / "d2").mkdir(parents=True)
    os.symlink(outside, dest / "src" / "d2" / "inner")
    st = os.stat(dest)
    rows = [procrestore.file_row(e) for e in m.entries if procrestore.eligible(e) and e.path.startswith("src/d2/")]
    job = procrestore.RestoreJob(worker_settings(repo.settings), mid, str(dest), (st.st_dev, st.st_ino), True, 0o777,
                                 rows)
    with pytest.raises(UnsafePathError, match="src/d2/inner"):
        procrestore.run_job(job)
    assert not list(outside.iterdir())
    repo.close()


def _many_small(tmp_path: Path, home: Path) -> tuple[Path, str, str]:
    """(source, store, catalog) of 4,000 small files in 4 directories, for a CLI run long enough to stop."""
    src = tmp_path / "many"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(1000):
            (src / f"d{d}" / f"f{i:04}").write_bytes(os.urandom(100 + i % 300))
    store, catalog = str(tmp_path / "store"), str(tmp_path / "c.db")
    api.archive([src], name="many", store=store, catalog=catalog)
    return src, store, catalog


def _marked(mark: str) -> list[int]:
    """Live processes whose environment carries `mark` (the CLI, its fork server, its workers)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                with open(f"/proc/{d}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if mark.encode() in env and state != "Z":
                out.append(int(d))
    return out


# The CLI, except that the restore waits (bounded) before its last step, finishing the
# directories: a signal sent once the first files are named always finds it mid-restore,
# wherever it lands, so a run never ends before the signal does (a Ctrl-C ignored then fails
# the test, after the bound, instead of looking like a restore that was too quick).
_HELD_CLI = ("import sys, time\n"
             "from archiver import restorer\n"
             "real = restorer._finish_dirs\n"
             "def held(*a, **k):\n"
             "    end = time.monotonic() + 60\n"
             "    while time.monotonic() < end:\n"
             "        time.sleep(0.01)\n"
             "    return real(*a, **k)\n"
             "restorer._finish_dirs = held\n"
             "from archiver.cli import main\n"
             "main(sys.argv[1:])\n")


def _stop_mid_restore(tmp_path: Path, store: str, catalog: str, dest: Path, sig: int) -> tuple[int, str, str]:
    """Start a CLI restore of "many" with --processes 2 (held before its last step: _HELD_CLI)
    and send it `sig` once its first files are named."""
    import signal
    import subprocess
    import sys
    import time
    mark = f"REV12_MARK={tmp_path}/{dest.name}"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), REV12_MARK=mark.split("=", 1)[1])
    p = subprocess.Popen([sys.executable, "-c", _HELD_CLI, "--store", store, "--catalog", catalog, "restore",
                          "many", str(dest), "--processes", "2"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if any((dest / "many" / f"d{d}").is_dir() and any((dest / "many" / f"d{d}").iterdir()) for d in range(4)):
            break
        time.sleep(0.005)
    p.send_signal(sig)
    _out, err = p.communicate(timeout=120)
    end = time.monotonic() + 10
    while _marked(mark) and time.monotonic() < end:
        time.sleep(0.1)
    left = _marked(mark)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"
    return p.returncode, err, mark


def _named_files_are_whole(src: Path, dest: Path) -> int:
    named = 0
    for q in dest.rglob("*"):
        assert not is_temp_name(q.name), q
        if q.is_file():
            named += 1
            assert q.read_bytes() == (src / q.relative_to(dest / "many")).read_bytes(), q
    return named


def test_sigkill_of_the_driver_ends_its_workers_and_a_forced_restore_completes(tmp_path, home):
    import signal
    src, store, catalog = _many_small(tmp_path, home)
    dest = tmp_path / "out"
    code, _err, _mark = _stop_mid_restore(tmp_path, store, catalog, dest, signal.SIGKILL)
    assert code == -signal.SIGKILL
    _named_files_are_whole(src, dest)
    again = run_cli("--store", store, "--catalog", catalog, "restore", "many", str(dest), "--processes", "2")
    assert again.code == 2 and "not empty" in again.err  # nothing overwritten without --force
    forced = run_cli("--store", store, "--catalog", catalog, "restore", "many", str(dest), "--processes", "2",
                     "--force", "--json")
    assert forced.code == 0, forced.err
    assert forced.json()["files"] == 4000
    assert tree(dest / "many") == tree(src) and _named_files_are_whole(src, dest) == 4000


def test_ctrl_c_mid_restore_is_one_line_leaves_no_process_and_names_only_whole_files(tmp_path, home):
    import signal
    src, store, catalog = _many_small(tmp_path, home)
    dest = tmp_path / "out"
    code, err, _mark = _stop_mid_restore(tmp_path, store, catalog, dest, signal.SIGINT)
    assert code == 130 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    _named_files_are_whole(src, dest)


def test_json_include_special_bits_and_a_mount_inside_dest_as_on_threads(archived, tmp_path):
    """--json is the threads' document but for files_by_processes (and seconds, dest); a subset
    (--include), kept special bits and a directory that is another filesystem's mount point
    restore the threads' tree, modes and mtimes."""
    import json
    import subprocess
    src, store, catalog, mid = archived
    os.chmod(src / "d0" / "inner" / "f01.txt", 0o4755)
    os.chmod(src / "d0" / "inner" / "f02.txt", 0o2750)
    mid = api.archive([src], name="bits", store=store, catalog=catalog).id
    docs, mounts = [], []
    try:
        for n in (0, 2):
            dest = tmp_path / f"o{n}"
            (dest / "src" / "d0").mkdir(parents=True)
            if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(dest / "src" / "d0")],
                              capture_output=True).returncode == 0:
                mounts.append(dest / "src" / "d0")
            r = run_cli("--store", store, "--catalog", catalog, "restore", mid, str(dest), "--processes", str(n),
                        "--force", "--include", "src/d0/*", "--include", "src/d2/*", "--preserve-special-bits",
                        "--json")
            assert r.code == 0, r.err
            docs.append(json.loads(r.out))
        a, b = tmp_path / "o0", tmp_path / "o2"
        assert tree(b) == tree(a) and _mtimes(b) == _mtimes(a) and sorted(os.listdir(b / "src")) == ["d0", "d2"]
        assert tree(b / "src" / "d2") == tree(src / "d2")
        assert (b / "src" / "d0" / "inner" / "f01.txt").stat().st_mode & 0o7777 == 0o4755
    finally:
        for m in mounts:
            subprocess.run(["umount", "-l", str(m)], check=False)
    assert docs[1]["files_by_processes"] == docs[1]["files"] > 0 and docs[0]["files_by_processes"] == 0
    for d in docs:
        for k in ("files_by_processes", "seconds", "dest"):
            d.pop(k)
    assert docs[0] == docs[1]


def test_a_full_disk_in_a_worker_is_one_line_and_names_only_whole_files(archived, tmp_path):
    import subprocess
    src, store, catalog, mid = archived
    fs = tmp_path / "small"
    fs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(fs)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = run_cli("--store", store, "--catalog", catalog, "restore", mid, str(fs / "out"), "--processes", "2")
        assert r.code == 1 and "disk full" in r.err and len(r.err.strip().splitlines()) == 1, r.err
        for q in (fs / "out").rglob("*"):
            assert not is_temp_name(q.name)
            if q.is_file() and not q.is_symlink():
                assert q.read_bytes() == (src / q.relative_to(fs / "out" / "src")).read_bytes()
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def test_a_missing_pack_is_one_problem_per_file_naming_chunk_and_pack_as_on_threads(archived, tmp_path):
    src, store, catalog, mid = archived
    pack = next((Path(store) / layout.PACKS).rglob("*"))
    while pack.is_dir():
        pack = next(pack.iterdir())
    pack.unlink()
    runs = {n: run_cli("--store", store, "--catalog", catalog, "restore", mid, str(tmp_path / f"o{n}"),
                       "--processes", str(n), "--json") for n in (0, 2)}
    assert runs[0].code == runs[2].code == 1
    probs = [r.json()["problems"] for r in runs.values()]
    assert probs[0] == probs[1] and probs[0]
    paths = [p["path"] for p in probs[1]]
    assert len(paths) == len(set(paths))  # one problem a file
    for p in probs[1]:
        assert p["kind"] == "missing-chunk" and p["chunk"] and pack.name in p["detail"], p
        assert not (tmp_path / "o2" / p["path"]).exists()
    assert not [q for q in (tmp_path / "o2").rglob("*") if is_temp_name(q.name)]


def test_a_damaged_pack_on_an_s3_server_through_workers_as_on_threads(tmp_path, home, s3_server_url, monkeypatch):
    monkeypatch.setattr(procrestore, "TASK_FILES", 8)
    monkeypatch.setattr(procrestore, "DRIVER_RUNS_TASKS", False)
    src = make_tree(tmp_path / "src")
    catalog = str(tmp_path / "s3.db")
    done = api.archive([src], name="m", store=s3_server_url, catalog=catalog)
    _pack, victim = damage_packed(s3_server_url, lambda index: len(index.entries) // 2, 0x01)
    threads = api.restore(done.id, tmp_path / "t", store=s3_server_url, catalog=catalog, processes=0)
    procs = api.restore(done.id, tmp_path / "p", store=s3_server_url, catalog=catalog, processes=2)
    assert procs.files_by_processes == procs.files > 0 and procs.problems
    assert [p.line() for p in procs.problems] == [p.line() for p in threads.problems]
    assert all(p.chunk == victim.hash and not (tmp_path / "p" / p.path).exists() for p in procs.problems)
    assert tree(tmp_path / "p") == tree(tmp_path / "t")


def test_a_file_planted_mid_restore_is_never_overwritten_without_force(archived, tmp_path, monkeypatch):
    """DEST was empty when checked; a file appears at a worker's path before its link: the
    restore fails in one line naming it (--force named as the remedy), the file is untouched."""
    real_make = restorer._make_dirs
    planted = tmp_path / "out" / "src" / "d1" / "inner" / "f03.txt"

    def make_then_plant(root_fd, dirs, stop=None):  # type: ignore[no-untyped-def]
        real_make(root_fd, dirs, stop)
        planted.write_bytes(b"mine")
    monkeypatch.setattr(restorer, "_make_dirs", make_then_plant)
    with pytest.raises(DestinationError, match="src/d1/inner/f03.txt.*already exists") as e:
        _restore(archived, tmp_path / "out", 2)
    assert e.value.remedy == "force" and len(str(e.value).splitlines()) == 1
    assert planted.read_bytes() == b"mine"
    assert not [q for q in (tmp_path / "out").rglob("*") if is_temp_name(q.name)]


def test_a_ctrl_c_right_after_a_task_closes_a_file_it_put_in_place_is_an_interrupt(archived, tmp_path, monkeypatch):
    """A task run in the driver (or a worker, ended by the driver's Ctrl-C) closes each file
    once it is in place: a Ctrl-C landing just after that close must come out as
    KeyboardInterrupt, not EBADF from the `finally` closing it again (the CLI said "Bad file
    descriptor" instead of "interrupted"), with no descriptor left and only whole files named."""
    import fcntl
    import threading
    from tests.helpers import InterruptAfterClose, open_fds
    src, store, catalog, mid = archived
    before = open_fds()
    repo = api.open_repository(store, catalog)
    try:
        m = repo.load_manifest(mid)
        dest = tmp_path / "direct"
        dest.mkdir()
        st = os.stat(dest)
        rows = [procrestore.file_row(e) for e in m.entries if procrestore.eligible(e)]
        job = procrestore.RestoreJob(worker_settings(repo.settings), mid, str(dest), (st.st_dev, st.st_ino), True,
                                     0o777, rows)

        def placed_file(fd: int) -> bool:  # a file the task wrote and named (not a store read, not its probe)
            return (threading.current_thread() is threading.main_thread() and os.path.isfile(f"/proc/self/fd/{fd}")
                    and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
                    and os.fstat(fd).st_nlink > 0)
        ctrl_c = InterruptAfterClose(placed_file)
        monkeypatch.setattr(procrestore.os, "close", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            procrestore.run_job(job, repo)
        monkeypatch.setattr(procrestore.os, "close", ctrl_c.real)
    finally:
        repo.close()
    assert ctrl_c.fired and open_fds() <= before
    named = [q for q in dest.rglob("*") if q.is_file()]
    assert named and all(not is_temp_name(q.name) for q in named)
    for q in named:
        assert q.read_bytes() == (src / q.relative_to(dest / "src")).read_bytes()


def test_a_ctrl_c_right_after_any_close_of_a_task_in_the_driver_is_an_interrupt(archived, tmp_path, monkeypatch):
    """A task run in the driver (taken back from the pool), one run per descriptor it closes:
    a Ctrl-C landing right after that close is KeyboardInterrupt, never EBADF from a cleanup,
    and leaves nothing open (the other directories, DEST's fd, the task's thread)."""
    import threading
    from tests.helpers import interrupt_each_close, open_fds
    src, store, catalog, mid = archived
    repo = api.open_repository(store, catalog)
    try:
        m = repo.load_manifest(mid)
        rows = [procrestore.file_row(e) for e in m.entries if procrestore.eligible(e)]
        warm = tmp_path / "warm"  # the driver's catalog reader, opened once, stays open: not a leak
        warm.mkdir()
        st = os.stat(warm)
        procrestore.run_job(procrestore.RestoreJob(worker_settings(repo.settings), mid, str(warm),
                                                   (st.st_dev, st.st_ino), True, 0o777, rows), repo)
        before, threads = open_fds(), threading.active_count()

        def run(n: int) -> None:
            dest = tmp_path / f"d{n}"
            dest.mkdir()
            st = os.stat(dest)
            procrestore.run_job(procrestore.RestoreJob(worker_settings(repo.settings), mid, str(dest),
                                                       (st.st_dev, st.st_ino), True, 0o777, rows), repo)

        def check(n: int) -> None:
            assert open_fds() <= before and threading.active_count() <= threads, n
        n = interrupt_each_close(monkeypatch, procrestore, run, check)
    finally:
        repo.close()
    whole = [q for q in (tmp_path / f"d{n}").rglob("*") if q.is_file()]
    assert n > 10 and len(whole) == len(rows)
    for q in whole:
        assert q.read_bytes() == (src / q.relative_to(tmp_path / f"d{n}" / "src")).read_bytes()


def test_a_ctrl_c_while_the_workers_stop_still_closes_the_destination_and_the_threads(archived, tmp_path,
                                                                                       monkeypatch):
    """A Ctrl-C landing while the restore stops its workers (the pool's close, in the restore's
    `finally`): the interrupt goes up, and the restore's own threads and DEST's descriptor are
    still closed (they were skipped, DEST's fd left open for the process's life)."""
    import threading
    from tests.helpers import open_fds
    real_close = procrestore.SmallRestore.close

    def close_then_ctrl_c(self):  # type: ignore[no-untyped-def]
        real_close(self)
        raise KeyboardInterrupt
    _restore(archived, tmp_path / "warm", 2)  # (imports and the catalog's first readers: not leaks)
    before, threads = open_fds(), threading.active_count()
    monkeypatch.setattr(procrestore.SmallRestore, "close", close_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _restore(archived, tmp_path / "out", 2)
    assert not [n for n in open_fds() - before if os.readlink(f"/proc/self/fd/{n}").startswith(str(tmp_path))]
    assert threading.active_count() <= threads
