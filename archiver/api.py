"""The Python API: everything the CLI does, callable from restore scripts.

Each function takes an open `repo`, or a `settings` object (archiver.Settings), or
`store`/`catalog` locations resolved with the same defaults as the CLI (ARCHIVER_STORE,
ARCHIVER_CATALOG, ARCHIVER_HOME)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from archiver import checker, pipeline, restorer
from archiver.errors import InvalidOptionError, translated
from archiver.progress import Progress
from archiver.repository import RebuildResult, Repository
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
            trust_verified_within: float | None = None, profile: str | None = None,
            meta_file: str | os.PathLike | None = None, profile_data: dict[str, Any] | None = None,
            attach: Iterable[tuple[str, str | os.PathLike]] = (), profile_block: dict[str, Any] | None = None,
            **options) -> ArchiveResult:
    """`sign_key`: path of an Ed25519 private key (from `keygen`) to sign the manifest with
    (or a key already loaded with `signing_key`). Every chunk the store already holds is read
    back and proved (a damaged one is repaired from the source); `trust_verified_within`
    (seconds) trusts chunks a deep verify found intact within that window instead (faster
    re-archives, weaker proof). `profile` ("model" = archiver-model/1) with `meta_file` (a JSON
    file) or `profile_data` (a dict): metadata checked against the profile's schema and recorded
    in the manifest (or `profile_block`, one already made by `profile_block()`); `attach`:
    (role, path) documents stored under _archive/ROLE/. Symlinks are recorded as symlinks, or
    followed to regular files with `dereference=True` (always inside a Hugging Face snapshot)."""
    key = signing_key(sign_key)
    block = profile_block if profile_block is not None else make_profile_block(profile, meta_file, profile_data)
    with _repo(repo, store, catalog, create=True, settings=settings) as r:
        return pipeline.archive(r, list(paths), name=name, label=label, meta=meta, progress=progress,
                                sign_key=key, trust_verified_within=trust_verified_within, profile=block,
                                attachments=list(attach), **options)


def make_profile_block(profile: str | None, meta_file: str | os.PathLike | None = None,
                  profile_data: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest's profile block, checked against the profile's schema now (before any
    scan): InvalidOptionError('meta_file', ...) naming the first missing or invalid field."""
    from archiver import profile as profiles
    if profile is None:
        if meta_file is not None or profile_data is not None:
            raise InvalidOptionError("profile", "is needed to check the metadata against (e.g. model)")
        return None
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
           progress: Progress | None = None) -> VerifyReport:
    """`trust_keys`: public key files or hex keys; each manifest must be signed by one of them."""
    trusted = trusted_keys(trust_keys)
    with _repo(repo, store, catalog, settings=settings, read_only=True) as r:
        return checker.verify(r, list(refs), all_archives=all_archives, deep=deep, sample=sample, trusted=trusted,
                              progress=progress)


def restore(ref: str, dest: str | os.PathLike, *, include: Iterable[str] = (), force: bool = False,
            trust_keys: Iterable[str | bytes] | None = None, repo: Repository | None = None,
            store: str | None = None, catalog: str | os.PathLike | None = None, settings: Settings | None = None,
            progress: Progress | None = None, preserve_special_bits: bool = False) -> RestoreResult:
    """`preserve_special_bits`: keep setuid, setgid and sticky bits (dropped by default)."""
    trusted = trusted_keys(trust_keys)
    with _repo(repo, store, catalog, settings=settings) as r:
        return restorer.restore(r, ref, dest, include=include, force=force, trusted=trusted, progress=progress,
                                preserve_special_bits=preserve_special_bits)


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
