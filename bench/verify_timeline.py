"""Where does a deep verify's wall time go: which thread does what when, in one CLI run
(issue 15 item 6: small-file deep verify <= restic's `check --read-data`).

    PYTHONPATH=. .venv/bin/python bench/verify_timeline.py [--bin-ms 20] -- --store S verify ID --deep --json

bench/wall_timeline.py's sampler (the process's CPU clock and its runnable threads every
5 ms) around `archiver.cli.main()`, with the moments of a verify stamped instead of an
archive's: imports, the event log read, each manifest load (its trees, path checks, chain
and signature checks), the chunk index, the read plan, the presence check, the deep pass
(its pack-order sort and its first small-file batch) and the event written at the end.
Prints each phase's wall and CPU seconds, the cores it kept busy and its mean runnable
threads (capped at 2), then the cores busy per bin. A phase at ~1.0 core with one runnable
thread is serial Python on the main thread; the deep pass at ~1.0-1.3 cores with two
runnable threads is its workers taking turns at the GIL (their hashing is the only part
that runs beside another thread). CPU includes the sampler (~0.01-0.02 CPU-s). Run it
after `PYTHONPATH=. python -c "import bench.measure as m; m.compile_bytecode()"` (this VM
sets PYTHONDONTWRITEBYTECODE: without cached bytecode the import phase is compilation).
Linux only."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wall_timeline as wt  # noqa: E402  (its import stamps the process start)


def _wrap(obj: object, name: str, label: str, first_only: bool) -> None:
    """wall_timeline's wrapper, but a first-only stamp is the first call to start (the deep
    pass's workers enter their first batches at once)."""
    fn = getattr(obj, name)
    started = [False]

    def wrapped(*args, **kwargs):
        mine = not (first_only and started[0])
        started[0] = True
        if mine:
            wt.stamp(f"{label} start")
        try:
            return fn(*args, **kwargs)
        finally:
            if mine:
                wt.stamp(f"{label} end")

    setattr(obj, name, wrapped)


def _stamp_phases() -> None:
    """Wrap the functions that bound a verify's phases (first call only where they repeat)."""
    from archiver import checker, repository
    repo = repository.Repository
    for obj, name, label, first in ((repo, "open", "Repository.open", False),
                                    (repo, "read_events", "read_events", False),
                                    (checker, "_load", "_load (manifest, trees, paths)", False),
                                    (checker, "_chain_problems", "_chain_problems", False),
                                    (checker, "_uses_by_hash", "_uses_by_hash", False),
                                    (repo, "plan_reads", "plan_reads", False),
                                    (checker, "_shallow", "_shallow (presence check)", False),
                                    (checker, "_deep", "_deep", False),
                                    (repo, "pack_positions", "pack_positions", True),
                                    (checker, "_prove_batch", "first _prove_batch", True),
                                    (checker, "_append_event", "_append_event", False),
                                    (repo, "close", "Repository.close", False)):
        _wrap(obj, name, label, first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-ms", type=float, default=20.0)
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    return wt.run_cli(a.args[1:] if a.args[:1] == ["--"] else a.args, a.bin_ms, _stamp_phases)


if __name__ == "__main__":
    sys.exit(main())
