"""`catalog rebuild` (issue 14, items 8, 9, 10 and 19): it records every good manifest and
skips and reports each bad one, never invents times (NAME still resolves to the head of
its chain), walks chains of thousands of versions without recursion, streams instead of
holding every manifest, and `verify --all` on an empty catalog of a non-empty store says
so instead of passing."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import blake3
import pytest

import archiver
from archiver import layout, repository
from archiver.errors import EmptyCatalogError
from archiver.repository import Repository
from archiver.settings import Settings
from manifests.catalog import Catalog
from manifests.model import ChunkRef, Entry, Manifest, canonical
from tests.helpers import RawStore, make_checkpoint, run_cli


def put_manifest(raw: RawStore, data: bytes) -> str:
    """Store manifest bytes under their own id, as an archiver would (or a forger could)."""
    mid = blake3.blake3(data).hexdigest()
    raw.write(layout.manifest(mid), data)
    return mid


def good_json(name: str, paths: list[str], parent: str | None = None) -> dict:
    return Manifest(name=name, parent=parent,
                    entries=tuple(Entry(path=p, type="dir", mode=0o755) for p in paths)).to_dict()


def bad_manifests(raw: RawStore, victim: str) -> dict[str, tuple[str, ...]]:
    """One stored manifest of each kind of damage -> texts one of which its problem names."""
    bad: dict[str, tuple[str, ...]] = {}
    dup = good_json("dup", ["d"])
    dup["entries"] = dup["entries"] * 2  # the same path twice, sorted and canonical
    bad[put_manifest(raw, canonical(dup))] = ("twice", "collides with", "duplicate")
    unicode = ("Unicode", "UTF-8", "surrogate")  # the catalog's wording, or the reader's if it refuses it first
    bad[put_manifest(raw, canonical(good_json("uni", ["ok", "bad\ud800name"])))] = unicode
    bad[put_manifest(raw, canonical(good_json("uni\udfff", ["ok"])))] = unicode
    bad[put_manifest(raw, canonical(good_json("esc", ["../evil"])))] = ("unsafe path",)
    bad[put_manifest(raw, b"definitely not json")] = ("not valid JSON",)
    wrong = good_json("fmt", ["d"])
    wrong["format"] = "something-else"
    bad[put_manifest(raw, canonical(wrong))] = ("malformed manifest",)
    # bit rot and truncation of a real archive's manifest: no longer its id
    truncated = Manifest(name="t", entries=(Entry(path="x", type="dir", mode=0o700),)).canonical_json()
    tid = put_manifest(raw, truncated)
    raw.write(layout.manifest(tid), truncated[:-9])
    bad[tid] = ("does not match its id",)
    key = layout.manifest(victim)
    raw.mutate(key, lambda b: b[:40] + bytes([b[40] ^ 0x01]) + b[41:])
    bad[victim] = ("does not match its id",)
    return bad


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("ARCHIVER_HOME", str(h))
    for var in ("ARCHIVER_STORE", "ARCHIVER_CATALOG", "ARCHIVER_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return h


# -- item 9: bad manifests are skipped and reported, the rest recorded --------------------------------

def test_rebuild_skips_and_reports_each_bad_manifest(home, tmp_path, store_url):
    cat = tmp_path / "cat.db"
    base = ["--store", store_url, "--catalog", str(cat)]
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    ids = [run_cli(*base, "archive", str(src), "--name", "m", "--label", f"v{i}", "--json").json()["id"]
           for i in range(3)]
    other = run_cli(*base, "archive", str(src / "tokenizer"), "--name", "other", "--json").json()["id"]
    victim = run_cli(*base, "archive", str(src / "config.json"), "--name", "victim", "--json").json()["id"]
    bad = bad_manifests(RawStore(store_url), victim)
    cat.unlink()
    for extra in ("-wal", "-shm"):
        Path(f"{cat}{extra}").unlink(missing_ok=True)

    r = run_cli(*base, "catalog", "rebuild")
    assert r.code == 1 and "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == len(bad) + 1
    for mid, why in bad.items():
        (line,) = [ln for ln in lines if mid[:16] in ln]
        assert any(w in line for w in why) and line.startswith("skipped: manifest:"), (why, line)
    assert f"{len(bad)} bad manifest(s) skipped" in lines[-1]

    rows = run_cli(*base, "list", "--json").json()
    assert {x["id"] for x in rows} == set(ids) | {other}
    assert [x["id"] for x in rows if x["name"] == "m"] == ids  # chain order
    # the times come from each archive's ingestion event in the store, never invented
    assert all(x["recorded_at"] is not None for x in rows)
    assert run_cli(*base, "show", "m", "--json").json()["id"] == ids[-1]
    assert run_cli(*base, "verify", "--all").code == 0

    # again, as one JSON document: nothing new, the same problems, exit 1
    d = run_cli(*base, "catalog", "rebuild", "--json")
    assert d.code == 1
    doc = d.json()
    assert doc["added"] == [] and doc["ok"] is False and doc["manifests"] == len(bad) + 4  # victim is in `bad`
    assert {p["manifest"] for p in doc["problems"]} == set(bad)
    assert all(p["kind"] == "manifest" for p in doc["problems"])


def test_rebuild_api_result(tmp_path):
    store, cat = str(tmp_path / "store"), tmp_path / "c.db"
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    first = archiver.archive([src], name="m", store=store, catalog=cat).id
    raw = RawStore(store)
    dup = good_json("dup", ["d"])
    dup["entries"] = dup["entries"] * 2
    bad = put_manifest(raw, canonical(dup))
    cat.unlink()
    res = archiver.rebuild_catalog(store=store, catalog=cat)
    assert isinstance(res, archiver.RebuildResult)
    assert res.added == [first] and res.manifests == 2 and not res.ok
    (p,) = res.problems
    assert (p.manifest, p.kind) == (bad, "manifest") and "'d'" in p.detail
    with archiver.open_repository(store, cat) as repo:
        (audit,) = [a for a in repo.audit_log() if a.event == "rebuild"]
        assert not audit.ok and audit.details["problems"] == 1 and audit.details["added"] == 1


# -- item 8: no invented times; NAME is still the newest -----------------------------------------------

def test_rebuild_into_a_partial_catalog_keeps_name_on_the_newest(home, tmp_path):
    """The old rebuild gave the versions it added a time of 'now', later than the real
    time of the newest version already recorded, so NAME resolved to an older one."""
    store, cat, spare = str(tmp_path / "store"), tmp_path / "c.db", tmp_path / "spare.db"
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    ids = []
    for i in range(3):
        (src / "v.txt").write_text(str(i))
        ids.append(archiver.archive([src], name="m", label=f"v{i}", store=store, catalog=spare).id)
    # a catalog that only knows the newest version (recorded with a real time, long ago)
    newest = archiver.show(ids[-1], store=store, catalog=spare)[1]
    only = Catalog(cat, Settings.resolve(store).store_url)
    only.record_manifest(newest, newest.canonical_json(), at=1000.0)
    only.close()
    assert archiver.show("m", store=store, catalog=cat)[0] == ids[-1]
    raw = RawStore(store)
    for key in raw.keys("events/"):  # a store written before the event log: no ingestion times to replay
        raw.delete(key)
    res = archiver.rebuild_catalog(store=store, catalog=cat)
    assert res.ok and res.added == ids[:-1]
    assert archiver.show("m", store=store, catalog=cat)[0] == ids[-1]
    rows = archiver.list_archives("m", store=store, catalog=cat)
    assert [r.id for r in rows] == ids and [r.recorded_at for r in rows] == [None, None, 1000.0]
    r = run_cli("--store", store, "--catalog", str(cat), "list")
    assert r.code == 0
    lines = r.out.splitlines()
    assert [ln.split()[1] for ln in lines[:2]] == ["-", "-"] and lines[2].split()[1][:2] in ("19", "20")


def test_rebuild_records_parents_before_children_in_any_listing_order(tmp_path):
    store, cat = str(tmp_path / "store"), tmp_path / "c.db"
    with Repository.open(Settings.resolve(store, cat), create=True):
        pass
    raw = RawStore(store)
    parent = None
    ids = []
    for i in range(30):  # ids in random order relative to the chain
        data = canonical(good_json("n", [f"d{i}"], parent))
        parent = put_manifest(raw, data)
        ids.append(parent)
    res = archiver.rebuild_catalog(store=store, catalog=cat)
    assert res.ok and res.added == ids
    with archiver.open_repository(store, cat) as repo:
        assert repo.resolve("n") == ids[-1]
        assert [r.id for r in repo.list_archives()] == ids


# -- item 10: thousands of versions, streaming -----------------------------------------------------------

def _versions(raw: RawStore, name: str, n: int, entry: Entry) -> list[str]:
    ids: list[str] = []
    parent = None
    for i in range(n):
        data = Manifest(name=name, label=str(i), parent=parent, entries=(entry,)).canonical_json()
        parent = put_manifest(raw, data)
        ids.append(parent)
    return ids


def test_rebuild_of_3000_versions_of_one_name(tmp_path):
    store, cat = str(tmp_path / "store"), tmp_path / "c.db"
    with Repository.open(Settings.resolve(store, cat), create=True):
        pass
    ids = _versions(RawStore(store), "many", 3000, Entry(path="d", type="dir", mode=0o755))
    res = archiver.rebuild_catalog(store=store, catalog=cat)
    assert res.ok and res.added == ids and res.manifests == 3000
    with archiver.open_repository(store, cat, settings=None) as repo:
        assert repo.resolve("many") == ids[-1]
        assert repo.resolve("many@0") == ids[0]
        assert repo.latest("many") == ids[-1]
        assert [r.id for r in repo.list_archives("many")] == ids
        assert archiver.verify(["many"], repo=repo).ok  # its chain: one root, one head


def _big_entry(i: int, chunks: int) -> Entry:
    refs = tuple(ChunkRef(k * 10, 10, blake3.blake3(f"{i}-{k}".encode()).hexdigest(), 10, "raw")
                 for k in range(chunks))
    h = blake3.blake3(str(i).encode()).hexdigest()
    return Entry(path=f"f{i}", type="file", mode=0o644, size=10 * chunks, blake3=h, sha256=h, chunks=refs)


def _rebuild_peak(store: str, cat: Path) -> int:
    tracemalloc.start()
    try:
        res = archiver.rebuild_catalog(store=store, catalog=cat)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.ok
    return peak


def test_rebuild_memory_does_not_grow_with_the_manifests(tmp_path, monkeypatch):
    """Python memory at peak is about one batch of parsed manifests, whether the store
    holds 6 or 30 manifests of ~27 KB each (holding them all would make it ~5 times more)."""
    monkeypatch.setattr(repository, "REBUILD_BATCH_BYTES", 64 * 1024)
    store = str(tmp_path / "store")
    with Repository.open(Settings.resolve(store, tmp_path / "init.db"), create=True):
        pass
    raw = RawStore(store)
    total = 0

    def add(first: int, n: int) -> None:
        nonlocal total
        for i in range(first, first + n):
            data = Manifest(name=f"big{i}", entries=(_big_entry(i, 300),)).canonical_json()
            put_manifest(raw, data)
            total += len(data)

    add(0, 6)
    small = _rebuild_peak(store, tmp_path / "a.db")
    add(6, 24)
    large = _rebuild_peak(store, tmp_path / "b.db")
    assert total > 750_000
    assert large < small * 1.25 + 64 * 1024, (small, large, total)


# -- item 19: verify --all on an empty catalog ----------------------------------------------------------

def test_verify_all_with_empty_catalog_but_manifests_in_store(home, tmp_path):
    store, cat = str(tmp_path / "store"), tmp_path / "c.db"
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    archiver.archive([src], name="m", store=store, catalog=tmp_path / "other.db")
    archiver.archive([src / "tokenizer"], name="t", store=store, catalog=tmp_path / "other.db")
    with pytest.raises(EmptyCatalogError) as ei:
        archiver.verify([], all_archives=True, store=store, catalog=cat)
    err = ei.value
    assert (err.catalog, err.manifests, err.exit_code) == (str(cat), 2, 2) and err.store
    assert "catalog rebuild" not in str(err) and "--" not in str(err)  # the CLI words the remedy
    for args in (["verify", "--all"], ["verify", "--all", "--json"], ["verify", "--all", "--deep"]):
        r = run_cli("--store", store, "--catalog", str(cat), *args)
        assert r.code == 2 and r.err.count("\n") == 1, r.err
        assert (json.loads(r.out)["kind"] == "empty-catalog") if "--json" in args else r.out == ""
        assert "records no archives" in r.err and "2 manifest(s)" in r.err and "archiver catalog rebuild" in r.err
    assert run_cli("--store", store, "--catalog", str(cat), "catalog", "rebuild").code == 0
    assert run_cli("--store", store, "--catalog", str(cat), "verify", "--all").code == 0


def test_verify_all_with_empty_catalog_and_empty_store_is_ok(tmp_path):
    store, cat = str(tmp_path / "store"), tmp_path / "c.db"
    with Repository.open(Settings.resolve(store, tmp_path / "init.db"), create=True):
        pass
    rep = archiver.verify([], all_archives=True, store=store, catalog=cat)
    assert rep.ok and rep.manifests == []
    RawStore(store).write("manifests/readme.txt", b"not a manifest")  # strays are not manifests
    assert archiver.verify([], all_archives=True, store=store, catalog=cat).ok
    assert json.loads(run_cli("--store", store, "--catalog", str(cat), "verify", "--all", "--json").out)["ok"]
