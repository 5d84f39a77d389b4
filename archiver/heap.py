"""The cyclic garbage collector kept off the objects an archive run holds for its whole length.

A small-file archive makes a few hundred thousand objects that live until its commit (each
file's Source, then its Entry, chunk refs and snapshot) beside the imported modules' own. CPython
finds no garbage among them (they are freed by reference counting, or live to the end), yet each
full collection walks them all: six in one archive of the bench tree cost the driver about 0.3
CPU-s, taken with the GIL held while the worker processes wait for their next job
(bench/RESULTS.md, "Small-file archive: the worker phase, second pass (branch sfworker2)").

`frozen()` wraps a run: what is alive at its start and at each `settle()` (the scan's
directories, each worker task taken) moves to the collector's permanent generation
(`gc.freeze`, a constant-time list move; the youngest generation's garbage is collected
first), so later collections walk only what was made since;
once the last run in progress in the process ends everything goes back (`gc.unfreeze`), so a
long-lived caller's garbage is collected again as before. Nothing is collected less in the end:
a cycle frozen meanwhile is found by the first full collection after the runs.

The permanent generation is one per process, and `gc.unfreeze` empties it whole, so:
- runs at once (threads) share one freeze, undone when the last of them ends;
- a `settle` outside every run (a thread of a run that already ended) freezes nothing: there
  would be no unfreeze after it, and whatever it froze (the ended run's garbage too) would stay
  for the life of the process;
- a freeze the caller made before the run (a server freezing its heap before it forks) is kept:
  the run then freezes nothing (unfreezing would undo the caller's); only the process's own
  command (archiver.cli, `command_freeze`) says its freeze may be undone at the run's end."""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_runs = 0  # runs in progress in this process (`frozen` entered, not left yet)
_freezing = False  # whether they freeze (False: a freeze not ours was there at the first one's start)
_command_owns = False  # the freeze found at a run's start is the process's command's own (archiver.cli)


def command_freeze() -> None:
    """The process's entry point freezes what its imports made (archiver.cli): a freeze that
    the end of an archive run may undo, the process ending with its command."""
    global _command_owns
    gc.freeze()
    _command_owns = True


def settle() -> None:
    """Everything alive now lives as long as the run: out of the collector's walks until the
    runs end (nothing frozen outside a run, or where the caller froze first). The youngest
    generation is collected first (it holds only what was made since the last collection:
    no walk of the run's objects), so the garbage just made (botocore's parser cycles of each
    S3 request, an exception's traceback) is freed now rather than frozen until the run ends."""
    if not (_runs and _freezing):
        return
    gc.collect(0)  # outside the lock: a finalizer it runs may settle too
    with _lock:
        if _runs and _freezing:
            gc.freeze()


@contextmanager
def frozen() -> Iterator[None]:
    """A run whose long-lived objects (those alive at its start and at each `settle`) the
    collector does not walk; all of them are walked again once the last run ends."""
    global _runs, _freezing
    with _lock:
        if not _runs:
            _freezing = _command_owns or gc.get_freeze_count() == 0
        _runs += 1
        if _freezing:
            gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if not _runs and _freezing:
                gc.unfreeze()
                _freezing = False
