"""The floor under a first version's catalog commit (issue 12 item 4), part by part.

    .venv/bin/python bench/catalog_floor.py [--files 1000] [--chunks 1311]

`bench/catalog_scale.py` measures the whole commit of an all-new 10 TiB version. This
measures, in CPU seconds of this process (`time.process_time`), the two parts that grow with
its 1.31 million new chunks and that no change to the catalog's layout removes while each new
chunk gets a dedup row: reading the file maps (manifests.model.filemap_records: hash check,
the plain reader's checks, one (hash, stored size, codec) per chunk) and inserting one
`chunks` row per new chunk (schema 6: INSERT OR IGNORE of sorted 8-byte keys, map by map, in
transactions of ~100,000 rows, WAL, synchronous=FULL, 64 MiB page cache, as the catalog
does), plus the bare cost of building those rows in Python."""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=1311)
    a = ap.parse_args()
    import dataclasses

    sys.path.insert(0, str(ROOT / "bench"))
    from catalog_scale import fake_entry
    from manifests.catalog import chunk_key
    from manifests.model import filemap_records, with_filemap
    maps = []
    for i in range(a.files):
        e, data = with_filemap(fake_entry(i, a.chunks, "v1"))
        maps.append((data, dataclasses.replace(e, chunks=())))
    c0 = time.process_time()
    records = [filemap_records(data, e) for data, e in maps]
    read_s = time.process_time() - c0
    c0 = time.process_time()
    rows = [sorted((chunk_key(h), stored, codec, i + 1) for h, stored, codec in recs) for i, recs in enumerate(records)]
    build_s = time.process_time() - c0
    with tempfile.TemporaryDirectory() as d:
        conn = sqlite3.connect(os.path.join(d, "c.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute('CREATE TABLE "chunks" ("key" INTEGER PRIMARY KEY, "stored_size" INTEGER, "codec" TEXT, '
                     '"owner" INTEGER)')
        per_txn = max(1, 100_000 // a.chunks)
        c0 = time.process_time()
        for b in range(0, len(rows), per_txn):
            conn.execute("BEGIN IMMEDIATE")
            for r in rows[b:b + per_txn]:
                conn.executemany("INSERT OR IGNORE INTO chunks VALUES (?,?,?,?)", r)
            conn.execute("COMMIT")
        insert_s = time.process_time() - c0
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        size = sum(p.stat().st_size for p in Path(d).glob("c.db*"))
    n = a.files * a.chunks
    print(f"{n:,} new chunks in {a.files} maps (CPU-s of this process):")
    print(f"  read the maps (filemap_records): {read_s:.2f}")
    print(f"  build the rows (chunk_key, sort): {build_s:.2f}")
    print(f"  insert one chunks row each (SQLite): {insert_s:.2f}")
    print(f"  sum: {read_s + build_s + insert_s:.2f}; table {size / 1e6:.1f} MB ({size / n:.0f} bytes per chunk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
