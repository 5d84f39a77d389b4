"""CPU-s of `Catalog.record_manifest` of one archived manifest into a fresh catalog, in
process, with no other thread running: the catalog's own serial work at a commit, for A/B
between checkouts (run each side from its own directory: `python` puts the script's
directory, not the checkout, first; PYTHONPATH picks the checkout).

    PYTHONPATH=. .venv/bin/python bench/catalog_record.py --store S --catalog S.db --id MID [--runs 3]

S is a store holding manifest MID (e.g. the small-file tree archived once), S.db its catalog."""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from archiver import api
from archiver.urls import normalise_store_url
from manifests.catalog import Catalog


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    repo = api.open_repository(store=a.store, catalog=a.catalog)
    m = repo.load_manifest(a.id)
    url = normalise_store_url(a.store)
    source = Catalog(a.catalog, url)
    data = source.manifest_bytes(a.id)
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory(prefix="catalog-record-") as td:
            cat = Catalog(Path(td) / "c.db", url)
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            assert cat.record_manifest(m, data)
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            cat.close()
        print(f"record_manifest: {r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime:.3f} CPU-s, "
              f"{t1 - t0:.3f} s wall, {len(m.entries)} entries")


if __name__ == "__main__":
    main()
