"""Trees of an archive's directories made, proved and written while its files are still
being archived (issue 15 item 6: the commit ran alone after the last worker task, building,
proving and fsyncing 500 trees on one core while the other idled).

A directory's tree can be made once every entry under it is known: its files (a worker's, a
thread's, the files cache's or a journal's), its symlinks and directories (the scan's), and
the trees of its subdirectories. As entries arrive, one builder thread makes each complete
directory's tree exactly as `tree_objects` would (the files cache's previous tree where
`same_as_previous` holds, else `tree_bytes`), proves it with the reader's checks
(`check_tree`, skipped for a tree a recorded manifest names, as the commit skips it) and
hands it, BATCH trees at a time, to writer threads (`Repository.put_trees_made`:
put_if_absent made durable once per batch, or read back and healed, as the commit writes
trees). The commit is then handed what was made
(`EarlyMade`): it still builds the manifest's trees, taking these bytes for directories whose
entries are the very ones they were made from, proves every tree not proved here, and writes
every tree not durable yet, all before the root; so the manifest and what the store and
catalog hold are the same as without this. A failed archive may leave trees no manifest
names (as it may leave packs), never a manifest naming a missing tree. Any error here only
leaves the work to the commit, which raises it there as before."""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from archiver.scan import Source
from manifests.model import (EMPTY_TREE, TREE_THRESHOLD, Entry, PreviousTree, check_tree, manifest_id,
                             needs_filemap, parent_of, same_as_previous, tree_bytes, tree_children)

WRITERS = 8  # batches written at once: each waits on its sync (or PUTs), not on the CPU
BATCH = 32  # trees per write: a local store syncs a batch at once (one syncfs from fileio.SYNCFS_FROM files)


@dataclass
class EarlyMade:
    """What was made before the commit: directory -> its tree (offered to `tree_objects` as a
    previous tree: kept only where the commit's entries are the ones it was made from), the
    hashes `check_tree` accepted, and the hashes durably in the store."""

    trees: dict[str, PreviousTree] = field(default_factory=dict)
    proved: set[str] = field(default_factory=set)
    durable: set[str] = field(default_factory=set)


def scan_entry(src: Source) -> Entry:
    """The entry of a scanned directory or symlink, made as `pipeline.archive` makes it."""
    if src.is_dir:
        return Entry(path=src.path, type="dir", mode=src.mode, mtime_ns=src.mtime_ns)
    return Entry(path=src.path, type="symlink", mode=src.mode, target=src.link or "")


class EarlyTrees:
    """One archive run's early trees: `add` the file entries as they finish (any thread),
    `finish` before the commit (waits for the last trees and writes), `close` on any exit."""

    def __init__(self, repo: Any, sources: list[Source], known_files: Mapping[str, Entry],
                 previous: Mapping[str, PreviousTree], known: set[str], in_store: frozenset[str]) -> None:
        self.repo, self.sources, self.previous = repo, sources, previous
        self.known, self.in_store = known, in_store
        self.children: dict[str, list[int]] = {}
        self.files: dict[str, Entry] = dict(known_files)
        self.pending: dict[str, int] = {}
        self.blocked: set[str] = set()
        self.hashes: dict[str, str] = {}
        self.made = EarlyMade()
        self.writes: list[tuple[list[str], Future[None]]] = []  # (tree hashes, their write)
        self.writing: set[str] = set()
        self.batch: list[tuple[str, bytes]] = []  # made and proved, not handed to a writer yet
        self.inbox: queue.SimpleQueue[list[Entry] | None] = queue.SimpleQueue()
        self.writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="early-trees")
        self.stopped = False
        self.builder = threading.Thread(target=self._run, name="early-trees", daemon=True)
        self.builder.start()

    @classmethod
    def start(cls, repo: Any, sources: list[Source], reused: Mapping[str, Entry],
              previous: Mapping[str, PreviousTree] | None, write_policy: Any,
              processes: int | None = None) -> "EarlyTrees | None":
        """The run's early trees, or None where the commit makes no trees (a sealed store, at
        most TREE_THRESHOLD entries) or writes them under a lock policy, or no worker process
        will run (`processes` 0: threads, beside which a builder only contends for the GIL).
        `reused`: the files cache's entries, known now. The directories are laid out on the
        builder thread, not in the run's serial head (none if the paths form no tree)."""
        if repo.sealed or write_policy is not None or len(sources) <= TREE_THRESHOLD or processes == 0:
            return None
        previous = previous or {}
        known = repo.known_trees({p.hash for p in previous.values()}) if previous else set()
        return cls(repo, sources, reused, previous, known, repo.trees_read_back())

    def _lay_out(self) -> bool:
        """Each directory's entries and how many of them are not known yet; False if the paths
        form no tree (`tree_children`: the manifest keeps its entries inline)."""
        children = tree_children((s.path, s.is_dir) for s in self.sources)
        if children is None:
            return False
        self.children = children
        sources = self.sources
        for d, idx in children.items():
            self.pending[d] = sum(1 for i in idx if sources[i].is_dir or
                                  not sources[i].is_link and sources[i].path not in self.files)
        return True

    def add(self, entries: Iterable[Entry]) -> None:
        """Finished file entries (any thread): queued for the builder (a list of its own)."""
        self.inbox.put(list(entries))

    def all_added(self) -> None:
        """Every file's entry was added: the builder makes what is left and ends on its own
        (its writers too, once their writes are done), whether or not `finish` is called."""
        self.inbox.put(None)

    def finish(self) -> EarlyMade:
        """Wait for the builder and the writes; what was made, proved and written by now."""
        self.inbox.put(None)
        self.builder.join()
        durable: set[str] = set()
        for hs, f in self.writes:
            if f.exception() is None:  # a failed write is the commit's to make again (and report)
                durable.update(hs)
        self.writers.shutdown(wait=True)
        self.made.durable = durable
        return self.made

    def close(self) -> None:
        """Stop (the archive failed or is done): no new trees, the writes under way finish."""
        self.stopped = True
        if self.builder.is_alive():
            self.inbox.put(None)
            self.builder.join()
        self.writers.shutdown(wait=True, cancel_futures=True)

    # -- the builder thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            if not self._lay_out():
                return
            ready = [d for d, n in self.pending.items() if n == 0]
            self._complete(ready)
            self._flush(False)
            while True:
                got = self.inbox.get()
                last = got is None
                while not last:  # all that is queued at once (a thread's files come one by one)
                    try:
                        more = self.inbox.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        last = True
                    else:
                        got.extend(more)
                if self.stopped:
                    return
                done: list[str] = []
                for e in got or ():
                    d = parent_of(e.path)
                    if d not in self.pending or e.path in self.files or not e.is_file:
                        continue
                    self.files[e.path] = e
                    self.pending[d] -= 1
                    if self.pending[d] == 0:
                        done.append(d)
                self._complete(done)
                self._flush(last)
                if last:
                    return
        except Exception:  # noqa: BLE001 - nothing made here is relied on: the commit makes the rest
            self.stopped = True
        finally:
            self.writers.shutdown(wait=False)  # its threads end once the writes under way are done

    def _complete(self, dirs: list[str]) -> None:
        """Make the tree of each directory in `dirs` (all its entries known), then of each
        parent this completes, up to the top."""
        while dirs and not self.stopped:
            d = dirs.pop()
            self._make(d)
            if d == "":
                continue
            parent = parent_of(d)
            self.pending[parent] -= 1
            if self.pending[parent] == 0:
                dirs.append(parent)

    def _make(self, d: str) -> None:
        """The tree of directory `d`, as `tree_objects` makes it; proved, then written."""
        entries: list[Entry] = []
        for i in self.children[d]:
            s = self.sources[i]
            if s.is_dir:
                if s.path in self.blocked:
                    self.blocked.add(d)
                entries.append(scan_entry(s))
            elif s.is_link:
                entries.append(scan_entry(s))
            else:
                e = self.files[s.path]
                if needs_filemap(e):  # the commit records it through a file map: its tree is not made here
                    self.blocked.add(d)
                entries.append(e)
        if d in self.blocked:  # the commit makes it (and its parents): their bytes are not known here
            return
        old = self.previous.get(d)
        if old is not None and same_as_previous(entries, self.hashes, old):
            data, h = old.data, old.hash
        else:
            data = tree_bytes(entries, self.hashes)
            h = manifest_id(data)
        self.hashes[d] = h
        self.made.trees[d] = PreviousTree(h, data, tuple((e, self._sub(e)) for e in entries))
        if h == EMPTY_TREE and d != "":  # an empty directory names no tree
            return
        if h not in self.known and h not in self.made.proved:
            check_tree(data, h, d)  # a ManifestError stops the builder: the commit raises it
            self.made.proved.add(h)
        if h not in self.in_store and h not in self.writing:
            self.writing.add(h)
            self.batch.append((h, data))

    def _flush(self, last: bool) -> None:
        """Hand the trees made to a writer, BATCH at a time (all that is left once `last`)."""
        while self.batch and (last or len(self.batch) >= BATCH) and not self.stopped:
            batch, self.batch = self.batch[:BATCH], self.batch[BATCH:]
            self.writes.append(([h for h, _ in batch], self.writers.submit(self.repo.put_trees_made, batch)))

    def _sub(self, e: Entry) -> str:
        """The subtree hash `parse_tree` returns beside entry `e` ("" but for a directory with entries)."""
        if e.type != "dir":
            return ""
        h = self.hashes.get(e.path, EMPTY_TREE)
        return "" if h == EMPTY_TREE else h
