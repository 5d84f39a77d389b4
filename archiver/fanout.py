"""One task per file: archive, deep verify and restore spread over an executor.

The unit of work is a file: each task runs the existing per-file function (pipeline's
`_archive_file` with its `_ChunkWriter`, checker's `_deep_file`, restorer's `_restore_file`)
with its own chunk pool of task_cpus + 2 threads, largest files first, at most
`max_inflight` in flight. Tasks on another process (`executor.distributed`) open their own
store-only Repository from the driver's Settings and never the catalog; they return the
file's Entry (or its problems), and the driver alone records anything. Archive: the driver
checks by LIST that every chunk the entries name is in the store before the manifest is
committed, journals each finished file so a killed run resumes, and builds the entries in
the scan's order, so the manifest (and its id) is the one a local run makes.
On the local executor (`batch_small_files`), files below BATCH_FILE_BELOW go in runs, one
task per run: handing a file of a few KiB to a thread and back costs more than its work.
A run reads and hashes its files below the chunker's minimum first, asks the catalog about
all their chunks at once (Repository.chunk_hints), then saves each and records and journals
it as soon as it is saved (the files read before one of them fails are still saved, unless
the run is being stopped)."""
from __future__ import annotations

import functools
import operator
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from archiver import executors, heap, pipeline, procfiles, workerprocs
from archiver.chunking import ChunkPolicy
from archiver.errors import ArchiverError, IntegrityError, InvalidOptionError, UsageError
from archiver.executors import Executor, Stopped
from archiver.journal import Journal, snapshot_of
from archiver.parallel import batches, window_for
from archiver.problems import Problem
from archiver.progress import Progress
from archiver.repository import Repository
from archiver.scan import DirFds, Source, changed
from archiver.settings import Settings
from manifests.filemapbin import MapRecords
from manifests.model import Entry


def worker_settings(repo: Repository, executor: Executor) -> Settings | None:
    """The Settings tasks open the store with (None for in-process executors)."""
    if not executor.distributed:
        return None
    if repo.sealed:  # a worker would seal under a run key the driver's companion never lists
        raise InvalidOptionError("executor", f"{executor.name} cannot run on a sealed store: sealed archives, "
                                             f"verifies and restores run with the local executor")
    s = getattr(repo, "settings", None)
    if s is None:
        raise UsageError(f"the {executor.name} executor needs a repository opened from Settings "
                         f"(archiver.api.open_repository), so that its workers can open the store")
    return s


@functools.lru_cache(maxsize=4)
def worker_repository(settings: Settings) -> Repository:
    """The store-only repository of a worker process for one store, opened once per process:
    opening an S3 store builds a boto3 client and session (tens of ms of CPU), which one task
    per small file must not pay again for every file. It holds no catalog, so nothing in it
    can go stale between tasks."""
    return Repository.store_only(settings)


# -- archive ----------------------------------------------------------------------------------
@dataclass
class FileDone:
    """What a task returns for one archived file."""

    entry: Entry
    snapshot: list[int]  # (dev, ino, size, mtime, ctime) right after the read: what a resume compares
    new_chunks: int = 0
    new_bytes: int = 0
    repaired_chunks: int = 0


def _finish(src: Source, entry: Entry, st: os.stat_result | None = None) -> list[int]:
    """The file's snapshot once read (`st`: a stat of its path taken after the read, by
    pipeline._archive_file_stat, so it is not taken twice)."""
    pipeline._check_blob(src, entry)
    return snapshot_after(src, entry.size, entry.mtime_ns, st)


def snapshot_after(src: Source, size: int, mtime_ns: int | None, st: os.stat_result | None = None) -> list[int]:
    """The snapshot of a file read as `size` bytes modified at `mtime_ns` (`st`: a stat taken
    after the read, else one is taken now); SourceChangedError if it moved meanwhile."""
    if st is None:
        try:
            st = os.stat(src.abspath, follow_symlinks=src.followed)
        except OSError:
            raise changed(src.abspath, "it was removed or renamed") from None
    snap = snapshot_of(st)
    if snap[2] != size or snap[3] != mtime_ns:
        raise changed(src.abspath, "its size or modification time moved")
    return snap


class StoppableProgress:
    """The run's progress, as the per-file pipeline reports to it after every chunk read: once
    `stop()` is called, the next report raises Stopped in that file's task, so a Ctrl-C or
    another file's error does not wait for every big file in flight to be read to its end."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def advance(self, n: int) -> None:
        if self._stop.is_set():
            raise Stopped()
        self.inner.advance(n)

    def check(self) -> None:
        """Raises Stopped once `stop()` was called (a batch asks before each of its files)."""
        if self._stop.is_set():
            raise Stopped()


class LocalArchiveFile:
    """A file archived on a thread of this process, through the run's shared chunk writer
    (chunks shared by several files are saved once) and chunk pool."""

    def __init__(self, writer: Any, pool: ThreadPoolExecutor, policy: ChunkPolicy, window: int,
                 progress: Progress, dirs: DirFds | None = None) -> None:
        self.writer, self.pool, self.policy, self.window, self.progress = writer, pool, policy, window, progress
        self.dirs = dirs  # directory descriptors held for the run: small files open relative to them

    def __call__(self, src: Source) -> FileDone:
        from archiver.pipeline import _archive_file_stat
        entry, after = _archive_file_stat(src, self.pool, self.writer, self.policy, self.window, self.progress,
                                          self.dirs)
        return FileDone(entry, _finish(src, entry, after))


# Files below this size are archived in batches (one task per `parallel.batches` run of them):
# a file of a few KiB costs less to read, hash and pack than its hand-off to a thread and back.
BATCH_FILE_BELOW = 1 << 20


class LocalArchiveBatch(LocalArchiveFile):
    """A run of files archived one after another by one task of the local executor, each
    handed to `on_done` as soon as it is done (the run's recorder: entries and journal). A
    file's unexpected error is a TaskLostError naming that file (as its own task's would)."""

    def __init__(self, *args: Any, on_done: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_done = on_done

    def __call__(self, batch: list[Source]) -> int:  # type: ignore[override]
        """Files below the CDC minimum are read (and hashed) first, then the catalog is asked
        about all their chunks at once (Repository.chunk_hints: two queries a batch, not two
        a chunk), then each is saved and recorded; bigger ones go as single files."""
        check = getattr(self.progress, "check", None)
        small: list[tuple[Any, str | None]] = []
        try:
            for src in batch:
                if check is not None:
                    check()  # another file failed, or Ctrl-C: the rest of the batch is not started
                try:
                    fd, before = pipeline.open_settled(src, self.dirs)
                    if before.st_size >= self.policy.cdc_min:  # chunked: its own pass, as a lone file
                        entry, after = self._archive_opened(src, fd, before)
                        self.on_done(src, FileDone(entry, _finish(src, entry, after)))
                        continue
                    got = pipeline.read_small(src, fd, before)
                    small.append((got, pipeline.address_small(got, self.writer)))
                except (ArchiverError, Stopped):
                    raise
                except Exception as e:  # noqa: BLE001 - as executors.run reports a lost task
                    raise executors.lost(str(src.abspath), e) from None
        except BaseException:
            try:  # the files read before the error are still saved and recorded (a resume keeps them)
                self._save_small(small)
            except BaseException:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        self._save_small(small)
        return len(batch)

    def _archive_opened(self, src: Source, fd: int, before: os.stat_result) -> tuple[Entry, os.stat_result]:
        return pipeline._archive_file_stat(src, self.pool, self.writer, self.policy, self.window, self.progress,
                                           self.dirs, opened=(fd, before))

    def _save_small(self, small: list[tuple[Any, str | None]]) -> None:
        if not small:
            return
        new = [h for _, h in small if h is not None and h not in self.writer.done]
        hints = self.writer.repo.chunk_hints(new) if new else None
        check = getattr(self.progress, "check", None)
        for got, b3 in small:
            if check is not None:
                check()
            try:
                done = self._saved_small(got, b3, hints)
            except (ArchiverError, Stopped):
                raise
            except Exception as e:  # noqa: BLE001 - a file's unexpected error names that file
                raise executors.lost(str(got.src.abspath), e) from None
            self._hand_on(got.src, done)

    def _saved_small(self, got: Any, b3: str | None, hints: Any) -> Any:
        """One small file read into `got`, saved: its FileDone (a subclass may make another result)."""
        entry, after = pipeline.save_small(got, self.writer, self.progress, b3, hints)
        return FileDone(entry, _finish(got.src, entry, after))

    def _hand_on(self, src: Source, done: Any) -> None:
        """`_saved_small`'s result to whoever takes finished files (outside its error wrapping)."""
        self.on_done(src, done)


class _Recorder:
    """Takes each finished file (from any thread): its entry, and its journal line, written
    out and fsynced about once a second."""

    def __init__(self, out: "ArchivedFiles", journal: Journal | None, on_entries: Any = None) -> None:
        self.out, self.journal = out, journal
        self.on_entries = on_entries  # told of each finished file's entry (archiver.earlytrees)
        self.lock = threading.Lock()
        self.last_sync = time.monotonic()

    def __call__(self, src: Source | Entry, done: FileDone) -> None:
        with self.lock:
            self.out.entries[src.path] = done.entry
            if self.journal is not None:
                now = time.monotonic()
                sync = now - self.last_sync >= 1.0
                self.journal.record(done.entry, done.snapshot, sync=sync)
                if sync:
                    self.last_sync = now
        if self.on_entries is not None:
            self.on_entries((done.entry,))

    def many(self, entries: list[Entry], lines: bytes, snapshots: list[list[int]]) -> None:
        """A worker task's files at once: their entries, and their journal lines (`lines`, made
        by the worker; else from each entry's snapshot here)."""
        with self.lock:
            for e in entries:
                self.out.entries[e.path] = e
            if self.journal is not None:
                now = time.monotonic()
                sync = now - self.last_sync >= 1.0
                if lines:
                    self.journal.record_lines(lines, sync=sync)
                else:
                    for e, snap in zip(entries, snapshots):
                        self.journal.record(e, snap, sync=False)
                    if sync:
                        self.journal.record_lines(b"", sync=True)
                if sync:
                    self.last_sync = now
        if self.on_entries is not None:
            self.on_entries(entries)


def _describe(item: Source | list[Source]) -> str:
    return str((item[0] if isinstance(item, list) else item).abspath)


def directories_together(runs: list[list[Source]]) -> list[list[Source]]:
    """The runs of small files (`local_batches`) cut again from their files in path order: a
    worker task then holds whole directories, which are complete, and their trees made ahead
    (archiver.earlytrees), as tasks finish rather than all with the last one. (Runs and tasks
    are still cut by size: the work per task is the same.)"""
    return list(batches(sorted((s for run in runs for s in run), key=_path_of), _size_of))


_path_of = operator.attrgetter("path")
_size_of = operator.attrgetter("size")


def _largest_first(files: list[Source]) -> list[Source]:
    """The order files are handed out in: largest first (the longest ones start first), then by path."""
    return sorted(files, key=lambda s: (-s.size, s.path))


def local_batches(todo: list[Source]) -> list[list[Source]]:
    """`todo` (largest first) as tasks: each file of BATCH_FILE_BELOW or more alone, the
    smaller ones in runs (`parallel.batches`), in the same order."""
    big = [[s] for s in todo if s.size >= BATCH_FILE_BELOW]
    return big + list(batches([s for s in todo if s.size < BATCH_FILE_BELOW], lambda s: s.size))


@dataclass(frozen=True)
class RemoteArchiveFile:
    """A file archived in a worker process: its own store-only repository and chunk pool."""

    settings: Settings
    policy: ChunkPolicy
    write_policy: Any
    task_cpus: int

    def __call__(self, src: Source) -> FileDone:
        from archiver.pipeline import _archive_file, _ChunkWriter, _Stats
        stats = _Stats()
        repo = worker_repository(self.settings)
        writer = _ChunkWriter(repo, stats, None, self.write_policy)
        n = self.task_cpus + 2
        with ThreadPoolExecutor(n, thread_name_prefix="task") as pool:
            entry = _archive_file(src, pool, writer, self.policy, window_for(n), Progress())
        # a file over the manifest-v2 threshold: its map is stored here, after its chunks, so the
        # driver gathers small entries (commit_manifest proves the map durable before the root)
        entry = repo.save_filemaps(entry, self.write_policy)
        return FileDone(entry, _finish(src, entry), stats.new_chunks, stats.new_bytes, stats.repaired_chunks)


@dataclass
class ArchivedFiles:
    entries: dict[str, Entry] = field(default_factory=dict)
    resumed: int = 0
    by_processes: int = 0  # files archived by worker processes (archiver.procfiles): LIST proves their chunks


def _unchanged(src: Source, snapshot: list[int]) -> bool:
    try:
        st = os.stat(src.abspath, follow_symlinks=src.followed)
    except OSError:
        return False
    return snapshot_of(st) == snapshot and (st.st_dev, st.st_ino) == (src.dev, src.ino)


def archive_files(repo: Repository, sources: list[Source], executor: Executor, *, writer: Any, stats: Any,
                  policy: ChunkPolicy, write_policy: Any, progress: Progress, pool_workers: int,
                  journal: Journal | None = None, processes: int | None = None,
                  cpu_since: workerprocs.CpuSample | None = None,
                  early: procfiles.PoolStarter | None = None, on_entries: Any = None) -> ArchivedFiles:
    """Archive every regular file of `sources`: journalled ones that are provably unchanged
    are resumed, the others run as tasks, largest first; each finished one is journalled.
    `processes` (local executor): worker processes for the small files (archiver.procfiles;
    0: threads only, None: auto, by how busy the rest of the machine was since `cpu_since`);
    `early`: the pool started during the scan, used if the count agrees (closed here otherwise).
    `on_entries`: called (from any thread) with the entries of files as they finish or resume."""
    out = ArchivedFiles()
    files = [s for s in sources if not s.is_dir and not s.is_link]
    prior = journal.load() if journal is not None else {}
    unchanged = {s.path: prior[s.path].entry for s in files
                 if s.path in prior and _unchanged(s, prior[s.path].snapshot)}
    stored = _stored_entries(repo, unchanged)
    for s in files:
        if s.path in stored:
            out.entries[s.path] = stored[s.path]
            out.resumed += 1
            progress.advance(s.size)
    if on_entries is not None and stored:
        on_entries(list(stored.values()))
    pending = [s for s in files if s.path not in out.entries]  # in the scan's (path) order; handed out largest first
    settings = worker_settings(repo, executor)
    stoppable = None
    dirs: DirFds | None = None
    record = _Recorder(out, journal, on_entries)
    nproc = 0
    if settings is not None:
        task: Any = RemoteArchiveFile(settings, policy, write_policy, executor.task_cpus)
        pool = None
        items: list[Any] = _largest_first(pending)
    else:
        pool = ThreadPoolExecutor(pool_workers, thread_name_prefix="archive")
        small = [s for s in pending if s.size < BATCH_FILE_BELOW]
        if early is not None and early.processes and processes is None:
            nproc = early.processes  # auto decided during the scan (the pool's own start now counts as busy CPU)
        else:
            nproc = procfiles.resolve(processes, small_files=len(small),
                                      local=getattr(executor, "batch_small_files", False), sealed=repo.sealed,
                                      has_settings=getattr(repo, "settings", None) is not None,
                                      load=cpu_since.others_busy() if cpu_since is not None else None)
        if nproc:  # the runs of small files go to worker processes, the big files stay here
            # cut once, while the workers wait for their first job: whole directories a task with
            # early trees (`directories_together`, from the scan's path order), else largest first
            small_runs = directories_together([small]) if on_entries is not None else \
                list(batches(_largest_first(small), _size_of))
            jobs = [procfiles.SmallJob(procfiles.worker_settings(repo.settings),  # type: ignore[arg-type]
                                       policy, write_policy,
                                       writer.trust_verified_within, runs, journal_lines=journal is not None)
                    for runs in procfiles.tasks_of(small_runs, processes=nproc)]
            items = [[s] for s in _largest_first([s for s in pending if s.size >= BATCH_FILE_BELOW])]
        else:  # threads: trees are made at the commit (a builder beside them would only contend for the GIL)
            # small files in batches on a thread pool: one hand-off per batch, not per file
            todo = _largest_first(pending)
            items = local_batches(todo) if getattr(executor, "batch_small_files", False) else [[s] for s in todo]
            record.on_entries = None
        if early is not None and not (nproc and nproc == early.processes and jobs):
            early.close()  # started during the scan, but nothing here for it
        stoppable = StoppableProgress(progress)
        dirs = DirFds()

        def batch_task(items: list[Any]) -> LocalArchiveBatch:
            # Chunks in flight stay at about one per pool thread in all (memory: a few chunks per
            # core), shared by the files read at once; a lone big file gets the whole window.
            at_once = max(1, min(executor.max_inflight, len(items)))
            window = window_for(pool_workers) if at_once == 1 else max(2, window_for(pool_workers) // at_once)
            # each file is recorded (and journalled) by its task as soon as it is done, so a kill
            # in the middle of a batch still resumes the batch's finished files
            return LocalArchiveBatch(writer, pool, policy, window, stoppable, dirs,  # type: ignore[arg-type]
                                     on_done=record)
        task = batch_task(items)
    small: procfiles.SmallFilePool | None = None
    try:
        stop = stoppable.stop if stoppable is not None else None
        if nproc:
            try:
                small = procfiles.SmallFilePool(nproc, jobs, _taker(repo, out, stats, progress, record),
                                                on_error=stoppable.stop,  # type: ignore[union-attr]
                                                pool=early.take() if early is not None else None)
            except OSError:
                if processes is not None:
                    raise  # asked for: the reason none can start is the error
                # auto: no pool can start here after all (fork refused, no descriptors left), as
                # where `workerprocs.unavailable()` says so: the small files go to the threads
                items = items + small_runs
                task = batch_task(items)
        if small is not None:
            stop = _both(stoppable.stop, small.cancel)  # type: ignore[union-attr]
        for src, done in executors.run(executor, task, items, describe=_describe, stop=stop):
            if settings is None:
                continue  # the batch recorded its files itself
            with stats.lock:
                stats.new_chunks += done.new_chunks
                stats.new_bytes += done.new_bytes
                stats.repaired_chunks += done.repaired_chunks
            progress.advance(done.entry.size)
            record(src, done)
        if small is not None:
            small.close(later=early)  # the workers stop while the driver commits (pipeline.archive waits)
            small.raise_error()
    except BaseException:
        if small is not None:
            small.cancel()
            small.close()
            small.raise_error()  # a worker's error came first: the threads stopped because of it
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if dirs is not None:
            dirs.close()
        if journal is not None:
            journal.close()
    return out


def _taker(repo: Repository, out: ArchivedFiles, stats: Any, progress: Progress, record: _Recorder) -> Any:
    """What the driver does with a worker process's finished task: adopt its packs (all
    durable by now), count its new chunks (less those another task of this run packed too:
    the counts are of distinct chunks, as on threads), then record and journal each of its files."""
    def take(done: procfiles.SmallDone) -> None:
        again = repo.adopt_packs(done.packs)
        with stats.lock:
            stats.new_chunks += done.new_chunks
            stats.new_bytes += done.new_bytes
            stats.repaired_chunks += done.repaired_chunks
            for h, size in again.items():
                if h in done.repaired:
                    stats.repaired_chunks -= 1
                else:
                    stats.new_chunks -= 1
                    stats.new_bytes -= size
        finished = procfiles.unflat_all(done.files)
        progress.advance(sum(d.entry.size for d in finished))
        record.many([d.entry for d in finished], done.lines, [d.snapshot for d in finished])
        with record.lock:
            out.by_processes += len(done.files)
        heap.settle()
    return take


def _both(first: Any, second: Any) -> Any:
    def both() -> None:
        first()
        second()
    return both


def _stored_entries(repo: Repository, journalled: dict[str, Entry]) -> dict[str, Entry]:
    """The journalled entries whose every chunk the store holds at its recorded size (and
    whose file map, for a worker's entry, reads back): only those are resumed. A line is
    journalled when its file is done, which for small chunks is before the pack holding them
    is written; a run killed (or whose pack write failed) in between leaves lines naming
    chunks that never reached the store, and their files are archived again."""
    if not journalled:
        return {}
    needs: dict[str, list[tuple[str, int]]] = {}
    for path, e in journalled.items():
        if e.filemap and not e.chunks:
            try:
                needs[path] = list(zip(*_hash_sizes(repo.filemap_records(e))))
            except ArchiverError:
                continue  # its map is missing or damaged: archive the file again
        else:
            needs[path] = [(c.hash, c.stored_size) for c in e.chunks]
    sizes = repo.chunk_sizes({h for refs in needs.values() for h, _ in refs})
    return {path: journalled[path] for path, refs in needs.items()
            if all(sizes.get(h) == size for h, size in refs)}


def _hash_sizes(records: Any) -> tuple[list[str], list[int]]:
    """(hex hashes, stored sizes) of a map's records: from a binary map's arrays in two bulk
    conversions (manifests.filemapbin.MapRecords), else from (hash, size, codec) triples."""
    if isinstance(records, MapRecords):
        return records.hex_hashes(), records.stored.tolist()
    return [r[0] for r in records], [r[1] for r in records]


def check_chunks_stored(repo: Repository, entries: Iterable[Entry]
                        ) -> dict[tuple[str, int, int], list[tuple[str, int, str]]]:
    """Every chunk the entries name is in the store at its recorded size (by LIST pages),
    or IntegrityError and nothing is committed: a worker's or a journal's word is not proof.
    Returns the file maps it read and checked, keyed by (hash, chunk count, size), for
    `commit_manifest(read_maps=...)`, so a worker's map is read once per commit (the maps'
    records are the only per-chunk list it holds besides the store's answer)."""
    maps: dict[tuple[str, int, int], list[tuple[str, int, str]]] = {}
    map_paths: dict[tuple[str, int, int], str] = {}
    inline: dict[str, tuple[int, str]] = {}
    for e in entries:
        if e.filemap and not e.chunks:  # a worker's file map
            shape = (e.filemap, e.chunk_count, e.size)
            if shape not in maps:
                maps[shape] = repo.filemap_records(e)
                map_paths[shape] = e.path
            continue
        for c in e.chunks:
            inline.setdefault(c.hash, (c.stored_size, e.path))
    hashes = set(inline)
    listed = {shape: _hash_sizes(records) for shape, records in maps.items()}
    for hs, _ in listed.values():
        hashes.update(hs)
    sizes = repo.chunk_sizes(hashes)
    worst: tuple[str, str, int | None, int] | None = None  # the smallest failing hash, as a sorted scan finds it
    for h, (size, path) in inline.items():
        if sizes.get(h) != size and (worst is None or h < worst[0]):
            worst = (h, path, sizes.get(h), size)
    get = sizes.get
    for shape, (hs, stored) in listed.items():
        if list(map(get, hs)) == stored:  # every chunk of the map at its size: one comparison in C
            continue
        for h, size in zip(hs, stored):
            if get(h) != size and (worst is None or h < worst[0]):
                worst = (h, map_paths[shape], get(h), size)
    if worst is not None:
        h, path, got, size = worst
        what = "is missing from the store" if got is None else f"is {got} bytes in the store, not {size}"
        raise IntegrityError(f"chunk {h} of {path} {what}; nothing was recorded, re-run")
    return maps


# -- deep verify --------------------------------------------------------------------------------
@dataclass
class DeepDone:
    problems: list[Problem]
    chunks: dict[str, bool]
    chunks_read: int
    bytes_read: int
    files_hashed: int
    not_checked_cold: list[str]


@dataclass(frozen=True)
class RemoteDeepFile:
    settings: Settings
    task_cpus: int

    def __call__(self, item: tuple[str, Entry]) -> DeepDone:
        from archiver import checker
        mid, e = item
        report = checker.VerifyReport(mode="deep", manifests=[mid])
        n = self.task_cpus + 2
        with ThreadPoolExecutor(n, thread_name_prefix="task") as pool:
            checker._deep_file(worker_repository(self.settings), mid, e, pool, window_for(n), report, Progress())
        return DeepDone(report.problems, dict(report._chunks), report.chunks_read, report.bytes_read,
                        report.files_hashed, report.not_checked_cold)


def deep_files(repo: Repository, executor: Executor, files: list[tuple[str, Entry]], report: Any,
               progress: Progress) -> None:
    """Deep-check each (manifest id, file) as a task; results are merged into `report` in
    the order a local run reports them."""
    settings = worker_settings(repo, executor)
    if settings is None:
        raise UsageError(f"the {executor.name} executor runs deep verify in this process already")
    got: dict[tuple[str, str], DeepDone] = {}
    task = RemoteDeepFile(settings, executor.task_cpus)
    for (mid, e), done in executors.run(executor, task, sorted(files, key=lambda f: -f[1].size),
                                        describe=lambda f: f"{f[0][:16]} {f[1].path}"):
        got[(mid, e.path)] = done
        progress.advance(done.bytes_read)
    for mid, e in files:
        d = got[(mid, e.path)]
        for p in d.problems:
            report.add(p)
        report.checked(d.chunks.items())
        report.chunks_read += d.chunks_read
        report.bytes_read += d.bytes_read
        report.files_hashed += d.files_hashed
        report.not_checked_cold.extend(d.not_checked_cold)


# -- restore ------------------------------------------------------------------------------------
@dataclass
class RestoreDone:
    files: int
    bytes: int
    problems: list[Problem]


@dataclass(frozen=True)
class RemoteRestoreFile:
    """A file restored by a worker into DEST (a path every worker sees: a shared filesystem)."""

    settings: Settings
    mid: str
    dest: str
    force: bool
    mode_mask: int
    task_cpus: int

    def __call__(self, e: Entry) -> RestoreDone:
        from archiver import restorer
        result = restorer.RestoreResult(id=self.mid, dest=self.dest)
        n = self.task_cpus + 2
        root_fd = os.open(self.dest, restorer._DIR_FLAGS)
        try:
            with ThreadPoolExecutor(n, thread_name_prefix="task") as pool:
                restorer._restore_file(worker_repository(self.settings), self.mid, root_fd, e, pool, window_for(n),
                                       result, Progress(), self.force, self.mode_mask)
        finally:
            os.close(root_fd)
        return RestoreDone(result.files, result.bytes, result.problems)


def restore_files(repo: Repository, executor: Executor, mid: str, root: Path, chosen: list[Entry], force: bool,
                  mode_mask: int, result: Any, progress: Progress) -> None:
    """Directories first (here), then each file as a task, largest first; problems are
    merged in manifest order. Each task writes a temp file and renames it only once every
    byte is proved, so a damaged or interrupted file never appears under its final name."""
    from archiver import restorer
    settings = worker_settings(repo, executor)
    if settings is None:
        raise UsageError(f"the {executor.name} executor restores in this process already")
    root_fd = os.open(root, restorer._DIR_FLAGS)
    try:
        for e in chosen:
            if e.type == "dir":
                os.close(restorer._open_dir(root_fd, e.path.split("/"), create=True))
                result.dirs += 1
    finally:
        os.close(root_fd)
    files = [e for e in chosen if e.is_file]
    task = RemoteRestoreFile(settings, mid, str(root.absolute()), force, mode_mask, executor.task_cpus)
    got: dict[str, RestoreDone] = {}
    for e, done in executors.run(executor, task, sorted(files, key=lambda e: -e.size),
                                 describe=lambda e: e.path):
        got[e.path] = done
        progress.advance(e.size)
    for e in files:
        d = got[e.path]
        result.files += d.files
        result.bytes += d.bytes
        result.problems.extend(d.problems)
