"""archiver.treereuse: the files cache reads an earlier manifest's entries from trees the
catalog saw proved without parsing them with every check again, and gets exactly what the
full reader returns; a tree the catalog does not know is parsed as before, and a damaged
or missing one is refused as before."""
from __future__ import annotations

from pathlib import Path

import pytest

from archiver import layout, treereuse
from archiver.errors import ManifestError as ArchiverManifestError
from archiver.repository import Repository
from archiver.settings import Settings
from manifests import model
from manifests.model import ChunkRef, Entry, Manifest, tree_objects
from tests.helpers import RawStore


def varied_entries() -> list[Entry]:
    """Over TREE_THRESHOLD entries of every kind a tree holds: files with chunks (one with
    technical metadata), empty files, symlinks, directories with and without an mtime, an
    empty directory and a nested one."""
    out = [Entry(path="top", type="dir", mode=0o755, mtime_ns=1), Entry(path="top/empty", type="dir", mode=0o700),
           Entry(path="top/old", type="dir", mode=0o755), Entry(path="top/old/deep", type="dir", mode=0o755,
                                                                      mtime_ns=7)]
    out.append(Entry(path="top/old/deep/w.safetensors", type="file", mode=0o600, size=30, mtime_ns=5,
                     blake3="c" * 64, sha256="d" * 64, format="safetensors",
                     chunks=(ChunkRef(0, 10, "1" * 64, 12, "zstd"), ChunkRef(10, 20, "2" * 64, 20, "raw")),
                     tech={"format": "safetensors", "tensors": 2, "dtypes": ["BF16"]}))
    out.append(Entry(path="top/old/link", type="symlink", mode=0o777, target="deep/w.safetensors"))
    for d in range(12):
        out.append(Entry(path=f"top/d{d:02}", type="dir", mode=0o755, mtime_ns=d))
        for i in range(90):
            size = 0 if i % 5 == 0 else 100 + i
            chunks = () if size == 0 else (ChunkRef(0, size, f"{d:02}{i:03}".ljust(64, "a"), size, "raw"),)
            out.append(Entry(path=f"top/d{d:02}/f{i:03}", type="file", mode=0o644, size=size, mtime_ns=i,
                             blake3="a" * 64, sha256="b" * 64, format="", chunks=chunks))
    assert len(out) > model.TREE_THRESHOLD
    return out


@pytest.fixture
def repo(tmp_path: Path):
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as r:
        yield r


def no_parse(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every parse_tree call (by directory) made through either module."""
    parsed: list[str] = []
    real = model.parse_tree

    def counted(data, h, where):
        parsed.append(where)
        return real(data, h, where)
    monkeypatch.setattr(model, "parse_tree", counted)
    monkeypatch.setattr(treereuse, "parse_tree", counted)
    return parsed


def test_known_trees_read_as_the_full_reader_reads_them_without_parsing(repo: Repository,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    entries = varied_entries()
    mid = repo.commit_manifest(Manifest(name="m", entries=tuple(entries), meta={"k": "v"})).id
    full = repo.load_manifest(mid)
    parsed = no_parse(monkeypatch)
    fast = treereuse.load_for_reuse(repo, mid)
    assert parsed == []  # every tree was proved when the manifest was committed
    assert fast == full and fast.entries == tuple(sorted(entries, key=lambda e: e.path))
    assert fast.id == mid and fast.canonical_json() == full.canonical_json()
    by_path = treereuse.entries_by_path(repo, mid)
    assert by_path is not None and set(by_path) == {e.path for e in entries if e.is_file}
    assert by_path["top/old/deep/w.safetensors"].tech == {"format": "safetensors", "tensors": 2, "dtypes": ["BF16"]}


def test_trees_the_catalog_does_not_know_are_parsed_with_every_check(repo: Repository, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    entries = varied_entries()
    mid = repo.commit_manifest(Manifest(name="m", entries=tuple(entries))).id
    _, objects, _ = tree_objects(entries)
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "other.db"), create=True) as fresh:
        parsed = no_parse(monkeypatch)
        got = treereuse.load_for_reuse(fresh, mid)  # its catalog recorded nothing: nothing is known
        assert len(parsed) == len(objects)
        assert got.entries == repo.load_manifest(mid).entries


def test_a_damaged_or_missing_known_tree_is_refused(repo: Repository, tmp_path: Path) -> None:
    entries = varied_entries()
    mid = repo.commit_manifest(Manifest(name="m", entries=tuple(entries))).id
    key = layout.tree(tree_objects(entries)[2]["top/d03"])
    raw = RawStore(str(tmp_path / "store"))
    data = raw.read(key)
    raw.write(key, data[:-2] + bytes([data[-2] ^ 1]) + data[-1:])
    with pytest.raises(ArchiverManifestError, match="top/d03"):
        treereuse.load_for_reuse(repo, mid)
    assert treereuse.entries_by_path(repo, mid) is None  # the files cache then reads those files
    raw.delete(key)
    with pytest.raises(ArchiverManifestError, match="missing"):
        treereuse.load_for_reuse(repo, mid)


def test_small_manifests_without_trees_load_as_before(repo: Repository) -> None:
    entries = varied_entries()[:6]
    mid = repo.commit_manifest(Manifest(name="m", entries=tuple(entries))).id
    assert treereuse.load_for_reuse(repo, mid) == repo.load_manifest(mid)


def test_a_rearchive_reads_each_unchanged_tree_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files cache reads the previous version's trees from the store and checks each
    against its name; the commit then knows those trees durable and intact and does not
    read them a second time. A new tree (a changed directory) is written, and a tree that
    was not read this run is still read back before the root names it."""
    from archiver.pipeline import archive
    from archiver.stores import open_store
    from manifests.catalog import Catalog
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    src = tmp_path / "src" / "t"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(3):
            (src / f"d{d}" / f"f{i}").write_bytes(bytes([d, i]) * (i + 1))
    store = open_store(str(tmp_path / "store"), create=True)
    gets: list[str] = []
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda key, **kw: gets.append(key) or real_get(key, **kw))
    r = Repository(store, Catalog(tmp_path / "cat.db", store.url))
    try:
        first = archive(r, [src], name="m")
        trees = {k for k in RawStore(str(tmp_path / "store")).keys(layout.TREES)}
        assert len(trees) >= 5
        gets.clear()
        again = archive(r, [src], name="m")
        assert again.files_reused == first.files and again.id != first.id  # a new version of the same trees
        read = [k for k in gets if k.startswith(layout.TREES)]
        assert sorted(read) == sorted(trees)  # each once: by the files cache, not again by the commit
        (src / "d2" / "f1").write_bytes(b"changed")
        gets.clear()
        third = archive(r, [src], name="m")
        read = [k for k in gets if k.startswith(layout.TREES)]
        assert len(read) == len(set(read)) and third.files_reused == first.files - 1
        changed = {e.path: e for e in r.load_manifest(third.id).files}["t/d2/f1"]
        assert b"".join(r.read_chunk(c) for c in changed.chunks) == b"changed"
        # without the files cache's reads, the commit reads back every tree already stored
        r._trees_read.clear()
        gets.clear()
        r.commit_manifest(r.load_manifest(first.id))
        assert sorted(k for k in gets if k.startswith(layout.TREES)) == sorted(trees)
    finally:
        r.close()
