"""A repository = a store (source of truth) + a catalog (index and ledger) + a codec.

This is the one door to both: callers ask it to save a chunk, stream a file's verified
bytes, commit a manifest or list what is stored; only this module knows the store's
key layout (`archiver.layout`) and talks to a `Store` or the `Catalog`. Every byte read
back is checked here the same way: stored size, decode bounds, BLAKE3 of the decoded
bytes, the whole file's digest, and for manifests the id."""
from __future__ import annotations

import base64
import bisect
import dataclasses
import functools
import hashlib
import json
import math
import os
import secrets
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import blake3

from archiver import events, layout, packs, sealing
from archiver.codecs import Codec, Encoded, EncodedParts, describe, max_object_size, stored_raw_payload
from archiver.codecs import DESCRIPTOR, HEADER, SAMPLE_BYTES
from archiver.digests import FileDigest
from archiver.errors import (ArchiverError, CatalogLockedError, CatalogReadOnlyError, CorruptChunkError,
                             FileHashError, IdentityError, IntegrityError, ManifestError,
                             NotFoundError, ObjectMissingError, StoreError, InvalidOptionError, UsageError, translated)
from archiver.events import Event, EventRecord
from archiver.packs import PackLocation, PackState
from archiver.parallel import ordered_map
from archiver.problems import Outcome, Problem
from archiver.settings import Settings
from archiver.stores import Store, open_store
from archiver.stores.base import ObjectColdError, ObjectInfo, ObjectState, ObjectTooLargeError, ObjectVersion
from archiver.urls import normalise_endpoint
from manifests.catalog import AuditRow, Catalog, Chain, ManifestRow, check_recordable
from manifests.model import MAX_MANIFEST_BYTES, ChunkRef, Entry, Manifest, is_hash, manifest_id, parse_manifest
from manifests.model import MAX_FILEMAP_BYTES, parse_filemap, with_filemap, with_filemaps
from manifests.model import filemap_bytes_for, filemap_records
from manifests.filemapbin import is_binary as is_binary_filemap
from manifests import errors as manifest_errors
from manifests.model import MAX_TREE_BYTES, parse_tree, resolve_trees, tree_objects
from manifests.model import PreviousTree, prove_trees, with_trees_made
from manifests.paths import check_paths

# A signature object is ~250 bytes of JSON; anything far larger is not one.
MAX_SIGNATURE_BYTES = 64 * 1024
# Appends lost to other writers of the same chain before giving up.
EVENT_ROUNDS = 20
# Event objects fetched at once when the log is read (each is a small GET on S3).
EVENT_FETCHERS = 8
# A rebuild records manifests in transactions of at most this many manifests or bytes:
# few fsyncs, a write lock held only briefly, and memory bounded by one batch.
REBUILD_BATCH_COUNT = 256
REBUILD_BATCH_BYTES = 8 << 20
# Chunk refs of newly proved file maps recorded per catalog transaction at commit: few fsyncs,
# a write lock never held across store reads, and memory bounded. A map's refs are held as
# arrays (manifests.filemapbin.MapRecords, ~45 bytes a ref: ~90 MB at most), and a batch's
# dedup keys go into the catalog sorted together, so one batch for a whole 10 TB version
# (1.3 M refs) writes each B-tree page once instead of once per batch (bench/RESULTS.md).
FILEMAP_RECORD_BATCH = 2_000_000


@dataclass(frozen=True)
class SavedChunk:
    """What the store holds for one chunk after `save_chunk`."""

    stored_size: int
    codec: str
    written: bool  # False: it was already there (and was proved or trusted)
    repaired: bool = False  # True: the store held a damaged object here, replaced from the source bytes


@dataclass(frozen=True)
class ChunkHints:
    """The catalog's word on a batch of chunks, asked in two queries (`Repository.chunk_hints`)
    instead of two per chunk: where each lies in a recorded pack, and which are recorded at
    all. Hints only, as the per-chunk queries were: a packed chunk is still proved by a read
    of its pack, one held under its own key by the read -> prove loop."""

    packed: dict[str, list[tuple[str, int, int, int, int, str]]]  # catalog.pack_locations rows
    known: frozenset[str]  # chunks some recorded manifest names (catalog.known_chunks)


@dataclass(frozen=True)
class Piece:
    """One chunk of a streamed file: its bytes, or why they could not be had."""

    ref: ChunkRef
    data: bytes | None
    error: ArchiverError | None = None


@dataclass(frozen=True)
class StoredManifest:
    """A manifest found in the store by `iter_manifests`, or why it was refused."""

    id: str
    manifest: Manifest | None
    data: bytes | None
    error: ArchiverError | None = None


@dataclass(frozen=True)
class Committed:
    id: str
    signed_by: str | None


@dataclass
class RebuildResult(Outcome):
    """What a catalog rebuild did: `added`, the ids recorded now (parents first);
    `manifests`, how many manifest objects the store holds; `problems`, one 'manifest'
    Problem for each one skipped (bit rot, not matching its id, unsafe or duplicate paths,
    invalid Unicode). ok when nothing was skipped."""

    added: list[str] = field(default_factory=list)
    manifests: int = 0
    problems: list[Problem] = field(default_factory=list)
    events: int = 0  # store events replayed into the catalog (audit rows, chunk check times)
    packs: int = 0  # pack indexes read from the store and recorded in the catalog


@dataclass
class AppendedEvent:
    """What `append_event` did: the record written to the store (None and `store_error`
    if the store refused it), and `catalog_error` if the catalog could not record it."""

    event: Event
    record: EventRecord | None = None
    store_error: str | None = None
    catalog_error: str | None = None


@dataclass
class EventLog:
    """Every event in the store, by writer and sequence, and what is wrong with the log
    (one 'event' Problem per gap, altered or unreadable event, bad signature)."""

    records: list[EventRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _plain_write(policy: Any) -> bool:
    """Whether a write under `policy` needs nothing of the store but the bytes (no lock, no
    storage class): then any store takes it, also one that predates policies."""
    return policy is None or not (policy.locked or policy.storage_class)


def _rehashed(data: bytes | memoryview, h: str) -> bytes | memoryview:
    """`data`, once its BLAKE3 is proved to be `h` (the re-hash of a chunk decoded from what was read)."""
    if blake3.blake3(data).hexdigest() != h:
        raise CorruptChunkError(h, "decoded bytes do not match the chunk hash")
    return data


class Repository:
    settings: Settings | None = None  # what it was opened from (Repository.open): workers reopen the store with it

    def __init__(self, store: Store, catalog: Catalog, codec: Codec | None = None, sealer: Any = None, *,
                 pack_below: int | None = None) -> None:
        self._sealer = sealer  # archiver.sealing.Sealer for a sealed store (format version 2), else None
        self._sealed_objects: dict[str, tuple[int, str, str]] = {}  # key -> (size, ciphertext BLAKE3, kid) this run
        self._store = store
        self._catalog = catalog
        self._codec = codec or Codec()
        self._run_lock = threading.Lock()  # a sealed store's run key is made once (see _start_run)
        self._run_ready = False  # this process's run key object is stored
        self._event_lock = threading.Lock()  # one append at a time per process (repairs run on workers)
        self._writer: str | None = None
        self._heads: dict[str, tuple[int, str]] = {}  # writer -> (seq, hash) of its newest event
        self._packstate = PackState()  # the open pack, packs in flight, proved packs (archiver.packs)
        self._pack_below = packs.SMALL_OBJECT if pack_below is None else pack_below  # 0: never pack
        self._trees_read: set[str] = set()  # trees read and hash-checked since the last commit (tree_object_proved)
        self._adopted: list[tuple[packs.PackIndex, str]] = []  # packs worker processes wrote (adopt_packs), with ids
        self._pack_rows: Future[None] | None = None  # catalog rows being recorded behind (flush_packs_behind)
        if sealer is not None:  # sealed: every object is sealed on its own and listed by its companion
            self._pack_below = 0

    @classmethod
    def open(cls, settings: Settings | None = None, *, create: bool = False, read_only: bool = False,
             policy: Any = None, marker: bytes | None = None) -> "Repository":
        """Open (or with create=True, initialise) the store and its catalog. read_only=True
        opens the catalog without creating, migrating or locking it (list, show, verify):
        it works on a read-only catalog, and the few writes such a command makes (verify's
        audit rows) are tried on their own and may raise CatalogReadOnlyError or
        CatalogLockedError. The catalog is bound to the store's URL and S3 endpoint."""
        s = settings or Settings.resolve()
        # a policy is checked first; `marker`: the store.json a new store gets (a sealed copy's)
        st = open_store(s.store_url, create=create, s3_options=s.s3, policy=policy, marker=marker)
        # the endpoint the client really uses, if the settings could not see it (an AWS config file)
        endpoint = s.endpoint or normalise_endpoint(getattr(st, "endpoint", None))
        sealer = cls._sealer_for(st, s)
        with translated():
            repo = cls(st, Catalog(s.catalog_path, s.store_url, endpoint=endpoint, read_only=read_only), sealer=sealer,
                       pack_below=s.pack_below)
        repo.settings = s
        return repo

    @classmethod
    def store_only(cls, settings: Settings, *, policy: Any = None) -> "Repository":
        """The store without a catalog, for a worker of a distributed run (archiver.fanout):
        the driver is the one catalog writer. Chunks are always proved (no catalog to
        trust a recent verify from); a repair's event starts a chain of its own. A worker
        writes each chunk under its own key (no packs): a pack left open in a worker process
        between tasks would name chunks that are not yet durable when the driver commits."""
        st = open_store(settings.store_url, create=False, s3_options=settings.s3, policy=policy)
        repo = cls(st, None, pack_below=0)  # type: ignore[arg-type]
        repo.settings = settings
        return repo

    @property
    def url(self) -> str:
        return self._store.url

    def close(self) -> None:
        if self._catalog is not None:  # None: a worker's store-only repository
            self._await_pack_rows(raise_error=False)  # a cache of the store's indexes: a rebuild records them
            self._catalog.close()

    def end_thread(self) -> None:
        """Close what the calling thread opened of the catalog (its read connection): for a
        thread that ends before the repository is closed."""
        close = getattr(self._catalog, "close_thread_reader", None)
        if close is not None:
            close()

    def __enter__(self) -> "Repository":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- catalog queries -----------------------------------------------------------------------
    @property
    def catalog_path(self) -> Path:
        return self._catalog.path

    def resolve(self, ref: str) -> str:
        """The id a reference names (see `Catalog.resolve`: id, `id:PREFIX`, NAME,
        `name:NAME`, NAME@LABEL). A full id (bare or `id:`) that only the store knows is
        accepted too."""
        try:
            with translated():
                return self._catalog.resolve(ref)
        except NotFoundError:
            full = (ref[3:] if ref.startswith("id:") else ref).lower()
            if is_hash(full) and self._store.exists(layout.manifest(full)):
                return full
            raise

    def latest(self, name: str) -> str | None:
        """The parent for a new archive of `name`: the head of its chain (see Catalog.latest)."""
        with translated():
            return self._catalog.latest(name)

    def name_chain(self, name: str) -> Chain:
        """How the recorded versions of `name` link up (forks, second roots)."""
        return self._catalog.chain(name)

    def stored_manifest_count(self) -> int:
        """How many manifest objects the store holds (LIST only, nothing fetched)."""
        return sum(1 for info in self._store.list(layout.MANIFESTS) if layout.manifest_id(info.key) is not None)

    def list_archives(self, name: str | None = None) -> list[ManifestRow]:
        return self._catalog.manifest_rows(name)

    def is_recorded(self, mid: str) -> bool:
        return self._catalog.has_manifest(mid)

    def audit_log(self, mid: str | None = None) -> list[AuditRow]:
        return self._catalog.audit_log(mid)

    def audit(self, event: str, mid: str | None, ok: bool, details: dict[str, Any]) -> None:
        """Append to the catalog's audit log (a manifest id the catalog does not know is kept in details)."""
        self._catalog.audit(event, mid if mid is not None and self.is_recorded(mid) else None, ok, details)

    # -- manifests -----------------------------------------------------------------------------
    def load_manifest(self, mid: str) -> Manifest:
        """The catalog's copy if it has one (re-checked against the id), else the store's;
        with every file map fetched from the store and checked (ManifestError if one is
        missing or damaged: see `load_manifest_keep_going`)."""
        return self.resolve_filemaps(self.resolve_trees(self._load_root(mid)))

    def _load_root(self, mid: str) -> Manifest:
        if self._catalog.has_manifest(mid):
            with translated():
                return self._catalog.load_manifest(mid)
        return self._fetch_root(mid)

    def fetch_manifest(self, mid: str) -> Manifest:
        """The store's copy, accepted only if its bytes hash to `mid`, with its file maps resolved."""
        return self.resolve_filemaps(self.resolve_trees(self._fetch_root(mid)))

    def _fetch_root(self, mid: str) -> Manifest:
        try:
            data = self._get_manifest(layout.manifest(mid))
        except ObjectMissingError:
            raise NotFoundError(f"manifest {mid} is not in the store") from None
        with translated():
            return parse_manifest(data, expected_id=mid)

    # -- file maps (manifest v2) -------------------------------------------------------------------
    def load_manifest_keep_going(self, mid: str) -> tuple[Manifest, list[tuple[Entry, str]]]:
        """As `load_manifest`, but a missing or damaged file map does not stop it: the
        manifest comes back with that entry unresolved (`Entry.resolved` False), listed with
        the reason, so verify can report it and check every other file."""
        m, bad_trees = self.resolve_trees_keep_going(self._load_root(mid))
        if bad_trees:
            where, h, why = bad_trees[0]
            raise ManifestError(why)
        return self.resolve_filemaps_keep_going(m)

    # -- trees (manifest v3) -------------------------------------------------------------------
    def load_manifest_all(self, mid: str) -> tuple[Manifest, list[tuple[Entry, str]], list[tuple[str, str, str]]]:
        """As `load_manifest_keep_going`, and a missing or damaged tree does not stop it either:
        (manifest, bad file maps, bad trees as (directory, tree hash, why)). With a bad tree
        the manifest holds only the entries outside it (`Manifest.resolved` False)."""
        m, bad_trees = self.resolve_trees_keep_going(self._load_root(mid))
        m, bad_maps = self.resolve_filemaps_keep_going(m)
        return m, bad_maps, bad_trees

    def resolve_trees(self, m: Manifest) -> Manifest:
        """`m` with its entries read from its trees (each fetched from the store and checked:
        hash = name, canonical, entry count as the root says). ManifestError at the first bad one."""
        with translated():
            return resolve_trees(m, self.tree_object)[0]

    def resolve_trees_keep_going(self, m: Manifest) -> tuple[Manifest, list[tuple[str, str, str]]]:
        with translated():
            return resolve_trees(m, self.tree_object, stop=False)

    def load_root(self, mid: str) -> Manifest:
        """Manifest `mid` as its root object says (re-checked against its id), without reading
        its trees or file maps: the catalog's copy if it has one, else the store's."""
        return self._load_root(mid)

    def known_trees(self, hashes: Iterable[str]) -> set[str]:
        """Those of `hashes` a recorded manifest names as a tree: parsed with the reader's
        checks when that manifest was committed or recorded (Catalog.known_trees)."""
        with translated():
            return self._catalog.known_trees(set(hashes))

    def tree_object(self, h: str, where: str = "") -> bytes:
        """The raw bytes stored under tree `h` (of directory `where`, for messages), refused if
        absent or too large (manifests' ManifestError); the caller checks them (`parse_tree`)."""
        try:
            return self._store.get(layout.tree(h), max_size=MAX_TREE_BYTES)
        except ObjectMissingError:
            raise manifest_errors.ManifestError(f"tree {h[:16]} of {where or '/'!r} is missing from the store") from None
        except ObjectTooLargeError as err:
            raise manifest_errors.ManifestError(f"tree {h[:16]} of {where or '/'!r} is too large: {err}") from None

    def tree_object_proved(self, h: str, where: str = "") -> bytes | None:
        """Tree `h`'s stored bytes if they hash to `h`, else None (damaged: the caller's full
        reader reports it); errors as `tree_object`. A tree proved here is noted until the
        next commit: the commit then knows it durable and intact without reading it again."""
        data = self.tree_object(h, where)
        if manifest_id(data) != h:
            return None
        self._trees_read.add(h)
        return data

    def manifest_trees(self, m: Manifest) -> dict[str, tuple[str, bytes]]:
        """Tree hash -> (a directory it lists, its bytes) for a resolved v3 manifest ({} for
        v1/v2), rebuilt from the entries: the same bytes the trees were checked against."""
        if not m.tree:
            return {}
        made = tree_objects(m.entries)
        if made is None or made[0] != m.tree:
            raise ManifestError(f"manifest entries do not rebuild its tree {m.tree[:16]}")
        where = {h: d for d, h in sorted(made[2].items(), reverse=True)}
        return {h: (where.get(h, ""), data) for h, data in made[1].items()}

    def tree_sizes(self) -> dict[str, int]:
        """hash -> stored size of every tree object in the store (LIST only, nothing fetched)."""
        return self._named_sizes(layout.TREES, layout.tree)

    def put_tree_object(self, h: str, data: bytes, policy: Any = None) -> bool:
        """Store a tree copied from another store (it must hash to `h`); True if written now."""
        return self._put_named(h, data, layout.tree(h), "tree", policy)

    def _named_sizes(self, prefix: str, key_of: Callable[[str], str]) -> dict[str, int]:
        """hash -> stored size of every object under `prefix` named by its hash (`key_of`)."""
        out: dict[str, int] = {}
        for info in self._store.list(prefix):
            h = info.key.rsplit("/", 1)[-1].removesuffix(".json")
            if is_hash(h) and info.key == key_of(h):
                out[h] = info.size
        return out

    def _put_named(self, h: str, data: bytes, key: str, what: str, policy: Any) -> bool:
        """Store bytes copied from another store under `key`, named by their BLAKE3 `h`."""
        if manifest_id(data) != h:
            raise ManifestError(f"bytes given for {what} {h} do not hash to its name")
        return self._put_exact(key, data, f"{what} {h}", policy)

    def tree_object_checked(self, h: str, where: str) -> bytes:
        """Tree `h`'s bytes, returned only if they parse as that tree (what a copy may give to repair)."""
        data = self.tree_object(h, where)
        with translated():
            parse_tree(data, h, where)
        return data

    def heal_tree(self, h: str, where: str, data: bytes) -> str:
        """Heal a tree object with bytes proved elsewhere (they must parse as tree `h`): see `_heal`."""
        with translated():
            parse_tree(data, h, where)
        return self._heal(layout.tree(h), data, lambda stored: None if stored == data else
                          "stored tree differs from its hash")

    TREE_WRITERS = 32  # trees written at once: each waits on its own fsync (or PUT), not on the CPU; more fsyncs at once share journal commits (bench/RESULTS.md, branch sftail)

    def _put_trees(self, trees: dict[str, bytes], hot: Any = None) -> None:
        """`_put_tree` every tree, several at once; returns once all are durable (the first
        error is raised, after the others finished). A tree this run already read back from
        the store and found to hash to its name (`tree_object_proved`: the files cache reading
        the previous version) is durable and intact: it is not read a second time (unless a
        lock policy must be checked on it)."""
        seen, self._trees_read = self._trees_read, set()
        if hot is None:
            trees = {h: data for h, data in trees.items() if h not in seen}
        if len(trees) <= 1:
            for h, data in trees.items():
                self._put_tree(h, data, hot)
            return
        with ThreadPoolExecutor(self._tree_writers(len(trees)), thread_name_prefix="trees") as pool:
            for f in [pool.submit(self._put_tree, h, data, hot) for h, data in trees.items()]:
                f.result()

    def _tree_writers(self, n: int) -> int:
        """Threads writing `n` trees: TREE_WRITERS at most, and no more than the store keeps
        connections for (an S3 client's pool)."""
        pool = getattr(self._store, "connections", None)
        cap = self.TREE_WRITERS if pool is None else min(self.TREE_WRITERS, pool)
        return max(1, min(cap, n))

    def _put_tree(self, h: str, data: bytes, hot: Any = None) -> None:
        """put_if_absent; an object already there must be these bytes (else, damaged, it is
        replaced conditional on its version, as `heal` does); locked under a metadata policy."""
        if hot is not None:
            self._put_exact(layout.tree(h), data, f"tree {h}", hot)
            return
        self._heal(layout.tree(h), data, lambda stored: None if stored == data else "stored tree differs from its hash")

    def trees_read_back(self) -> frozenset[str]:
        """The trees this run already read back and found to hash to their names
        (`tree_object_proved`): the next commit does not write them again (`_put_trees`)."""
        return frozenset(self._trees_read)

    def put_tree_made(self, h: str, data: bytes) -> None:
        """Write tree `h` (bytes this run made and proved with the reader's checks) before the
        commit naming it, as the commit writes trees without a lock policy (`_put_tree`):
        archiver.earlytrees, which tells the commit it is durable."""
        self._put_tree(h, data, None)

    def put_trees_made(self, trees: list[tuple[str, bytes]]) -> None:
        """`put_tree_made` of each (hash, bytes), durable once for the whole batch where the
        store can (a local directory's `put_many_if_absent`: one sync of the temp files, one
        of their directories, instead of two fsyncs per tree); a tree already stored is read
        back and healed as `put_tree_made` does. Returns once every tree is durable."""
        many = getattr(self._store, "put_many_if_absent", None)
        if many is None or len(trees) <= 1:
            for h, data in trees:
                self._put_tree(h, data, None)
            return
        created = many([(layout.tree(h), data) for h, data in trees])
        for (h, data), new in zip(trees, created):
            if not new:  # there already: must be these bytes (else healed), as `_heal` proves it
                self._put_tree(h, data, None)

    def resolve_filemaps(self, m: Manifest) -> Manifest:
        """`m` with every file map's chunk list fetched and checked (hash = name, canonical,
        count and sizes as the entry says). ManifestError naming the file at the first bad one."""
        out, bad = self.resolve_filemaps_keep_going(m, stop=True)
        if bad:
            e, why = bad[0]
            raise ManifestError(why)
        return out

    def resolve_filemaps_keep_going(self, m: Manifest, *, stop: bool = False) -> tuple[Manifest, list[tuple[Entry, str]]]:
        todo = [e for e in m.entries if not e.resolved]
        if not todo:
            return m, []
        got: dict[str, tuple[ChunkRef, ...]] = {}
        bad: list[tuple[Entry, str]] = []
        for e in todo:
            try:
                got[e.path] = self.filemap_chunks(e)
            except IntegrityError as err:
                bad.append((e, str(err)))
                if stop:
                    break
        entries = tuple(dataclasses.replace(e, chunks=got[e.path]) if e.path in got else e for e in m.entries)
        return dataclasses.replace(m, entries=entries), bad

    def filemap_chunks(self, e: Entry) -> tuple[ChunkRef, ...]:
        """The chunk list in entry `e`'s file map, read from the store and checked against
        the entry; ManifestError (with the file and the map's hash) if missing or damaged."""
        with translated():
            return parse_filemap(self.filemap_object(e), e)

    def filemap_object(self, e: Entry) -> bytes:
        """The raw bytes of entry `e`'s file map (under `.bin` or `.json`, see `_filemap_found`),
        refused if too large, absent or under the wrong suffix (ManifestError); the caller checks
        them (`parse_filemap`, or the hash for a copy)."""
        return self._filemap_found(e)[1]

    def _filemap_found(self, e: Entry) -> tuple[str, bytes]:
        """(key, bytes) of entry `e`'s file map: the binary key first, the JSON key (maps of
        earlier archivers) only if that is absent. Bytes whose form is not the one their key's
        suffix names are refused as damage (ManifestError), so a `.bin` object is always a
        binary map and a `.json` object a JSON one."""
        for key in layout.filemap_keys(e.filemap):
            try:
                data = self._store.get(key, max_size=MAX_FILEMAP_BYTES)
            except ObjectMissingError:
                continue
            except ObjectTooLargeError as err:
                raise ManifestError(f"file map {e.filemap[:16]} of {e.path!r} is too large: {err}") from None
            if self._filemap_key(e.filemap, data) != key:
                why = ("is stored under the wrong suffix for its form" if manifest_id(data) == e.filemap else
                       "does not match its hash (tampered or corrupt)")
                raise ManifestError(f"file map {e.filemap[:16]} of {e.path!r} {why}: {key}")
            return key, data
        raise ManifestError(f"file map {e.filemap[:16]} of {e.path!r} is missing from the store")

    @staticmethod
    def _filemap_key(h: str, data: bytes) -> str:
        """The key file map bytes `data` (named `h`) belong under: the writer knows the form from the bytes."""
        return layout.filemap(h, binary=is_binary_filemap(data))

    def _filemap_stored_key(self, h: str) -> str:
        """The key map `h` is stored under, by HEAD (binary, else JSON), for locking an existing
        object; the binary key if neither exists (the one a writer would use)."""
        bin_key, json_key = layout.filemap_keys(h)
        return json_key if self._store.stat(bin_key) is None and self._store.stat(json_key) is not None else bin_key

    def save_filemaps(self, e: Entry, policy: Any = None) -> Entry:
        """Make a finished file's entry what a v2 manifest records and, for a file over the
        threshold, store its file map now (its chunks must already be durable): a worker
        calls this after its file's chunks, so the driver gathers only small entries. Returns
        the entry without its chunk list when it has a map (`commit_manifest` re-reads the
        map to prove it durable); other entries unchanged. `policy`: the archive's write
        policy (a map is metadata: locked like the manifest, never in a cold class)."""
        if self._sealer is not None:  # sealed: the chunk list stays inside the encrypted manifest
            return e
        e2, data = with_filemap(e)
        if data is None:
            return e2
        self._put_filemap(e2.filemap, data, policy.for_metadata() if policy is not None else None)
        return dataclasses.replace(e2, chunks=())

    def _put_filemap(self, h: str, data: bytes, hot: Any = None) -> None:
        """put_if_absent; an object already there must be these bytes, else (damaged: the
        name is its hash) it is replaced, conditional on its version, as `heal` does. With a
        metadata write policy `hot` (Object Lock) it is written locked, or its lock extended."""
        key = self._filemap_key(h, data)
        if hot is not None:
            self._put_exact(key, data, f"file map {h}", hot)
            return
        self._heal(key, data, lambda stored: None if stored == data else "stored file map differs from its hash")

    def filemap_records(self, e: Entry) -> list[tuple[str, int, str]]:
        """(hash, stored size, codec) of each chunk in entry `e`'s file map, read from the store
        and checked as `filemap_chunks` checks it, without a ChunkRef per chunk."""
        with translated():
            return filemap_records(self.filemap_object(e), e)

    def _prove_filemap(self, e: Entry, read: Mapping[tuple[str, int, int], list[tuple[str, int, str]]] | None = None
                       ) -> list[tuple[str, int, str]] | None:
        """A map a worker stored (`save_filemaps`) is durable and intact and fits its entry:
        a map the catalog recorded before (checked then) must hash to its name and have the
        entry's chunk count and size; any other is parsed against the entry in full and its
        chunks returned as (hash, stored size, codec) (for the catalog: each map is parsed once).
        `read`: maps this process has just fetched and checked against an entry of this shape
        (`fanout.check_chunks_stored`), keyed by (hash, chunk count, size): not fetched again."""
        shape = self._catalog.filemap_shape(e.filemap)
        done = read.get((e.filemap, e.chunk_count, e.size)) if read is not None else None
        if shape is None:
            if done is not None:
                return done
            with translated():
                return filemap_records(self.filemap_object(e), e)
        if shape != (e.chunk_count, e.size):
            raise ManifestError(f"file map {e.filemap[:16]} holds {shape[0]} chunks and {shape[1]} bytes, not the "
                                f"{e.chunk_count} and {e.size} of {e.path!r}")
        if done is None and manifest_id(self.filemap_object(e)) != e.filemap:
            raise ManifestError(f"file map {e.filemap[:16]} of {e.path!r} does not match its hash (tampered or corrupt)")
        return None

    def filemap_sizes(self) -> dict[str, int]:
        """hash -> stored size of every file map object in the store (LIST only, nothing fetched)."""
        out: dict[str, int] = {}
        for info in self._store.list(layout.FILEMAPS):  # both suffixes: binary maps and earlier JSON ones
            named = layout.filemap_hash(info.key)
            if named is not None:
                out[named[0]] = info.size
        return out

    def filemap_listing(self) -> dict[str, tuple[str, int]]:
        """hash -> (key, stored size) of every file map object in the store (LIST only): the
        binary key's where both suffixes are listed, since a reader takes that one. What a
        copy check compares with `filemap_expected`: a map under the wrong suffix or of the
        wrong size is one a reader of that store refuses."""
        out: dict[str, tuple[str, int]] = {}
        for info in self._store.list(layout.FILEMAPS):
            named = layout.filemap_hash(info.key)
            if named is not None and (named[1] or named[0] not in out):
                out[named[0]] = (info.key, info.size)
        return out

    @staticmethod
    def filemap_expected(e: Entry) -> tuple[str, int] | None:
        """(key, size) of resolved entry `e`'s file map in a store that holds it intact (its
        bytes rebuilt from the checked chunk list, in the form that hashes to `e.filemap`), or
        None if the chunk list makes neither form."""
        data = filemap_bytes_for(e)
        return None if data is None else (Repository._filemap_key(e.filemap, data), len(data))

    def put_filemap_object(self, h: str, data: bytes, policy: Any = None) -> bool:
        """Store a file map copied from another store (it must hash to `h`); True if written now."""
        return self._put_named(h, data, self._filemap_key(h, data), "file map", policy)

    def filemap_object_checked(self, e: Entry) -> bytes:
        """Entry `e`'s file map bytes, returned only if they parse as its map (what a copy
        may give to repair); ManifestError otherwise."""
        data = self.filemap_object(e)
        with translated():
            parse_filemap(data, e)
        return data

    def heal_filemap(self, e: Entry, data: bytes) -> str:
        """Heal a file map object with bytes proved elsewhere (they must parse as `e`'s map): see `_heal`."""
        with translated():
            parse_filemap(data, e)
        done = self._heal(self._filemap_key(e.filemap, data), data, lambda stored: None if stored == data else
                          "stored file map differs from its hash")
        try:  # a reader must now find these bytes, not an object under the other suffix first
            self._filemap_found(e)
        except ManifestError as err:
            raise IntegrityError(f"{err}; this store never deletes, so that object must be moved aside "
                                 "by hand") from None
        return done

    def _get_manifest(self, key: str) -> bytes:
        """A manifest object's bytes, refused unread if larger than a manifest may be."""
        try:
            data = self._store.get(key, max_size=MAX_MANIFEST_BYTES if self._sealer is None else
                                   sealing.sealed_size(MAX_MANIFEST_BYTES))
        except ObjectTooLargeError as e:
            raise ManifestError(f"manifest too large: {e}") from None
        return data if self._sealer is None else self._unseal(data, key)

    def manifest_copy_problem(self, mid: str, m: Manifest) -> str | None:
        """Why the store's own copy of a manifest is not the manifest `m`, or None."""
        data = m.canonical_json()
        if self._sealer is not None:
            return self._sealed_manifest_problem(mid, data)
        try:
            stored = self._store.get(layout.manifest(mid), max_size=len(data))  # a longer one differs anyway
        except ObjectMissingError:
            return "manifest is missing from the store"
        except ObjectTooLargeError as e:
            return f"store copy of the manifest differs from its id: {e}"
        except IntegrityError as e:  # not a regular file
            return f"store copy of the manifest: {e}"
        return None if stored == data else "store copy of the manifest differs from its id"

    def commit_manifest(self, m: Manifest, *, sign_key: Any = None,
                        details: dict[str, Any] | None = None, policy: Any = None,
                        read_maps: Mapping[tuple[str, int, int], list[tuple[str, int, str]]] | None = None,
                        previous_trees: Mapping[str, PreviousTree] | None = None,
                        on_id: Callable[[str], None] | None = None,
                        on_stored: Callable[[str], None] | None = None,
                        made_ahead: Any = None) -> Committed:
        """Store the manifest (every chunk it names must already be durable), sign it, and
        record it in the catalog with an 'archive' audit entry. Never overwrites: an object
        already under the same id must be byte-identical, else the store holds a forgery.
        The bytes are first parsed with the reader's own checks and must read back as `m`:
        nothing that `show`, `verify`, `restore` or a catalog rebuild would refuse or read
        differently is ever stored (ManifestError). Manifest v3: its trees are built once and
        each is parsed as the reader would, except those a recorded manifest already named (the
        same hash: bytes already parsed and proved); all are written, several at once, and read
        back if already stored, before the root.
        Manifest v2: a file over the threshold is recorded through its file map, which is
        stored here first (or, for an entry from `save_filemaps` without its chunks, read
        back and checked), so no root manifest ever names a map that is not durable; or taken
        from `read_maps`, the maps `fanout.check_chunks_stored` has just read and checked).
        `previous_trees` (directory -> tree read earlier, e.g. by the files cache): an unchanged
        directory keeps that tree's bytes instead of serialising its entries again; a tree no
        recorded manifest names is still parsed as the reader would.
        `on_id`: called with the manifest id once its bytes and trees are proved, before anything
        of the commit is written (the files cache prepares its rows meanwhile, and keeps them
        uncommitted until this returns). `on_stored`: called with the id once the manifest and
        its signature are durable in the store, before the catalog records it (the files cache
        writes its rows meanwhile). `made_ahead` (archiver.earlytrees.EarlyMade, made while the files
        were archived): its trees are offered as previous trees, the hashes it proved with the
        reader's checks are not parsed again, those it wrote durably are not written again."""
        # The open packs go to the store while the trees are built and proved (flush_packs
        # below raises a failure and records them): their writes and fsyncs release the GIL
        early = threading.Thread(target=self.write_open_packs, name="packs", daemon=True)
        early.start()
        try:
            # A sealed store keeps every chunk list inline: a file map is a plaintext object, so
            # it would publish plaintext chunk hashes next to the encrypted manifest.
            if made_ahead is not None and policy is None:
                previous_trees = {**(previous_trees or {}), **made_ahead.trees}
            else:
                made_ahead = None
            m, made = self._committed_form_made(m, previous_trees)
            return self._commit_made(m, made, sign_key=sign_key, details=details, policy=policy,
                                     read_maps=read_maps, on_id=on_id, on_stored=on_stored, made_ahead=made_ahead)
        finally:
            early.join()

    def _commit_made(self, m: Manifest, made: tuple[str, dict[str, bytes], dict[str, str]] | None, *,
                     sign_key: Any, details: dict[str, Any] | None, policy: Any,
                     read_maps: Mapping[tuple[str, int, int], list[tuple[str, int, str]]] | None,
                     on_id: Callable[[str], None] | None,
                     on_stored: Callable[[str], None] | None = None, made_ahead: Any = None) -> Committed:
        """`commit_manifest` of `m` in its committed form (`made`: its trees, if any)."""
        hot = policy.for_metadata() if policy is not None else None
        proved: list[tuple[Entry, list[tuple[str, int, str]]]] = []  # new maps, recorded in batches
        reused: dict[tuple[str, int, int], Any] = {}  # records of the new maps that are not fresh (see _keep_reused)
        proved_refs = 0  # their chunk refs, counted as they come (not summed again per map)
        for e in m.files:
            if not e.filemap:
                continue
            if e.chunks:
                fm = filemap_bytes_for(e)  # binary, or JSON if an earlier archiver wrote the map
                if fm is None:
                    raise ManifestError(f"malformed manifest: file map {e.filemap[:16]} of {e.path!r} is not its chunks")
                self._put_filemap(e.filemap, fm, hot)
                continue
            chunks = self._prove_filemap(e, read_maps)  # written by a worker: prove it is there and intact
            if hot is not None and hot.locked:
                self._ensure_lock(self._filemap_stored_key(e.filemap), hot)
            if chunks is not None:
                proved.append((e, chunks))
                proved_refs += len(chunks)
                if proved_refs >= FILEMAP_RECORD_BATCH:
                    with translated():
                        self._keep_reused(self._catalog.record_filemaps(proved), proved, reused)
                    proved, proved_refs = [], 0
        if proved:
            with translated():
                self._keep_reused(self._catalog.record_filemaps(proved), proved, reused)
        proved = []  # recorded: their arrays are not held through the rest of the commit (but `reused`'s)
        try:
            data = m.canonical_json()
        except (TypeError, ValueError) as e:  # e.g. meta keys of mixed types, bytes values
            raise ManifestError(f"malformed manifest: cannot be written as JSON ({e})") from None
        mid = manifest_id(data)
        trees = made[1] if made is not None else {}
        by_dir = made[2] if made is not None else None
        with translated():
            back = parse_manifest(data, expected_id=mid)
            if back.to_dict() != m.to_dict():
                raise ManifestError("malformed manifest: it does not read back as the manifest given")
            if made is not None:  # each tree no recorded manifest named yet is parsed as the reader would
                try:
                    known = self._catalog.known_trees(set(made[2].values()))
                    prove_trees(m, trees, made[2], known | made_ahead.proved if made_ahead is not None else known)
                except manifest_errors.ManifestError as e:
                    raise ManifestError(f"malformed manifest: its trees do not read back as the entries given "
                                        f"({e})") from None
        if on_id is not None:
            on_id(mid)
        # the trees go to the store (before the root naming them) while the packs are flushed and
        # recorded: both are durable before the root is written, in either order
        with ThreadPoolExecutor(1, thread_name_prefix="trees") as put:
            if made_ahead is not None and made_ahead.durable:  # written durably before the commit (archiver.earlytrees)
                trees = {h: data for h, data in trees.items() if h not in made_ahead.durable}
            trees_put = put.submit(self._put_trees, trees, hot)
            self.flush_packs()  # every pack holding a chunk it names is durable before the manifest
            trees_put.result()
        key = layout.manifest(mid)
        if self._sealer is not None:
            self._commit_sealed(m, mid, data, hot, sign_key)
        elif not self._put(key, data, hot):
            if self._store.get(key, max_size=len(data)) != data:
                raise ManifestError(f"store already holds a different object under manifest id {mid}")
            self._ensure_lock(key, hot)
        signer = self.sign_manifest(mid, sign_key, policy=hot).fingerprint if sign_key is not None else None
        if policy is not None:
            self.record_policy(mid, policy)
        if on_stored is not None:
            on_stored(mid)
        self._await_pack_rows()  # the packs' rows recorded behind go in before the manifest naming their chunks
        if details is None or self._catalog.has_manifest(mid):  # already recorded: nothing new ingested
            with translated():
                self._catalog.record_manifest(m, data, filemap_chunks=self._records_held(reused), trees=by_dir)
            return Committed(mid, signer)
        ev = Event(events.INGESTION, manifests=(events.ManifestOutcome(mid),), details={**details, "signed_by": signer})
        rec = self._put_event(ev, sign_key, policy=hot)  # in the store first: the catalog is the rebuildable copy
        with translated(), self._catalog.write():
            self._catalog.record_manifest(m, data, at=ev.time, filemap_chunks=self._records_held(reused),
                                          trees=by_dir)
            self._catalog.record_event(rec.key, rec.writer, rec.seq, rec.hash, ev.time, events.audit_rows(ev),
                                       events.chunk_results(ev))
        return Committed(mid, signer)

    @staticmethod
    def _keep_reused(reused_now: set[str], proved: list[tuple[Entry, Any]], reused: dict[tuple[str, int, int], Any]
                     ) -> None:
        """Keep the records of the maps just recorded that are not fresh (they reused known
        chunks: a fine-tune's changed shards): recording the manifest reads their chunks for
        its stored size, and takes them from here instead of fetching and checking each map
        again. Keyed by (hash, chunk count, size): the shape they were checked against."""
        for e, chunks in proved:
            if e.filemap in reused_now:
                reused[(e.filemap, e.chunk_count, e.size)] = chunks

    def _records_held(self, held: Mapping[tuple[str, int, int], Any]) -> Callable[[Entry], Any]:
        """`filemap_records`, answered from `held` (maps this commit proved against an entry
        of that shape) where it can, else read from the store and checked."""
        if not held:
            return self.filemap_records

        def records(e: Entry) -> Any:
            got = held.get((e.filemap, e.chunk_count, e.size))
            return got if got is not None else self.filemap_records(e)
        return records

    def committed_form(self, m: Manifest) -> Manifest:
        """`m` as `commit_manifest` writes it (so `.id` is the id it will get): through file
        maps and, over the threshold, trees (v2/v3); a sealed store keeps everything inline,
        since a file map or tree is a plaintext object next to the encrypted manifest."""
        return self._committed_form_made(m)[0]

    def _committed_form_made(self, m: Manifest, previous: Mapping[str, PreviousTree] | None = None
                             ) -> tuple[Manifest, tuple[str, dict[str, bytes], dict[str, str]] | None]:
        """`committed_form(m)` and its trees as `tree_objects` made them (None when inline):
        built once per commit, then stored, proved and recorded from the same objects."""
        if not m.resolved:  # a v3 root without its entries would be committed as an empty manifest
            raise ManifestError(f"malformed manifest: the entries of tree {m.tree[:16]} were not given")
        if self._sealer is not None:
            return (dataclasses.replace(m, tree="", entry_count=0) if m.tree else m), None
        return with_trees_made(with_filemaps(m), previous)

    def iter_manifests(self) -> Iterator[StoredManifest]:
        """Every manifest object in the store, each checked against its id; a bad one is
        yielded with its error instead of stopping the walk. Root manifests: a v2 file map
        is not fetched here (`resolve_filemaps` does; recording one fetches its maps)."""
        for info in self._store.list(layout.MANIFESTS):
            mid = layout.manifest_id(info.key)
            if mid is None:
                continue
            try:
                data = self._get_manifest(info.key)
                with translated():
                    yield StoredManifest(mid, parse_manifest(data, expected_id=mid), data)
            except (IntegrityError, ObjectMissingError) as e:
                yield StoredManifest(mid, None, None, e)

    # -- signatures and chain ------------------------------------------------------------------
    def sign_manifest(self, mid: str, key: Any, policy: Any = None) -> Any:
        """Store an Ed25519 signature of `mid` (deterministic, so a re-run writes the same bytes)."""
        from manifests import signing  # cryptography loads only when signatures are used
        sig = signing.sign(key, mid)
        skey = layout.signature(mid, sig.fingerprint)
        if not self._put(skey, sig.to_json(), policy):
            with translated():
                if not signing.check(signing.parse_signature(self._store.get(skey)), mid):
                    raise IntegrityError(f"store holds an invalid signature at {skey}")
            self._ensure_lock(skey, policy)
        return sig

    def signature_problems(self, mid: str, trusted: list[bytes] | None = None) -> list[str]:
        """Every signature present must be valid; with `trusted` keys, one of them must have signed."""
        problems: list[str] = []
        good: set[str] = set()
        for info in self._store.list(layout.signatures_of(mid)):
            from manifests import signing  # cryptography loads only when a signature is there to check
            try:
                with translated():
                    sig = signing.parse_signature(self._store.get(info.key, max_size=MAX_SIGNATURE_BYTES))
            except ArchiverError as e:
                problems.append(f"{info.key}: {e}")
                continue
            if signing.check(sig, mid) and info.key == layout.signature(mid, sig.fingerprint):
                good.add(sig.public_key)
            else:
                problems.append(f"bad signature {info.key} (key {sig.fingerprint})")
        if trusted and not good.intersection(k.hex() for k in trusted):
            problems.append("not signed by any trusted key")
        return problems

    def chain_problems(self, m: Manifest) -> list[str]:
        """The predecessor a manifest names must exist in the store, match its id and share its name."""
        if m.parent is None:
            return []
        try:
            parent = self._fetch_root(m.parent)  # its file maps are checked when it is verified
        except ArchiverError as e:
            return [f"broken chain: parent {m.parent[:16]}: {e}"]
        if parent.name != m.name:
            return [f"broken chain: parent {m.parent[:16]} is named {parent.name!r}, not {m.name!r}"]
        return []

    # -- chunks --------------------------------------------------------------------------------
    # Rounds of read -> prove -> write/replace before giving up on a chunk that keeps changing
    # under us (each lost round means another writer acted on it, so a few always suffice).
    SAVE_ROUNDS = 5

    def chunk_address(self, data: bytes | memoryview, width: int = 0) -> str:
        """BLAKE3 (hex) of a chunk about to be saved by this thread: the same hash as
        blake3(data), computed by the codec so a chunk to be split into byte-planes is split
        in the same pass and `save_chunk` on this thread does not read it again
        (archiver.codecs.Codec.address)."""
        return self._codec.address(data, width)

    def save_chunk(self, h: str, data: bytes | memoryview, width: int, *,
                   trust_verified_within: float | None = None, policy: Any = None,
                   hints: ChunkHints | None = None) -> SavedChunk:
        """`_save_chunk`, then with a lock `policy` a chunk that was already stored has its
        retention extended to at least the policy's (never shortened). `hints`
        (`chunk_hints` of a batch holding `h`) stand in for the catalog's per-chunk answers."""
        saved = self._save_chunk(h, data, width, trust_verified_within, policy, hints) if self._sealer is None \
            else self._save_sealed_chunk(h, data, width, policy)
        if policy is not None and policy.locked and (not saved.written or saved.repaired) and not self._pending(h):
            self.lock_existing_chunk(h, policy)  # its own object (sealed: at its address), or its pack and index
        return saved

    def _save_chunk(self, h: str, data: bytes | memoryview, width: int,
                    trust_verified_within: float | None, policy: Any, hints: ChunkHints | None = None
                    ) -> SavedChunk:
        """Store one chunk (BLAKE3 `h` of `data`) so that it is intact when this returns.

        A new chunk is encoded (with a round-trip check) and put_if_absent. A chunk already
        in the store is never taken on trust by default: it is read back, decoded and must
        equal `data` (the catalog and the object size prove nothing: a bit-rotted or
        swapped object has the right size, and a rebuilt catalog trusts whatever the store
        holds). If it is damaged it is repaired from `data` (`_repair`), so an archive never
        builds on rot. With `trust_verified_within` (seconds), a chunk that a deep verify
        found intact that recently, and whose stored size is still the recorded one, is
        trusted without being read."""
        fast = self._save_fast(h, data, width, policy, hints)  # packs, and a PUT without a read first
        if fast is not None:
            return fast
        key = layout.chunk(h)
        if trust_verified_within is not None:
            trusted = self._recently_verified(h, key, trust_verified_within)
            if trusted is not None:
                return trusted
        cap = max_object_size(len(data))  # a bigger object is damaged and never read whole
        enc: Encoded | None = None
        repaired = False
        for _ in range(self.SAVE_ROUNDS):
            try:
                obj, version = self._read_for_proof(key, cap)
            except ObjectMissingError:
                enc = enc or self._codec.encode(data, width)  # checks every zstd frame round-trips
                if self._put(key, enc.data, policy):
                    return SavedChunk(len(enc.data), enc.codec, True, repaired)
                continue  # lost the race, or a lost PUT response: prove what is there now
            except ObjectColdError as cold:
                enc = enc or self._codec.encode(data, width)
                return self._prove_cold(h, key, enc, cold)
            damage = self._prove_existing(obj, version, h, data)
            if damage is None:
                assert obj is not None
                return SavedChunk(len(obj), describe(obj), repaired, repaired)
            enc = enc or self._codec.encode(data, width)
            # Replaced (or refused because the object changed meanwhile): either way the next
            # round reads back and proves what the key holds now, so a repair is itself proved.
            repaired = self._repair(h, key, enc, version, damage) or repaired
        raise StoreError(f"chunk {h} kept changing in the store while it was being saved; nothing was "
                         f"recorded, re-run")

    def _put(self, key: str, data: bytes, policy: Any) -> bool:
        """put_if_absent, passing a write policy only when there is one (so stores that
        predate policies keep working unchanged)."""
        if _plain_write(policy):
            return self._store.put_if_absent(key, data)
        return self._store.put_if_absent(key, data, policy)

    def _prove_cold(self, h: str, key: str, enc: Encoded, cold: ObjectColdError) -> SavedChunk:
        """A chunk already stored in a cold class cannot be read back without a thaw. It is
        proved instead by its ETag, the MD5 of its bytes: it must equal the MD5 of this run's
        encoding of the source bytes (the codec is deterministic), so the stored object is
        exactly what would be written now. Otherwise nothing is recorded."""
        state = self._store.object_state(key)  # type: ignore[attr-defined]
        if state is not None and state.etag == hashlib.md5(enc.data).hexdigest():
            return SavedChunk(len(enc.data), enc.codec, False)
        raise StoreError(f"chunk {h} is already stored in {cold.storage_class} and cannot be proved intact without "
                         f"reading it (its ETag is not the MD5 of this encoding); nothing was recorded: thaw it "
                         f"first (restore with thaw) or archive into another store")

    def _prove_existing(self, obj: bytes | None, version: ObjectVersion | None, h: str,
                        data: bytes | memoryview) -> str | None:
        """Why the stored object is not a valid encoding of `data`, or None if it is. The
        source bytes (which hash to `h`) are at hand, so the decoded bytes are compared with
        them directly: equal bytes hash to `h` too, and a compare is cheaper than BLAKE3."""
        if obj is None:
            size = version.size if version is not None else "?"
            return f"stored object is {size} bytes, more than any encoding of {len(data)} bytes"
        try:
            same = self._codec.matches(obj, data, h)  # bounded by len(data), malformation raises
        except CorruptChunkError as e:
            return e.reason
        if not same:
            return "decoded bytes do not match the chunk hash"
        return None

    def _read_for_proof(self, key: str, cap: int) -> tuple[bytes | None, ObjectVersion | None]:
        """The object (None if larger than `cap`) and, on a store that can repair, its
        version. Raises ObjectMissingError if absent."""
        get_versioned = getattr(self._store, "get_versioned", None)
        if get_versioned is not None:
            return get_versioned(key, cap)
        info = self._store.stat(key)
        if info is None:
            raise ObjectMissingError(key)
        return (None if info.size > cap else self._store.get(key, max_size=cap)), None

    def _recently_verified(self, h: str, key: str, window: float) -> SavedChunk | None:
        """The recorded chunk, if a deep verify found it intact within `window` seconds and
        the store still holds an object of the recorded size; else None (prove it)."""
        if self._catalog is None:  # a worker: nothing recorded to trust
            return None
        check = self._catalog.chunk_check(h)
        if check is None or not check[1] or time.time() - check[0] > window:
            return None
        known = self._catalog.known_chunk(h)
        if known is None:
            return None
        info = self._store.stat(key)
        if info is None or info.size != known[0]:
            return None
        return SavedChunk(known[0], known[1], False)

    def _repair(self, h: str, key: str, enc: Encoded, version: ObjectVersion | None, damage: str) -> bool:
        """Replace a damaged chunk object with `enc` (proved good: it round-tripped from the
        source bytes that hash to `h`). The damaged object is kept under a quarantine key;
        the replacement happens only if the key still holds the version that was proved
        damaged. True if that version is gone from the key (recorded as a 'repair' audit
        entry); False if the object changed meanwhile. The caller proves the key again."""
        if version is None or not getattr(self._store, "can_replace_damaged", False):
            raise CorruptChunkError(h, f"{damage}; this store cannot replace a damaged object, so the "
                                       f"archive was not recorded")
        quarantine = layout.quarantined(key, self._quarantine_tag())
        if not self._store.replace_damaged(key, enc.data, version, quarantine):
            return False
        # the replacement round-tripped from bytes that hash to h: the chunk is proved intact now
        self.append_event(Event(events.RECOVERY, chunks_ok=(h,), details={
            "chunk": h, "reason": damage, "damaged_size": version.size, "stored_size": len(enc.data),
            "quarantined": quarantine, "store": self.url}))
        return True

    @staticmethod
    def _quarantine_tag() -> str:
        """When, plus randomness, so two repairs of the same key never share a name."""
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(6)

    def read_chunk(self, ref: ChunkRef) -> bytes:
        """Fetch, bound-check, decode and re-hash one chunk. Raises CorruptChunkError or
        ObjectMissingError; never returns bytes that do not hash to `ref.hash`."""
        if self._sealer is not None:
            return self._read_sealed_chunk(ref)
        packed = self._packed_read(ref)
        if packed is not None:
            return packed[1]
        obj = self._get_chunk(ref.hash, ref.stored_size)  # never more than the manifest says
        if len(obj) != ref.stored_size:
            raise CorruptChunkError(ref.hash, f"stored size {len(obj)} != recorded {ref.stored_size}")
        return self._decode_checked(obj, ref.hash, ref.length)

    def _get_chunk(self, h: str, max_size: int) -> bytes:
        """A chunk object's bytes, refused unread if larger than `max_size`. A chunk not under
        its own key may be in a pack this catalog has not recorded: the store's indexes say."""
        try:
            return self._store.get(layout.chunk(h), max_size=max_size)
        except ObjectMissingError:
            locs = self._store_pack_map().get(h)
            if not locs and self._catalog is None:  # a long-lived worker: packs written since it looked
                locs = self._store_pack_map(refresh=True).get(h)
            if not locs:
                raise
            if locs[0].stored_size > max_size:
                raise CorruptChunkError(h, f"{locs[0].where()}: {locs[0].stored_size} stored bytes, more than the "
                                           f"{max_size} expected") from None
            return self._pack_range(locs[0])
        except ObjectTooLargeError as e:
            raise CorruptChunkError(h, f"stored size {e.size} is more than the {max_size} expected") from None

    def try_read_chunk(self, ref: ChunkRef) -> bytes | ArchiverError:
        """`read_chunk`, with damage (corrupt or missing) or a cold object (ObjectColdError:
        not damage, it needs a thaw) returned instead of raised; an unreachable store still raises."""
        try:
            return self.read_chunk(ref)
        except (IntegrityError, ObjectMissingError, ObjectColdError) as e:
            return e

    def _decode_checked(self, obj: bytes, h: str, length: int) -> bytes:
        return _rehashed(self._codec.decode(obj, length, h), h)

    def _decode_checked_raw(self, obj: bytes | memoryview, h: str, length: int, view: bool = False
                            ) -> bytes | memoryview:
        """`_decode_checked` for the batch reads of small chunks: an object stored raw (what an
        incompressible chunk becomes) is cut out without parsing when its head is the only
        one `Codec.decode` accepts for that length (`codecs.stored_raw_payload`); any other
        object is decoded. Re-hashed either way. `view`: a raw chunk is returned as the view
        of `obj` it was hashed in (no copy; read-only if `obj` is)."""
        raw = stored_raw_payload(obj, length)
        if raw is None:
            return self._decode_checked(obj, h, length)
        return _rehashed(raw if view else bytes(raw), h)

    def stream_file(self, e: Entry, pool: ThreadPoolExecutor, window: int, *, keep_going: bool = False,
                    sha256: bool = True) -> Iterator[Piece]:
        """A file's chunks in order, each fetched in parallel, decoded and re-hashed; after the
        last one the whole file's digest is checked (FileHashError). Damage raises at its
        chunk, or with keep_going is yielded as a Piece with an error (and the whole-file
        check is skipped, since it cannot pass). A file of one chunk whose hash is the file's
        BLAKE3 (the manifest checks it spans the whole file) has that BLAKE3 proved by the
        chunk's own re-hash: only SHA-256, when asked for, is computed over its bytes again."""
        digest = FileDigest(sha256, blake3=not (len(e.chunks) == 1 and e.chunks[0].hash == e.blake3))
        broken = False
        for c, got in ordered_map(pool, self.try_read_chunk, e.chunks, window):
            if isinstance(got, ArchiverError):
                if not keep_going:
                    raise got
                broken = True
                yield Piece(c, None, got)
                continue
            if not broken:
                digest.update(got)
            yield Piece(c, got)
        if not broken and not digest.matches(e):
            raise FileHashError(e.path)

    def chunk_sizes(self, hashes: Iterable[str]) -> dict[str, int]:
        """Stored size of each of `hashes` that the store holds (in its own object, or in a
        pack that exists with the size its index records): see `chunk_presence`."""
        if self._adopted:
            return self._adopted_sizes(hashes)
        return self.chunk_presence(hashes)[0]

    def _own_chunk_sizes(self, hashes: Iterable[str]) -> dict[str, int]:
        """Stored size of each chunk held under its own key, by the fewest requests: one
        HEAD per chunk, a LIST of each 2-hex prefix they lie under, or one LIST of all
        chunks (see `_listing`)."""
        hashes = list(hashes)
        found = self._listing([layout.chunk(h) for h in hashes])
        return {h: found[layout.chunk(h)].size for h in hashes if layout.chunk(h) in found}

    def chunks_by_staleness(self, hashes: Iterable[str]) -> list[str]:
        return self._catalog.chunks_by_staleness(hashes)

    def record_chunk_checks(self, results: Iterable[tuple[str, bool]]) -> None:
        self._catalog.mark_verified(results)

    def trusted_stored_chunks(self, refs: Iterable[ChunkRef], window: float) -> set[str]:
        """The chunks of `refs` that `prove_stored_chunk` would trust within `window` seconds
        (a deep verify found each intact that recently, and the store still holds it at the
        stored size the ref records), decided in bulk: one catalog query for the checks and
        `chunk_presence` for the sizes (a LIST, or a HEAD per pack), never a request per
        chunk. A worker (no catalog) or a sealed store trusts nothing: prove each one."""
        if self._catalog is None or self._sealer is not None:
            return set()
        refs = {r.hash: r for r in refs}
        now = time.time()
        checks = self._catalog.chunk_checks(refs)
        recent = [h for h, (when, ok) in checks.items() if ok and now - when <= window]
        if not recent:
            return set()
        sizes, _lost = self.chunk_presence(recent)
        return {h for h in recent if sizes.get(h) == refs[h].stored_size}

    def prove_stored_chunk(self, ref: ChunkRef, *, trust_verified_within: float | None = None,
                           policy: Any = None) -> ArchiverError | None:
        """Prove a chunk that an unchanged source file (the files cache) would reuse without
        its source bytes: by `save_chunk`'s rule for a stored chunk, a deep check within
        `trust_verified_within` with the recorded stored size still in the store, else a read
        back, decode and re-hash. Returns why it cannot be reused (damaged, missing, cold), or
        None; with a lock `policy` a reused chunk's retention is extended as save_chunk does."""
        key = layout.chunk(ref.hash)
        trusted = None
        if trust_verified_within is not None:
            trusted = self._recently_verified(ref.hash, key, trust_verified_within)
        if trusted is None or trusted.stored_size != ref.stored_size:
            got = self.try_read_chunk(ref)
            if isinstance(got, ArchiverError):
                return got
        if policy is not None and policy.locked:
            self.lock_existing_chunk(ref.hash, policy)  # its own object (or sealed address), or its pack
        return None

    def prove_stored_chunks(self, refs: Iterable[ChunkRef], *, policy: Any = None,
                            workers: int = 2) -> dict[str, ArchiverError]:
        """`prove_stored_chunk` (read back, decode, re-hash; no trust window) for many chunks
        at once, pack by pack: one catalog query places them all, each pack's needed ranges
        are merged into spans (`packs.plan_spans`) read with one request each, and every chunk
        in a span is decoded and hashed against its address, packs in parallel. A chunk that
        is not in a pack, or whose pack range does not prove it (a short read, a missing pack,
        another pack might hold a good copy), goes through `prove_stored_chunk` alone, which
        names the damage precisely. Returns why each chunk that cannot be reused cannot."""
        refs = {r.hash: r for r in refs}
        single: list[ChunkRef] = list(refs.values()) if self._sealer is not None else []
        by_pack: dict[str, list[tuple[int, ChunkRef]]] = defaultdict(list)  # pack -> (offset, ref)
        if self._sealer is None:
            for ref, at in self._first_pack_ranges(refs):
                if at is None:
                    single.append(ref)
                else:
                    by_pack[at[0]].append((at[1], ref))

        def one_pack(pack: str, items: list[tuple[int, ChunkRef]]) -> list[ChunkRef]:
            """The chunks of one pack its spans did not prove (to be proved alone)."""
            items.sort(key=lambda it: it[0])
            key = layout.pack(pack)
            spans = packs.plan_spans([(offset, offset + ref.stored_size) for offset, ref in items],
                                     self.SPAN_GAP, self.SPAN_LIMIT)
            left: list[ChunkRef] = []
            i = 0
            for start, end in spans:
                here = []
                while i < len(items) and items[i][0] < end:
                    here.append(items[i])
                    i += 1
                try:
                    data = self._read_range(key, start, end - start)
                except (IntegrityError, ObjectMissingError, ObjectColdError):
                    left += [ref for _, ref in here]
                    continue
                for offset, ref in here:
                    obj = data[offset - start:offset - start + ref.stored_size]
                    try:
                        if len(obj) != ref.stored_size:
                            raise CorruptChunkError(ref.hash, "short")
                        self._decode_checked(obj, ref.hash, ref.length)
                    except IntegrityError:
                        left.append(ref)
                        continue
                    if policy is not None and policy.locked:
                        self.lock_existing_chunk(ref.hash, policy)
            return left

        bad: dict[str, ArchiverError] = {}
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="prove") as pool:
            for left in pool.map(one_pack, by_pack, by_pack.values()):
                single += left
            for ref, err in zip(single, pool.map(
                    lambda r: self.prove_stored_chunk(r, policy=policy), single)):
                if err is not None:
                    bad[ref.hash] = err
        if bad:  # this process's proofs of its own packs (`_proved_in_pack`) are stale for these
            with self._packstate.lock:
                for got in self._packstate.proved.values():
                    for h in bad:
                        got.pop(h, None)
        return bad

    def _first_pack_ranges(self, refs: dict[str, ChunkRef]) -> Iterator[tuple[ChunkRef, tuple[str, int] | None]]:
        """(ref, (pack, offset) of the first pack holding it at its recorded stored size, or None).
        Before this process has written or loaded any pack index (a files cache's start) the
        catalog's rows are all there is: read as they come, one query for all, no location
        object per chunk and pack (`_pack_locations_many` merges the other sources)."""
        ps = self._packstate
        with ps.lock:
            catalog_only = not ps.written and not ps.written_at and ps.store_map is None
        if not catalog_only or self._catalog is None:
            located = self._pack_locations_many(refs)
            for h, ref in refs.items():
                loc = next((x for x in located.get(h, ()) if x.stored_size == ref.stored_size), None)
                yield ref, ((loc.pack, loc.offset) if loc is not None else None)
            return
        first: dict[str, tuple[str, int]] = {}
        for h, rows in self._catalog.pack_locations(refs).items():
            stored = refs[h].stored_size
            for r in rows:  # oldest pack first, as _pack_locations_many orders them
                if r[2] == stored:
                    first[h] = (r[0], r[1])
                    break
        for h, ref in refs.items():
            yield ref, first.get(h)

    # -- catalog rebuild -------------------------------------------------------------------------
    def rebuild_catalog(self) -> RebuildResult:
        """Record every good manifest in the store, parents before children, and report
        each bad one instead of stopping. Streams: the first pass keeps only each id's
        parent; the second fetches (and re-checks) each manifest again and records it in
        small batches, so memory does not grow with the total size of the manifests.
        Times are unknown to a rebuild and recorded as such, never invented."""
        result = RebuildResult()
        log = self.read_events()
        result.problems.extend(log.problems)
        ingested: dict[str, float] = {}
        for rec in log.records:
            if rec.event.type == events.INGESTION:
                for mid in rec.event.manifest_ids:
                    ingested[mid] = min(ingested.get(mid, rec.event.time), rec.event.time)
        parents: dict[str, str | None] = {}
        for sm in self.iter_manifests():
            result.manifests += 1
            why = sm.error or (self._unrecordable(sm.id, sm.manifest) if sm.manifest is not None else None)
            if why is not None:
                result.problems.append(Problem(sm.id, "manifest", str(why)))
                continue
            assert sm.manifest is not None
            parents[sm.id] = sm.manifest.parent
        batch: list[tuple[Manifest, bytes]] = []
        size = 0
        for mid in _parents_first(parents):
            if self._catalog.has_manifest(mid):
                continue
            try:
                data = self._get_manifest(layout.manifest(mid))
                with translated():
                    m = parse_manifest(data, expected_id=mid)
                m = self.resolve_trees(m)  # v3: its entries, each tree checked
            except (IntegrityError, ObjectMissingError) as e:  # changed or vanished since the first pass
                result.problems.append(Problem(mid, "manifest", str(e)))
                continue
            batch.append((m, data))
            size += len(data)
            if len(batch) >= REBUILD_BATCH_COUNT or size >= REBUILD_BATCH_BYTES:
                self._record_batch(batch, result, ingested)
                batch, size = [], 0
        self._record_batch(batch, result, ingested)
        self._replay_events(log.records, result)
        self._rebuild_packs(result)
        with translated():
            self._catalog.audit("rebuild", None, result.ok, {
                "manifests": result.manifests, "added": len(result.added), "problems": len(result.problems),
                "events": result.events,
                "first": [p.line() for p in result.problems[:20]]})
        return result

    @staticmethod
    def _unrecordable(mid: str, m: Manifest) -> ArchiverError | None:
        """Why a manifest cannot be recorded or restored (unsafe or colliding paths, text
        the catalog cannot store), or None."""
        try:
            with translated():
                check_paths((e.path, e.type) for e in m.entries)
                check_recordable(mid, m)
        except ArchiverError as e:
            return e
        return None

    def _record_batch(self, batch: list[tuple[Manifest, bytes]], result: RebuildResult,
                      ingested: dict[str, float]) -> None:
        """Record manifests; the time is that of the manifest's ingestion event in the
        store if there is one, else unknown (never invented)."""
        if not batch:
            return
        with translated(), self._catalog.write():
            for m, data in batch:
                at = ingested.get(m.id)
                try:
                    m = self.resolve_trees(m)  # v3: the catalog records the entries of its trees
                    with translated():
                        if self._catalog.record_manifest(m, data, at=at, time_unknown=at is None,
                                                         filemap_chunks=self.filemap_records):
                            result.added.append(m.id)
                except IntegrityError as e:  # only this manifest's savepoint was rolled back
                    result.problems.append(Problem(m.id, "manifest", str(e)))

    def sync_catalog(self) -> RebuildResult:
        """Record the manifests other hosts wrote to the shared store since this catalog last
        looked: one LIST of manifests/, and only ids not recorded yet are fetched, re-checked
        against their id and recorded, parents first (in one transaction per batch). A bad
        one is reported and skipped, as by `rebuild_catalog`. Their ingestion times are not
        looked up (the event log is not replayed: `rebuild_catalog` does that); they are
        recorded as unknown, never invented."""
        result = RebuildResult()
        new: dict[str, tuple[Manifest, bytes]] = {}
        for info in self._store.list(layout.MANIFESTS):
            mid = layout.manifest_id(info.key)
            if mid is None:
                continue
            result.manifests += 1
            if self._catalog.has_manifest(mid):
                continue
            try:
                data = self._get_manifest(info.key)
                with translated():
                    m = parse_manifest(data, expected_id=mid)
                m = self.resolve_trees(m)  # v3: its entries, each tree checked
            except (IntegrityError, ObjectMissingError) as e:
                result.problems.append(Problem(mid, "manifest", str(e)))
                continue
            why = self._unrecordable(mid, m)
            if why is not None:
                result.problems.append(Problem(mid, "manifest", str(why)))
                continue
            new[mid] = (m, data)
        order = _parents_first({mid: m.parent for mid, (m, _) in new.items()})
        for i in range(0, len(order), REBUILD_BATCH_COUNT):
            self._record_batch([new[mid] for mid in order[i:i + REBUILD_BATCH_COUNT]], result, {})
        return result

    # -- the event log (archiver.events) ----------------------------------------------------------
    def event_writer(self) -> str:
        """This catalog's writer id (random, 128 bit, kept in the catalog's info table):
        its events form one hash chain under events/<writer>/. A catalog that cannot be
        written gets a fresh id for this run (its events start a chain of their own)."""
        if self._writer is None and self._catalog is None:  # a worker: a chain of its own
            self._writer = secrets.token_hex(16)
        if self._writer is None:
            w = self._catalog.info_value("event_writer")
            if w is None:
                fresh = secrets.token_hex(16)
                try:
                    with translated():
                        w = self._catalog.claim_info("event_writer", fresh)
                except (CatalogReadOnlyError, CatalogLockedError):
                    w = fresh
            self._writer = w
        return self._writer

    def append_event(self, event: Event, *, sign_key: Any = None, policy: Any = None) -> AppendedEvent:
        """Append one immutable event to this writer's chain in the store (put_if_absent;
        if another process took the slot, re-read the head and retry), then record it in
        the catalog (audit rows and chunk check times at the event's own time). Never raises
        because the store or the catalog cannot be written: a verify still stands; the
        result says what was not recorded. With a write `policy` the event is locked too."""
        out = AppendedEvent(event)
        try:
            out.record = self._put_event(event, sign_key, policy)
        except (StoreError, IntegrityError) as e:
            out.store_error = str(e)
        rec = out.record
        if self._catalog is None:
            out.catalog_error = "a worker of a distributed run has no catalog"
            return out
        try:
            with translated():
                self._catalog.record_event_lists(rec.key if rec else None, rec.writer if rec else "",
                                                 rec.seq if rec else -1, rec.hash if rec else "", event.time,
                                                 events.audit_rows(event), event.chunks_ok, event.chunks_failed)
        except (CatalogReadOnlyError, CatalogLockedError) as e:
            out.catalog_error = str(e)
        return out

    def _put_event(self, event: Event, sign_key: Any = None, policy: Any = None) -> EventRecord:
        """Append `event` to this writer's chain; with a write `policy`, its objects are locked
        like the archive's metadata (an ingestion event of a locked archive)."""
        writer = self.event_writer()
        shown = event if self._sealer is None else self._sealed_event(event)  # what the store may show
        with self._event_lock:
            chunk_list = None
            if events.needs_list(shown):
                data = events.encode_list(shown.chunks_ok, shown.chunks_failed)
                chunk_list = blake3.blake3(data).hexdigest()
                key = layout.event_list(writer, chunk_list)
                if not self._put(key, data, policy) and \
                        self._store.get(key, max_size=events.MAX_LIST_BYTES) != data:
                    raise IntegrityError(f"store holds a different object under digest list {key}")
            for _ in range(EVENT_ROUNDS):
                head = self._event_head(writer)
                seq, prev = (0, None) if head is None else (head[0] + 1, head[1])
                data = events.encode(shown, writer, seq, prev, chunk_list, sign_key)
                key = layout.event(writer, events.name(seq, prev))
                if self._put(key, data, policy):
                    rec = events.parse(data, key)
                    self._heads[writer] = (seq, rec.hash)
                    return dataclasses.replace(rec, event=event)
                self._heads.pop(writer, None)  # another writer got there first: read the head again
        raise StoreError(f"could not append an event to {layout.events_of(writer)}: the slot was taken "
                         f"{EVENT_ROUNDS} times in a row")

    def _event_head(self, writer: str) -> tuple[int, str] | None:
        """(seq, BLAKE3) of the writer's newest event in the store, or None if it has none."""
        if writer in self._heads:
            return self._heads[writer]
        newest: tuple[int, str] | None = None
        for info in self._store.list(layout.events_of(writer)):
            parsed = layout.parse_event_key(info.key)
            if parsed is not None and (newest is None or parsed[1] >= newest[0]):
                newest = (parsed[1], info.key)
        if newest is None:
            return None
        data = self._store.get(newest[1], max_size=events.MAX_EVENT_BYTES)
        self._heads[writer] = (newest[0], blake3.blake3(data).hexdigest())
        return self._heads[writer]

    def read_events(self, *, load_lists: bool = True) -> EventLog:
        """Every event in the store, ordered by writer and sequence,
        with each writer's chain checked: a gap in the sequence (a deleted event), an event
        whose `prev` is not the BLAKE3 of the one before it (altered or replaced), an event
        that does not match its key, an unreadable event or digest list, a bad signature,
        and an event this catalog recorded that the store no longer holds (or holds altered).
        With load_lists (rebuild, `events`, deep verify) every digest list is fetched,
        re-hashed and its chunks put into the record; without, a list must only be present
        (a daily shallow or sampled verify does not re-read a year of lists)."""
        log = EventLog()
        by_writer: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
        lists: set[str] = set()
        for info in self._store.list(layout.EVENTS):
            parsed = layout.parse_event_key(info.key)
            if parsed is not None:
                by_writer[parsed[0]].append((parsed[1], parsed[2], info.key))
            elif layout.is_event_list_key(info.key):
                lists.add(info.key)
            else:
                log.problems.append(_event_problem(info.key, "not an event object name (a stray or renamed object)"))
        in_store: dict[str, str] = {}
        read_lists: dict[str, tuple[tuple[str, ...], tuple[str, ...]] | Exception] = {}
        with ThreadPoolExecutor(EVENT_FETCHERS, thread_name_prefix="events") as pool:  # S3: GETs overlap
            for writer in sorted(by_writer):
                fetched = ordered_map(pool, self._try_get_event, sorted(by_writer[writer]), EVENT_FETCHERS * 2)
                self._check_chain(writer, fetched, log, in_store, lists if not load_lists else None, read_lists)
        for key, writer, seq, h in self._catalog.seen_events():
            if key not in in_store:
                log.problems.append(_event_problem(key, f"event {seq} of writer {writer[:12]} was recorded by this "
                                                        "catalog but is missing from the store (deleted)"))
            elif in_store[key] and in_store[key] != h:
                log.problems.append(_event_problem(key, f"event {seq} of writer {writer[:12]} differs from the one "
                                                        "this catalog recorded (altered)"))
        return log

    def _try_get_event(self, item: tuple[int, str, str]) -> bytes | ArchiverError:
        try:
            return self._store.get(item[2], max_size=events.MAX_EVENT_BYTES)
        except (IntegrityError, ObjectMissingError) as e:
            return e

    def _check_chain(self, writer: str, fetched: Iterable[tuple[tuple[int, str, str], bytes | ArchiverError]],
                     log: EventLog, in_store: dict[str, str], listed: set[str] | None = None,
                     read_lists: dict[str, tuple[tuple[str, ...], tuple[str, ...]] | Exception] | None = None
                     ) -> None:
        """One writer's chain (see read_events), from ((seq, prev16, key), bytes or error) in
        key order; `listed`: only check that digest lists exist. `read_lists`: digest lists
        already fetched and checked in this read (key -> chunks, or why not): a list is
        content-addressed, so the runs that proved the same chunks share one, and it is
        fetched, re-hashed and parsed once per read, not once per event naming it."""
        read_lists = {} if read_lists is None else read_lists
        expected, prev_hash = 0, None
        for (seq, prev16, key), got in fetched:
            if seq < expected:
                log.problems.append(_event_problem(key, f"a second event at sequence {seq} of writer {writer[:12]} "
                                                        "(the chain forks)"))
                in_store[key] = ""
                continue
            if seq > expected:
                log.problems.append(_event_problem(key, f"events {expected}..{seq - 1} of writer {writer[:12]} "
                                                        "are missing (deleted)"))
                prev_hash = None
            expected = seq + 1
            try:
                if isinstance(got, ArchiverError):
                    raise got
                data = got
                in_store[key] = blake3.blake3(data).hexdigest()
                rec = events.parse(data, key)
            except (events.EventFormatError, IntegrityError, ObjectMissingError) as e:
                log.problems.append(_event_problem(key, f"unreadable event: {e}"))
                in_store.setdefault(key, "")
                prev_hash = None
                continue
            why = []
            if rec.writer != writer or rec.seq != seq or (rec.prev or events.GENESIS)[:16] != prev16:
                why.append("its writer, sequence or prev does not match its key")
            if prev_hash is not None and rec.prev != prev_hash:
                why.append(f"its prev is not the hash of event {seq - 1} (that event was altered or replaced)")
            if seq == 0 and rec.prev is not None:
                why.append("the first event of a writer names a predecessor")
            if events.signature_ok(data) is False:
                why.append("bad signature")
            if rec.chunk_list is not None and listed is not None:
                if layout.event_list(writer, rec.chunk_list) not in listed:
                    why.append(f"its digest list {rec.chunk_list[:16]} is missing from the store")
            elif rec.chunk_list is not None:
                try:
                    lk = layout.event_list(writer, rec.chunk_list)
                    if lk not in read_lists:
                        try:
                            read_lists[lk] = events.parse_list(self._store.get(lk, max_size=events.MAX_LIST_BYTES),
                                                               rec.chunk_list)
                        except (events.EventFormatError, IntegrityError, ObjectMissingError) as e:
                            read_lists[lk] = e
                    got_list = read_lists[lk]
                    if isinstance(got_list, Exception):
                        raise got_list
                    ok, failed = got_list
                    rec = dataclasses.replace(rec, event=dataclasses.replace(rec.event, chunks_ok=ok,
                                                                             chunks_failed=failed))
                except (events.EventFormatError, IntegrityError, ObjectMissingError) as e:
                    why.append(f"its digest list {rec.chunk_list[:16]}: {e}")
            for w in why:
                log.problems.append(_event_problem(key, w))
            log.records.append(rec)
            prev_hash = rec.hash

    def _replay_events(self, records: list[EventRecord], result: RebuildResult) -> None:
        """Record the store's events this catalog has not recorded, oldest first: audit
        rows with their real times, and each chunk's last deep check."""
        todo = [r for r in sorted(records, key=lambda r: (r.event.time, r.writer, r.seq))
                if not self._catalog.event_seen(r.key)]
        for i in range(0, len(todo), REBUILD_BATCH_COUNT):
            with translated(), self._catalog.write():
                for r in todo[i:i + REBUILD_BATCH_COUNT]:
                    if self._catalog.record_event(r.key, r.writer, r.seq, r.hash, r.event.time,
                                                  events.audit_rows(r.event), events.chunk_results(r.event)):
                        result.events += 1

    def chunk_coverage(self) -> list[tuple[str, str, str | None, str, int, float | None, bool | None]]:
        """Every recorded version's distinct chunks with their last deep check (`fixity status`);
        a file map's chunks are read from the map object (the catalog keeps only inline sets)."""
        return self._catalog.chunk_coverage(self.filemap_records)


    # -- copies: replicate and repair (only proved bytes cross between stores) -------------------
    def manifest_object(self, mid: str) -> bytes:
        """The store's manifest object, accepted only if its bytes hash to `mid` and parse:
        the exact bytes a copy must hold. NotFoundError if absent, ManifestError if damaged."""
        if self._sealer is not None:  # plaintext must never reach a copy: archiver.sealcopy copies ciphertext
            raise UsageError(f"{self.url} is sealed: copy it with archiver.sealcopy (api.replicate does)")
        try:
            data = self._get_manifest(layout.manifest(mid))
        except ObjectMissingError:
            raise NotFoundError(f"manifest {mid} is not in the store") from None
        with translated():
            parse_manifest(data, expected_id=mid)
        return data

    def chunk_object(self, ref: ChunkRef) -> bytes:
        """The stored object of one chunk exactly as stored, returned only after it was
        decoded and its bytes re-hashed to `ref.hash` (so the same object bytes, and the
        manifest's stored size, are valid in another store). Raises CorruptChunkError or
        ObjectMissingError."""
        packed = self._packed_read(ref)
        if packed is not None:
            return packed[0]
        obj = self._get_chunk(ref.hash, ref.stored_size)
        if len(obj) != ref.stored_size:
            raise CorruptChunkError(ref.hash, f"stored size {len(obj)} != recorded {ref.stored_size}")
        self._decode_checked(obj, ref.hash, ref.length)
        return obj

    def put_chunk_object(self, ref: ChunkRef, obj: bytes, policy: Any = None) -> bool:
        """Store a proved chunk object (from `chunk_object` of another store); True if
        written now. If the key is taken (a concurrent writer, or a PUT whose response was
        lost), what it holds must be these exact bytes, else IntegrityError. With a write
        `policy` the object is locked (an existing one's lock extended, never shortened).
        A small object goes into a pack, durable once `flush_packs` (or the manifest's
        `put_manifest_object`) returns."""
        if packs.is_small(len(obj), self._pack_below):
            self._add_to_pack(ref.hash, obj, ref.length, describe(obj), policy)
            return True
        return self._put_exact(layout.chunk(ref.hash), obj, f"chunk {ref.hash}", policy)

    def put_manifest_object(self, mid: str, data: bytes, policy: Any = None) -> bool:
        """Store a manifest object whose bytes hash to `mid`; True if written now."""
        if manifest_id(data) != mid:
            raise ManifestError(f"bytes given for manifest {mid} do not hash to its id")
        self.flush_packs()  # the packs holding its chunks first
        return self._put_exact(layout.manifest(mid), data, f"manifest {mid}", policy)

    def lock_existing_chunk(self, h: str, policy: Any) -> None:
        """Extend the lock of a chunk the store already holds to at least `policy`'s (for a
        packed chunk: its pack, and its index like metadata)."""
        if self._sealer is not None:
            self._ensure_lock(self._stored_chunk_key(h), policy)
            return
        locs = self._pack_locations(h)
        if not locs:
            self._ensure_lock(layout.chunk(h), policy)
        for loc in locs:
            self._ensure_lock(layout.pack(loc.pack), policy)
            self._ensure_lock(layout.pack_index(loc.index_id), policy.for_metadata())

    def signature_objects(self, mid: str) -> tuple[list[tuple[str, bytes]], list[str]]:
        """([(fingerprint, bytes)] of every valid signature of `mid`, [why each other one
        is refused]): only a signature that checks against `mid` under its own key is
        ever copied."""
        from manifests import signing
        good: list[tuple[str, bytes]] = []
        bad: list[str] = []
        for info in self._store.list(layout.signatures_of(mid)):
            try:
                data = self._store.get(info.key, max_size=MAX_SIGNATURE_BYTES)
                with translated():
                    sig = signing.parse_signature(data)
            except (ArchiverError, ObjectMissingError) as e:
                bad.append(f"{info.key}: {e}")
                continue
            if signing.check(sig, mid) and info.key == layout.signature(mid, sig.fingerprint):
                good.append((sig.fingerprint, data))
            else:
                bad.append(f"bad signature {info.key} (key {sig.fingerprint})")
        return good, bad

    def signature_fingerprints(self, mid: str) -> set[str]:
        """Fingerprints of the signature objects the store holds for `mid` (LIST only)."""
        out = set()
        for info in self._store.list(layout.signatures_of(mid)):
            name = info.key.rsplit("/", 1)[-1]
            if info.key == layout.signature(mid, name.removesuffix(".json")):
                out.add(name.removesuffix(".json"))
        return out

    def put_signature_object(self, mid: str, fingerprint: str, data: bytes, policy: Any = None) -> bool:
        """Store a signature object (proved by `signature_objects` of another store)."""
        return self._put_exact(layout.signature(mid, fingerprint), data, f"signature {fingerprint} of {mid}", policy)

    def _put_exact(self, key: str, data: bytes, what: str, policy: Any = None) -> bool:
        if self._put(key, data, policy):
            return True
        if self._store.get(key, max_size=len(data)) != data:
            raise IntegrityError(f"{self.url} already holds a different object for {what}")
        self._ensure_lock(key, policy)
        return False

    def record_copied_manifest(self, m: Manifest, data: bytes) -> bool:
        """Record a manifest that was copied into this store (its chunks and object already
        durable here); False if the catalog already had it."""
        m = self.resolve_trees(m)
        with translated():
            return self._catalog.record_manifest(m, data, filemap_chunks=self.filemap_records)

    def heal_chunk(self, ref: ChunkRef, obj: bytes) -> str:
        """Heal one chunk with `obj` (proved by `chunk_object` of a copy): see `_heal`."""
        def damage(stored: bytes) -> str | None:
            if len(stored) != ref.stored_size:
                return f"stored size {len(stored)} != recorded {ref.stored_size}"
            try:
                self._decode_checked(stored, ref.hash, ref.length)
            except CorruptChunkError as e:
                return e.reason
            return None
        locs = self._pack_locations(ref.hash) or self._store_pack_map().get(ref.hash, [])
        if locs:
            return self._heal_packed(ref, obj, locs)
        return self._heal(layout.chunk(ref.hash), obj, damage)

    def heal_manifest(self, mid: str, data: bytes) -> str:
        """Heal a manifest object with bytes that hash to `mid`: see `_heal`."""
        if manifest_id(data) != mid:
            raise ManifestError(f"bytes given for manifest {mid} do not hash to its id")
        return self._heal(layout.manifest(mid), data, lambda stored: None if stored == data else
                          "store copy of the manifest differs from its id")

    def heal_signature(self, mid: str, fingerprint: str, data: bytes) -> str:
        """Heal a signature object with a signature proved valid elsewhere: see `_heal`."""
        from manifests import signing

        def damage(stored: bytes) -> str | None:
            try:
                with translated():
                    sig = signing.parse_signature(stored)
            except ArchiverError as e:
                return str(e)
            return None if signing.check(sig, mid) and sig.fingerprint == fingerprint else "signature does not verify"
        return self._heal(layout.signature(mid, fingerprint), data, damage)

    def _heal(self, key: str, data: bytes, damage: Any) -> str:
        """Put `data` (proved good elsewhere) if `key` is absent; if present, read it with its
        version and, only if `damage(obj)` says why it is bad (None: intact), keep it under
        quarantine and replace it, conditional on that version (If-Match on S3), then read
        the key back. 'written', 'replaced' or 'intact'."""
        for _ in range(self.SAVE_ROUNDS):
            try:
                obj, version = self._read_for_proof(key, len(data))
            except ObjectMissingError:
                if self._store.put_if_absent(key, data):
                    return "written"
                continue  # lost a race or a PUT response: prove what is there now
            why = damage(obj) if obj is not None else f"larger than the {len(data)} bytes it should be"
            if why is None:
                return "intact"
            if version is None or not getattr(self._store, "can_replace_damaged", False):
                raise IntegrityError(f"{key} in {self.url} is damaged ({why}) and this store cannot replace it")
            quarantine = layout.quarantined(key, self._quarantine_tag())
            self._store.replace_damaged(key, data, version, quarantine)
            try:
                again, _ = self._read_for_proof(key, len(data))
            except ObjectMissingError:
                continue
            if again == data:
                return "replaced"
        raise StoreError(f"{key} kept changing in {self.url} while it was being repaired; re-run")

    # -- the store's copy set and cached store checks (named rows of the catalog's info table) ---
    def copies(self) -> list[str]:
        """The URLs of this store's copies, as recorded by `add_copy`."""
        return [k[len("copy:"):] for k in self._catalog.info_items("copy:")]

    def add_copy(self, url: str) -> bool:
        """Record a copy (a full store URL, settings kept); False if it was already recorded."""
        if url in self.copies():
            return False
        with translated():
            self._catalog.set_info(f"copy:{url}", json.dumps({"added_at": time.time()}))
        self.audit("copies-add", None, True, {"copy": url, "store": self.url})
        return True

    def remove_copy(self, url: str) -> bool:
        """Forget a copy (its store is not touched); False if it was not recorded."""
        with translated():
            gone = self._catalog.delete_info(f"copy:{url}")
        if gone:
            self.audit("copies-remove", None, True, {"copy": url, "store": self.url})
        return gone

    def cached_store_check(self, identity: str) -> dict[str, Any] | None:
        raw = self._catalog.info_items(f"store-check:{identity}").get(f"store-check:{identity}")
        return None if raw is None else json.loads(raw)

    def cache_store_check(self, identity: str, result: dict[str, Any]) -> None:
        with translated():
            self._catalog.set_info(f"store-check:{identity}", json.dumps(result, sort_keys=True))

    def manifest_sizes(self) -> dict[str, int]:
        """Stored size of every manifest object, by id (LIST pages only, nothing fetched)."""
        out = {}
        for info in self._store.list(layout.MANIFESTS):
            mid = layout.manifest_id(info.key)
            if mid is not None:
                out[mid] = info.size
                if self._sealer is not None:  # sealed: the plaintext size it holds (-1: no size seals to it)
                    out[mid] = sealing.unsealed_size(info.size) or -1
        return out

    def probe_conditional_writes(self) -> dict[str, Any]:
        """Write a scratch object under `_probe/` twice with put_if_absent and read it back:
        does the store refuse the second write (as every archiver guarantee assumes) or
        silently overwrite? Also whether the checksummed write was accepted, and, on S3,
        the bucket's versioning and Object Lock configuration. A local store's no-replace
        link/rename is enforced by the filesystem; it is probed the same way."""
        key = layout.probe(secrets.token_hex(8))
        first, second = b"archiver probe: first write\n", b"archiver probe: second write\n"
        out: dict[str, Any] = {"store": self.url, "probe_key": key}
        try:
            self._store.put_if_absent(key, first)
            out["checksums"] = "accepted"
        except StoreError as e:
            out["checksums"] = f"rejected: {e}"
            out["overwrites"] = None
            return out
        refused = not self._store.put_if_absent(key, second)
        held = self._store.get(key, max_size=64)
        out["overwrites"] = not refused or held != first
        out["conditional_writes"] = "enforced" if not out["overwrites"] else \
            "IGNORED: a second If-None-Match write replaced the object"
        settings = getattr(self._store, "bucket_settings", None)
        out.update(settings() if settings is not None else {"versioning": "n/a (local)", "object_lock": "n/a (local)"})
        return out

    # -- retention and cold tiers: Object Lock, storage classes, thaw ---------------------------
    def _ensure_lock(self, key: str, policy: Any) -> None:
        """Make the object under `key` locked at least as `policy` asks: read its lock (HEAD,
        which also works on cold objects), and if it falls short apply the merge of both (later
        date, stronger mode, either legal hold). Never shortens; nothing to do without a lock."""
        if policy is None or not policy.locked:
            return
        from archiver.retention import Lock
        state = self._store.object_state(key)  # type: ignore[attr-defined]
        if state is None:
            raise ObjectMissingError(key)
        have = Lock(state.lock_mode, state.retain_until, state.legal_hold)
        if not have.covers(policy.lock):
            self._store.apply_lock(key, have.merge(policy.lock))  # type: ignore[attr-defined]


    def record_policy(self, mid: str, policy: Any) -> str:
        """Store the policy an archive was made (or extended) with as a small hot object,
        locked like the archive, so `verify --retention` knows what to expect after a catalog
        rebuild. Content-named: the same policy twice is one object."""
        data = policy.record(mid)
        key = layout.retention_record(mid, blake3.blake3(data).hexdigest()[:32])
        hot = policy.for_metadata()
        if not self._put(key, data, hot):
            self._ensure_lock(key, hot)
        return key


    def recorded_lock(self, mid: str) -> Any:
        """The strongest lock any retention record of `mid` asks for (Lock(); nothing recorded)."""
        from archiver.retention import Lock, parse_record
        want = Lock()
        for info in self._store.list(layout.retention_records_of(mid)):
            try:
                want = want.merge(parse_record(self._store.get(info.key, max_size=MAX_SIGNATURE_BYTES), mid))
            except (ValueError, ArchiverError):
                continue  # not a record of ours: verify reports what the objects hold, not this
        return want


    def archive_keys(self, mid: str, m: Manifest) -> list[str]:
        """Every object an archive consists of: its chunks, its manifest, its signatures and its
        retention records."""
        hashes = sorted(m.unique_chunks())
        located = {} if self._sealer is not None else self._pack_locations_many(hashes)
        keys = [self._stored_chunk_key(h) for h in hashes if h not in located]
        keys += sorted({layout.pack(loc.pack) for locs in located.values() for loc in locs})
        keys += sorted({layout.pack_index(loc.index_id) for locs in located.values() for loc in locs})
        keys += sorted({self._filemap_stored_key(e.filemap) for e in m.files if e.filemap})
        keys += sorted(layout.tree(h) for h in self.manifest_trees(m))
        keys.append(layout.manifest(mid))
        if self._sealer is not None:  # its companion and the key objects of the runs it names
            keys.append(layout.audit(mid))
            for kid in sorted({o[3] for o in self.companion(mid)["objects"]}):
                keys += [i.key for i in self._store.list(layout.run_keys_of(kid))]
        keys += [i.key for i in self._store.list(layout.signatures_of(mid))]
        keys += [i.key for i in self._store.list(layout.retention_records_of(mid))]
        return keys


    def can_lock_now(self) -> bool:
        """Whether objects written here can carry an Object Lock (an S3 bucket created with it)."""
        return self.can_lock() and bool(self._store.object_lock_enabled())  # type: ignore[attr-defined]

    def check_lockable(self, policy: Any) -> None:
        """Refuse a policy this store cannot honour, before anything is written."""
        from archiver.stores import check_write_policy
        check_write_policy(self._store, policy)


    def extend_retention(self, mid: str, m: Manifest, policy: Any) -> int:
        """Extend the lock of every object of the archive to at least `policy` (never shorter),
        and record it. Returns how many objects were checked."""
        self.check_lockable(policy)
        from archiver.retention import WritePolicy
        effective = WritePolicy(self.recorded_lock(mid).merge(policy.lock))  # never less than recorded
        keys = self.archive_keys(mid, m)
        for key in keys:
            self._ensure_lock(key, effective)
        self.record_policy(mid, effective)
        return len(keys) + 1


    def retention_shortfalls(self, mid: str, m: Manifest, want: Any) -> list[tuple[str, str]]:
        """(key, why) for each object of the archive whose lock does not cover `want`."""
        from archiver.retention import Lock
        out: list[tuple[str, str]] = []
        for key in self.archive_keys(mid, m):
            state = self._store.object_state(key)  # type: ignore[attr-defined]
            if state is None:
                out.append((key, "object is missing"))
                continue
            why = Lock(state.lock_mode, state.retain_until, state.legal_hold).shortfall(want)
            if why is not None:
                out.append((key, why))
        return out


    def can_lock(self) -> bool:
        return bool(getattr(self._store, "supports_object_lock", False))

    def has_storage_classes(self) -> bool:
        return bool(getattr(self._store, "supports_storage_classes", False))

    def metadata_sizes(self, mid: str) -> list[int]:
        """Stored sizes of an archive's hot objects: manifest, signatures, retention records."""
        sizes = [i.size for i in self._store.list(layout.manifest(mid))]
        for prefix in (layout.signatures_of(mid), layout.retention_records_of(mid)):
            sizes += [i.size for i in self._store.list(prefix)]
        return sizes


    def chunk_classes(self, hashes: Iterable[str]) -> dict[str, str]:
        """Storage class of each of `hashes` held in a class other than STANDARD (a packed
        chunk: its pack's), by the fewest requests (see `_listing`)."""
        hashes = list(dict.fromkeys(hashes))
        located = {} if self._sealer is not None else self._pack_locations_many(hashes)
        where = {h: layout.pack(located[h][0].pack) if h in located else self._stored_chunk_key(h) for h in hashes}
        objs = sorted(set(where.values()))
        classes = self._classes_of(objs)
        return {h: classes[k] for h, k in where.items() if classes.get(k)}

    def _classes_of(self, keys: list[str]) -> dict[str, str | None]:
        found = self._listing(keys, need_class=True)
        return {k: found[k].storage_class for k in keys if k in found}

    def chunk_state(self, h: str) -> ObjectState | None:
        """HEAD of one chunk: class, lock, thaw state (None on a store without it, or if absent)."""
        state = getattr(self._store, "object_state", None)
        return state(self._chunk_key(h)) if state is not None else None


    def request_thaw(self, h: str, days: int, tier: str) -> None:
        key = self._chunk_key(h)
        with self._packstate.lock:  # many chunks share a pack: ask for each object's thaw once
            if key in self._packstate.thawed:
                return
            self._packstate.thawed.add(key)
        self._store.request_thaw(key, days, tier)  # type: ignore[attr-defined]

    # -- retirement package: search and export (issue 11) ---------------------------------------
    def manifest_fields(self, mid: str) -> list[tuple[str, str]]:
        """The (key, value) pairs the catalog indexes for search for one manifest."""
        with translated():
            return self._catalog.fields_of(mid)

    def search(self, conditions: Iterable[Any], name: str | None = None) -> list[ManifestRow]:
        """Catalog rows meeting every condition (manifests.catalog.Condition), in list order."""
        with translated():
            return self._catalog.search(conditions, name)
    # -- sealed stores (format version 2: archiver.sealing; docs/FORMAT.md "Sealed stores") --------
    @staticmethod
    def _sealer_for(st: Store, s: Settings) -> Any:
        """A Sealer if the store's marker says sealed (None for a plain store): the custodian
        identities given (checked now: a wrong one is refused before anything happens), and
        the address key from this host's key file, else unwrapped with an identity."""
        from archiver.stores import MAX_MARKER_BYTES
        try:
            doc = json.loads(st.get(layout.MARKER, max_size=MAX_MARKER_BYTES))
        except (ObjectMissingError, ValueError, UnicodeDecodeError):
            return None
        sealed = doc.get("sealed") if isinstance(doc, dict) else None
        if not isinstance(sealed, dict):
            return None
        sealer = sealing.Sealer(str(sealed.get("store")), str(sealed.get("address_check")),
                                identities=sealing.load_identities(list(s.identities)))
        if sealer.identities:
            gen, key = Repository._newest_in(st, layout.ADDRESS_KEYS)
            if key is None:
                raise IdentityError(f"sealed store {st.url} has no address key object (keys/address/ is empty)")
            sealer.open_address_key(st.get(key, max_size=sealing.MAX_KEY_OBJECT_BYTES))
            return sealer
        path = s.address_key_path(sealer.store_id)
        if path.is_file():
            try:
                sealer.set_address_key(bytes.fromhex(path.read_text().strip()))
            except ValueError:
                raise IdentityError(f"address key file {path} is not 64 hex digits") from None
        return sealer

    @staticmethod
    def _newest_in(st: Store, prefix: str) -> tuple[int, str | None]:
        """(generation, key) of the newest generation-named object under `prefix` ((-1, None): none)."""
        best: tuple[int, str | None] = (-1, None)
        for info in st.list(prefix):
            gen = layout.key_generation(info.key)
            if gen is not None and gen > best[0]:
                best = (gen, info.key)
        return best

    @classmethod
    def init_sealed(cls, settings: Settings, recipients: list[str]) -> dict[str, Any]:
        """Create a sealed store: recipient set 0, the address key wrapped to the recipients,
        the marker last; and the address key file for this (archive) host."""
        for r in recipients:
            sealing._recipient_bytes(r)
        if not recipients:
            raise InvalidOptionError("encrypt_to", "needs at least one recipient")
        from archiver.stores import _store_for_url
        st = _store_for_url(settings.store_url, settings.s3)
        if next(iter(st.list("")), None) is not None:
            raise UsageError(f"{settings.store_url} is not empty; a sealed store is created in an empty place")
        store_id, key = sealing.new_store_secret()
        path = settings.address_key_path(store_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
        st.put_if_absent(layout.key_set(0), sealing.recipient_set(0, recipients, key))
        st.put_if_absent(layout.address_key(0), sealing.wrap(key.hex().encode() + b"\n", recipients))
        if not st.put_if_absent(layout.MARKER, sealing.marker(store_id, sealing.address_check(key))):
            raise UsageError(f"{settings.store_url} was created by another process meanwhile")
        return {"store": settings.store_url, "store_id": store_id, "recipients": sorted(set(recipients)),
                "address_key_file": str(path)}

    @property
    def sealed(self) -> bool:
        return self._sealer is not None

    @property
    def has_identities(self) -> bool:
        """Whether custodian identities were given (a sealed store's plaintext can be read)."""
        return self._sealer is not None and bool(self._sealer.identities)

    def _recipients(self) -> tuple[int, list[str]]:
        gen, key = self._newest_in(self._store, layout.KEY_SETS)
        if key is None:
            raise IdentityError(f"sealed store {self.url} has no recipient set (keys/sets/ is empty)")
        assert self._sealer is not None
        return gen, sealing.parse_recipient_set(self._store.get(key, max_size=sealing.MAX_KEY_OBJECT_BYTES), gen,
                                                self._sealer.need_address_key())

    def _start_run(self) -> None:
        """This process's run key: generated, wrapped to the newest recipient set, stored."""
        assert self._sealer is not None
        if self._run_ready:
            return
        # Several files are archived at once: one run key per process, and no thread seals to
        # it before its key object is durable (a chunk sealed to a key never stored would be
        # unreadable, yet a write-only host proves a stored chunk by its size only).
        with self._run_lock:
            if self._run_ready:
                return
            if self._sealer.run_kid is None:
                self._sealer.start_run()
            gen, recipients = self._recipients()
            secret = (str(self._sealer.run_keys[self._sealer.run_kid]) + "\n").encode()
            self._store.put_if_absent(layout.run_key(self._sealer.run_kid, gen), sealing.wrap(secret, recipients))
            self._run_ready = True

    def _identity_for(self, kid: str) -> Any:
        """The run key `kid` (opened once per process with the custodians' identities)."""
        assert self._sealer is not None
        got = self._sealer.run_keys.get(kid)
        if got is not None:
            return got
        if not self._sealer.identities:
            raise IdentityError(f"sealed store {self.url}: reading needs a custodian identity")
        _, key = self._newest_in(self._store, layout.run_keys_of(kid))
        if key is None:
            raise IdentityError(f"run key {kid} is missing from the store (keys/runs/{kid}/)")
        self._sealer.open_key(kid, self._store.get(key, max_size=sealing.MAX_KEY_OBJECT_BYTES))
        return self._sealer.run_keys[kid]

    def _unseal(self, obj: bytes, what: str) -> bytes:
        kid = sealing.object_kid(obj, what)
        return sealing.unseal(obj, self._identity_for(kid), what)

    def _stored_chunk_key(self, h: str) -> str:
        """The key chunk `h` is stored under on its own: its hash, or in a sealed store its
        keyed address (so the store never sees a plaintext hash)."""
        if self._sealer is None:
            return layout.chunk(h)
        return layout.chunk(sealing.address(self._sealer.need_address_key(), h))

    def _note_sealed(self, key: str, obj: bytes) -> None:
        self._sealed_objects[key] = (len(obj), blake3.blake3(obj).hexdigest(), sealing.object_kid(obj, key))

    def _save_sealed_chunk(self, h: str, data: bytes | memoryview, width: int, policy: Any) -> SavedChunk:
        """Encode, seal to this run's key and put under the keyed address. A chunk already
        there (dedup) is proved by decrypting when this process holds its run key, else
        (another run's, on a write-only host) by its prefix and exact sealed size; its
        ciphertext hash goes into this archive's companion either way."""
        self._start_run()
        key = self._stored_chunk_key(h)
        enc = self._codec.encode(data, width)
        want = sealing.sealed_size(len(enc.data))
        for _ in range(self.SAVE_ROUNDS):
            try:
                obj = self._store.get(key, max_size=want)
            except ObjectMissingError:
                obj = self._sealer.seal(enc.data)  # type: ignore[union-attr]
                if self._put(key, obj, policy):
                    self._note_sealed(key, obj)
                    return SavedChunk(len(enc.data), enc.codec, True)
                continue
            except ObjectTooLargeError as e:
                raise CorruptChunkError(h, f"stored sealed object is {e.size} bytes, more than the {want} expected; "
                                           f"repair it from a copy") from None
            kid = sealing.object_kid(obj, h)
            if len(obj) != want:
                raise CorruptChunkError(h, f"stored sealed object is {len(obj)} bytes, not {want}; repair it")
            if kid in self._sealer.run_keys or self._sealer.identities:  # type: ignore[union-attr]
                plain = sealing.unseal(obj, self._identity_for(kid), h)
                if plain != enc.data and not self._codec.matches(plain, data, h):
                    raise CorruptChunkError(h, "stored sealed object decrypts to other bytes; repair it")
            self._note_sealed(key, obj)
            return SavedChunk(len(enc.data), enc.codec, False)
        raise StoreError(f"chunk {h} kept changing in the store while it was being saved; re-run")

    def _read_sealed_chunk(self, ref: ChunkRef) -> bytes:
        want = sealing.sealed_size(ref.stored_size)
        try:
            obj = self._store.get(self._stored_chunk_key(ref.hash), max_size=want)
        except ObjectTooLargeError as e:
            raise CorruptChunkError(ref.hash, f"stored size {e.size} is more than the {want} expected") from None
        if len(obj) != want:
            raise CorruptChunkError(ref.hash, f"stored size {len(obj)} != {want} (sealed, recorded {ref.stored_size})")
        plain = self._unseal(obj, ref.hash)
        if len(plain) != ref.stored_size:
            raise CorruptChunkError(ref.hash, f"decrypted size {len(plain)} != recorded {ref.stored_size}")
        return self._decode_checked(plain, ref.hash, ref.length)

    def _sealed_chunk_sizes(self, hashes: Iterable[str]) -> dict[str, int]:
        """As chunk_sizes, by keyed address; each listed size mapped back to its plaintext
        (encoded) size, or -1 when no plaintext size seals to it (damage)."""
        by_addr = {sealing.address(self._sealer.need_address_key(), h): h for h in hashes}  # type: ignore[union-attr]
        out: dict[str, int] = {}
        for prefix in sorted({a[:2] for a in by_addr}):
            for info in self._store.list(layout.chunk_fanout(prefix)):
                a = layout.chunk_hash(info.key)
                if a in by_addr:
                    size = sealing.unsealed_size(info.size)
                    out[by_addr[a]] = -1 if size is None else size
        return out

    def _sealed_manifest_problem(self, mid: str, data: bytes) -> str | None:
        try:
            stored = self._get_manifest(layout.manifest(mid))
        except ObjectMissingError:
            return "manifest is missing from the store"
        except IdentityError:
            return None  # cannot be opened here: `verify --deep` checks its ciphertext hash instead
        except IntegrityError as e:
            return f"store copy of the manifest: {e}"
        return None if stored == data else "store copy of the manifest differs from its id"

    def _commit_sealed(self, m: Manifest, mid: str, data: bytes, policy: Any, sign_key: Any) -> None:
        """The sealed manifest object, then its public companion (every object of the archive
        with its stored size and ciphertext BLAKE3), so the archive can be audited, repaired
        and replicated without keys. A manifest already stored (a re-run) is kept."""
        self._start_run()
        key = layout.manifest(mid)
        obj = self._sealer.seal(data)  # type: ignore[union-attr]
        if self._put(key, obj, policy):
            self._note_sealed(key, obj)
        else:
            self._note_sealed(key, self._store.get(key, max_size=sealing.sealed_size(len(data))))
        objects = []
        for h in sorted(m.unique_chunks()):
            ck = self._stored_chunk_key(h)
            if ck not in self._sealed_objects:
                self._note_sealed(ck, self._store.get(ck, max_size=sealing.sealed_size(max_object_size(32 << 20))))
            objects.append([ck, *self._sealed_objects[ck]])
        objects.append([key, *self._sealed_objects[key]])
        doc: dict[str, Any] = {"format": "archiver-sealed-audit", "manifest": mid, "objects": sorted(objects),
                               "version": 1}
        if sign_key is not None:
            from manifests import signing
            body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            pub, sig = signing.sign_message(sign_key, b"archiver-sealed-audit-v1:" +
                                            blake3.blake3(body).hexdigest().encode())
            doc["signature"] = {"alg": "ed25519", "public_key": pub, "signature": sig}
        companion = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        self._put(layout.audit(mid), companion, policy)

    def _sealed_event(self, event: Event) -> Event:
        """The event as a sealed store shows it: chunk hashes replaced by their keyed addresses
        (dropped if this host has no address key), and details, problem lines and per-manifest
        first problems (names, labels, paths) sealed to this run's key as one age object in
        `details.sealed` (base64). Type, time, agent, outcome, counts and manifest ids stay
        readable, so the chain is checked and replayed without keys."""
        assert self._sealer is not None
        self._start_run()
        key = self._sealer.address_key

        def addr(hs: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(sealing.address(key, h) for h in hs if is_hash(h)) if key is not None else ()
        secret = json.dumps({"details": event.details, "first": {m.id: list(m.first) for m in event.manifests},
                             "problems": list(event.problems)}, sort_keys=True, default=str).encode()
        sealed = base64.b64encode(bytes(self._sealer.seal(secret))).decode()
        return dataclasses.replace(event, manifests=tuple(dataclasses.replace(m, first=()) for m in event.manifests),
                                   chunks_ok=addr(event.chunks_ok), chunks_failed=addr(event.chunks_failed),
                                   problems=(), details={"sealed": sealed})

    def require_identities(self) -> None:
        """Refuse (IdentityError, exit 2) before anything is written when a sealed store must be
        read and no custodian identity was given."""
        if self._sealer is not None and not self._sealer.identities:
            raise IdentityError(f"{self.url} is a sealed store: restoring or reading plaintext needs a custodian "
                                f"identity")

    def open_run_keys(self, mid: str) -> None:
        """Open every run key the archive's companion names, so a missing or foreign key is
        refused before a restore writes anything."""
        doc = self.companion(mid)
        for kid in sorted({o[3] for o in doc["objects"]}):
            self._identity_for(kid)

    def companion(self, mid: str) -> dict[str, Any]:
        """The public companion of a sealed manifest, parsed and bounds-checked (ManifestError if
        not one; its signature, if any, must verify)."""
        try:
            raw = self._store.get(layout.audit(mid), max_size=MAX_MANIFEST_BYTES)
        except ObjectMissingError:
            raise NotFoundError(f"sealed archive {mid} has no companion ({layout.audit(mid)})") from None
        try:
            doc = json.loads(raw)
            assert doc["format"] == "archiver-sealed-audit" and doc["manifest"] == mid
            for o in doc["objects"]:
                assert isinstance(o[0], str) and type(o[1]) is int and is_hash(o[2]) and len(o[3]) == 32
            assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"  # canonical
        except (ValueError, KeyError, TypeError, AssertionError, IndexError):
            raise ManifestError(f"companion of {mid} is malformed") from None
        sig = doc.get("signature")
        if sig is not None:
            from manifests import signing
            body = json.dumps({k: v for k, v in doc.items() if k != "signature"}, sort_keys=True,
                              separators=(",", ":")).encode()
            ok = isinstance(sig, dict) and signing.check_message(
                str(sig.get("public_key")), str(sig.get("signature")),
                b"archiver-sealed-audit-v1:" + blake3.blake3(body).hexdigest().encode())
            if not ok:
                raise IntegrityError(f"companion of {mid} has a bad signature")
        return doc

    def companion_ids(self) -> list[str]:
        return sorted(mid for mid in (layout.audit_id(i.key) for i in self._store.list(layout.AUDITS)) if mid)

    def audit_object(self, key: str, size: int, b3: str) -> str | None:
        """Why the object under `key` is not the one a companion lists (re-hashing its
        ciphertext), or None if it is."""
        try:
            obj = self._store.get(key, max_size=size)
        except ObjectMissingError:
            return "object is missing"
        except ObjectTooLargeError as e:
            return f"stored size {e.size} != listed {size}"
        if len(obj) != size:
            return f"stored size {len(obj)} != listed {size}"
        if blake3.blake3(obj).hexdigest() != b3:
            return "ciphertext BLAKE3 differs from the companion's (bit rot or tampering)"
        return None

    def run_key_present(self, kid: str) -> bool:
        return next(iter(self._store.list(layout.run_keys_of(kid))), None) is not None

    def rotate_keys(self, add: list[str], remove: list[str]) -> dict[str, Any]:
        """Re-wrap every key object (the address key and each run key) to the new recipient
        set as new objects of the next generation, the set itself last (the commit point: the
        newest set wins). Chunk and manifest objects are never rewritten. Needs an identity
        that opens the current keys."""
        self.require_identities()
        gen, current = self._recipients()
        for r in add:
            sealing._recipient_bytes(r)
        new = sorted((set(current) | set(add)) - set(remove))
        if not new:
            raise InvalidOptionError("remove", "would leave no recipient")
        unknown = sorted(set(remove) - set(current))
        if unknown:
            raise InvalidOptionError("remove", f"names a recipient the store does not have: {unknown[0]}")
        nxt = gen + 1
        assert self._sealer is not None and self._sealer.address_key is not None
        self._put_exact_new(layout.address_key(nxt), sealing.wrap(self._sealer.address_key.hex().encode() + b"\n",
                                                                  new))
        kids = sorted({k for k in (layout.run_key_id(i.key) for i in self._store.list(layout.RUN_KEYS)) if k})
        for kid in kids:
            ident = self._identity_for(kid)
            self._put_exact_new(layout.run_key(kid, nxt), sealing.wrap((str(ident) + "\n").encode(), new))
        if not self._store.put_if_absent(layout.key_set(nxt), sealing.recipient_set(nxt, new, self._sealer.address_key)):
            raise StoreError(f"another rotation wrote key generation {nxt} meanwhile; re-run")
        return {"generation": nxt, "recipients": new, "run_keys": len(kids)}

    def _put_exact_new(self, key: str, data: bytes) -> None:
        if not self._store.put_if_absent(key, data):
            raise StoreError(f"{key} already exists: another rotation is under way; re-run")

    # -- sealed stores: copies without keys (archiver.sealcopy) ----------------------------------
    def marker_object(self) -> bytes:
        from archiver.stores import MAX_MARKER_BYTES
        return self._store.get(layout.MARKER, max_size=MAX_MARKER_BYTES)

    def proved_sealed_object(self, key: str, size: int, b3: str) -> bytes:
        """The object under `key`, returned only if it is exactly the one a companion lists
        (size and ciphertext BLAKE3). Raises ObjectMissingError or CorruptChunkError."""
        try:
            obj = self._store.get(key, max_size=size)
        except ObjectTooLargeError as e:
            raise CorruptChunkError(key, f"stored size {e.size} != listed {size}") from None
        if len(obj) != size:
            raise CorruptChunkError(key, f"stored size {len(obj)} != listed {size}")
        if blake3.blake3(obj).hexdigest() != b3:
            raise CorruptChunkError(key, "ciphertext BLAKE3 differs from the companion's")
        return obj

    def put_sealed_object(self, key: str, data: bytes, policy: Any = None) -> bool:
        """Store a proved sealed object (or companion, or key object) under the same key as in
        the source; an object already there must be these exact bytes."""
        return self._put_exact(key, data, key, policy)

    def key_object_keys(self) -> list[str]:
        return sorted(i.key for i in self._store.list(layout.KEYS) if layout.key_generation(i.key) is not None)

    def key_object(self, key: str) -> bytes:
        return self._store.get(key, max_size=sealing.MAX_KEY_OBJECT_BYTES)

    def companion_object(self, mid: str) -> bytes:
        """The companion's exact bytes, after `companion` parsed (and checked the signature of) them."""
        self.companion(mid)
        return self._store.get(layout.audit(mid), max_size=MAX_MANIFEST_BYTES)

    def heal_sealed_object(self, key: str, data: bytes, size: int, b3: str) -> str:
        """Heal one sealed object with bytes proved against the companion: see `_heal`."""
        def damage(stored: bytes) -> str | None:
            if len(stored) != size:
                return f"stored size {len(stored)} != listed {size}"
            return None if blake3.blake3(stored).hexdigest() == b3 else "ciphertext BLAKE3 differs"
        return self._heal(key, data, damage)


    # -- packs: small chunk objects stored together (archiver.packs) -----------------------------
    # Read requests joined into one when the bytes between two planned ranges are fewer than this.
    SPAN_GAP = 256 << 10
    # Spans and small objects fetched at once by a planned read (restore, deep verify).
    # (A whole pack of large objects, so one request reads it; at most four spans are cached.)
    SPAN_LIMIT = packs.LARGE_PACK_TARGET + packs.SMALL_OBJECT

    # A plain chunk this long or shorter is encoded by `Codec.encode_small` (same bytes as
    # encode_parts), its object at most PLAIN_HEAD bytes longer than the chunk.
    SMALL_PLAIN = SAMPLE_BYTES
    PLAIN_HEAD = HEADER.size + DESCRIPTOR.size

    def _save_fast(self, h: str, data: bytes | memoryview, width: int, policy: Any,
                   hints: ChunkHints | None = None) -> SavedChunk | None:
        """The paths that need no read before a write: a chunk already in a pack (proved by
        one whole read of that pack per process), a new small chunk (into the open pack), a
        new large chunk (one conditional PUT: If-None-Match makes it safe, so no HEAD or GET
        first). None: the chunk is held under its own key (or the PUT found the key taken),
        and the read -> prove -> write loop decides."""
        ps = self._packstate
        with ps.lock:
            pending = ps.pending.get(h)
            # with a batch's hints, a chunk in no pack this process wrote or knows of, nor in a
            # recorded one (every new small file's), has no location to look up
            nowhere = hints is not None and h not in hints.packed and ps.store_map is None and \
                h not in ps.written and h not in ps.written_at
        if pending is not None:
            return SavedChunk(pending[0], pending[1], False)
        locs = self._pack_locations(h) if hints is None else \
            [] if nowhere else self._pack_locations_many([h], hints.packed).get(h, [])
        for loc in locs:
            codec = self._proved_in_pack(loc).get(h)
            if codec is not None:
                return SavedChunk(loc.stored_size, codec, False)
        if not locs and self._catalog is not None and \
                (h in hints.known if hints is not None else self._catalog.known_chunk(h) is not None):
            return None  # held under its own key (a large chunk, or stored before packs): prove it
        if not width and type(data) is bytes and len(data) <= self.SMALL_PLAIN and type(self._codec) is Codec and \
                packs.is_small(len(data) + self.PLAIN_HEAD, self._pack_below):  # a small file's chunk: packed, fewer steps
            obj, codec = self._codec.encode_small(data)
            self._add_to_pack(h, obj, len(data), codec, policy)
            return SavedChunk(len(obj), codec, True, repaired=bool(locs))
        parts = self._codec.encode_parts(data, width)  # valid until this thread's next codec call
        if packs.is_small(parts.size, self._pack_below):
            enc = parts.join()
            self._add_to_pack(h, enc.data, len(data), enc.codec, policy)
            return SavedChunk(len(enc.data), enc.codec, True, repaired=bool(locs))
        if self._put_parts(layout.chunk(h), parts, policy):
            return SavedChunk(parts.size, parts.codec, True)
        return None  # the key is taken: prove what it holds

    def _put_parts(self, key: str, parts: EncodedParts, policy: Any) -> bool:
        """`_put` of an object not yet joined: a store that writes pieces (LocalStore's
        put_parts_if_absent) takes them as they are, saving a copy of every stored byte;
        any other store, or a write policy, gets the joined object."""
        put_parts = getattr(self._store, "put_parts_if_absent", None)
        if put_parts is None or not _plain_write(policy):
            return self._put(key, parts.join().data, policy)
        return put_parts(key, parts.parts)

    def _pending(self, h: str) -> bool:
        """Whether `h` sits in a pack not yet durable (it takes that pack's write policy)."""
        with self._packstate.lock:
            return h in self._packstate.pending

    def _add_to_pack(self, h: str, obj: bytes, length: int, codec: str, policy: Any) -> None:
        """Append one encoded chunk object to the open pack (one pack per write policy); a
        full pack is written now, by this worker."""
        ps = self._packstate
        todo = []
        target = packs.pack_target(len(obj))
        large = len(obj) >= packs.SMALL_OBJECT  # large objects fill packs of their own
        with ps.lock:
            if h in ps.pending:
                return
            builder, open_policy = (ps.open_large, ps.open_large_policy) if large else (ps.open, ps.open_policy)
            if builder is not None and open_policy is not policy:
                todo.append((builder, open_policy))
                builder = None
            if builder is None:
                builder = packs.PackBuilder(target=target)
            builder.add(h, obj, length)
            ps.pending[h] = (len(obj), codec)
            if builder.full:
                todo.append((builder, policy))
                builder = None
            if large:
                ps.open_large, ps.open_large_policy = builder, policy
            else:
                ps.open, ps.open_policy = builder, policy
            ps.in_flight += len(todo)
        for builder, pol in todo:
            self._write_pack_guarded(builder, pol)

    def _write_pack_guarded(self, builder: packs.PackBuilder, policy: Any) -> None:
        """Write one pack; a failure is kept for `flush_packs` to raise on the committing thread."""
        ps = self._packstate
        hashes = [e[0] for e in builder.entries]
        try:
            index, iid = self._write_pack(builder, policy)
        except BaseException as e:  # noqa: BLE001 - re-raised by flush_packs
            with ps.lock:
                ps.errors.append(e)
                for h in hashes:
                    ps.pending.pop(h, None)
                ps.in_flight -= 1
                ps.idle.notify_all()
            return
        with ps.lock:
            # where each chunk went, as (index, id, entry number): a PackLocation is made only
            # for a chunk asked for again (few are); the codec each chunk was encoded with
            # (its round trip checked then) is the one `describe` would read from its header
            proved: dict[str, str] = {}
            for i, h in enumerate(hashes):
                ps.written_at.setdefault(h, []).append((index, iid, i))
                held = ps.pending.pop(h, None)
                proved[h] = held[1] if held is not None else describe(builder.parts[i])
            ps.proved[index.pack] = proved
            ps.unrecorded.append(index)
            ps.in_flight -= 1
            ps.idle.notify_all()

    def _write_pack(self, builder: packs.PackBuilder, policy: Any) -> tuple[packs.PackIndex, str]:
        """Put the pack (with the archive's lock and storage class), then its index (hot,
        locked like metadata). A pack already present under the same id must hash to it."""
        data, index = builder.close()
        key = layout.pack(index.pack)
        if not self._put(key, data, policy):
            try:
                held = self._store.get(key, max_size=len(data))
            except ObjectTooLargeError:
                held = b""
            if blake3.blake3(held).hexdigest() != index.pack:
                raise IntegrityError(f"{self.url} holds a damaged object under {key}; run repair")
            self._ensure_lock(key, policy)
        raw = index.to_json()
        iid = index.__dict__["id"] = blake3.blake3(raw).hexdigest()  # PackIndex.id's cache: the same hash of the same bytes
        hot = policy.for_metadata() if policy is not None else None
        self._put_exact(layout.pack_index(iid), raw, f"pack index {iid}", hot)
        return index, iid

    def flush_packs(self) -> int:
        """Write the open pack, wait for packs in flight, record them in the catalog (the
        store's index objects stay the truth). Raises the first failure of any pack write:
        then nothing naming its chunks may be committed. Returns how many packs were written."""
        done = self.task_packs()
        if not done:  # rows still going in behind (flush_packs_behind) are waited for by the commit's record
            return 0
        self._await_pack_rows()  # theirs first: the catalog records packs in the order they were written
        self._record_pack_rows(done)
        return len(done)

    def _record_pack_rows(self, done: list[packs.PackIndex], apart: bool = False) -> None:
        """The catalog rows of packs written and waited for, in one transaction (one commit,
        one WAL fsync), `apart` through a connection of their own; a read-only or locked
        catalog is skipped."""
        record = self._catalog.record_packs_apart if apart else self._catalog.record_packs
        try:
            with translated():
                record([(index.pack, index.size, index.id,
                         [(e.hash, e.offset, e.stored_size, e.length) for e in index.entries]) for index in done])
        except (CatalogReadOnlyError, CatalogLockedError):
            pass  # the store holds the indexes; a rebuild records them

    def flush_packs_behind(self) -> int:
        """`flush_packs` whose catalog rows go in on a thread of their own: the packs are
        durable when this returns (a write failure is raised here), and their rows, a cache
        of the store's index objects, are recorded while the caller goes on (an archive after
        its worker processes: the LIST proof of their chunks, the catalog sync, the trees).
        A commit waits for them (and raises what recording them raised) just before it records
        its manifest in the catalog, so they overlap the commit's store writes too; a
        `flush_packs` with packs of its own to record, and `close`, wait for them first. The
        rows' one transaction is flush_packs' (through a connection of its own) and holds no
        store write."""
        self._await_pack_rows()
        done = self.task_packs()
        if not done:
            return 0
        rows: Future[None] = Future()

        def record() -> None:
            try:
                self._record_pack_rows(done, apart=True)
            except BaseException as e:  # handed to the caller by _await_pack_rows
                rows.set_exception(e)
            else:
                rows.set_result(None)
        thread = threading.Thread(target=record, name="pack-rows", daemon=True)
        self._pack_rows = rows
        try:
            thread.start()
        except BaseException:
            if thread.ident is None:  # never started (no thread to be had): nothing for close to wait for
                self._pack_rows = None
            raise
        return len(done)

    def _await_pack_rows(self, raise_error: bool = True) -> None:
        """Wait for the rows `flush_packs_behind` is recording, if any; raise its error."""
        rows = self._pack_rows
        if rows is None:
            return
        # the thread is forgotten only once it is done: a wait cut short (Ctrl-C during the
        # commit's) leaves it for close to wait for, not running on past the catalog's close
        error = rows.exception()
        self._pack_rows = None
        if error is not None and raise_error:
            raise error

    def write_open_packs(self) -> None:
        """The store half of `flush_packs`: write the open packs and wait for packs in flight.
        Failures are kept for `flush_packs` to raise, and nothing is recorded in the catalog,
        so a commit runs this on a thread of its own while it builds and proves its trees."""
        ps = self._packstate
        with ps.lock:
            todo = [(b, pol) for b, pol in ((ps.open, ps.open_policy), (ps.open_large, ps.open_large_policy))
                    if b is not None]
            ps.open = ps.open_large = None
            ps.in_flight += len(todo)
        for builder, policy in todo:
            self._write_pack_guarded(builder, policy)
        with ps.lock:
            while ps.in_flight:
                ps.idle.wait()

    def task_packs(self) -> list[packs.PackIndex]:
        """A worker process's end of task (archiver.procfiles): write the open packs, wait for
        packs in flight, and hand back the indexes written since the last call without
        recording them (its catalog is read-only: the driver records them, `adopt_packs`).
        Raises the first failure of a pack write; either way no open pack is left behind.
        `flush_packs` is this, then the catalog rows."""
        ps = self._packstate
        self.write_open_packs()
        with ps.lock:
            errors, ps.errors = ps.errors, []
            done, ps.unrecorded = ps.unrecorded, []
        if errors:
            raise errors[0]
        return done

    def adopt_packs(self, indexes: Iterable[packs.PackIndex]) -> dict[str, int]:
        """Packs a worker process of this run wrote and waited for (`task_packs`): recorded in
        the catalog at the next `flush_packs`, and found by this process's dedup and presence
        checks (`chunk_presence` still proves each by LIST). Not marked proved: a chunk of one
        is read back before this process builds on it.

        Returns the chunks (hash -> stored size) a pack of this run already held when adopted:
        two workers share no dedup state, so the same small content in two tasks running at
        once is packed by both. The second copy is harmless (a chunk may lie in several packs)
        but is not new: the caller takes it out of its counts."""
        ps = self._packstate
        again: dict[str, int] = {}
        with ps.lock:
            for index in indexes:
                iid = index.id
                for i, e in enumerate(index.entries):
                    if e.hash in ps.written_at or e.hash in ps.written or e.hash in ps.pending:
                        again[e.hash] = e.stored_size
                    ps.written_at.setdefault(e.hash, []).append((index, iid, i))
                ps.unrecorded.append(index)
                self._adopted.append((index, iid))
        return again

    def _adopted_sizes(self, hashes: Iterable[str]) -> dict[str, int]:
        """`chunk_sizes` when worker processes wrote packs in this run: a chunk of an adopted
        pack is held at its indexed size if that pack is in the store at its size and its index
        is too (by LIST, or a HEAD each: `_present`), found once per pack rather than once per
        chunk; every other chunk as `chunk_presence` finds it."""
        wanted = set(hashes)
        with self._packstate.lock:
            adopted = list(self._adopted)
        keys = sorted({layout.pack(index.pack) for index, _ in adopted} |
                      {layout.pack_index(iid) for _, iid in adopted})
        held = dict(zip(keys, self._present(keys)))
        sizes: dict[str, int] = {}
        for index, iid in adopted:
            info = held[layout.pack(index.pack)]
            if info is None or info.size != index.size or held[layout.pack_index(iid)] is None:
                continue
            for e in index.entries:
                if e.hash in wanted:
                    sizes.setdefault(e.hash, e.stored_size)
        rest = [h for h in wanted if h not in sizes]
        if rest:
            sizes.update(self.chunk_presence(rest)[0])
        return sizes

    def _pack_locations(self, h: str) -> list[PackLocation]:
        return self._pack_locations_many([h]).get(h, [])

    def _pack_locations_many(self, hashes: Iterable[str],
                             recorded: dict[str, list[tuple[str, int, int, int, int, str]]] | None = None
                             ) -> dict[str, list[PackLocation]]:
        """Where each of `hashes` lies in a pack: packs this process wrote, then the catalog's
        cache of the indexes (`recorded`: its rows, asked already for a batch), then (if
        loaded) the store's own indexes."""
        hashes = list(hashes)
        ps = self._packstate
        out: dict[str, list[PackLocation]] = {}
        with ps.lock:
            if ps.written or ps.written_at:  # packs this process wrote (none in a restore or verify)
                for h in hashes:
                    if h in ps.written:
                        out[h] = list(ps.written[h])
                    for index, iid, i in ps.written_at.get(h, ()):
                        e = index.entries[i]
                        out.setdefault(h, []).append(PackLocation(index.pack, e.offset, e.stored_size, e.length,
                                                                  index.size, iid))
            store_map = ps.store_map
        if recorded is not None:
            known = {h: recorded[h] for h in hashes if h in recorded}
        else:
            known = self._catalog.pack_locations(hashes) if self._catalog is not None else {}  # a worker: none
        for h, rows in known.items():
            have = out.get(h)
            if have is None:
                out[h] = [PackLocation(*r) for r in rows]
            else:
                have += [PackLocation(*r) for r in rows if all(r[0] != x.pack for x in have)]
        if store_map is not None:
            for h in hashes:
                for loc in store_map.get(h, ()):
                    have = out.setdefault(h, [])
                    if all(loc.pack != x.pack for x in have):
                        have.append(loc)
        return out

    def chunk_hints(self, hashes: Iterable[str]) -> ChunkHints | None:
        """The catalog's pack locations and known chunks of a batch, in two queries, for
        `save_chunk(hints=...)` of each (None without a catalog or for a sealed store)."""
        if self._catalog is None or self._sealer is not None:
            return None
        wanted = list(dict.fromkeys(hashes))
        with translated():
            return ChunkHints(self._catalog.pack_locations(wanted), frozenset(self._catalog.known_chunks(wanted)))

    def _chunk_key(self, h: str) -> str:
        """The object a chunk's bytes live in: its pack, or its own key (sealed: its address)."""
        locs = self._pack_locations(h) if self._sealer is None else []  # sealed stores write no packs
        return layout.pack(locs[0].pack) if locs else self._stored_chunk_key(h)

    def _store_pack_map(self, refresh: bool = False) -> dict[str, list[PackLocation]]:
        """Every pack index the store holds (LIST + one GET each, re-hashed), once per process
        (again with `refresh`): the truth when the catalog has not recorded a pack (another
        writer, a fresh catalog, a worker that has no catalog)."""
        ps = self._packstate
        with ps.lock:
            if ps.store_map is not None and not refresh:
                return ps.store_map
        found: dict[str, list[PackLocation]] = {}
        for iid, index, _err in self._iter_pack_indexes():
            if index is not None:
                for h, loc in packs.locations(index, iid):
                    found.setdefault(h, []).append(loc)
        with ps.lock:
            ps.store_map = found
        return found

    def _iter_pack_indexes(self) -> Iterator[tuple[str, packs.PackIndex | None, str | None]]:
        """(id, index or None, why not) for every index object in the store."""
        for info in self._store.list(layout.PACK_INDEXES):
            iid = layout.pack_index_id(info.key)
            if iid is None:
                continue
            try:
                yield iid, packs.parse_index(self._store.get(info.key, max_size=packs.MAX_INDEX_BYTES), iid), None
            except (packs.PackFormatError, IntegrityError, ObjectMissingError) as e:
                yield iid, None, str(e)

    def _rebuild_packs(self, result: RebuildResult) -> None:
        """Record every good pack index of the store in the catalog; report bad ones."""
        for iid, index, why in self._iter_pack_indexes():
            if index is None:
                result.problems.append(Problem("", "pack-index", f"pack index {iid}: {why}"))
                continue
            with translated():
                if self._catalog.record_pack(index.pack, index.size, iid,
                                             [(e.hash, e.offset, e.stored_size, e.length) for e in index.entries]):
                    result.packs += 1

    def _index_of(self, pack: str, index_id: str) -> list[tuple[str, int, int, int]]:
        """(hash, offset, stored_size, length) of a pack's chunks: the catalog's copy, else
        the store's index object (re-hashed)."""
        rows = self._catalog.pack_entries(pack) if self._catalog is not None else []
        if rows:
            return rows
        raw = self._store.get(layout.pack_index(index_id), max_size=packs.MAX_INDEX_BYTES)
        try:
            index = packs.parse_index(raw, index_id)
        except packs.PackFormatError as e:
            raise IntegrityError(f"pack index {index_id}: {e}") from None
        return [(e.hash, e.offset, e.stored_size, e.length) for e in index.entries]

    def _proved_in_pack(self, loc: PackLocation) -> dict[str, str]:
        """hash -> codec of the chunks of a pack that decode and hash right, from one whole
        read of the pack (once per process; a missing, cold or short pack proves nothing)."""
        ps = self._packstate
        with ps.lock:
            got = ps.proved.get(loc.pack)
        if got is not None:
            return got
        with ps.pack_lock(loc.pack):
            with ps.lock:
                got = ps.proved.get(loc.pack)
            if got is not None:
                return got
            got = {}
            try:
                data = self._store.get(layout.pack(loc.pack), max_size=loc.pack_size)
                entries = self._index_of(loc.pack, loc.index_id)
            except (IntegrityError, ObjectMissingError, ObjectColdError):
                data, entries = b"", []
            for h, offset, stored, length in entries:
                obj = data[offset:offset + stored]
                try:
                    if len(obj) == stored:
                        self._decode_checked(obj, h, length)
                        got[h] = describe(obj)
                except CorruptChunkError:
                    continue
            with ps.lock:
                ps.proved[loc.pack] = got
        return got

    def _packed_read(self, ref: ChunkRef) -> tuple[bytes, bytes] | None:
        """(object, decoded bytes) of a packed chunk, from the first of its packs whose range
        proves good; None if no index places it in a pack. Errors name the pack and range."""
        locs = self._planned_locations(ref.hash) or self._pack_locations(ref.hash)
        if not locs:
            return None
        first: ArchiverError | None = None
        for loc in locs:
            try:
                if loc.stored_size != ref.stored_size:
                    raise CorruptChunkError(ref.hash, f"{loc.where()}: the pack index says {loc.stored_size} "
                                                      f"stored bytes, the manifest {ref.stored_size}")
                obj = self._pack_range(loc)
                try:
                    return obj, self._decode_checked(obj, ref.hash, ref.length)
                except CorruptChunkError as e:
                    raise CorruptChunkError(ref.hash, f"{e.reason} (in {loc.where()})") from None
            except ObjectMissingError:
                first = first or ObjectMissingError(layout.pack(loc.pack))
            except IntegrityError as e:
                first = first or (e if isinstance(e, CorruptChunkError) else
                                  CorruptChunkError(ref.hash, f"{e} (in {loc.where()})"))
        assert first is not None
        raise first

    def _planned_locations(self, h: str) -> list[PackLocation]:
        """The locations `plan_reads` already looked up for `h` (empty if it was not planned):
        a restore or deep verify of many small files asks the catalog once, not once per chunk."""
        with self._packstate.lock:
            return list(self._packstate.planned_locs.get(h, ()))

    def _pack_range(self, loc: PackLocation) -> bytes:
        """One chunk object's bytes from its pack: from a planned span (one request for many
        chunks, see `plan_reads`), else one ranged read of just its bytes."""
        span = self._span_for(loc)
        if span is not None:
            start, end = span
            data = self._span_bytes(loc.pack, start, end)
            return data[loc.offset - start:loc.offset - start + loc.stored_size]
        return self._read_range(layout.pack(loc.pack), loc.offset, loc.stored_size)

    def _span_bytes(self, pack: str, start: int, end: int) -> bytes:
        """The bytes of one planned span of `pack`, read with one request by whichever thread
        asks first and kept in a small shared cache (the oldest span is read again if needed)."""
        ps = self._packstate
        with ps.pack_lock(f"{pack}:{start}"):
            with ps.lock:
                data = ps.spans.get((pack, start))
            if data is None:
                data = self._read_range(layout.pack(pack), start, end - start)
                with ps.lock:
                    ps.spans[(pack, start)] = data
                    while len(ps.spans) > 4:  # bounded
                        ps.spans.pop(next(iter(ps.spans)))
        return data

    def read_chunks(self, refs: list[ChunkRef], *, views: bool = False) -> list[bytes | memoryview | ArchiverError]:
        """`try_read_chunk` of each of `refs`, in order: for a batch of small files read in
        pack order (restore, deep verify). A packed chunk that `plan_reads` placed in a
        planned span is cut from that span (fetched once for the batch, with one look at the
        plan for the whole batch rather than three locked look-ups per chunk), decoded and
        re-hashed here; any other chunk, and any whose bytes there do not prove good, goes
        through `try_read_chunk`, which tries its other locations and words the damage.
        `views`: a raw chunk cut from a span comes back as a read-only view of that span
        (re-hashed all the same) rather than a copy of its bytes, for a caller that only
        hashes them (deep verify): the copy was a memcpy under the GIL per chunk."""
        if self._sealer is not None:
            return [self.try_read_chunk(r) for r in refs]
        ps = self._packstate
        with ps.lock:
            locs = [ps.planned_locs.get(r.hash) for r in refs]
            plan = ps.plan  # replaced whole by plan_reads, never changed in place
        spans: dict[tuple[str, int], memoryview] = {}
        out: list[bytes | ArchiverError] = []
        if type(self._codec) is not Codec:
            decode = self._decode_checked
        elif views:
            decode = functools.partial(self._decode_checked_raw, view=True)
        else:
            decode = self._decode_checked_raw
        for ref, ls in zip(refs, locs):
            got: bytes | ArchiverError | None = None
            if ls and ls[0].stored_size == ref.stored_size:
                loc = ls[0]
                span = _span_of(plan.get(loc.pack, ()), loc.offset, loc.offset + loc.stored_size)
                if span is not None:
                    key = (loc.pack, span[0])
                    data = spans.get(key)
                    if data is None:
                        try:
                            data = spans[key] = memoryview(self._span_bytes(loc.pack, *span))
                        except (IntegrityError, ObjectMissingError, ObjectColdError):
                            data = None  # try_read_chunk below says what is wrong
                    obj = data[loc.offset - span[0]:loc.offset - span[0] + loc.stored_size] if data is not None \
                        else None
                    if obj is not None and len(obj) == loc.stored_size:
                        try:
                            got = decode(obj, ref.hash, ref.length)
                        except CorruptChunkError:
                            got = None
            out.append(got if got is not None else self.try_read_chunk(ref))
        return out

    def _span_for(self, loc: PackLocation) -> tuple[int, int] | None:
        with self._packstate.lock:
            spans = self._packstate.plan.get(loc.pack, ())  # replaced whole by plan_reads, never changed in place
        return _span_of(spans, loc.offset, loc.offset + loc.stored_size)

    def _read_range(self, key: str, start: int, length: int) -> bytes:
        if getattr(self._store, "supports_ranges", False):
            return self._store.get_range(key, start, length)  # type: ignore[attr-defined]
        data = self._store.get(key, max_size=packs.MAX_PACK_BYTES)
        if len(data) < start + length:
            raise IntegrityError(f"{key} is {len(data)} bytes, shorter than the {start + length} its index needs")
        return data[start:start + length]

    def plan_reads(self, refs: Iterable[ChunkRef]) -> int:
        """Say which chunks this run will read (a restore, a deep verify): the ranges each
        pack must yield are merged into spans (`packs.plan_spans`), each fetched with one
        request when its first chunk is read. A single-file restore plans only that file's
        ranges, so it fetches just those bytes. Returns how many spans were planned."""
        wanted = {r.hash for r in refs}
        ranges: dict[str, list[tuple[int, int]]] = defaultdict(list)
        at: dict[str, tuple[str, int]] = {}
        found = self._catalog_locations(wanted)
        if found is None:
            found = self._pack_locations_many(wanted)
        for h, locs in found.items():
            loc = locs[0]
            ranges[loc.pack].append((loc.offset, loc.offset + loc.stored_size))
            at[h] = (loc.pack, loc.offset)
        plan = {p: packs.plan_spans(r, self.SPAN_GAP, self.SPAN_LIMIT) for p, r in ranges.items()}
        with self._packstate.lock:
            self._packstate.plan = plan
            self._packstate.planned_at = at
            self._packstate.planned_locs = found
            self._packstate.planned_hashes = frozenset(wanted)
            self._packstate.spans.clear()
        return sum(len(v) for v in plan.values())

    def _catalog_locations(self, hashes: set[str]) -> dict[str, list[PackLocation]] | None:
        """`_pack_locations_many(hashes)` when the catalog is its only source (this process
        wrote no pack and loaded no store index: a restore or a deep verify), from one
        statement's flat rows (`Catalog.pack_location_rows`); None otherwise (the caller
        asks `_pack_locations_many`). The same lists, oldest pack first."""
        ps = self._packstate
        with ps.lock:
            if ps.written or ps.written_at or ps.store_map is not None or self._catalog is None:
                return None
        rows, packs = self._catalog.pack_location_rows(list(hashes))
        out: dict[str, list[PackLocation]] = {}
        get = out.get
        several: list[str] = []  # chunks in more than one pack (a row per (hash, pack): no pack twice)
        for h, pack, offset, stored, length in rows:
            p = packs.get(pack)
            if p is None:
                continue
            loc = PackLocation(pack, offset, stored, length, p[1], p[2])
            have = get(h)
            if have is None:
                out[h] = [loc]
            else:
                have.append(loc)
                several.append(h)
        for h in several:  # oldest pack first, as the catalog lists them
            out[h].sort(key=lambda x: packs[x.pack][0])
        return out

    def pack_positions(self, hashes: Iterable[str]) -> dict[str, tuple[str, int]]:
        """(pack, offset) of each packed chunk of `hashes` (its first location): callers read
        in this order, so each planned span is fetched once while it is in the bounded span
        cache, rather than again for every chunk when files come in path order."""
        hashes = list(hashes)
        with self._packstate.lock:
            known = self._packstate.planned_at  # what plan_reads looked up already
            out = {h: known[h] for h in hashes if h in known}
        rest = [h for h in hashes if h not in out]
        if rest:
            out.update({h: (locs[0].pack, locs[0].offset)
                        for h, locs in self._pack_locations_many(rest).items() if locs})
        return out

    def chunk_presence(self, hashes: Iterable[str], *, planned: bool = False) -> tuple[dict[str, int], dict[str, str]]:
        """(stored size of each chunk the store holds, why each packed chunk that is not
        held is not). A packed chunk is held if its pack and index exist and the pack has
        the size its index records. Cost grows with the archive, not the store: objects are
        checked by HEAD each, or by LISTing only the prefixes they are under, whichever is
        fewer requests. A sealed store has no packs: sizes at the keyed addresses.
        `planned`: `plan_reads` has just looked these chunks' pack locations up (a deep
        verify): they are taken from its plan rather than looked up again."""
        if self._sealer is not None:
            return self._sealed_chunk_sizes(hashes), {}
        hashes = list(dict.fromkeys(hashes))
        if planned:
            with self._packstate.lock:
                seen, locs = self._packstate.planned_hashes, self._packstate.planned_locs
            located = {h: locs[h] for h in hashes if h in locs}  # read only here: no copy of each list
            unplanned = [h for h in hashes if h not in seen]
            if unplanned:
                located.update(self._pack_locations_many(unplanned))
        else:
            located = self._pack_locations_many(hashes)
        rest = [h for h in hashes if h not in located]
        sizes = self._own_chunk_sizes(rest)
        lost = [h for h in rest if h not in sizes]
        if lost:  # maybe packed by a writer this catalog has not recorded
            store_map = self._store_pack_map()
            located.update({h: store_map[h] for h in lost if h in store_map})
        # what is wrong with each (pack, size, index) the locations name, found once per pack, not per chunk
        triples = {(loc.pack, loc.pack_size, loc.index_id) for locs in located.values() for loc in locs}
        keys = sorted({layout.pack(p) for p, _n, _i in triples} | {layout.pack_index(i) for _p, _n, i in triples})
        held = dict(zip(keys, self._present(keys)))
        wrong: dict[tuple[str, int, str], str | None] = {}
        for pack, pack_size, iid in triples:
            pack_info, index_info = held[layout.pack(pack)], held[layout.pack_index(iid)]
            if pack_info is None:
                wrong[(pack, pack_size, iid)] = f"its pack {pack} is missing from the store"
            elif pack_info.size != pack_size:
                wrong[(pack, pack_size, iid)] = f"its pack {pack} is {pack_info.size} bytes, its index says {pack_size}"
            elif index_info is None:
                wrong[(pack, pack_size, iid)] = f"the index {iid} of its pack {pack} is missing"
            else:
                wrong[(pack, pack_size, iid)] = None
        notes: dict[str, str] = {}
        for h, locs in located.items():
            for loc in locs:
                why = wrong[(loc.pack, loc.pack_size, loc.index_id)]
                if why is None:
                    sizes[h] = loc.stored_size
                    notes.pop(h, None)
                    break
                notes.setdefault(h, why)
        return sizes, notes

    def _present(self, keys: list[str]) -> list[ObjectInfo | None]:
        """stat of each key, by the fewest requests (see `_listing`)."""
        found = self._listing(keys)
        return [found.get(k) for k in keys]

    def _listing(self, keys: list[str], need_class: bool = False) -> dict[str, ObjectInfo]:
        """The objects among `keys` the store holds, by whichever costs the fewest requests:
        one HEAD per key (grows with the archive), a LIST of each 2-hex prefix they lie
        under, or one LIST of each top-level kind (chunks/, packs/, packindex/); a LIST costs
        a page per 1000 objects, estimated from the catalog's counts."""
        if not keys:
            return {}
        chunks, npacks = self._catalog.object_counts() if self._catalog is not None else (0, 0)

        def held(prefix: str) -> int:
            return npacks if prefix.startswith((layout.PACKS, layout.PACK_INDEXES)) else chunks
        prefixes = sorted({k.rsplit("/", 1)[0] + "/" for k in keys})
        roots = sorted({k.split("/", 1)[0] + "/" for k in keys})
        by_prefix = sum(max(1, math.ceil(held(p) / 256 / 1000)) for p in prefixes)
        by_root = sum(max(1, math.ceil(held(r) / 1000)) for r in roots)
        wanted = set(keys)
        if len(keys) < min(by_prefix, by_root):
            state = getattr(self._store, "object_state", None) if need_class else None
            if state is not None:
                out: dict[str, ObjectInfo] = {}
                for k in keys:
                    st = state(k)
                    if st is not None:
                        out[k] = ObjectInfo(k, st.size, st.storage_class if st.storage_class != "STANDARD" else None)
                return out
            return {k: info for k, info in zip(keys, self._stat_many(keys)) if info is not None}
        found: dict[str, ObjectInfo] = {}
        for prefix in (roots if by_root <= by_prefix else prefixes):
            for info in self._store.list(prefix):
                if info.key in wanted:
                    found[info.key] = info
        return found

    def _stat_many(self, keys: list[str]) -> list[ObjectInfo | None]:
        if len(keys) <= 1:
            return [self._store.stat(k) for k in keys]
        with ThreadPoolExecutor(min(8, len(keys)), thread_name_prefix="stat") as pool:
            return list(pool.map(self._store.stat, keys))

    def _heal_packed(self, ref: ChunkRef, obj: bytes, locs: list[PackLocation]) -> str:
        """Heal a packed chunk with `obj` (proved by `chunk_object` of a copy). If its pack is
        present but damaged, the pack is rebuilt from its chunks that still prove good plus
        `obj`; if that rebuilds the exact bytes the pack is named after, the damaged pack is
        replaced (quarantined, conditional on its version, as `_heal`). Otherwise (the pack
        is missing, or holds other damage not yet healed) `obj` goes into a new pack, which
        readers find through its index. 'replaced', 'written' or 'intact'."""
        if len(obj) != ref.stored_size:
            raise IntegrityError(f"object given for chunk {ref.hash} is {len(obj)} bytes, not {ref.stored_size}")
        self._decode_checked(obj, ref.hash, ref.length)
        for loc in locs:
            key = layout.pack(loc.pack)
            try:
                held, version = self._read_for_proof(key, loc.pack_size)
            except ObjectMissingError:
                continue
            if held is None or len(held) != loc.pack_size:
                continue
            try:
                self._decode_checked(held[loc.offset:loc.offset + loc.stored_size], ref.hash, ref.length)
                return "intact"
            except CorruptChunkError:
                pass
            rebuilt = held[:loc.offset] + obj + held[loc.offset + loc.stored_size:]
            if blake3.blake3(rebuilt).hexdigest() == loc.pack and version is not None \
                    and getattr(self._store, "can_replace_damaged", False):
                if self._store.replace_damaged(key, rebuilt, version, layout.quarantined(key, self._quarantine_tag())):
                    again, _ = self._read_for_proof(key, loc.pack_size)
                    if again == rebuilt:
                        with self._packstate.lock:
                            self._packstate.proved.pop(loc.pack, None)
                        return "replaced"
        self._add_to_pack(ref.hash, obj, ref.length, describe(obj), None)
        self.flush_packs()
        return "written"

    def recorded_file_count(self, mids: list[str]) -> int:
        """How many files the catalog says manifests `mids` hold (0 without a catalog): a
        cheap size of a verify to come, before any manifest is loaded."""
        return 0 if self._catalog is None else self._catalog.file_count(list(mids))

    def early_spans(self, mids: list[str], max_length: int) -> list[tuple[str, int, int, list[tuple[str, int, int, int]]]]:
        """The spans (pack, start, end, its chunks as (hash, offset, stored_size, length)) that
        hold the packed chunks of at most `max_length` bytes the catalog says manifests `mids`
        name, each chunk at its oldest pack (where `plan_reads` reads it), spans merged as
        `plan_reads` merges them, in (pack, offset) order: what a deep verify can read and
        prove before it has loaded those manifests. Empty for a sealed store (keyed addresses,
        no packs), a repository without a catalog, or a process that wrote packs (the rule of
        `_catalog_locations`). A hint: whoever reads these proves every chunk it uses."""
        if self._sealer is not None or self._catalog is None:
            return []
        ps = self._packstate
        with ps.lock:
            if ps.written or ps.written_at or ps.store_map is not None:
                return []
        rows, known = self._catalog.archive_pack_rows(list(mids), max_length)
        first: dict[str, tuple[int, tuple[str, str, int, int, int]]] = {}
        for row in rows:
            p = known.get(row[1])
            if p is not None and (row[0] not in first or p[0] < first[row[0]][0]):
                first[row[0]] = (p[0], row)
        by_pack: dict[str, list[tuple[str, int, int, int]]] = defaultdict(list)
        for _rank, (h, pack, offset, stored, length) in first.values():
            by_pack[pack].append((h, offset, stored, length))
        out: list[tuple[str, int, int, list[tuple[str, int, int, int]]]] = []
        for pack in sorted(by_pack):
            chunks = sorted(by_pack[pack], key=lambda c: c[1])
            spans = packs.plan_spans([(o, o + n) for _h, o, n, _l in chunks], self.SPAN_GAP, self.SPAN_LIMIT)
            i = 0
            for start, end in spans:  # both sorted by offset: each chunk lies in the span it reaches
                j = i
                while j < len(chunks) and chunks[j][1] + chunks[j][2] <= end:
                    j += 1
                out.append((pack, start, end, chunks[i:j]))
                i = j
        return out

    def proved_span(self, pack: str, start: int, end: int, chunks: list[tuple[str, int, int, int]]
                    ) -> Iterator[tuple[str, int, int, bytes | memoryview]]:
        """(hash, stored_size, length, decoded bytes) of each of `chunks` (one span of
        `early_spans`) whose bytes, read with one request, decode and re-hash to its hash; a
        raw chunk comes back as a read-only view of the span (hashed in place, not copied). A
        chunk that does not prove, or a span that cannot be read, is left out: the caller
        reads it again the usual way (`read_chunks`, `try_read_chunk`), which words the damage."""
        try:
            data = memoryview(self._read_range(layout.pack(pack), start, end - start))
        except (IntegrityError, ObjectMissingError, ObjectColdError):
            return
        decode = self._decode_checked if type(self._codec) is not Codec else \
            functools.partial(self._decode_checked_raw, view=True)
        for h, offset, stored, length in chunks:
            obj = data[offset - start:offset - start + stored]
            if len(obj) != stored:
                continue
            try:
                got = decode(obj, h, length)
            except CorruptChunkError:
                continue
            yield h, stored, length, got


def _span_of(spans: list[tuple[int, int]] | tuple, start: int, end: int) -> tuple[int, int] | None:
    """The planned span (sorted, disjoint) that holds bytes [start, end), if any."""
    i = bisect.bisect_right(spans, (start, math.inf)) - 1
    if i >= 0 and spans[i][0] <= start and end <= spans[i][1]:
        return spans[i]
    return None


def _parents_first(parents: dict[str, str | None]) -> list[str]:
    """Ids ordered so a manifest's parent (if present) comes before it: an iterative
    walk, so a chain of any length works (and a forged cycle ends the walk)."""
    order: list[str] = []
    placed: set[str] = set()
    for start in sorted(parents):
        path: list[str] = []
        on_path: set[str] = set()
        node: str | None = start
        while node is not None and node in parents and node not in placed and node not in on_path:
            path.append(node)
            on_path.add(node)
            node = parents[node]
        for n in reversed(path):
            placed.add(n)
            order.append(n)
    return order


def _event_problem(key: str, detail: str) -> Problem:
    return Problem("", "event", detail, path=key)
