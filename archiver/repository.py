"""A repository = a store (source of truth) + a catalog (index and ledger) + a codec.

Everything that reads a chunk or a manifest back goes through here, so every byte read
is checked the same way: stored size, decode bounds, BLAKE3 of the decoded bytes, and
for manifests the id."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import blake3

from archiver import config
from archiver.codecs import Codec, describe
from archiver.errors import (ArchiverError, CorruptChunkError, IntegrityError, ManifestError,
                             NotFoundError, ObjectMissingError)
from archiver.stores import Store, open_store
from manifests.catalog import Catalog
from manifests.model import ChunkRef, Manifest, chunk_key, is_hash, manifest_key, parse_manifest


@dataclass(frozen=True)
class StoredChunk:
    """What the store holds for one chunk hash (after checking it)."""

    stored_size: int
    codec: str


class Repository:
    def __init__(self, store: Store, catalog: Catalog, codec: Codec | None = None) -> None:
        self.store = store
        self.catalog = catalog
        self.codec = codec or Codec()

    @classmethod
    def open(cls, store: str | None = None, catalog: str | os.PathLike | None = None, *,
             create: bool = False) -> "Repository":
        """Open (or with create=True, initialise) the store and its catalog."""
        loc = config.resolve(store, catalog)
        st = open_store(loc.store_url, create=create)
        return cls(st, Catalog(loc.catalog_path, loc.store_url))

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> "Repository":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- manifests ---------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """Catalog lookup; a full id that only the store knows is accepted too."""
        try:
            return self.catalog.resolve(ref)
        except NotFoundError:
            if is_hash(ref.lower()) and self.store.exists(manifest_key(ref.lower())):
                return ref.lower()
            raise

    def load_manifest(self, mid: str) -> Manifest:
        if self.catalog.has_manifest(mid):
            return self.catalog.load_manifest(mid)
        return self.fetch_manifest(mid)

    def fetch_manifest(self, mid: str) -> Manifest:
        """The store's copy, accepted only if its bytes hash to `mid`."""
        try:
            data = self.store.get(manifest_key(mid))
        except ObjectMissingError:
            raise NotFoundError(f"manifest {mid} is not in the store") from None
        return parse_manifest(data, expected_id=mid)

    def write_manifest(self, m: Manifest) -> tuple[str, bytes]:
        """Put the manifest in the store (never overwriting). An existing object under the
        same id must be byte-identical, else the store holds a forged manifest."""
        data = m.canonical_json()
        mid = m.id
        if not self.store.put_if_absent(manifest_key(mid), data):
            if self.store.get(manifest_key(mid)) != data:
                raise ManifestError(f"store already holds a different object under manifest id {mid}")
        return mid, data

    # -- signatures and chain ------------------------------------------------------------------
    def sign_manifest(self, mid: str, key: Any) -> Any:
        """Store an Ed25519 signature of `mid` (deterministic, so a re-run writes the same bytes)."""
        from manifests import signing  # cryptography loads only when signatures are used
        sig = signing.sign(key, mid)
        skey = signing.signature_key(mid, sig.fingerprint)
        if not self.store.put_if_absent(skey, sig.to_json()):
            if not signing.check(signing.parse_signature(self.store.get(skey)), mid):
                raise IntegrityError(f"store holds an invalid signature at {skey}")
        return sig

    def signature_problems(self, mid: str, trusted: list[bytes] | None = None) -> list[str]:
        """Every signature present must be valid; with `trusted` keys, one of them must have signed."""
        from manifests import signing
        problems: list[str] = []
        good: set[str] = set()
        for info in self.store.list(signing.signature_prefix(mid)):
            try:
                sig = signing.parse_signature(self.store.get(info.key))
            except ArchiverError as e:
                problems.append(f"{info.key}: {e}")
                continue
            if signing.check(sig, mid) and info.key == signing.signature_key(mid, sig.fingerprint):
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

    # -- chunks ------------------------------------------------------------------------------
    def read_chunk(self, ref: ChunkRef) -> bytes:
        """Fetch, bound-check, decode and re-hash one chunk. Raises CorruptChunkError or
        ObjectMissingError; never returns bytes that do not hash to `ref.hash`."""
        obj = self.store.get(chunk_key(ref.hash))
        if len(obj) != ref.stored_size:
            raise CorruptChunkError(ref.hash, f"stored size {len(obj)} != recorded {ref.stored_size}")
        return self.decode_checked(obj, ref.hash, ref.length)

    def decode_checked(self, obj: bytes, h: str, length: int) -> bytes:
        data = self.codec.decode(obj, length, h)
        if blake3.blake3(data).hexdigest() != h:
            raise CorruptChunkError(h, "decoded bytes do not match the chunk hash")
        return data

    def check_existing_chunk(self, h: str, length: int) -> StoredChunk:
        """A chunk this run did not write: read it back and prove it before relying on it."""
        obj = self.store.get(chunk_key(h))
        self.decode_checked(obj, h, length)
        return StoredChunk(len(obj), describe(obj))

    # -- catalog ------------------------------------------------------------------------------
    def rebuild_catalog(self) -> list[str]:
        """Record every manifest found in the store (each checked against its id), parents
        before children so NAME resolves to the newest in each chain. Returns new ids."""
        found: dict[str, tuple[Manifest, bytes]] = {}
        for info in self.store.list("manifests/"):
            name = info.key[len("manifests/"):]
            if not name.endswith(".json") or not is_hash(name[:-5]):
                continue
            mid = name[:-5]
            data = self.store.get(info.key)
            found[mid] = (parse_manifest(data, expected_id=mid), data)
        order: list[str] = []
        placed: set[str] = set()

        def place(mid: str, trail: set[str]) -> None:
            if mid in placed or mid in trail:
                return
            parent = found[mid][0].parent
            if parent in found:
                place(parent, trail | {mid})
            placed.add(mid)
            order.append(mid)

        for mid in sorted(found):
            place(mid, set())
        import time
        base = time.time()
        added = []
        for i, mid in enumerate(order):
            m, data = found[mid]
            if self.catalog.record_manifest(m, data, at=base + i * 1e-3):
                added.append(mid)
        self.catalog.audit("rebuild", None, True, {"manifests": len(found), "added": len(added)})
        return added
