"""Small files of a restore on worker processes.

Why: restoring many small files is bound by the GIL on threads: each file's open, write,
utime, link and close are a few tens of microseconds of Python, so two threads take as long
as one. Here the small files of one chunk or none (nearly all of them) go, a sync batch a
task, to a pool of worker processes (`workerprocs.pool`: forkserver, never a fork of this
threaded process); the driver keeps the plan, the directories, every other file, the final
directory syncs and the report.

A task gets plain values (the driver's Settings, the archive id, DEST's path and identity,
and its files as tuples) and runs in a worker against a repository it opens once per
process (the store, and the catalog read-only). It plans its own reads (`plan_reads`: the
packs' spans of its chunks), reads them in pack order (`read_chunks`: every chunk decoded
and re-hashed), and stages each file exactly as the threads do (`restorer._stage_unnamed`:
the chunk's hash must be the file's BLAKE3, an empty file's that of no bytes; a damaged
chunk makes no file; `restorer._stage_file`, a temp name, where an unnamed file cannot be
named, as on threads), then makes the batch durable (`fileio.sync_together`: one syncfs) and
only then links each file into place (`restorer._link_into_place`: never replaces anything
unless `force`). So nothing is presented under its final name before it is proved and
synced; a killed worker leaves its unnamed files to vanish with it. The directories the
files were linked into are synced by the driver before the restore reports (`sync_dirs`).

A task opens DEST by path and refuses to write unless it is the very directory the driver
opened (same device and inode), and walks below it with `restorer._open_dir` (never through
a symlink), so a swapped DEST or a planted symlink cannot redirect a write. Every manifest
check (paths, links, signatures) is made by the driver before any worker starts."""
from __future__ import annotations

import functools
import os
import sys
import threading
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from typing import Any

from archiver import executors, workerprocs
from archiver.errors import ArchiverError, UnsafePathError
from archiver.problems import Problem
from archiver.rayexec import call_catching
from archiver.settings import Settings
from manifests.model import ChunkRef, Entry

__all__ = ["AUTO_IDLE_CORES", "AUTO_MIN_FILES", "RestoreJob", "SmallRestore", "eligible", "resolve", "run_job"]

# Auto mode uses worker processes only for at least this many small files: the pool's start
# (a fork server importing the restore path, then each worker's store and catalog) costs
# about 0.3 CPU-s, which the two cores' share of the per-file work must cover (as archive's
# procfiles.AUTO_MIN_FILES; bench/RESULTS.md, "Small-file restore on worker processes").
AUTO_MIN_FILES = 10_000
# ... and only when the rest of the machine left at least this many cores idle since the
# restore started (`workerprocs.CpuSample`): on a busy machine the workers only add their
# start to the same share of CPU.
AUTO_IDLE_CORES = 1.0
# Files per task: one sync batch (restorer.SYNC_BATCH_FILES): a task syncs once, and the
# workers' syncs overlap the other worker's writing.
TASK_FILES = 2048

# The driver runs tasks too, taken back from the pool while it has not started them
# (`SmallRestore.wait`): its core is otherwise idle until the workers are done, and the
# pool's start is then off the critical path.
DRIVER_RUNS_TASKS = True

# What the fork server imports once, so each worker forks with the restore path loaded.
PRELOAD = ["archiver.procrestore", "archiver.restorer", "archiver.repository", "archiver.stores"]


def preload() -> list[str]:
    """PRELOAD, and the CLI's module when the driver runs it (each worker imports the driver's
    `__main__` again: archiver.procfiles.preload)."""
    return PRELOAD + (["archiver.cli"] if "archiver.cli" in sys.modules else [])


def eligible(e: Entry) -> bool:
    """A file a worker restores: a regular small file of one chunk or none (the rest, and a
    file whose chunk list is still in an unfetched file map, stay on the driver's threads)."""
    return e.is_file and not e.target and e.resolved and len(e.chunks) <= 1


def resolve(requested: int | None, *, small_files: int, local: bool, sealed: bool, has_settings: bool,
            distributed: bool, busy: float | None = None) -> int:
    """How many worker processes restore the small files: `requested` (0: none, on threads;
    None: auto, one per core but the driver's for AUTO_MIN_FILES small files or more on a
    local store, two cores or more and AUTO_IDLE_CORES of them idle: `busy`, the cores the rest of the
    machine kept busy (`CpuSample.others_busy`), else the 1-minute load average). Only a
    store opened from Settings (a worker reopens it), unsealed (its keys live in this
    process), with the local executor, can; an explicit count otherwise is refused."""
    possible = not sealed and has_settings and not distributed
    why = "an unsealed store (its keys stay in this process)" if sealed else "the local executor" if distributed else \
        "a repository opened from Settings (archiver.api.open_repository)"
    n = workerprocs.requested_count(requested, None if possible else f"worker processes need {why}")
    if n is not None:
        return n
    if not possible or not local or small_files < AUTO_MIN_FILES:
        return 0
    return workerprocs.auto_count(idle=AUTO_IDLE_CORES, busy=busy, leave=1)  # the driver runs tasks too (`SmallRestore.wait`)


# One file of a task: (path, mode, mtime_ns, size, blake3, chunk or None), the chunk as
# (offset, length, hash, stored_size, codec): ChunkRef's fields.
FileRow = tuple[str, int, int, int, str, tuple[int, int, str, int, str] | None]


def file_row(e: Entry) -> FileRow:
    """`e` (`eligible`) as plain values for a task."""
    c = e.chunks[0] if e.chunks else None
    return (e.path, e.mode, e.mtime_ns or 0, e.size, e.blake3,
            None if c is None else (c.offset, c.length, c.hash, c.stored_size, c.codec))


@dataclass(frozen=True)
class RestoreJob:
    """One task: plain values only (it is pickled to a worker). `root_id`: (st_dev, st_ino) of
    the DEST the driver opened; the worker writes nothing below another."""

    settings: Settings
    mid: str
    root: str
    root_id: tuple[int, int]
    force: bool
    mode_mask: int
    files: list[FileRow]


@dataclass
class RestoreDone:
    """What a task returns: the files put in place and their bytes, each damaged file's
    problem (none of them made), and the parent directories linked into (not yet synced)."""

    files: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    pid: int = field(default_factory=os.getpid)  # the process that restored them (the driver, or a worker)


@functools.lru_cache(maxsize=2)
def _repository(settings: Settings) -> Any:
    """This worker's repository, opened once per process: the store, and the catalog
    read-only (never created, migrated or locked)."""
    from archiver.repository import Repository
    return Repository.open(settings, read_only=True)


def _open_root(job: RestoreJob) -> int:
    """DEST, opened without following a symlink, and only if it is the directory the driver opened."""
    from archiver import restorer
    try:
        fd = os.open(job.root, restorer._DIR_FLAGS)
    except OSError as err:
        raise UnsafePathError(f"destination {job.root} cannot be opened by a worker: {err.strerror}") from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != job.root_id:
        os.close(fd)
        raise UnsafePathError(f"destination {job.root} was replaced during the restore; nothing more is written")
    return fd


def run_job(job: RestoreJob, repo: Any = None) -> RestoreDone:
    """Restore a task's files in this worker process (see the module doc), or in the driver
    through its own repository `repo` (a task it took back from the pool)."""
    from concurrent.futures import ThreadPoolExecutor
    from archiver import fileio, restorer
    from archiver.parallel import BATCH_BYTES, batches
    from archiver.progress import Progress
    repo = repo if repo is not None else _repository(job.settings)
    entries = [Entry(path=p, type="file", mode=mode, size=size, mtime_ns=mtime, blake3=b3,
                     chunks=() if c is None else (ChunkRef(*c),)) for p, mode, mtime, size, b3, c in job.files]
    out = RestoreDone()
    chunked = [e for e in entries if e.chunks]
    if chunked:
        repo.plan_reads([e.chunks[0] for e in chunked])
        pos = repo.pack_positions(e.chunks[0].hash for e in chunked)
        chunked.sort(key=lambda e: pos.get(e.chunks[0].hash, ("", 0)))
    progress = Progress()
    root_fd = _open_root(job)
    dirs: dict[str, int] = {}
    one_per_fs: dict[int, int] = {}  # a directory fd of each filesystem written to: one syncfs each
    staged: list[Any] = []
    pool = ThreadPoolExecutor(1, thread_name_prefix="restore-task")  # only a file that falls back to a temp name
    try:
        try:  # as on threads: where an unnamed file cannot be named (no /proc), temp names
            unnamed = fileio.unnamed_files(root_fd)
        except OSError as err:
            restorer._raise_write_error(entries[0].path, err)
        # read a run of about parallel.BATCH_BYTES at a time and write it, as on threads: the
        # task's chunks read at once held up to all of it (2,048 files of 1 MiB) in memory
        todo = [e for e in entries if not e.chunks] + chunked
        for run in batches(todo, lambda e: e.size, len(todo), BATCH_BYTES):
            got = iter(repo.read_chunks([e.chunks[0] for e in run if e.chunks], views=True))
            for e in run:
                parent, _, name = e.path.rpartition("/")
                dir_fd = dirs.get(parent)
                if dir_fd is None:
                    dir_fd = dirs[parent] = restorer._open_dir(root_fd, parent.split("/") if parent else [],
                                                               create=True)
                    one_per_fs.setdefault(os.fstat(dir_fd).st_dev, dir_fd)
                chunk = next(got) if e.chunks else None
                if unnamed:
                    restorer._stage_unnamed(repo, job.mid, dir_fd, name, e, chunk, pool, staged, out.problems,
                                            progress, job.mode_mask)
                else:
                    restorer._stage_file(repo, job.mid, dir_fd, e, pool, staged, out.problems, progress,
                                         job.mode_mask, chunk)
            del got, chunk  # (the run's chunks and spans go before the next run is read)
        try:
            fileio.sync_together([s.fd for s in staged], within=list(one_per_fs.values()))
        except OSError as err:
            restorer._raise_write_error(staged[0].entry.path, err)
        for i, s in enumerate(staged):
            try:
                if s.tmp:
                    restorer._check_target(s.dir_fd, s.name, s.entry.path, job.force)
                    os.rename(s.tmp, s.name, src_dir_fd=s.dir_fd, dst_dir_fd=s.dir_fd)  # still locked
                else:
                    restorer._link_into_place(s.fd, s.dir_fd, s.name, s.entry.path, job.force)
            except OSError as err:
                restorer._raise_write_error(s.entry.path, err)
            s.tmp = ""
            fd, s.fd = s.fd, -1  # marked closed first: a Ctrl-C between the two must not close it twice
            os.close(fd)
            out.files += 1
            out.bytes += s.entry.size
        out.parents = sorted(dirs)
    finally:
        try:
            for s in staged:  # not put in place (an error): unnamed ones vanish, temp names are removed
                restorer._discard(s.dir_fd, s.tmp, s.fd)
        finally:  # (each step whatever the one before raised: a Ctrl-C landing in a close, say)
            try:
                restorer._close_all([*dirs.values(), root_fd])
            finally:
                pool.shutdown()
    return out


def _call(job: RestoreJob) -> Any:
    """`run_job`, an ArchiverError coming back as plain values (rayexec.Failure)."""
    return call_catching(run_job, job)


def tasks_of(rows: list[FileRow], per_task: int = TASK_FILES,
             most_bytes: int | None = None) -> list[list[FileRow]]:
    """`rows` in tasks of at most `per_task` files and about `most_bytes` bytes (the threads'
    sync batch, restorer.SYNC_BATCH_BYTES: a task is one sync batch, so its sync waits for no
    more written data than a threads' batch does), in order."""
    from archiver.parallel import batches
    from archiver.restorer import SYNC_BATCH_BYTES
    return list(batches(rows, lambda r: r[3], per_task, SYNC_BATCH_BYTES if most_bytes is None else most_bytes))


class SmallRestore:
    """The driver's side. A thread of its own starts the pool and hands it the tasks one by
    one from the front (a fork server's start blocks its caller until it has imported the
    preload), so the driver goes on meanwhile; `wait` runs tasks on the driver too, taken
    from the back (and back from the pool, any it has not started): the pool's start is not
    on the critical path, and the driver's core is not left idle. Results are taken in order
    of completion; the first error stops the handing out, cancels the tasks not started and
    is raised once the running ones have ended. `close` (always) stops the workers and the
    fork server: no process outlives the restore."""

    def __init__(self, processes: int, jobs: list[RestoreJob]) -> None:
        self._futures: dict[Future[Any], RestoreJob] = {}
        self._jobs = list(jobs)  # not handed out yet: the pool takes from the front, the driver from the back
        self._lock = threading.Lock()
        self._closed = False
        self._stopped = False  # an error: no more tasks handed out
        self._pool: workerprocs.WorkerPool | None = None
        self._start_error: BaseException | None = None
        self._starter = threading.Thread(target=self._start, args=(processes,), name="restore-procs", daemon=True)
        self._starter.start()

    def _start(self, processes: int) -> None:
        try:
            with workerprocs.sheltered():  # SIGINT blocked here: server and workers are born with it blocked
                with self._lock:
                    if self._closed or not self._jobs:
                        return
                    self._pool = workerprocs.pool(processes, preload())
                pool = self._pool
                while True:
                    with self._lock:
                        if self._closed or not self._jobs:
                            return
                        job = self._jobs.pop(0)
                    # the first submit starts the workers (and the fork server): no lock is held
                    # meanwhile, so the driver takes tasks from the back; `close` joins this thread
                    fut = pool.submit(_call, job)
                    with self._lock:
                        self._futures[fut] = job
                        if self._closed or self._stopped:
                            fut.cancel()
        except BaseException as e:  # noqa: BLE001 - raised by `wait` on the driver's thread
            self._start_error = e

    def _take_back(self) -> RestoreJob | None:
        """A task not handed out yet, or one the pool has not started (cancelled there), else None."""
        with self._lock:
            if self._jobs:
                return self._jobs.pop()
            for fut in reversed(list(self._futures)):
                if not fut.cancelled() and fut.cancel():  # (cancel() is True again for one cancelled already)
                    return self._futures.pop(fut)  # run here: never taken back twice, nor awaited
        return None

    def wait(self, take: Any, repo: Any) -> None:
        """Run tasks here through `repo` while there are any left, then `take(RestoreDone)` for
        each task that succeeded anywhere; then the first error, if any, is raised (ArchiverError;
        a dead worker is one TaskLostError naming the task's first file)."""
        error: ArchiverError | None = None
        while error is None and DRIVER_RUNS_TASKS:
            job = self._take_back()
            if job is None:
                break
            try:
                take(run_job(job, repo))
            except ArchiverError as e:
                error = e
                self.close_pending()
        self._starter.join()
        if self._start_error is not None and error is None:
            error = executors.TaskLostError("restore", f"worker processes could not start "
                                                       f"({type(self._start_error).__name__}: {self._start_error})")
        for fut in as_completed(list(self._futures)):
            if fut.cancelled():
                continue
            got = workerprocs.take_result(fut, self._futures[fut].files[0][0], take)
            if got is None:
                continue
            if error is None:
                error = got
                self.close_pending()
        if error is not None:
            raise error

    def close_pending(self) -> None:
        """Hand out no more tasks, and cancel those the pool has not started."""
        with self._lock:
            self._stopped = True
            self._jobs.clear()
            for f in self._futures:
                f.cancel()

    def close(self) -> None:
        """Cancel the tasks not started, wait for the running ones, stop the workers (and the
        fork server this pool started): no process outlives the restore."""
        with self._lock:
            self._closed = True
        self.close_pending()
        self._starter.join()
        if self._pool is not None:
            workerprocs.close(self._pool)
