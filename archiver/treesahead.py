"""A manifest's trees made, proved and written while the archive's last steps run.

Once the last file is archived, the driver still flushes packs, proves by LIST what the
workers stored, syncs the catalog and assembles the manifest before its commit; the commit
then built every tree, parsed each back with the reader's checks and wrote them all (an
fsync each: most of that time is waiting), one step after the other. The trees depend on
the entries alone, so they are made on a thread of their own as soon as the entries are
final, and handed to `Repository.put_trees_ahead`, which proves every new one and only then
writes them all, while the driver does the rest. The commit takes them only for the very
entry objects they were made from (`made_for`); anything else, or anything that failed
here, it makes, proves and writes itself as before. An archive that fails before its commit
may leave these proved trees in the store, unnamed by any manifest, as it may leave chunks."""
from __future__ import annotations

import threading
from typing import Callable, Mapping, Sequence

from manifests import model
from manifests.model import EMPTY_TREE, Entry, PreviousTree, tree_objects, with_filemap

Made = tuple[str, dict[str, bytes], dict[str, str]]  # tree_objects: (top hash, hash -> bytes, directory -> hash)


class TreesAhead:
    """`tree_objects` of final entries on a thread started here; `put` (Repository.
    put_trees_ahead: prove every tree given with the reader's checks, then write them all)
    takes the trees made anew. A tree kept from `previous` (the files cache's, read back and
    checked) is left to the commit, which asks the catalog whether it is known."""

    def __init__(self, entries: Sequence[Entry], previous: Mapping[str, PreviousTree] | None,
                 put: Callable[[dict[str, tuple[bytes, str]]], set[str]]) -> None:
        self._given = tuple(entries)
        self._previous = previous or {}
        self._put = put
        self._entries: tuple[Entry, ...] = ()
        self._made: Made | None = None
        self.proved: set[str] = set()  # hashes of the trees proved and durable here
        self._thread = threading.Thread(target=self._run, name="trees-ahead", daemon=True)
        self._thread.start()

    @staticmethod
    def wanted(entry_count: int, sealed: bool) -> bool:
        """A manifest this large is committed through trees (a sealed store's stays inline)."""
        return not sealed and entry_count > model.TREE_THRESHOLD

    def _run(self) -> None:
        try:
            entries = tuple(with_filemap(e)[0] for e in self._given)  # as with_filemaps records them
            made = tree_objects(entries, self._previous)
            if made is not None:
                new = {h: (made[1][h], d) for d, h in sorted(made[2].items())
                       if not (h == EMPTY_TREE and d) and not self._kept(d, h)}
                self.proved = self._put(new) if new else set()
            self._entries, self._made = entries, made
        except Exception:  # noqa: BLE001 - nothing taken from here: the commit makes and proves all of it
            self._entries, self._made, self.proved = (), None, set()

    def _kept(self, d: str, h: str) -> bool:
        old = self._previous.get(d)
        return old is not None and old.hash == h

    def made_for(self, entries: Sequence[Entry]) -> tuple[tuple[Entry, ...], Made] | None:
        """Waits for the thread; (the entries as recorded through file maps, their trees) if
        `entries` are the very objects given (not merely equal: equal values can still
        serialise otherwise), else None."""
        self._thread.join()
        if self._made is None or len(entries) != len(self._given) \
                or not all(a is b for a, b in zip(entries, self._given)):
            return None
        return self._entries, self._made

    def wait(self) -> None:
        """Waits for the thread (an archive that stops before its commit leaves none running)."""
        self._thread.join()


def trees_ahead(entries: Sequence[Entry], previous: Mapping[str, PreviousTree] | None, sealed: bool,
                put: Callable[[dict[str, tuple[bytes, str]]], set[str]] | None) -> TreesAhead | None:
    """A TreesAhead for entries committed through trees, else None (also without `put`: a
    commit under a lock policy writes its trees itself)."""
    if put is None or not TreesAhead.wanted(len(entries), sealed):
        return None
    return TreesAhead(entries, previous, put)
