"""The floor under a first version's catalog commit (issue 12 item 4), part by part.

    .venv/bin/python bench/catalog_floor.py [--files 1000] [--chunks 1311]

`bench/catalog_scale.py` measures the whole commit of an all-new 10 TiB version. This
measures, in CPU seconds of this process (`time.process_time`), the parts that grow with its
1.31 million new chunks: reading the file maps (manifests.model.filemap_records: hash check
and the reader's checks) in both forms, binary (file map version 2, what archive writes:
arrays, no Python object per chunk) and JSON (version 1, what earlier archivers wrote: one
triple per chunk), and recording one `chunks` dedup row per new chunk as the catalog does
(manifests.catalog._insert_map_keys: every map's keys sorted together, one transaction, WAL,
synchronous=FULL, 64 MiB page cache), against the earlier way (rows built in Python per map,
executemany per map, transactions of ~100,000 rows)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEMA = 'CREATE TABLE "chunks" ("key" INTEGER PRIMARY KEY, "stored_size" INTEGER, "codec" TEXT, "owner" INTEGER)'


def connect(d: str) -> sqlite3.Connection:
    conn = sqlite3.connect(os.path.join(d, "c.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute(SCHEMA)
    return conn


def size_of(d: str, conn: sqlite3.Connection) -> int:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(p.stat().st_size for p in Path(d).glob("c.db*"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=1311)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from catalog_scale import fake_entry
    from manifests.catalog import _insert_map_keys, chunk_key
    from manifests.model import filemap_json_bytes, filemap_records, manifest_id, with_filemap
    binary, json_maps = [], []
    for i in range(a.files):
        full = fake_entry(i, a.chunks, "v1")
        e, data = with_filemap(full)
        binary.append((data, dataclasses.replace(e, chunks=())))
        js = filemap_json_bytes(full.chunks)
        json_maps.append((js, dataclasses.replace(e, chunks=(), filemap=manifest_id(js))))
    c0 = time.process_time()
    records = [filemap_records(data, e) for data, e in binary]
    read_bin = time.process_time() - c0
    c0 = time.process_time()
    triples = [list(filemap_records(data, e)) for data, e in json_maps]
    read_json = time.process_time() - c0
    n = a.files * a.chunks
    with tempfile.TemporaryDirectory() as d:
        conn = connect(d)
        c0 = time.process_time()
        conn.execute("BEGIN IMMEDIATE")
        fresh = _insert_map_keys(conn, [(i + 1, r) for i, r in enumerate(records)])
        conn.execute("COMMIT")
        bulk_s = time.process_time() - c0
        assert fresh is not None and all(v is not None for v in fresh.values())
        bulk_size = size_of(d, conn)
    with tempfile.TemporaryDirectory() as d:
        conn = connect(d)
        per_txn = max(1, 100_000 // a.chunks)
        c0 = time.process_time()
        rows = [sorted((chunk_key(h), stored, codec, i + 1) for h, stored, codec in recs)
                for i, recs in enumerate(triples)]
        for b in range(0, len(rows), per_txn):
            conn.execute("BEGIN IMMEDIATE")
            for r in rows[b:b + per_txn]:
                conn.executemany("INSERT OR IGNORE INTO chunks VALUES (?,?,?,?)", r)
            conn.execute("COMMIT")
        rows_s = time.process_time() - c0
        size_of(d, conn)
    print(f"{n:,} new chunks in {a.files} maps (CPU-s of this process):")
    print(f"  read the maps, binary (filemap_records -> arrays): {read_bin:.2f}")
    print(f"  read the maps, JSON (filemap_records -> triples): {read_json:.2f}")
    print(f"  record the dedup rows in bulk (_insert_map_keys, one transaction): {bulk_s:.2f}")
    print(f"  record them the earlier way (Python rows per map, ~100,000 per transaction): {rows_s:.2f}")
    print(f"  binary read + bulk insert: {read_bin + bulk_s:.2f}; table {bulk_size / 1e6:.1f} MB "
          f"({bulk_size / n:.0f} bytes per chunk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
