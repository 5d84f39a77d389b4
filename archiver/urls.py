"""Store URLs: the one parser, so the catalog's name for a store and the store actually
opened always agree."""
from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from archiver.errors import UsageError

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def local_path(url: str) -> Path | None:
    """The directory a local store URL names (a plain path, or file:// percent-encoded),
    or None for another scheme."""
    match = SCHEME.match(url)
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


def normalise_store_url(url: str) -> str:
    """Local paths become absolute file:// URLs so the same store always has one name;
    any other scheme is left for `open_store` to accept or refuse."""
    if url.startswith("s3://"):
        return url.rstrip("/")
    path = local_path(url)
    return url if path is None else file_url(path.expanduser().resolve())
