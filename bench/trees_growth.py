"""What an unchanged re-archive of the small-file tree adds (issue 15 item 5, manifest v3 trees).

    PYTHONPATH=. python bench/trees_growth.py [--files N --empty N --dirs N] [--work DIR] [--label L]

Archives the tree `bench/smallfiles.py` builds (default 20,000 files of 1-16 KiB + 5,000
empty files in 500 directories) into a fresh local store, then re-archives it unchanged
twice, then with one file changed. Reports per step: bytes the step added to the store, by
top-level prefix (manifests/, trees/, ...), bytes the catalog database grew by (catalog.db
and its WAL; the files cache is listed apart), and CPU seconds (user+sys of the command,
from wait4: the machine is shared). The archiver that runs is the one `archiver` imports
under the caller's PYTHONPATH, so the same script measures any checkout. Prints one JSON
document; `--label` names it."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import run  # noqa: E402
from smallfiles import make_tree  # noqa: E402
from tools import ARCHIVER  # noqa: E402


def sizes(root: Path) -> dict[str, int]:
    """Bytes under each top-level directory (or file) of `root`."""
    out: dict[str, int] = {}
    if not root.exists():
        return out
    for p in root.rglob("*"):
        if p.is_file():
            top = p.relative_to(root).parts[0]
            out[top] = out.get(top, 0) + p.stat().st_size
    return out


def catalog_sizes(home: Path) -> dict[str, int]:
    """catalog database (with WAL/SHM) vs the archive's files cache, in bytes."""
    out = {"catalog": 0, "files_cache": 0}
    for p in home.rglob("*"):
        if p.is_file() and ".db" in p.name:
            out["files_cache" if ".db.files" in p.name else "catalog"] += p.stat().st_size
    return out


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) != before.get(k, 0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--empty", type=int, default=5_000)
    ap.add_argument("--dirs", type=int, default=500)
    ap.add_argument("--work", type=Path, default=HERE / ".work")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    src = make_tree(a.work / "inputs" / f"tree-{a.files}-{a.empty}-{a.dirs}", a.files, a.empty, a.dirs)
    src_copy_root = Path(tempfile.mkdtemp(prefix="trees-growth-", dir=a.work))
    try:
        src2 = src_copy_root / "tree"  # a copy: the last step changes a file
        shutil.copytree(src, src2)
        store, home = src_copy_root / "store", src_copy_root / "home"
        env = {**os.environ, "ARCHIVER_HOME": str(home)}
        steps = []
        for step in ("archive", "re-archive unchanged", "re-archive unchanged (2nd)", "re-archive, 1 file changed"):
            if step == "re-archive, 1 file changed":
                f = next(iter(sorted((src2 / "d007").glob("f*.bin"))))
                f.write_bytes(b"changed" + f.read_bytes())
            s0, c0 = sizes(store), catalog_sizes(home)
            m = run([str(ARCHIVER), "--store", str(store), "archive", str(src2), "--name", "small", "--json"], env=env)
            s1, c1 = sizes(store), catalog_sizes(home)
            added = diff(s1, s0)
            steps.append({"step": step, "cpu_s": round(m.cpu, 2), "wall_s": round(m.wall, 2),
                          "store_added": added, "store_added_total": sum(added.values()),
                          "catalog_growth": diff(c1, c0)})
        import archiver
        print(json.dumps({"label": a.label, "archiver": str(Path(archiver.__file__).parent),
                          "tree": {"files": a.files, "empty": a.empty, "dirs": a.dirs}, "steps": steps}, indent=1))
    finally:
        shutil.rmtree(src_copy_root, ignore_errors=True)


if __name__ == "__main__":
    main()
