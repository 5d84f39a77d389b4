"""archive: files -> chunks -> (hash, dedup, encode, check, put) on a thread pool -> manifest.

One pass over each file, reading sequentially on the calling thread (which also keeps
the whole-file BLAKE3 and SHA-256); a bounded window of chunks is in flight in the
worker pool, so memory stays at a few chunks whatever the file size. BLAKE3 and zstd
release the GIL, so both cores are busy. The manifest is written only after every chunk
it names is durably in the store, then recorded in the catalog in one transaction."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import os
import threading
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import blake3

from archiver import events
from archiver.chunking import ChunkPolicy, RawChunk, iter_chunks
from archiver.errors import ArchiverError, IntegrityError, InvalidOptionError, SourceChangedError, UsageError
from archiver.hfcache import lfs_sha256, snapshot_of
from archiver.formats import detect_regions, may_be_weights
from archiver.parallel import default_workers, ordered_map
from archiver.progress import Progress
from archiver.digests import FileDigest
from archiver.earlytrees import EarlyTrees
from archiver.filescache import FilesRun
from archiver.repository import Repository, SavedChunk
from archiver.scan import Source, changed, open_file, open_source, read_whole, scan
from archiver.techmeta import file_tech
from manifests.errors import UnsafePathError
from manifests.model import ATTACH_DIR, ChunkRef, Entry, Manifest, is_role, metadata_problem, text_problem
from manifests.paths import check_paths


@dataclass
class ArchiveResult:
    id: str
    name: str
    label: str | None
    files: int
    dirs: int
    bytes_in: int
    bytes_stored: int
    new_bytes_stored: int
    chunks: int
    new_chunks: int
    seconds: float
    parent: str | None = None
    signed_by: str | None = None
    repaired_chunks: int = 0  # damaged chunk objects found in the store and replaced from the source
    resumed_files: int = 0  # files taken from the resume journal of an earlier, interrupted run
    retention: dict[str, Any] | None = None  # lock mode, retain_until, legal_hold, storage_class (if asked)
    files_reused: int = 0  # unchanged files not read: entries reused from the files cache, chunks proved
    files_by_processes: int = 0  # files archived by worker processes (archiver.procfiles; 0: all on threads)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    new_chunks: int = 0
    new_bytes: int = 0
    repaired_chunks: int = 0


class _ChunkWriter:
    """Saves each distinct chunk of this run once; the repository deduplicates against the
    store, proving (or, within `trust_verified_within` of a deep verify, trusting) every
    chunk it already holds and repairing a damaged one from these source bytes."""

    def __init__(self, repo: Repository, stats: _Stats, trust_verified_within: float | None = None,
                 policy: Any = None) -> None:
        self.repo = repo
        self.policy = policy
        self.stats = stats
        self.trust_verified_within = trust_verified_within
        self.done: dict[str, SavedChunk] = {}
        self.lock = threading.Lock()

    def __call__(self, rc: RawChunk) -> ChunkRef:
        # BLAKE3, splitting planes for save_chunk in the same pass
        return self.save(rc, self.repo.chunk_address(rc.data, rc.width))

    def save(self, rc: RawChunk, h: str, hints: Any = None) -> ChunkRef:
        """Save chunk `rc` whose address `h` this thread just computed (Repository.chunk_address);
        `hints`: Repository.chunk_hints of a batch holding it."""
        saved = self.saved(rc.data, rc.width, h, hints)
        return ChunkRef(rc.offset, len(rc.data), h, saved.stored_size, saved.codec)

    def saved(self, data: bytes | memoryview, width: int, h: str, hints: Any = None) -> SavedChunk:
        """`save` of chunk bytes `data` (byte-plane `width`) as the store's SavedChunk: a worker's
        small file takes its size and codec from it, with no RawChunk or ChunkRef made only to
        be taken apart (procfiles._worker_batch)."""
        with self.lock:
            saved = self.done.get(h)
        if saved is None:
            saved = self.repo.save_chunk(h, data, width, trust_verified_within=self.trust_verified_within,
                                         policy=self.policy, hints=hints)
            with self.lock:
                # counted by the call that wrote (or repaired) it, whichever returned first: another
                # thread saving it at once may return sooner, not written (found pending in the open pack)
                was = self.done.get(h)
                if was is None or not (was.written or was.repaired):
                    if saved.repaired:
                        self.stats.repaired_chunks += 1
                    elif saved.written:
                        self.stats.new_chunks += 1
                        self.stats.new_bytes += saved.stored_size
                    if was is None or saved.written or saved.repaired:
                        self.done[h] = saved
        return saved


def _check_trust_window(value: float | None) -> float | None:
    """None (prove every chunk) or a finite number of seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidOptionError("trust_verified_within", f"must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _pool_during_scan(body: Any) -> Any:
    """`archive` with the small files' worker pool started during its scan (procfiles.PoolStarter)
    and stopped here if the body did not take it (an error or Ctrl-C before archive_files)."""
    @functools.wraps(body)
    def archive(repo: Repository, paths: list[str | os.PathLike], **kw: Any) -> ArchiveResult:
        from archiver import heap
        from archiver.procfiles import PoolStarter
        with heap.frozen():  # the run's long-lived objects out of the collector's walks (archiver.heap)
            early = PoolStarter.for_archive(repo, kw.get("executor"), kw.get("processes", 0), paths,
                                            reread=kw.get("reread", False))
            try:
                return body(repo, paths, early=early, **kw)
            finally:
                if early is not None:
                    early.close()
    return archive


@_pool_during_scan
def archive(repo: Repository, paths: list[str | os.PathLike], *, name: str, label: str | None = None,
            meta: Mapping[str, str] | None = None, policy: ChunkPolicy | None = None, workers: int | None = None,
            progress: Progress | None = None, sign_key: Any = None,
            trust_verified_within: float | None = None, write_policy: Any = None,
            profile: Mapping[str, Any] | None = None, attachments: Iterable[tuple[str, str | os.PathLike]] = (),
            dereference: bool = False, reread: bool = False, executor: Any = None,
            max_inflight: int | None = None, journal: Any = None, processes: int | None = 0,
            early: Any = None) -> ArchiveResult:
    """Archive files and directories under `name`; returns the committed manifest's summary.
    With `sign_key` (an Ed25519 private key) the manifest id is signed before it is recorded.
    `name`, `label` and `meta` are checked before the scan, so bad ones write nothing.
    Every chunk the store already holds is read back and proved before the manifest commits
    (a damaged one is repaired from the source); `trust_verified_within` (seconds) instead
    trusts a chunk a deep verify found intact that recently, if its stored size is unchanged.
    `write_policy` (archiver.retention.WritePolicy): every object is written locked as it says (a
    chunk already stored has its retention extended, never shortened), chunks in its storage
    class; a store that cannot honour it is refused before anything is read or written.

    `profile`: a checked profile block {"id", "data"} (archiver.profile.check); `attachments`:
    (role, PATH) documents stored under _archive/ROLE/ with their role recorded. Symlinks are
    recorded as symlinks; `dereference` follows those naming regular files (always done inside
    a Hugging Face cache snapshot, whose repo id and revision go into meta and whose LFS blobs
    must hash to their names: IntegrityError otherwise, and nothing is recorded).

    An unchanged file (same path, size, mtime, ctime, inode, device as when an earlier
    committed archive read it) is not read: its entry is reused once its chunks are proved
    (archiver.filescache); `reread` reads every file.
    `executor` (archiver.executors; default a LocalExecutor with `max_inflight` files at once):
    where the per-file tasks run (archiver.fanout). `journal` (archiver.journal.Journal): files
    finished by an earlier, killed run of the same archive are resumed from it, and each file
    finished now is added; it is removed once the manifest is committed.
    `processes`: worker processes that archive the small files of a local run
    (archiver.procfiles): 0 none (threads only, the default: a worker imports the caller's
    `__main__` again, which only a script guarded by `if __name__ == "__main__"` survives),
    None auto (one per core for many small files when a core is idle; the CLI's default), N."""
    from archiver.workerprocs import CpuSample
    cpu_since = CpuSample.now()  # how busy the rest of the machine is during the scan (procfiles.resolve)
    trust_verified_within = _check_trust_window(trust_verified_within)
    if write_policy is not None:
        repo.check_lockable(write_policy)
    meta_d = check_archive_args(name, label, meta)
    profile_d = _check_profile(profile)
    attach = [(role, p) for role, p in attachments]
    for role, _p in attach:
        if not is_role(role):
            raise InvalidOptionError("attach", f"role {role!r} is invalid: use lowercase letters, digits, '.', '_' "
                                               f"or '-', at most 64 (e.g. model-card)")
    started = time.monotonic()
    policy = policy or ChunkPolicy()
    progress = progress or Progress()
    on_dir = early.watch if early is not None else None  # `early`: the decorator's (the pool started meanwhile)
    sources = scan(paths, dereference=True, on_dir=on_dir) if dereference else scan(paths, on_dir=on_dir)
    meta_d = check_archive_args(name, label, _with_snapshot_meta(meta_d, paths))
    for s in sources:
        if s.parent is None and s.path == ATTACH_DIR:
            raise UsageError(f"cannot archive {s.abspath}: its name {ATTACH_DIR!r} is reserved for attachments")
    attached = _attachment_sources(attach)
    if attached:  # the scan's own list is sorted by path already
        sources = sorted(sources + attached, key=lambda s: s.path)
    try:
        if attached:  # scan checked the rest already: only attachments can collide with them
            check_paths((s.path, "dir" if s.is_dir else "file") for s in sources)
    except UnsafePathError as e:
        raise UsageError(f"cannot archive path {e.path!r}: {e.reason}") from None
    progress.start(f"archive {name}", sum(s.size for s in sources))
    stats = _Stats()
    writer = _ChunkWriter(repo, stats, trust_verified_within, write_policy)
    nworkers = workers or default_workers()
    from archiver import executors, fanout  # one task per file (archiver.fanout), several at once
    ex = executor or executors.LocalExecutor(max_inflight=max_inflight)
    # the files cache: unchanged files whose chunks prove intact are not read (archiver.filescache)
    files_cache = FilesRun.start(repo, sources, policy, reread=reread, trust_verified_within=trust_verified_within,
                                 write_policy=write_policy, workers=nworkers)
    try:
        files_cache.seed(writer.done)
        reused: dict[str, Entry] = {}
        for src in sources if files_cache.hits else ():  # no proved entry (a first archive): none to look up
            e = None if src.is_dir or src.is_link else files_cache.entry(src)
            if e is not None:
                _check_blob(src, e)
                reused[src.path] = e
        # the event's agent (its package version lookup: importlib.metadata's imports and reads) is
        # looked up while the chunk pool is busy, not in the serial tail after the last chunk
        agent = threading.Thread(target=events.Agent.current, name="archive-agent", daemon=True)
        agent.start()
        # the trees of directories whose files are all done are made, proved and written while the
        # other files are archived (archiver.earlytrees): the commit finishes the rest
        ahead = EarlyTrees.start(repo, sources, reused, files_cache.trees, write_policy, processes)
        on_entries = None
        if ahead is not None:
            def on_entries(finished: Iterable[Entry], add: Any = ahead.add) -> None:
                add(finished)
                # once the first files are back (the workers hold their jobs by then), the files
                # cache's keys are made on the driver's spare time, not in the commit's GIL-bound tail
                files_cache.key_ahead()
        try:
            done = fanout.archive_files(repo, [s for s in sources if s.path not in reused], ex, writer=writer, stats=stats, policy=policy,
                                        write_policy=write_policy, progress=progress, pool_workers=nworkers,
                                        journal=journal, processes=processes, cpu_since=cpu_since, early=early,
                                        on_entries=on_entries)
            if ahead is not None:
                ahead.all_added()  # the last trees are made while the chunks are checked and the catalog synced
        except BaseException:
            if ahead is not None:
                ahead.close()
            raise
        finally:
            if executor is None:
                ex.close()
        # an error (or Ctrl-C) before the commit stops the builder and its writers: none is left
        # writing trees into the store once the archive has failed (and its repository is closed)
        try:
            entries: list[Entry] = []
            for src in sources:
                if src.is_dir:
                    entries.append(Entry(path=src.path, type="dir", mode=src.mode, mtime_ns=src.mtime_ns))
                elif src.is_link:
                    entries.append(Entry(path=src.path, type="symlink", mode=src.mode, target=src.link or ""))
                else:
                    entries.append(reused[src.path] if src.path in reused else done.entries[src.path])
            progress.finish()
            read_maps = None  # the file maps the check below read: commit_manifest does not read them again
            # chunks this process did not save itself (other hosts, worker processes, a journal): LIST proves them stored
            if ex.distributed or done.resumed or done.by_processes:
                # and the ones it did save, still in its open pack, are in the store to be listed; the
                # packs' catalog rows are recorded meanwhile (the commit waits for them)
                repo.flush_packs_behind()
                read_maps = fanout.check_chunks_stored(repo, entries)
            synced = repo.sync_catalog()  # manifests other hosts wrote: the parent is the chain's real head
            parent = repo.latest(name)
            roles = {s.path: s_role for s_role, s in _roles(attached)}
            manifest = Manifest(name=name, label=label, meta=meta_d, parent=parent, entries=tuple(entries),
                                profile=profile_d, attachments=tuple((roles[e.path], e.path) for e in entries
                                                                     if e.is_file and e.path in roles))
            if parent is not None and parent in synced.added:
                manifest = _same_as_synced(repo, manifest, parent)
                parent = manifest.parent
            uniq = manifest.unique_chunks()
            details: dict[str, Any] = dict(
                name=name, label=label, files=len(manifest.files), dirs=sum(e.type == "dir" for e in entries),
                bytes_in=manifest.total_size, bytes_stored=sum(c.stored_size for c in uniq.values()),
                new_bytes_stored=stats.new_bytes, chunks=len(uniq), new_chunks=stats.new_chunks,
                seconds=round(time.monotonic() - started, 3), parent=parent, repaired_chunks=stats.repaired_chunks,
                resumed_files=done.resumed)
            if write_policy is not None:
                details["retention"] = _policy_summary(write_policy)
            agent.join()
            made_ahead = ahead.finish() if ahead is not None else None
        except BaseException:
            if ahead is not None:
                ahead.close()
            raise
        # the files cache lays out its rows while the manifest commits, and writes them once it
        # is (FilesRun.commit_when): most of its work is not a serial step after the commit
        pending: list[Any] = []
        try:
            committed = repo.commit_manifest(manifest, sign_key=sign_key, details=details, policy=write_policy,
                                             read_maps=read_maps, previous_trees=files_cache.trees, made_ahead=made_ahead,
                                             on_id=lambda mid: pending.append(files_cache.commit_when(mid, entries)),
                                             # its rows are written while the catalog records the manifest
                                             on_stored=lambda mid: [p.decide(p.mid == mid) for p in pending
                                                                    if p is not None])
        except BaseException:
            for p in pending:
                if p is not None:
                    p.finish(False)
            raise
        started = [p for p in pending if p is not None]
        for p in started:
            p.finish(p.mid == committed.id)
        if not any(p.mid == committed.id for p in started):
            files_cache.commit(committed.id, sources, entries)
        if journal is not None:
            journal.remove()  # committed: nothing is left to resume
        return ArchiveResult(id=committed.id, signed_by=committed.signed_by, files_reused=files_cache.reused,
                             files_by_processes=done.by_processes, **details)
    finally:
        # on every path (a failure before the files are archived too): its keys' thread
        # (`key_ahead`) is not left running, nor its connection left to the GC
        files_cache.close()


def _same_as_synced(repo: Repository, manifest: Manifest, head: str) -> Manifest:
    """`manifest`, or the head the catalog sync just found if that is this very archive: a
    run of this host killed after its manifest reached the store (or another host archiving
    the same bytes at the same time) is not a new version of itself, and a re-run keeps its id."""
    same = repo.committed_form(dataclasses.replace(manifest, parent=repo.load_manifest(head).parent))
    return same if same.id == head else manifest


# A file whose ctime is this recent may still be written within the same timestamp tick
# (a jiffy, at most 10 ms, for fine-grained filesystems; a whole second, or two, for
# coarse ones), and such a write would leave ctime unchanged. Waiting until the clock is
# past the tick before taking the "before" snapshot means any later write shows up.
_FINE_GRAIN_NS = 20_000_000
_COARSE_GRAIN_NS = 2_000_000_000
SETTLE_LIMIT_S = 5.0  # a file rewritten for longer than this cannot be read consistently


def _settled(fd: int, src: Source, st: os.stat_result | None = None) -> os.stat_result:
    """fstat once the file's last change is older than a timestamp tick, so that comparing
    (size, mtime, ctime) before and after the read proves nothing wrote in between. `st`:
    an fstat of `fd` just taken (scan.open_file's), used as the first one."""
    deadline = time.monotonic() + SETTLE_LIMIT_S
    while True:
        if st is None:
            st = os.fstat(fd)
        grain = _COARSE_GRAIN_NS if st.st_ctime_ns % 1_000_000_000 == 0 else _FINE_GRAIN_NS
        age = time.time_ns() - st.st_ctime_ns
        if age >= grain or age < -grain:  # settled, or a clock we cannot compare with (skewed server)
            return st
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise changed(src.abspath, "it is still being written")
        time.sleep(min((grain - age) / 1e9 + 0.001, remaining))
        st = None


def _snapshot(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What must not move while a file is read: an in-place rewrite that restores the mtime
    (`rsync --inplace -t`, `touch -r`) still moves ctime, which no caller can set."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


# Chunks the reading thread reads and hashes beyond the window while the pool's first chunk
# of a file is not done: in a fresh process the first worker imports numpy then, holding the
# GIL for longer than the window's chunks take to read and hash, which left a core idle
# (bench/RESULTS.md, branch wall).
# Only before the first result (parallel.ordered_map), so memory in the steady state is as before,
# and at most the file's own window more (files archived at once share the pool's window).
START_AHEAD_CHUNKS = 4


def _archive_file(src: Source, pool: ThreadPoolExecutor, writer: _ChunkWriter, policy: ChunkPolicy,
                  window: int, progress: Progress, dirs: Any = None) -> Entry:
    return _archive_file_stat(src, pool, writer, policy, window, progress, dirs)[0]


def _archive_file_stat(src: Source, pool: ThreadPoolExecutor, writer: _ChunkWriter, policy: ChunkPolicy,
                       window: int, progress: Progress, dirs: Any = None,
                       opened: tuple[int, os.stat_result] | None = None) -> tuple[Entry, os.stat_result]:
    """`_archive_file`, and a stat of the file taken after the read (the snapshot a resume
    compares: fanout does not stat it again). A file below the CDC minimum takes the lean
    path (`read_small`, `save_small`); `opened`: its (descriptor, settled fstat) if the
    caller opened it already (`open_settled`)."""
    fd, before = opened if opened is not None else open_settled(src, dirs)
    if before.st_size < policy.cdc_min:
        return save_small(read_small(src, fd, before), writer, progress)
    try:
        os.set_blocking(fd, True)  # scan.open_file leaves it non-blocking (moot for small reads)
        f: Any = open(src.abspath, "rb", opener=lambda _path, _flags: fd)  # keeps the path as f.name
    except BaseException:
        os.close(fd)
        raise
    with f:
        size = before.st_size
        fmt = detect_regions(f, size)
        tech = file_tech(f, size, src.abspath.name, fmt[0] if fmt else "")
        f.seek(0)
        digest: Any = None

        def chunks() -> Iterator[RawChunk]:
            for rc in iter_chunks(f, size, policy, detected=fmt):
                yield rc  # to the pool first: the whole-file hashes run while workers take it,
                digest.update(rc.data)  # so the last chunk is not held back by them (serial tail)
                progress.advance(len(rc.data))

        try:
            digest = FileDigest()
            refs = [ref for _, ref in ordered_map(pool, writer, chunks(), window,
                                                  start_ahead=min(START_AHEAD_CHUNKS, window))]
        except OSError as e:
            raise ArchiverError(f"cannot read {src.abspath}: {e.strerror}") from None
        after = os.fstat(f.fileno())
    if _snapshot(after) != _snapshot(before):
        raise changed(src.abspath, "its size, modification or change time moved")
    try:
        now = os.stat(src.abspath, follow_symlinks=src.followed)
    except OSError:
        raise changed(src.abspath, "it was removed or renamed") from None
    if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
        raise changed(src.abspath, "it was replaced by another file")
    return Entry(path=src.path, type="file", mode=src.mode, size=size, mtime_ns=before.st_mtime_ns,
                 blake3=digest.blake3, sha256=digest.sha256, format=fmt[0] if fmt else "",
                 chunks=tuple(refs), tech=tech), now


def open_settled(src: Source, dirs: Any = None) -> tuple[int, os.stat_result]:
    """The regular file the scan saw (O_NOFOLLOW, same st_dev/st_ino), or raises, with its
    settled fstat (the "before" snapshot). `dirs` (scan.DirFds): its directory's descriptor,
    checked once per run, so the file takes one open(2) and one fstat (scan.open_file)."""
    if dirs is not None:
        fd, st = open_file(src, dirs)
    else:
        fd, st = open_source(src), None
    try:
        return fd, _settled(fd, src, st)
    except BaseException:
        os.close(fd)
        raise


@dataclass
class SmallFile:
    """A file below the CDC minimum, read whole from its descriptor (closed since), with the
    settled fstat taken before the read and the one after: at most one chunk, the whole file."""

    src: Source
    data: bytes
    before: os.stat_result
    after: os.stat_result


def read_small(src: Source, fd: int, before: os.stat_result) -> SmallFile:
    """Read a small file whole (`fd`, closed here) and prove the read consistent: exactly
    `before.st_size` bytes (one more is asked for, so growth shows), and an fstat after the
    read whose (dev, ino, size, mtime, ctime) equals `before`'s; else SourceChangedError,
    worded as iter_chunks and the big-file path word it."""
    size = before.st_size
    try:
        try:
            data = read_whole(fd, size)
            after = os.fstat(fd)
        except OSError as e:
            raise ArchiverError(f"cannot read {src.abspath}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) != size:
        what = f"longer than the {size} bytes expected" if len(data) > size else \
            f"ended at byte {len(data)}, expected {size}"
        raise SourceChangedError(f"{src.abspath} changed while being read: {what}")
    if _snapshot(after) != _snapshot(before):
        raise changed(src.abspath, "its size, modification or change time moved")
    return SmallFile(src, data, before, after)


class _WholeDigest:
    """The whole-file digests of a file read in one piece (FileDigest's properties): the
    BLAKE3 already computed as its one chunk's address is not computed again."""

    def __init__(self, b3: str, sha256: str) -> None:
        self.blake3, self.sha256 = b3, sha256


_EMPTY_DIGEST = _WholeDigest(blake3.blake3(b"").hexdigest(), hashlib.sha256(b"").hexdigest())


def small_format(data: bytes, name: str) -> tuple[str, dict[str, Any] | None]:
    """(format, tech) of a small file's bytes, as `detect_regions` and `file_tech` give them
    on the file itself; a file whose first bytes no recognised format starts with (nearly
    all of them) and that is not a config.json costs one look at its head."""
    size = len(data)
    if not may_be_weights(data[:8], size) and name != "config.json":
        return "", None
    f = io.BytesIO(data)
    fmt = detect_regions(f, size)
    return (fmt[0] if fmt else ""), file_tech(f, size, name, fmt[0] if fmt else "")


def address_small(small: SmallFile, writer: _ChunkWriter) -> str | None:
    """The BLAKE3 of a small file (its one chunk's address), None for an empty file."""
    return writer.repo.chunk_address(small.data, 0) if small.data else None


def save_small(small: SmallFile, writer: _ChunkWriter, progress: Progress, b3: str | None = None,
               hints: Any = None) -> tuple[Entry, os.stat_result]:
    """The entry of a file below the CDC minimum (chunking.iter_chunks: one span, no
    byte-planes, so its chunk is the whole file and the chunk's address is the file's
    BLAKE3), saved on this thread without a hand-off to the chunk pool or a second BLAKE3
    pass; `b3`: that address if computed already (`address_small`), `hints`: the catalog's
    answers for a batch holding it (Repository.chunk_hints). An empty file has no chunk.
    Returns the fstat after the read as the file's snapshot."""
    src, data = small.src, small.data
    fmt, tech = small_format(data, src.abspath.name)
    if data:
        if b3 is None:
            b3 = writer.repo.chunk_address(data, 0)
        progress.advance(len(data))
        digest = _WholeDigest(b3, hashlib.sha256(data).hexdigest())
        refs: tuple[ChunkRef, ...] = (writer.save(RawChunk(0, data, 0), b3, hints),)
    else:
        digest, refs = _EMPTY_DIGEST, ()
    before = small.before
    return Entry(path=src.path, type="file", mode=src.mode, size=before.st_size, mtime_ns=before.st_mtime_ns,
                 blake3=digest.blake3, sha256=digest.sha256, format=fmt, chunks=refs, tech=tech), small.after


def check_archive_args(name: object, label: object, meta: object) -> dict[str, str]:
    """Refuse a name, label or meta that the manifest reader, the catalog or a one-line
    listing could not take back (InvalidOptionError naming the parameter); returns meta
    as a plain dict. Runs before anything is scanned or written."""
    _check_name(name, "name")
    if label is not None:
        _check_name(label, "label")
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise InvalidOptionError("meta", f"must be a mapping of text keys to text values, not {type(meta).__name__}")
    for key, value in meta.items():
        problem = text_problem(key)
        if problem is None and (key == "" or "=" in key):
            problem = "must be non-empty and without '='"
        if problem is not None:
            raise InvalidOptionError("meta", f"key {key!r} is invalid: it {problem}")
        problem = text_problem(value)  # one line of text; long documents go in as files
        if problem is not None:
            raise InvalidOptionError("meta", f"value {value!r} of key {key!r} is invalid: it {problem}")
    return dict(meta)


def _check_name(value: object, what: str) -> None:
    problem = text_problem(value)
    if problem is None and isinstance(value, str) and (not value or "@" in value or value != value.strip()):
        problem = "must be non-empty, without '@' or surrounding spaces"
    if problem is not None:
        raise InvalidOptionError(what, f"is invalid: {value!r} {problem} (invalid {what} refused)")


def _policy_summary(policy: Any) -> dict[str, Any]:
    from archiver.retention import iso
    lock = policy.lock
    return {"lock_mode": lock.mode, "retain_until": iso(lock.until) if lock.until else None,
            "legal_hold": lock.legal_hold, "storage_class": policy.storage_class}


def _check_profile(profile: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A profile block the manifest reader takes back: {"id": text, "data": bounded JSON object}."""
    if profile is None:
        return None
    if not isinstance(profile, Mapping) or set(profile) != {"id", "data"} or not isinstance(profile["data"], dict):
        raise InvalidOptionError("profile", "must be a profile block {'id': ..., 'data': {...}} (see archiver.profile)")
    if text_problem(profile["id"]) is not None or not profile["id"]:
        raise InvalidOptionError("profile", f"id {profile['id']!r} is invalid")
    try:
        metadata_problem(profile["data"], "profile data")
    except Exception as e:  # ManifestError: bounded, finite, valid UTF-8
        raise InvalidOptionError("profile", str(e).removeprefix("malformed manifest: ")) from None
    return {"id": profile["id"], "data": profile["data"]}


def _attachment_sources(attach: list[tuple[str, str | os.PathLike]]) -> list[Source]:
    """Sources for the attached documents, placed under _archive/ROLE/NAME (a directory
    attaches every file below it with that role), plus the _archive and role directories."""
    out: list[Source] = []
    dirs: dict[str, Source] = {}
    for role, p in attach:
        for s in scan([p], dereference=True):  # a document given by a link: its content
            out.append(dataclasses.replace(s, path=f"{ATTACH_DIR}/{role}/{s.path}"))
            if s.parent is None:  # synthetic parents: modes like a fresh directory, mtimes unrecorded
                for d in (ATTACH_DIR, f"{ATTACH_DIR}/{role}"):
                    dirs.setdefault(d, Source(d, s.abspath.parent, True, 0, 0o755, 0, 0))
    return list(dirs.values()) + out


def _roles(attached: list[Source]) -> list[tuple[str, Source]]:
    """(role, source) for each attached regular file."""
    return [(s.path.split("/")[1], s) for s in attached if not s.is_dir]


def _with_snapshot_meta(meta: dict[str, str], paths: list[str | os.PathLike]) -> dict[str, str]:
    """meta plus hf.repo_type/hf.repo_id/hf.revision for a PATH that is a Hugging Face cache
    snapshot; a conflicting value given by the caller is refused."""
    out = dict(meta)
    for raw in paths:
        snap = snapshot_of(Path(os.path.abspath(os.fspath(raw))))
        if snap is None:
            continue
        for k, v in snap.meta().items():
            if out.setdefault(k, v) != v:
                raise InvalidOptionError("meta", f"{k}={out[k]!r} contradicts the snapshot archived ({v!r})")
    return out


def _check_blob(src: Source, e: Entry) -> None:
    """An LFS blob of a Hugging Face cache is named by its SHA-256: the bytes just read must
    hash to it, or the cache is damaged (or was tampered with) and nothing is recorded."""
    want = lfs_sha256(src.blob)
    if want is not None and e.sha256 != want:
        raise IntegrityError(f"{src.abspath}: Hugging Face blob {want[:16]}... has SHA-256 {e.sha256[:16]}..., "
                             f"not its name: the cache is damaged or was tampered with; nothing was recorded")
