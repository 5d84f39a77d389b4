"""manifests/catalog.py: recording, resolving, immutability, staleness, audit, store binding,
concurrent writers and all-or-nothing transactions."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import blake3
import pytest

from manifests.errors import AmbiguousReference, CatalogLocked, CatalogStoreMismatch
from manifests.errors import UnknownReference as NotFoundError
from manifests.catalog import Catalog, default_catalog_path
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
    assert count(cat_path, "chunk_refs") == 4
    assert count(cat_path, "chunks") == 3  # c2 shared
    rows = cat.manifest_rows()
    assert len(rows) == 1
    r = rows[0]
    assert (r.id, r.name, r.label, r.file_count, r.total_size, r.stored_size) == (m.id, "model", None, 2, 40, 18)
    assert cat.manifest_bytes(m.id) == m.canonical_json()
    assert cat.load_manifest(m.id) == m


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
    "UPDATE chunk_refs SET hash='00'",
    "DELETE FROM chunk_refs",
    "INSERT OR REPLACE INTO chunk_refs(manifest_id, path, seq, hash) VALUES (:mid, 'ckpt/a.bin', 0, '00')",
    "UPDATE audit SET ok=0",
    "DELETE FROM audit",
    "INSERT OR REPLACE INTO audit(seq, at, event, ok, details) VALUES (1, 0, 'evil', 1, '{}')",
]


def _snapshot(path: Path) -> list:
    conn = sqlite3.connect(path)
    try:
        return [conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("manifests", "files", "chunk_refs", "audit")]
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
    assert count(cat_path, "chunk_refs") == 2 * 20 * 50
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
    for table in ("manifests", "files", "chunk_refs", "chunks", "audit"):
        assert count(path, table) == 0, table


def test_record_manifest_is_all_or_nothing_on_chunk_failure(cat, cat_path, monkeypatch):
    m = make_manifest()

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Manifest, "unique_chunks", boom)  # after manifests/files/chunk_refs inserts
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
