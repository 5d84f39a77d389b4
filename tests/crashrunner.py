"""Run the archiver CLI in this process and SIGKILL it at a chosen point (kill -9, no
cleanup, no atexit), to test crash safety without any fault hook in production code.

CRASH_AT=put:N     after the N-th chunk object has been durably written
CRASH_AT=record    after the manifest is in the store, before the catalog transaction
CRASH_AT=commit    inside the catalog transaction, after the manifest row is inserted
JOURNAL_BATCH=N    the resume journal writes its lines out every N (archiver.journal.BATCH_LINES)
"""
from __future__ import annotations

import os
import signal
import sys
import threading


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    from archiver.stores.local import LocalStore
    from manifests import catalog as catalog_mod

    kind, _, arg = spec.partition(":")
    if kind == "put":
        limit = int(arg)
        count = [0]
        lock = threading.Lock()
        orig = LocalStore.put_parts_if_absent  # put_if_absent writes through it too

        def put(self, key, parts, policy=None):
            written = orig(self, key, parts, policy)
            if key.startswith("chunks/") and written:
                with lock:
                    count[0] += 1
                    if count[0] >= limit:
                        _die()
            return written
        LocalStore.put_parts_if_absent = put
    elif kind == "record":
        def record(self, *a, **k):
            _die()
        catalog_mod.Catalog.record_manifest = record
    elif kind == "commit":
        def audit(self, *a, **k):  # runs inside record_manifest's transaction, after all inserts
            assert self._conn.in_transaction
            _die()
        catalog_mod.Catalog._audit = audit
    else:
        raise SystemExit(f"bad CRASH_AT {spec!r}")


if __name__ == "__main__":
    if os.environ.get("CRASH_AT"):
        install(os.environ["CRASH_AT"])
    if os.environ.get("JOURNAL_BATCH"):
        from archiver import journal
        journal.BATCH_LINES = int(os.environ["JOURNAL_BATCH"])
    from archiver.cli import main
    main(sys.argv[1:])
