"""Store URLs: the one parser, so the catalog's name for a store and the store actually
opened always agree."""
from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from archiver.errors import UsageError

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# A scheme-like start without '//' ("s3:bucket", "file:/x"): a mistyped URL, never a directory name.
_URLISH = re.compile(r"^(s3|file|https?|gs|gcs|az|abfss?|swift|b2|sftp|rclone|minio):", re.IGNORECASE)
# Bucket names as S3 and its compatible servers accept them (AWS is stricter; the server decides).
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
USAGE = "use a path, file:///path or s3://bucket/prefix"


def parse_s3(url: str) -> tuple[str, str]:
    """(bucket, prefix) of an s3:// URL; a missing or malformed bucket is a usage error, so
    an unset variable in `s3://$BUCKET` never falls back to anything."""
    match = SCHEME.match(url)
    if match is None or match.group(1).lower() != "s3":
        raise UsageError(f"not an S3 URL: {url!r} ({USAGE})")
    bucket, _, prefix = url[match.end():].partition("?")[0].partition("/")
    if not bucket:
        raise UsageError(f"S3 URL {url!r} has no bucket name ({USAGE})")
    if not _BUCKET.match(bucket):
        raise UsageError(f"S3 URL {url!r} has an invalid bucket name {bucket!r}")
    return bucket, prefix.strip("/")


def local_path(url: str) -> Path | None:
    """The directory a local store URL names (a plain path, or file:// percent-encoded),
    or None for another scheme."""
    match = SCHEME.match(url)
    if match is None:
        if _URLISH.match(url):
            raise UsageError(f"malformed store URL {url!r} ({USAGE})")
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
    an S3 URL must name a bucket; any other scheme is a usage error."""
    if not url.strip():
        raise UsageError(f"empty store URL ({USAGE})")
    path = local_path(url)
    if path is not None:
        return file_url(path.expanduser().resolve())
    match = SCHEME.match(url)
    assert match is not None
    if match.group(1).lower() != "s3":
        raise UsageError(f"unsupported store URL {url!r} ({USAGE})")
    bucket, prefix = parse_s3(url)
    s3_url_options(url)  # a malformed query is a usage error here too, never ignored
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


_AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_endpoint(endpoint: str | None) -> str | None:
    """The one spelling of an S3 endpoint, as part of a store's name: scheme and host in
    lower case, no default port, no trailing slash. AWS's own endpoints (any region) are
    None: a bucket name is global there, so they all name the same store."""
    if endpoint is None or not endpoint.strip():
        return None
    text = endpoint.strip()
    parsed = urllib.parse.urlsplit(text if "://" in text else "https://" + text)
    scheme = parsed.scheme.lower()
    host = (parsed.hostname or "").lower()
    if not host:
        return text.rstrip("/")
    if host == "amazonaws.com" or host.endswith(_AWS_HOSTS):
        return None
    try:
        port = parsed.port
    except ValueError:
        return text.rstrip("/")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    return urllib.parse.urlunsplit((scheme, netloc, parsed.path.rstrip("/"), parsed.query, ""))


# Per-store settings an s3:// URL may carry after '?', and the S3Options field each sets.
S3_URL_OPTIONS = {"profile": "profile", "endpoint": "endpoint_url", "region": "region"}


def s3_url_options(url: str) -> dict[str, str]:
    """The per-store S3 settings in an s3:// URL's query (`?profile=dr&endpoint=http://h:9000
    &region=eu-west-1`), as S3Options field names; {} for any other URL. Each key at most
    once, never empty, and no other key: a typo must not silently fall back to the default
    store settings."""
    match = SCHEME.match(url)
    if match is None or match.group(1).lower() != "s3" or "?" not in url:
        return {}
    query = url.partition("?")[2]
    found: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = urllib.parse.unquote(key), urllib.parse.unquote(value)
        if key not in S3_URL_OPTIONS:
            raise UsageError(f"S3 URL {url!r} has an unknown setting {key!r} "
                             f"(known: {', '.join(sorted(S3_URL_OPTIONS))})")
        if not sep or not value.strip():
            raise UsageError(f"S3 URL {url!r}: setting {key!r} is empty")
        field = S3_URL_OPTIONS[key]
        if field in found:
            raise UsageError(f"S3 URL {url!r} sets {key!r} twice")
        found[field] = value.strip()
    if "endpoint_url" in found:
        endpoint = found["endpoint_url"]
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme.lower() not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"S3 URL {url!r}: endpoint {endpoint!r} must be an http:// or https:// URL")
    return found


def full_store_url(url: str) -> str:
    """A store's URL with its per-store settings kept (in a fixed order), so it can be
    recorded and opened again exactly as given: the canonical URL for local paths and
    plain s3:// URLs, plus `?endpoint=...&profile=...&region=...` when the URL sets them."""
    canonical = normalise_store_url(url)
    options = s3_url_options(url)
    if not options:
        return canonical
    by_field = {f: k for k, f in S3_URL_OPTIONS.items()}
    query = "&".join(f"{by_field[f]}={urllib.parse.quote(v, safe=':/')}" for f, v in sorted(
        options.items(), key=lambda item: by_field[item[0]]))
    return f"{canonical}?{query}"
