"""The Python API: everything the CLI does, callable from restore scripts.

Each function takes an open `repo`, or a `settings` object (archiver.Settings), or
`store`/`catalog` locations resolved with the same defaults as the CLI (ARCHIVER_STORE,
ARCHIVER_CATALOG, ARCHIVER_HOME)."""
from __future__ import annotations

import contextlib
import datetime
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from archiver import fixity, storecheck  # checker, restorer, thaw, costs, pipeline: imported where used (start-up)
from archiver.errors import InvalidOptionError, translated
from archiver.progress import Progress
from archiver.repository import EventLog, RebuildResult, Repository
from archiver.retention import STORAGE_CLASSES, WritePolicy, iso, make_policy, parse_date
from archiver.settings import Settings
from archiver.stores import Store
from archiver.stores import open_store as _open_store
from manifests.catalog import ManifestRow
from manifests.model import Manifest

if TYPE_CHECKING:
    from archiver import costs, pipeline
    from archiver.checker import VerifyReport
    from archiver.restorer import RestoreResult
    from archiver.thaw import ThawOptions
    from archiver.copies import CopiesReport
    from archiver.pipeline import ArchiveResult
    from archiver.repair import RepairResult
    from archiver.replicate import ReplicateResult

# Result types of the commands a verify or restore does not run: loaded on first use, so
# those commands do not import the archive pipeline (its readers, chunker and files cache),
# repair, replicate or copies (start-up of every run; tests/test_cli_process.py).
_LAZY = {"ArchiveResult": "archiver.pipeline", "CopiesReport": "archiver.copies",
         "RepairResult": "archiver.repair", "ReplicateResult": "archiver.replicate"}
# Likewise verify's and restore's (an archive does not import the checker, the restorer or
# thaw: ~20 ms of its single-threaded start-up; bench/RESULTS.md, branch wall2).
_LAZY.update({"VerifyReport": "archiver.checker", "RestoreResult": "archiver.restorer",
              "ThawOptions": "archiver.thaw"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'archiver.api' has no attribute {name!r}")


def open_store(url: str | None = None, *, create: bool = False, settings: Settings | None = None) -> Store:
    """The store at `url` (s3://bucket/prefix, a path, or file://...), default as the CLI."""
    s = settings or Settings.resolve(url)
    return _open_store(s.store_url, create=create, s3_options=s.s3)


def open_repository(store: str | None = None, catalog: str | os.PathLike | None = None, *,
                    create: bool = False, settings: Settings | None = None, read_only: bool = False,
                    policy: Any = None) -> Repository:
    """read_only=True: open the catalog without creating, migrating or locking it (see Repository.open).
    `policy` (archiver.retention.WritePolicy): refused before anything is written if the store cannot honour it."""
    return Repository.open(settings or Settings.resolve(store, catalog), create=create, read_only=read_only,
                           policy=policy)


@contextlib.contextmanager
def _repo(repo: Repository | None, store: str | None, catalog: str | os.PathLike | None,
          create: bool = False, settings: Settings | None = None, read_only: bool = False,
          policy: Any = None) -> Iterator[Repository]:
    if repo is not None:
        yield repo
        return
    r = open_repository(store, catalog, create=create, settings=settings, read_only=read_only, policy=policy)
    try:
        yield r
    finally:
        r.close()


def archive(paths: Iterable[str | os.PathLike], *, name: str, label: str | None = None,
            meta: dict[str, str] | None = None, sign_key: str | os.PathLike | None = None,
            repo: Repository | None = None, store: str | None = None, catalog: str | os.PathLike | None = None,
            settings: Settings | None = None, progress: Progress | None = None,
            trust_verified_within: float | None = None, unsafe_store: bool = False, write_policy: Any = None,
            profile: str | None = None,
            meta_file: str | os.PathLike | None = None, profile_data: dict[str, Any] | None = None,
            attach: Iterable[tuple[str, str | os.PathLike]] = (), profile_block: dict[str, Any] | None = None,
            executor: Any = None, ray_address: str | None = None, task_cpus: int | None = None,
            max_inflight: int | None = None, resume: bool = True, **options) -> ArchiveResult:
    """`sign_key`: path of an Ed25519 private key (from `keygen`) to sign the manifest with
    (or a key already loaded with `signing_key`). Every chunk the store already holds is read
    back and proved (a damaged one is repaired from the source); `trust_verified_within`
    (seconds) trusts chunks a deep verify found intact within that window instead (faster
    re-archives, weaker proof). A store that silently overwrites (see `store_check`) is
    refused (UnsafeStoreError) unless `unsafe_store`. `write_policy`: an
    archiver.retention.WritePolicy (see `write_policy`): Object Lock on every object, a
    storage class for chunks. `profile` ("model" = archiver-model/1) with `meta_file` (a JSON
    file) or `profile_data` (a dict): metadata checked against the profile's schema and recorded
    in the manifest (or `profile_block`, one already made by `profile_block()`); `attach`:
    (role, path) documents stored under _archive/ROLE/. Symlinks are recorded as symlinks, or
    followed to regular files with `dereference=True` (always inside a Hugging Face snapshot).
    Files unchanged since an earlier archive into this store are not read again (their entries
    are reused once their chunks are proved, archiver.filescache); `reread=True` reads them all.
    `executor`: "local" (default: threads, several files at once) or "ray" (one Ray task per
    file; `ray_address`, `task_cpus` per task, `max_inflight` tasks at once), or an Executor
    (archiver.executors). With `resume` (default) the files of an earlier run of this same
    archive that was killed are taken from its journal under the archiver home, if unchanged.
    `processes` (default 0: threads only): worker processes for the small files, None for
    auto (as the CLI); each worker imports the caller's `__main__` again, so a script that
    opts in must guard its top level with `if __name__ == "__main__":` (README, "Scaling out")."""
    paths = list(paths)  # an Iterable: read once (the journal's key and the archive both need it)
    key = signing_key(sign_key)
    block = profile_block if profile_block is not None else make_profile_block(profile, meta_file, profile_data)
    ex = make_executor(executor, ray_address=ray_address, task_cpus=task_cpus, max_inflight=max_inflight)
    try:
        with _repo(repo, store, catalog, create=True, settings=settings, policy=write_policy) as r:
            storecheck.ensure_safe(r, unsafe_store)
            jr = None
            if resume:
                from archiver.journal import Journal, journal_key
                home = (settings or r.settings or Settings.resolve(store, catalog)).home
                jr = Journal.under(home, journal_key(r.url, name, label, meta, list(paths), {
                    "attach": [(role, os.path.abspath(os.fspath(p))) for role, p in attach],
                    "dereference": options.get("dereference", False), "profile": block}))
            from archiver import pipeline
            return pipeline.archive(r, list(paths), name=name, label=label, meta=meta, progress=progress,
                                    sign_key=key, trust_verified_within=trust_verified_within,
                                    write_policy=write_policy, profile=block, attachments=list(attach),
                                    executor=ex, journal=jr, **options)
    finally:
        if ex is not None:
            ex.close()


def make_executor(executor: Any = None, *, ray_address: str | None = None, task_cpus: int | None = None,
                  max_inflight: int | None = None) -> Any:
    """An executor from its name ("local" or "ray", see archiver.executors) and options, checked
    now; an Executor object passes through; None (and no options) keeps each command's default."""
    from archiver import executors
    if executor is not None and not isinstance(executor, str):
        return executor
    if executor is None and ray_address is None and task_cpus is None and max_inflight is None:
        return None
    return executors.make(executor, address=ray_address, task_cpus=task_cpus, max_inflight=max_inflight)


def write_policy(*, lock_mode: str | None = None, retain_until: Any = None, retain_for: str | None = None,
                 legal_hold: bool = False, storage_class: str | None = None) -> WritePolicy | None:
    """The write policy for these options, checked now (None if nothing was asked):
    lock_mode governance|compliance with retain_until (a date) or retain_for ('30y', '90d')."""
    return make_policy(lock_mode=lock_mode, retain_until=retain_until, retain_for=retain_for,
                       legal_hold=legal_hold, storage_class=storage_class)


def extend_retention(ref: str, *, until: Any, lock_mode: str | None = None, repo: Repository | None = None,
                     store: str | None = None, catalog: str | os.PathLike | None = None,
                     settings: Settings | None = None) -> dict[str, Any]:
    """Extend the Object Lock of every object of an archive (chunks, manifest, signatures,
    retention records) to at least `until`, never shortening one; the mode is the recorded one
    (or `lock_mode`), and the new policy is recorded."""
    with _repo(repo, store, catalog, settings=settings) as r:
        if not r.can_lock():
            raise InvalidOptionError("until", f"cannot be applied: {r.url} is not an S3 bucket, so it holds no "
                                              f"Object Lock")
        mid = r.resolve(ref)
        m = r.load_manifest(mid)
        mode = lock_mode or r.recorded_lock(mid).mode
        if mode is None:
            raise InvalidOptionError("lock_mode", f"is needed: archive {mid[:16]} has no recorded Object Lock")
        policy = make_policy(lock_mode=mode, retain_until=until)
        assert policy is not None
        objects = r.extend_retention(mid, m, policy)
        # a PREMIS policy-assignment event in the store's log (and the catalog's audit log)
        from archiver.events import POLICY_ASSIGNMENT, Event, ManifestOutcome
        r.append_event(Event(POLICY_ASSIGNMENT, manifests=(ManifestOutcome(mid),), details={
            "mode": policy.lock.mode, "retain_until": iso(policy.lock.until), "objects": objects}),
            policy=policy.for_metadata())
        return {"id": mid, "mode": policy.lock.mode, "retain_until": iso(policy.lock.until), "objects": objects}


def make_profile_block(profile: str | None, meta_file: str | os.PathLike | None = None,
                  profile_data: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest's profile block, checked against the profile's schema now (before any
    scan): InvalidOptionError('meta_file', ...) naming the first missing or invalid field."""
    if profile is None:
        if meta_file is not None or profile_data is not None:
            raise InvalidOptionError("profile", "is needed to check the metadata against (e.g. model)")
        return None
    from archiver import profile as profiles  # after the common case: its import (importlib.resources) costs start-up
    if (meta_file is None) == (profile_data is None):
        raise InvalidOptionError("meta_file", f"is needed with profile {profile!r} (a JSON file of its fields)")
    if meta_file is not None:
        return profiles.load_meta_file(meta_file, profile)
    return profiles.check(profiles.find(profile), profile_data)


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
           sign_key: str | os.PathLike | Any | None = None, retention: bool = False, retain_until: Any = None,
           thaw: ThawOptions | None = None, executor: Any = None, ray_address: str | None = None,
           task_cpus: int | None = None, max_inflight: int | None = None, processes: int | None = 0) -> VerifyReport:
    """`trust_keys`: public key files or hex keys; each manifest must be signed by one of them.
    `max_bytes` / `max_seconds`: a budgeted sampled run (least recently verified chunks
    first). `sign_key`: sign this run's event in the store's log. `retention`: every object
    of each archive must hold the Object Lock its recorded policy asks for, and with
    `retain_until` (a date) at least until then. `thaw`: with deep or sample, thaw the cold
    chunks to be read first (else they are reported as not checked). `executor` ("ray", or an
    Executor) deep-checks one file per task, as for `archive`. `processes` (deep): worker
    processes that prove the packed small chunks while the manifests load (archiver.packproof;
    default 0: none, None: auto as the CLI); as for `archive`, a script that opts in must guard
    its top level with `if __name__ == "__main__":`."""
    trusted = trusted_keys(trust_keys)
    key = signing_key(sign_key)
    until = None
    if retain_until is not None:
        until = retain_until if isinstance(retain_until, datetime.datetime) else parse_date(retain_until,
                                                                                             "retain_until")
    ex = make_executor(executor, ray_address=ray_address, task_cpus=task_cpus, max_inflight=max_inflight)
    try:
        with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
            if deep and r.sealed and not r.has_identities:  # audit without keys: ciphertext hashes (sealaudit)
                if ex is not None and ex.distributed:
                    raise InvalidOptionError("executor", f"{ex.name} cannot run on a sealed store: sealed "
                                                         f"verifies run with the local executor")
                from archiver.sealaudit import verify_sealed
                return verify_sealed(r, list(refs), all_archives=all_archives, trusted=trusted)
            from archiver import checker
            return checker.verify(r, list(refs), all_archives=all_archives, deep=deep, sample=sample,
                                  trusted=trusted, progress=progress, max_bytes=max_bytes, max_seconds=max_seconds,
                                  sign_key=key, retention=retention, retain_until=until, thaw=thaw, executor=ex,
                                  processes=processes)
    finally:
        if ex is not None:
            ex.close()


def restore(ref: str, dest: str | os.PathLike, *, include: Iterable[str] = (), force: bool = False,
            trust_keys: Iterable[str | bytes] | None = None, repo: Repository | None = None,
            store: str | None = None, catalog: str | os.PathLike | None = None, settings: Settings | None = None,
            progress: Progress | None = None, preserve_special_bits: bool = False,
            thaw: ThawOptions | None = None, executor: Any = None, ray_address: str | None = None,
            task_cpus: int | None = None, max_inflight: int | None = None,
            processes: int | None = 0) -> RestoreResult:
    """`preserve_special_bits`: keep setuid, setgid and sticky bits (dropped by default).
    `thaw` (archiver.thaw.ThawOptions): thaw chunks in GLACIER / DEEP_ARCHIVE first (without
    it such chunks are refused before anything is written). `executor` ("ray", or an Executor):
    one file per task, written by workers into `dest`, which every worker must see (a shared
    filesystem). `processes` (default 0: threads only): worker processes for the small files
    (archiver.procrestore), None for auto; as for `archive`, a script that asks for them must
    guard its top level with `if __name__ == "__main__"`."""
    trusted = trusted_keys(trust_keys)
    ex = make_executor(executor, ray_address=ray_address, task_cpus=task_cpus, max_inflight=max_inflight)
    try:
        with _repo(repo, store, catalog, settings=settings, read_only=True) as r:  # restore writes no catalog row
            if r.sealed:  # every key this archive needs is opened before anything is written
                r.require_identities()
                r.open_run_keys(r.resolve(ref))
            from archiver import restorer
            return restorer.restore(r, ref, dest, include=include, force=force, trusted=trusted, progress=progress,
                                    preserve_special_bits=preserve_special_bits, thaw=thaw, executor=ex,
                                    processes=processes)
    finally:
        if ex is not None:
            ex.close()


def store_init(url: str | None = None, *, encrypt_to: Iterable[str] = (), settings: Settings | None = None
               ) -> dict[str, Any]:
    """Create a store; with `encrypt_to` (age X25519 recipients) a sealed one (docs/FORMAT.md,
    "Sealed stores"): returns where this host's address key file was written."""
    s = settings or Settings.resolve(url)
    recipients = list(encrypt_to)
    if not recipients:
        _open_store(s.store_url, create=True, s3_options=s.s3)
        return {"store": s.store_url, "sealed": False}
    return {**Repository.init_sealed(s, recipients), "sealed": True}


def rotate_keys(*, add: Iterable[str] = (), remove: Iterable[str] = (), repo: Repository | None = None,
                settings: Settings | None = None) -> dict[str, Any]:
    """Re-wrap a sealed store's key objects to (current + add - remove) recipients."""
    with _repo(repo, None, None, settings=settings, read_only=True) as r:
        if not r.sealed:
            raise InvalidOptionError("add", f"applies to sealed stores only; {r.url} is not sealed")
        return r.rotate_keys(list(add), list(remove))


def list_archives(name: str | None = None, *, where: Iterable[str] = (), repo: Repository | None = None,
                  store: str | None = None, catalog: str | os.PathLike | None = None,
                  settings: Settings | None = None) -> list[ManifestRow]:
    """`where`: conditions KEY OP VALUE on the indexed metadata (see docs/PROFILE.md), all of which must hold."""
    conditions = parse_where(where)
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        return r.search(conditions, name) if conditions else r.list_archives(name)


def parse_where(where: Iterable[str]) -> list[Any]:
    """Search conditions from 'KEY OP VALUE' strings (OP: = != < <= > >= ~), checked now."""
    from manifests.catalog import parse_condition
    out = []
    for text in where:
        try:
            c = parse_condition(text)
        except ValueError as e:
            raise InvalidOptionError("where", str(e)) from None
        if not c.key:
            raise InvalidOptionError("where", f"{text!r} has no key")
        out.append(c)
    return out


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


def sync_catalog(*, repo: Repository | None = None, store: str | None = None,
                 catalog: str | os.PathLike | None = None, settings: Settings | None = None) -> RebuildResult:
    """Record the manifests other hosts (with catalogs of their own) wrote to the store since
    this catalog last looked (`.added`); bad ones are skipped and reported (`.problems`)."""
    with _repo(repo, store, catalog, settings=settings) as r:
        return r.sync_catalog()


def fixity_status(window: float = fixity.DEFAULT_WINDOW, *, repo: Repository | None = None,
                  store: str | None = None, catalog: str | os.PathLike | None = None,
                  settings: Settings | None = None, now: float | None = None,
                  copies: bool = False) -> fixity.FixityStatus:
    """Per archive and overall: the fraction of chunks and bytes deep-verified intact within
    `window` seconds, the oldest check, chunks never checked, unrepaired failures. `.ok`.
    With `copies`, the same for every copy the store names (each from its own catalog, which
    replicate, repair and verify against the copy keep), and `.ok` needs all of them."""
    from archiver.errors import ArchiverError
    s = settings or Settings.resolve(store, catalog)
    with _repo(repo, store, catalog, settings=s, read_only=True) as r:
        st = fixity.status(r, window, now)
        for url in (r.copies() if copies else []):
            try:
                with Repository.open(_copy_settings(s, url), read_only=True) as cr:
                    st.copies[url] = fixity.status(cr, window, now)
            except ArchiverError as e:
                st.copies[url] = str(e)
        return st


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
    rep = importlib.import_module("archiver.replicate")  # the package's own `replicate` is this function
    s = settings or Settings.resolve(store, catalog)
    with _repo(repo, store, catalog, settings=s) as src:
        ids = [] if src.sealed else rep.select(src, refs, all_archives)
        dst_settings = s.for_copy(to, to_catalog)
        if dst_settings.store_url == s.store_url and dst_settings.endpoint == s.endpoint:
            from archiver.errors import UsageError
            raise UsageError(f"the copy {to} is the store itself")
        if src.sealed:  # without keys: objects proved by the companions' ciphertext hashes
            from archiver import sealcopy
            sids = sealcopy.select(src, list(refs), all_archives)
            with Repository.open(dst_settings, create=True, marker=src.marker_object()) as dst:
                storecheck.ensure_safe(dst, unsafe_store)
                return sealcopy.replicate(src, dst, sids)
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
    rep = importlib.import_module("archiver.repair")  # the package's own `repair` is this function
    from archiver import checker
    checker.check_sample(sample)
    from archiver.errors import UsageError
    s = settings or Settings.resolve(store, catalog)
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(_repo(repo, store, catalog, settings=s))
        urls = list(dict.fromkeys(sources)) or target.copies()  # default: the copies the store names
        if not urls:
            raise UsageError("no copy to repair from (name one, or record copies with `archiver copies add URL`)")
        if target.sealed:  # without keys: heal from the companions' ciphertext hashes
            from archiver import sealcopy
            sids = sealcopy.select(target, list(refs), all_archives)
            copies = [stack.enter_context(Repository.open(_copy_settings(s, url), read_only=True)) for url in urls]
            return sealcopy.repair(target, copies, sids, dry_run=dry_run)
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


def estimate(ref: str, *, storage_class: str | None = None, prices: str | os.PathLike | None = None,
             repo: Repository | None = None, store: str | None = None, catalog: str | os.PathLike | None = None,
             settings: Settings | None = None) -> costs.Estimate:
    """Monthly storage, upload and restore cost of an archive from a dated price file
    (`prices`: another file of the same shape); `storage_class`: price every chunk as if
    it were in that class."""
    from archiver import costs
    table = costs.load_prices(prices)
    what_if = None
    if storage_class is not None:
        what_if = storage_class.upper()
        if what_if not in STORAGE_CLASSES:
            raise InvalidOptionError("storage_class", f"must be one of {', '.join(STORAGE_CLASSES)}")
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        mid = r.resolve(ref)
        m = r.load_manifest(mid)
        sizes = {h: c.stored_size for h, c in m.unique_chunks().items()}
        classes = r.chunk_classes(sizes) if r.has_storage_classes() and what_if is None else {}
        return costs.estimate(mid, sizes, classes, r.metadata_sizes(mid), table, what_if)


def restore_plan(ref: str, *, include: Iterable[str] = (), tier: str = "Bulk", prices: str | os.PathLike | None = None,
                 repo: Repository | None = None, store: str | None = None, catalog: str | os.PathLike | None = None,
                 settings: Settings | None = None) -> dict[str, Any]:
    """What a restore would need, without writing anything: distinct chunks and bytes, the
    cold ones and their thaw state, what thawing them costs at each tier and how long it takes."""
    from archiver import costs
    table = costs.load_prices(prices)
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        mid = r.resolve(ref)
        m = r.load_manifest(mid)
        from archiver import restorer
        from archiver import thaw as thaw_mod
        chosen = [e for e in restorer.select(m.entries, include) if e.is_file]
        chunks = thaw_mod.needed(chosen)
        st = thaw_mod.survey(r, chunks) if r.has_storage_classes() else thaw_mod.ThawStatus(chunks=len(chunks))
        cold = {h: chunks[h] for h in st.frozen + st.thawing}
        est = costs.estimate(mid, cold, st.classes, [], table)
        thaw_cost = {cls: c.restore for cls, c in est.classes.items() if cls in st.classes.values()}
        return {"id": mid, "files": len(chosen), "bytes": sum(e.size for e in chosen), "chunks": len(chunks),
                "stored_bytes": sum(chunks.values()), "thaw": st.to_dict(), "needs_thaw": not st.ready,
                "thaw_cost": thaw_cost, "tier": tier, "expected_hours": thaw_mod.expected_hours(
                    {st.classes[h] for h in cold}, tier) if cold else None,
                "prices_as_of": est.prices_as_of}


def export(ref: str, dest: str | os.PathLike, *, format: str = "bagit", trust_keys: Iterable[str | bytes] | None = None,
           repo: Repository | None = None, store: str | None = None, catalog: str | os.PathLike | None = None,
           settings: Settings | None = None, progress: Progress | None = None) -> Any:
    """Write archive `ref` in a standard layout at `dest`: format "bagit" (RFC 8493 bag) or
    "ocfl" (an OCFL 1.1 object whose versions follow the name's parent chain). Every byte is
    re-hashed on the way; `trust_keys` as for restore."""
    from archiver import bagit
    trusted = trusted_keys(trust_keys)
    if format not in ("bagit", "ocfl"):
        raise InvalidOptionError("format", f"must be bagit or ocfl, not {format!r}")
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        if format == "bagit":
            return bagit.export_bag(r, ref, dest, trusted=trusted, progress=progress)
        from archiver import ocfl
        return ocfl.export_ocfl(r, ref, dest, trusted=trusted, progress=progress)


def key_split(identity: str | os.PathLike, *, shares: int, threshold: int, out_dir: str | os.PathLike = ".",
              passphrase: str | bytes | None = None) -> Any:
    """Split an age identity file into SLIP-39 share sheets for custodians (escrow.SplitResult)."""
    from archiver import escrow  # pyrage and shamir-mnemonic load only for key escrow
    return escrow.split_files(identity, shares, threshold, out_dir, passphrase)


def key_combine(shares: Iterable[str | os.PathLike], *, out: str | os.PathLike | None = None,
                passphrase: str | bytes | None = None) -> Any:
    """Restore an age identity from share sheets (escrow.CombineResult), written to `out` if given."""
    from archiver import escrow
    return escrow.combine_files(list(shares), out, passphrase)
