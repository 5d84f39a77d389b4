"""CPU of the commit side of an archive, in-process, on a real manifest (issue 15 item 6).

    PYTHONPATH=. python bench/commit_cost.py HOME WORK

HOME: an ARCHIVER_HOME whose store holds an archive of the small-file tree (e.g. after
`ARCHIVER_HOME=HOME archiver archive TREE --name b`); its newest archive's entries are
committed with `Repository.commit_manifest` to a fresh local store under WORK: first, then
unchanged (a re-archive with no new tree), then with 200 files changed; and journalled
(archiver.journal, synced about once a second as fanout does). Prints CPU seconds (getrusage
of the process, all threads) and wall seconds of each; WORK is removed afterwards."""
from __future__ import annotations

import dataclasses
import resource
import shutil
import sys
import time
from pathlib import Path

from archiver.journal import Journal
from archiver.repository import Repository
from archiver.settings import Settings
from manifests.model import Manifest


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(home: str, work: str) -> None:
    with Repository.open(Settings.resolve(home + "/store", home + "/catalog.db"), read_only=True) as repo:
        m = repo.load_manifest(repo.list_archives()[0].id)
    entries = list(m.entries)
    changed = list(entries)
    for i in [i for i, e in enumerate(entries) if e.type == "file" and e.size > 0][::100][:200]:
        changed[i] = dataclasses.replace(changed[i], mtime_ns=changed[i].mtime_ns + 1)
    shutil.rmtree(work, ignore_errors=True)
    try:
        with Repository.open(Settings.resolve(work + "/store", work + "/cat.db"), create=True) as r:
            parent = None
            for label, es in (("first", entries), ("unchanged", entries), ("1% changed", changed)):
                c0, w0 = cpu(), time.monotonic()
                parent = r.commit_manifest(Manifest(name="b", label=label, entries=tuple(es), parent=parent),
                                           details={"bench": label}).id
                print(f"commit_manifest {label}: {cpu() - c0:.2f} CPU-s, {time.monotonic() - w0:.2f} s wall")
        files = [e for e in entries if e.type == "file"]
        j = Journal(Path(work) / "journal.jsonl")
        c0 = last = cpu()
        last = time.monotonic()
        for e in files:
            now = time.monotonic()
            j.record(e, [1, 2, e.size, 3, 4], sync=now - last >= 1.0)
            if now - last >= 1.0:
                last = now
        j.close()
        print(f"journal of {len(files)} files: {cpu() - c0:.3f} CPU-s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
