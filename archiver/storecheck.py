"""store check: probe what a store really enforces, before trusting it with archives.

Every archiver guarantee rests on writes that never overwrite (`If-None-Match: *` on S3,
no-replace link/rename locally). Some S3-compatible servers accept the header and ignore
it; on such a store a concurrent or repeated write silently replaces an object. The probe
writes a scratch object under `_probe/` twice and reads it back; `archive` and `replicate`
refuse a store that overwrote unless the caller accepts the risk (`unsafe_store`). The
result is cached in the store's catalog, so the probe runs once per store and catalog."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from archiver.errors import UsageError
from archiver.problems import Outcome, Problem
from archiver.repository import Repository

CACHE_KEY = "self"  # the catalog is bound to one store: its own check is the only one kept there


class UnsafeStoreError(UsageError):
    """The store silently overwrites objects a conditional write should have kept."""

    remedy = "unsafe_store"

    def __init__(self, store: str) -> None:
        super().__init__(f"store {store} silently overwrites objects (it ignores If-None-Match), so nothing "
                         f"written there can be trusted to stay as written; refusing it")
        self.store = store


@dataclass
class StoreCheck(Outcome):
    store: str
    conditional_writes: str | None = None
    checksums: str | None = None
    versioning: str | None = None
    object_lock: str | None = None
    probe_key: str | None = None
    checked_at: float | None = None
    cached: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def overwrites(self) -> bool:
        return any(p.kind == "store-overwrites" for p in self.problems)


def _from_probe(raw: dict[str, Any], cached: bool) -> StoreCheck:
    res = StoreCheck(raw["store"], raw.get("conditional_writes"), raw.get("checksums"), raw.get("versioning"),
                     raw.get("object_lock"), raw.get("probe_key"), raw.get("checked_at"), cached)
    if raw.get("overwrites"):
        res.problems.append(Problem("-", "store-overwrites", "a second conditional write (If-None-Match: *) "
                                                             "replaced the object instead of failing"))
    if raw.get("overwrites") is None:
        res.problems.append(Problem("-", "store-checksums", f"the probe write failed: {raw.get('checksums')}"))
    return res


def check(repo: Repository, *, audit: bool = True) -> StoreCheck:
    """Probe the store now (always), cache the result in its catalog, and (an explicit
    check) audit it; the cached row records the automatic probe of a first archive."""
    raw = repo.probe_conditional_writes()
    raw["checked_at"] = time.time()
    if raw.get("overwrites") is not None:  # a probe that could not write proves nothing: not kept
        repo.cache_store_check(CACHE_KEY, raw)
    res = _from_probe(raw, cached=False)
    if audit:
        repo.audit("store-check", None, res.ok, dict(raw))
    return res


def ensure_safe(repo: Repository, unsafe_store: bool = False) -> StoreCheck:
    """The cached check (probing once if there is none); UnsafeStoreError if the store
    overwrites and `unsafe_store` is not set."""
    raw = repo.cached_store_check(CACHE_KEY)
    res = _from_probe(raw, cached=True) if raw is not None else check(repo, audit=False)
    if res.overwrites and not unsafe_store:
        raise UnsafeStoreError(repo.url)
    return res
