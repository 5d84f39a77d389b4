"""Manifest and catalog cost of a 10 TB archive, without 10 TB (issue 12 item 4).

    .venv/bin/python bench/catalog_scale.py [--files 1000] [--chunks 1311] [--keep DIR]

A synthetic archive of FILES files of CHUNKS 8 MiB chunks each (1,000 x 1,311 = 10 TiB by
default), committed to a local store whose chunk objects are never written: the chunk refs
are fake, which is all the manifest, file maps and catalog ever see. Four versions:

  v1  every chunk new;
  v2  one file changed (one new file map, CHUNKS new chunks);
  v3  nothing changed (the same entries: the same file maps, a new version only through meta);
  v4  one chunk of one file changed (a fine-tune touching one tensor): one new file map that
      shares all its other chunks with v1's map of that file;
  v5  one chunk of every file changed (a fine-tune touching one tensor per shard): 1,000 new
      maps, none fresh, each sharing all but one chunk with v1's map of its file.

Per version, as the distributed archive does it: "workers" (a child process) build each
file's entry and store its file map with `repo.save_filemaps`, handing over only the small
entries; the "driver" (another child process, so its peak RSS is its own) commits the
manifest with `repo.commit_manifest`. Reported per version: root manifest bytes, driver
peak RSS (ru_maxrss), commit wall and CPU seconds (user+sys of the driver, which is what
counts on a loaded machine), and catalog growth (catalog file + WAL after a checkpoint).
Then one `load_manifest` of v1 (every map fetched and checked), as a reader would, and one
`catalog rebuild` of the store into a fresh catalog (as `catalog sync` records versions
another host wrote).
Targets: root manifest < 1 MB, driver peak RSS < 300 MB, catalog growth < 50 MB per
version, commit < 2 s."""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHUNK = 8 << 20


def fake_entry(i: int, chunks: int, salt: str, first_salt: str | None = None):
    """File i: CHUNKS fake chunk refs (hashes unique per file and salt; chunk 0 salted with
    `first_salt` if given), bf16-like codec."""
    import blake3
    from manifests.model import ChunkRef, Entry
    refs = []
    for j in range(chunks):
        h = blake3.blake3(f"{first_salt if j == 0 and first_salt else salt}/{i}/{j}".encode()).hexdigest()
        refs.append(ChunkRef(j * CHUNK, CHUNK, h, CHUNK * 3 // 4 + j % 997, "bg2"))
    return Entry(path=f"ckpt/model-{i:05d}.safetensors", type="file", mode=0o644, size=chunks * CHUNK,
                 mtime_ns=1_732_480_000_000_000_000, blake3=blake3.blake3(f"{salt}/{i}".encode()).hexdigest(),
                 sha256=("%064x" % i), format="safetensors", chunks=tuple(refs))


def open_repo(work: Path):
    from archiver.repository import Repository
    from archiver.settings import Settings
    return Repository.open(Settings.resolve(str(work / "store"), work / "catalog.db"), create=True)


def workers(work: Path, files: int, chunks: int, changed: int | None, out: Path, one_chunk: bool = False) -> None:
    """Build each file's entry, store its file map, keep only the small entry (JSON lines).
    File `changed` (every file if negative) gets all new chunks, or (one_chunk) only a new first chunk."""
    with open_repo(work) as repo, out.open("w") as f:
        for i in range(files):
            hit = changed is not None and (i == changed or changed < 0)
            salt = "v2" if hit and not one_chunk else "v1"
            first = ("v5" if changed is not None and changed < 0 else "v4") if hit and one_chunk else None
            slim = repo.save_filemaps(fake_entry(i, chunks, salt, first))
            f.write(json.dumps(slim.to_json()) + "\n")


def read_entries(entries_file: Path) -> list:
    """The manifest entries of the workers' file (one JSON entry a line), under a top dir."""
    from manifests.model import Entry
    entries = [Entry(path="ckpt", type="dir", mode=0o755, mtime_ns=1)]
    for line in entries_file.open():
        j = json.loads(line)
        entries.append(Entry(path=j["path"], type="file", mode=j["mode"], size=j["size"], mtime_ns=j["mtime_ns"],
                             blake3=j["blake3"], sha256=j["sha256"], format=j["format"],
                             filemap=j.get("filemap", ""), chunk_count=j.get("chunk_count", 0)))
    return entries


def driver(work: Path, entries_file: Path, label: str) -> dict:
    """Commit one manifest from the workers' entries; measure this process only."""
    from manifests.model import Manifest
    entries = read_entries(entries_file)
    with open_repo(work) as repo:
        parent = repo.latest("synthetic")
        m = Manifest(name="synthetic", label=label, entries=tuple(entries), parent=parent)
        c0, w0 = time.process_time(), time.perf_counter()
        done = repo.commit_manifest(m, details={"files": len(entries) - 1})
        wall = time.perf_counter() - w0
        cpu = time.process_time() - c0
    return {"id": done.id, "commit_wall_s": round(wall, 2), "commit_cpu_s": round(cpu, 2),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def reader(work: Path, mid: str) -> dict:
    with open_repo(work) as repo:
        w0, c0 = time.perf_counter(), time.process_time()
        m = repo.load_manifest(mid)
        n = sum(len(e.chunks) for e in m.files)
        return {"load_wall_s": round(time.perf_counter() - w0, 2), "load_cpu_s": round(time.process_time() - c0, 2),
                "chunk_refs": n, "reader_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def rebuilder(work: Path) -> dict:
    """`catalog rebuild` of the whole store into a fresh catalog (as `catalog sync` records
    another host's versions): every version's new maps fetched and recorded."""
    from archiver.repository import Repository
    from archiver.settings import Settings
    cat = work / "rebuilt.db"
    with Repository.open(Settings.resolve(str(work / "store"), cat), create=True) as repo:
        w0, c0 = time.perf_counter(), time.process_time()
        added = repo.rebuild_catalog().added
        return {"rebuild_wall_s": round(time.perf_counter() - w0, 2), "rebuild_cpu_s": round(time.process_time() - c0, 2),
                "rebuilt_versions": len(added),
                "rebuild_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def catalog_bytes(work: Path) -> int:
    db = work / "catalog.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(p.stat().st_size for p in work.glob("catalog.db*"))


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=1311)
    ap.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one, deleted)")
    ap.add_argument("--role", choices=["workers", "driver", "reader", "rebuilder"], help=argparse.SUPPRESS)
    ap.add_argument("--arg", action="append", default=[], help=argparse.SUPPRESS)
    a = ap.parse_args()
    from manifests.model import FILEMAP_THRESHOLD
    if a.chunks <= FILEMAP_THRESHOLD:  # the driver reads map entries only (no inline chunk lists)
        ap.error(f"--chunks must be over {FILEMAP_THRESHOLD} (the file-map threshold)")
    if a.role == "workers":
        spec = a.arg[1]
        changed = None if spec == "-" else -1 if spec.startswith("all") else int(spec.rstrip("c"))
        workers(Path(a.arg[0]), a.files, a.chunks, changed, Path(a.arg[2]), one_chunk=spec.endswith("c"))
        return 0
    if a.role == "driver":
        print(json.dumps(driver(Path(a.arg[0]), Path(a.arg[1]), a.arg[2])))
        return 0
    if a.role == "reader":
        print(json.dumps(reader(Path(a.arg[0]), a.arg[1])))
        return 0
    if a.role == "rebuilder":
        print(json.dumps(rebuilder(Path(a.arg[0]))))
        return 0

    sys.path.insert(0, str(ROOT / "bench"))
    from measure import compile_bytecode
    compile_bytecode()  # as an install does: the roles' children do not compile archiver again
    work = a.keep or Path(tempfile.mkdtemp(prefix="catalog-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["--files", str(a.files), "--chunks", str(a.chunks)]
    rows = []
    try:
        for label, changed in (("v1", "-"), ("v2", "0"), ("v3", "0"), ("v4", "0c"), ("v5", "allc")):
            entries = work / f"entries-{label}.jsonl"
            t0 = time.perf_counter()
            child(*common, "--role", "workers", "--arg", str(work), "--arg", changed, "--arg", str(entries))
            worker_s = time.perf_counter() - t0
            before = catalog_bytes(work) if (work / "catalog.db").exists() else 0
            r = child(*common, "--role", "driver", "--arg", str(work), "--arg", str(entries), "--arg", label)
            r["manifest_bytes"] = (work / "store" / "manifests" / f"{r['id']}.json").stat().st_size
            r["catalog_growth_mb"] = round((catalog_bytes(work) - before) / 1e6, 1)
            r["workers_wall_s"] = round(worker_s, 1)
            r["version"] = label
            rows.append(r)
            print(json.dumps(r), flush=True)
        maps = list((work / "store" / "filemaps").rglob("*.json"))  # binary or JSON maps: the key is the same
        load = child(*common, "--role", "reader", "--arg", str(work), "--arg", rows[0]["id"])
        rebuilt = child(*common, "--role", "rebuilder", "--arg", str(work))
        print(json.dumps({"filemaps": len(maps), "filemap_bytes_total_mb": round(sum(p.stat().st_size for p in maps) / 1e6, 1),
                          **load, **rebuilt}), flush=True)
        print()
        print(f"synthetic archive: {a.files} files x {a.chunks} chunks of 8 MiB "
              f"({a.files * a.chunks:,} chunk refs, {a.files * a.chunks * CHUNK / 2**40:.1f} TiB)")
        print("| version | root manifest | driver peak RSS | commit wall (CPU) | catalog growth |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['version']} | {r['manifest_bytes']:,} B | {r['driver_peak_rss_mb']:.0f} MB "
                  f"| {r['commit_wall_s']} s ({r['commit_cpu_s']} CPU-s) | {r['catalog_growth_mb']} MB |")
        print(f"load_manifest of v1 (every map fetched, re-hashed, parsed): {load['load_wall_s']} s wall, "
              f"{load['load_cpu_s']} CPU-s, {load['reader_peak_rss_mb']:.0f} MB peak RSS, {load['chunk_refs']:,} refs")
        print(f"catalog rebuild of the store ({rebuilt['rebuilt_versions']} versions) into a fresh catalog: "
              f"{rebuilt['rebuild_wall_s']} s wall, {rebuilt['rebuild_cpu_s']} CPU-s, "
              f"{rebuilt['rebuild_peak_rss_mb']:.0f} MB peak RSS")
        ok = all(r["manifest_bytes"] < 1e6 and r["driver_peak_rss_mb"] < 300 and r["catalog_growth_mb"] < 50
                 and r["commit_wall_s"] < 2 for r in rows)
        print("targets (root < 1 MB, driver RSS < 300 MB, catalog < 50 MB/version, commit < 2 s):",
              "PASS" if ok else "FAIL (see rows)")
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
