"""The Python API: everything the CLI does, callable from restore scripts.

Each function takes either an open `repo` or `store`/`catalog` locations (the same
defaults as the CLI: ARCHIVER_STORE, ARCHIVER_CATALOG, ARCHIVER_HOME)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator

from archiver import checker, pipeline, restorer
from archiver.config import resolve
from archiver.progress import Progress
from archiver.repository import Repository
from archiver.stores import Store
from archiver.stores import open_store as _open_store
from manifests.catalog import ManifestRow
from manifests.model import Manifest

ArchiveResult = pipeline.ArchiveResult
VerifyReport = checker.VerifyReport
RestoreResult = restorer.RestoreResult


def open_store(url: str | None = None, *, create: bool = False) -> Store:
    """The store at `url` (s3://bucket/prefix, a path, or file://...), default as the CLI."""
    return _open_store(resolve(url).store_url, create=create)


def open_repository(store: str | None = None, catalog: str | os.PathLike | None = None, *,
                    create: bool = False) -> Repository:
    return Repository.open(store, catalog, create=create)


@contextlib.contextmanager
def _repo(repo: Repository | None, store: str | None, catalog: str | os.PathLike | None,
          create: bool = False) -> Iterator[Repository]:
    if repo is not None:
        yield repo
        return
    r = Repository.open(store, catalog, create=create)
    try:
        yield r
    finally:
        r.close()


def archive(paths: Iterable[str | os.PathLike], *, name: str, label: str | None = None,
            meta: dict[str, str] | None = None, sign_key: str | os.PathLike | None = None,
            repo: Repository | None = None, store: str | None = None, catalog: str | os.PathLike | None = None,
            progress: Progress | None = None, **options) -> ArchiveResult:
    """`sign_key`: path of an Ed25519 private key (from `keygen`) to sign the manifest with."""
    from manifests import signing  # cryptography loads only when signatures are used
    key = signing.load_private(sign_key) if sign_key is not None else None
    with _repo(repo, store, catalog, create=True) as r:
        return pipeline.archive(r, list(paths), name=name, label=label, meta=meta, progress=progress,
                                sign_key=key, **options)


def keygen(path: str | os.PathLike) -> tuple[Path, Path]:
    """Create an Ed25519 key pair: private key at `path` (0600), public key at `path`.pub."""
    from manifests import signing
    return signing.keygen(path)


def _trusted(keys: Iterable[str] | None) -> list[bytes] | None:
    if not keys:
        return None
    from manifests import signing
    return [signing.load_public(k) for k in keys]


def verify(refs: Iterable[str] = (), *, all: bool = False, deep: bool = False, sample: float | None = None,
           trust_keys: Iterable[str] | None = None, repo: Repository | None = None, store: str | None = None,
           catalog: str | os.PathLike | None = None, progress: Progress | None = None) -> VerifyReport:
    """`trust_keys`: public key files or hex keys; each manifest must be signed by one of them."""
    trusted = _trusted(trust_keys)
    with _repo(repo, store, catalog) as r:
        return checker.verify(r, list(refs), all=all, deep=deep, sample=sample, trusted=trusted,
                              progress=progress)


def restore(ref: str, dest: str | os.PathLike, *, include: Iterable[str] = (), force: bool = False,
            trust_keys: Iterable[str] | None = None, repo: Repository | None = None, store: str | None = None,
            catalog: str | os.PathLike | None = None, progress: Progress | None = None) -> RestoreResult:
    trusted = _trusted(trust_keys)
    with _repo(repo, store, catalog) as r:
        return restorer.restore(r, ref, dest, include=include, force=force, trusted=trusted, progress=progress)


def list_archives(name: str | None = None, *, repo: Repository | None = None, store: str | None = None,
                  catalog: str | os.PathLike | None = None) -> list[ManifestRow]:
    with _repo(repo, store, catalog) as r:
        return r.catalog.manifest_rows(name)


def show(ref: str, *, repo: Repository | None = None, store: str | None = None,
         catalog: str | os.PathLike | None = None) -> tuple[str, Manifest]:
    """(manifest id, manifest) for an id, unique id prefix, NAME or NAME@LABEL."""
    with _repo(repo, store, catalog) as r:
        mid = r.resolve(ref)
        return mid, r.load_manifest(mid)


def rebuild_catalog(*, repo: Repository | None = None, store: str | None = None,
                    catalog: str | os.PathLike | None = None) -> list[str]:
    """Recreate the catalog from the store's manifests alone; returns the ids added."""
    with _repo(repo, store, catalog) as r:
        return r.rebuild_catalog()
