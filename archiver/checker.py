"""verify: prove that archives are complete and uncorrupted.

shallow  every chunk object present with its recorded stored size, learned from LIST
         pages per chunk-key prefix (not one request per chunk), plus the manifest's own
         mirror in the store and the safety of its paths.
deep     additionally fetch, decode and re-hash every chunk, and re-hash every whole
         file (BLAKE3 and SHA-256).
sample   additionally deep-check a fraction of the chunks, least recently verified first,
         so repeated sampled runs eventually cover everything.
Every problem names the manifest, file, byte range and chunk. Each run is appended to
the catalog's audit log."""
from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

import blake3

from archiver.errors import (ArchiverError, IntegrityError, ObjectMissingError, UnsafePathError,
                             UsageError)
from archiver.outcome import Outcome
from archiver.parallel import default_workers, ordered_map, window_for
from archiver.progress import Progress
from archiver.repository import Repository
from manifests.model import ChunkRef, Entry, Manifest, manifest_key
from manifests.paths import check_paths


@dataclass
class Problem:
    manifest: str
    kind: str                 # missing-chunk | size-mismatch | corrupt-chunk | file-hash | manifest | unsafe-path
    detail: str
    path: str | None = None
    offset: int | None = None
    length: int | None = None
    chunk: str | None = None

    def line(self) -> str:
        where = f" {self.path}" if self.path else ""
        if self.offset is not None:
            where += f" bytes {self.offset}-{self.offset + (self.length or 0)}"
        chunk = f" chunk {self.chunk}" if self.chunk else ""
        return f"{self.kind}: manifest {self.manifest[:16]}{where}{chunk}: {self.detail}"


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


def verify(repo: Repository, refs: Iterable[str] = (), *, all: bool = False, deep: bool = False,
           sample: float | None = None, workers: int | None = None, trusted: list[bytes] | None = None,
           progress: Progress | None = None) -> VerifyReport:
    """Check the named archives (or every archive with all=True). Never raises for damage
    found in the store: damage becomes Problems in the report."""
    if sample is not None and not (0.0 < sample <= 1.0):
        raise UsageError("--sample must be a fraction in (0, 1]")
    started = time.monotonic()
    progress = progress or Progress()
    if all:
        ids = [r.id for r in repo.catalog.manifest_rows()]
    else:
        ids = list(dict.fromkeys(repo.resolve(r) for r in refs))
        if not ids:
            raise UsageError("give REF or --all")
    mode = "deep" if deep else (f"sample:{sample:g}" if sample else "shallow")
    report = VerifyReport(mode=mode, manifests=ids)
    manifests: dict[str, Manifest] = {}
    for mid in ids:
        m = _load(repo, mid, report, trusted)
        if m is not None:
            manifests[mid] = m
    _shallow(repo, manifests, report)
    nworkers = workers or default_workers()
    if deep:
        total = sum(m.total_size for m in manifests.values())
        progress.start("verify", total)
        with ThreadPoolExecutor(nworkers, thread_name_prefix="verify") as pool:
            for mid, m in manifests.items():
                for e in m.files:
                    _deep_file(repo, mid, e, pool, window_for(nworkers), report, progress)
        progress.finish()
    elif sample:
        _sample(repo, manifests, sample, nworkers, report, progress)
    report.seconds = round(time.monotonic() - started, 3)
    for mid in ids:
        mine = [p for p in report.problems if p.manifest == mid]
        repo.catalog.audit("verify", mid if repo.catalog.has_manifest(mid) else None, not mine, {
            "mode": mode, "problems": len(mine), "first": [p.line() for p in mine[:20]],
            "manifest": mid})
    return report


def _load(repo: Repository, mid: str, report: VerifyReport, trusted: list[bytes] | None) -> Manifest | None:
    try:
        m = repo.load_manifest(mid)
    except ArchiverError as e:
        report.problems.append(Problem(mid, "manifest", str(e)))
        return None
    try:
        stored = repo.store.get(manifest_key(mid))
        if stored != m.canonical_json():
            report.problems.append(Problem(mid, "manifest", "store copy of the manifest differs from its id"))
    except ObjectMissingError:
        report.problems.append(Problem(mid, "manifest", "manifest is missing from the store"))
    for msg in repo.chain_problems(m):
        report.problems.append(Problem(mid, "chain", msg))
    for msg in repo.signature_problems(mid, trusted):
        report.problems.append(Problem(mid, "signature", msg))
    try:
        check_paths((e.path, e.type) for e in m.entries)
    except UnsafePathError as e:
        report.problems.append(Problem(mid, "unsafe-path", str(e)))
    return m


def _refs_by_hash(manifests: dict[str, Manifest]) -> dict[str, list[tuple[str, Entry, ChunkRef]]]:
    where: dict[str, list[tuple[str, Entry, ChunkRef]]] = defaultdict(list)
    for mid, m in manifests.items():
        for e in m.files:
            for c in e.chunks:
                where[c.hash].append((mid, e, c))
    return where


def _shallow(repo: Repository, manifests: dict[str, Manifest], report: VerifyReport) -> None:
    """One LIST per 2-hex prefix that the manifests use (pages of 1000 keys on S3)."""
    where = _refs_by_hash(manifests)
    by_prefix: dict[str, set[str]] = defaultdict(set)
    for h in where:
        by_prefix[h[:2]].add(h)
    for prefix in sorted(by_prefix):
        wanted = by_prefix[prefix]
        sizes = {info.key.rsplit("/", 1)[-1]: info.size for info in repo.store.list(f"chunks/{prefix}/")
                 if info.key.rsplit("/", 1)[-1] in wanted}
        for h in sorted(wanted):
            report.chunks_checked += 1
            got = sizes.get(h)
            for mid, e, c in where[h]:
                if got is None:
                    report.problems.append(Problem(mid, "missing-chunk", "chunk object is missing from the store",
                                                   e.path, c.offset, c.length, h))
                elif got != c.stored_size:
                    report.problems.append(Problem(mid, "size-mismatch",
                                                   f"stored size {got} != recorded {c.stored_size}",
                                                   e.path, c.offset, c.length, h))


def _kind(err: ArchiverError) -> str:
    return "missing-chunk" if isinstance(err, ObjectMissingError) else "corrupt-chunk"


def _fetch(repo: Repository, c: ChunkRef) -> bytes | ArchiverError:
    try:
        return repo.read_chunk(c)
    except (IntegrityError, ObjectMissingError) as e:
        return e


def _deep_file(repo: Repository, mid: str, e: Entry, pool: ThreadPoolExecutor, window: int,
               report: VerifyReport, progress: Progress) -> None:
    b3, sha = blake3.blake3(), hashlib.sha256()
    broken = False
    checked: list[tuple[str, bool]] = []
    for c, got in ordered_map(pool, lambda c: _fetch(repo, c), e.chunks, window):
        report.chunks_read += 1
        if isinstance(got, ArchiverError):
            broken = True
            checked.append((c.hash, False))
            report.problems.append(Problem(mid, _kind(got), str(got), e.path, c.offset, c.length, c.hash))
            continue
        checked.append((c.hash, True))
        report.bytes_read += len(got)
        progress.advance(len(got))
        if not broken:
            b3.update(got)
            sha.update(got)
    repo.catalog.mark_verified(checked)
    if broken:
        return
    report.files_hashed += 1
    if b3.hexdigest() != e.blake3 or sha.hexdigest() != e.sha256:
        report.problems.append(Problem(mid, "file-hash", "whole-file hash does not match the manifest",
                                       e.path, 0, e.size))


def _sample(repo: Repository, manifests: dict[str, Manifest], fraction: float, nworkers: int,
            report: VerifyReport, progress: Progress) -> None:
    where = _refs_by_hash(manifests)
    order = repo.catalog.chunks_by_staleness(where)
    pick = order[:math.ceil(fraction * len(order))] if order else []
    progress.start("verify sample", sum(where[h][0][2].length for h in pick))
    results: list[tuple[str, bool]] = []
    with ThreadPoolExecutor(nworkers, thread_name_prefix="sample") as pool:
        for h, got in ordered_map(pool, lambda h: _fetch(repo, where[h][0][2]), pick, window_for(nworkers)):
            report.chunks_read += 1
            ok = not isinstance(got, ArchiverError)
            results.append((h, ok))
            if ok:
                report.bytes_read += len(got)
                progress.advance(len(got))
                continue
            for mid, e, c in where[h]:
                report.problems.append(Problem(mid, _kind(got), str(got), e.path, c.offset, c.length, h))
    progress.finish()
    repo.catalog.mark_verified(results)
