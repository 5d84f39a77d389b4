"""The cyclic garbage collector kept off the objects an archive run holds for its whole length.

A small-file archive makes a few hundred thousand objects that live until its commit (each
file's Source, then its Entry, chunk refs and snapshot) beside the imported modules' own. CPython
finds no garbage among them (they are freed by reference counting, or live to the end), yet each
full collection walks them all: six in one archive of the bench tree cost the driver about 0.3
CPU-s, taken with the GIL held while the worker processes wait for their next job
(bench/RESULTS.md, "Small-file archive: the worker phase, second pass (branch sfworker2)").

`frozen()` wraps a run: what is alive at its start and at each `settle()` (the scan's
directories, each worker task taken, each tree made) moves to the collector's permanent
generation (`gc.freeze`, a constant-time list move), so later collections walk only what was
made since; on exit everything goes back (`gc.unfreeze`), so a long-lived caller's garbage is
collected again as before. Nothing is collected less in the end: a cycle frozen meanwhile is
found by the first full collection after the run. Runs at once in one process may end each
other's freeze early: that only costs them time."""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


def settle() -> None:
    """Everything alive now lives as long as the run: out of the collector's walks until `frozen` ends."""
    gc.freeze()


@contextmanager
def frozen() -> Iterator[None]:
    """A run whose long-lived objects (those alive at its start and at each `settle`) the
    collector does not walk; all of them are walked again once it ends."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
