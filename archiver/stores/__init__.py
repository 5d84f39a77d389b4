"""Object stores: one protocol (`Store`), a local-directory and an S3 implementation,
and `open_store`, which turns a user's URL into a checked store. Key names live in
`archiver.layout`; only `archiver.repository` calls a store."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archiver import layout
from archiver.errors import InvalidOptionError, NoStoreError, ObjectMissingError, StoreError, UsageError
from archiver.settings import S3Options
from archiver.stores.base import ObjectInfo, Store
from archiver.stores.local import LocalStore, validate_key
from archiver.urls import SCHEME, local_path, parse_s3

__all__ = ["Store", "ObjectInfo", "LocalStore", "S3Options", "open_store", "marker_bytes", "validate_key",
           "STORE_FORMAT", "STORE_VERSION"]

STORE_FORMAT = "archiver-store"
STORE_VERSION = 1
MAX_MARKER_BYTES = 64 * 1024  # the marker is ~45 bytes; a bigger one is not ours and is refused unread


def marker_bytes() -> bytes:
    """The exact bytes of a new store's marker object."""
    return (json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION}) + "\n").encode()


def open_store(url: str, *, create: bool = False, s3_options: S3Options | None = None,
               policy: Any = None, marker: bytes | None = None) -> Store:
    """Open the store at `url` (a path, file:///abs/path, s3://bucket[/prefix]).

    The store must carry a marker of a format version this code reads, so a typo in a
    URL never silently starts a second, empty store; `create=True` (used by the first
    archive) writes the marker when it is missing."""
    store = _store_for_url(url, s3_options)
    if policy is not None:
        check_write_policy(store, policy)  # before the marker or anything else is written
    raw: bytes | None
    try:
        raw = store.get(layout.MARKER, max_size=MAX_MARKER_BYTES)
    except ObjectMissingError:
        raw = None
    if raw is None:
        if not create:
            raise NoStoreError(url)
        if next(iter(store.list("")), None) is not None:  # a mistyped --store must not turn data into a store
            raise UsageError(f"{url} is not empty and holds no archiver store; refusing to create one there")
        if store.put_if_absent(layout.MARKER, marker or marker_bytes()):
            return store
        raw = store.get(layout.MARKER, max_size=MAX_MARKER_BYTES)  # created concurrently by another process
    _check_marker(raw, url)
    return store


def _check_marker(raw: bytes, url: str) -> None:
    marker_name = layout.MARKER
    try:
        marker = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise StoreError(f"{url}: {marker_name} is not valid JSON, so this is not an archiver store") from None
    if not isinstance(marker, dict) or marker.get("format") != STORE_FORMAT:
        found = marker.get("format") if isinstance(marker, dict) else type(marker).__name__
        raise StoreError(f"{url}: {marker_name} does not mark an archiver store (format {found!r})")
    version = marker.get("version")
    if type(version) is not int or version < 1:
        raise StoreError(f"{url}: {marker_name} has an invalid format version {version!r}")
    if version == 2 and isinstance(marker.get("sealed"), dict):  # a sealed store (archiver.sealing)
        return
    if version != STORE_VERSION:
        raise StoreError(
            f"store at {url} has format version {version}; this archiver reads version "
            f"{STORE_VERSION} (upgrade archiver)"
        )


def _store_for_url(url: str, s3_options: S3Options | None) -> Store:
    if not isinstance(url, str) or not url.strip():
        raise UsageError("empty store URL (use a path, file:///path or s3://bucket/prefix)")
    path = local_path(url)
    if path is not None:
        return _local(path)
    match = SCHEME.match(url)
    assert match is not None  # local_path returned None: the URL has a scheme
    scheme = match.group(1).lower()
    if scheme == "s3":
        bucket, prefix = parse_s3(url)
        if prefix:
            try:
                validate_key(prefix)
            except ValueError as exc:
                raise UsageError(f"S3 URL {url} has an invalid prefix: {exc}") from None
        from archiver.stores.s3 import S3Store  # boto3 (~0.1 s) loads only when S3 is used
        store = S3Store(bucket, prefix, s3_options or S3Options())
        store.check_bucket()
        return store
    raise UsageError(f"unsupported store URL {url} (use a path, file:///path or s3://bucket/prefix)")


def _local(root: Path) -> LocalStore:
    store = LocalStore(root)
    if store.root.exists() and not store.root.is_dir():
        raise StoreError(f"store path {store.root} exists but is not a directory")
    return store


def check_write_policy(store: Store, policy: Any) -> None:
    """Refuse a write policy the store cannot honour (InvalidOptionError, exit 2 on the
    command line): a lock on a store without Object Lock (a directory, a bucket created
    without it: asked with GetObjectLockConfiguration), a storage class on a directory."""
    if policy.locked:
        if not getattr(store, "supports_object_lock", False):
            raise InvalidOptionError("lock_mode", f"cannot be honoured: {store.url} is not an S3 bucket, so it "
                                                  f"cannot lock objects")
        if not store.object_lock_enabled():  # type: ignore[attr-defined]
            raise InvalidOptionError("lock_mode", f"cannot be honoured: the bucket of {store.url} was not created "
                                                  f"with Object Lock enabled")
    if policy.storage_class and not getattr(store, "supports_storage_classes", False):
        raise InvalidOptionError("storage_class", f"cannot be honoured: {store.url} is not an S3 bucket")
