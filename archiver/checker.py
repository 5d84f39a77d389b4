"""verify: prove that archives are complete and uncorrupted.

shallow  every chunk object present with its recorded stored size, learned from LIST
         pages per chunk-key prefix (not one request per chunk), plus the manifest's own
         mirror in the store and the safety of its paths.
deep     additionally fetch, decode and re-hash every chunk, and re-hash every whole
         file (BLAKE3 and SHA-256). Within one run each distinct file entry (same chunk
         list, size and whole-file hashes) is read once, however many versions name it, so
         a deep run costs the unique bytes, not the number of versions; its findings are
         still reported for every manifest that names it. Small files are read in
         parallel across files, since one small file alone cannot keep the workers busy.
sample   additionally deep-check a fraction of the chunks, least recently verified first,
         so repeated sampled runs eventually cover everything; `max_bytes` / `max_seconds`
         bound one run (a budgeted rotation: the least recently verified chunks first, so
         no chunk is checked twice before every chunk has been checked once).
Every run first checks the store's event log (each writer's hash chain) and ends by
appending one 'fixity check' event to it (archiver.events), which the catalog records too.
Every problem names the manifest, file, byte range and chunk. A name whose chain of
versions has forked or has a second root is a 'chain' problem. Each run is appended to
the catalog's audit log; if the catalog cannot be written (read-only, or locked by another
process) the verification still stands and `audit_error` says why it was not recorded."""
from __future__ import annotations

import dataclasses

import math
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

from archiver import digests, events, packproof
from archiver.digests import FileDigest
from archiver.errors import ArchiverError, EmptyCatalogError, FileHashError, InvalidOptionError, translated
from archiver.parallel import batches, default_workers, ordered_map, window_for
from archiver.problems import Outcome, Problem, chunk_problem, file_hash_problem
from archiver.progress import Progress
from archiver.repository import Repository
from archiver.stores.base import ObjectColdError
from manifests.model import ChunkRef, Entry, Manifest
from manifests.paths import check_link, check_paths


@dataclass
class VerifyReport(Outcome):
    mode: str
    manifests: list[str]
    problems: list[Problem] = field(default_factory=list)
    chunks_checked: int = 0
    chunks_read: int = 0
    bytes_read: int = 0
    files_hashed: int = 0
    seconds: float = 0.0
    audit_error: str | None = None  # why this run is missing from the catalog's audit log, if it is
    event: str | None = None  # the key of this run's event in the store
    event_error: str | None = None  # why this run's event is missing from the store, if it is
    # Chunks a deep or sampled pass could not read because they sit in a cold storage class
    # (GLACIER, DEEP_ARCHIVE) and are not thawed: not checked, and not a problem either.
    not_checked_cold: list[str] = field(default_factory=list)
    retention_checked: int = 0  # objects whose Object Lock was checked (verify with retention)
    thaw: dict | None = None  # with a thaw: where the cold chunks to be read stand (archiver.thaw)
    files_proven_earlier: int = 0  # deep: of files_hashed, those accepted (not read) as proved earlier in the run

    def __post_init__(self) -> None:
        self._seen: set[tuple] = set()
        self._chunks: dict[str, bool] = {}  # every chunk deep-read: intact?

    def checked(self, results: Iterable[tuple[str, bool]]) -> None:
        for h, ok in results:
            self._chunks[h] = self._chunks.get(h, True) and ok

    def add(self, p: Problem) -> None:
        """Record a problem once: deep and sampled passes meet again what the shallow pass
        already found (a missing chunk is one problem per reference, not two)."""
        where = (p.manifest, p.kind, p.path, p.offset, p.length, p.chunk, p.detail if p.chunk is None else "")
        if where not in self._seen:
            self._seen.add(where)
            self.problems.append(p)


@dataclass(frozen=True)
class ChunkUse:
    """One place a chunk is used: which manifest, which file, which ref."""

    manifest: str
    entry: Entry
    ref: ChunkRef

    def problem(self, err: ArchiverError | str, kind: str | None = None) -> Problem:
        return chunk_problem(self.manifest, self.entry, self.ref, err, kind)


def verify(repo: Repository, refs: Iterable[str] = (), *, all_archives: bool = False, deep: bool = False,
           sample: float | None = None, workers: int | None = None, trusted: list[bytes] | None = None,
           progress: Progress | None = None, max_bytes: int | None = None, max_seconds: float | None = None,
           sign_key: object = None, retention: bool = False, retain_until: Any = None,
           thaw: Any = None, executor: Any = None, processes: int | None = 0) -> VerifyReport:
    """Check the named archives (or every recorded archive with all_archives=True). Never
    raises for damage found in the store: damage becomes Problems in the report.
    `max_bytes` (stored bytes read) and `max_seconds` bound a sampled run; either one
    alone means `sample=1.0`. `sign_key` signs this run's event. `processes` (deep, local,
    no thaw): worker processes that prove the packed small chunks while the manifests load
    (archiver.packproof); 0 none (the default), None auto."""
    sample = check_budget(deep, sample, max_bytes, max_seconds)
    check_sample(sample)
    packproof.check(processes)
    if (retention or retain_until is not None) and not repo.can_lock():
        raise InvalidOptionError("retention", f"cannot be checked: {repo.url} is not an S3 bucket, so it holds no "
                                              f"Object Lock")
    started = time.monotonic()
    progress = progress or Progress()
    if all_archives:
        ids = [r.id for r in repo.list_archives()]
        if not ids:
            stored = repo.stored_manifest_count()
            if stored:  # an empty or wrong catalog would otherwise "verify" nothing and pass
                raise EmptyCatalogError(str(repo.catalog_path), repo.url, stored)
    else:
        ids = list(dict.fromkeys(repo.resolve(r) for r in refs))
        if not ids:
            raise InvalidOptionError("refs", "are empty: name archives to verify, or ask for all of them")
    mode = "deep" if deep else (f"sample:{sample:g}" if sample else "shallow")
    report = VerifyReport(mode=mode, manifests=ids)
    local = not (executor is not None and executor.distributed)
    # deep and local: the packed small chunks are proved on worker processes from now on, while
    # this process loads the manifests and plans its reads (archiver.packproof)
    early = packproof.start(repo, ids, SMALL_FILE, processes, local=local) if deep and thaw is None else None
    try:
        return _verify(repo, ids, report, deep, sample, _nworkers(workers), trusted, progress, max_bytes,
                       max_seconds, sign_key, retention, retain_until, thaw, executor, early, started)
    finally:
        if early is not None:
            early.close()


def _nworkers(workers: int | None) -> int:
    """The threads of a verify: `workers`, else archiver.parallel's default."""
    return workers or default_workers()


def _verify(repo: Repository, ids: list[str], report: VerifyReport, deep: bool, sample: float | None,
            nworkers: int, trusted: list[bytes] | None, progress: Progress, max_bytes: int | None,
            max_seconds: float | None, sign_key: object, retention: bool, retain_until: Any, thaw: Any,
            executor: Any, early: packproof.EarlyProofs | None, started: float) -> VerifyReport:
    """`verify` once its archives are resolved (and, with `early`, their packs being proved)."""
    for p in repo.read_events(load_lists=deep).problems:  # tamper evidence, before this run's own event
        report.add(p)
    manifests: dict[str, Manifest] = {}
    stored: dict[str, str] = {}  # manifests whose store copy this run proved: id -> name
    for mid in ids:
        m = _load(repo, mid, report, trusted, stored)
        if m is not None:
            manifests[mid] = m
    _chain_problems(repo, manifests, report)
    uses = _uses_by_hash(manifests)
    local_deep = deep and not (executor is not None and executor.distributed)
    if local_deep:  # packed chunks: one read per span of a pack; the presence check takes its lookups
        repo.plan_reads(u[0].ref for u in uses.values())
    _shallow(repo, uses, report, planned=local_deep)
    if thaw is not None and deep:
        _thaw(repo, {h: u[0].ref.stored_size for h, u in uses.items()}, thaw, report)
    if deep and executor is not None and executor.distributed:  # one task per file (archiver.fanout)
        from archiver import fanout
        progress.start("verify", sum(m.total_size for m in manifests.values()))
        fanout.deep_files(repo, executor, [(mid, e) for mid, m in manifests.items() for e in m.files], report,
                          progress)
        progress.finish()
    elif deep:
        progress.start("verify", sum(m.total_size for m in manifests.values()))
        _deep(repo, manifests, nworkers, report, progress, early)
        progress.finish()
    elif sample:
        _sample(repo, uses, sample, nworkers, report, progress, max_bytes, max_seconds, thaw)
    if retention or retain_until is not None:
        for mid, m in manifests.items():
            _retention(repo, mid, m, retain_until, report)
    report.not_checked_cold = sorted(set(report.not_checked_cold))
    report.seconds = round(time.monotonic() - started, 3)
    _append_event(repo, report, ids, sign_key)
    return report


def check_budget(deep: bool, sample: float | None, max_bytes: int | None, max_seconds: float | None) -> float | None:
    """The sample fraction a budgeted run uses (1.0 if only a budget is given)."""
    if max_bytes is None and max_seconds is None:
        return sample
    if deep:
        raise InvalidOptionError("max_bytes" if max_bytes is not None else "max_seconds",
                                 "bounds a sampled verify, not a deep one (a deep verify reads everything)")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise InvalidOptionError("max_bytes", f"must be a whole number of bytes >= 1, got {max_bytes!r}")
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise InvalidOptionError("max_seconds", f"must be a number of seconds > 0, got {max_seconds!r}")
    return 1.0 if sample is None else sample


def _append_event(repo: Repository, report: VerifyReport, ids: list[str], sign_key: object) -> None:
    """One 'fixity check' event for the run: per manifest its outcome, and every chunk
    deep-read with its result (its time becomes each chunk's last deep check)."""
    outcomes = []
    for mid in ids:
        mine = [p for p in report.problems if p.manifest == mid]
        outcomes.append(events.ManifestOutcome(mid, not mine, len(mine),
                                               tuple(p.line() for p in mine[:events.FIRST_PROBLEMS])))
    chunks = report._chunks
    ev = events.Event(events.FIXITY_CHECK, ok=report.ok, manifests=tuple(outcomes),
                      chunks_ok=tuple(h for h, ok in chunks.items() if ok),
                      chunks_failed=tuple(h for h, ok in chunks.items() if not ok),
                      problems=tuple(p.line() for p in report.problems[:events.FIRST_PROBLEMS]),
                      problem_count=len(report.problems), details={"mode": report.mode})
    done = repo.append_event(ev, sign_key=sign_key)
    report.audit_error = done.catalog_error
    report.event_error = done.store_error
    report.event = done.record.key if done.record is not None else None


def check_sample(sample: float | None) -> None:
    if sample is not None and not (0.0 < sample <= 1.0):
        raise InvalidOptionError("sample", "must be a fraction in (0, 1]")


def _load(repo: Repository, mid: str, report: VerifyReport, trusted: list[bytes] | None,
          stored: dict[str, str] | None = None) -> Manifest | None:
    """`stored`: manifests of this run whose store copy was proved to be the manifest (id ->
    name); a parent among them is not fetched and parsed again for the chain check."""
    try:
        m, bad_maps, bad_trees = repo.load_manifest_all(mid)
    except ArchiverError as e:
        report.add(Problem(mid, "manifest", str(e)))
        return None
    for where, h, why in bad_trees:  # manifest v3: one problem per missing or damaged tree (its directory)
        report.add(Problem(mid, "tree", why, where or "/", 0, 0, h))
    for e, why in bad_maps:  # manifest v2: one problem per missing or damaged file map
        report.add(Problem(mid, "filemap", why, e.path, 0, e.size, e.filemap))
    copy = repo.manifest_copy_problem(mid, m)
    if copy is not None:
        report.add(Problem(mid, "manifest", copy))
    elif stored is not None:
        stored[mid] = m.name
    if stored is not None and m.parent is not None and m.parent in stored:
        if stored[m.parent] != m.name:  # the same words as Repository.chain_problems
            report.add(Problem(mid, "chain", f"broken chain: parent {m.parent[:16]} is named "
                                             f"{stored[m.parent]!r}, not {m.name!r}"))
    else:
        for msg in repo.chain_problems(m):
            report.add(Problem(mid, "chain", msg))
    for msg in repo.signature_problems(mid, trusted):
        report.add(Problem(mid, "signature", msg))
    try:
        with translated():
            check_paths((e.path, e.type) for e in m.entries)
            for e in m.entries:
                if e.is_symlink:
                    check_link(e.path, e.target)  # restore would refuse it
    except ArchiverError as e:
        report.add(Problem(mid, "unsafe-path", str(e)))
    if bad_maps:  # a file whose chunk list is unknown cannot be checked further (reported above)
        m = dataclasses.replace(m, entries=tuple(e for e in m.entries if e.resolved))
    return m


def _chain_problems(repo: Repository, manifests: dict[str, Manifest], report: VerifyReport) -> None:
    """Once per name verified: a fork or a second root in its chain of versions (NAME no
    longer names one newest version), on the first verified manifest of that name."""
    first: dict[str, str] = {}
    for mid, m in manifests.items():
        first.setdefault(m.name, mid)
    for name, mid in first.items():
        problem = repo.name_chain(name).problem()
        if problem is not None:
            report.add(Problem(mid, "chain", f"name {name!r} {problem}"))


def _uses_by_hash(manifests: dict[str, Manifest]) -> dict[str, list[ChunkUse]]:
    uses: dict[str, list[ChunkUse]] = defaultdict(list)
    for mid, m in manifests.items():
        for e in m.files:
            for c in e.chunks:
                uses[c.hash].append(ChunkUse(mid, e, c))
    return uses


def _shallow(repo: Repository, uses: dict[str, list[ChunkUse]], report: VerifyReport, planned: bool = False) -> None:
    """Every chunk present with its recorded stored size, from LIST pages. `planned`: the
    pack locations come from the read plan just made (see Repository.chunk_presence)."""
    sizes, pack_notes = repo.chunk_presence(uses, planned=planned)
    for h in sorted(uses):
        report.chunks_checked += 1
        got = sizes.get(h)
        for use in uses[h]:
            if got is None and h in pack_notes:  # a packed chunk: name its pack and what is wrong
                report.add(use.problem(f"chunk {h} is not readable: {pack_notes[h]}", "missing-chunk"))
            elif got is None:
                report.add(use.problem("chunk object is missing from the store", "missing-chunk"))
            elif got != use.ref.stored_size:
                report.add(use.problem(f"stored size {got} != recorded {use.ref.stored_size}",
                                                   "size-mismatch"))


# Files up to this size are deep-read several at a time (each is one chunk or a few, so
# reading them one after another would leave all but one worker idle).
SMALL_FILE = 1 << 20


def small_file_workers(nworkers: int) -> int:
    """Threads proving small files' batches: `nworkers`, but no more than the cores. Their
    work is Python holding the GIL between short hashes (a few KiB each), so a thread
    beyond the cores adds no hashing in parallel, only hand-offs of the GIL from core to
    core, which an idle machine pays in system time and wall (bench/RESULTS.md, "Deep
    verify of the small-file tree, fourth pass"). Big files' chunk pool keeps `nworkers`:
    their MiB-sized hashes and reads leave the GIL free for long stretches."""
    return max(1, min(nworkers, os.cpu_count() or 1))


@dataclass
class FileProof:
    """What deep-reading one file entry found, kept apart from any manifest so that every
    manifest naming the same entry can be given the same findings without reading it again."""

    chunks: list[tuple[str, bool]] = field(default_factory=list)  # every chunk read: intact?
    damaged: list[tuple[ChunkRef, ArchiverError]] = field(default_factory=list)
    cold: list[str] = field(default_factory=list)  # not readable without a thaw: not checked
    bytes_read: int = 0
    hashed: bool = False  # every chunk was read, so the whole file was hashed
    hash_mismatch: bool = False


def proof_key(e: Entry) -> tuple:
    """What makes two file entries the same proof: chunk list (with stored sizes), size and
    whole-file hashes. Path, mode and mtime do not change what is read or what it must hash to."""
    return e.size, e.blake3, e.sha256, e.chunks  # a ChunkRef is equal to another by its five fields


def _prove_file(repo: Repository, e: Entry, pool: ThreadPoolExecutor, window: int,
                progress: Progress) -> FileProof:
    """Fetch, decode and re-hash every chunk of `e` and the whole file; damage is recorded,
    never raised. Touches no report, so it may run on any thread. A file of one chunk (most
    small files) is read on this thread from one buffer: its chunk re-hashed on read, then
    SHA-256 (and BLAKE3 only if the file's is not the chunk's: see stream_file)."""
    if len(e.chunks) == 1:
        return _prove_one_chunk(repo, e, progress)
    return _prove_streamed(repo, e, pool, window, progress)


def _prove_one_chunk(repo: Repository, e: Entry, progress: Progress) -> FileProof:
    """`_prove_streamed` of a one-chunk file, with the same findings, without its stream."""
    return _one_chunk_proof(e, repo.try_read_chunk(e.chunks[0]), progress)


# The proof of a one-chunk file whose chunk was read intact (re-hashed on read), is the
# whole file (its hash is the file's BLAKE3) and whose SHA-256 matched: what nearly every
# small file's proof is, so `_prove_batch` returns this one marker for each rather than an
# object of its own, and `_deep` counts it from the entry (its one chunk, read intact).
INTACT_ONE = FileProof(hashed=True)


def _prove_batch(repo: Repository, batch: list[Entry], pool: ThreadPoolExecutor, progress: Progress,
                 early: packproof.EarlyProofs | None = None) -> list[FileProof]:
    """`_prove_file` of each small file of `batch` (in pack order): the one-chunk files'
    chunks are read together (`Repository.read_chunks`: each planned span of a pack once,
    every chunk decoded and re-hashed), the others streamed. An intact one-chunk file is
    INTACT_ONE; progress advances once for the batch's one-chunk files. A chunk a worker
    process proved with this very ref (`early`, archiver.packproof) is not read again: the
    file's SHA-256 is matched with that of the bytes the worker re-hashed to its BLAKE3."""
    ones = [e.chunks[0] for e in batch if len(e.chunks) == 1]
    shas: list[str | None] = early.sha256s(ones) if early is not None else [None] * len(ones)
    got = iter(repo.read_chunks([c for c, sha in zip(ones, shas) if sha is None], views=True))  # only hashed here
    proved = iter(shas)
    out: list[FileProof] = []
    append = out.append
    done = 0
    for e in batch:
        if len(e.chunks) != 1:
            append(_prove_empty(e) if not e.chunks else _prove_file(repo, e, pool, 2, progress))
            continue
        sha = next(proved)
        if sha is not None and e.chunks[0].hash == e.blake3 and sha == e.sha256:
            done += e.chunks[0].length
            append(INTACT_ONE)
            continue
        data = next(got) if sha is None else repo.try_read_chunk(e.chunks[0])  # a mismatch: read and worded as ever
        # its BLAKE3 is the chunk's, proved on read: only its SHA-256 is left to match
        if not isinstance(data, ArchiverError) and e.chunks[0].hash == e.blake3 and digests.sha256_matches(data, e):
            done += len(data)
            append(INTACT_ONE)
        else:  # damage (rare): worded by the one-chunk proof, which hashes it again
            append(_one_chunk_proof(e, data, progress))
    if done:
        progress.advance(done)
    return out


def _prove_empty(e: Entry) -> FileProof:
    """`_prove_streamed` of a file of no chunks: its recorded hashes must be those of no bytes."""
    return FileProof(hashed=True, hash_mismatch=not FileDigest(True).matches(e))


def _one_chunk_proof(e: Entry, got: bytes | ArchiverError, progress: Progress) -> FileProof:
    """What reading the one chunk of file `e` found (`got`: its bytes, re-hashed on read,
    or why not): the chunk's BLAKE3 is the file's when they are equal, so only SHA-256 (and
    BLAKE3 if they differ) is computed over the bytes again."""
    proof = FileProof()
    c = e.chunks[0]
    if isinstance(got, ObjectColdError):
        proof.cold.append(c.hash)
        return proof
    if isinstance(got, ArchiverError):
        proof.chunks.append((c.hash, False))
        proof.damaged.append((c, got))
        return proof
    proof.chunks.append((c.hash, True))
    proof.bytes_read = len(got)
    progress.advance(len(got))
    digest = FileDigest(True, blake3=c.hash != e.blake3)
    digest.update(got)
    proof.hashed = True
    proof.hash_mismatch = not digest.matches(e)
    return proof


def _prove_streamed(repo: Repository, e: Entry, pool: ThreadPoolExecutor, window: int,
                    progress: Progress) -> FileProof:
    """_prove_file by `stream_file`: any number of chunks, read `window` at a time."""
    proof = FileProof()
    broken = False
    try:
        for piece in repo.stream_file(e, pool, window, keep_going=True):
            c = piece.ref
            if isinstance(piece.error, ObjectColdError):  # needs a thaw: not checked, not damaged
                broken = True
                proof.cold.append(c.hash)
                continue
            proof.chunks.append((c.hash, piece.error is None))
            if piece.error is not None:
                broken = True
                proof.damaged.append((c, piece.error))
                continue
            assert piece.data is not None
            proof.bytes_read += len(piece.data)
            progress.advance(len(piece.data))
        proof.hashed = not broken
    except FileHashError:  # only raised when every chunk was read
        proof.hashed = True
        proof.hash_mismatch = True
    return proof


def _apply(report: VerifyReport, mid: str, e: Entry, proof: FileProof, first: bool) -> None:
    """Report what `proof` found as problems of manifest `mid`; the reading itself (chunks
    and bytes read, chunk results for the event) is counted once, for its first user."""
    if proof.cold or proof.damaged or proof.hash_mismatch:
        report.not_checked_cold.extend(proof.cold)
        for c, err in proof.damaged:
            report.add(chunk_problem(mid, e, c, err))
        if proof.hash_mismatch:
            report.add(file_hash_problem(mid, e))
    report.files_hashed += proof.hashed  # proved by its whole-file hash, now or earlier in this run
    if first:
        report.chunks_read += len(proof.chunks)
        report.bytes_read += proof.bytes_read
        report.checked(proof.chunks)
    else:
        report.files_proven_earlier += 1


def _deep_file(repo: Repository, mid: str, e: Entry, pool: ThreadPoolExecutor, window: int,
               report: VerifyReport, progress: Progress) -> None:
    _apply(report, mid, e, _prove_file(repo, e, pool, window, progress), True)


def _deep(repo: Repository, manifests: dict[str, Manifest], nworkers: int, report: VerifyReport,
          progress: Progress, early: packproof.EarlyProofs | None = None) -> None:
    """Deep-read each distinct file entry once: large ones one at a time (their chunks in
    parallel), small ones in parallel across files; then report per manifest, in order."""
    # each entry's proof key is hashed once, here (a key's hash walks its ChunkRefs and is
    # not cached): from then on an entry is known by the number of its distinct key
    index: dict[tuple, int] = {}
    unique: list[Entry] = []
    uses: list[tuple[str, Entry, int]] = []
    for mid, m in manifests.items():
        for e in m.files:
            k = index.setdefault(proof_key(e), len(unique))
            if k == len(unique):
                unique.append(e)
            uses.append((mid, e, k))
    del index
    proofs: list[FileProof | None] = [None] * len(unique)
    window = window_for(nworkers)
    small = [(k, e) for k, e in enumerate(unique) if e.size <= SMALL_FILE]
    # in pack order: each planned span of a pack is then read once, not once per file
    pos = repo.pack_positions(e.chunks[0].hash for _k, e in small if e.chunks)
    small.sort(key=lambda ke: pos.get(ke[1].chunks[0].hash, ("", 0)) if ke[1].chunks else ("", 0))
    with ThreadPoolExecutor(nworkers, thread_name_prefix="verify") as pool:
        for k, e in enumerate(unique):
            if e.size > SMALL_FILE:
                proofs[k] = _prove_file(repo, e, pool, window, progress)
        # file tasks wait on chunk tasks, so they run on a pool of their own (no deadlock)
        # several small files per task: the hand-off to a thread is paid once per batch
        nfiles = small_file_workers(nworkers)
        with ThreadPoolExecutor(nfiles, thread_name_prefix="verify-files") as files:
            for batch, got in ordered_map(files, lambda b: _prove_batch(repo, [e for _k, e in b], pool, progress,
                                                                           early),
                                          batches(small, lambda ke: ke[1].size), 4 * nfiles):
                for (k, _e), proof in zip(batch, got):
                    proofs[k] = proof
    seen = bytearray(len(unique))
    chunks = report._chunks
    intact = intact_bytes = later = 0  # INTACT_ONE proofs: at their first use, and later ones
    for mid, e, k in uses:
        proof = proofs[k]
        if seen[k]:
            progress.advance(e.size)
            if proof is INTACT_ONE:
                later += 1
                continue
            _apply(report, mid, e, proof, False)
            continue
        seen[k] = 1
        if proof is INTACT_ONE:  # as _apply counts it: one intact chunk read, the file proved
            intact += 1
            intact_bytes += e.chunks[0].length
            chunks.setdefault(e.chunks[0].hash, True)  # (one found damaged elsewhere stays so)
            continue
        assert proof is not None
        _apply(report, mid, e, proof, True)
    report.files_hashed += intact + later
    report.files_proven_earlier += later
    report.chunks_read += intact
    report.bytes_read += intact_bytes


def budgeted(order: list[str], sizes: dict[str, int], fraction: float, max_bytes: int | None) -> list[str]:
    """The chunks a sampled run reads, from `order` (least recently verified first): the
    first `fraction` of them, and with `max_bytes` only until that many stored bytes are
    reached (the chunk that reaches it is included, so every run but the last reads at
    least `max_bytes` and a rotation covers T bytes in ceil(T / max_bytes) runs)."""
    pick = order[:math.ceil(fraction * len(order))] if order else []
    if max_bytes is None:
        return pick
    chosen: list[str] = []
    total = 0
    for h in pick:
        if total >= max_bytes:
            break
        chosen.append(h)
        total += sizes[h]
    return chosen


def _thaw(repo: Repository, chunks: dict[str, int], options: Any, report: VerifyReport) -> None:
    """Thaw the cold chunks about to be read (waiting as `options` say); those still cold
    afterwards are reported as not checked."""
    from archiver import thaw as thaw_mod
    st = thaw_mod.prepare_chunks(repo, chunks, options)
    if st is not None and st.classes:
        report.thaw = st.to_dict()


def _sample(repo: Repository, uses: dict[str, list[ChunkUse]], fraction: float, nworkers: int,
            report: VerifyReport, progress: Progress, max_bytes: int | None = None,
            max_seconds: float | None = None, thaw: Any = None) -> None:
    order = repo.chunks_by_staleness(uses)
    pick = budgeted(order, {h: uses[h][0].ref.stored_size for h in order}, fraction, max_bytes)
    if thaw is not None:
        _thaw(repo, {h: uses[h][0].ref.stored_size for h in pick}, thaw, report)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds

    def feed() -> Iterable[str]:
        for h in pick:
            if deadline is not None and time.monotonic() >= deadline:
                return  # out of time: the rest stay the stalest for the next run
            yield h

    progress.start("verify sample", sum(uses[h][0].ref.length for h in pick))
    results: list[tuple[str, bool]] = []
    with ThreadPoolExecutor(nworkers, thread_name_prefix="sample") as pool:
        for h, got in ordered_map(pool, lambda h: repo.try_read_chunk(uses[h][0].ref), feed(),
                                  window_for(nworkers)):
            if isinstance(got, ObjectColdError):
                report.not_checked_cold.append(h)
                continue
            report.chunks_read += 1
            ok = not isinstance(got, ArchiverError)
            results.append((h, ok))
            if not isinstance(got, ArchiverError):
                report.bytes_read += len(got)
                progress.advance(len(got))
                continue
            for use in uses[h]:
                report.add(use.problem(got))
    progress.finish()
    report.checked(results)


def _retention(repo: Repository, mid: str, m: Manifest, retain_until: Any, report: VerifyReport) -> None:
    """Every object of the archive (chunks, manifest, signatures, retention records) must be
    locked at least as its recorded policy says and, with `retain_until`, until then."""
    from archiver.retention import Lock
    want = repo.recorded_lock(mid)
    if retain_until is not None:
        want = want.merge(Lock(want.mode or "GOVERNANCE", retain_until))
    if want.mode is None and not want.legal_hold:
        report.add(Problem(mid, "retention", "no Object Lock policy is recorded for this archive "
                                             "(archived without a lock; give a date to check against)"))
        return
    keys = repo.archive_keys(mid, m)
    report.retention_checked += len(keys)
    for key, why in repo.retention_shortfalls(mid, m, want):
        report.add(Problem(mid, "retention", f"{key}: {why}"))
