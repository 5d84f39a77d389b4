"""One `Settings` object, resolved once from explicit values and the environment.

Like s3transfer's `TransferConfig`, it is passed in (Python API, `Repository.open`,
`open_store`) rather than read from the environment deep inside: this module is the only
place that reads ARCHIVER_* variables for the library."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from archiver.errors import InvalidOptionError
from archiver.urls import normalise_store_url
from manifests.catalog import default_catalog_path

MiB = 1024 * 1024

HOME_ENV = "ARCHIVER_HOME"
STORE_ENV = "ARCHIVER_STORE"
CATALOG_ENV = "ARCHIVER_CATALOG"
CHECKSUM_ENV = "ARCHIVER_S3_CHECKSUM"
MAX_ATTEMPTS_ENVS = ("ARCHIVER_S3_MAX_ATTEMPTS", "AWS_MAX_ATTEMPTS")


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
    """Where the store and the catalog live, and how to reach S3."""

    home: Path
    store_url: str
    catalog_path: Path
    s3: S3Options = field(default_factory=S3Options)

    @classmethod
    def resolve(cls, store: str | None = None, catalog: str | os.PathLike | None = None, *,
                s3: S3Options | None = None, env: Mapping[str, str] | None = None) -> "Settings":
        """store, else ARCHIVER_STORE, else a directory store under ARCHIVER_HOME (~/.archiver);
        catalog, else ARCHIVER_CATALOG, else a catalog file under ARCHIVER_HOME for that store;
        s3, else S3Options with ARCHIVER_S3_CHECKSUM / ARCHIVER_S3_MAX_ATTEMPTS applied."""
        env = os.environ if env is None else env
        home = home_dir(env)
        default_store = normalise_store_url(str(home / "store"))
        if store is not None and not str(store).strip():
            raise InvalidOptionError("store", "is empty (an unset variable?)")
        url = normalise_store_url(store or env.get(STORE_ENV) or str(home / "store"))
        cat = catalog or env.get(CATALOG_ENV)
        path = Path(cat).expanduser() if cat else default_catalog_path(home, url, default_store)
        return cls(home=home, store_url=url, catalog_path=path, s3=s3 if s3 is not None else s3_options(env))

    def with_store(self, store: str) -> "Settings":
        """The same settings for another store (its catalog chosen the same way)."""
        return Settings.resolve(store, None, s3=self.s3, env={HOME_ENV: str(self.home)})


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(HOME_ENV) or Path.home() / ".archiver").expanduser().absolute()


def s3_options(env: Mapping[str, str] | None = None, **explicit: Any) -> S3Options:
    """S3Options from the environment: ARCHIVER_S3_CHECKSUM=when_required, and
    ARCHIVER_S3_MAX_ATTEMPTS (or AWS_MAX_ATTEMPTS) so an outage longer than the default
    retries can be ridden out."""
    env = os.environ if env is None else env
    found: dict[str, Any] = {}
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
