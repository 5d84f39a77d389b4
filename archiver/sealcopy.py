"""Replicate and repair sealed stores without any key: every object an archive consists
of is listed, with its size and ciphertext BLAKE3, in the archive's public companion, so
a copy is proved byte for byte before it is written or used to heal, exactly as plain
chunks are proved by their plaintext hash. Order per archive: key objects, chunks, the
sealed manifest, the companion last (a copy interrupted anywhere never holds a companion
naming an object it lacks)."""
from __future__ import annotations

import time

from archiver import layout
from archiver.errors import ArchiverError, CorruptChunkError, ObjectMissingError, UsageError
from archiver.problems import Problem
from archiver.repair import Fix, RepairResult
from archiver.replicate import ReplicateResult
from archiver.repository import Repository


def select(repo: Repository, refs: list[str], all_archives: bool) -> list[str]:
    """The ids named, or every archive that has a companion (the catalog is not needed)."""
    if refs and all_archives:
        raise UsageError("give REF... or --all (not both)")
    return repo.companion_ids() if all_archives or not refs else list(dict.fromkeys(repo.resolve(r) for r in refs))


def replicate(src: Repository, dst: Repository, ids: list[str]) -> ReplicateResult:
    """Copy the archives `ids` of the sealed store `src` into `dst` (a copy with the same marker)."""
    t0 = time.monotonic()
    res = ReplicateResult(source=src.url, destination=dst.url)
    if dst.marker_object() != src.marker_object():
        raise UsageError(f"{dst.url} is not a copy of the sealed store {src.url} (its store.json differs)")
    for key in src.key_object_keys():  # small, authenticated by age when used; never overwritten
        _count(res, dst.put_sealed_object(key, src.key_object(key)), 0)
    for mid in ids:
        try:
            doc = src.companion(mid)
            companion = src.companion_object(mid)
        except ArchiverError as e:
            res.problems.append(Problem(mid, "manifest", str(e)))
            continue
        rows = sorted(doc["objects"], key=lambda o: layout.manifest_id(o[0]) is not None)  # chunks, then manifest
        bad = False
        for key, size, b3, _kid in rows:
            try:
                data = src.proved_sealed_object(key, size, b3)
            except (CorruptChunkError, ObjectMissingError) as e:
                res.problems.append(Problem(mid, "missing-chunk" if isinstance(e, ObjectMissingError)
                                            else "corrupt-chunk", f"{key}: {e}", chunk=key.rsplit("/", 1)[-1]))
                bad = True
                continue
            res.chunks_checked += 1
            written = dst.put_sealed_object(key, data)
            res.chunks_present += not written
            _count(res, written, size)
        if not bad:
            _count(res, dst.put_sealed_object(layout.audit(mid), companion), len(companion))
            res.manifests.append(mid)
    res.seconds = time.monotonic() - t0
    return res


def _count(res: ReplicateResult, written: bool, size: int) -> None:
    if written:
        res.objects_written += 1
        res.bytes_written += size


def repair(target: Repository, copies: list[Repository], ids: list[str], *, dry_run: bool = False) -> RepairResult:
    """Re-hash every object each companion lists in `target`; heal each damaged or missing one
    from the first copy whose bytes match the companion (damaged ones kept under quarantine/)."""
    t0 = time.monotonic()
    res = RepairResult(target.url, [c.url for c in copies], list(ids), dry_run)
    for mid in ids:
        try:
            doc = target.companion(mid)
        except ArchiverError as e:
            res.problems.append(Problem(mid, "manifest", f"companion: {e} (replicate it from a copy)"))
            continue
        for key, size, b3, _kid in doc["objects"]:
            res.chunks_checked += 1
            why = target.audit_object(key, size, b3)
            if why is None:
                continue
            fix = Fix("manifest" if layout.manifest_id(key) is not None else "chunk", key,
                      "missing" if why == "object is missing" else "damaged", why)
            res.fixes.append(fix)
            for copy in copies:
                try:
                    data = copy.proved_sealed_object(key, size, b3)
                except (ArchiverError, ObjectMissingError) as e:
                    fix.rejected.append(f"{copy.url}: {e}")
                    continue
                fix.source = copy.url
                fix.action = "planned" if dry_run else target.heal_sealed_object(key, data, size, b3)
                break
            else:
                fix.action = "none"
                res.problems.append(Problem(mid, "corrupt-chunk", f"{key}: {why}; no copy holds good bytes",
                                            chunk=key.rsplit("/", 1)[-1]))
    res.repaired = sum(1 for f in res.fixes if f.action in ("written", "replaced"))
    res.seconds = time.monotonic() - t0
    return res
