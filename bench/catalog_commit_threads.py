"""Where a first 10 TiB version's catalog commit spends its CPU, per thread (issue 12 item 4).

    .venv/bin/python bench/catalog_commit_threads.py [--files 1000] [--chunks 1311] [--runs 2]

The v1 commit of `bench/catalog_scale.py` (FILES new file maps of CHUNKS fake chunks each,
written first by a worker process), measured in this process: the commit's wall and CPU
seconds (`time.process_time`: every thread), the CPU of the second thread that runs the
`INSERT ... SELECT FROM json_each` statements (manifests/jsonrows.py), and the CPU the calling
thread spends building their JSON texts, each from the thread's own clock (`time.thread_time`),
which a loaded machine inflates less than a wall. A fresh catalog and a copy of the maps per run."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def commit_once(work: Path, template: Path, entries_file: Path) -> dict:
    """Commit the v1 manifest into a copy of `template`'s store with a fresh catalog."""
    from bench import catalog_scale
    from manifests import jsonrows
    from manifests.model import Manifest
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template / "store", work / "store")
    entries = catalog_scale.read_entries(entries_file)
    clocks = {"sql_thread_cpu_s": 0.0, "text_build_cpu_s": 0.0}
    build, each = jsonrows.rows_text, jsonrows.each_text

    def timed_build(*a, **k):
        c = time.thread_time()
        try:
            return build(*a, **k)
        finally:
            clocks["text_build_cpu_s"] += time.thread_time() - c

    def timed_each(conn, sql, texts):
        class Timed:  # the connection as the second thread sees it: its execute timed on that thread
            def execute(self, *a):
                c = time.thread_time()
                try:
                    return conn.execute(*a)
                finally:
                    clocks["sql_thread_cpu_s"] += time.thread_time() - c
        return each(Timed(), sql, texts)  # type: ignore[arg-type]

    jsonrows.rows_text, jsonrows.each_text = timed_build, timed_each
    try:
        with catalog_scale.open_repo(work) as repo:
            m = Manifest(name="synthetic", label="v1", entries=tuple(entries))
            w0, c0 = time.perf_counter(), time.process_time()
            repo.commit_manifest(m, details={"files": len(entries) - 1})
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    finally:
        jsonrows.rows_text, jsonrows.each_text = build, each
    return {"commit_wall_s": round(wall, 2), "commit_cpu_s": round(cpu, 2),
            **{k: round(v, 2) for k, v in clocks.items()},
            "load_avg": float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=1311)
    ap.add_argument("--runs", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="commit-threads-"))
    try:
        template, entries = tmp / "template", tmp / "entries-v1.jsonl"
        subprocess.run([sys.executable, str(ROOT / "bench" / "catalog_scale.py"), "--files", str(a.files),
                        "--chunks", str(a.chunks), "--role", "workers", "--arg", str(template), "--arg", "-",
                        "--arg", str(entries)], check=True)
        for _ in range(a.runs):
            print(json.dumps(commit_once(tmp / "run", template, entries)), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
