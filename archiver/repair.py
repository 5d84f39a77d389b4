"""repair: heal a store from its copies.

A deep check of the named archives finds every damaged or missing chunk, manifest and
signature in the target; each is fetched from the first copy whose bytes prove good (a
chunk decodes and re-hashes to its key, a manifest hashes to its id, a signature verifies),
and put back: a missing object with a write that never overwrites, a damaged one kept under
quarantine/ and replaced only if it is still the version proved damaged (If-Match on S3).
A copy serving wrong bytes is passed over; an object bad on every copy is reported with
every manifest and file that uses it, and left alone. The copies are only read."""
from __future__ import annotations

import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable

from archiver.events import FIRST_PROBLEMS, RECOVERY, Event, ManifestOutcome
from archiver.errors import ArchiverError, EmptyCatalogError, IntegrityError, ObjectMissingError, UsageError
from archiver.parallel import default_workers, ordered_map, window_for
from archiver.problems import Outcome, Problem
from archiver.repository import Repository
from manifests.model import ChunkRef, Entry, Manifest


@dataclass
class Fix:
    """One object of the target that is bad, and what was (or, with --dry-run, would be) done."""

    kind: str  # chunk | manifest | signature | filemap
    name: str  # chunk hash, manifest id, or manifest-id/fingerprint
    state: str  # missing | damaged
    detail: str
    source: str | None = None  # the copy whose bytes proved good; None: no copy had them
    action: str = "planned"  # planned | written | replaced | intact | none
    rejected: list[str] = field(default_factory=list)  # copies whose bytes did not prove good, and why


@dataclass
class RepairResult(Outcome):
    target: str
    sources: list[str]
    manifests: list[str]
    dry_run: bool
    fixes: list[Fix] = field(default_factory=list)
    repaired: int = 0
    chunks_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0


def select(repo: Repository, refs: Iterable[str], all_archives: bool) -> list[str]:
    refs = list(refs)
    if refs and all_archives:
        raise UsageError("give REF... or --all (not both)")
    if refs:
        return list(dict.fromkeys(repo.resolve(r) for r in refs))
    ids = [r.id for r in repo.list_archives()]
    stored = 0 if ids else repo.stored_manifest_count()
    if stored:
        raise EmptyCatalogError(str(repo.catalog_path), repo.url, stored)
    return ids


def repair(target: Repository, copies: list[Repository], ids: list[str], *, dry_run: bool = False,
           sample: float | None = None, workers: int | None = None) -> RepairResult:
    """Find what is bad in `target` for the manifests `ids`, and heal it from `copies`.
    Every chunk is read and re-hashed; with `sample` (a fraction in (0, 1]) every chunk is
    still listed (missing or wrong-sized ones are always healed) but only that fraction,
    least recently verified first, is read."""
    if not copies:
        raise UsageError("repair needs at least one copy to take good objects from")
    t0 = time.monotonic()
    res = RepairResult(target.url, [c.url for c in copies], list(ids), dry_run)
    manifests: dict[str, Manifest] = {}
    for mid in ids:
        m = _manifest(target, copies, mid, res)
        if m is not None:
            manifests[mid] = m
            _signatures(target, copies, mid, res)
    _chunks(target, copies, manifests, res, workers or default_workers(), sample)
    res.repaired = sum(1 for f in res.fixes if f.action in ("written", "replaced"))
    res.seconds = round(time.monotonic() - t0, 3)
    if not dry_run:  # a PREMIS recovery event in the target's log (and its catalog's audit log)
        healed = tuple(f.name for f in res.fixes if f.kind == "chunk" and f.action in ("written", "replaced"))
        target.append_event(Event(RECOVERY, ok=res.ok, manifests=tuple(ManifestOutcome(mid) for mid in ids),
                                  chunks_ok=healed, problems=tuple(p.line() for p in res.problems[:FIRST_PROBLEMS]),
                                  problem_count=len(res.problems), details={
            "store": target.url, "from": res.sources, "manifests": len(ids), "repaired": res.repaired,
            "fixes": [asdict(f) for f in res.fixes[:100]], "problems": len(res.problems),
            "first": [p.line() for p in res.problems[:20]]}))
    return res


def _apply(fix: Fix, res: RepairResult, candidates: Iterable[tuple[str, Callable[[], bytes]]],
           heal: Callable[[bytes], str], dry_run: bool) -> None:
    """Take the first candidate whose bytes prove good, then heal with them (unless dry-run)."""
    res.fixes.append(fix)
    for url, fetch in candidates:
        try:
            data = fetch()
        except (IntegrityError, ObjectMissingError) as e:
            fix.rejected.append(f"{url}: {e}")
            continue
        fix.source = url
        if not dry_run:
            fix.action = heal(data)
        return
    fix.action = "none"


def _manifest(target: Repository, copies: list[Repository], mid: str, res: RepairResult) -> Manifest | None:
    """The manifest (from the target's catalog, else a copy), healing the target's object."""
    bad_maps: list[tuple[Entry, str]] = []
    try:
        m, bad_maps, bad_trees = target.load_manifest_all(mid)
        if bad_trees:
            healed = _trees(target, copies, mid, bad_trees, res)
            if healed is None:
                return None
            m, bad_maps = (healed, []) if res.dry_run else target.load_manifest_keep_going(mid)
    except ArchiverError:
        m = None
    why = target.manifest_copy_problem(mid, m) if m is not None else "manifest is missing or damaged"
    if why is None:
        return _filemaps(target, copies, mid, m, bad_maps, res) if bad_maps else m
    fix = Fix("manifest", mid, "missing" if "missing" in why else "damaged", why)
    candidates = [(c.url, lambda c=c: c.manifest_object(mid)) for c in copies]
    if m is not None:
        candidates.append(("catalog", m.canonical_json))  # the catalog's copy is proved by the id too
    _apply(fix, res, candidates, lambda data: target.heal_manifest(mid, data), res.dry_run)
    if fix.source is None:
        res.problems.append(Problem(mid, "manifest", f"{why}; no copy holds a good one: {'; '.join(fix.rejected)}"))
        return m
    if m is None:
        m = next(c.fetch_manifest(mid) for c in copies if c.url == fix.source)
    return m


def _trees(target: Repository, copies: list[Repository], mid: str, bad: list[tuple[str, str, str]],
           res: RepairResult) -> Manifest | None:
    """Manifest v3: heal each missing or damaged tree from the first copy whose bytes parse as
    that tree, then read the trees again (a healed tree may name others that are bad too),
    until none is bad. Returns the manifest resolved (with --dry-run from a copy whose trees
    are good), or None if a tree is bad everywhere."""
    seen: set[str] = set()
    while bad:
        for where, h, why in bad:
            if h in seen:  # healed yet bad again: reported by the fix itself
                return None
            seen.add(h)
            fix = Fix("tree", h, "missing" if "missing" in why else "damaged", why)
            _apply(fix, res, [(c.url, lambda c=c, h=h, w=where: c.tree_object_checked(h, w)) for c in copies],
                   lambda data, h=h, w=where: target.heal_tree(h, w, data), res.dry_run)
            if fix.source is None:
                res.problems.append(Problem(mid, "tree", f"{why}; no copy holds a good one: {'; '.join(fix.rejected)}",
                                            where or "/", 0, 0, h))
                return None
        if res.dry_run:
            for c in copies:
                try:
                    return c.fetch_manifest(mid)
                except ArchiverError:
                    continue
            return None
        m, _, bad = target.load_manifest_all(mid)
    return m


def _filemaps(target: Repository, copies: list[Repository], mid: str, m: Manifest,
              bad: list[tuple[Entry, str]], res: RepairResult) -> Manifest | None:
    """Manifest v2: heal each missing or damaged file map from the first copy whose bytes
    parse as that file's map; the manifest comes back resolved (from the healed target, or
    with --dry-run from the copy that proved good), or None if a map is bad everywhere."""
    chunks: dict[str, tuple[ChunkRef, ...]] = {}
    for e, why in bad:
        fix = Fix("filemap", e.filemap, "missing" if "missing" in why else "damaged", why)
        _apply(fix, res, [(c.url, lambda c=c, e=e: c.filemap_object_checked(e)) for c in copies],
               lambda data, e=e: target.heal_filemap(e, data), res.dry_run)
        if fix.source is None:
            res.problems.append(Problem(mid, "filemap", f"{why}; no copy holds a good one: {'; '.join(fix.rejected)}",
                                        e.path, 0, e.size, e.filemap))
            return None
        source = target if not res.dry_run else next(c for c in copies if c.url == fix.source)
        chunks[e.path] = source.filemap_chunks(e)
    return replace(m, entries=tuple(replace(e, chunks=chunks[e.path]) if e.path in chunks else e
                                    for e in m.entries))


def _signatures(target: Repository, copies: list[Repository], mid: str, res: RepairResult) -> None:
    """Every valid signature any copy holds must be valid in the target too."""
    have, bad = target.signature_objects(mid)
    good_here = {fp for fp, _ in have}
    wanted: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for c in copies:
        for fp, data in c.signature_objects(mid)[0]:
            if fp not in good_here:
                wanted[fp].append((c.url, data))
    present = target.signature_fingerprints(mid)
    for fp, offers in sorted(wanted.items()):
        fix = Fix("signature", f"{mid}/{fp}", "damaged" if fp in present else "missing",
                  "signature does not verify" if fp in present else "signature is missing")
        _apply(fix, res, [(url, lambda d=data: d) for url, data in offers],
               lambda data, fp=fp: target.heal_signature(mid, fp, data), res.dry_run)
    healed = {f.name.split("/", 1)[1] for f in res.fixes if f.kind == "signature" and f.source}
    for why in bad:
        if not any(fp in why for fp in healed):
            res.problems.append(Problem(mid, "signature", f"{why}; no copy holds a good one"))


def _chunks(target: Repository, copies: list[Repository], manifests: dict[str, Manifest], res: RepairResult,
            workers: int, sample: float | None) -> None:
    """Deep-check every chunk the manifests name (once each; or with `sample` the listed
    suspects plus a fraction), then heal the bad ones."""
    uses: dict[str, list[tuple[str, Entry, ChunkRef]]] = defaultdict(list)
    refs: dict[str, ChunkRef] = {}
    for mid, m in manifests.items():
        for e in m.files:
            for c in e.chunks:
                refs.setdefault(c.hash, c)
                uses[c.hash].append((mid, e, c))
    bad: list[tuple[ChunkRef, ArchiverError]] = []
    checked: list[tuple[str, bool]] = []
    with ThreadPoolExecutor(workers) as pool:
        for ref, got in ordered_map(pool, target.try_read_chunk, _to_read(target, refs, sample), window_for(workers)):
            res.chunks_checked += 1
            checked.append((ref.hash, not isinstance(got, ArchiverError)))
            if isinstance(got, ArchiverError):
                bad.append((ref, got))
    if not res.dry_run:
        target.record_chunk_checks(checked)  # a sampled repair moves on to other chunks next time
    for ref, err in bad:
        state = "missing" if isinstance(err, ObjectMissingError) else "damaged"
        fix = Fix("chunk", ref.hash, state, str(err))
        _apply(fix, res, [(c.url, lambda c=c: c.chunk_object(ref)) for c in copies],
               lambda data: target.heal_chunk(ref, data), res.dry_run)
        if fix.source is None:
            rejected = "; ".join(fix.rejected)
            kind = "missing-chunk" if state == "missing" else "corrupt-chunk"
            for mid, e, c in uses[ref.hash]:
                res.problems.append(Problem(mid, kind, f"{err}; no healthy copy: {rejected}",
                                            e.path, c.offset, c.length, c.hash))


def _to_read(target: Repository, refs: dict[str, ChunkRef], sample: float | None) -> list[ChunkRef]:
    """Every chunk; or, sampled, those LIST shows missing or of the wrong size, plus the
    least recently verified `sample` fraction of the rest."""
    if sample is None:
        return list(refs.values())
    sizes = target.chunk_sizes(refs)
    suspects = [h for h, r in refs.items() if sizes.get(h) != r.stored_size]
    rest = [h for h in target.chunks_by_staleness(refs) if h not in set(suspects)]
    picked = rest[:math.ceil(sample * len(refs))]
    return [refs[h] for h in suspects + picked]
