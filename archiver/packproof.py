"""Deep verify's early pack proofs, in a worker process.

Why: a deep verify of many small files spends its first stretch in serial Python on the
main thread (the manifests' trees, path checks, the read plan, the presence check) before it
reads its first pack, and its own deep pass is GIL-bound too. The packs' bytes and their
hashing depend on none of that: as soon as the catalog says which packed chunks the archives
name (`Repository.early_spans`), worker processes from `workerprocs.pool` read those spans
(one request each) and prove each chunk exactly as the deep pass does (decoded from its
stored form, re-hashed to its BLAKE3), keeping the SHA-256 of its bytes, while the main
process loads and plans. Only plain values cross: spans in, (hash, stored size, length,
SHA-256) rows out, never object bytes.

Nothing is trusted that was not proved: the catalog's spans are only a hint. The deep pass
accepts a chunk from here only if the very ref it holds (hash, stored size, length) was
proved, and then compares the file's own SHA-256 with that of the proved bytes. A chunk not
proved here (damaged, missing, a span that could not be read, a task that failed, a chunk the
catalog did not name) is read again the usual way, which words the problem as today."""
from __future__ import annotations

import functools
import hashlib
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from archiver import workerprocs
from archiver.errors import ArchiverError
from archiver.settings import Settings
from manifests.model import ChunkRef

__all__ = ["AUTO_MIN_FILES", "EarlyProofs", "check", "prove_task", "resolve", "start"]

# Auto mode uses worker processes only for archives of at least this many files: below it
# the pool's start (a fork server and a worker, ~0.3 s of CPU) costs more than the overlap
# saves (bench/RESULTS.md, "Deep verify's pack proofs in a worker process (branch sfverify5)").
AUTO_MIN_FILES = 10_000
# ... and only with at least this many cores left idle by the rest of the machine, measured
# over the verify's first AUTO_SAMPLE_SECONDS (busy CPU from /proc/stat less this process's
# own; the 1-minute load average where there is no /proc/stat): the worker shares the CPU with
# the main process's loading.
AUTO_IDLE_CORES = 1.0
# The pool's start waits this long (on its own thread, while the main thread loads the
# manifests) to measure how busy the rest of the machine is (workerprocs.CpuSample).
AUTO_SAMPLE_SECONDS = 0.1

# What the fork server imports once (the worker's whole path: the store and the codecs).
PRELOAD = ["archiver.packproof", "archiver.repository", "archiver.stores"]


def preload() -> list[str]:
    """PRELOAD, and the CLI's module when the driver runs it: each worker imports the driver's
    `__main__` again, so the server imports its dependencies once (as archiver.procfiles does)."""
    return PRELOAD + (["archiver.cli"] if "archiver.cli" in sys.modules else [])


def check(requested: int | None) -> None:
    """`requested` is None (auto) or a whole number >= 0 (InvalidOptionError otherwise)."""
    workerprocs.check_count(requested)


def resolve(requested: int | None, *, files: int, sealed: bool, local: bool, has_settings: bool,
            idle_check: bool = True) -> int:
    """How many worker processes prove the packs: `requested` (0: none, the deep pass reads
    them on threads; None: auto, cores - 1 when the archives record AUTO_MIN_FILES files or
    more, 2+ cores and AUTO_IDLE_CORES idle). Only the local executor on an unsealed store
    opened from Settings can (a worker reopens the store from them; a sealed store's keys
    live in this process). `idle_check=False`: leave the idle cores to the caller (`start`
    measures them on the pool's starter thread)."""
    possible = local and not sealed and has_settings
    why = "on a sealed store" if sealed else "with a distributed executor" if not local else \
        "on a repository not opened from Settings (see archiver.api.open_repository)"
    n = workerprocs.requested_count(requested, None if possible else f"cannot prove packs in worker processes {why}")
    if n is not None:
        return n
    if not possible or files < AUTO_MIN_FILES:
        return 0
    return workerprocs.auto_count(idle=AUTO_IDLE_CORES, leave=1, measure=idle_check)


@functools.lru_cache(maxsize=2)
def _repository(settings: Settings) -> Any:
    """This worker's repository, opened once per process: the store, and the catalog
    read-only (never created, migrated or locked: the driver is its one writer)."""
    from archiver.repository import Repository
    return Repository.open(settings, read_only=True)


@dataclass
class TaskProofs:
    """What one task returns: hash -> (stored size, length, SHA-256 hex) of each chunk proved
    intact, and the spans it read (pack, start, end), one request each."""

    proved: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    reads: list[tuple[str, int, int]] = field(default_factory=list)


def prove_task(settings: Settings, mids: list[str], max_length: int, part: int, parts: int) -> TaskProofs:
    """In a worker: ask the catalog which spans hold the packed chunks of at most
    `max_length` bytes of manifests `mids` (`Repository.early_spans`; the driver's main
    thread is busy loading them meanwhile), take every `parts`-th from `part` on, read each
    once and prove its chunks (`Repository.proved_span`). A store error leaves that span
    unproved: the deep pass reads it again and reports it."""
    repo = _repository(settings)
    sha256 = hashlib.sha256
    out = TaskProofs()
    for pack, start, end, chunks in repo.early_spans(mids, max_length)[part::parts]:
        out.reads.append((pack, start, end))
        got: dict[str, tuple[int, int, str]] = {}
        try:
            for h, stored, length, data in repo.proved_span(pack, start, end, chunks):
                got[h] = (stored, length, sha256(data).hexdigest())
        except (ArchiverError, OSError):
            continue
        out.proved.update(got)
    return out


class EarlyProofs:
    """The driver's side. A thread of its own starts the pool and submits one task per worker
    (starting a fork server blocks its caller until the server has imported its preload), so
    the main thread goes on loading the manifests meanwhile; each worker asks the catalog for
    its share of the spans itself (20,000 catalog rows handled on a second thread of this
    GIL-bound process delayed both threads). Then one future per worker."""

    def __init__(self, settings: Settings, mids: list[str], max_length: int, processes: int,
                 since: workerprocs.CpuSample | None = None) -> None:
        """`since`: auto mode, a sample of the machine's CPU taken now; the pool starts only if
        the rest of the machine left AUTO_IDLE_CORES idle over the next AUTO_SAMPLE_SECONDS."""
        self.pool: workerprocs.WorkerPool | None = None
        self._since = since
        self._closing = threading.Event()
        self.futures: list[Future] = []
        self._closed = False
        self._lock = threading.Lock()
        self._results: list[TaskProofs] | None = None
        self._starter = threading.Thread(target=self._start, args=(settings, mids, max_length, processes),
                                         name="verify-packs", daemon=True)
        self._starter.start()

    def _start(self, settings: Settings, mids: list[str], max_length: int, processes: int) -> None:
        """The pool and one task per worker. A failure here leaves nothing proved (the deep
        pass reads it all, and words what it meets)."""
        since = self._since
        if since is not None:  # auto: measure the rest of the machine first (the main thread loads meanwhile)
            if self._closing.wait(max(0.0, since.wall + AUTO_SAMPLE_SECONDS - time.monotonic())):
                return
            if workerprocs.spare_cores(since) < AUTO_IDLE_CORES:
                return  # busy: no pool, the deep pass reads everything on threads as without one
        try:
            # SIGINT blocked on this thread meanwhile: the fork server and the workers are born
            # with it blocked, so a terminal's Ctrl-C (sent to the process group) cannot kill
            # them before they ignore it (workerprocs.sheltered)
            with workerprocs.sheltered():
                with self._lock:
                    if self._closed:
                        return
                    self.pool = workerprocs.pool(processes, preload())
                self.futures = [self.pool.submit(prove_task, settings, mids, max_length, k, processes)
                                for k in range(processes)]
        except Exception:  # noqa: BLE001 - nothing proved is nothing trusted
            self.futures = []

    def _result(self, i: int) -> TaskProofs:
        """Task `i`'s proofs; none if it failed (a worker that died, a store it could not
        open): its chunks are then read by the deep pass, which reports what it meets."""
        try:
            return self.futures[i].result()
        except Exception:  # noqa: BLE001 - nothing proved is nothing trusted; the deep pass words it
            return TaskProofs()

    def _all(self) -> list[TaskProofs]:
        if self._results is None:
            self._starter.join()
            self._results = [self._result(i) for i in range(len(self.futures))]
        return self._results

    def sha256s(self, refs: list[ChunkRef]) -> list[str | None]:
        """For each of `refs`: the SHA-256 (hex) of its bytes if a worker proved it intact with
        the ref's own hash, stored size and length, else None (read it the usual way). Waits
        for the workers (they prove disjoint spans)."""
        found = [t.proved for t in self._all()]
        out: list[str | None] = []
        for r in refs:
            p = None
            for proved in found:
                p = proved.get(r.hash)
                if p is not None:
                    break
            out.append(p[2] if p is not None and p[0] == r.stored_size and p[1] == r.length else None)
        return out

    def reads(self) -> list[tuple[str, int, int]]:
        """The spans the workers read (pack, start, end), of the tasks that came back."""
        return [s for t in self._all() for s in t.reads]

    def close(self) -> None:
        """Tasks not started are dropped, running ones waited for; the workers and the fork
        server this pool started are stopped."""
        with self._lock:
            self._closed = True
        self._closing.set()
        self._starter.join()
        if self.pool is not None:
            workerprocs.close(self.pool)


def start(repo: Any, mids: list[str], max_length: int, processes: int | None, *, local: bool = True
          ) -> EarlyProofs | None:
    """Start proving the packed chunks of at most `max_length` bytes of manifests `mids` on
    worker processes (`resolve(processes, ...)`, checked now: a refusal comes before any
    read; auto counts the files the catalog records for `mids`); None if none is to be used."""
    if processes == 0:
        return None
    files = repo.recorded_file_count(mids) if processes is None else 0
    n = resolve(processes, files=files, sealed=repo.sealed, local=local,
                has_settings=getattr(repo, "settings", None) is not None, idle_check=False)
    if not n:
        return None
    from archiver.procfiles import worker_settings
    since = workerprocs.CpuSample.now() if processes is None else None  # auto: idle cores measured from now
    return EarlyProofs(worker_settings(repo.settings), list(mids), max_length, n, since)
