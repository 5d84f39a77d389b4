"""Object stores: one protocol (`Store`), a local-directory and an S3 implementation,
and `open_store`, which turns a user's URL into a checked store.

Layout, identical on every backend: `store.json` (format marker), `chunks/<h[0:2]>/<h>`,
`manifests/<id>.json`, and later additions such as `manifests/<id>.sig`."""
from __future__ import annotations

import importlib
import json
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archiver.errors import NotFoundError, ObjectMissingError, StoreError, UsageError
from archiver.stores.base import ObjectInfo, Store
from archiver.stores.local import LocalStore, validate_key

if TYPE_CHECKING:
    from archiver.stores.s3 import S3Options, S3Store


def _s3(name: str) -> Any:
    """S3Store/S3Options load boto3 (~0.1 s): only when an S3 store is actually used.
    Cached as a module attribute, so tests can still patch `archiver.stores.S3Options`."""
    value = globals().get(name)
    if value is None:
        value = getattr(importlib.import_module("archiver.stores.s3"), name)
        globals()[name] = value
    return value


def __getattr__(name: str) -> Any:
    if name in ("S3Store", "S3Options"):
        return _s3(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Store",
    "ObjectInfo",
    "LocalStore",
    "S3Store",
    "S3Options",
    "open_store",
    "marker_bytes",
    "validate_key",
    "local_path",
    "file_url",
    "MARKER_KEY",
    "STORE_FORMAT",
    "STORE_VERSION",
]

MARKER_KEY = "store.json"
STORE_FORMAT = "archiver-store"
STORE_VERSION = 1

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def marker_bytes() -> bytes:
    """The exact bytes of a new store's `store.json`."""
    return (json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION}) + "\n").encode()


def open_store(url: str, *, create: bool = False, s3_options: S3Options | None = None) -> Store:
    """Open the store at `url` (a path, file:///abs/path, s3://bucket[/prefix]).

    The store must carry a `store.json` marker of a format version this code reads, so
    a typo in a URL never silently starts a second, empty store; `create=True` (used
    by the first archive) writes the marker when it is missing."""
    store = _store_for_url(url, s3_options)
    raw: bytes | None
    try:
        raw = store.get(MARKER_KEY)
    except ObjectMissingError:
        raw = None
    if raw is None:
        if not create:
            raise NotFoundError(f"no archiver store at {url} (run an archive first)")
        if store.put_if_absent(MARKER_KEY, marker_bytes()):
            return store
        raw = store.get(MARKER_KEY)  # created concurrently by another process
    _check_marker(raw, url)
    return store


def _check_marker(raw: bytes, url: str) -> None:
    try:
        marker = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise StoreError(f"{url}: {MARKER_KEY} is not valid JSON, so this is not an archiver store") from None
    if not isinstance(marker, dict) or marker.get("format") != STORE_FORMAT:
        found = marker.get("format") if isinstance(marker, dict) else type(marker).__name__
        raise StoreError(f"{url}: {MARKER_KEY} does not mark an archiver store (format {found!r})")
    version = marker.get("version")
    if type(version) is not int or version < 1:
        raise StoreError(f"{url}: {MARKER_KEY} has an invalid format version {version!r}")
    if version != STORE_VERSION:
        raise StoreError(
            f"store at {url} has format version {version}; this archiver reads version "
            f"{STORE_VERSION} (upgrade archiver)"
        )


def local_path(url: str) -> Path | None:
    """The directory a local store URL names (a plain path, or file:// percent-encoded),
    or None for another scheme. The one parser of local URLs, so the catalog's name for a
    store and the directory actually opened always agree."""
    match = _SCHEME.match(url)
    if match is None:
        return Path(url)
    if match.group(1).lower() != "file":
        return None
    parsed = urllib.parse.urlsplit(url)
    if parsed.netloc not in ("", "localhost"):
        raise UsageError(f"file URL {url} names a remote host; mount it and use a local path")
    path = urllib.parse.unquote(parsed.path)
    if not path:
        raise UsageError(f"file URL {url} has no path")
    return Path(path)


def file_url(path: Path) -> str:
    """The file:// URL of a local directory (percent-encoded, so `local_path` inverts it)."""
    return "file://" + urllib.parse.quote(str(path))


def _store_for_url(url: str, s3_options: S3Options | None) -> Store:
    if not isinstance(url, str) or not url.strip():
        raise UsageError("empty store URL (use a path, file:///path or s3://bucket/prefix)")
    path = local_path(url)
    if path is not None:
        return _local(path)
    match = _SCHEME.match(url)
    assert match is not None  # local_path returned None: the URL has a scheme
    scheme = match.group(1).lower()
    if scheme == "s3":
        bucket, _, prefix = url[match.end():].partition("/")
        if not bucket:
            raise UsageError(f"S3 URL {url} has no bucket name (use s3://bucket/prefix)")
        prefix = prefix.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except ValueError as exc:
                raise UsageError(f"S3 URL {url} has an invalid prefix: {exc}") from None
        store = _s3("S3Store")(bucket, prefix, s3_options or _s3("S3Options")())
        store.check_bucket()
        return store
    raise UsageError(f"unsupported store URL {url} (use a path, file:///path or s3://bucket/prefix)")


def _local(root: Path) -> LocalStore:
    store = LocalStore(root)
    if store.root.exists() and not store.root.is_dir():
        raise StoreError(f"store path {store.root} exists but is not a directory")
    return store
