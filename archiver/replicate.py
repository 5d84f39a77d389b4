"""replicate: copy archives (manifests, their chunks, their signatures) to another store.

Corruption never spreads: every source chunk object is decoded and its bytes re-hashed
before the same object bytes are written to the copy (so the manifest's stored sizes stay
valid there). Per manifest the order is chunks, then the manifest, then its signatures,
so a copy interrupted at any point (kill -9) never holds a manifest that names a missing
chunk, and a re-run writes only what is missing. A damaged source chunk is reported
(manifest, file, chunk) and neither it nor any manifest naming it is written."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from archiver.events import FIRST_PROBLEMS, REPLICATION, Event, ManifestOutcome
from archiver.errors import ArchiverError, EmptyCatalogError, IntegrityError, ObjectMissingError, UsageError
from archiver.parallel import default_workers, ordered_map, window_for
from archiver.problems import Outcome, Problem, chunk_problem
from archiver.progress import Progress
from archiver.repository import Repository
from archiver.retention import WritePolicy
from manifests.model import ChunkRef, Entry, Manifest


@dataclass
class ReplicateResult(Outcome):
    """`manifests`: ids now complete in the copy; `objects_written`: objects this run wrote
    (0 on a re-run of a finished copy); `chunks_checked`: source chunks proved."""

    source: str
    destination: str
    manifests: list[str] = field(default_factory=list)
    objects_written: int = 0
    bytes_written: int = 0
    chunks_checked: int = 0
    chunks_present: int = 0
    unlocked: list[str] = field(default_factory=list)  # locked at the source, but the copy cannot hold a lock
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0


def select(repo: Repository, refs: Iterable[str], all_archives: bool) -> list[str]:
    """The ids named (or every recorded one), each with its ancestors, parents first: a
    copy's chains are then as complete as the source's."""
    refs = list(refs)
    if bool(refs) == all_archives:
        raise UsageError("give REF... or --all (not both)")
    if all_archives:
        ids = [r.id for r in repo.list_archives()]
        stored = 0 if ids else repo.stored_manifest_count()
        if stored:  # an empty or wrong catalog would otherwise copy nothing and pass
            raise EmptyCatalogError(str(repo.catalog_path), repo.url, stored)
        return ids
    order: list[str] = []
    seen: set[str] = set()
    for ref in refs:
        line: list[str] = []
        mid: str | None = repo.resolve(ref)
        while mid is not None and mid not in seen:
            seen.add(mid)
            line.append(mid)
            try:
                mid = repo.load_manifest(mid).parent
            except ArchiverError:
                mid = None  # a missing or damaged ancestor is reported when it is copied
        order.extend(reversed(line))
    return order


def replicate(src: Repository, dst: Repository, ids: list[str], *, workers: int | None = None,
              progress: Progress | None = None) -> ReplicateResult:
    """Copy each manifest in `ids` (parents first) from `src` to `dst`."""
    t0 = time.monotonic()
    res = ReplicateResult(source=src.url, destination=dst.url)
    n = workers or default_workers()
    try:
        with ThreadPoolExecutor(n) as pool:
            for mid in ids:
                _one(src, dst, mid, pool, window_for(n), res, progress)
    finally:
        if progress is not None:
            progress.finish()
    res.seconds = round(time.monotonic() - t0, 3)
    details = {"to": dst.url, "from": src.url, "manifests": len(res.manifests), "objects_written": res.objects_written,
               "bytes_written": res.bytes_written, "problems": len(res.problems),
               "first": [p.line() for p in res.problems[:20]]}
    # one PREMIS replication event in each store's log (and so in each catalog's audit log)
    outcomes = tuple(ManifestOutcome(mid) for mid in res.manifests)
    for repo, direction in ((src, "out"), (dst, "in")):
        repo.append_event(Event(REPLICATION, ok=res.ok, manifests=outcomes,
                                problems=tuple(p.line() for p in res.problems[:FIRST_PROBLEMS]),
                                problem_count=len(res.problems), details={**details, "direction": direction}))
    return res


def _one(src: Repository, dst: Repository, mid: str, pool: ThreadPoolExecutor, window: int,
         res: ReplicateResult, progress: Progress | None) -> None:
    try:
        data = src.manifest_object(mid)
        m = src.fetch_manifest(mid)
    except ArchiverError as e:
        res.problems.append(Problem(mid, "manifest", f"not replicated: source manifest: {e}"))
        return
    uses = _first_use(m)
    policy = _copy_policy(src, dst, mid, res)  # the source archive's Object Lock, applied on the copy too
    present = dst.chunk_sizes(uses)  # one LIST per prefix: what the copy holds already
    missing: list[ChunkRef] = []
    failed = False
    for h, (e, ref) in uses.items():
        size = present.get(h)
        if size is None:
            missing.append(ref)
        elif size == ref.stored_size:
            res.chunks_present += 1
            if policy is not None:
                dst.lock_existing_chunk(h, policy)
        else:
            failed = True
            res.problems.append(chunk_problem(mid, e, ref, f"the copy holds a different object ({size} bytes, "
                                                           f"{ref.stored_size} expected); repair the copy", "size-mismatch"))
    for ref, outcome in ordered_map(pool, lambda r: _copy_chunk(src, dst, r, policy), missing, window):
        res.chunks_checked += 1
        if isinstance(outcome, ArchiverError):
            failed = True
            e, _ = uses[ref.hash]
            res.problems.append(chunk_problem(mid, e, ref, f"not replicated: {outcome}"))
        elif outcome:
            res.objects_written += 1
            res.bytes_written += ref.stored_size
        if progress is not None:
            progress.advance(ref.stored_size)
    if failed:
        res.problems.append(Problem(mid, "manifest", "not replicated: a chunk it names could not be copied"))
        return
    try:
        for h, (_, tree_data) in sorted(src.manifest_trees(m).items()):  # v3: trees before their manifest
            if dst.put_tree_object(h, tree_data, policy):  # re-hashed against its name; rebuilt from the
                res.objects_written += 1                  # entries the source's trees were checked to hold
                res.bytes_written += len(tree_data)
        for fm in sorted({e.filemap: e for e in m.files if e.filemap}.values(), key=lambda e: e.filemap):
            fm_data = src.filemap_object(fm)  # re-hashed against its name by put_filemap_object
            if dst.put_filemap_object(fm.filemap, fm_data, policy):  # v2: file maps before their manifest
                res.objects_written += 1
                res.bytes_written += len(fm_data)
        if dst.put_manifest_object(mid, data, policy):
            res.objects_written += 1
            res.bytes_written += len(data)
        good, bad = src.signature_objects(mid)
        for fp, sig in good:
            if dst.put_signature_object(mid, fp, sig, policy):
                res.objects_written += 1
                res.bytes_written += len(sig)
        for why in bad:
            res.problems.append(Problem(mid, "signature", f"not replicated: {why}"))
        if policy is not None:
            dst.record_policy(mid, policy)
        dst.record_copied_manifest(m, data)
    except IntegrityError as e:
        res.problems.append(Problem(mid, "manifest", f"not replicated: {e}"))
        return
    res.manifests.append(mid)


def _copy_policy(src: Repository, dst: Repository, mid: str, res: ReplicateResult) -> WritePolicy | None:
    """The Object Lock the source recorded for `mid` (its strongest retention record), as a
    write policy for the copy; None if the archive is not locked. A copy that cannot hold a
    lock (a local directory, a bucket without Object Lock) still gets the archive, and the
    result says it is unlocked there."""
    if not src.can_lock():
        return None
    lock = src.recorded_lock(mid)
    if lock.mode is None and not lock.legal_hold:
        return None
    if not dst.can_lock_now():
        res.unlocked.append(mid)
        return None
    return WritePolicy(lock=lock)


def _copy_chunk(src: Repository, dst: Repository, ref: ChunkRef, policy: WritePolicy | None = None
                ) -> bool | ArchiverError:
    """Prove the source object, then write the same bytes; damage is returned, not raised."""
    try:
        obj = src.chunk_object(ref)
        return dst.put_chunk_object(ref, obj, policy)
    except (IntegrityError, ObjectMissingError) as e:
        return e


def _first_use(m: Manifest) -> dict[str, tuple[Entry, ChunkRef]]:
    """Each chunk the manifest names, with the first file (and ref) that uses it."""
    uses: dict[str, tuple[Entry, ChunkRef]] = {}
    for e in m.files:
        for c in e.chunks:
            uses.setdefault(c.hash, (e, c))
    return uses
