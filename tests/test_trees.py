"""Manifest v3 trees (manifests.model, archiver.repository): a manifest of more than
TREE_THRESHOLD entries keeps them in content-addressed directory listings shared by
unchanged directories across versions; small manifests keep their v1/v2 bytes and ids; a
missing or damaged tree is reported by verify, refused by restore, copied by replicate
and healed by repair; sealed stores keep entries inline."""
from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

from archiver import layout
from archiver.errors import ManifestError as ArchiverManifestError
from archiver.repository import Repository
from archiver.settings import Settings
from manifests import model
from manifests.catalog import parse_condition
from manifests.errors import ManifestError
from manifests.model import (EMPTY_TREE, Entry, Manifest, canonical, manifest_id, parse_manifest, parse_tree,
                             resolve_trees, tree_objects, with_filemaps, with_trees)
from tests.helpers import RawStore, make_checkpoint, run_cli, tree

DATA = Path(__file__).resolve().parent / "data"


def flip(b: bytes) -> bytes:
    return b[:-2] + bytes([b[-2] ^ 1]) + b[-1:]


def file_entry(path: str, n: int = 0) -> Entry:
    return Entry(path=path, type="file", mode=0o644, size=0, mtime_ns=n, blake3="a" * 64, sha256="b" * 64,
                 format="")


def big_tree(dirs: int = 20, files: int = 60) -> list[Entry]:
    """dirs x files entries in `top/dNN/`, over the threshold, plus an empty directory."""
    out = [Entry(path="top", type="dir", mode=0o755, mtime_ns=1), Entry(path="top/empty", type="dir", mode=0o755)]
    for d in range(dirs):
        out.append(Entry(path=f"top/d{d:02}", type="dir", mode=0o755, mtime_ns=2))
        out += [file_entry(f"top/d{d:02}/f{i:03}", d) for i in range(files)]
    return out


def resolved(m: Manifest, objects: dict[str, bytes]) -> Manifest:
    return resolve_trees(parse_manifest(m.canonical_json(), expected_id=m.id), lambda h, _: objects[h])[0]


# -- the format ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["small", "big"])
def test_stored_manifests_under_the_threshold_keep_their_bytes_and_ids(kind: str) -> None:
    (path,) = DATA.glob(f"manifest_v1_{kind}_*.json")
    mid, data = path.stem.rsplit("_", 1)[1], path.read_bytes()
    m = parse_manifest(data, expected_id=mid)
    assert with_trees(m) == m and with_trees(m).canonical_json() == data
    v2 = with_filemaps(m)
    assert with_trees(v2).canonical_json() == v2.canonical_json()  # v2 stays v2


def test_large_manifest_goes_through_trees_and_reads_back() -> None:
    entries = big_tree()
    m = with_trees(Manifest(name="m", entries=tuple(entries)))
    assert m.tree and m.entry_count == len(entries) > model.TREE_THRESHOLD
    root = json.loads(m.canonical_json())
    assert root["version"] == 3 and "entries" not in root and len(m.canonical_json()) < 300
    top, objects, by_dir = tree_objects(m.entries)
    assert top == m.tree and len(objects) == 22  # top, top/, 20 directories; the empty one has none
    assert by_dir["top/empty"] == EMPTY_TREE and EMPTY_TREE not in objects
    back = resolved(m, objects)
    assert [e.to_json() for e in back.entries] == [e.to_json() for e in sorted(entries, key=lambda e: e.path)]
    assert back.canonical_json() == m.canonical_json() and back.resolved


def test_an_unchanged_directory_keeps_its_tree_and_a_change_costs_its_depth() -> None:
    a = big_tree()
    b = [file_entry(e.path, 9) if e.path == "top/d07/f003" else e for e in a]
    _, oa, da = tree_objects(a)
    _, ob, db = tree_objects(b)
    assert set(ob) - set(oa) == {db[""], db["top"], db["top/d07"]}  # the changed directory and its ancestors
    assert all(da[d] == db[d] for d in da if d not in ("", "top", "top/d07"))


def test_identical_directories_share_one_tree() -> None:
    entries = [dataclasses.replace(e, mtime_ns=0) for e in big_tree()]
    _, objects, by_dir = tree_objects(entries)
    assert len(objects) == 3 and len({by_dir[f"top/d{d:02}"] for d in range(20)}) == 1


@pytest.mark.parametrize("entries", [
    [file_entry(f"loose/f{i}") for i in range(1100)],  # parent directory has no entry
    [Entry(path="a", type="dir", mode=0o755)] + [file_entry(f"a/./f{i}") for i in range(1100)],
])
def test_entries_that_do_not_form_a_tree_stay_inline(entries: list[Entry]) -> None:
    m = Manifest(name="m", entries=tuple(entries))
    assert tree_objects(entries) is None and with_trees(m) == m
    assert json.loads(m.canonical_json())["version"] == 1


def _tree(rows: list[dict]) -> bytes:
    return canonical({"entries": rows, "format": model.TREE_FORMAT, "version": 1})


FILE = file_entry("x").to_json()


@pytest.mark.parametrize("rows, why", [
    ([{**{k: v for k, v in FILE.items() if k != "path"}, "name": "b"},
      {**{k: v for k, v in FILE.items() if k != "path"}, "name": "a"}], "canonical"),  # unsorted
    ([{**{k: v for k, v in FILE.items() if k != "path"}, "name": "a"}] * 2, "twice"),
    ([{**{k: v for k, v in FILE.items() if k != "path"}, "name": "a/b"}], "name"),
    ([{**{k: v for k, v in FILE.items() if k != "path"}, "name": ".."}], "name"),
    ([{**FILE, "name": "a"}], "path"),
    ([{**{k: v for k, v in FILE.items() if k != "path"}, "name": "a", "tree": "c" * 64}], "subtree"),
    ([{"mode": 493, "name": "d", "tree": EMPTY_TREE, "type": "dir"}], "subtree"),
    ([{**{k: v for k, v in FILE.items() if k != "path"}, "name": "a", "extra": 1}], "canonical"),
])
def test_bad_trees_are_refused(rows: list[dict], why: str) -> None:
    data = _tree(rows)
    with pytest.raises(ManifestError, match=why):
        parse_tree(data, manifest_id(data), "top")
    with pytest.raises(ManifestError, match="does not match its hash"):
        parse_tree(data, "0" * 64, "top")


@pytest.mark.parametrize("edit, why", [
    (lambda d: {**d, "entry_count": model.TREE_THRESHOLD}, "entry count"),
    (lambda d: {**d, "entry_count": model.MAX_TREE_ENTRIES + 1}, "entry count"),
    (lambda d: {**d, "entries": []}, "entries"),
    (lambda d: {**d, "tree": "xyz"}, "tree"),
])
def test_malformed_v3_roots_are_refused(edit, why: str) -> None:
    d = with_trees(Manifest(name="m", entries=tuple(big_tree()))).to_dict()
    with pytest.raises(ManifestError, match=why):
        parse_manifest(canonical(edit(d)))


def test_a_root_whose_trees_hold_another_count_is_refused() -> None:
    m = with_trees(Manifest(name="m", entries=tuple(big_tree())))
    _, objects, _ = tree_objects(m.entries)
    for count in (m.entry_count - 1, m.entry_count + 1):
        other = dataclasses.replace(m, entry_count=count)
        with pytest.raises(ManifestError, match="entries"):
            resolve_trees(parse_manifest(other.canonical_json()), lambda h, _: objects[h])


# -- archive, verify, restore, replicate, repair ---------------------------------------------------

@pytest.fixture
def low_threshold(monkeypatch: pytest.MonkeyPatch) -> int:
    """Any manifest of more than 3 entries uses trees, so small fixtures exercise v3."""
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    return 3


def archive_v3(tmp_path: Path, store: str) -> tuple[Path, str, Manifest]:
    ck = make_checkpoint(tmp_path / "src" / "ck", layers=2, dim=64)
    r = run_cli("--store", store, "archive", str(ck), "--name", "m")
    assert r.code == 0, r.err
    mid = r.out.strip()
    m = parse_manifest(RawStore(store).read(layout.manifest(mid)), expected_id=mid)
    assert m.tree and not m.entries
    return ck, mid, m


def tree_key_of(store: str, mid: str, where: str) -> str:
    """The key of the tree listing directory `where` of manifest `mid`, from its resolved entries."""
    raw = RawStore(store)
    m = resolve_trees(parse_manifest(raw.read(layout.manifest(mid)), expected_id=mid),
                      lambda h, _: raw.read(layout.tree(h)))[0]
    return layout.tree(tree_objects(m.entries)[2][where])


def test_v3_archive_restores_verifies_and_an_unchanged_rearchive_adds_only_a_root(
        low_threshold: int, tmp_path: Path, store_url: str, home: Path) -> None:
    ck, mid, m = archive_v3(tmp_path, store_url)
    raw = RawStore(store_url)
    trees = set(raw.keys(layout.TREES))
    assert len(trees) == 3  # top, ck, ck/tokenizer (empty_dir names none)
    assert run_cli("--store", store_url, "verify", mid, "--deep").code == 0
    assert run_cli("--store", store_url, "restore", mid, str(tmp_path / "out")).code == 0
    assert tree(tmp_path / "out" / "ck") == tree(ck)
    again = run_cli("--store", store_url, "archive", str(ck), "--name", "m")
    assert again.code == 0 and again.out.strip() != mid
    assert set(raw.keys(layout.TREES)) == trees  # every tree reused
    assert len(raw.read(layout.manifest(again.out.strip()))) < 400
    (ck / "tokenizer" / "vocab.txt").write_text("changed")
    third = run_cli("--store", store_url, "archive", str(ck), "--name", "m")
    assert third.code == 0 and len(set(raw.keys(layout.TREES)) - trees) == 3  # tokenizer, ck, top


@pytest.mark.parametrize("damage", ["tampered", "missing"])
def test_bad_tree_is_reported_by_verify_and_refused_by_restore(low_threshold: int, tmp_path: Path,
                                                              home: Path, damage: str) -> None:
    store = str(tmp_path / "store")
    ck, mid, m = archive_v3(tmp_path, store)
    key = tree_key_of(store, mid, "ck/tokenizer")
    raw = RawStore(store)
    if damage == "tampered":
        raw.mutate(key, flip)
    else:
        raw.delete(key)
    v = run_cli("--store", store, "verify", mid, "--deep", "--json")
    assert v.code == 1
    problems = v.json()["problems"]
    h = key.rsplit("/", 1)[-1].removesuffix(".json")
    assert [(p["kind"], p["path"], p["chunk"]) for p in problems] == [("tree", "ck/tokenizer", h)]
    assert ("missing" if damage == "missing" else "does not match its hash") in problems[0]["detail"]
    r = run_cli("--store", store, "restore", mid, str(tmp_path / "out"))
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1 and "tree" in r.err
    assert not (tmp_path / "out").exists()


def test_replicate_copies_trees_and_repair_heals_one(low_threshold: int, tmp_path: Path, home: Path) -> None:
    store, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    ck, mid, m = archive_v3(tmp_path, store)
    assert run_cli("--store", store, "replicate", "--all", "--to", copy).code == 0
    trees = sorted(RawStore(store).keys(layout.TREES))
    assert trees and sorted(RawStore(copy).keys(layout.TREES)) == trees
    assert all(RawStore(copy).read(k) == RawStore(store).read(k) for k in trees)
    assert run_cli("--store", copy, "verify", "--all", "--deep").code == 0
    key = tree_key_of(store, mid, "ck")  # its loss hides ck/tokenizer's tree too: healed in turn
    RawStore(store).delete(key)
    RawStore(store).mutate(tree_key_of(copy, mid, "ck/tokenizer"), flip)
    plan = run_cli("--store", store, "repair", "--from", copy, "--dry-run", "--json")
    assert plan.code == 0, plan.err
    assert [(f["kind"], f["state"]) for f in plan.json()["fixes"]] == [("tree", "missing")]
    fixed = run_cli("--store", store, "repair", "--from", copy, "--json")
    assert fixed.code == 0, fixed.err
    assert [(f["kind"], f["state"], f["action"]) for f in fixed.json()["fixes"]] == [
        ("tree", "missing", "written"), ("tree", "damaged", "replaced")]
    assert all(RawStore(copy).read(k) == RawStore(store).read(k) for k in trees)
    assert run_cli("--store", store, "verify", mid, "--deep").code == 0


def test_verify_copies_reports_a_copy_missing_a_tree(low_threshold: int, tmp_path: Path, home: Path) -> None:
    store, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    ck, mid, m = archive_v3(tmp_path, store)
    assert run_cli("--store", store, "copies", "add", copy).code == 0
    assert run_cli("--store", store, "replicate", "--all", "--to", copy).code == 0
    assert run_cli("--store", store, "verify", "--all", "--copies", "--json").json()["copies"]["copies"] == {mid: "2/2"}
    key = tree_key_of(copy, mid, "ck/tokenizer")
    RawStore(copy).delete(key)
    bad = run_cli("--store", store, "verify", "--all", "--copies", "--json")
    assert bad.code == 1 and bad.json()["copies"]["copies"] == {mid: "1/2"}
    h = key.rsplit("/", 1)[-1].removesuffix(".json")
    assert [(p["kind"], p["path"], p["chunk"]) for p in bad.json()["copies"]["problems"]] == [
        ("tree", "ck/tokenizer", h)]


# -- the repository and the catalog ----------------------------------------------------------------

@pytest.fixture
def repo(tmp_path: Path):
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as r:
        yield r


def test_commit_writes_trees_before_the_root_and_rebuild_records_v3(repo: Repository, tmp_path: Path) -> None:
    entries = tuple(big_tree())
    mid = repo.commit_manifest(Manifest(name="m", entries=entries)).id
    raw = RawStore(str(tmp_path / "store"))
    assert json.loads(raw.read(layout.manifest(mid)))["version"] == 3 and len(raw.keys(layout.TREES)) == 22
    assert repo.load_manifest(mid).entries == tuple(sorted(entries, key=lambda e: e.path))
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat2.db")) as fresh:
        assert fresh.rebuild_catalog().added == [mid]
        assert fresh.list_archives()[0].file_count == 1200
    raw.delete(layout.tree(tree_objects(entries)[2]["top/d03"]))
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat3.db")) as fresh:
        res = fresh.rebuild_catalog()
        assert res.added == [] and [p.kind for p in res.problems] == ["manifest"]
        assert "tree" in res.problems[0].detail and "missing" in res.problems[0].detail
    with pytest.raises(ArchiverManifestError, match="top/d03"):
        repo.load_manifest(mid)


def test_catalog_adds_no_file_rows_for_unchanged_trees(repo: Repository, tmp_path: Path) -> None:
    entries = big_tree()
    a = repo.commit_manifest(Manifest(name="m", label="a", entries=tuple(entries))).id
    conn = sqlite3.connect(tmp_path / "cat.db")
    try:
        first = conn.execute("SELECT count(*) FROM files").fetchone()[0]
        b = repo.commit_manifest(Manifest(name="m", label="b", meta={"run": "b"}, entries=tuple(entries),
                                          parent=a)).id
        assert conn.execute("SELECT count(*) FROM files").fetchone()[0] == first  # unchanged: no rows
        changed = [file_entry(e.path, 9) if e.path == "top/d07/f003" else e for e in entries]
        repo.commit_manifest(Manifest(name="m", label="c", entries=tuple(changed), parent=b))
        added = conn.execute("SELECT count(*) FROM files").fetchone()[0] - first
        assert added == 1 + 21 + 60  # the new trees' entries: the top's, top's and top/d07's
        json_size = conn.execute("SELECT length(json) FROM manifests WHERE id=?", (b,)).fetchone()[0]
        assert json_size < 400
    finally:
        conn.close()
    rows = {r.id: r for r in repo.list_archives()}
    assert rows[b].file_count == rows[a].file_count == 1200
    assert [r.id for r in repo.search([parse_condition("meta.run=b")])] == [b]  # search reads the fields rows


def test_sealed_store_keeps_entries_inline(tmp_path: Path, home: Path, low_threshold: int) -> None:
    import pyrage
    ident = pyrage.x25519.Identity.generate()
    (tmp_path / "id.txt").write_text(f"# public key: {ident.to_public()}\n{ident}\n")
    store = str(tmp_path / "store")
    assert run_cli("--store", store, "store", "init", "--encrypt-to", str(ident.to_public())).code == 0
    ck = make_checkpoint(tmp_path / "src" / "ck", layers=2, dim=64)
    r = run_cli("--store", store, "archive", str(ck), "--name", "m", "--json")
    assert r.code == 0, r.err
    assert RawStore(store).keys(layout.TREES) == []


def test_show_lists_the_entries_and_a_bag_carries_the_trees(low_threshold: int, tmp_path: Path, home: Path) -> None:
    import bagit
    store = str(tmp_path / "store")
    ck, mid, m = archive_v3(tmp_path, store)
    shown = run_cli("--store", store, "show", mid, "--json").json()["manifest"]
    assert shown["tree"] == m.tree and len(shown["entries"]) == m.entry_count
    assert {e["path"] for e in shown["entries"]} >= {"ck", "ck/tokenizer/vocab.txt", "ck/empty_dir"}
    r = run_cli("--store", store, "export", mid, str(tmp_path / "bag"), "--bagit", "--json")
    assert r.code == 0, r.err
    bag = bagit.Bag(str(tmp_path / "bag"))
    bag.validate()
    trees = sorted((tmp_path / "bag" / "archiver" / "trees").iterdir())
    assert [p.name for p in trees] == sorted(k.rsplit("/", 1)[-1] for k in RawStore(store).keys(layout.TREES))
    assert all(manifest_id(p.read_bytes()) == p.stem for p in trees)


def test_shared_trees_are_fetched_once_and_cannot_inflate_a_manifest() -> None:
    entries = [dataclasses.replace(e, mtime_ns=0) for e in big_tree()]
    m = with_trees(Manifest(name="m", entries=tuple(entries)))
    _, objects, _ = tree_objects(entries)
    calls: list[str] = []
    back = resolve_trees(parse_manifest(m.canonical_json()), lambda h, _: calls.append(h) or objects[h])[0]
    assert len(back.entries) == len(entries) and sorted(calls) == sorted(objects)  # 20 directories, one GET
    small = dataclasses.replace(m, entry_count=model.TREE_THRESHOLD + 1)  # a root declaring fewer entries
    with pytest.raises(ManifestError, match="more than"):
        resolve_trees(parse_manifest(small.canonical_json()), lambda h, _: objects[h])


def test_commit_refuses_a_root_without_its_entries(repo: Repository, tmp_path: Path) -> None:
    m = with_trees(Manifest(name="m", entries=tuple(big_tree())))
    root = parse_manifest(m.canonical_json())  # trees not resolved: no entries in memory
    with pytest.raises(ArchiverManifestError, match="were not given"):
        repo.commit_manifest(root)
    assert RawStore(str(tmp_path / "store")).keys(layout.MANIFESTS) == []


# -- commit cost: trees built once, only new trees parsed (issue 15) -----------------------------

def test_a_commit_builds_its_trees_once(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    from archiver import repository as repository_mod
    from manifests import catalog as catalog_mod
    calls: list[int] = []
    real = model.tree_objects

    def counted(entries, *rest):
        calls.append(len(entries))
        return real(entries, *rest)
    for mod in (model, repository_mod, catalog_mod):
        monkeypatch.setattr(mod, "tree_objects", counted)
    mid = repo.commit_manifest(Manifest(name="m", entries=tuple(big_tree()))).id
    assert calls == [len(big_tree())]  # stored, proved and recorded from the same objects
    assert repo.list_archives()[0].file_count == 1200 and repo.load_manifest(mid).entry_count == len(big_tree())


def test_a_commit_parses_only_the_trees_no_recorded_manifest_named(repo: Repository,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = model.check_tree  # the commit's proof: parse_tree's checks, no entries built
    monkeypatch.setattr(model, "check_tree", lambda data, h, where: parsed.append(where) or real(data, h, where))
    entries = big_tree()
    a = repo.commit_manifest(Manifest(name="m", label="a", entries=tuple(entries))).id
    assert sorted(parsed) == ["", "top"] + [f"top/d{d:02}" for d in range(20)]  # every tree once
    parsed.clear()
    changed = [file_entry(e.path, 9) if e.path == "top/d07/f003" else e for e in entries]
    b = repo.commit_manifest(Manifest(name="m", label="b", entries=tuple(changed), parent=a)).id
    assert sorted(parsed) == ["", "top", "top/d07"]  # the changed directory and its ancestors
    parsed.clear()
    monkeypatch.setattr(model, "check_tree", real)
    back = repo.load_manifest(b)
    assert [e.to_json() for e in back.entries] == [e.to_json() for e in sorted(changed, key=lambda e: e.path)]


def test_a_commit_refuses_an_entry_its_tree_would_not_read_back(repo: Repository, tmp_path: Path) -> None:
    bad = [dataclasses.replace(e, blake3="not-a-hash") if e.path == "top/d04/f001" else e for e in big_tree()]
    with pytest.raises(ArchiverManifestError, match="trees do not read back.*top/d04"):
        repo.commit_manifest(Manifest(name="m", entries=tuple(bad)))
    raw = RawStore(str(tmp_path / "store"))
    assert raw.keys(layout.MANIFESTS) == [] and raw.keys(layout.TREES) == []  # nothing stored


def test_prove_trees_skips_known_trees_and_refuses_bytes_that_are_not_the_entries() -> None:
    entries = big_tree()
    m = with_trees(Manifest(name="m", entries=tuple(entries)))
    top, objects, by_dir = tree_objects(entries)
    assert model.prove_trees(m, objects, by_dir) == len(objects)
    assert model.prove_trees(m, objects, by_dir, known={by_dir["top/d01"], by_dir["top/d02"]}) == len(objects) - 2
    h = by_dir["top/d05"]
    rows = json.loads(objects[h])
    rows["entries"][0]["size"] = 1  # well-formed, but not these entries: its hash no longer matches
    with pytest.raises(ManifestError, match="does not match its hash"):
        model.prove_trees(m, {**objects, h: canonical(rows)}, by_dir)
    with pytest.raises(ManifestError, match="top tree"):
        model.prove_trees(dataclasses.replace(m, entry_count=m.entry_count - 1), objects, by_dir)


def test_trees_written_at_once_are_all_durable_before_the_root(repo: Repository, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    entries = big_tree()
    _, objects, by_dir = tree_objects(entries)
    real = Repository._put_tree
    bad = by_dir["top/d11"]

    def put(self, h, data, hot=None):
        if h == bad:
            raise OSError("disk full")
        return real(self, h, data, hot)
    monkeypatch.setattr(Repository, "_put_tree", put)
    with pytest.raises(OSError, match="disk full"):
        repo.commit_manifest(Manifest(name="m", entries=tuple(entries)))
    raw = RawStore(str(tmp_path / "store"))
    assert raw.keys(layout.MANIFESTS) == [] and repo.list_archives() == []  # no root names a missing tree
    assert len(raw.keys(layout.TREES)) == len(objects) - 1  # the others were all written (and finished)
    monkeypatch.setattr(Repository, "_put_tree", real)
    mid = repo.commit_manifest(Manifest(name="m", entries=tuple(entries))).id
    assert sorted(raw.keys(layout.TREES)) == sorted(layout.tree(h) for h in objects)
    assert repo.load_manifest(mid).entry_count == len(entries)


# -- the plain reader (one regular expression per entry) against the JSON reader ------------------

def _check_answer(data: bytes, h: str | None = None, where: str = "top") -> str | None:
    """What check_tree (the commit's proof of a tree it made) says: None, or the error."""
    try:
        model.check_tree(data, manifest_id(data) if h is None else h, where)
    except ManifestError as err:
        return str(err)
    return None


def _tree_answers(data: bytes, where: str = "top", h: str | None = None) -> list[tuple[object, str | None]]:
    """What parse_tree and the JSON reader each say: (entries, None) or (None, the error)."""
    out: list[tuple[object, str | None]] = []
    for read in (parse_tree, model._parse_tree_json):
        try:
            out.append((read(data, manifest_id(data) if h is None else h, where), None))
        except ManifestError as err:
            out.append((None, str(err)))
    return out


def _plain_rows() -> list[dict]:
    """A tree of every kind of entry the plain reader takes: files of no, one and several
    inline chunks, one through a file map, directories with and without mtime and subtree,
    a symlink, and names with every printable ASCII character JSON writes as is."""
    h = "c" * 64
    chunks = [[0, 100, h, 90, "zstd"], [100, 50, "d" * 64, 50, "raw"], [150, 1, h, 0, ""]]
    files = [
        {"name": "a", "size": 0, "chunks": []},
        {"name": "b.bin", "size": 100, "chunks": chunks[:1]},
        {"name": "c~!#$%&'()*+,-.:;<=>?@[]^_`{|} ", "size": 151, "chunks": chunks, "format": "safetensors"},
        {"name": "e", "size": 200, "chunk_count": model.FILEMAP_THRESHOLD + 1, "filemap": "e" * 64},
    ]
    rows = []
    for f in files:
        base = {k: v for k, v in file_entry("x", 7).to_json().items() if k not in ("path", "chunks")}
        rows.append({**base, **f})
    rows += [{"mode": 0o755, "name": "d1", "type": "dir"},
             {"mode": 0o700, "mtime_ns": -5, "name": "d2", "tree": "f" * 64, "type": "dir"},
             {"mode": 0o777, "name": "l", "target": "../x y", "type": "symlink"}]
    return sorted(rows, key=lambda r: r["name"])


def test_plain_tree_reader_accepts_and_refuses_exactly_what_the_json_reader_does() -> None:
    """Every tree of plain names archiver writes is read without JSON objects; every other
    byte string, canonical or not, gets the JSON reader's answer, word for word."""
    rows = _plain_rows()
    good = _tree(rows)
    assert model._plain_tree(good, "top") is not None
    (got, err), (want, _) = _tree_answers(good)
    assert err is None and got == want and len(got) == len(rows)
    assert [e.path for e, _ in got] == ["top/" + r["name"] for r in rows]
    assert model._plain_tree(_tree(rows), "") == model._parse_tree_json(good, manifest_id(good), "")

    def row(which: str, **kw: object) -> list[dict]:
        return [{**r, **kw} if r["name"] == which else r for r in rows]

    def drop(which: str, key: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k != key} if r["name"] == which else r for r in rows]

    text = good.decode()
    odd = [
        _tree(row("a", name="\u00e9")), _tree(row("a", format="\u00e9")), _tree(row("l", target="\u00e9")),
        _tree(row("a", name='q"')), _tree(row("a", name="q\\")),
        _tree(row("a", tech={"tensors": 1})),  # tech: the JSON reader's
        _tree(row("b.bin", chunks=[[0, 100, "c" * 64, 90, "zs/td"]])),
        _tree(row("a", name="a/b")), _tree(row("a", name="..")), _tree(row("a", name=".")),
        _tree(row("a", name="d1")),  # a name twice
        _tree(list(reversed(rows))),  # unsorted
        _tree(row("a", mode=0o10000)), _tree(row("d1", mode=0o10000)), _tree(row("l", mode=0o10000)),
        _tree(row("a", mode=True)), _tree(row("a", mode=1.0)), _tree(row("a", size=-1)),
        _tree(row("a", mtime_ns=model.MTIME_NS_MAX + 1)), _tree(row("d1", mtime_ns=model.MTIME_NS_MIN - 1)),
        _tree(row("a", mtime_ns=model.MTIME_NS_MIN)), _tree(row("d2", mtime_ns=model.MTIME_NS_MAX)),
        _tree(row("a", size=1)), _tree(row("b.bin", size=99)),
        _tree(row("b.bin", chunks=[[1, 100, "c" * 64, 90, "zstd"]])),
        _tree(row("b.bin", chunks=[[0, 100, "C" * 64, 90, "zstd"]])),
        _tree(row("b.bin", chunks=[[0, 100, "c" * 64, 100 + model.MAX_CHUNK_OVERHEAD + 1, "zstd"]])),
        _tree(row("b.bin", size=model.MAX_CHUNK_LENGTH + 1,
                  chunks=[[0, model.MAX_CHUNK_LENGTH + 1, "c" * 64, 9, "zstd"]])),
        _tree(row("b.bin", size=0, chunks=[[0, 0, "c" * 64, 0, "zstd"]])),
        _tree(row("b.bin", chunks=[[0, 100, "c" * 64, 90]])),
        _tree(row("e", chunk_count=model.FILEMAP_THRESHOLD)), _tree(row("e", size=10)),
        _tree(row("e", size=(model.FILEMAP_THRESHOLD + 1) * model.MAX_CHUNK_LENGTH + 1)),
        _tree(row("e", chunks=[])), _tree(drop("e", "chunk_count")), _tree(drop("b.bin", "chunks")),
        _tree(row("d2", tree=EMPTY_TREE)), _tree(row("d2", tree="")), _tree(row("d2", tree="F" * 64)),
        _tree(row("a", tree="f" * 64)), _tree(row("l", tree="f" * 64)), _tree(row("d1", size=0)),
        _tree(row("l", target="")), _tree(row("l", target="x" * 4097)), _tree(row("l", target="x" * 4096)),
        _tree(row("l", size=0)), _tree(row("a", type="dir")), _tree(row("d1", type="file")),
        _tree(row("a", path="top/a")), _tree([]), _tree(rows[:1]),
        text.replace('"mode":', '"mode": ', 1), text.replace("},{", "}, {", 1), text.replace("},{", "}{", 1),
        text.replace("},{", "},,{", 1), text.replace('"file"},', '"file"},\n', 1), text.replace("}],", "},],", 1),
        text.replace('"size":0,', '"size":00,', 1), text.replace('"size":0,', '"size":-0,', 1),
        text.replace('"mtime_ns":-5', '"mtime_ns":-05', 1), text + "\n", " " + text,
        text.replace(',"version":1}', ',"version":1,"x":0}'), text.replace('"version":1', '"version":2'),
        text.replace(model.TREE_FORMAT, "archiver-trees"),
        text.replace('"zstd"],[', '"zstd"] ,[', 1), text.replace('"zstd"],[', '"zstd"],,[', 1),
        text.replace('"zstd"],[', '"zstd"][', 1), text.replace('"zstd"],[', '"zstd"],', 1),
        text.replace('"size":100,', '"size":' + "1" * 40 + ",", 1),
    ]
    for data in odd + [good]:
        data = data if isinstance(data, bytes) else data.encode()
        (got, err), (want, want_err) = _tree_answers(data)
        assert (got, err) == (want, want_err), data[:120]
        assert _check_answer(data) == err, data[:120]  # the commit's proof: the same verdict and words
        assert _check_answer(data, "0" * 64) == _tree_answers(data, h="0" * 64)[0][1]
    odd_bytes = [d if isinstance(d, bytes) else d.encode() for d in odd]
    valid = [i for i, d in enumerate(odd_bytes) if _tree_answers(d)[0][1] is None]
    # escaped text, tech and an escaped codec (the JSON reader's), extreme mtimes and the
    # longest target (plain), the empty tree, one entry (plain)
    assert valid == [1, 2, 5, 6, 20, 21, 44, 49, 50]
    assert [i for i in valid if model._plain_tree(odd_bytes[i], "top") is not None] == [20, 21, 44, 50]


def test_the_small_file_trees_archiver_writes_are_read_by_the_plain_reader() -> None:
    entries = big_tree()
    _, objects, by_dir = tree_objects(entries)
    for d, h in by_dir.items():
        if h != EMPTY_TREE or d == "":
            assert model._plain_tree(objects[h], d) == model._parse_tree_json(objects[h], h, d)
            assert model._plain_tree(objects[h], d) is not None
            assert model._plain_tree(objects[h], d, build=False) == []  # the commit's check, no entries built


def previous_of(entries: list[Entry]) -> dict[str, model.PreviousTree]:
    """Directory -> the tree read for it (as the files cache's treereuse reads them)."""
    _, objects, by_dir = tree_objects(entries)
    out = {}
    for d, h in by_dir.items():
        if h in objects:
            out[d] = model.previous_tree(h, objects[h], parse_tree(objects[h], h, d))
    return out


def test_an_unchanged_directory_keeps_its_previous_tree_without_serialising_it(monkeypatch) -> None:
    entries = big_tree()
    prev = previous_of(entries)
    # the entries as read back from those trees: the objects the files cache hands out
    read = {e.path: e for p in prev.values() for e, _ in p.entries}
    again = [read.get(e.path, e) if e.type != "dir" else dataclasses.replace(e) for e in entries]
    serialised: list[int] = []
    real = model.tree_bytes
    monkeypatch.setattr(model, "tree_bytes", lambda es, hs: serialised.append(len(es)) or real(es, hs))
    made = tree_objects(again, prev)
    assert serialised == [0]  # only the empty directory's (no tree is stored for it)
    monkeypatch.setattr(model, "tree_bytes", real)
    assert made == tree_objects(entries)
    # one changed file: its directory and the ones above it get new trees, the rest are kept
    changed = [file_entry(e.path, 9) if e.path == "top/d07/f003" else e for e in again]
    monkeypatch.setattr(model, "tree_bytes", lambda es, hs: serialised.append(len(es)) or real(es, hs))
    serialised.clear()
    made = tree_objects(changed, prev)
    assert sorted(serialised) == [0, 1, 21, 60]  # empty, "", top, top/d07
    monkeypatch.setattr(model, "tree_bytes", real)
    assert made == tree_objects(changed)
    assert made[2]["top/d03"] == prev["top/d03"].hash and made[2]["top/d07"] != prev["top/d07"].hash


def test_a_previous_tree_is_kept_only_for_the_very_entries_it_was_read_as() -> None:
    entries = big_tree()
    entries[5] = dataclasses.replace(entries[5], tech={"n": 1})
    prev = previous_of(entries)
    read = {e.path: e for p in prev.values() for e, _ in p.entries}
    # equal values that serialise otherwise (1.0 vs 1) are not the entry read: serialised again
    again = [dataclasses.replace(read[e.path], tech={"n": 1.0}) if e.path == entries[5].path
             else read.get(e.path, e) for e in entries]
    made = tree_objects(again, prev)
    assert made == tree_objects(again) and made[0] != tree_objects(entries)[0]
    d = entries[5].path.rsplit("/", 1)[0]
    moved = [dataclasses.replace(e, mtime_ns=99) if e.path == d else read.get(e.path, e) for e in entries]
    assert tree_objects(moved, prev) == tree_objects(moved)  # a directory's changed mtime: new parent tree
    h, data = prev[d].hash, prev[d].data
    assert model.previous_tree(h, data + b" ", prev[d].entries) is None  # never bytes under another name
    # symlinks are made afresh from the scan: kept by equal mode and target, not by identity
    links = [*entries, Entry(path="top/d02/link", type="symlink", mode=0o777, target="f001")]
    prev = previous_of(links)
    read = {e.path: e for p in prev.values() for e, _ in p.entries}
    fresh = [dataclasses.replace(e) if e.type == "symlink" else read.get(e.path, e) for e in links]
    assert model.same_as_previous([e for e in fresh if e.path.startswith("top/d02/")], tree_objects(links)[2],
                                  prev["top/d02"])
    retargeted = [dataclasses.replace(e, target="f002") if e.type == "symlink" else e for e in fresh]
    assert tree_objects(retargeted, prev) == tree_objects(retargeted) != tree_objects(links)


def test_tree_bytes_laid_out_by_formatting_are_what_canonical_writes() -> None:
    """tree_bytes formats the rows of plain entries itself: byte for byte `canonical`'s tree
    for every kind of entry, escaped text included, and `canonical`'s own for the rest."""
    from manifests.model import ChunkRef
    h = "ab" * 32
    base = file_entry("top/f", 3)
    kinds = [
        base, dataclasses.replace(base, path="top/e", size=0, chunks=()),
        dataclasses.replace(base, path="top/n", mtime_ns=None),
        dataclasses.replace(base, path='top/q"\\ \u00e9\u2028\U0001f600\udc80', format="safetensors"),
        dataclasses.replace(base, path="top/c", chunks=(ChunkRef(0, base.size, h, 7, 'z"\u00e9'),)),
        dataclasses.replace(base, path="top/m", chunks=(), filemap=h, chunk_count=model.FILEMAP_THRESHOLD + 1),
        Entry(path="top/d", type="dir", mode=0o755), Entry(path="top/d2", type="dir", mode=0o700, mtime_ns=-5),
        Entry(path="top/sub", type="dir", mode=0o755, mtime_ns=7),
        Entry(path="top/l", type="symlink", mode=0o777, target="../x \u00e9"),
    ]
    odd = [  # rows only canonical writes: the whole tree goes through it
        dataclasses.replace(base, path="top/t", tech={"b": {"z": 1, "a": 1.5}, "a": [True, None]}),
        dataclasses.replace(base, path="top/b", mode=True), dataclasses.replace(base, path="top/s", size=3.0),
        dataclasses.replace(base, path="top/k", chunks=(ChunkRef(0, 3.0, h, 7, "zstd"),)),
        Entry(path="top/x", type="other", mode=0o644), Entry(path="top/dm", type="dir", mode=0o755, mtime_ns=1.0),
    ]
    hashes = {"top/sub": "cd" * 32, "top/d": EMPTY_TREE, "top/d2": EMPTY_TREE}
    for extra in [[]] + [[o] for o in odd]:
        entries = list(reversed(kinds)) + extra  # unsorted: sorted by name in the tree
        assert model.tree_bytes(entries, hashes) == model._tree_bytes_json(entries, hashes), extra
    assert b'"tree":"' + b"cd" * 32 in model.tree_bytes(kinds, hashes)
    _, objects, by_dir = tree_objects(big_tree())
    assert all(objects[h] == model._tree_bytes_json(
        [e for e in big_tree() if model.parent_of(e.path) == d], by_dir) for d, h in by_dir.items() if h in objects)


def test_plain_reader_one_chunk_fast_path_builds_entries_equal_to_the_json_readers_in_every_field() -> None:
    """Files of no chunk or one (most small files) skip the general tiling loop and the
    dataclass __init__: their entries must still equal the JSON reader's field for field
    (the same __dict__, in the same order, the same hash and repr), and a list of one chunk
    that fails a check is refused as the JSON reader refuses it."""
    h = "c" * 64
    base = {k: v for k, v in file_entry("x", 7).to_json().items() if k not in ("path", "chunks")}
    rows = sorted([{**base, "name": "empty", "size": 0, "chunks": []},
                   {**base, "name": "one", "size": 100, "chunks": [[0, 100, h, 90, "zstd"]]},
                   {**base, "name": "one-raw", "size": 5, "chunks": [[0, 5, h, 0, ""]], "format": "json"},
                   {**base, "name": "two", "size": 150, "chunks": [[0, 100, h, 90, "zstd"], [100, 50, h, 50, "raw"]]}],
                  key=lambda r: r["name"])
    data = _tree(rows)
    fast = model._plain_tree(data, "top")
    slow = model._parse_tree_json(data, manifest_id(data), "top")
    assert fast is not None and len(fast) == 4
    for (a, sa), (b, sb) in zip(fast, slow):
        assert type(a) is Entry and a == b and sa == sb and hash(a) == hash(b) and repr(a) == repr(b)
        assert list(vars(a).items()) == list(vars(b).items())
        assert dataclasses.replace(a) == b  # an ordinary dataclass: replace and fields work on it
    assert [len(e.chunks) for e, _ in fast] == [0, 1, 1, 2]
    for bad in ([[0, 99, h, 90, "zstd"]], [[0, 100, h, 100 + model.MAX_CHUNK_OVERHEAD + 1, "zstd"]]):
        wrong = _tree([{**r, "chunks": bad} if r["name"] == "one" else r for r in rows])
        assert model._plain_tree(wrong, "top") is None
        with pytest.raises(ManifestError):
            parse_tree(wrong, manifest_id(wrong), "top")
    assert rows[0]["name"] == "empty"
    sized = _tree([{**rows[0], "size": 3}])
    assert model._plain_tree(sized, "top") is None  # no chunks but a size: refused
    with pytest.raises(ManifestError):
        parse_tree(sized, manifest_id(sized), "top")
