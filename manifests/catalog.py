"""The SQLite catalog: an index of manifests and a ledger of what was done.

The store is the source of truth; the catalog makes lookups cheap (which chunks exist,
which manifest a name or label points to) and keeps an append-only audit log of archive
and verify runs. Manifest rows, their file and chunk rows, and audit rows are immutable:
triggers abort UPDATE, DELETE and INSERT OR REPLACE, so a bug or a stray script cannot
quietly rewrite history. Writes use BEGIN IMMEDIATE with WAL and a long busy timeout so
two archive jobs can share one catalog."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import blake3
import sqlite_utils

from manifests.errors import AmbiguousReference, CatalogError, CatalogStoreMismatch, UnknownReference
from manifests.model import Manifest, parse_manifest

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 120_000

_IMMUTABLE = ("manifests", "files", "chunk_refs", "audit")


@dataclass(frozen=True)
class ManifestRow:
    id: str
    name: str
    label: str | None
    parent: str | None
    recorded_at: float
    file_count: int
    total_size: int
    stored_size: int

    def to_dict(self) -> dict[str, Any]:
        """The shape `archiver list --json` prints."""
        return {"id": self.id, "name": self.name, "label": self.label, "parent": self.parent,
                "recorded_at": self.recorded_at, "files": self.file_count, "size": self.total_size,
                "stored": self.stored_size}


@dataclass(frozen=True)
class AuditRow:
    seq: int
    at: float
    event: str
    manifest_id: str | None
    ok: bool
    details: dict[str, Any]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Catalog:
    """One catalog file, bound to one store URL (recorded on first use)."""

    def __init__(self, path: str | Path, store_url: str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = _connect(self.path)
        except (OSError, sqlite3.Error) as e:
            raise CatalogError(f"cannot open catalog {self.path}: {e}") from None
        self.db = sqlite_utils.Database(self._conn)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []  # one per worker thread, all closed by close()
        self._lock = threading.RLock()  # re-entrant: a nested write() joins the outer transaction
        self._init_schema()
        self._bind_store(store_url)

    # -- schema -----------------------------------------------------------------------------
    def _init_schema(self) -> None:
        with self.write():
            db = self.db
            if "info" not in db.table_names():
                db["info"].create({"key": str, "value": str}, pk="key")
                db["manifests"].create(
                    {"id": str, "name": str, "label": str, "parent": str, "recorded_at": float,
                     "file_count": int, "total_size": int, "stored_size": int, "json": bytes},
                    pk="id", not_null={"name", "json"},
                )
                db["manifests"].create_index(["name", "recorded_at"])
                db["files"].create(
                    {"manifest_id": str, "path": str, "type": str, "size": int, "mode": int,
                     "blake3": str, "sha256": str},
                    pk=("manifest_id", "path"), foreign_keys=[("manifest_id", "manifests", "id")],
                )
                db["chunk_refs"].create(
                    {"manifest_id": str, "path": str, "seq": int, "offset": int, "length": int, "hash": str},
                    pk=("manifest_id", "path", "seq"), foreign_keys=[("manifest_id", "manifests", "id")],
                )
                db["chunk_refs"].create_index(["hash"])
                db["chunks"].create({"hash": str, "stored_size": int, "codec": str, "first_seen": float}, pk="hash")
                db["chunk_checks"].create({"hash": str, "last_verified": float, "ok": int}, pk="hash")
                db["audit"].create(
                    {"seq": int, "at": float, "event": str, "manifest_id": str, "ok": int, "details": str},
                    pk="seq",
                )
                for table in _IMMUTABLE:
                    self._immutable(table)
                db["info"].insert({"key": "schema_version", "value": str(SCHEMA_VERSION)})

    def _immutable(self, table: str) -> None:
        pk = {"manifests": "id = NEW.id", "files": "manifest_id = NEW.manifest_id AND path = NEW.path",
              "chunk_refs": "manifest_id = NEW.manifest_id AND path = NEW.path AND seq = NEW.seq",
              "audit": "seq = NEW.seq"}[table]
        msg = f"{table} rows are immutable"
        for verb, when in (("UPDATE", ""), ("DELETE", ""),
                           ("INSERT", f"WHEN EXISTS (SELECT 1 FROM {table} WHERE {pk})")):
            self._conn.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} {when} "
                f"BEGIN SELECT RAISE(ABORT, '{msg}'); END")

    def _bind_store(self, url: str) -> None:
        row = self._conn.execute("SELECT value FROM info WHERE key='store'").fetchone()
        if row is None:
            with self.write():
                self._conn.execute("INSERT OR IGNORE INTO info(key, value) VALUES ('store', ?)", (url,))
            row = self._conn.execute("SELECT value FROM info WHERE key='store'").fetchone()
        if row[0] != url:
            raise CatalogStoreMismatch(str(self.path), row[0], url)
        self.store_url = url

    # -- transactions ------------------------------------------------------------------------
    def write(self) -> "_Txn":
        """BEGIN IMMEDIATE ... COMMIT: all or nothing, and waits (busy_timeout) for other writers."""
        return _Txn(self._conn, self._lock)

    def _reader(self) -> sqlite3.Connection:
        """Per-thread read connection so worker threads can ask `has_chunk` concurrently."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self._conn.close()

    # -- manifests ---------------------------------------------------------------------------
    def has_manifest(self, mid: str) -> bool:
        return self._conn.execute("SELECT 1 FROM manifests WHERE id=?", (mid,)).fetchone() is not None

    def record_manifest(self, m: Manifest, data: bytes, *, event_details: dict[str, Any] | None = None,
                        at: float | None = None) -> bool:
        """Record a manifest (already durably in the store) with its files, chunk references
        and known chunks in one transaction. Idempotent: False if it was already recorded."""
        mid = m.id
        now = time.time() if at is None else at
        with self.write():
            if self.has_manifest(mid):
                return False
            files = m.files
            self.db["manifests"].insert({
                "id": mid, "name": m.name, "label": m.label, "parent": m.parent, "recorded_at": now,
                "file_count": len(files), "total_size": m.total_size, "stored_size": m.stored_size, "json": data,
            })
            self.db["files"].insert_all(
                ({"manifest_id": mid, "path": e.path, "type": e.type, "size": e.size, "mode": e.mode,
                  "blake3": e.blake3, "sha256": e.sha256} for e in m.entries), batch_size=1000)
            self.db["chunk_refs"].insert_all(
                ({"manifest_id": mid, "path": e.path, "seq": i, "offset": c.offset, "length": c.length,
                  "hash": c.hash} for e in files for i, c in enumerate(e.chunks)), batch_size=1000)
            self._conn.executemany(
                "INSERT OR IGNORE INTO chunks(hash, stored_size, codec, first_seen) VALUES (?,?,?,?)",
                ((c.hash, c.stored_size, c.codec, now) for c in m.unique_chunks().values()))
            if event_details is not None:
                self._audit("archive", mid, True, event_details, now)
        return True

    def manifest_rows(self, name: str | None = None) -> list[ManifestRow]:
        sql = ("SELECT id, name, label, parent, recorded_at, file_count, total_size, stored_size FROM manifests")
        args: tuple = ()
        if name is not None:
            sql += " WHERE name=?"
            args = (name,)
        sql += " ORDER BY recorded_at, id"
        return [ManifestRow(*r) for r in self._conn.execute(sql, args)]

    def manifest_bytes(self, mid: str) -> bytes:
        row = self._conn.execute("SELECT json FROM manifests WHERE id=?", (mid,)).fetchone()
        if row is None:
            raise UnknownReference(mid, f"manifest {mid} is not in the catalog")
        return bytes(row[0])

    def load_manifest(self, mid: str) -> Manifest:
        """Parse the catalog copy, re-checking it against its id (the catalog is not trusted either)."""
        return parse_manifest(self.manifest_bytes(mid), expected_id=mid)

    def latest(self, name: str) -> str | None:
        row = self._conn.execute(
            "SELECT id FROM manifests WHERE name=? ORDER BY recorded_at DESC, rowid DESC LIMIT 1", (name,)
        ).fetchone()
        return row[0] if row else None

    def resolve(self, ref: str) -> str:
        """Manifest id, unique id prefix (>= 4 hex chars), NAME@LABEL (newest with that label) or NAME (newest)."""
        if "@" in ref:
            name, label = ref.rsplit("@", 1)
            row = self._conn.execute(
                "SELECT id FROM manifests WHERE name=? AND label=? ORDER BY recorded_at DESC, rowid DESC LIMIT 1",
                (name, label)).fetchone()
            if row is None:
                raise UnknownReference(ref, f"no archive named {name!r} with label {label!r}")
            return row[0]
        lowered = ref.lower()
        if len(lowered) >= 4 and all(ch in "0123456789abcdef" for ch in lowered):
            ids = [r[0] for r in self._conn.execute(
                "SELECT id FROM manifests WHERE id >= ? AND id < ? LIMIT 3", (lowered, lowered + "g"))]
            if len(ids) == 1:
                return ids[0]
            if len(ids) > 1:
                raise AmbiguousReference(ref, ids)
        latest = self.latest(ref)
        if latest is not None:
            return latest
        raise UnknownReference(ref)

    # -- chunks ------------------------------------------------------------------------------
    def known_chunk(self, h: str) -> tuple[int, str] | None:
        """(stored_size, codec) of a chunk some recorded manifest references, else None."""
        row = self._reader().execute("SELECT stored_size, codec FROM chunks WHERE hash=?", (h,)).fetchone()
        return (row[0], row[1]) if row else None

    def chunk_check(self, h: str) -> tuple[float, bool] | None:
        """(when, ok) of the last deep check of a chunk, or None if it was never checked."""
        row = self._reader().execute("SELECT last_verified, ok FROM chunk_checks WHERE hash=?", (h,)).fetchone()
        return (row[0], bool(row[1])) if row else None

    def chunks_by_staleness(self, hashes: Iterable[str]) -> list[str]:
        """Order chunks least recently verified first (never-verified first of all)."""
        wanted = list(dict.fromkeys(hashes))
        last: dict[str, float] = {}
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            q = f"SELECT hash, last_verified FROM chunk_checks WHERE hash IN ({','.join('?' * len(part))})"
            last.update(self._conn.execute(q, part).fetchall())
        return sorted(wanted, key=lambda h: (last.get(h, 0.0), h))

    def mark_verified(self, results: Iterable[tuple[str, bool]], at: float | None = None) -> None:
        now = time.time() if at is None else at
        with self.write():
            self._conn.executemany(
                "INSERT INTO chunk_checks(hash, last_verified, ok) VALUES (?,?,?) "
                "ON CONFLICT(hash) DO UPDATE SET last_verified=excluded.last_verified, ok=excluded.ok",
                ((h, now, int(ok)) for h, ok in results))

    # -- audit -------------------------------------------------------------------------------
    def _audit(self, event: str, mid: str | None, ok: bool, details: dict[str, Any], at: float) -> None:
        self._conn.execute(
            "INSERT INTO audit(at, event, manifest_id, ok, details) VALUES (?,?,?,?,?)",
            (at, event, mid, int(ok), json.dumps(details, sort_keys=True)))

    def audit(self, event: str, mid: str | None, ok: bool, details: dict[str, Any]) -> None:
        with self.write():
            self._audit(event, mid, ok, details, time.time())

    def audit_log(self, mid: str | None = None) -> list[AuditRow]:
        sql = "SELECT seq, at, event, manifest_id, ok, details FROM audit"
        args: tuple = ()
        if mid is not None:
            sql += " WHERE manifest_id=?"
            args = (mid,)
        return [AuditRow(s, a, e, m, bool(o), json.loads(d)) for s, a, e, m, o, d in
                self._conn.execute(sql + " ORDER BY seq", args)]


class _Txn:
    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self.conn, self.lock, self.depth_owner = conn, lock, False

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            if self.conn.in_transaction:  # nested use from the same catalog: join the outer transaction
                self.depth_owner = False
            else:
                self.conn.execute("BEGIN IMMEDIATE")
                self.depth_owner = True
        except BaseException:  # e.g. busy timeout: __exit__ will not run, so release here
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.depth_owner:
                if exc_type is None:
                    self.conn.execute("COMMIT")
                else:
                    self.conn.execute("ROLLBACK")
        finally:
            self.lock.release()


def default_catalog_path(home: Path, store_url: str, default_store_url: str) -> Path:
    """The default store keeps `catalog.db` beside it; any other store gets its own file
    under `catalogs/` so one catalog never mixes two stores."""
    if store_url == default_store_url:
        return home / "catalog.db"
    return home / "catalogs" / (blake3.blake3(store_url.encode()).hexdigest()[:16] + ".db")

