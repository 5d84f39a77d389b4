"""Small files of a local archive on worker processes, big ones on the driver's threads.

A first archive of many small files is bound by the GIL: each file's read, BLAKE3, SHA-256
and codec round trip take a few tens of microseconds of Python, so two threads take as long
as one. Here the runs of small files (`fanout.local_batches`) go, a few thousand files a
task, to a process pool of `processes` workers ('forkserver': never a fork of a threaded
process), while files of `fanout.BATCH_FILE_BELOW` or more stay on the driver's threads.

A task gets plain values (Settings, chunk and write policies, its Sources) and runs the
threaded path's own batch code (`fanout.LocalArchiveBatch`) against a repository it opens
once per process: the store, and the catalog READ-ONLY (a chunk the catalog knows is
proved, not stored again, by the same rules as on threads). Its packs are task-scoped: it
writes every pack it filled, the last one too, and waits for them before it returns the
files' entries and the indexes of its packs (never object bytes). The driver then adopts
those packs (`Repository.adopt_packs`: recorded at its next flush, found by its dedup, not
trusted), journals the task's files (their chunks are durable now), and before the commit
proves by LIST that every chunk named is in the store at its size (`fanout.check_chunks_stored`).
A task that fails leaves only unreferenced objects behind (the orphan rules apply).

The pool starts while the driver still scans (`PoolStarter`), the tasks are guided (`tasks_of`:
big first, shrinking, so the workers finish together after few hand-offs), a worker holds its
directory descriptors across its tasks and lays out its files' journal lines, and the pool stops
beside the commit (bench/RESULTS.md, "Small-file archive: the worker phase (branch sfworkers)")."""
from __future__ import annotations

import dataclasses
import functools
import io
import os
import pickle
import sys
import threading
import time
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from archiver import executors, heap, workerprocs
from archiver.chunking import ChunkPolicy
from archiver.packs import PackIndex
from archiver.rayexec import call_catching
from archiver.scan import Source, child
from archiver.settings import Settings

if TYPE_CHECKING:
    from concurrent.futures.process import BrokenProcessPool

# Auto mode uses processes only for at least this many small files: a small file costs about
# 90 us of CPU wherever it runs, so two workers save about 45 us of wall a file on an idle
# machine, against about 0.3 s to start the pool and a hand-off per file on the driver
# (bench/RESULTS.md, "Small files on worker processes (branch sfproc)").
AUTO_MIN_FILES = 10_000
# ... and only when at least this many cores were left idle by the rest of the machine since
# the archive started (its scan: `CpuSample`), else by the 1-minute load average: the pool's
# workers share this session's CPU with the rest of the machine, so on a busy machine they add
# their start-up and hand-off to the same share and lose (same section).
AUTO_IDLE_CORES = 1.0


# What the fork server imports once, so each worker forks with it loaded instead of importing
# it again (the per-file path: codecs, hashing, format detection with numpy, the store).
PRELOAD = ["archiver.procfiles", "archiver.fanout", "archiver.pipeline", "archiver.repository",
           "archiver.stores"]


def preload() -> list[str]:
    """PRELOAD, and the CLI's module when the driver runs it: each worker imports the driver's
    `__main__` again (the `archiver` console script imports archiver.cli; `python -m
    archiver.cli` runs it), so the server imports it once for all of them."""
    return PRELOAD + (["archiver.cli"] if "archiver.cli" in sys.modules else [])


# Runs of a task in flight at once in a worker (threads): a full pack's write and fsync block
# only the thread that filled it.
RUN_THREADS = 2
# Explicit processes: the pool starts during the scan once it has seen this many small files.
EARLY_FILES = 1
# Auto: the pool starts during the scan only once the rest of the machine was watched this long
# (seconds since the archive started): a shorter look could take a passing lull for an idle
# core, and on a busy machine the pool costs wall as well as CPU (bench/RESULTS.md).
EARLY_MEASURE_S = 0.2
# Tasks (`tasks_of`): each hand-off costs the worker about as much idle wall as a few hundred
# files' work (its Sources and entries pickled and sent, the task's last pack written and
# fsynced before it returns: bench/RESULTS.md, "Small-file archive: the worker phase (branch
# sfworkers)"), so the work is cut in few tasks, shrinking towards the end so that the workers
# still finish together: each task takes 1/(GUIDE * processes) of the work not yet handed out,
# at least MIN_SHARE of the whole, at most TASK_FILES files.
TASK_FILES = 4000
FIRST_TASK_FILES = 1500
GUIDE = 2
MIN_SHARE = 0.03
# A file's fixed work (open, fstats, entry, hand-off) in bytes of content read, hashed and encoded.
FILE_WEIGHT = 12 << 10


def resolve(requested: int | None, *, small_files: int, local: bool, sealed: bool, has_settings: bool,
            load: float | None = None) -> int:
    """How many worker processes archive the small files: `requested` (0: none, on threads;
    None: auto, one per core when there are at least AUTO_MIN_FILES small files, two cores or
    more, and AUTO_IDLE_CORES of them idle: `load`, the cores the rest of the machine keeps
    busy (`CpuSample.others_busy`), else the 1-minute load average). Only the local executor on an unsealed store opened from Settings can: a sealed
    run's key lives in the driver, and a worker reopens the store from the driver's Settings."""
    possible = local and not sealed and has_settings
    why = "an unsealed store (its keys stay in this process)" if sealed else "the local executor" if not local else \
        "a repository opened from Settings (archiver.api.open_repository)"
    n = workerprocs.requested_count(requested, None if possible else f"worker processes need {why}")
    if n is not None:
        return n
    if not possible or small_files < AUTO_MIN_FILES:
        return 0
    return auto_count(load)


def auto_count(busy: float | None) -> int:
    """Auto's count, the small files being many: one per core, with two cores or more and
    AUTO_IDLE_CORES of them left idle by the rest of the machine (`busy`: the cores it kept
    busy, else the 1-minute load average), else 0."""
    return workerprocs.auto_count(idle=AUTO_IDLE_CORES, busy=busy)


def tasks_of(runs: list[list[Source]], per_task: int | None = None, processes: int = 1) -> list[list[list[Source]]]:
    """The small-file runs grouped into tasks, in order: each task about 1/(GUIDE * processes)
    of the work still to hand out (guided: big tasks first, then smaller ones, so the workers
    finish together after few hand-offs), never less than MIN_SHARE of the whole nor more than
    `per_task` (TASK_FILES) files, the first `processes` tasks not more than FIRST_TASK_FILES (the
    workers wait for their first job's pickling and sending). Work is estimated as bytes plus
    FILE_WEIGHT per file."""
    per_task = per_task or TASK_FILES
    first = min(per_task, FIRST_TASK_FILES)  # each worker's first task: its job pickled and sent in less time
    weights = [sum(s.size for s in run) + FILE_WEIGHT * len(run) for run in runs]
    left = total = sum(weights)
    out: list[list[list[Source]]] = []
    files = weight = 0
    target = 0.0
    for run, w in zip(runs, weights):
        if not out or files >= (first if len(out) <= processes else per_task) or weight >= target:
            target = max(left / (GUIDE * max(1, processes)), total * MIN_SHARE)
            out.append([])
            files = weight = 0
        out[-1].append(run)
        files += len(run)
        weight += w
        left -= w
    return out


def _file_source(parent: Source, name: str, path: str, size: int, mode: int, dev: int, ino: int,
                 mtime_ns: int | None, link: str | None, followed: bool, blob: str | None,
                 seen: tuple[int, int, int, int, int] | None) -> Source:
    """A file's Source as `_JobPickler` sent it: its absolute path made from its directory's. Its
    fields are set in its `__dict__`, as `unflat_all` sets an Entry's (a frozen dataclass's
    `__init__` costs a worker more, in the wait between two of its tasks)."""
    src = _new(Source)
    src.__dict__.update(path=path, abspath=child(parent.abspath, name), is_dir=False, size=size, mode=mode, dev=dev,
                        ino=ino, parent=parent, mtime_ns=mtime_ns, link=link, followed=followed, blob=blob, seen=seen)
    return src


_new = object.__new__


class _JobPickler(pickle.Pickler):
    """Pickles a job's file Sources as their directory (pickled once) plus their fields: a Path
    unpickles from its parts, which cost a worker about as much as the rest of the Source, and a
    worker waits for its next job's unpickling between two tasks. A Source whose path is not its
    directory's path and its name (none the scan makes) is pickled as it is."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Source and not obj.is_dir and obj.parent is not None:
            name = _name_under(str(obj.abspath), str(obj.parent.abspath))
            if name:
                return (_file_source, (obj.parent, name, obj.path, obj.size, obj.mode, obj.dev, obj.ino,
                                       obj.mtime_ns, obj.link, obj.followed, obj.blob, obj.seen))
        return NotImplemented


def _name_under(path: str, parent: str) -> str:
    """The last component of absolute `path` if `path` is `parent` joined with it, else "":
    `_JobPickler`'s test, on the paths' strings (pathlib keeps them) rather than by making
    and comparing each file's parent Path, which cost the driver's feeder thread about as much
    as the rest of the Source's pickling, while the workers need both cores."""
    head, _, name = path.rpartition("/")
    if name in ("", ".", "..") or (head or "/") != parent:
        return ""
    return name


def _job_of(blob: bytes) -> "SmallJob":
    with heap.frozen():  # the collector walks the job's new objects, not the worker's every module
        return SmallJob(*pickle.loads(blob))


@dataclass(frozen=True)
class SmallJob:
    """One task: plain values only (it is pickled to a worker, its Sources by `_JobPickler`)."""

    settings: Settings
    policy: ChunkPolicy
    write_policy: Any
    trust_verified_within: float | None
    runs: list[list[Source]]
    journal_lines: bool = False  # the driver journals this run: make each file's line here (journal.line_of)

    def __reduce__(self) -> tuple[Any, ...]:
        buf = io.BytesIO()
        _JobPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(tuple(getattr(self, f.name)
                                                                      for f in dataclasses.fields(self)))
        return (_job_of, (buf.getvalue(),))


# Entry's fields, in the order `_flat` sends a plain file's: a field added to Entry fails the
# tests (tests/test_procfiles.py) until the flat form carries it too.
FLAT_FIELDS = ("path", "type", "mode", "size", "mtime_ns", "blake3", "sha256", "format", "chunks", "tech",
               "target", "filemap", "chunk_count")


def _flat(done: Any) -> tuple[Any, ...]:
    """A FileDone as plain tuples (unpickling a dataclass per entry and per chunk ref cost the
    driver more than the entry's whole archive did on threads)."""
    e = done.entry
    if e.type != "file" or e.target or e.filemap:
        return (done,)  # not a small file's entry: as it is
    return (e.path, e.mode, e.size, e.mtime_ns, e.blake3, e.sha256, e.format,
            tuple((c.offset, c.length, c.hash, c.stored_size, c.codec) for c in e.chunks), e.tech,
            done.snapshot, done.new_chunks, done.new_bytes, done.repaired_chunks)


def unflat(row: tuple[Any, ...]) -> Any:
    """The FileDone `_flat` made `row` from."""
    return unflat_all([row])[0]


def unflat_all(rows: list[tuple[Any, ...]]) -> list[Any]:
    """The FileDones `_flat` made `rows` from (the driver's per-file work on a worker's task: the
    imports are looked up once, not once per file). Each Entry is made as its dataclass `__init__`
    would make it, its fields set in its own `__dict__` (a frozen dataclass's `__init__` sets them
    one `object.__setattr__` at a time, at a higher cost: bench/RESULTS.md, "Small-file
    archive: the workers' CPU per file (branch sfworkcpu)"); equal to `Entry(...)` (tested)."""
    from archiver.fanout import FileDone
    from manifests.model import ChunkRef, Entry
    new = object.__new__
    out = []
    for row in rows:
        if len(row) == 1:
            out.append(row[0])
            continue
        path, mode, size, mtime_ns, b3, sha, fmt, chunks, tech, snapshot, new_chunks, new_bytes, repaired = row
        entry = new(Entry)
        entry.__dict__.update(path=path, type="file", mode=mode, size=size, mtime_ns=mtime_ns, blake3=b3, sha256=sha,
                              format=fmt, chunks=tuple([ChunkRef(*c) for c in chunks]), tech=tech, target="",
                              filemap="", chunk_count=0)
        out.append(FileDone(entry, snapshot, new_chunks, new_bytes, repaired))
    return out


@functools.lru_cache(maxsize=1)
def _worker_batch() -> type:
    """`fanout.LocalArchiveBatch` for a worker's runs: the same reads, checks, catalog hints and
    chunk saves, but a plain small file (no format its head is recognised as, no tech, not a
    Hugging Face blob: nearly all of them) is handed to `on_row` as `_flat`'s row, with its
    snapshot and chunk for its journal line (`journal.small_line`), made straight from its
    values: no Entry, FileDone or ChunkRef made here only to be taken apart again (bench/RESULTS.md,
    "Small-file archive: the workers' CPU per file (branch sfworkcpu)"). Every other file goes
    through the batch's own path (`on_done`). Made once, on first use (fanout imports this
    module), with what a file's save needs looked up then, not once per file."""
    import hashlib
    from archiver import fanout, pipeline
    sha256, small_format, empty, snapshot_after = (hashlib.sha256, pipeline.small_format, pipeline._EMPTY_DIGEST,
                                                   fanout.snapshot_after)

    class WorkerBatch(fanout.LocalArchiveBatch):
        def __init__(self, *args: Any, on_row: Callable[[tuple[Any, ...], Any], None], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.on_row = on_row

        def _saved_small(self, got: Any, b3: str | None, hints: Any) -> Any:
            """A plain small file's result as (`_flat`'s row, (snapshot, chunk) for its journal
            line); any other file's, the batch's own (a FileDone)."""
            src, data = got.src, got.data
            fmt, tech = ("", None) if src.blob is not None else small_format(data, src.abspath.name)
            if src.blob is not None or fmt or tech is not None:
                return super()._saved_small(got, b3, hints)
            before = got.before
            size, mtime_ns = before.st_size, before.st_mtime_ns
            chunk: tuple[int, str, int, str] | None = None
            chunks: tuple[tuple[Any, ...], ...] = ()
            if data:
                self.progress.advance(len(data))
                sha = sha256(data).hexdigest()
                saved = self.writer.saved(data, 0, b3, hints)
                chunk = (len(data), b3, saved.stored_size, saved.codec)
                chunks = ((0, len(data), b3, saved.stored_size, saved.codec),)
            else:
                b3, sha = empty.blake3, empty.sha256
            snap = snapshot_after(src, size, mtime_ns, got.after)
            return (src.path, src.mode, size, mtime_ns, b3, sha, "", chunks, None, snap, 0, 0, 0), (snap, chunk)

        def _hand_on(self, src: Source, done: Any) -> None:
            if type(done) is tuple:  # a plain file's (row, line values)
                self.on_row(*done)
            else:
                self.on_done(src, done)
    return WorkerBatch


@dataclass
class SmallDone:
    """What a task returns: each file's FileDone (as `_flat` rows), and the packs it wrote (all durable)."""

    files: list[tuple[Any, ...]] = field(default_factory=list)
    packs: list[PackIndex] = field(default_factory=list)
    new_chunks: int = 0
    new_bytes: int = 0
    repaired_chunks: int = 0
    repaired: frozenset[str] = frozenset()  # the chunks counted in repaired_chunks (not in new_chunks)
    lines: bytes = b""  # the files' journal lines, in `files` order (SmallJob.journal_lines)


@functools.lru_cache(maxsize=2)
def _repository(settings: Settings) -> Any:
    """This worker's repository for one store, opened once per process: the store, and the
    catalog read-only (never created, migrated or locked; the driver is its one writer)."""
    from archiver.repository import Repository
    return Repository.open(settings, read_only=True)


@functools.lru_cache(maxsize=1)
def _held_dirs() -> Any:
    """This worker's directory descriptors, held across its tasks: a task's files come from all
    over the tree (largest first), so a descriptor per task would reach and check every
    directory's whole chain again in each task. A worker lives for one archive run (its pool's),
    the run the threaded path holds its DirFds for; the process's exit closes them."""
    from archiver.scan import DirFds
    return DirFds()


def run_job(job: SmallJob, dirs: Any = None) -> SmallDone:
    """Archive a task's runs of small files in this worker process (see the module doc).
    `dirs` (scan.DirFds): held directory descriptors to open its files relative to (None: the
    task's own, closed when it ends)."""
    from concurrent.futures import ThreadPoolExecutor
    from archiver import pipeline
    from archiver.parallel import window_for
    from archiver.progress import Progress
    from archiver.journal import line_of, small_line
    from archiver.scan import DirFds
    repo = _repository(job.settings)
    stats = pipeline._Stats()
    writer = pipeline._ChunkWriter(repo, stats, job.trust_verified_within, job.write_policy)
    out = SmallDone()
    own_dirs = dirs is None
    if dirs is None:
        dirs = DirFds()
    pool = ThreadPoolExecutor(2, thread_name_prefix="task")  # chunked files (cdc_min up to BATCH_FILE_BELOW)
    try:
        lines: list[bytes] = []

        def on_done(_src: Source, done: Any) -> None:
            # the journal line is laid out here, on a core of its own, not on the driver's
            if job.journal_lines:
                lines.append(line_of(done.entry, done.snapshot))
            out.files.append(_flat(done))

        def on_row(row: tuple[Any, ...], line: tuple[list[int], Any]) -> None:  # a plain small file's
            if job.journal_lines:
                lines.append(small_line(row[0], line[0], row[1], row[2], row[3], row[4], row[5], line[1]))
            out.files.append(row)
        task = _worker_batch()(writer, pool, job.policy, window_for(2), Progress(), dirs, on_done=on_done,
                               on_row=on_row)
        # two runs at a time: one's pack write and fsync (the GIL released) overlaps the other's work
        runs = ThreadPoolExecutor(RUN_THREADS, thread_name_prefix="run")
        try:
            for _ in runs.map(task, job.runs):
                pass
        finally:  # after an error, the runs not started are not started
            runs.shutdown(wait=True, cancel_futures=True)
        out.packs = repo.task_packs()  # every pack of this task is durable before it returns
        out.lines = b"".join(lines)
    except BaseException:
        try:  # the next task of this process starts with no open or failed pack of this one
            repo.task_packs()
        except BaseException:  # noqa: BLE001 - the first error is the one to report
            pass
        raise
    finally:
        pool.shutdown(wait=True)
        if own_dirs:
            dirs.close()
    out.new_chunks, out.new_bytes, out.repaired_chunks = stats.new_chunks, stats.new_bytes, stats.repaired_chunks
    out.repaired = frozenset(h for h, saved in writer.done.items() if saved.repaired)
    return out


def _call(job: SmallJob) -> Any:
    """`run_job`, an ArchiverError coming back as plain values (rayexec.Failure): an error
    with a keyword constructor does not unpickle. The job's Sources and this worker's modules
    and repository live through the task: out of the collector's walks (archiver.heap)."""
    with heap.frozen():
        return call_catching(functools.partial(run_job, dirs=_held_dirs()), job)


def worker_settings(settings: Settings) -> Settings:
    """The driver's Settings with the S3 endpoint it resolved written into the S3 options, so a
    worker reaches the same service whatever its environment (as Settings.with_store does)."""
    if settings.endpoint and not settings.s3.endpoint_url:
        return dataclasses.replace(settings, s3=dataclasses.replace(settings.s3, endpoint_url=settings.endpoint))
    return settings


def _warm(settings: Settings) -> None:
    """A worker's first call, while the driver still scans: open its repository (`_repository`,
    kept for the tasks). An error here is left for the first task, which raises it again and
    reports it as its own."""
    try:
        _repository(settings)
    except Exception:  # noqa: BLE001 - the first task opens it again and reports the error
        pass


class PoolStarter:
    """Starts the small files' worker pool while the scan is still running, so the fork server's
    imports and the workers' start overlap the scan instead of following it.

    The scan reports each directory (`watch`); once it has seen `EARLY_FILES` files below
    `fanout.BATCH_FILE_BELOW` (explicit processes) or AUTO_MIN_FILES (auto, and AUTO_IDLE_CORES
    idle since `cpu_since`: `resolve`'s rule, decided at the first directory after which that can
    be measured; else after the scan, by archive_files, as before), and the files cache has no
    row under the paths archived (a re-archive may read no file at all) or every file is read
    again, a thread of its own starts the pool and opens each worker's repository (`_warm`).
    `archive_files` takes the pool (`take`) and uses it when its own count agrees; whoever holds
    it last closes it: `close` stops a pool nobody took (an error or Ctrl-C during the scan)."""

    def __init__(self, requested: int | None, settings: Settings, *, files_cache: Path, tops: list[str],
                 reread: bool, cpu_since: workerprocs.CpuSample | None) -> None:
        self._requested, self._settings, self._cpu_since = requested, settings, cpu_since
        self._files_cache, self._tops, self._reread = files_cache, tops, reread
        self._seen = self._small = 0
        self._decided = False
        self._thread: threading.Thread | None = None
        self._pool: workerprocs.WorkerPool | None = None
        self._closing: list[threading.Thread] = []
        self.processes = 0

    @classmethod
    def for_archive(cls, repo: Any, executor: Any, processes: int | None, paths: list[Any], *,
                    reread: bool) -> "PoolStarter | None":
        """A starter for `pipeline.archive`'s scan, or None where no pool may start early: no
        processes asked for (0, or a count `resolve` refuses), not the local executor, a sealed
        store or a repository not opened from Settings (`resolve` refuses or declines those after the scan)."""
        from archiver.filescache import cache_path
        explicit = isinstance(processes, int) and not isinstance(processes, bool) and processes > 0
        settings = getattr(repo, "settings", None)
        if not (processes is None or explicit) or settings is None or repo.sealed or \
                not (executor is None or getattr(executor, "batch_small_files", False)):
            return None
        try:
            files_cache = cache_path(repo.catalog_path)
        except AttributeError:  # a repository without a catalog: archive_files decides after the scan
            return None
        return cls(processes, worker_settings(settings), files_cache=files_cache,
                   tops=[os.path.abspath(os.fspath(p)) for p in paths], reread=reread,
                   cpu_since=workerprocs.CpuSample.now() if processes is None else None)

    def watch(self, sources: list[Source]) -> None:
        """`scan`'s report of the sources found so far (after each directory)."""
        heap.settle()
        if self._decided:
            return
        from archiver.fanout import BATCH_FILE_BELOW
        new = sources[self._seen:]
        self._seen = len(sources)
        self._small += sum(1 for s in new if not s.is_dir and not s.is_link and s.size < BATCH_FILE_BELOW)
        need = EARLY_FILES if self._requested else AUTO_MIN_FILES
        if self._small < need:
            return
        busy = None
        if not self._requested and self._cpu_since is not None:
            if time.monotonic() - self._cpu_since.wall < EARLY_MEASURE_S:
                return  # the rest of the machine not yet watched long enough: a later directory decides
            busy = self._cpu_since.others_busy()
            if busy is None and self._cpu_since.machine is not None:
                return  # too soon to tell how busy the rest of the machine is: a later directory decides
        self._decided = True
        n = self._requested or auto_count(busy)
        if not n or not self._all_read():
            return
        self.processes = n
        self._thread = threading.Thread(target=self._start, name="small-files-pool", daemon=True)
        self._thread.start()

    def _all_read(self) -> bool:
        """Whether every file will be read (no files cache row under the paths, or reread):
        otherwise the files cache may leave the workers nothing to do."""
        if self._reread:
            return True
        from archiver.filescache import FilesCache
        cache = FilesCache.open(self._files_cache)
        if cache is None:
            return True  # FilesRun cannot open it either: every file is read
        try:
            return not cache.any_under(self._tops)
        except Exception:  # noqa: BLE001 - cannot tell: the pool starts after the files cache, as before
            return False
        finally:
            cache.close()

    def _start(self) -> None:
        started: list[workerprocs.WorkerPool] = []
        try:
            with workerprocs.sheltered():  # SIGINT blocked here: the server and workers are born with it blocked
                pool = workerprocs.pool(self.processes, preload())
                started.append(pool)
                for _ in range(self.processes):
                    pool.submit(_warm, self._settings)
            self._pool = pool
        except BaseException:  # noqa: BLE001 - SmallFilePool starts one itself, and reports why it cannot
            if started:
                workerprocs.close(started[0])

    def take(self) -> "workerprocs.WorkerPool | None":
        """The started pool, now the caller's to close (None: none was started, or its start failed)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        pool, self._pool = self._pool, None
        return pool

    def close_meanwhile(self, pool: workerprocs.WorkerPool) -> None:
        """Stop `pool` (its tasks all done) on a thread of its own; `close` waits for it."""
        closing = threading.Thread(target=workerprocs.close, args=(pool,), name="small-files-close", daemon=True)
        closing.start()
        self._closing.append(closing)

    def close(self) -> None:
        """Stop the pool if nobody took it, and wait for the pools stopping meanwhile."""
        pool = self.take()
        if pool is not None:
            workerprocs.close(pool)
        while self._closing:
            self._closing.pop().join()


def _died(job: SmallJob, e: BrokenProcessPool) -> executors.TaskLostError:
    """A worker's death (the pool broken) as the one-line error naming the job's first file."""
    return executors.TaskLostError(str(job.runs[0][0].abspath), workerprocs.died(e))


class SmallFilePool:
    """The driver's side: submits every task at once (the pool runs `processes` at a time),
    and takes each result on a thread of its own as it completes, so big files archive on
    the driver's threads meanwhile. `take(SmallDone)` is called for each task that succeeded,
    in completion order (also after another failed: its packs are durable); the first error
    cancels the tasks not started, calls `on_error` and is kept for `raise_error`."""

    def __init__(self, processes: int, jobs: list[SmallJob], take: Callable[[SmallDone], None],
                 on_error: Callable[[], None], pool: workerprocs.WorkerPool | None = None) -> None:
        # a fork server this run starts is stopped (and waited for) by `close`: no process outlives
        # the archive, and the workers' CPU is counted in this process's children, as threads' is
        self._futures: dict[Future[Any], SmallJob] = {}
        self.error: BaseException | None = None
        self._closed = False
        self._take, self._on_error = take, on_error
        # here, not at import: its module imports multiprocessing (start-up of every archive)
        from concurrent.futures.process import BrokenProcessPool
        started: list[workerprocs.WorkerPool] = []
        try:
            with workerprocs.sheltered():  # a Ctrl-C is raised once every worker is tracked (see there)
                # `pool`: started during the scan (PoolStarter), now this one's to close
                self._pool = pool if pool is not None else workerprocs.pool(processes, preload())
                started.append(self._pool)
                for job in jobs:
                    self._futures[self._pool.submit(_call, job)] = job
        except BrokenProcessPool as e:  # its workers died before a task was handed out (killed while idle)
            if started:
                workerprocs.close(started[0])
            raise _died(jobs[0], e) from None
        except BaseException:
            if started:
                workerprocs.close(started[0])
            raise
        self._thread = threading.Thread(target=self._collect, name="small-files", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        """Takes every task that succeeded, also after another failed (its files' packs are
        durable: journalled, a re-run resumes them); the first error is the one kept."""
        for fut in as_completed(self._futures):
            if fut.cancelled():
                continue
            error = workerprocs.take_result(fut, str(self._futures[fut].runs[0][0].abspath), self._take)
            if error is not None:
                self._fail(error)

    def _fail(self, e: BaseException) -> None:
        if self.error is not None:
            return
        self.error = e
        for f in self._futures:
            f.cancel()
        self._on_error()

    def cancel(self) -> None:
        """Stop: tasks not started are cancelled; running ones finish (their packs are harmless)."""
        if self.error is None:
            self.error = executors.Stopped()
        for f in self._futures:
            f.cancel()

    def close(self, later: "PoolStarter | None" = None) -> None:
        """Wait for the running tasks and the collector, then stop the workers: here, or with
        `later` (the run's PoolStarter) on a thread of their own that `later.close()` joins,
        so the workers and the fork server stop while the driver commits (every task is taken
        by then: they only exit)."""
        self._thread.join()
        if self._closed:
            return
        self._closed = True
        if later is None:
            workerprocs.close(self._pool)
        else:
            later.close_meanwhile(self._pool)

    def raise_error(self) -> None:
        if self.error is not None and not isinstance(self.error, executors.Stopped):
            raise self.error

