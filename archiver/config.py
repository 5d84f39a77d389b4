"""Where the store and the catalog live, from arguments or the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from archiver.stores import file_url, local_path
from manifests.catalog import default_catalog_path


@dataclass(frozen=True)
class Locations:
    store_url: str
    catalog_path: Path


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("ARCHIVER_HOME") or Path.home() / ".archiver").expanduser().absolute()


def normalise_store_url(url: str) -> str:
    """Local paths become absolute file:// URLs so the same store always has one name;
    any other scheme is left for `open_store` to accept or refuse."""
    if url.startswith("s3://"):
        return url.rstrip("/")
    path = local_path(url)
    return url if path is None else file_url(path.expanduser().resolve())


def resolve(store: str | None = None, catalog: str | os.PathLike | None = None,
            env: Mapping[str, str] | None = None) -> Locations:
    """--store, else ARCHIVER_STORE, else a directory store under ARCHIVER_HOME (~/.archiver);
    --catalog, else ARCHIVER_CATALOG, else a catalog file under ARCHIVER_HOME for that store."""
    env = os.environ if env is None else env
    home = home_dir(env)
    default_store = normalise_store_url(str(home / "store"))
    url = normalise_store_url(store or env.get("ARCHIVER_STORE") or str(home / "store"))
    cat = catalog or env.get("ARCHIVER_CATALOG")
    path = Path(cat).expanduser() if cat else default_catalog_path(home, url, default_store)
    return Locations(url, path)
