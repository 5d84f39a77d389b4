"""One `Settings` object, resolved once from explicit values and the environment.

Like s3transfer's `TransferConfig`, it is passed in (Python API, `Repository.open`,
`open_store`) rather than read from the environment deep inside: this module is the only
place that reads ARCHIVER_* variables for the library."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from archiver.errors import InvalidOptionError
from archiver.packs import MAX_PACK_BELOW, S3_PACK_BELOW, SMALL_OBJECT
from archiver.urls import normalise_endpoint, normalise_store_url, s3_url_options
from manifests.catalog import default_catalog_path

MiB = 1024 * 1024

HOME_ENV = "ARCHIVER_HOME"
STORE_ENV = "ARCHIVER_STORE"
CATALOG_ENV = "ARCHIVER_CATALOG"
CHECKSUM_ENV = "ARCHIVER_S3_CHECKSUM"
MAX_ATTEMPTS_ENVS = ("ARCHIVER_S3_MAX_ATTEMPTS", "AWS_MAX_ATTEMPTS")
# boto3's order: the S3-specific variable, then the global one; both off with the IGNORE switch.
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
IGNORE_ENDPOINTS_ENV = "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"
IDENTITY_ENV = "ARCHIVER_IDENTITY"  # age identity files of a sealed store's custodian (os.pathsep-separated)
ADDRESS_KEY_ENV = "ARCHIVER_ADDRESS_KEY"  # a sealed store's address key file (default: under home)
PACK_BELOW_ENV = "ARCHIVER_PACK_BELOW"  # bytes: chunk objects smaller than this are packed; 0: never


@dataclass(frozen=True)
class S3Options:
    """How to reach S3. Every field has a default that works against AWS with the
    standard credential chain; endpoint_url None lets boto3 honour AWS_ENDPOINT_URL."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    # For S3-compatible servers that reject botocore's default CRC32 checksum trailers
    # (ARCHIVER_S3_CHECKSUM=when_required). Content-MD5 is then sent instead, so bodies
    # are still verified by the server.
    checksum_when_required: bool = False
    max_attempts: int = 8
    multipart_threshold: int = 64 * MiB
    max_pool: int = 16
    min_part_size: int = 8 * MiB  # S3 requires >= 5 MiB; tests lower it with the threshold
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    list_page_size: int = 1000


@dataclass(frozen=True)
class Settings:
    """Where the store and the catalog live, and how to reach S3.

    `endpoint` is the S3-compatible endpoint an s3:// store is reached at (None: AWS, or
    not an S3 store). It is part of the store's name: the default catalog path and the
    catalog's binding include it, so two services with a bucket of the same name never
    share a catalog."""

    home: Path
    store_url: str
    catalog_path: Path
    s3: S3Options = field(default_factory=S3Options)
    endpoint: str | None = None
    # The S3 options before this store's URL settings (?profile=&endpoint=&region=) were
    # applied: what another store (a copy) starts from. None: the same as `s3`.
    default_s3: S3Options | None = None
    # Sealed stores: the custodian identity files given (--identity, else ARCHIVER_IDENTITY),
    # and the address key file an archive host holds (ARCHIVER_ADDRESS_KEY, else under home).
    identities: tuple[str, ...] = ()
    address_key_file: str | None = None

    def address_key_path(self, store_id: str) -> Path:
        """Where this host keeps (and `store init` writes) a sealed store's address key."""
        return Path(self.address_key_file) if self.address_key_file else self.home / "sealed" / f"{store_id}.key"

    # Chunk objects smaller than this many bytes go into packs (archiver.packs); 0: none do.
    pack_below: int = SMALL_OBJECT

    @classmethod
    def resolve(cls, store: str | None = None, catalog: str | os.PathLike | None = None, *,
                s3: S3Options | None = None, env: Mapping[str, str] | None = None,
                identities: tuple[str, ...] | list[str] = ()) -> "Settings":
        """store, else ARCHIVER_STORE, else a directory store under ARCHIVER_HOME (~/.archiver);
        catalog, else ARCHIVER_CATALOG, else a catalog file under ARCHIVER_HOME for that store;
        s3, else S3Options with ARCHIVER_S3_CHECKSUM / ARCHIVER_S3_MAX_ATTEMPTS and the
        AWS endpoint variables applied."""
        env = os.environ if env is None else env
        home = home_dir(env)
        default_store = normalise_store_url(str(home / "store"))
        if store is not None and not str(store).strip():
            raise InvalidOptionError("store", "is empty (an unset variable?)")
        raw = store or env.get(STORE_ENV) or str(home / "store")
        url = normalise_store_url(raw)
        base = s3 if s3 is not None else s3_options(env)
        overrides = s3_url_options(raw)  # per-store settings in the URL win over the defaults
        opts = replace(base, **overrides) if overrides else base
        endpoint = s3_endpoint(opts, env) if url.startswith("s3://") else None
        cat = catalog or env.get(CATALOG_ENV)
        path = Path(cat).expanduser() if cat else default_catalog_path(home, url, default_store, endpoint)
        ids = tuple(identities) or tuple(p for p in env.get(IDENTITY_ENV, "").split(os.pathsep) if p.strip())
        return cls(home=home, store_url=url, catalog_path=path, s3=opts, endpoint=endpoint,
                   default_s3=base if overrides else None, identities=ids,
                   address_key_file=env.get(ADDRESS_KEY_ENV) or None, pack_below=_pack_below(env, url))

    def for_copy(self, store: str, catalog: str | os.PathLike | None = None) -> "Settings":
        """Settings for another store (a copy): its own URL settings over this one's
        defaults (the environment's, not this store's ?profile=&endpoint=&region=), its
        own catalog under the same home unless `catalog` is given."""
        base = self.default_s3 or self.s3
        return replace(Settings.resolve(store, catalog, s3=base, env={HOME_ENV: str(self.home)}),
                       pack_below=self.pack_below)

    def with_store(self, store: str) -> "Settings":
        """The same settings for another store (its catalog chosen the same way)."""
        s3 = self.s3 if self.s3.endpoint_url or not self.endpoint else replace(self.s3, endpoint_url=self.endpoint)
        return replace(Settings.resolve(store, None, s3=s3, env={HOME_ENV: str(self.home)}), pack_below=self.pack_below)


def _pack_below(env: Mapping[str, str], url: str = "") -> int:
    """ARCHIVER_PACK_BELOW (bytes, 0 to store every chunk under its own key), else the
    default for the store: on S3, where every object costs requests, large chunks are packed
    too (`S3_PACK_BELOW`); in a local directory an object is a file, and packing large chunks
    would only add the pack's hash and copy, so small ones only (`SMALL_OBJECT`)."""
    raw = env.get(PACK_BELOW_ENV, "").strip()
    if not raw:
        return S3_PACK_BELOW if url.startswith("s3://") else SMALL_OBJECT
    if not raw.isdigit() or int(raw) > MAX_PACK_BELOW:
        raise InvalidOptionError("pack_below", f"{PACK_BELOW_ENV} must be a number of bytes from 0 to "
                                               f"{MAX_PACK_BELOW}, got {raw!r}")
    return int(raw)


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(HOME_ENV) or Path.home() / ".archiver").expanduser().absolute()


def env_endpoint(env: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint boto3 takes from the environment: AWS_ENDPOINT_URL_S3, else
    AWS_ENDPOINT_URL, neither if AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is true."""
    env = os.environ if env is None else env
    if env.get(IGNORE_ENDPOINTS_ENV, "").strip().lower() == "true":
        return None
    for var in ENDPOINT_ENVS:
        if env.get(var, "").strip():
            return env[var].strip()
    return None


def s3_endpoint(s3: S3Options, env: Mapping[str, str] | None = None) -> str | None:
    """The endpoint an S3 store is reached at, normalised (None for AWS): the explicit
    option, else what boto3 reads from the environment."""
    return normalise_endpoint(s3.endpoint_url or env_endpoint(env))


def s3_options(env: Mapping[str, str] | None = None, **explicit: Any) -> S3Options:
    """S3Options from the environment: ARCHIVER_S3_CHECKSUM=when_required,
    ARCHIVER_S3_MAX_ATTEMPTS (or AWS_MAX_ATTEMPTS) so an outage longer than the default
    retries can be ridden out, and the endpoint (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL),
    passed to boto3 as read here so the store opened is the store the catalog is bound to."""
    env = os.environ if env is None else env
    found: dict[str, Any] = {}
    endpoint = env_endpoint(env)
    if endpoint:
        found["endpoint_url"] = endpoint
    if env.get(CHECKSUM_ENV, "").strip().lower() == "when_required":
        found["checksum_when_required"] = True
    for var in MAX_ATTEMPTS_ENVS:
        raw = env.get(var, "").strip()
        if raw:
            try:
                value = int(raw)
            except ValueError:
                raise InvalidOptionError(var, f"must be a whole number, got {raw!r}") from None
            if value < 1:
                raise InvalidOptionError(var, "must be at least 1")
            found["max_attempts"] = value
            break
    found.update(explicit)
    return S3Options(**found)
