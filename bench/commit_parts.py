"""CPU of each serial step of a first archive's commit, one at a time, on a real manifest.

    PYTHONPATH=. python bench/commit_parts.py SRC [--repeat N]

Archives SRC once into a temporary store (to get the manifest `commit_manifest` is given),
then times, on this thread (time.thread_time: waits and other threads do not count), the
best of N runs (default 5) of each step the committing thread takes for a new manifest:
`with_filemaps` + `tree_objects` (building the trees), `prove_trees` (the reader's checks
of each new tree), `check_recordable`, `Catalog.record_manifest` into a fresh catalog (its
rows for every entry and chunk), and the resume journal's lines for every file
(`Journal.record`, written to a temporary file). Runs on any tree of this repository since
these functions kept their signatures, so the same command compares two checkouts
(PYTHONPATH=ROOT). Used for "Small-file archive: the committing thread" in bench/RESULTS.md."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


def best(f: Callable[[], Any], n: int) -> float:
    out = []
    for _ in range(n):
        t = time.thread_time()
        f()
        out.append(time.thread_time() - t)
    return min(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from archiver import api, repository
    from archiver.journal import Journal
    from manifests import model
    from manifests.catalog import Catalog, check_recordable
    got: dict[str, Any] = {}
    real = repository.Repository.commit_manifest

    def capture(self: Any, m: Any, **kw: Any) -> Any:
        got["m"] = m
        return real(self, m, **kw)
    repository.Repository.commit_manifest = capture  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as td:
        os.environ["ARCHIVER_HOME"] = f"{td}/home"
        repo = api.open_repository(f"{td}/store", f"{td}/catalog.db", create=True)
        res = api.archive([str(args.src)], name="bench", repo=repo, resume=False)
        repo.close()
        repository.Repository.commit_manifest = real  # type: ignore[method-assign]
        m = got["m"]
        n = args.repeat
        v3, made = model.with_trees_made(model.with_filemaps(m))
        assert made is not None and v3.id == res.id, "not the committed manifest"
        data = v3.canonical_json()
        print(f"id {res.id} entries {len(m.entries)}; CPU s on this thread, best of {n}:")
        print(f"  build trees (with_filemaps + tree_objects)  {best(lambda: model.with_trees_made(model.with_filemaps(m)), n):.3f}")
        print(f"  prove_trees                                 {best(lambda: model.prove_trees(v3, made[1], made[2]), n):.3f}")
        print(f"  check_recordable                            {best(lambda: check_recordable(v3.id, v3), n):.3f}")
        k = iter(range(n))

        def record() -> None:
            cat = Catalog(f"{td}/cat{next(k)}.db", "file:///bench")
            cat.record_manifest(v3, data, trees=made[2], event_details={"bench": 1})
            cat.close()
        print(f"  Catalog.record_manifest (fresh catalog)     {best(record, n):.3f}")
        files = [e for e in m.entries if e.type == "file"]
        j = Journal(Path(td) / "journal.jsonl")

        def journal() -> None:
            for e in files:
                j.record(e, [1, 2, e.size, 3, 4], sync=False)
            j.close()
        print(f"  journal lines of {len(files)} files             {best(journal, n):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
