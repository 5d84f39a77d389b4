"""CPU of the files cache's commit write when an unchanged re-archive keeps every row
(FilesCache.put_values with a commit's mapping of kept rows: the check that every row
looking the old manifest up was kept, then the `moved` row). Usage:
PYTHONPATH=. python bench/moved_cost.py [N_ROWS]"""
from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from archiver.filescache import FilesCache


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        cache = FilesCache(Path(d) / "cat.db.files")
        now = time.time()
        rows = [(f"/t/d{i % 500}/f{i}", 1, i, 100, 5, 6, "r", "M0", f"t/d{i % 500}/f{i}", now) for i in range(n)]
        cache.put_values(rows, now)
        for k in range(1, 4):  # run k keeps every row, found in M{k-1} (directly or through `moved`)
            kept = {f"M{k - 1}": [r[:7] + (f"M{k}",) + r[8:] for r in rows]}
            t = cpu()
            cache.put_values([], now, kept, f"M{k}")
            print(f"run {k}: {n} kept rows, put_values {cpu() - t:.4f} CPU-s, moved {cache.moved()}")
        # a row no run sees (a deleted file) names M3: M3 cannot move, the kept rows are written once
        cache.put_values([("/t/gone", 1, -1, 1, 5, 6, "r", "M3", "t/gone", now)], now)
        kept = {"M3": [r[:7] + ("M4",) + r[8:] for r in rows]}
        t = cpu()
        cache.put_values([], now, kept, "M4")
        print(f"run 4 (one row not seen): {n} kept rows written, put_values {cpu() - t:.4f} CPU-s")
        cache.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 25_000)
