"""A repository = a store (source of truth) + a catalog (index and ledger) + a codec.

This is the one door to both: callers ask it to save a chunk, stream a file's verified
bytes, commit a manifest or list what is stored; only this module knows the store's
key layout (`archiver.layout`) and talks to a `Store` or the `Catalog`. Every byte read
back is checked here the same way: stored size, decode bounds, BLAKE3 of the decoded
bytes, the whole file's digest, and for manifests the id."""
from __future__ import annotations

import secrets
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import blake3
import numpy as np

from archiver import layout
from archiver.codecs import Codec, Encoded, describe, max_object_size
from archiver.digests import FileDigest
from archiver.errors import (ArchiverError, CorruptChunkError, FileHashError, IntegrityError, ManifestError,
                             NotFoundError, ObjectMissingError, StoreError, translated)
from archiver.parallel import ordered_map
from archiver.problems import Outcome, Problem
from archiver.settings import Settings
from archiver.stores import Store, open_store
from archiver.stores.base import ObjectTooLargeError, ObjectVersion
from archiver.urls import normalise_endpoint
from manifests.catalog import AuditRow, Catalog, Chain, ManifestRow, check_recordable
from manifests.model import MAX_MANIFEST_BYTES, ChunkRef, Entry, Manifest, is_hash, manifest_id, parse_manifest
from manifests.paths import check_paths

# A signature object is ~250 bytes of JSON; anything far larger is not one.
MAX_SIGNATURE_BYTES = 64 * 1024
# A rebuild records manifests in transactions of at most this many manifests or bytes:
# few fsyncs, a write lock held only briefly, and memory bounded by one batch.
REBUILD_BATCH_COUNT = 256
REBUILD_BATCH_BYTES = 8 << 20


@dataclass(frozen=True)
class SavedChunk:
    """What the store holds for one chunk after `save_chunk`."""

    stored_size: int
    codec: str
    written: bool  # False: it was already there (and was proved or trusted)
    repaired: bool = False  # True: the store held a damaged object here, replaced from the source bytes


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


class Repository:
    def __init__(self, store: Store, catalog: Catalog, codec: Codec | None = None) -> None:
        self._store = store
        self._catalog = catalog
        self._codec = codec or Codec()

    @classmethod
    def open(cls, settings: Settings | None = None, *, create: bool = False, read_only: bool = False) -> "Repository":
        """Open (or with create=True, initialise) the store and its catalog. read_only=True
        opens the catalog without creating, migrating or locking it (list, show, verify):
        it works on a read-only catalog, and the few writes such a command makes (verify's
        audit rows) are tried on their own and may raise CatalogReadOnlyError or
        CatalogLockedError. The catalog is bound to the store's URL and S3 endpoint."""
        s = settings or Settings.resolve()
        st = open_store(s.store_url, create=create, s3_options=s.s3)
        # the endpoint the client really uses, if the settings could not see it (an AWS config file)
        endpoint = s.endpoint or normalise_endpoint(getattr(st, "endpoint", None))
        with translated():
            return cls(st, Catalog(s.catalog_path, s.store_url, endpoint=endpoint, read_only=read_only))

    @property
    def url(self) -> str:
        return self._store.url

    def close(self) -> None:
        self._catalog.close()

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
        """The catalog's copy if it has one (re-checked against the id), else the store's."""
        if self._catalog.has_manifest(mid):
            with translated():
                return self._catalog.load_manifest(mid)
        return self.fetch_manifest(mid)

    def fetch_manifest(self, mid: str) -> Manifest:
        """The store's copy, accepted only if its bytes hash to `mid`."""
        try:
            data = self._get_manifest(layout.manifest(mid))
        except ObjectMissingError:
            raise NotFoundError(f"manifest {mid} is not in the store") from None
        with translated():
            return parse_manifest(data, expected_id=mid)

    def _get_manifest(self, key: str) -> bytes:
        """A manifest object's bytes, refused unread if larger than a manifest may be."""
        try:
            return self._store.get(key, max_size=MAX_MANIFEST_BYTES)
        except ObjectTooLargeError as e:
            raise ManifestError(f"manifest too large: {e}") from None

    def manifest_copy_problem(self, mid: str, m: Manifest) -> str | None:
        """Why the store's own copy of a manifest is not the manifest `m`, or None."""
        data = m.canonical_json()
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
                        details: dict[str, Any] | None = None) -> Committed:
        """Store the manifest (every chunk it names must already be durable), sign it, and
        record it in the catalog with an 'archive' audit entry. Never overwrites: an object
        already under the same id must be byte-identical, else the store holds a forgery.
        The bytes are first parsed with the reader's own checks and must read back as `m`:
        nothing that `show`, `verify`, `restore` or a catalog rebuild would refuse or read
        differently is ever stored (ManifestError)."""
        try:
            data = m.canonical_json()
        except (TypeError, ValueError) as e:  # e.g. meta keys of mixed types, bytes values
            raise ManifestError(f"malformed manifest: cannot be written as JSON ({e})") from None
        mid = manifest_id(data)
        with translated():
            if parse_manifest(data, expected_id=mid).to_dict() != m.to_dict():
                raise ManifestError("malformed manifest: it does not read back as the manifest given")
        key = layout.manifest(mid)
        if not self._store.put_if_absent(key, data) and self._store.get(key) != data:
            raise ManifestError(f"store already holds a different object under manifest id {mid}")
        signer = self.sign_manifest(mid, sign_key).fingerprint if sign_key is not None else None
        event = None if details is None else {**details, "signed_by": signer}
        with translated():
            self._catalog.record_manifest(m, data, event_details=event)
        return Committed(mid, signer)

    def iter_manifests(self) -> Iterator[StoredManifest]:
        """Every manifest object in the store, each checked against its id; a bad one is
        yielded with its error instead of stopping the walk."""
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
    def sign_manifest(self, mid: str, key: Any) -> Any:
        """Store an Ed25519 signature of `mid` (deterministic, so a re-run writes the same bytes)."""
        from manifests import signing  # cryptography loads only when signatures are used
        sig = signing.sign(key, mid)
        skey = layout.signature(mid, sig.fingerprint)
        if not self._store.put_if_absent(skey, sig.to_json()):
            with translated():
                if not signing.check(signing.parse_signature(self._store.get(skey)), mid):
                    raise IntegrityError(f"store holds an invalid signature at {skey}")
        return sig

    def signature_problems(self, mid: str, trusted: list[bytes] | None = None) -> list[str]:
        """Every signature present must be valid; with `trusted` keys, one of them must have signed."""
        from manifests import signing
        problems: list[str] = []
        good: set[str] = set()
        for info in self._store.list(layout.signatures_of(mid)):
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
            parent = self.fetch_manifest(m.parent)
        except ArchiverError as e:
            return [f"broken chain: parent {m.parent[:16]}: {e}"]
        if parent.name != m.name:
            return [f"broken chain: parent {m.parent[:16]} is named {parent.name!r}, not {m.name!r}"]
        return []

    # -- chunks --------------------------------------------------------------------------------
    # Rounds of read -> prove -> write/replace before giving up on a chunk that keeps changing
    # under us (each lost round means another writer acted on it, so a few always suffice).
    SAVE_ROUNDS = 5

    def save_chunk(self, h: str, data: bytes | memoryview, width: int, *,
                   trust_verified_within: float | None = None) -> SavedChunk:
        """Store one chunk (BLAKE3 `h` of `data`) so that it is intact when this returns.

        A new chunk is encoded (with a round-trip check) and put_if_absent. A chunk already
        in the store is never taken on trust by default: it is read back, decoded and must
        equal `data` (the catalog and the object size prove nothing: a bit-rotted or
        swapped object has the right size, and a rebuilt catalog trusts whatever the store
        holds). If it is damaged it is repaired from `data` (`_repair`), so an archive never
        builds on rot. With `trust_verified_within` (seconds), a chunk that a deep verify
        found intact that recently, and whose stored size is still the recorded one, is
        trusted without being read."""
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
                if self._store.put_if_absent(key, enc.data):
                    return SavedChunk(len(enc.data), enc.codec, True, repaired)
                continue  # lost the race, or a lost PUT response: prove what is there now
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

    def _prove_existing(self, obj: bytes | None, version: ObjectVersion | None, h: str,
                        data: bytes | memoryview) -> str | None:
        """Why the stored object is not a valid encoding of `data`, or None if it is. The
        source bytes (which hash to `h`) are at hand, so the decoded bytes are compared with
        them directly: equal bytes hash to `h` too, and a compare is cheaper than BLAKE3."""
        if obj is None:
            size = version.size if version is not None else "?"
            return f"stored object is {size} bytes, more than any encoding of {len(data)} bytes"
        try:
            decoded = self._codec.decode(obj, len(data), h)  # bounded by len(data), malformation raises
        except CorruptChunkError as e:
            return e.reason
        if not self._same_bytes(decoded, data):
            return "decoded bytes do not match the chunk hash"
        return None

    @staticmethod
    def _same_bytes(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> bool:
        """Byte equality at memcmp speed whatever the buffer types (bytes == memoryview
        compares item by item, ~20x slower on a chunk)."""
        return np.array_equal(np.frombuffer(a, dtype=np.uint8), np.frombuffer(b, dtype=np.uint8))

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
        self.audit("repair", None, True, {"chunk": h, "reason": damage, "damaged_size": version.size,
                                          "stored_size": len(enc.data), "quarantined": quarantine,
                                          "store": self.url})
        return True

    @staticmethod
    def _quarantine_tag() -> str:
        """When, plus randomness, so two repairs of the same key never share a name."""
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(6)

    def read_chunk(self, ref: ChunkRef) -> bytes:
        """Fetch, bound-check, decode and re-hash one chunk. Raises CorruptChunkError or
        ObjectMissingError; never returns bytes that do not hash to `ref.hash`."""
        obj = self._get_chunk(ref.hash, ref.stored_size)  # never more than the manifest says
        if len(obj) != ref.stored_size:
            raise CorruptChunkError(ref.hash, f"stored size {len(obj)} != recorded {ref.stored_size}")
        return self._decode_checked(obj, ref.hash, ref.length)

    def _get_chunk(self, h: str, max_size: int) -> bytes:
        """A chunk object's bytes, refused unread if larger than `max_size`."""
        try:
            return self._store.get(layout.chunk(h), max_size=max_size)
        except ObjectTooLargeError as e:
            raise CorruptChunkError(h, f"stored size {e.size} is more than the {max_size} expected") from None

    def try_read_chunk(self, ref: ChunkRef) -> bytes | ArchiverError:
        """`read_chunk`, with damage (corrupt or missing) returned instead of raised; an
        unreachable store still raises."""
        try:
            return self.read_chunk(ref)
        except (IntegrityError, ObjectMissingError) as e:
            return e

    def _decode_checked(self, obj: bytes, h: str, length: int) -> bytes:
        data = self._codec.decode(obj, length, h)
        if blake3.blake3(data).hexdigest() != h:
            raise CorruptChunkError(h, "decoded bytes do not match the chunk hash")
        return data

    def stream_file(self, e: Entry, pool: ThreadPoolExecutor, window: int, *, keep_going: bool = False,
                    sha256: bool = True) -> Iterator[Piece]:
        """A file's chunks in order, each fetched in parallel, decoded and re-hashed; after the
        last one the whole file's digest is checked (FileHashError). Damage raises at its
        chunk, or with keep_going is yielded as a Piece with an error (and the whole-file
        check is skipped, since it cannot pass)."""
        digest = FileDigest(sha256)
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
        """Stored size of each of `hashes` that the store holds: one LIST per 2-hex prefix
        (pages of 1000 keys on S3), not one request per chunk."""
        by_prefix: dict[str, set[str]] = defaultdict(set)
        for h in hashes:
            by_prefix[h[:2]].add(h)
        sizes: dict[str, int] = {}
        for prefix in sorted(by_prefix):
            wanted = by_prefix[prefix]
            for info in self._store.list(layout.chunk_fanout(prefix)):
                h = layout.chunk_hash(info.key)
                if h in wanted:
                    sizes[h] = info.size
        return sizes

    def chunks_by_staleness(self, hashes: Iterable[str]) -> list[str]:
        return self._catalog.chunks_by_staleness(hashes)

    def record_chunk_checks(self, results: Iterable[tuple[str, bool]]) -> None:
        self._catalog.mark_verified(results)

    # -- catalog rebuild -------------------------------------------------------------------------
    def rebuild_catalog(self) -> RebuildResult:
        """Record every good manifest in the store, parents before children, and report
        each bad one instead of stopping. Streams: the first pass keeps only each id's
        parent; the second fetches (and re-checks) each manifest again and records it in
        small batches, so memory does not grow with the total size of the manifests.
        Times are unknown to a rebuild and recorded as such, never invented."""
        result = RebuildResult()
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
                data = self._store.get(layout.manifest(mid))
                with translated():
                    m = parse_manifest(data, expected_id=mid)
            except (IntegrityError, ObjectMissingError) as e:  # changed or vanished since the first pass
                result.problems.append(Problem(mid, "manifest", str(e)))
                continue
            batch.append((m, data))
            size += len(data)
            if len(batch) >= REBUILD_BATCH_COUNT or size >= REBUILD_BATCH_BYTES:
                self._record_batch(batch, result)
                batch, size = [], 0
        self._record_batch(batch, result)
        with translated():
            self._catalog.audit("rebuild", None, result.ok, {
                "manifests": result.manifests, "added": len(result.added), "problems": len(result.problems),
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

    def _record_batch(self, batch: list[tuple[Manifest, bytes]], result: RebuildResult) -> None:
        if not batch:
            return
        with translated(), self._catalog.write():
            for m, data in batch:
                try:
                    with translated():
                        if self._catalog.record_manifest(m, data, time_unknown=True):
                            result.added.append(m.id)
                except IntegrityError as e:  # only this manifest's savepoint was rolled back
                    result.problems.append(Problem(m.id, "manifest", str(e)))

    # -- retirement package: search and export (issue 11) ---------------------------------------
    def manifest_fields(self, mid: str) -> list[tuple[str, str]]:
        """The (key, value) pairs the catalog indexes for search for one manifest."""
        with translated():
            return self._catalog.fields_of(mid)

    def search(self, conditions: Iterable[Any], name: str | None = None) -> list[ManifestRow]:
        """Catalog rows meeting every condition (manifests.catalog.Condition), in list order."""
        with translated():
            return self._catalog.search(conditions, name)

    def signature_objects(self, mid: str) -> list[tuple[str, bytes]]:
        """(fingerprint, bytes) of each signature object stored for a manifest, each within
        its size cap; the caller checks them (signature_problems) before trusting them."""
        out = []
        for info in self._store.list(layout.signatures_of(mid)):
            data = self._store.get(info.key, max_size=MAX_SIGNATURE_BYTES)
            out.append((info.key.rsplit("/", 1)[-1].removesuffix(".json"), data))
        return sorted(out)


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
