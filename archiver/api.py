"""The Python API: everything the CLI does, callable from restore scripts.

Each function takes an open `repo`, or a `settings` object (archiver.Settings), or
`store`/`catalog` locations resolved with the same defaults as the CLI (ARCHIVER_STORE,
ARCHIVER_CATALOG, ARCHIVER_HOME)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from archiver import checker, fixity, pipeline, restorer, storecheck
from archiver.copies import CopiesReport
from archiver.errors import translated
from archiver.progress import Progress
from archiver.repair import RepairResult
from archiver.replicate import ReplicateResult
from archiver.repository import EventLog, RebuildResult, Repository
from archiver.settings import Settings
from archiver.stores import Store
from archiver.stores import open_store as _open_store
from manifests.catalog import ManifestRow
from manifests.model import Manifest

ArchiveResult = pipeline.ArchiveResult
VerifyReport = checker.VerifyReport
RestoreResult = restorer.RestoreResult


def open_store(url: str | None = None, *, create: bool = False, settings: Settings | None = None) -> Store:
    """The store at `url` (s3://bucket/prefix, a path, or file://...), default as the CLI."""
    s = settings or Settings.resolve(url)
    return _open_store(s.store_url, create=create, s3_options=s.s3)


def open_repository(store: str | None = None, catalog: str | os.PathLike | None = None, *,
                    create: bool = False, settings: Settings | None = None, read_only: bool = False) -> Repository:
    """read_only=True: open the catalog without creating, migrating or locking it (see Repository.open)."""
    return Repository.open(settings or Settings.resolve(store, catalog), create=create, read_only=read_only)


@contextlib.contextmanager
def _repo(repo: Repository | None, store: str | None, catalog: str | os.PathLike | None,
          create: bool = False, settings: Settings | None = None, read_only: bool = False) -> Iterator[Repository]:
    if repo is not None:
        yield repo
        return
    r = open_repository(store, catalog, create=create, settings=settings, read_only=read_only)
    try:
        yield r
    finally:
        r.close()


def archive(paths: Iterable[str | os.PathLike], *, name: str, label: str | None = None,
            meta: dict[str, str] | None = None, sign_key: str | os.PathLike | None = None,
            repo: Repository | None = None, store: str | None = None, catalog: str | os.PathLike | None = None,
            settings: Settings | None = None, progress: Progress | None = None,
            trust_verified_within: float | None = None, unsafe_store: bool = False, **options) -> ArchiveResult:
    """`sign_key`: path of an Ed25519 private key (from `keygen`) to sign the manifest with
    (or a key already loaded with `signing_key`). Every chunk the store already holds is read
    back and proved (a damaged one is repaired from the source); `trust_verified_within`
    (seconds) trusts chunks a deep verify found intact within that window instead (faster
    re-archives, weaker proof). A store that silently overwrites (see `store_check`) is
    refused (UnsafeStoreError) unless `unsafe_store`."""
    key = signing_key(sign_key)
    with _repo(repo, store, catalog, create=True, settings=settings) as r:
        storecheck.ensure_safe(r, unsafe_store)
        return pipeline.archive(r, list(paths), name=name, label=label, meta=meta, progress=progress,
                                sign_key=key, trust_verified_within=trust_verified_within, **options)


def signing_key(key: str | os.PathLike | Any | None) -> Any:
    """The Ed25519 private key at a path, loaded and checked now (a loaded key passes through)."""
    if key is None or not isinstance(key, (str, os.PathLike)):
        return key
    from manifests import signing  # cryptography loads only when signatures are used
    with translated():
        return signing.load_private(key)


def keygen(path: str | os.PathLike) -> tuple[Path, Path]:
    """Create an Ed25519 key pair: private key at `path` (0600), public key at `path`.pub."""
    from manifests import signing
    with translated():
        return signing.keygen(path)


def trusted_keys(keys: Iterable[str | bytes] | None) -> list[bytes] | None:
    """Public keys from key files or hex (raw 32-byte keys pass through), checked now."""
    if not keys:
        return None
    from manifests import signing
    with translated():
        return [k if isinstance(k, bytes) else signing.load_public(k) for k in keys]


def verify(refs: Iterable[str] = (), *, all_archives: bool = False, deep: bool = False,
           sample: float | None = None, trust_keys: Iterable[str | bytes] | None = None, repo: Repository | None = None,
           store: str | None = None, catalog: str | os.PathLike | None = None, settings: Settings | None = None,
           progress: Progress | None = None, max_bytes: int | None = None, max_seconds: float | None = None,
           sign_key: str | os.PathLike | Any | None = None) -> VerifyReport:
    """`trust_keys`: public key files or hex keys; each manifest must be signed by one of them.
    `max_bytes` / `max_seconds`: a budgeted sampled run (least recently verified chunks
    first). `sign_key`: sign this run's event in the store's log."""
    trusted = trusted_keys(trust_keys)
    key = signing_key(sign_key)
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        return checker.verify(r, list(refs), all_archives=all_archives, deep=deep, sample=sample, trusted=trusted,
                              progress=progress, max_bytes=max_bytes, max_seconds=max_seconds, sign_key=key)


def restore(ref: str, dest: str | os.PathLike, *, include: Iterable[str] = (), force: bool = False,
            trust_keys: Iterable[str | bytes] | None = None, repo: Repository | None = None,
            store: str | None = None, catalog: str | os.PathLike | None = None, settings: Settings | None = None,
            progress: Progress | None = None, preserve_special_bits: bool = False) -> RestoreResult:
    """`preserve_special_bits`: keep setuid, setgid and sticky bits (dropped by default)."""
    trusted = trusted_keys(trust_keys)
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:  # restore writes no catalog row
        return restorer.restore(r, ref, dest, include=include, force=force, trusted=trusted, progress=progress,
                                preserve_special_bits=preserve_special_bits)


def list_archives(name: str | None = None, *, repo: Repository | None = None, store: str | None = None,
                  catalog: str | os.PathLike | None = None, settings: Settings | None = None) -> list[ManifestRow]:
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        return r.list_archives(name)


def show(ref: str, *, repo: Repository | None = None, store: str | None = None,
         catalog: str | os.PathLike | None = None, settings: Settings | None = None) -> tuple[str, Manifest]:
    """(manifest id, manifest) for an id, unique id prefix, NAME or NAME@LABEL."""
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        mid = r.resolve(ref)
        return mid, r.load_manifest(mid)


def rebuild_catalog(*, repo: Repository | None = None, store: str | None = None,
                    catalog: str | os.PathLike | None = None, settings: Settings | None = None) -> RebuildResult:
    """Recreate the catalog from the store's manifests alone: `.added` (ids recorded now),
    `.problems` (each bad manifest skipped), `.ok`."""
    with _repo(repo, store, catalog, settings=settings) as r:
        return r.rebuild_catalog()


def fixity_status(window: float = fixity.DEFAULT_WINDOW, *, repo: Repository | None = None,
                  store: str | None = None, catalog: str | os.PathLike | None = None,
                  settings: Settings | None = None, now: float | None = None) -> fixity.FixityStatus:
    """Per archive and overall: the fraction of chunks and bytes deep-verified intact within
    `window` seconds, the oldest check, chunks never checked, unrepaired failures. `.ok`."""
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        return fixity.status(r, window, now)


def event_log(ref: str | None = None, *, since: float | None = None, repo: Repository | None = None,
           store: str | None = None, catalog: str | os.PathLike | None = None,
           settings: Settings | None = None) -> EventLog:
    """The store's event log, oldest first (`.records`), optionally only the events naming
    the archive `ref` and those at or after `since` (epoch seconds); `.problems` says what is
    wrong with the log (gaps, altered events, bad signatures), whatever the filter."""
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        log = r.read_events()
        mid = r.resolve(ref) if ref is not None else None
    records = sorted(log.records, key=lambda x: (x.event.time, x.writer, x.seq))
    log.records = [x for x in records if (mid is None or mid in x.event.manifest_ids)
                   and (since is None or x.event.time >= since)]
    return log


def replicate(refs: Iterable[str] = (), *, to: str, all_archives: bool = False, repo: Repository | None = None,
              store: str | None = None, catalog: str | os.PathLike | None = None, settings: Settings | None = None,
              to_catalog: str | os.PathLike | None = None, progress: Progress | None = None,
              unsafe_store: bool = False) -> ReplicateResult:
    """Copy archives (REFs with their ancestors, or all) to the store at `to` (created if
    new; its own catalog, under the same home unless `to_catalog`, records them)."""
    from archiver import replicate as rep
    s = settings or Settings.resolve(store, catalog)
    with _repo(repo, store, catalog, settings=s) as src:
        ids = rep.select(src, refs, all_archives)
        dst_settings = s.for_copy(to, to_catalog)
        if dst_settings.store_url == s.store_url and dst_settings.endpoint == s.endpoint:
            from archiver.errors import UsageError
            raise UsageError(f"the copy {to} is the store itself")
        with Repository.open(dst_settings, create=True) as dst:
            storecheck.ensure_safe(dst, unsafe_store)  # a copy that overwrites is no copy
            return rep.replicate(src, dst, ids, progress=progress)


def repair(refs: Iterable[str] = (), *, sources: Iterable[str] = (), all_archives: bool = False, dry_run: bool = False,
           sample: float | None = None,
           repo: Repository | None = None, store: str | None = None, catalog: str | os.PathLike | None = None,
           settings: Settings | None = None) -> RepairResult:
    """Heal the store's damaged or missing objects of the named archives (none named: every
    recorded one) from the copies at `sources` (URLs; only read), by default the copies
    the store names (`copies_add`). `sample`: read only that fraction of the chunks (least
    recently verified first) besides those LIST shows missing or wrong-sized."""
    from archiver import repair as rep
    checker.check_sample(sample)
    from archiver.errors import UsageError
    s = settings or Settings.resolve(store, catalog)
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(_repo(repo, store, catalog, settings=s))
        urls = list(dict.fromkeys(sources)) or target.copies()  # default: the copies the store names
        if not urls:
            raise UsageError("no copy to repair from (name one, or record copies with `archiver copies add URL`)")
        ids = rep.select(target, refs, all_archives)
        copies = [stack.enter_context(Repository.open(_copy_settings(s, url), read_only=True)) for url in urls]
        return rep.repair(target, copies, ids, dry_run=dry_run, sample=sample)


def _copy_settings(s: Settings, url: str) -> Settings:
    """Settings of a copy of the store `s`, refusing the store itself."""
    from archiver.errors import UsageError
    cs = s.for_copy(url)
    if cs.store_url == s.store_url and cs.endpoint == s.endpoint:
        raise UsageError(f"the copy {url} is the store itself")
    return cs


def copies_add(url: str, *, repo: Repository | None = None, store: str | None = None,
               catalog: str | os.PathLike | None = None, settings: Settings | None = None) -> tuple[str, bool]:
    """Record `url` as a copy of the store (its settings kept); (recorded URL, added now)."""
    from archiver.urls import full_store_url
    s = settings or Settings.resolve(store, catalog)
    _copy_settings(s, url)
    full = full_store_url(url)
    with _repo(repo, store, catalog, create=True, settings=s) as r:  # a copy set may precede the first archive
        return full, r.add_copy(full)


def copies_list(*, repo: Repository | None = None, store: str | None = None,
                catalog: str | os.PathLike | None = None, settings: Settings | None = None) -> list[str]:
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        return r.copies()


def copies_remove(url: str, *, repo: Repository | None = None, store: str | None = None,
                  catalog: str | os.PathLike | None = None, settings: Settings | None = None) -> bool:
    """Forget a copy (as given or as recorded); its store is not touched."""
    from archiver.urls import full_store_url
    with _repo(repo, store, catalog, settings=settings) as r:
        recorded = r.copies()
        for candidate in (url, full_store_url(url)):
            if candidate in recorded:
                return r.remove_copy(candidate)
        return False


def verify_copies(ids: list[str], unhealthy: set[str] = frozenset(), *, repo: Repository | None = None,
                  store: str | None = None, catalog: str | os.PathLike | None = None,
                  settings: Settings | None = None) -> CopiesReport:
    """Shallow check (LIST pages) that every recorded copy holds every object of `ids`;
    `unhealthy`: ids the store's own verify found problems in (not counted as a healthy copy)."""
    from archiver import copies as copies_mod
    from archiver.errors import ArchiverError, UsageError
    s = settings or Settings.resolve(store, catalog)
    with contextlib.ExitStack() as stack:
        r = stack.enter_context(_repo(repo, store, catalog, settings=s, read_only=True))
        urls = r.copies()
        if not urls:
            raise UsageError("this store names no copies (add one with `archiver copies add URL`)")
        opened: list[tuple[str, Any]] = []
        for url in urls:
            try:
                opened.append((url, stack.enter_context(Repository.open(_copy_settings(s, url), read_only=True))))
            except ArchiverError as e:
                opened.append((url, e))
        return copies_mod.check(r, opened, ids, set(unhealthy))


def store_check(store: str | None = None, *, repo: Repository | None = None, catalog: str | os.PathLike | None = None,
                settings: Settings | None = None) -> storecheck.StoreCheck:
    """Probe what the store enforces (conditional writes, checksums, versioning, Object
    Lock) under `_probe/`, now; the result is cached in its catalog for archive/replicate.
    A store that does not exist yet is created (its marker written) first."""
    with _repo(repo, store, catalog, create=True, settings=settings) as r:
        return storecheck.check(r)
