"""manifests/catalog.py: recording, resolving, immutability, staleness, audit, store binding,
concurrent writers and all-or-nothing transactions."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import blake3
import pytest

from manifests.errors import AmbiguousReference, CatalogError, CatalogLocked, CatalogStoreMismatch, ManifestError
from manifests.errors import UnknownReference as NotFoundError
from archiver.urls import normalise_store_url
from manifests import catalog as catalog_module
from manifests.catalog import Catalog, chunk_key, default_catalog_path
from manifests.model import ChunkRef, Entry, Manifest

ROOT = Path(__file__).resolve().parents[1]
STORE = "file:///tmp/archiver-test-store"


def h(s: str) -> str:
    return blake3.blake3(s.encode()).hexdigest()


def make_manifest(name: str = "model", label: str | None = None, files: dict[str, list[str]] | None = None,
                  parent: str | None = None) -> Manifest:
    """files: path -> chunk seeds; each chunk is 10 bytes, stored as 6, codec zstd."""
    files = {"ckpt/a.bin": ["c1", "c2"], "ckpt/b.bin": ["c2", "c3"]} if files is None else files
    entries = [Entry(path="ckpt", type="dir", mode=0o755)]
    for path, seeds in files.items():
        chunks = tuple(ChunkRef(10 * i, 10, h(s), 6, "zstd") for i, s in enumerate(seeds))
        entries.append(Entry(path=path, type="file", mode=0o644, size=10 * len(seeds), mtime_ns=1,
                             blake3=h(path + "b3"), sha256=h(path + "sha"), chunks=chunks))
    return Manifest(name=name, label=label, entries=tuple(entries), parent=parent)


@pytest.fixture
def cat_path(tmp_path: Path) -> Path:
    return tmp_path / "cat" / "catalog.db"


@pytest.fixture
def cat(cat_path: Path):
    c = Catalog(cat_path, STORE)
    yield c
    c.close()


def record(cat: Catalog, m: Manifest, at: float | None = None, **kw) -> bool:
    return cat.record_manifest(m, m.canonical_json(), at=at, **kw)


def count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


# -- recording -----------------------------------------------------------------------------------

def test_record_manifest_is_idempotent(cat, cat_path):
    m = make_manifest()
    assert record(cat, m) is True
    assert record(cat, m) is False
    assert cat.has_manifest(m.id)
    assert count(cat_path, "manifests") == 1
    assert count(cat_path, "files") == 3  # dir + 2 files
    assert count(cat_path, "manifest_chunks") == 3  # distinct chunks of the manifest
    assert count(cat_path, "chunks") == 3  # c2 shared
    rows = cat.manifest_rows()
    assert len(rows) == 1
    r = rows[0]
    assert (r.id, r.name, r.label, r.file_count, r.total_size, r.stored_size) == (m.id, "model", None, 2, 40, 18)
    assert cat.manifest_bytes(m.id) == m.canonical_json()
    assert cat.load_manifest(m.id) == m


def test_a_full_disk_under_the_catalog_is_one_catalog_error_and_records_nothing(cat, cat_path):
    """SQLITE_FULL (here a page limit, as a full disk gives) while recording: a CatalogError
    naming the catalog, the transaction rolled back, and the catalog usable once there is room."""
    first = make_manifest(name="first")
    assert record(cat, first)
    pages = cat._conn.execute("PRAGMA page_count").fetchone()[0]
    cat._conn.execute(f"PRAGMA max_page_count={pages}")
    big = make_manifest(name="big", files={f"ckpt/f{i}.bin": [f"s{i}", f"t{i}"] for i in range(2000)})
    with pytest.raises(CatalogError, match="disk full, nothing of this write was recorded") as got:
        record(cat, big)
    assert str(cat_path) in str(got.value) and got.value.__cause__ is None
    assert not cat.has_manifest(big.id) and [r.name for r in cat.manifest_rows()] == ["first"]
    cat._conn.execute("PRAGMA max_page_count=1073741823")
    assert record(cat, big) and cat.has_manifest(big.id)


def test_manifest_bytes_unknown(cat):
    with pytest.raises(NotFoundError):
        cat.manifest_bytes(h("nope"))


def test_manifest_rows_by_name_oldest_first(cat):
    a, b, c = make_manifest("x", "1"), make_manifest("x", "2"), make_manifest("y")
    record(cat, b, at=20.0)
    record(cat, a, at=10.0)
    record(cat, c, at=5.0)
    assert [r.id for r in cat.manifest_rows("x")] == [a.id, b.id]
    assert [r.id for r in cat.manifest_rows()] == [c.id, a.id, b.id]
    assert cat.manifest_rows("z") == []


def test_known_chunk(cat):
    assert cat.known_chunk(h("c1")) is None
    record(cat, make_manifest())
    assert cat.known_chunk(h("c1")) == (6, "zstd")
    assert cat.known_chunk(h("c3")) == (6, "zstd")
    assert cat.known_chunk(h("c4")) is None
    out = []
    t = threading.Thread(target=lambda: out.append(cat.known_chunk(h("c2"))))  # per-thread reader
    t.start()
    t.join()
    assert out == [(6, "zstd")]


# -- resolve -------------------------------------------------------------------------------------

def test_resolve_by_id_prefix_and_name(cat):
    m = make_manifest("llama", "v1")
    record(cat, m)
    assert cat.resolve(m.id) == m.id
    assert cat.resolve(m.id.upper()) == m.id
    assert cat.resolve(m.id[:4]) == m.id
    assert cat.resolve(m.id[:10]) == m.id
    assert cat.resolve("llama") == m.id
    assert cat.resolve("llama@v1") == m.id
    with pytest.raises(NotFoundError):
        cat.resolve(m.id[:3])  # too short to be a prefix, and no such name
    with pytest.raises(NotFoundError):
        cat.resolve("llama@v2")
    with pytest.raises(NotFoundError):
        cat.resolve("other")
    with pytest.raises(NotFoundError):
        cat.resolve("other@v1")
    wrong = ("0" if m.id[0] != "0" else "1") + m.id[1:]
    with pytest.raises(NotFoundError):
        cat.resolve(wrong)


def test_resolve_hex_looking_name(cat):
    m = make_manifest("cafe")
    record(cat, m)
    if not m.id.startswith("cafe"):
        assert cat.resolve("cafe") == m.id


def test_resolve_follows_the_chain_not_the_clock(cat):
    """NAME is the head of the name's chain and NAME@LABEL the newest with that label in
    it, whatever times the catalog holds (a rebuild or a skewed clock must not pick an
    older version). Issue 14 item 8 replaced the old newest-recorded_at rule."""
    old = make_manifest("m", "v1", {"f": ["1"]})
    new = make_manifest("m", "v1", {"f": ["2"]}, parent=old.id)
    other_label = make_manifest("m", "v2", {"f": ["3"]}, parent=new.id)
    record(cat, new, at=200.0)
    record(cat, old, at=300.0)  # the parent, recorded later with a later time
    assert cat.resolve("m@v1") == new.id
    assert cat.resolve("m") == new.id
    record(cat, other_label, at=50.0)  # the newest version, with the oldest time
    assert cat.resolve("m") == other_label.id
    assert cat.resolve("m@v1") == new.id
    assert cat.resolve("m@v2") == other_label.id
    assert cat.latest("m") == other_label.id
    assert cat.latest("nope") is None
    # list: never a version before its parent, whatever the recorded times say
    assert [r.id for r in cat.manifest_rows("m")] == [old.id, new.id, other_label.id]
    assert [r.id for r in cat.manifest_rows()] == [old.id, new.id, other_label.id]


def _two_with_shared_prefix(n: int = 4) -> tuple[Manifest, Manifest]:
    seen: dict[str, Manifest] = {}
    for i in range(200_000):
        m = make_manifest(f"n{i}", files={"f": ["x"]})
        p = m.id[:n]
        if p in seen:
            return seen[p], m
        seen[p] = m
    raise AssertionError("no collision found")


def test_resolve_ambiguous_prefix(cat):
    a, b = _two_with_shared_prefix()
    assert a.id[:4] == b.id[:4] and a.id != b.id
    record(cat, a)
    assert cat.resolve(a.id[:4]) == a.id  # unique while b is unknown
    record(cat, b)
    with pytest.raises(AmbiguousReference, match="ambiguous") as ei:
        cat.resolve(a.id[:4])
    assert a.id[:12] in str(ei.value) and b.id[:12] in str(ei.value)
    common = 4
    while a.id[common] == b.id[common]:
        common += 1
    assert cat.resolve(a.id[:common + 1]) == a.id
    assert cat.resolve(b.id[:common + 1]) == b.id


# -- immutability --------------------------------------------------------------------------------

IMMUTABLE_SQL = [
    "UPDATE manifests SET name='evil'",
    "UPDATE manifests SET json=x'00'",
    "DELETE FROM manifests",
    "INSERT OR REPLACE INTO manifests(id, name, json) VALUES (:mid, 'evil', x'00')",
    "REPLACE INTO manifests(id, name, json) VALUES (:mid, 'evil', x'00')",
    "INSERT INTO manifests(id, name, json) VALUES (:mid, 'evil', x'00') "
    "ON CONFLICT(id) DO UPDATE SET name='evil'",
    "UPDATE files SET blake3='00'",
    "DELETE FROM files",
    "INSERT OR REPLACE INTO files(manifest_id, path, type) VALUES (:mid, 'ckpt/a.bin', 'dir')",
    "INSERT INTO files(manifest_id, path, type) VALUES (:mid, 'ckpt/added-later.bin', 'file')",
    "UPDATE manifest_chunks SET chunk=0",
    "DELETE FROM manifest_chunks",
    "UPDATE audit SET ok=0",
    "DELETE FROM audit",
    "INSERT OR REPLACE INTO audit(seq, at, event, ok, details) VALUES (1, 0, 'evil', 1, '{}')",
]


def _snapshot(path: Path) -> list:
    conn = sqlite3.connect(path)
    try:
        return [conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("manifests", "files", "manifest_chunks", "audit")]
    finally:
        conn.close()


@pytest.mark.parametrize("sql", IMMUTABLE_SQL)
def test_rows_are_immutable_for_any_client(cat, cat_path, sql):
    m = make_manifest()
    record(cat, m, event_details={"k": "v"})
    before = _snapshot(cat_path)
    assert all(before)  # every table has a row to attack
    # through the catalog's own connection
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        cat._conn.execute(sql, {"mid": m.id})
    # and through an unrelated client
    raw = sqlite3.connect(cat_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            raw.execute(sql, {"mid": m.id})
        raw.rollback()
    finally:
        raw.close()
    assert _snapshot(cat_path) == before


def test_new_rows_can_still_be_added_by_a_raw_client(cat, cat_path):
    record(cat, make_manifest())
    raw = sqlite3.connect(cat_path)
    raw.execute("INSERT INTO audit(at, event, ok, details) VALUES (1, 'manual', 1, '{}')")
    raw.commit()
    raw.close()
    assert [r.event for r in cat.audit_log()] == ["manual"]


# -- staleness and audit -------------------------------------------------------------------------

def test_chunks_by_staleness(cat):
    a, b, c, d = h("a"), h("b"), h("c"), h("d")
    assert cat.chunks_by_staleness([d, c, b, a]) == sorted([a, b, c, d])
    cat.mark_verified([(b, True)], at=100.0)
    cat.mark_verified([(a, False)], at=50.0)
    never = sorted([c, d])
    assert cat.chunks_by_staleness([a, b, c, d, a]) == never + [a, b]
    cat.mark_verified([(a, True), (c, True)], at=200.0)  # re-verify: later time replaces earlier
    assert cat.chunks_by_staleness([a, b, c, d]) == [d, b] + sorted([a, c])
    assert cat.chunks_by_staleness([]) == []
    many = [h(str(i)) for i in range(1200)]  # more than one IN (...) batch
    cat.mark_verified([(x, True) for x in many[:600]], at=10.0)
    order = cat.chunks_by_staleness(many)
    assert set(order[:600]) == set(many[600:]) and set(order[600:]) == set(many[:600])


def test_audit_log_is_append_only_and_ordered(cat, cat_path):
    m1 = make_manifest("a")
    m2 = make_manifest("b", files={"f": ["z"]})
    record(cat, m1, event_details={"n": 1})
    cat.audit("verify", m1.id, False, {"problems": 2})
    record(cat, m2, event_details={"n": 2})
    record(cat, m2, event_details={"n": 3})  # already recorded: no new audit row
    cat.audit("verify", None, True, {})
    log = cat.audit_log()
    assert [(r.event, r.manifest_id, r.ok, r.details) for r in log] == [
        ("archive", m1.id, True, {"n": 1}),
        ("verify", m1.id, False, {"problems": 2}),
        ("archive", m2.id, True, {"n": 2}),
        ("verify", None, True, {}),
    ]
    seqs = [r.seq for r in log]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert [r.at for r in log[:2]] == sorted(r.at for r in log[:2])
    assert [r.event for r in cat.audit_log(m1.id)] == ["archive", "verify"]
    assert [r.event for r in cat.audit_log(m2.id)] == ["archive"]
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        cat._conn.execute("DELETE FROM audit WHERE seq=?", (seqs[-1],))
    assert len(cat.audit_log()) == 4


def test_record_without_event_details_writes_no_audit_row(cat):
    record(cat, make_manifest())
    assert cat.audit_log() == []


# -- store binding and pragmas -------------------------------------------------------------------

def test_catalog_is_bound_to_its_store(cat_path):
    Catalog(cat_path, STORE).close()
    Catalog(cat_path, STORE).close()  # same store: fine
    with pytest.raises(CatalogStoreMismatch, match="belongs to store") as ei:
        Catalog(cat_path, "s3://bucket/other")
    assert STORE in str(ei.value) and "\n" not in str(ei.value)


def test_pragmas(cat, cat_path):
    assert cat._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cat._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert cat._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    reader = cat._reader()
    assert reader.execute("PRAGMA synchronous").fetchone()[0] == 2
    raw = sqlite3.connect(cat_path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    raw.close()


def test_default_catalog_path(tmp_path):
    assert default_catalog_path(tmp_path, "file:///a", "file:///a") == tmp_path / "catalog.db"
    p = default_catalog_path(tmp_path, "s3://b/p", "file:///a")
    assert p.parent == tmp_path / "catalogs" and p.suffix == ".db" and len(p.stem) == 16
    assert p == default_catalog_path(tmp_path, "s3://b/p", "file:///a")
    assert p != default_catalog_path(tmp_path, "s3://b/q", "file:///a")


# -- transactions --------------------------------------------------------------------------------

def test_concurrent_writers_in_threads(cat_path):
    Catalog(cat_path, STORE).close()
    cats = [Catalog(cat_path, STORE) for _ in range(2)]
    ms = [make_manifest(f"t{i}", files={f"f{j}": [f"{i}-{j}-{k}" for k in range(50)] for j in range(20)})
          for i in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    results: list[bool] = []

    def work(c: Catalog, m: Manifest) -> None:
        try:
            barrier.wait()
            for k in range(5):
                c.audit("tick", None, True, {"k": k})
            results.append(record(c, m, event_details={}))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(c, m)) for c, m in zip(cats, ms)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert errors == [] and results == [True, True]
    for c in cats:
        assert {r.id for r in c.manifest_rows()} == {m.id for m in ms}
        c.close()
    assert count(cat_path, "manifest_chunks") == 2 * 20 * 50
    assert count(cat_path, "audit") == 2 * 5 + 2


def test_concurrent_writers_in_processes(tmp_path):
    """Several processes open a brand-new catalog file at once and each record a manifest."""
    path = tmp_path / "shared.db"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.test_catalog import make_manifest, STORE
        from manifests.catalog import Catalog
        i = int(sys.argv[1])
        c = Catalog({str(path)!r}, STORE)
        m = make_manifest(f"p{{i}}", files={{f"f{{j}}": [f"{{i}}-{{j}}-{{k}}" for k in range(40)] for j in range(20)}})
        assert c.record_manifest(m, m.canonical_json(), event_details={{"i": i}})
        for k in range(10):
            c.audit("tick", m.id, True, {{"k": k}})
        print(m.id)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=ROOT) for i in range(4)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        assert b"locked" not in err
        ids.append(out.decode().strip())
    c = Catalog(path, STORE)
    try:
        assert {r.id for r in c.manifest_rows()} == set(ids) and len(set(ids)) == 4
        assert len(c.audit_log()) == 4 * 11
    finally:
        c.close()


def _assert_nothing_recorded(cat: Catalog, path: Path) -> None:
    assert not cat._conn.in_transaction
    for table in ("manifests", "files", "manifest_chunks", "chunks", "audit"):
        assert count(path, table) == 0, table


def test_record_manifest_is_all_or_nothing_on_chunk_failure(cat, cat_path, monkeypatch):
    m = make_manifest()

    def boom(mid, m):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(catalog_module, "field_rows", boom)  # after the chunks, manifests and files inserts
    with pytest.raises(RuntimeError, match="disk on fire"):
        record(cat, m, event_details={"x": 1})
    _assert_nothing_recorded(cat, cat_path)
    monkeypatch.undo()
    assert record(cat, m) is True  # the catalog is still usable (lock released, no open txn)
    assert count(cat_path, "chunks") == 3


def test_record_manifest_is_all_or_nothing_on_audit_failure(cat, cat_path):
    m = make_manifest()
    with pytest.raises(TypeError):
        record(cat, m, event_details={"not json": object()})  # fails in the very last statement
    _assert_nothing_recorded(cat, cat_path)
    with pytest.raises(NotFoundError):
        cat.resolve("model")
    assert record(cat, m, event_details={"ok": True}) is True


class _FailingBegin:
    """Connection proxy whose first BEGIN fails (as a busy timeout would)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._real, self.failed = conn, False

    def execute(self, sql, *args):
        if sql.startswith("BEGIN") and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database is locked")
        return self._real.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _in_thread(fn, timeout: float = 10.0):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "deadlocked"
    return out


def test_failed_begin_releases_the_lock(cat):
    """A busy BEGIN is CatalogLocked (not an internal sqlite3 error) and leaves the catalog usable."""
    real = cat._conn
    cat._conn = _FailingBegin(real)
    try:
        with pytest.raises(CatalogLocked, match="catalog is locked by another process"):
            with cat.write():
                pass
    finally:
        cat._conn = real
    assert _in_thread(lambda: cat.audit("after", None, True, {}) or "done") == ["done"]
    assert [r.event for r in cat.audit_log()] == ["after"]


def test_nested_write_joins_outer_transaction(cat, cat_path):
    m = make_manifest()

    def nested() -> str:
        with cat.write():
            record(cat, m)
            cat.audit("inner", m.id, True, {})
        return "done"

    assert _in_thread(nested) == ["done"]
    assert cat.has_manifest(m.id) and [r.event for r in cat.audit_log()] == ["inner"]

    m2 = make_manifest("other")

    def nested_fail() -> str:
        with pytest.raises(RuntimeError):
            with cat.write():
                record(cat, m2)
                raise RuntimeError("outer fails after the inner write")
        return "done"

    assert _in_thread(nested_fail) == ["done"]
    assert not cat.has_manifest(m2.id)  # the outer rollback undid the joined inner write
    assert count(cat_path, "manifests") == 1


# -- savepoints and what the catalog refuses to record --------------------------------------------

def test_failed_nested_write_undoes_only_its_own_part(cat, cat_path, monkeypatch):
    good, bad = make_manifest("good"), make_manifest("bad", files={"f": ["b"]})
    real = catalog_module.field_rows

    def boom(mid, m):
        if m.name == "bad":
            raise RuntimeError("fails after its manifest, file and chunk rows")
        return real(mid, m)

    monkeypatch.setattr(catalog_module, "field_rows", boom)
    with cat.write():
        assert record(cat, good)
        with pytest.raises(RuntimeError):
            record(cat, bad)
        cat.audit("after", None, True, {})
    assert cat.has_manifest(good.id) and not cat.has_manifest(bad.id)
    assert count(cat_path, "manifests") == 1 and count(cat_path, "files") == 3
    assert [r.event for r in cat.audit_log()] == ["after"]


@pytest.mark.parametrize("how", ["duplicate-path", "surrogate-path", "surrogate-name", "surrogate-meta",
                                 "surrogate-codec"])
def test_record_refuses_what_it_cannot_store_faithfully(cat, cat_path, how):
    m = make_manifest()
    e = m.files[0]
    if how == "duplicate-path":
        m = Manifest(name=m.name, entries=m.entries + (e,))
    elif how == "surrogate-path":
        m = Manifest(name=m.name, entries=m.entries + (Entry(path="ckpt/\udc80x", type="dir", mode=0o755),))
    elif how == "surrogate-name":
        m = Manifest(name="m\ud800", entries=m.entries)
    elif how == "surrogate-meta":
        m = Manifest(name=m.name, entries=m.entries, meta={"k": "\udfff"})
    else:
        c = e.chunks[0]
        odd = Entry(**{**e.__dict__, "path": "ckpt/c.bin", "chunks": (ChunkRef(0, 10, c.hash, 6, "z\ud800"),),
                       "size": 10})
        m = Manifest(name=m.name, entries=m.entries + (odd,))
    where = {"duplicate-path": "twice", "surrogate-path": "not valid Unicode in path 'ckpt/",
             "surrogate-name": "not valid Unicode in name", "surrogate-meta": "not valid Unicode in meta 'k'",
             "surrogate-codec": "not valid Unicode in path 'ckpt/c.bin'"}[how]  # the text that is wrong is named
    with pytest.raises(ManifestError, match=where):
        record(cat, m, event_details={"x": 1})
    _assert_nothing_recorded(cat, cat_path)


# -- schema versions and the store binding -------------------------------------------------------

V1_SCHEMA = [  # exactly what schema version 1 created (sqlite-utils)
    'CREATE TABLE "info" ("key" TEXT PRIMARY KEY, "value" TEXT)',
    'CREATE TABLE "manifests" ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL, "label" TEXT, "parent" TEXT, '
    '"recorded_at" REAL, "file_count" INTEGER, "total_size" INTEGER, "stored_size" INTEGER, "json" BLOB NOT NULL)',
    'CREATE INDEX "idx_manifests_name_recorded_at" ON "manifests" ("name", "recorded_at")',
    'CREATE TABLE "files" ("manifest_id" TEXT REFERENCES "manifests"("id"), "path" TEXT, "type" TEXT, '
    '"size" INTEGER, "mode" INTEGER, "blake3" TEXT, "sha256" TEXT, PRIMARY KEY ("manifest_id", "path"))',
    'CREATE TABLE "chunk_refs" ("manifest_id" TEXT REFERENCES "manifests"("id"), "path" TEXT, "seq" INTEGER, '
    '"offset" INTEGER, "length" INTEGER, "hash" TEXT, PRIMARY KEY ("manifest_id", "path", "seq"))',
    'CREATE INDEX "idx_chunk_refs_hash" ON "chunk_refs" ("hash")',
    'CREATE TABLE "chunks" ("hash" TEXT PRIMARY KEY, "stored_size" INTEGER, "codec" TEXT, "first_seen" REAL)',
    'CREATE TABLE "chunk_checks" ("hash" TEXT PRIMARY KEY, "last_verified" REAL, "ok" INTEGER)',
    'CREATE TABLE "audit" ("seq" INTEGER PRIMARY KEY, "at" REAL, "event" TEXT, "manifest_id" TEXT, "ok" INTEGER, '
    '"details" TEXT)',
]


def make_v1_catalog(path: Path, store: str, manifests: list[Manifest]) -> None:
    from manifests.catalog import _immutable
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    for sql in V1_SCHEMA:
        conn.execute(sql)
    for table in ("manifests", "files", "chunk_refs", "audit"):
        _immutable(conn, table)
    conn.executemany("INSERT INTO info VALUES (?, ?)", [("schema_version", "1"), ("store", store)])
    for i, m in enumerate(manifests):
        conn.execute("INSERT INTO manifests VALUES (?,?,?,?,?,?,?,?,?)",
                     (m.id, m.name, m.label, m.parent, 100.0 + i, len(m.files), m.total_size, m.stored_size,
                      m.canonical_json()))
    for m in manifests:  # schema 1-3 recorded one chunk_refs row per chunk reference
        conn.executemany("INSERT OR IGNORE INTO chunks VALUES (?,?,?,?)",
                         [(c.hash, c.stored_size, c.codec, 1.0) for c in m.unique_chunks().values()])
        conn.executemany("INSERT INTO chunk_refs VALUES (?,?,?,?,?,?)",
                         [(m.id, e.path, i, c.offset, c.length, c.hash) for e in m.files
                          for i, c in enumerate(e.chunks)])
    conn.execute("INSERT INTO audit(at, event, manifest_id, ok, details) VALUES (1, 'archive', ?, 1, '{}')",
                 (manifests[0].id,))
    conn.commit()
    conn.close()


def info(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT key, value FROM info").fetchall())
    finally:
        conn.close()


def test_v1_catalog_is_read_as_is_and_migrated_on_first_writable_open(cat_path):
    a = make_manifest("m", "v1", {"f": ["1"]})
    b = make_manifest("m", "v2", {"f": ["2"]}, parent=a.id)
    make_v1_catalog(cat_path, STORE, [a, b])
    before = cat_path.read_bytes()

    ro = Catalog(cat_path, STORE, read_only=True)  # reads v1 without migrating
    assert ro.resolve("m") == b.id and [r.id for r in ro.manifest_rows()] == [a.id, b.id]
    want_cover = sorted((m.id, h) for m in (a, b) for h in m.unique_chunks())
    assert sorted((r[0], r[3]) for r in ro.chunk_coverage()) == want_cover  # from chunk_refs, unmigrated
    ro.close()
    assert info(cat_path)["schema_version"] == "1" and cat_path.read_bytes() == before

    c = Catalog(cat_path, STORE)
    try:
        assert info(cat_path) == {"schema_version": "7", "store": STORE, "endpoint": ""}
        tables = {r[0] for r in c._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "chunk_refs" not in tables  # v4: replaced by manifest_chunks, backfilled from it
        want = sorted((m.id, h) for m in (a, b) for h in m.unique_chunks())
        assert sorted((r[0], r[3]) for r in c.chunk_coverage()) == want
        indexes = {r[0] for r in c._conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"idx_manifests_name_parent", "idx_fields_key_value", "idx_fields_key_num"} <= indexes
        assert c.resolve("m") == b.id and c.load_manifest(a.id) == a
        assert [r.event for r in c.audit_log()] == ["archive"]
        child = make_manifest("m", "v3", {"f": ["3"]}, parent=b.id)
        assert record(c, child) and c.resolve("m") == child.id
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            c._conn.execute("DELETE FROM manifests")
        triggers = {r[0] for r in c._conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
        assert {"fields_no_update", "fields_no_delete", "fields_no_insert"} <= triggers  # v3's table is immutable too
        assert {"manifest_chunks_no_update", "manifest_chunks_no_delete"} <= triggers
    finally:
        c.close()
    Catalog(cat_path, STORE).close()  # a current catalog opens without another migration
    assert info(cat_path)["schema_version"] == "7"



def make_v4_catalog(path: Path, monkeypatch, manifests: list[Manifest], fm_chunks: list[str]) -> str:
    """A schema 4 catalog (chunks keyed by hex text, linked by rowid) holding `manifests`, the
    last of which also names a file map of the chunk seeds `fm_chunks`; returns the map's hash."""
    make_v1_catalog(path, STORE, manifests)
    with monkeypatch.context() as mp:
        mp.setattr(catalog_module, "SCHEMA_VERSION", 4)
        Catalog(path, STORE).close()  # migrates 1 -> 4 as schema 4 archivers did
    assert info(path)["schema_version"] == "4"
    fm = h("filemap")
    raw = sqlite3.connect(path)
    try:
        raw.executemany("INSERT OR IGNORE INTO chunks VALUES (?,?,?,?)", [(h(s), 7, "bg2", 1.0) for s in fm_chunks])
        row = raw.execute("INSERT INTO filemaps(hash, chunk_count, size) VALUES (?,?,?)", (fm, len(fm_chunks), 99)).lastrowid
        raw.executemany("INSERT INTO filemap_chunks SELECT ?, rowid FROM chunks WHERE hash=?",
                        [(row, h(s)) for s in fm_chunks])
        raw.execute("INSERT INTO manifest_filemaps SELECT rowid, ? FROM manifests WHERE id=?", (row, manifests[-1].id))
        raw.execute("INSERT INTO chunk_checks VALUES (?, 50.0, 1)", (h(fm_chunks[0]),))
        raw.commit()
    finally:
        raw.close()
    return fm


def map_fetcher(fm: str, seeds: list[str], stored: dict[str, int] | None = None):
    """A stand-in for Repository.filemap_chunks: the chunks of the one map `fm` (chunk seeds,
    stored as 7 bytes unless `stored` says otherwise)."""
    def fetch(e: Entry) -> tuple[ChunkRef, ...]:
        assert e.filemap == fm and e.chunk_count == len(seeds)
        return tuple(ChunkRef(10 * i, 10, h(s), (stored or {}).get(s, 7), "bg2") for i, s in enumerate(seeds))
    return fetch


def test_v4_catalog_is_read_as_is_and_migrated_to_blob_keys(cat_path, monkeypatch):
    """Schema 5 keys chunks by 32-byte BLOBs and schema 6 by their first 8 bytes: a schema 4
    catalog reads as before when opened read-only (nothing written), and its first writable
    open converts every chunk and chunk-set row (4 -> 5 -> 6), keeping what dedup
    (known_chunk) and fixity (chunk_coverage, map chunks read from the map) answer."""
    a = make_manifest("m", "v1", {"f": ["1", "2"]})
    b = make_manifest("m", "v2", {"f": ["2", "3"]}, parent=a.id)
    make_v4_catalog(cat_path, monkeypatch, [a, b], ["2", "9"])
    before = cat_path.read_bytes()
    want = sorted([(a.id, h("1"), 6), (a.id, h("2"), 6), (b.id, h("2"), 6), (b.id, h("3"), 6), (b.id, h("9"), 7)])

    fetch = map_fetcher(h("filemap"), ["2", "9"])

    def answers(c: Catalog) -> tuple:
        cover = sorted(c.chunk_coverage(fetch))
        return (sorted((r[0], r[3], r[4]) for r in cover), [(r[3], r[5], r[6]) for r in cover if r[5] is not None],
                c.known_chunk(h("1")), c.known_chunk(h("9")), c.known_chunk(h("nope")), c.known_chunk("not hex"),
                c.object_counts())

    expected = (want, [(h("2"), 50.0, True)] * 2, (6, "zstd"), (7, "bg2"), None, None, (4, 0))
    ro = Catalog(cat_path, STORE, read_only=True)
    try:
        assert answers(ro) == expected
    finally:
        ro.close()
    assert info(cat_path)["schema_version"] == "4" and cat_path.read_bytes() == before

    c = Catalog(cat_path, STORE)
    try:
        assert info(cat_path)["schema_version"] == "7"
        assert answers(c) == expected
        kinds = c._conn.execute("SELECT DISTINCT typeof(key) FROM chunks").fetchall()
        assert kinds == [("integer",)]
        assert c._conn.execute("SELECT DISTINCT typeof(chunk), length(chunk) FROM manifest_chunks").fetchall() == \
            [("blob", 32)]
        tables = {r[0] for r in c._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not any(t.endswith(("_v5", "_v6")) for t in tables) and "chunk_refs" not in tables
        assert "filemap_chunks" not in tables  # a map's chunks are in the map object
        columns = [r[1] for r in c._conn.execute("PRAGMA table_info(chunks)")]
        assert columns == ["key", "stored_size", "codec", "owner"]  # first_seen was never read
        triggers = {r[0] for r in c._conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
        assert {"manifest_chunks_no_update", "manifest_chunks_no_delete"} <= triggers
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            c._conn.execute("DELETE FROM manifest_chunks")
        child = make_manifest("m", "v3", {"f": ["3", "4"]}, parent=b.id)
        assert record(c, child) and c.resolve("m") == child.id
        assert {r.id: r.stored_size for r in c.manifest_rows()}[child.id] == 12
        assert c.known_chunk(h("4")) == (6, "zstd")
    finally:
        c.close()


def test_read_only_catalog_reads_blob_keys_after_its_own_first_write_migrates_it(cat_path, monkeypatch):
    """A catalog opened read-only before its migration that then writes (migrating the file
    under its read connection) switches its readers to the new keys."""
    a = make_manifest("m", "v1", {"f": ["1"]})
    make_v4_catalog(cat_path, monkeypatch, [a], ["9"])
    c = Catalog(cat_path, STORE, read_only=True)
    try:
        assert c.known_chunk(h("1")) == (6, "zstd")
        c.audit("note", None, True, {})  # the first write opens the writer, which migrates
        assert info(cat_path)["schema_version"] == "7"
        assert c.known_chunk(h("1")) == (6, "zstd") and c.known_chunk(h("9")) == (7, "bg2")
        assert sorted(r[3] for r in c.chunk_coverage(map_fetcher(h("filemap"), ["9"]))) == sorted([h("1"), h("9")])
    finally:
        c.close()


def test_v5_catalog_is_read_as_is_and_migrated_to_prefix_keys(cat_path, monkeypatch):
    """Schema 6 keys `chunks` by the first 8 bytes of the hash and drops filemap_chunks: a
    schema 5 catalog reads as before read-only (its maps' chunks from filemap_chunks, nothing
    written); its first writable open re-keys every chunk row (size, codec and owner kept) and
    then reads a map's chunks from the map, so dedup, fixity and stored sizes answer the same."""
    a = make_manifest("m", "v1", {"f": ["1", "2"]})
    make_v1_catalog(cat_path, STORE, [a])
    with monkeypatch.context() as mp:
        mp.setattr(catalog_module, "SCHEMA_VERSION", 5)
        Catalog(cat_path, STORE).close()  # migrates 1 -> 5 as schema 5 archivers did
    assert info(cat_path)["schema_version"] == "5"
    fm, seeds = h("filemap"), ["2", "8", "9"]
    raw = sqlite3.connect(cat_path)
    try:  # a fresh map as schema 5 recorded it: its new chunks owned by it, linked in filemap_chunks
        row = raw.execute("INSERT INTO filemaps(hash, chunk_count, size, fresh_stored) VALUES (?,?,?,NULL)",
                          (fm, len(seeds), 30)).lastrowid
        raw.executemany("INSERT OR IGNORE INTO chunks(hash, stored_size, codec, owner) VALUES (?,?,?,?)",
                        [(bytes.fromhex(h(s)), 7, "bg2", row) for s in seeds])
        raw.executemany("INSERT INTO filemap_chunks VALUES (?, ?)", [(row, bytes.fromhex(h(s))) for s in seeds])
        raw.execute("INSERT INTO manifest_filemaps SELECT rowid, ? FROM manifests WHERE id=?", (row, a.id))
        raw.execute("INSERT INTO chunk_checks VALUES (?, 50.0, 0)", (h("9"),))
        raw.commit()
    finally:
        raw.close()
    before = cat_path.read_bytes()
    fetch = map_fetcher(fm, seeds, {"2": 6})  # chunk 2 is also inline in `a`: the same object
    want = sorted([(a.id, h("1"), 6), (a.id, h("2"), 6), (a.id, h("8"), 7), (a.id, h("9"), 7)])

    def answers(c: Catalog) -> tuple:
        cover = sorted(c.chunk_coverage(fetch))
        return (sorted((r[0], r[3], r[4]) for r in cover), [(r[3], r[5], r[6]) for r in cover if r[5] is not None],
                c.known_chunk(h("2")), c.known_chunk(h("9")), c.known_chunk(h("nope")), c.known_chunk("zz"))

    expected = (want, [(h("9"), 50.0, False)], (6, "zstd"), (7, "bg2"), None, None)
    ro = Catalog(cat_path, STORE, read_only=True)
    try:
        assert answers(ro) == expected
    finally:
        ro.close()
    assert info(cat_path)["schema_version"] == "5" and cat_path.read_bytes() == before

    c = Catalog(cat_path, STORE)
    try:
        assert info(cat_path)["schema_version"] == "7"
        assert answers(c) == expected
        rows = c._conn.execute("SELECT key, stored_size, codec, owner FROM chunks ORDER BY key").fetchall()
        assert rows == sorted([(chunk_key(h("1")), 6, "zstd", None), (chunk_key(h("2")), 6, "zstd", None),
                               (chunk_key(h("8")), 7, "bg2", row), (chunk_key(h("9")), 7, "bg2", row)])
        tables = {r[0] for r in c._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "filemap_chunks" not in tables and "chunks_v6" not in tables
        # a version naming the (not fresh) map and a new inline chunk: each distinct chunk once
        child = make_manifest("m", "v2", {"g": ["2", "3"]}, parent=a.id)
        child = dataclasses.replace(child, entries=child.entries + (
            Entry(path="ckpt/big", type="file", mode=0o644, size=30, mtime_ns=1, blake3=h("big"), sha256="0" * 64,
                  filemap=fm, chunk_count=len(seeds)),))
        assert record(c, child, filemap_chunks=fetch)
        assert {r.id: r.stored_size for r in c.manifest_rows()}[child.id] == 6 + 6 + 7 + 7
        assert c.known_chunk(h("3")) == (6, "zstd")
    finally:
        c.close()


V6_FILES_NO_INSERT = ("CREATE TRIGGER files_no_insert BEFORE INSERT ON files WHEN EXISTS (SELECT 1 FROM files "
                      "WHERE manifest_id = NEW.manifest_id AND path = NEW.path) "
                      "BEGIN SELECT RAISE(ABORT, 'files rows are immutable'); END")


def test_v6_catalog_is_migrated_to_files_without_rowid(cat_path, monkeypatch):
    """Schema 7 keeps `files` in one WITHOUT ROWID B-tree and refuses a files row under a
    recorded manifest (one probe of `manifests`): a schema 6 catalog (a rowid table, its
    trigger probing `files`) is rebuilt on its first writable open with the same rows, the
    new trigger, and nothing left of the old table; recording goes on as before."""
    a = make_manifest("m", "v1", {"f": ["1", "2"], "g": ["3"]})
    b = make_manifest("m", "v2", {"f": ["1"], "h": ["4"]}, parent=a.id)
    with monkeypatch.context() as mp:
        mp.setattr(catalog_module, "SCHEMA_VERSION", 6)
        mp.setattr(catalog_module, "_MIGRATIONS", {k: v for k, v in catalog_module._MIGRATIONS.items() if k < 6})
        c6 = Catalog(cat_path, STORE)
        c6._conn.execute("DROP TRIGGER files_no_insert")  # schema 6's rule, as its archivers created it
        c6._conn.execute(V6_FILES_NO_INSERT)
        assert record(c6, a) and record(c6, b)
        c6.close()
    raw = sqlite3.connect(cat_path)
    try:
        assert info(cat_path)["schema_version"] == "6"
        assert "WITHOUT ROWID" not in raw.execute("SELECT sql FROM sqlite_master WHERE name='files'").fetchone()[0]
        rows = raw.execute("SELECT * FROM files ORDER BY manifest_id, path").fetchall()
    finally:
        raw.close()
    assert len(rows) == len(a.entries) + len(b.entries)
    c = Catalog(cat_path, STORE)
    try:
        assert info(cat_path)["schema_version"] == "7"
        sql = dict(c._conn.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name IN ('files', 'files_v7')"))
        assert "WITHOUT ROWID" in sql["files"] and "files_v7" not in sql
        assert "FROM manifests" in sql["files_no_insert"] and {"files_no_update", "files_no_delete"} <= set(sql)
        assert c._conn.execute("SELECT * FROM files ORDER BY manifest_id, path").fetchall() == rows
        for attack in ("INSERT INTO files(manifest_id, path, type) VALUES (?, 'later', 'file')",
                       "INSERT OR REPLACE INTO files(manifest_id, path, type) VALUES (?, 'f', 'dir')"):
            with pytest.raises(sqlite3.DatabaseError, match="immutable"):
                c._conn.execute(attack, (a.id,))
        child = make_manifest("m", "v3", {"f": ["1"], "k": ["5"]}, parent=b.id)
        assert record(c, child) and c.resolve("m") == child.id
        assert c._conn.execute("SELECT path, blake3 FROM files WHERE manifest_id=? ORDER BY path",
                               (child.id,)).fetchall() == sorted((e.path, e.blake3) for e in child.entries)
    finally:
        c.close()


def test_v6_files_rows_of_no_recorded_manifest_do_not_stop_the_migration(cat_path, monkeypatch):
    """A v6 `files` table took rows from a client with foreign keys off (SQLite's default):
    under no recorded manifest, or with a NULL path. Schema 7's table refuses both (foreign
    key, NOT NULL key): the migration carries over the rows of recorded manifests only, so
    the catalog still opens writable (it failed: FOREIGN KEY constraint failed, at every open)."""
    a = make_manifest("m", "v1", {"f": ["1"], "g": ["2"]})
    with monkeypatch.context() as mp:
        mp.setattr(catalog_module, "SCHEMA_VERSION", 6)
        mp.setattr(catalog_module, "_MIGRATIONS", {k: v for k, v in catalog_module._MIGRATIONS.items() if k < 6})
        c6 = Catalog(cat_path, STORE)
        c6._conn.execute("DROP TRIGGER files_no_insert")
        c6._conn.execute(V6_FILES_NO_INSERT)
        assert record(c6, a)
        c6.close()
    raw = sqlite3.connect(cat_path)  # foreign keys off
    kept = raw.execute("SELECT * FROM files ORDER BY manifest_id, path").fetchall()
    raw.execute("INSERT INTO files(manifest_id, path, type) VALUES (?, 'orphan', 'file')", (h("nowhere"),))
    raw.execute("INSERT INTO files(manifest_id, path, type) VALUES (?, NULL, 'file')", (a.id,))
    raw.commit()
    raw.close()
    c = Catalog(cat_path, STORE)
    try:
        assert info(cat_path)["schema_version"] == "7"
        assert c._conn.execute("SELECT * FROM files ORDER BY manifest_id, path").fetchall() == kept
        b = make_manifest("m", "v2", {"f": ["1"], "h": ["3"]}, parent=a.id)
        assert record(c, b) and c.resolve("m") == b.id
    finally:
        c.close()


def test_a_files_row_needs_its_manifest_by_the_commit(cat):
    """Files rows go in before their manifest's row with the foreign key deferred: a row
    naming a manifest that never comes is refused when the transaction commits."""
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        with cat.write() as conn:
            conn.execute("PRAGMA defer_foreign_keys=ON")
            conn.execute("INSERT INTO files(manifest_id, path, type) VALUES (?, 'f', 'file')", (h("nowhere"),))
    assert count_rows(cat, "files") == 0


def test_files_rows_already_under_an_unrecorded_manifest_are_refused_when_it_is_recorded(cat, cat_path):
    """Schema 7 refuses files rows under a recorded manifest only; rows under an id not yet
    recorded (a client with foreign keys off, SQLite's default; or rows slipped in once a
    transaction deferred the foreign key) would become part of that manifest's immutable
    history when it is recorded: recording it refuses them (one CatalogError) instead."""
    a = make_manifest("m", "v1", {"f": ["1"]})
    planted = make_manifest("n", "v1", {"g": ["2"]})
    raw = sqlite3.connect(cat_path)  # foreign keys off
    raw.execute("INSERT INTO files(manifest_id, path, type) VALUES (?, 'forged', 'file')", (planted.id,))
    raw.commit()
    raw.close()
    with pytest.raises(CatalogError, match="before it is recorded"):
        record(cat, planted)
    assert not cat.has_manifest(planted.id)
    later = make_manifest("o", "v1", {"h": ["3"]})
    with pytest.raises(CatalogError, match="before it is recorded"):
        with cat.write() as conn:
            assert record(cat, a)  # its files rows deferred the foreign key for the whole transaction
            conn.execute("INSERT INTO files(manifest_id, path, type) VALUES (?, 'forged', 'file')", (later.id,))
            record(cat, later)
    assert not cat.has_manifest(a.id) and not cat.has_manifest(later.id)
    assert record(cat, a) and record(cat, later)  # recorded as they are once nothing precedes them
    assert cat._conn.execute("SELECT path FROM files WHERE manifest_id=? ORDER BY path",
                             (later.id,)).fetchall() == sorted((e.path,) for e in later.entries)


def count_rows(cat: Catalog, table: str) -> int:
    return cat._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_chunk_key_is_the_hash_prefix_in_hash_order():
    """chunk_key: the first 8 bytes as a signed 64-bit integer, in the order of the hashes."""
    hashes = sorted(["0" * 64, "f" * 64, "7fffffffffffffff" + "0" * 48, "8000000000000000" + "f" * 48, h("x"), h("y")])
    keys = [chunk_key(x) for x in hashes]
    assert keys == sorted(keys) and keys[0] == -(1 << 63) and keys[-1] == (1 << 63) - 1
    assert chunk_key(h("x")) == chunk_key(h("x")[:16] + "0" * 48) == chunk_key(h("x").upper())
    with pytest.raises(ValueError):
        chunk_key("not hex")


def test_recording_sorts_and_dedups_chunk_keys(cat, cat_path):
    """One manifest naming the same chunk in many places records it once, first size and codec winning."""
    m = make_manifest(files={"a": ["x", "y", "x"], "b": ["y", "z", "x"]})
    assert record(cat, m)
    assert count(cat_path, "chunks") == 3 and count(cat_path, "manifest_chunks") == 3
    conn = sqlite3.connect(cat_path)
    try:
        keys = [r[0] for r in conn.execute("SELECT chunk FROM manifest_chunks")]
    finally:
        conn.close()
    assert keys == sorted(bytes.fromhex(h(s)) for s in "xyz")
    assert cat.known_chunk(h("x")) == (6, "zstd") and cat.known_chunk(h("x").upper()) == (6, "zstd")

def test_newer_schema_is_refused_in_one_line(cat_path):
    Catalog(cat_path, STORE).close()
    raw = sqlite3.connect(cat_path)
    raw.execute("UPDATE info SET value='99' WHERE key='schema_version'")
    raw.commit()
    raw.close()
    for ro in (False, True):
        with pytest.raises(CatalogError, match="schema version 99.*upgrade archiver") as ei:
            Catalog(cat_path, STORE, read_only=ro)
        assert "\n" not in str(ei.value)


def test_binding_includes_the_endpoint(cat_path):
    url = "s3://bucket/prefix"
    Catalog(cat_path, url, endpoint="http://minio-a:9000").close()
    Catalog(cat_path, url, endpoint="http://minio-a:9000").close()
    Catalog(cat_path, url, endpoint="http://minio-a:9000", read_only=True).close()
    for other in ("http://minio-b:9000", None):
        for ro in (False, True):
            with pytest.raises(CatalogStoreMismatch, match="belongs to store") as ei:
                Catalog(cat_path, url, endpoint=other, read_only=ro)
            assert "minio-a:9000" in str(ei.value) and (other or url) in str(ei.value)
    aws = cat_path.parent / "aws.db"
    Catalog(aws, url).close()
    assert info(aws)["endpoint"] == ""
    with pytest.raises(CatalogStoreMismatch):
        Catalog(aws, url, endpoint="http://minio-a:9000")


def test_legacy_binding_takes_the_endpoint_on_first_writable_open(cat_path):
    """A catalog bound before endpoints were recorded: read as it is; the first writable
    open records the endpoint in use (AWS: none), and from then on it is checked."""
    url = "s3://bucket/prefix"
    make_v1_catalog(cat_path, url, [make_manifest()])
    Catalog(cat_path, url, endpoint="http://minio:9000", read_only=True).close()
    assert "endpoint" not in info(cat_path)
    Catalog(cat_path, url, endpoint="http://minio:9000").close()
    assert info(cat_path)["endpoint"] == "http://minio:9000"
    with pytest.raises(CatalogStoreMismatch):
        Catalog(cat_path, url)


# -- read-only opening (issue 14 item 15) ------------------------------------------------------------

def test_read_only_open_of_a_missing_catalog_creates_nothing(tmp_path):
    path = tmp_path / "absent" / "catalog.db"
    c = Catalog(path, STORE, read_only=True)
    try:
        assert c.manifest_rows() == [] and c.latest("m") is None and c.audit_log() == []
        with pytest.raises(NotFoundError):
            c.resolve("m")
        assert c.known_chunk(h("c1")) is None
    finally:
        c.close()
    assert not (tmp_path / "absent").exists()
    # its first write (verify's audit row) creates the catalog, as any writable open would
    c = Catalog(path, STORE, read_only=True)
    try:
        c.audit("verify", None, True, {"n": 1})
    finally:
        c.close()
    c = Catalog(path, STORE)
    try:
        assert [r.details for r in c.audit_log()] == [{"n": 1}]
    finally:
        c.close()


def test_read_only_open_does_not_write_or_lock(cat_path):
    m = make_manifest()
    c = Catalog(cat_path, STORE)
    record(c, m)
    c.close()
    lock = Path(f"{cat_path}.lock")
    lock.unlink()
    before = (cat_path.read_bytes(), cat_path.stat().st_mtime_ns)
    ro = Catalog(cat_path, STORE, read_only=True)
    try:
        assert ro.resolve("model") == m.id and ro.load_manifest(m.id) == m
        assert ro.known_chunk(h("c1")) == (6, "zstd")
        assert _in_thread(lambda: ro.known_chunk(h("c2"))) == [(6, "zstd")]
    finally:
        ro.close()
    assert (cat_path.read_bytes(), cat_path.stat().st_mtime_ns) == before
    assert not lock.exists()


# -- a write lock held by another process ------------------------------------------------------------

HOLDER = textwrap.dedent(f"""
    import sqlite3, sys
    sys.path.insert(0, {str(ROOT)!r})
    from manifests.catalog import Catalog
    path, how, store = sys.argv[1:4]
    if how == "archiver":
        txn = Catalog(path, store).write()
        txn.__enter__()
    else:  # another SQLite client: holds the lock, leaves no mark
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    print("held", flush=True)
    sys.stdin.read()
""")


class Holder:
    """A process holding the catalog's write lock until `release`."""

    def __init__(self, path: Path, how: str, store: str = STORE) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), how, store], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"
        self.pid = self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture
def short_busy(monkeypatch):
    from manifests import catalog as catalog_module
    monkeypatch.setattr(catalog_module, "BUSY_TIMEOUT_MS", 1000)
    return 1.0


@pytest.mark.parametrize("how", ["archiver", "sqlite"])
def test_locked_catalog_names_the_holder_quickly(cat_path, short_busy, how):
    m = make_manifest()
    c = Catalog(cat_path, STORE)
    record(c, m)
    holder = Holder(cat_path, how)
    try:
        for attempt in (lambda: c.audit("x", None, True, {}), lambda: record(c, make_manifest("n")),
                        lambda: c.mark_verified([(h("c1"), True)])):
            started = time.monotonic()
            with pytest.raises(CatalogLocked) as ei:
                attempt()
            assert short_busy * 0.8 <= time.monotonic() - started < short_busy + 3
            err = ei.value
            assert err.pid == (holder.pid if how == "archiver" else None)
            want = f"catalog is locked by another process (pid {holder.pid})" if how == "archiver" \
                else "catalog is locked by another process:"
            assert want in str(err) and str(cat_path) in str(err) and "\n" not in str(err)
        # readers never wait for the writer: a reader that did would wait out its busy timeout
        # (made 30 s here), not the under 10 s asked, however loaded the machine
        catalog_module.BUSY_TIMEOUT_MS = 30_000  # (short_busy's monkeypatch puts it back)
        started = time.monotonic()
        ro = Catalog(cat_path, STORE, read_only=True)
        assert ro.resolve("model") == m.id and c.resolve("model") == m.id
        ro.close()
        assert time.monotonic() - started < 10
    finally:
        holder.release()
    c.audit("after", None, True, {})  # the lock is free again, and this catalog still works
    assert [r.event for r in c.audit_log()] == ["after"]
    c.close()


def test_a_stale_mark_without_its_lock_names_nobody(cat_path, short_busy):
    c = Catalog(cat_path, STORE)
    Path(f"{cat_path}.lock").write_text("424242 elsewhere\n")  # left by a process that died
    holder = Holder(cat_path, "sqlite")
    try:
        with pytest.raises(CatalogLocked) as ei:
            c.audit("x", None, True, {})
        assert ei.value.pid is None and "424242" not in str(ei.value)
    finally:
        holder.release()
        c.close()


# -- through the command line ------------------------------------------------------------------------

def _one_line_error(err: str) -> None:
    assert err.startswith("archiver: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


def test_cli_under_a_held_lock_reads_work_and_writes_name_the_holder(tmp_path, short_busy, monkeypatch):
    from tests.helpers import make_checkpoint, run_cli
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    cat = tmp_path / "cat.db"
    base = ["--store", str(tmp_path / "store"), "--catalog", str(cat)]
    mid = run_cli(*base, "archive", str(src), "--name", "m", "--json").json()["id"]
    holder = Holder(cat, "archiver", normalise_store_url(str(tmp_path / "store")))
    try:
        locked = f"catalog is locked by another process (pid {holder.pid})"
        catalog_module.BUSY_TIMEOUT_MS = 30_000  # a read that waited for the lock would take 30 s
        started = time.monotonic()
        r = run_cli(*base, "list", "--json")
        assert r.code == 0 and [x["id"] for x in r.json()] == [mid]
        r = run_cli(*base, "show", "m", "--json")
        assert r.code == 0 and r.json()["id"] == mid
        assert time.monotonic() - started < 10  # reads never wait for the lock
        catalog_module.BUSY_TIMEOUT_MS = 1000  # short_busy's again, for the writes below
        for extra in ([], ["--deep"]):
            r = run_cli(*base, "verify", "m", *extra)
            assert r.code == 0 and r.out.startswith("OK")
            assert r.err == f"archiver: warning: this verify is not in the catalog's audit log: {locked}: {cat}\n"
        d = run_cli(*base, "verify", "--all", "--json")
        assert d.code == 0 and d.json()["ok"] is True and locked in d.json()["audit_error"]
        import archiver  # the Python API opens list, show and verify the same way
        rep = archiver.verify(["m"], store=str(tmp_path / "store"), catalog=cat)
        assert rep.ok and locked in rep.audit_error
        assert [r.id for r in archiver.list_archives(store=str(tmp_path / "store"), catalog=cat)] == [mid]
        (src / "new.txt").write_text("new")
        for args in (["catalog", "rebuild"], ["archive", str(src), "--name", "m"]):
            started = time.monotonic()
            r = run_cli(*base, *args)
            assert r.code == 1 and locked in r.err, (args, r.err)
            _one_line_error(r.err)
            assert time.monotonic() - started < short_busy + 5
    finally:
        holder.release()
    assert run_cli(*base, "archive", str(src), "--name", "m").code == 0
    r = run_cli(*base, "verify", "m")
    assert r.code == 0 and r.err == ""


def test_cli_lock_error_comes_within_seconds(tmp_path):
    """With the real busy timeout, in a separate process: one line, exit 1, in seconds."""
    from tests.helpers import make_checkpoint
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    cat = tmp_path / "cat.db"
    env = {**os.environ, "ARCHIVER_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "archiver.cli", "--store", str(tmp_path / "store"), "--catalog", str(cat)]
    assert subprocess.run(cmd + ["archive", str(src), "--name", "m"], env=env, capture_output=True).returncode == 0
    holder = Holder(cat, "archiver", normalise_store_url(str(tmp_path / "store")))
    try:
        started = time.monotonic()
        r = subprocess.run(cmd + ["catalog", "rebuild"], env=env, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
    finally:
        holder.release()
    assert r.returncode == 1 and f"catalog is locked by another process (pid {holder.pid})" in r.stderr
    _one_line_error(r.stderr)
    assert took < 10, took


def _unprivileged() -> list[str]:
    """A command prefix that drops root (which ignores file permissions), or [] if not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a catalog read-only for the test")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_cli_reads_a_read_only_catalog(tmp_path):
    """list, show, verify and restore work on a catalog in a read-only directory (no -wal/-shm left,
    none can be created); verify says its run was not recorded; writers fail in one line."""
    from tests.helpers import make_checkpoint
    prefix = _unprivileged()
    base = Path(tempfile.mkdtemp(prefix="archiver-ro-"))  # not under pytest's 0700 tmp: others must read it
    try:
        os.chmod(base, 0o755)
        src = make_checkpoint(base / "src" / "ckpt", layers=1, dim=16)
        store, cat = base / "store", base / "catdir" / "catalog.db"
        env = {**os.environ, "ARCHIVER_HOME": str(base / "home"), "PYTHONPATH": str(ROOT),
               "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(base)}
        cmd = [sys.executable, "-m", "archiver.cli", "--store", str(store), "--catalog", str(cat)]
        out = subprocess.run(cmd + ["archive", str(src), "--name", "m", "--json"], env=env, capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
        mid = json.loads(out.stdout)["id"]
        # catalog.db.files: archive's files cache (archiver/filescache.py), kept beside the catalog
        assert sorted(p.name for p in cat.parent.iterdir()) == ["catalog.db", "catalog.db.files", "catalog.db.lock"]
        before = cat.read_bytes()
        for p in [store, *store.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o444)
        os.chmod(cat, 0o444)
        os.chmod(cat.parent, 0o555)

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(prefix + cmd + list(args), env=env, capture_output=True, text=True, timeout=120)

        r = run("list", "--json")
        assert r.returncode == 0 and [x["id"] for x in json.loads(r.stdout)] == [mid], r.stderr
        r = run("show", "m", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["id"] == mid, r.stderr
        for extra in ([], ["--deep"]):
            r = run("verify", "--all", *extra)
            assert r.returncode == 0 and r.stdout.startswith("OK"), r.stderr
            assert r.stderr.count("\n") == 2 and "warning: this verify is not in the catalog's audit log" in r.stderr
            assert "warning: this verify is not in the store's event log" in r.stderr  # a read-only store too
            assert "cannot be written" in r.stderr
        dest = base / "restored"  # restore writes files, never a catalog row: a read-only catalog is enough
        os.chmod(base, 0o777)
        r = run("restore", "m", str(dest))
        assert r.returncode == 0, r.stderr
        assert (dest / "ckpt" / "config.json").read_bytes() == (src / "config.json").read_bytes()
        r = run("catalog", "rebuild")
        assert r.returncode == 1 and "cannot be written" in r.stderr
        _one_line_error(r.stderr)
        assert cat.read_bytes() == before
        assert sorted(p.name for p in cat.parent.iterdir()) == ["catalog.db", "catalog.db.files", "catalog.db.lock"]
    finally:
        for p in [base, *base.rglob("*")]:
            if p.is_dir():
                os.chmod(p, 0o755)
        shutil.rmtree(base)


def test_stored_size_counts_each_chunk_once_across_file_maps_and_inline_chunks(cat):
    """A manifest's stored size is over its distinct chunks: summed per set when every set (file
    map, inline chunks) was all new when recorded, else from the deduplicated union; both agree
    with Manifest.stored_size on versions that share, repeat and mix chunks."""
    import random
    rnd = random.Random(5)

    def entry(path: str, seeds: list[int], as_map: bool) -> Entry:
        refs = tuple(ChunkRef(10 * i, 10, h(f"s{s}"), 3 + s, "zstd") for i, s in enumerate(seeds))
        fm = h("map:" + ",".join(map(str, seeds))) if as_map else ""
        return Entry(path=path, type="file", mode=0o644, size=10 * len(seeds), mtime_ns=1, blake3=h(path),
                     sha256=h(path), chunks=refs, filemap=fm, chunk_count=len(refs) if as_map else 0)

    cases = [  # (label, files: path -> (chunk seeds, as a file map))
        ("fresh", {"a": (list(range(0, 20)), True), "b": (list(range(20, 40)), True), "c": ([40, 41], False)}),
        ("same", {"a": (list(range(0, 20)), True), "b": (list(range(20, 40)), True), "c": ([40, 41], False)}),
        ("new-map", {"a": (list(range(100, 120)), True), "b": (list(range(20, 40)), True)}),
        ("shared", {"a": (list(range(0, 20)), True), "d": (list(range(10, 30)), True), "c": ([5, 41], False)}),
        ("repeats", {"z": ([200] * 5 + [201], True), "y": ([202, 202, 203], False)}),
        ("inline-dup", {"x": (list(range(300, 320)), True), "w": ([300, 399], False)}),
    ]
    rnd.shuffle(cases)
    parent = None
    for label, files in cases:
        entries = tuple(entry(p, seeds, as_map) for p, (seeds, as_map) in files.items())
        m = Manifest(name="m", label=label, entries=entries, parent=parent)
        assert record(cat, m)
        got = {r.id: r.stored_size for r in cat.manifest_rows()}[m.id]
        assert got == m.stored_size, label
        parent = m.id


def test_pack_tables_absence_is_remembered_briefly_and_a_recorded_pack_is_seen_at_once(cat_path, monkeypatch):
    a, b = Catalog(cat_path, STORE), Catalog(cat_path, STORE)
    try:
        h1, h2 = "1" * 64, "2" * 64
        assert a.pack_locations([h1]) == {}  # no pack tables yet: remembered for PACK_TABLES_RECHECK_S
        assert b.record_pack("p1", 10, "i1", [(h1, 0, 5, 5)])
        assert b.pack_locations([h1]) == {h1: [("p1", 0, 5, 5, 10, "i1")]}  # its own record: at once
        assert a.pack_locations([h1]) == {}  # another writer's: after the recheck interval
        a._pack_tables_absent_until = 0.0  # the interval has passed
        assert a.pack_locations([h1]) == {h1: [("p1", 0, 5, 5, 10, "i1")]}
        assert a.record_pack("p2", 20, "i2", [(h2, 3, 4, 4)])
        assert a.pack_locations([h2]) == {h2: [("p2", 3, 4, 4, 20, "i2")]}
    finally:
        a.close()
        b.close()


def test_hashes_sharing_a_chunk_key_are_both_kept_where_it_matters(cat):
    """Two hashes with the same first 8 bytes share one `chunks` row (a dedup hint, which
    the store confirms), but a version's chunk set, coverage and stored size keep both (a
    size read through the shared row is the first recorded one: here all are 6 bytes)."""
    p = "ab" * 8
    x, y, z = p + "0" * 48, p + "1" * 48, p + "2" * 48
    inline = Entry(path="small", type="file", mode=0o644, size=20, mtime_ns=1, blake3=h("s"), sha256="0" * 64,
                   chunks=(ChunkRef(0, 10, x, 6, "zstd"), ChunkRef(10, 10, y, 6, "zstd")))
    refs = (ChunkRef(0, 10, z, 6, "zstd"), ChunkRef(10, 10, h("m1"), 7, "bg2"), ChunkRef(20, 10, x, 6, "zstd"))
    big = Entry(path="big", type="file", mode=0o644, size=30, mtime_ns=1, blake3=h("b"), sha256="0" * 64,
                chunks=refs, filemap=h("map"), chunk_count=3)
    m = Manifest(name="m", entries=(inline, big))
    assert record(cat, m)
    assert cat.known_chunk(x) == cat.known_chunk(y) == cat.known_chunk(z) == (6, "zstd")  # one hint row
    assert cat.known_chunk(p + "f" * 48) == (6, "zstd") and cat.known_chunk("cd" * 32) is None
    fetch = lambda e: refs  # noqa: E731 - the map, as the repository would read it
    assert sorted(r[3] for r in cat.chunk_coverage(fetch)) == sorted([x, y, z, h("m1")])
    assert {r.id: r.stored_size for r in cat.manifest_rows()}[m.id] == 6 + 6 + 6 + 7


def test_a_read_only_catalog_reads_on_after_another_process_migrates_it(cat_path, monkeypatch):
    """A read-only Catalog (a long verify) opened on a schema 5 file keeps answering after
    another process's first writable open migrates the file to schema 6 under it."""
    a = make_manifest("m", "v1", {"f": ["1", "2"]})
    make_v1_catalog(cat_path, STORE, [a])
    with monkeypatch.context() as mp:
        mp.setattr(catalog_module, "SCHEMA_VERSION", 5)
        Catalog(cat_path, STORE).close()
    ro = Catalog(cat_path, STORE, read_only=True)
    try:
        before = (ro.known_chunk(h("1")), sorted(r[3] for r in ro.chunk_coverage()))
        Catalog(cat_path, STORE).close()  # another process migrates 5 -> 6
        assert info(cat_path)["schema_version"] == str(catalog_module.SCHEMA_VERSION)
        assert (ro.known_chunk(h("1")), sorted(r[3] for r in ro.chunk_coverage())) == before
        assert before[0] is not None and before[1] == sorted([h("1"), h("2")])
    finally:
        ro.close()


# -- file maps' chunks recorded in bulk (arrays from binary maps) ----------------------------------

def _map(seeds: list[str], codecs: tuple[str, ...] = ("bg2", "zstd")) -> tuple[Entry, list[tuple[str, int, str]]]:
    """A file map's entry (as a worker hands it over) and its (hash, stored size, codec) records."""
    recs = [(h(s), 5 + i, codecs[i % len(codecs)]) for i, s in enumerate(seeds)]
    e = Entry(path=f"f-{seeds[0]}.bin", type="file", mode=0o644, size=10 * len(seeds), mtime_ns=1,
              blake3=h("b3" + seeds[0]), sha256=h("sha" + seeds[0]), filemap=h("map:" + ",".join(seeds)),
              chunk_count=len(seeds))
    return e, recs


def _tables(path: Path) -> tuple[list, list]:
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("SELECT key, stored_size, codec, owner FROM chunks ORDER BY key").fetchall(),
                conn.execute("SELECT hash, chunk_count, size, fresh_stored FROM filemaps ORDER BY rowid").fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("case", ["all-new", "shared-between-maps", "known-before", "repeated-in-a-map",
                                  "codec-bound-per-row"])
def test_bulk_recorded_map_chunks_are_what_map_by_map_recording_gives(tmp_path, case):
    """Maps read as arrays (MapRecords) go into `chunks` sorted together in one insert; the
    rows (key, stored size, codec, owner) and each map's freshness (fresh_stored) must be
    exactly what recording the same maps' triples one map at a time gives, in every case the
    one insert cannot decide alone (then it is undone and redone map by map)."""
    from manifests.filemapbin import MapRecords
    maps = {"all-new": [_map(["a1", "a2", "a3"]), _map(["b1", "b2"]), _map(["c1", "c2", "c3", "c4"])],
            "shared-between-maps": [_map(["a1", "a2", "a3"]), _map(["b1", "a2"]), _map(["c1"])],
            "known-before": [_map(["a1", "k1"]), _map(["b1", "b2"])],
            "repeated-in-a-map": [_map(["a1", "a2", "a1"]), _map(["b1"])],
            "codec-bound-per-row": [_map(["a1", "a2"], ("bg 2", "it's")), _map(["b1"], ("zstd",))]}[case]
    got = {}
    for form in ("arrays", "triples"):
        c = Catalog(tmp_path / form / "catalog.db", STORE)
        try:
            record(c, make_manifest(files={"k.bin": ["k1"]}))  # k1 known before any map
            c.record_filemaps([(e, MapRecords.from_triples(r) if form == "arrays" else r) for e, r in maps])
        finally:
            c.close()
        got[form] = _tables(tmp_path / form / "catalog.db")
    assert got["arrays"] == got["triples"]
    chunks, filemaps = got["arrays"]
    fresh = [f[3] for f in filemaps]
    want = {"all-new": [5 + 6 + 7, 5 + 6, 5 + 6 + 7 + 8], "shared-between-maps": [18, None, 5],
            "known-before": [None, 11], "repeated-in-a-map": [11, 5], "codec-bound-per-row": [11, 5]}[case]
    assert fresh == want
    assert {row[2] for row in chunks} >= ({"bg 2", "it's", "zstd"} if case == "codec-bound-per-row" else {"bg2"})


def test_bulk_recorded_maps_give_the_stored_size_of_their_version(tmp_path):
    """A version naming bulk-recorded fresh maps and a map that reuses one of their chunks
    counts each distinct chunk's stored bytes once."""
    from manifests.filemapbin import MapRecords
    (e1, r1), (e2, r2) = _map(["a1", "a2", "a3"]), _map(["b1", "a2"])
    c = Catalog(tmp_path / "catalog.db", STORE)
    try:
        c.record_filemaps([(e1, MapRecords.from_triples(r1))])
        c.record_filemaps([(e2, MapRecords.from_triples(r2))])
        m = Manifest(name="m", entries=(e1, dataclasses.replace(e2, path="g.bin")))
        maps = {e1.filemap: r1, e2.filemap: r2}
        c.record_manifest(m, m.canonical_json(), filemap_chunks=lambda e: [ChunkRef(10 * i, 10, hh, st, cd)
                                                                             for i, (hh, st, cd) in
                                                                             enumerate(maps[e.filemap])])
        assert {r.id: r.stored_size for r in c.manifest_rows()}[m.id] == 5 + 6 + 7 + 5  # a2 once
    finally:
        c.close()


@pytest.mark.parametrize("form", ["arrays", "triples"])
def test_stored_size_of_a_version_whose_maps_reuse_chunks(tmp_path, form):
    """A version whose maps reused chunks (not fresh) has its stored size deduplicated by full
    hash, whether their records come as arrays (deduplicated in bulk) or as triples: each
    distinct chunk once, an inline chunk also in such a map once, a chunk owned by a fresh
    map of the same version once, and two hashes sharing a chunk key twice."""
    from manifests.filemapbin import MapRecords
    p = "cd" * 8
    x, y = p + "0" * 48, p + "1" * 48  # one chunk key, two chunks
    a = _map(["a1", "a2", "a3"])  # version 1: fresh
    b = _map(["b1", "b2"])  # version 2: fresh, owns b1 and b2
    c_recs = [(h("a2"), 6, "bg2"), (h("b1"), 5, "bg2"), (h("a1"), 5, "bg2"), (x, 9, "zstd")]
    d_recs = [(h("a3"), 7, "bg2"), (y, 9, "zstd")]
    c = (dataclasses.replace(a[0], path="c.bin", filemap=h("map c"), chunk_count=4, size=40), c_recs)
    d = (dataclasses.replace(a[0], path="d.bin", filemap=h("map d"), chunk_count=2, size=20), d_recs)
    small = Entry(path="small", type="file", mode=0o644, size=20, mtime_ns=1, blake3=h("s"), sha256="0" * 64,
                  chunks=(ChunkRef(0, 10, h("a1"), 5, "zstd"), ChunkRef(10, 10, h("s1"), 4, "zstd")))
    given = {e.filemap: r for e, r in (a, b, c, d)}
    cat = Catalog(tmp_path / "catalog.db", STORE)
    try:
        def as_form(r):
            return MapRecords.from_triples(r) if form == "arrays" else r
        cat.record_filemaps([(a[0], as_form(a[1]))])
        v1 = Manifest(name="m", entries=(a[0],))
        cat.record_manifest(v1, v1.canonical_json(), filemap_chunks=lambda e: as_form(given[e.filemap]))
        cat.record_filemaps([(e, as_form(r)) for e, r in (b, c, d)])
        v2 = Manifest(name="m", parent=v1.id, entries=(b[0], c[0], d[0], small))
        cat.record_manifest(v2, v2.canonical_json(), filemap_chunks=lambda e: as_form(given[e.filemap]))
        sizes = {r.id: r.stored_size for r in cat.manifest_rows()}
    finally:
        cat.close()
    assert sizes[v1.id] == 5 + 6 + 7
    # b1 + b2 (fresh b) + a2 + a1 + x (map c) + a3 + y (map d) + s1 (inline; its a1 is in map c)
    assert sizes[v2.id] == 5 + 6 + 6 + 5 + 9 + 7 + 9 + 4

def test_known_chunks_answers_as_known_chunk_does_one_by_one(cat_path, monkeypatch):
    """known_chunks (a batch of small files asks once) gives, for every hash that has one,
    what known_chunk gives: in a schema 4 catalog read as is, after its migration to 6 (keys
    by hash prefix), over more hashes than one query takes, and skipping what is not hex."""
    a = make_manifest("m", "v1", {"f": ["1", "2"]})
    make_v4_catalog(cat_path, monkeypatch, [a], ["9"])
    asked = [h("1"), h("2"), h("9"), h("nope"), "not hex", h("1")] + [h(f"n{i}") for i in range(600)]
    want = {h("1"): (6, "zstd"), h("2"): (6, "zstd"), h("9"): (7, "bg2")}
    for read_only in (True, False):
        c = Catalog(cat_path, STORE, read_only=read_only)
        try:
            assert info(cat_path)["schema_version"] == ("4" if read_only else "7")
            assert c.known_chunks(asked) == want
            assert {x: c.known_chunk(x) for x in asked if c.known_chunk(x) is not None} == want
        finally:
            c.close()


def test_known_chunks_of_hashes_sharing_a_chunk_key(cat):
    """Two hashes with the same first 8 bytes share one hint row: known_chunks answers for
    each hash asked, as known_chunk does."""
    p = "ab" * 8
    x, y = p + "0" * 48, p + "1" * 48
    m = Manifest(name="m", entries=(Entry(path="s", type="file", mode=0o644, size=10, mtime_ns=1, blake3=h("s"),
                                          sha256="0" * 64, chunks=(ChunkRef(0, 10, x, 6, "zstd"),)),))
    assert record(cat, m)
    assert cat.known_chunks([x, y, "cd" * 32]) == {x: (6, "zstd"), y: (6, "zstd")}
    assert cat.known_chunks([]) == {}


def test_stored_size_of_all_new_inline_chunks_is_summed_without_the_union_query(cat, monkeypatch):
    """A version whose inline chunks are all new to the catalog (a first archive of small
    files) takes its stored size from the inserts; any other (a chunk seen before, one named
    twice, two hashes sharing a key, a file map) is summed over the deduplicated union. Both
    agree with Manifest.stored_size."""
    queried: list[str] = []
    real = Catalog._stored_size
    monkeypatch.setattr(Catalog, "_stored_size", lambda self, *a: queried.append("q") or real(self, *a))

    def entry(path: str, hashes: list[str], sizes: list[int]) -> Entry:
        refs = tuple(ChunkRef(10 * i, 10, x, s, "zstd") for i, (x, s) in enumerate(zip(hashes, sizes)))
        return Entry(path=path, type="file", mode=0o644, size=10 * len(refs), mtime_ns=1, blake3=h(path),
                     sha256=h(path), chunks=refs)

    key = "cd" * 8
    cases = [  # (label, files, whether the union is queried)
        ("new", [entry("a", [h("1"), h("2")], [3, 4]), entry("b", [h("3")], [5])], False),
        ("seen", [entry("a", [h("1"), h("9")], [3, 6])], True),
        ("twice", [entry("a", [h("7"), h("8")], [2, 2]), entry("b", [h("7")], [2])], False),  # new: counted once
        ("one-key", [entry("a", [key + "0" * 48, key + "1" * 48], [4, 4])], True),
        ("empty", [entry("a", [], [])], False),
    ]
    for label, files, union in cases:
        queried.clear()
        m = Manifest(name="m", label=label, entries=tuple(files))
        assert record(cat, m)
        assert {r.id: r.stored_size for r in cat.manifest_rows()}[m.id] == m.stored_size, label
        assert queried == (["q"] if union else []), label


def test_record_packs_records_each_pack_once_in_one_transaction(cat):
    h1, h2 = "1" * 64, "2" * 64
    begun: list[str] = []
    real = cat._begin
    cat._begin = lambda conn: begun.append("BEGIN") or real(conn)
    assert cat.record_packs([("p1", 10, "i1", [(h1, 0, 5, 5)]), ("p2", 20, "i2", [(h2, 3, 4, 4), (h1, 9, 5, 5)])]) == 2
    assert begun == ["BEGIN"]  # one commit for all of them
    assert cat.record_packs([("p1", 10, "i1", [(h1, 0, 5, 5)])]) == 0  # known: not recorded again
    assert cat.pack_locations([h1, h2]) == {h1: [("p1", 0, 5, 5, 10, "i1"), ("p2", 9, 5, 5, 20, "i2")],
                                            h2: [("p2", 3, 4, 4, 20, "i2")]}
    assert cat.pack_entries("p2") == [(h2, 3, 4, 4), (h1, 9, 5, 5)]


def _random_maps(seed: int, maps: int, chunks: int,
                 big: bool = False) -> list[tuple[Entry, list[tuple[str, int, str]]]]:
    """File maps of random chunk hashes, two codecs; `big`: one map's chunks stored in 4 GiB or more."""
    import random
    rnd = random.Random(seed)
    out = []
    for m in range(maps):
        recs = [("%064x" % rnd.getrandbits(256), (2 ** 32 + i if big and m == 1 else rnd.randrange(0, 2 ** 32)),
                 ("bg2", "zstd")[i % 2]) for i in range(chunks)]
        e = Entry(path=f"f{m}.bin", type="file", mode=0o644, size=10 * chunks, mtime_ns=1, blake3=h(f"b3{seed}/{m}"),
                  sha256=h(f"sha{seed}/{m}"), filemap=h(f"map{seed}/{m}"), chunk_count=chunks)
        out.append((e, recs))
    return out


@pytest.mark.parametrize("case", ["first-version", "some-known", "stored-over-4-gib"])
def test_chunk_rows_inserted_as_json_are_those_bound_row_by_row(tmp_path, monkeypatch, case):
    """The dedup rows of maps recorded in bulk go in as JSON texts, one INSERT ... SELECT per
    slice (manifests/jsonrows.py); the `chunks` and `filemaps` rows must be exactly those the
    same maps give when every row is bound from Python (executemany, as before), in several
    slices, with keys known before, and with stored sizes too large to pack (bound, as before)."""
    from manifests import jsonrows
    from manifests.filemapbin import MapRecords
    monkeypatch.setattr(jsonrows, "SLICE", 50)  # several slices, so several statements on the second thread
    monkeypatch.setattr(catalog_module, "_INSERT_SLICE", 50)  # the known-key lookup too (case some-known)
    maps = _random_maps(7, 4, 60, big=case == "stored-over-4-gib")
    texts = []
    insert_texts = jsonrows.insert_texts
    monkeypatch.setattr(jsonrows, "insert_texts", lambda conn, sql, t: insert_texts(conn, sql, (texts.append(x) or x
                                                                                               for x in t)))
    got = {}
    for form in ("json", "bound"):
        if form == "bound":
            monkeypatch.setattr(jsonrows, "packable", lambda low, high: False)
        c = Catalog(tmp_path / form / "catalog.db", STORE)
        try:
            if case == "some-known":  # one map recorded first: the others' chunks it shares are known
                known = (maps[0][0], maps[0][1][:30] + [maps[1][1][5]])
                c.record_filemaps([(dataclasses.replace(known[0], filemap=h("known"), chunk_count=31), known[1])])
            c.record_filemaps([(e, MapRecords.from_triples(r)) for e, r in maps])
        finally:
            c.close()
        got[form] = _tables(tmp_path / form / "catalog.db")
    assert got["json"] == got["bound"]
    # the JSON path was taken, slice by slice (not for sizes that cannot be packed)
    assert len(texts) == 0 if case == "stored-over-4-gib" else len(texts) >= 4
    chunks, filemaps = got["json"]
    assert len(chunks) == 4 * 60  # the known map's chunks are all among them
    if case == "stored-over-4-gib":
        assert max(r[1] for r in chunks) >= 2 ** 32 and filemaps[1][3] >= 60 * 2 ** 32
    assert [f[3] is None for f in filemaps] == ([False] * 4 if case != "some-known"
                                                else [False, True, True, False, False])


def _edge_batches(seed: int) -> list[list[tuple[Entry, list[tuple[str, int, str]]]]]:
    """Batches of file maps over a small pool of hashes: chunk keys at both int64 ends and
    around the bias, two hashes sharing a key, keys repeated within a map, chunks known from
    an earlier batch (with other sizes), stored sizes at 0, 2**32 - 1 and 2**32 and more."""
    import random
    rnd = random.Random(seed)
    pool = ["%064x" % rnd.getrandbits(256) for _ in range(rnd.randrange(1, 60))]
    pool += [p + "%048x" % rnd.getrandbits(192) for p in ("0" * 16, "f" * 16, "8" + "0" * 15, "7" + "f" * 15)]
    if rnd.random() < 0.3:
        pool.append(pool[0][:16] + "%048x" % rnd.getrandbits(192))  # same chunk key, another hash
    batches = []
    for b in range(rnd.randrange(1, 4)):
        maps = []
        for m in range(rnd.randrange(1, 5)):
            edgy = rnd.random() < 0.3 and (b, m) != (0, 0)  # the first map: distinct keys, packable sizes
            picked = [rnd.choice(pool) for _ in range(rnd.randrange(1, 30))]
            recs = [(c, rnd.choice([0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 40]) if edgy else int(c[-6:], 16),
                     rnd.choice(["zstd", "bg2", "raw"])) for c in picked]
            if (b, m) == (0, 0) or rnd.random() < 0.8:  # usually each chunk once per map
                recs = list({c: (c, s, k) for c, s, k in reversed(recs)}.values())
            e = Entry(path=f"f{b}.{m}.bin", type="file", mode=0o644, size=10 * len(recs), mtime_ns=1,
                      blake3=h(f"b3{seed}/{b}/{m}"), sha256=h(f"sha{seed}/{b}/{m}"), filemap=h(f"map{seed}/{b}/{m}"),
                      chunk_count=len(recs))
            maps.append((e, recs))
        batches.append(maps)
    return batches


@pytest.mark.parametrize("seed", range(12))
def test_json_rows_equal_bound_rows_and_record_filemaps_names_the_maps_not_fresh(tmp_path, monkeypatch, seed):
    """Review of the JSON bulk rows (branch commit2s) at the edges: over batches of maps with
    keys at the int64 ends, shared keys, repeats, known chunks and sizes that cannot be
    packed, in slices of 3, the JSON path leaves exactly the rows the bound path leaves, and
    record_filemaps returns exactly the maps it recorded whose fresh_stored is NULL (those
    commit_manifest hands to record_manifest instead of fetching them again)."""
    from manifests import jsonrows
    from manifests.filemapbin import MapRecords
    monkeypatch.setattr(jsonrows, "SLICE", 3)
    monkeypatch.setattr(catalog_module, "_INSERT_SLICE", 3)
    batches = _edge_batches(seed)
    texts = []
    rows_text = jsonrows.rows_text
    monkeypatch.setattr(jsonrows, "rows_text", lambda *a: texts.append(1) or rows_text(*a))
    got, returned = {}, {}
    for form in ("json", "bound"):
        if form == "bound":
            monkeypatch.setattr(jsonrows, "packable", lambda low, high: False)
        path = tmp_path / form / "catalog.db"
        c = Catalog(path, STORE)
        try:
            returned[form] = []
            for maps in batches:
                before = {row[0] for row in _tables(path)[1]}
                returned[form].append(c.record_filemaps([(e, MapRecords.from_triples(r)) for e, r in maps]))
                not_fresh = {m for m, _, _, fresh in _tables(path)[1] if fresh is None and m not in before}
                assert returned[form][-1] == not_fresh
        finally:
            c.close()
        got[form] = _tables(path)
    assert texts  # the JSON path was taken (at least for the first map)
    assert got["json"] == got["bound"] and returned["json"] == returned["bound"]


def test_a_slice_failing_on_the_second_thread_rolls_back_every_row_of_the_batch(tmp_path, monkeypatch):
    """Review of commit2s: the JSON inserts run on a second thread, in the caller's write
    transaction. A slice that fails there (here a trigger refuses the largest key: the last
    row of its codec's pass, after that pass's earlier slices went in) raises in the caller, and the whole batch is undone: no chunk row (not even those of
    slices already inserted on that thread), no file map row."""
    from manifests import jsonrows
    from manifests.filemapbin import MapRecords
    monkeypatch.setattr(jsonrows, "SLICE", 3)
    monkeypatch.setattr(catalog_module, "_INSERT_SLICE", 3)
    threads = []
    each_text = jsonrows.each_text
    monkeypatch.setattr(jsonrows, "each_text", lambda conn, sql, texts: each_text(
        conn, sql, (threads.append(sql) or t for t in texts)))
    maps = _random_maps(3, 4, 30)
    path = tmp_path / "catalog.db"
    c = Catalog(path, STORE)
    try:
        bad = max(chunk_key(hx) for _, recs in maps for hx, _, _ in recs)
        raw = sqlite3.connect(path)
        raw.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON chunks WHEN NEW.key = {bad} "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END")
        raw.commit()
        raw.close()
        with pytest.raises(sqlite3.IntegrityError, match="refused"):
            c.record_filemaps([(e, MapRecords.from_triples(r)) for e, r in maps])
    finally:
        c.close()
    assert any(sql.startswith("INSERT") for sql in threads)  # the inserts ran slice by slice on the second thread
    assert _tables(path) == ([], [])


def test_a_known_key_the_sample_missed_undoes_the_second_threads_inserts_to_the_savepoint(tmp_path, monkeypatch):
    """Review of commit2s: maps recorded together whose sampled keys are all new go in at
    once under a savepoint; one chunk the sample missed is already known, so that insert is
    undone (ROLLBACK TO: its slices ran on the second thread) and only the unknown keys go in
    again. The rows and freshness are those the bound path leaves, and the rows were written
    twice as JSON (all, then all but the known one): the savepoint path was taken."""
    from manifests import jsonrows
    from manifests.filemapbin import MapRecords
    monkeypatch.setattr(jsonrows, "SLICE", 50)
    monkeypatch.setattr(catalog_module, "_INSERT_SLICE", 50)
    maps = _random_maps(9, 3, 400)
    keys = sorted(chunk_key(hx) for _, recs in maps for hx, _, _ in recs)
    sampled = set(keys[::max(1, len(keys) // 256)])  # as _insert_map_keys samples them
    missed = next(rec for _, recs in maps for rec in recs if chunk_key(rec[0]) not in sampled)
    known = (dataclasses.replace(maps[0][0], filemap=h("known"), chunk_count=1), [(missed[0], 7, "raw")])
    rows = []
    rows_text = jsonrows.rows_text
    monkeypatch.setattr(jsonrows, "rows_text", lambda k, *a: rows.append(len(k)) or rows_text(k, *a))
    got = {}
    for form in ("json", "bound"):
        if form == "bound":
            monkeypatch.setattr(jsonrows, "packable", lambda low, high: False)
        c = Catalog(tmp_path / form / "catalog.db", STORE)
        try:
            c.record_filemaps([(known[0], MapRecords.from_triples(known[1]))])
            got[form] = c.record_filemaps([(e, MapRecords.from_triples(r)) for e, r in maps])
        finally:
            c.close()
        got[form] = (got[form], _tables(tmp_path / form / "catalog.db"))
    assert sum(rows) == 1 + 2 * len(keys) - 1  # the known map's one row; then all keys, then all but the known one
    assert got["json"] == got["bound"]
    assert [f[3] is None for f in got["json"][1][1]] == [False] + [missed in recs for _, recs in maps]
    assert got["json"][0] == {e.filemap for e, recs in maps if missed in recs}


@pytest.mark.parametrize("slice_rows", [3, 65536])
def test_known_keys_answers_what_a_lookup_key_by_key_gives(tmp_path, monkeypatch, slice_rows):
    """The dedup lookup of a fine-tune's keys answers with the indexes of the keys the catalog
    does not hold (branch v5commit); the mask it gives must be exactly what asking for each
    key alone gives: known and unknown keys mixed, at the int64 ends, over several slices
    (the second thread) and in one."""
    import numpy as np
    from manifests.filemapbin import MapRecords
    monkeypatch.setattr(catalog_module, "_INSERT_SLICE", slice_rows)
    maps = _random_maps(11, 3, 20)
    path = tmp_path / "catalog.db"
    c = Catalog(path, STORE)
    try:
        c.record_filemaps([(e, MapRecords.from_triples(r)) for e, r in maps[:2]])
    finally:
        c.close()
    ends = ["0" * 64, "f" * 64, "8" + "0" * 63, "7" + "f" * 63]
    asked = sorted({chunk_key(x) for x in [hx for _, r in maps for hx, _, _ in r] + ends})
    conn = sqlite3.connect(path, check_same_thread=False)  # several slices: joined on a second thread
    try:
        conn.execute("INSERT INTO chunks(key, stored_size, codec, owner) VALUES (?, 1, 'raw', NULL)",
                     (chunk_key(ends[1]),))
        got = catalog_module._known_keys(conn, np.array(asked, dtype=np.int64)).tolist()
        want = [conn.execute("SELECT 1 FROM chunks WHERE key = ?", (k,)).fetchone() is not None for k in asked]
    finally:
        conn.close()
    assert got == want
    assert 40 < sum(want) < len(asked)  # both answers occur: two maps' chunks and one end are known


@pytest.mark.parametrize("case", ["distinct", "one-chunk-in-two-maps", "two-hashes-one-key"])
def test_stored_size_of_a_fine_tune_from_sorted_keys_is_the_full_dedup_answer(tmp_path, monkeypatch, case):
    """A fine-tune's version (only maps that reuse chunks: no inline chunk, no fresh map) has
    its stored size summed after sorting the keys alone (_Shared.distinct_total, branch
    v5commit); it must equal the full dedup by full hash (_Shared.distinct), and a key given
    twice (one chunk in two maps, or two hashes sharing a key) must fall back to it (the
    chunk counted once; the two hashes both counted)."""
    from manifests.filemapbin import MapRecords
    p = "cd" * 8
    a = _map(["a1", "a2", "a3"])
    extra = [(p + "0" * 48, 9, "zstd"), (p + "1" * 48, 8, "zstd")] if case == "two-hashes-one-key" else []
    c_recs = [(h("a1"), 5, "bg2"), (h("a2"), 6, "bg2"), (h("n1"), 4, "bg2")] + extra[:1]
    d_recs = [(h("a3"), 7, "bg2")] + ([(h("a2"), 6, "bg2")] if case == "one-chunk-in-two-maps" else []) \
        + [(h("n2"), 3, "bg2")] + extra[1:]
    cm = (dataclasses.replace(a[0], path="c.bin", filemap=h("map c"), chunk_count=len(c_recs), size=10 * len(c_recs)),
          c_recs)
    dm = (dataclasses.replace(a[0], path="d.bin", filemap=h("map d"), chunk_count=len(d_recs), size=10 * len(d_recs)),
          d_recs)
    given = {e.filemap: r for e, r in (a, cm, dm)}

    def as_records(e: Entry) -> MapRecords:
        return MapRecords.from_triples(given[e.filemap])
    taken = []
    sizes = {}
    for path in ("sorted", "full"):
        if path == "full":
            monkeypatch.setattr(catalog_module._Shared, "distinct_total", lambda self: None)
        else:
            total = catalog_module._Shared.distinct_total
            monkeypatch.setattr(catalog_module._Shared, "distinct_total",
                                lambda self: taken.append(total(self)) or taken[-1])
        cat = Catalog(tmp_path / path / "catalog.db", STORE)
        try:
            cat.record_filemaps([(a[0], MapRecords.from_triples(a[1]))])
            v1 = Manifest(name="m", entries=(a[0],))
            cat.record_manifest(v1, v1.canonical_json(), filemap_chunks=as_records)
            cat.record_filemaps([(e, MapRecords.from_triples(r)) for e, r in (cm, dm)])
            v2 = Manifest(name="m", parent=v1.id, entries=(cm[0], dm[0]))
            cat.record_manifest(v2, v2.canonical_json(), filemap_chunks=as_records)
            sizes[path] = [(r.id, r.stored_size) for r in cat.manifest_rows()]
        finally:
            cat.close()
    assert sizes["sorted"] == sizes["full"]
    want = 5 + 6 + 4 + 7 + 3 + (9 + 8 if extra else 0)  # a1 a2 n1 a3 n2 (a2 once), x and y both
    assert dict(sizes["sorted"])[v2.id] == want
    assert taken == ([want] if case == "distinct" else [None])  # the sorted sum, or the fall back


class _LockedSwitch:
    """A connection whose switch to WAL answers "database is locked" `times` times, as SQLite
    does at once (no busy handler) while another process switches a brand-new file."""

    def __init__(self, conn: sqlite3.Connection, times: int, message: str = "database is locked") -> None:
        self.conn, self.times, self.message, self.tries = conn, times, message, 0

    def execute(self, sql: str, *args):
        if sql == "PRAGMA journal_mode=WAL":
            self.tries += 1
            if self.tries <= self.times:
                raise sqlite3.OperationalError(self.message)
        return self.conn.execute(sql, *args)


def test_the_switch_to_wal_is_asked_again_while_another_process_holds_it(tmp_path):
    conn = sqlite3.connect(tmp_path / "c.db")
    try:
        locked = _LockedSwitch(conn, 3)
        catalog_module._to_wal(locked)
        assert locked.tries == 4 and conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        locked.tries = 0
        catalog_module._to_wal(locked)  # already WAL: only read, never switched again
        assert locked.tries == 0
    finally:
        conn.close()


class _Clock:
    """`time` for catalog_module whose sleeps only move its own clock: the retry schedule is
    checked as written, not as a loaded machine's scheduler happens to stretch it."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_switch_to_wal_gives_up_at_the_busy_timeout_and_other_errors_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog_module, "BUSY_TIMEOUT_MS", 200)
    clock = _Clock()
    monkeypatch.setattr(catalog_module, "time", clock)
    conn = sqlite3.connect(tmp_path / "c.db")
    try:
        locked = _LockedSwitch(conn, 10 ** 6)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            catalog_module._to_wal(locked)
        waited = sum(clock.sleeps)
        assert locked.tries == len(clock.sleeps) + 1 > 2  # asked again after each pause, several times
        assert clock.sleeps == sorted(clock.sleeps) and max(clock.sleeps) <= 0.1  # backing off, capped
        assert waited <= 0.2 < waited + min(clock.sleeps[-1] * 2, 0.1)  # up to the timeout, not a pause past it
        broken = _LockedSwitch(conn, 1, "disk I/O error")
        with pytest.raises(sqlite3.OperationalError, match="I/O"):
            catalog_module._to_wal(broken)
        assert broken.tries == 1
    finally:
        conn.close()


def test_a_thread_opens_its_read_connection_while_another_thread_writes(cat):
    """A thread's first read opens its connection without waiting for a write transaction
    another thread holds (the packs' rows recorded behind an archive's commit path)."""
    record(cat, make_manifest())
    got: list = []
    with cat.write():
        reader = threading.Thread(target=lambda: got.append(cat.known_chunk(h("c1"))))
        reader.start()
        reader.join(timeout=60)  # bounded: before the change it waited for this transaction
        assert not reader.is_alive() and got == [(6, "zstd")]

def test_a_ctrl_c_right_after_the_holder_mark_is_closed_leaves_nothing_to_close_twice(tmp_path, monkeypatch):
    """The holder mark's descriptor is forgotten before it is closed: a Ctrl-C landing just
    after the close must leave a later close (the repository's `finally`) nothing to do,
    not EBADF (or, with threads, another file's descriptor closed)."""
    from tests.helpers import InterruptAfterClose, open_fds
    before = open_fds()
    mark = catalog_module._HolderMark(tmp_path / "c.db.lock")
    mark.mark()
    assert mark.read()[0] == os.getpid()  # held: the mark names this process
    ctrl_c = InterruptAfterClose(lambda fd: True)
    monkeypatch.setattr(catalog_module.os, "close", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        mark.close()
    monkeypatch.undo()
    mark.close()
    assert ctrl_c.fired and open_fds() <= before
