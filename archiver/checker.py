"""verify: prove that archives are complete and uncorrupted.

shallow  every chunk object present with its recorded stored size, learned from LIST
         pages per chunk-key prefix (not one request per chunk), plus the manifest's own
         mirror in the store and the safety of its paths.
deep     additionally fetch, decode and re-hash every chunk, and re-hash every whole
         file (BLAKE3 and SHA-256).
sample   additionally deep-check a fraction of the chunks, least recently verified first,
         so repeated sampled runs eventually cover everything.
Every problem names the manifest, file, byte range and chunk. A name whose chain of
versions has forked or has a second root is a 'chain' problem. Each run is appended to
the catalog's audit log; if the catalog cannot be written (read-only, or locked by another
process) the verification still stands and `audit_error` says why it was not recorded."""
from __future__ import annotations

import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from archiver.errors import (ArchiverError, CatalogLockedError, CatalogReadOnlyError, EmptyCatalogError, FileHashError,
                             InvalidOptionError, translated)
from archiver.parallel import default_workers, ordered_map, window_for
from archiver.problems import Outcome, Problem, chunk_problem, file_hash_problem
from archiver.progress import Progress
from archiver.repository import Repository
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

    def __post_init__(self) -> None:
        self._seen: set[tuple] = set()

    def record(self, write, *args) -> None:
        """A catalog write (audit row, chunk check times) that must not undo the
        verification: a read-only or locked catalog is noted once, and not retried."""
        if self.audit_error is not None:
            return
        try:
            with translated():
                write(*args)
        except (CatalogReadOnlyError, CatalogLockedError) as e:
            self.audit_error = str(e)

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
           progress: Progress | None = None) -> VerifyReport:
    """Check the named archives (or every recorded archive with all_archives=True). Never
    raises for damage found in the store: damage becomes Problems in the report."""
    check_sample(sample)
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
    manifests: dict[str, Manifest] = {}
    for mid in ids:
        m = _load(repo, mid, report, trusted)
        if m is not None:
            manifests[mid] = m
    _chain_problems(repo, manifests, report)
    uses = _uses_by_hash(manifests)
    _shallow(repo, uses, report)
    nworkers = workers or default_workers()
    if deep:
        progress.start("verify", sum(m.total_size for m in manifests.values()))
        with ThreadPoolExecutor(nworkers, thread_name_prefix="verify") as pool:
            for mid, m in manifests.items():
                for e in m.files:
                    _deep_file(repo, mid, e, pool, window_for(nworkers), report, progress)
        progress.finish()
    elif sample:
        _sample(repo, uses, sample, nworkers, report, progress)
    report.seconds = round(time.monotonic() - started, 3)
    for mid in ids:
        mine = [p for p in report.problems if p.manifest == mid]
        report.record(repo.audit, "verify", mid, not mine, {"mode": mode, "problems": len(mine),
                                                            "first": [p.line() for p in mine[:20]], "manifest": mid})
    return report


def check_sample(sample: float | None) -> None:
    if sample is not None and not (0.0 < sample <= 1.0):
        raise InvalidOptionError("sample", "must be a fraction in (0, 1]")


def _load(repo: Repository, mid: str, report: VerifyReport, trusted: list[bytes] | None) -> Manifest | None:
    try:
        m = repo.load_manifest(mid)
    except ArchiverError as e:
        report.add(Problem(mid, "manifest", str(e)))
        return None
    copy = repo.manifest_copy_problem(mid, m)
    if copy is not None:
        report.add(Problem(mid, "manifest", copy))
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


def _shallow(repo: Repository, uses: dict[str, list[ChunkUse]], report: VerifyReport) -> None:
    """Every chunk present with its recorded stored size, from LIST pages."""
    sizes = repo.chunk_sizes(uses)
    for h in sorted(uses):
        report.chunks_checked += 1
        got = sizes.get(h)
        for use in uses[h]:
            if got is None:
                report.add(use.problem("chunk object is missing from the store", "missing-chunk"))
            elif got != use.ref.stored_size:
                report.add(use.problem(f"stored size {got} != recorded {use.ref.stored_size}",
                                                   "size-mismatch"))


def _deep_file(repo: Repository, mid: str, e: Entry, pool: ThreadPoolExecutor, window: int,
               report: VerifyReport, progress: Progress) -> None:
    checked: list[tuple[str, bool]] = []
    broken = False
    try:
        for piece in repo.stream_file(e, pool, window, keep_going=True):
            report.chunks_read += 1
            c = piece.ref
            checked.append((c.hash, piece.error is None))
            if piece.error is not None:
                broken = True
                report.add(chunk_problem(mid, e, c, piece.error))
                continue
            assert piece.data is not None
            report.bytes_read += len(piece.data)
            progress.advance(len(piece.data))
        if not broken:
            report.files_hashed += 1
    except FileHashError:
        report.files_hashed += 1
        report.add(file_hash_problem(mid, e))
    finally:
        report.record(repo.record_chunk_checks, checked)


def _sample(repo: Repository, uses: dict[str, list[ChunkUse]], fraction: float, nworkers: int,
            report: VerifyReport, progress: Progress) -> None:
    order = repo.chunks_by_staleness(uses)
    pick = order[:math.ceil(fraction * len(order))] if order else []
    progress.start("verify sample", sum(uses[h][0].ref.length for h in pick))
    results: list[tuple[str, bool]] = []
    with ThreadPoolExecutor(nworkers, thread_name_prefix="sample") as pool:
        for h, got in ordered_map(pool, lambda h: repo.try_read_chunk(uses[h][0].ref), pick,
                                  window_for(nworkers)):
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
    report.record(repo.record_chunk_checks, results)
