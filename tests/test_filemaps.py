"""Manifest v2 file maps (manifests.model, archiver.repository): a file over the threshold
keeps its chunk list in a content-addressed object; v1 manifests and small files are
unchanged; a missing or damaged map is reported by verify, refused by restore, copied by
replicate and healed by repair."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from archiver import layout
from archiver.errors import ManifestError as ArchiverManifestError
from archiver.repository import Repository
from archiver.settings import Settings
from manifests import model
from manifests.errors import ManifestError
from manifests.model import (ChunkRef, Entry, Manifest, filemap_bytes, manifest_id, parse_filemap, parse_manifest,
                             with_filemap, with_filemaps)
from tests.helpers import RawStore, filemap_key, make_checkpoint, run_cli, tree

DATA = Path(__file__).resolve().parent / "data"


def fixture(kind: str) -> tuple[str, bytes]:
    (path,) = DATA.glob(f"manifest_v1_{kind}_*.json")
    return path.stem.rsplit("_", 1)[1], path.read_bytes()


def flip(b: bytes) -> bytes:
    return b[:-2] + bytes([b[-2] ^ 1]) + b[-1:]


def big_entry(n: int = model.FILEMAP_THRESHOLD + 1, path: str = "big.bin") -> Entry:
    refs = tuple(ChunkRef(i * 100, 100, manifest_id(f"{path}{i}".encode()), 90, "zstd") for i in range(n))
    return Entry(path=path, type="file", mode=0o644, size=100 * n, mtime_ns=1, blake3="a" * 64, sha256="b" * 64,
                 format="", chunks=refs)


# -- the format ------------------------------------------------------------------------------------

def test_stored_v1_manifest_without_large_files_keeps_its_bytes_and_id() -> None:
    mid, data = fixture("small")  # written by the archiver before file maps (one file of exactly 128 chunks)
    m = parse_manifest(data, expected_id=mid)
    assert m.canonical_json() == data and m.id == mid
    v2 = with_filemaps(m)  # what commit_manifest writes for the same content today
    assert v2.canonical_json() == data and v2.id == mid and b'"version":1' in data


def test_stored_v1_manifest_with_long_inline_lists_stays_readable() -> None:
    mid, data = fixture("big")  # a 300-chunk file inline: what v1 always wrote
    m = parse_manifest(data, expected_id=mid)
    assert max(len(e.chunks) for e in m.files) == 300 and m.canonical_json() == data
    v2 = with_filemaps(m)  # re-archived today, the same content becomes v2 with one file map
    assert v2.id != mid and json.loads(v2.canonical_json())["version"] == 2
    small = {e.path: e.to_json() for e in m.files if len(e.chunks) <= model.FILEMAP_THRESHOLD}
    assert {e.path: e.to_json() for e in v2.files if e.path in small} == small  # byte-identical v1 entries


def test_file_over_threshold_is_recorded_through_its_map() -> None:
    e = big_entry()
    assert with_filemap(big_entry(model.FILEMAP_THRESHOLD))[1] is None  # at the threshold: inline
    e2, data = with_filemap(e)
    assert data == filemap_bytes(e.chunks) and e2.filemap == manifest_id(data)
    assert e2.chunk_count == len(e.chunks) and e2.chunks == e.chunks
    j = e2.to_json()
    assert "chunks" not in j and j["filemap"] == e2.filemap and j["chunk_count"] == len(e.chunks)
    m = Manifest(name="m", entries=(e2,))
    parsed = parse_manifest(m.canonical_json(), expected_id=m.id)
    assert json.loads(m.canonical_json())["version"] == 2
    (pe,) = parsed.entries
    assert not pe.resolved and pe.chunks == ()
    assert parse_filemap(data, pe) == e.chunks  # the id covers the map through its hash


@pytest.mark.parametrize("how", ["tampered", "wrong-count", "not-canonical", "too-short"])
def test_bad_file_map_is_refused(how: str) -> None:
    """A JSON map (file map version 1, as earlier archivers wrote them); binary maps below."""
    e2, _ = with_filemap(big_entry())
    data = model.filemap_json_bytes(e2.chunks)
    e2 = dataclasses.replace(e2, filemap=manifest_id(data))
    if how == "tampered":
        data = data.replace(b'"zstd"', b'"bg2 "', 1)
    elif how == "wrong-count":
        e2 = dataclasses.replace(e2, chunk_count=e2.chunk_count + 1)
    elif how == "not-canonical":
        data = data.replace(b",", b", ", 1)
        e2 = dataclasses.replace(e2, filemap=manifest_id(data))
    else:
        obj = json.loads(data)
        obj["chunks"] = obj["chunks"][:-1]
        data = model.canonical(obj)
        e2 = dataclasses.replace(e2, filemap=manifest_id(data), chunk_count=len(obj["chunks"]))
    with pytest.raises(ManifestError):
        parse_filemap(data, dataclasses.replace(e2, chunks=()))


@pytest.mark.parametrize("edit", [
    lambda j: j.update(version=1),  # a map in a v1 manifest
    lambda j: j["entries"][0].update(chunks=[]),  # both chunks and a map
    lambda j: j["entries"][0].update(chunk_count=3),  # a map for a file under the threshold
    lambda j: j["entries"][0].update(filemap="x" * 64),
])
def test_malformed_v2_entries_are_refused(edit) -> None:
    e2, _ = with_filemap(big_entry())
    j = json.loads(Manifest(name="m", entries=(e2,)).canonical_json())
    edit(j)
    with pytest.raises(ManifestError):
        parse_manifest(model.canonical(j))


def test_v2_marker_without_a_map_is_refused() -> None:
    j = json.loads(Manifest(name="m", entries=(big_entry(3),)).canonical_json())
    j["version"] = 2
    with pytest.raises(ManifestError, match="version 2 without file maps"):
        parse_manifest(model.canonical(j))


# -- archive, verify, restore, replicate, repair ---------------------------------------------------

@pytest.fixture
def low_threshold(monkeypatch: pytest.MonkeyPatch) -> int:
    """Any file of more than one chunk gets a file map, so small fixtures exercise v2."""
    monkeypatch.setattr(model, "FILEMAP_THRESHOLD", 1)
    return 1


def archive_v2(tmp_path: Path, store: str) -> tuple[Path, str, Manifest]:
    ck = make_checkpoint(tmp_path / "src" / "ck", layers=3, dim=512)  # model.safetensors: several chunks
    (ck / "blob.bin").write_bytes(os.urandom(3 << 20))
    r = run_cli("--store", store, "archive", str(ck), "--name", "m")
    assert r.code == 0, r.err
    mid = r.out.strip()
    m = parse_manifest(RawStore(store).read(layout.manifest(mid)), expected_id=mid)
    assert any(e.filemap for e in m.files)
    return ck, mid, m


@pytest.mark.parametrize("form", ["binary", "json"])
def test_v2_archive_restores_and_verifies(low_threshold: int, tmp_path: Path, store_url: str, home: Path,
                                          form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both map forms: binary (what archive writes) and JSON (what earlier archivers wrote)."""
    if form == "json":
        monkeypatch.setattr(model, "filemap_bytes", model.filemap_json_bytes)
    ck, mid, m = archive_v2(tmp_path, store_url)
    raw = RawStore(store_url)
    maps = {e.filemap for e in m.files if e.filemap}
    keys = {layout.filemap(h, binary=form == "binary") for h in maps}  # the suffix names the form
    assert {k for k in raw.keys(layout.FILEMAPS)} == keys
    assert all(raw.read(layout.filemap(h, binary=form == "binary")).startswith(
        b"ARCHFMAP" if form == "binary" else b'{"chunks":[') for h in maps)
    assert all(e.filemap or len(e.chunks) <= 1 for e in m.files)
    assert run_cli("--store", store_url, "verify", mid, "--deep").code == 0
    assert run_cli("--store", store_url, "restore", mid, str(tmp_path / "out")).code == 0
    assert tree(tmp_path / "out" / "ck") == tree(ck)
    again = run_cli("--store", store_url, "archive", str(ck), "--name", "m")  # unchanged: same maps reused
    assert again.code == 0 and {k for k in raw.keys(layout.FILEMAPS)} == keys


@pytest.mark.parametrize("form", ["binary", "json"])
@pytest.mark.parametrize("damage", ["tampered", "missing"])
def test_bad_file_map_is_reported_by_verify_and_refused_by_restore(low_threshold: int, tmp_path: Path,
                                                                  home: Path, damage: str, form: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both map forms: binary (what archive writes) and JSON (what earlier archivers wrote)."""
    if form == "json":
        monkeypatch.setattr(model, "filemap_bytes", model.filemap_json_bytes)
    store = str(tmp_path / "store")
    ck, mid, m = archive_v2(tmp_path, store)
    e = next(e for e in m.files if e.filemap)
    raw = RawStore(store)
    key = filemap_key(raw, e.filemap)
    assert key == layout.filemap(e.filemap, binary=form == "binary")
    assert raw.read(key).startswith(b"ARCHFMAP" if form == "binary" else b'{"chunks":[')
    if damage == "tampered":
        raw.mutate(key, flip)
    else:
        raw.delete(key)
    v = run_cli("--store", store, "verify", mid, "--deep", "--json")
    assert v.code == 1
    problems = v.json()["problems"]
    assert [(p["kind"], p["path"], p["chunk"]) for p in problems] == [("filemap", e.path, e.filemap)]
    assert ("missing" if damage == "missing" else "does not match its hash") in problems[0]["detail"]
    shallow = run_cli("--store", store, "verify", mid, "--json")
    assert [p["kind"] for p in shallow.json()["problems"]] == ["filemap"]
    r = run_cli("--store", store, "restore", mid, str(tmp_path / "out"))
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1 and "file map" in r.err
    assert not (tmp_path / "out").exists()


def test_replicate_copies_file_maps_and_repair_heals_one(low_threshold: int, tmp_path: Path, home: Path) -> None:
    store, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    ck, mid, m = archive_v2(tmp_path, store)
    assert run_cli("--store", store, "replicate", "--all", "--to", copy).code == 0
    maps = sorted(RawStore(store).keys(layout.FILEMAPS))
    assert maps and sorted(RawStore(copy).keys(layout.FILEMAPS)) == maps
    assert all(RawStore(copy).read(k) == RawStore(store).read(k) for k in maps)
    assert run_cli("--store", copy, "verify", "--all", "--deep").code == 0
    raw = RawStore(store)
    raw.mutate(maps[0], flip)
    plan = run_cli("--store", store, "repair", "--from", copy, "--dry-run", "--json")
    assert plan.code == 0, plan.err
    assert [(f["kind"], f["state"]) for f in plan.json()["fixes"]] == [("filemap", "damaged")]
    fixed = run_cli("--store", store, "repair", "--from", copy, "--json")
    assert fixed.code == 0, fixed.err
    assert raw.read(maps[0]) == RawStore(copy).read(maps[0])
    assert run_cli("--store", store, "verify", mid, "--deep").code == 0


# -- the repository's verbs ------------------------------------------------------------------------

@pytest.fixture
def repo(tmp_path: Path):
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as r:
        yield r


def test_save_filemaps_lets_a_worker_return_a_small_entry(repo: Repository, tmp_path: Path) -> None:
    full = big_entry()
    slim = repo.save_filemaps(full)
    assert slim.chunks == () and slim.filemap and slim.chunk_count == len(full.chunks)
    assert repo.save_filemaps(big_entry(3)) == big_entry(3)  # under the threshold: as is, nothing stored
    assert RawStore(str(tmp_path / "store")).keys(layout.FILEMAPS) == [layout.filemap(slim.filemap)]
    m = Manifest(name="m", entries=(slim,))
    mid = repo.commit_manifest(m).id
    assert repo.load_manifest(mid).files[0].chunks == full.chunks  # resolved from the store
    assert [r[3] for r in repo.chunk_coverage()] == sorted(c.hash for c in full.chunks)  # catalog saw every chunk


def test_commit_refuses_a_slim_entry_whose_map_is_not_durable(repo: Repository, tmp_path: Path) -> None:
    e2, _ = with_filemap(big_entry())
    slim = dataclasses.replace(e2, chunks=())  # never saved
    with pytest.raises(ArchiverManifestError, match="missing"):
        repo.commit_manifest(Manifest(name="m", entries=(slim,)))
    assert RawStore(str(tmp_path / "store")).keys(layout.MANIFESTS) == []


def test_commit_writes_maps_before_the_root_and_rebuild_records_v2(repo: Repository, tmp_path: Path) -> None:
    m = Manifest(name="m", entries=(big_entry(), big_entry(2, "small.bin")))
    mid = repo.commit_manifest(m).id
    raw = RawStore(str(tmp_path / "store"))
    assert len(raw.keys(layout.FILEMAPS)) == 1
    assert json.loads(raw.read(layout.manifest(mid)))["version"] == 2
    rows = {r.id: r for r in repo.list_archives()}
    assert rows[mid].stored_size == sum(c.stored_size for e in m.files for c in e.chunks)
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat2.db")) as fresh:
        assert fresh.rebuild_catalog().added == [mid]
        assert len(fresh.chunk_coverage()) == len(m.files[0].chunks) + 2


def test_catalog_records_a_file_maps_chunks_once(repo: Repository, tmp_path: Path) -> None:
    """Versions that keep a large file share its map: the catalog adds one row per file, not per chunk."""
    import sqlite3
    big = repo.save_filemaps(big_entry())
    a = repo.commit_manifest(Manifest(name="m", label="a", entries=(big,))).id
    b = repo.commit_manifest(Manifest(name="m", label="b", entries=(big,), parent=a)).id
    conn = sqlite3.connect(tmp_path / "cat.db")
    try:
        count = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("filemaps", "chunks", "manifest_filemaps", "manifest_chunks")}
    finally:
        conn.close()
    n = model.FILEMAP_THRESHOLD + 1  # its chunks: one dedup row each, listed by the map object only
    assert count == {"filemaps": 1, "chunks": n, "manifest_filemaps": 2, "manifest_chunks": 0}
    cover = repo.chunk_coverage()
    assert len(cover) == 2 * n and {r[0] for r in cover} == {a, b}
    assert {r.id: r.stored_size for r in repo.list_archives()} == {a: 90 * n, b: 90 * n}
    forged = dataclasses.replace(big, size=big.size - 1)  # same map, another size: a reader would refuse it
    with pytest.raises(ArchiverManifestError):
        repo.commit_manifest(Manifest(name="m", label="c", entries=(forged,), parent=b))
    assert len(RawStore(str(tmp_path / "store")).keys(layout.MANIFESTS)) == 2  # refused before the root is written
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "other.db")) as fresh:
        with pytest.raises(ArchiverManifestError):  # a catalog that never saw the map parses it in full
            fresh.commit_manifest(Manifest(name="m", label="c", entries=(forged,), parent=b))
    assert len(RawStore(str(tmp_path / "store")).keys(layout.MANIFESTS)) == 2


def test_verify_copies_reports_a_copy_missing_a_file_map(low_threshold: int, tmp_path: Path, home: Path) -> None:
    store, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    ck, mid, m = archive_v2(tmp_path, store)
    assert run_cli("--store", store, "copies", "add", copy).code == 0
    assert run_cli("--store", store, "replicate", "--all", "--to", copy).code == 0
    ok = run_cli("--store", store, "verify", "--all", "--copies", "--json")
    assert ok.code == 0 and ok.json()["copies"]["copies"] == {mid: "2/2"}
    e = next(e for e in m.files if e.filemap)
    RawStore(copy).delete(filemap_key(RawStore(copy), e.filemap))
    bad = run_cli("--store", store, "verify", "--all", "--copies", "--json")
    assert bad.code == 1 and bad.json()["copies"]["copies"] == {mid: "1/2"}
    assert [(p["kind"], p["path"], p["chunk"]) for p in bad.json()["copies"]["problems"]] == [
        ("filemap", e.path, e.filemap)]


def test_oversized_file_map_is_refused_unread(repo: Repository, tmp_path: Path, monkeypatch) -> None:
    """A forged map larger than any map may be is refused before it is read (MAX_FILEMAP_BYTES)."""
    big = repo.save_filemaps(big_entry())
    mid = repo.commit_manifest(Manifest(name="m", entries=(big,))).id
    monkeypatch.setattr("archiver.repository.MAX_FILEMAP_BYTES", 1000)
    with pytest.raises(ArchiverManifestError, match="too large"):
        repo.load_manifest(mid)
    m, bad = repo.load_manifest_keep_going(mid)
    assert [(e.path, "too large" in why) for e, why in bad] == [(big.path, True)] and not m.files[0].resolved


def test_rebuild_reports_a_manifest_whose_file_map_is_missing(repo: Repository, tmp_path: Path) -> None:
    mid = repo.commit_manifest(Manifest(name="m", entries=(big_entry(),))).id
    e = repo.load_manifest(mid).files[0]
    raw = RawStore(str(tmp_path / "store"))
    raw.delete(filemap_key(raw, e.filemap))
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat2.db")) as fresh:
        res = fresh.rebuild_catalog()
        assert res.added == [] and [(p.manifest, p.kind) for p in res.problems] == [(mid, "manifest")]
        assert "file map" in res.problems[0].detail and "missing" in res.problems[0].detail
        assert fresh.list_archives() == []


# -- the plain reader (one regular expression per map) against the JSON reader ---------------------

def _answers(data: bytes, e: Entry) -> list[tuple[object, str | None]]:
    """What parse_filemap and the JSON reader each say: (chunks, None) or (None, the error)."""
    out: list[tuple[object, str | None]] = []
    for read in (parse_filemap, model._parse_filemap_json):
        try:
            out.append((read(data, e), None))
        except ManifestError as err:
            out.append((None, str(err)))
    return out


def test_plain_filemap_reader_accepts_and_refuses_exactly_what_the_json_reader_does() -> None:
    """Every map archiver writes is read by the plain reader (no JSON objects); every other
    byte string, canonical or not, gets the JSON reader's answer, word for word."""
    base = big_entry(130)
    recs = [c.to_json() for c in base.chunks]

    def variant(text: str, **entry: object) -> tuple[bytes, Entry]:
        data = text.encode()
        return data, dataclasses.replace(base, **{"chunks": (), "filemap": manifest_id(data),
                                                  "chunk_count": len(recs), **entry})

    def body(records: list, sep: str = ",") -> str:
        inner = sep.join(json.dumps(r, separators=(",", ":"), ensure_ascii=True) for r in records)
        return '{"chunks":[' + inner + '],"format":"archiver-filemap","version":1}'

    def with_rec(i: int, **kw: object) -> list:
        r = [list(x) for x in recs]
        for k, v in kw.items():
            r[i][{"off": 0, "length": 1, "hash": 2, "stored": 3, "codec": 4}[k]] = v
        return r

    plain = [variant(body(recs)), variant(body(with_rec(3, codec="bg2"))), variant(body(with_rec(0, codec="")))]
    for data, e in plain:
        assert model._plain_filemap(data, e) is not None  # read without JSON objects
        (got, err), (want, _) = _answers(data, e)
        assert err is None and got == want
        assert list(model.filemap_records(data, e)) == [(c.hash, c.stored_size, c.codec) for c in want]
    assert _answers(*plain[0])[0][0] == base.chunks

    odd = [
        variant(body(with_rec(2, codec="zstd/\u00e9"))),  # escaped in canonical JSON: the JSON reader's
        variant(body(with_rec(2, codec='a"b'))),
        variant(body(with_rec(5, off=recs[5][0] + 1))),  # not contiguous
        variant(body(with_rec(5, length=0))),
        variant(body(with_rec(5, length=model.MAX_CHUNK_LENGTH + 1))),
        variant(body(with_rec(5, stored=100 + model.MAX_CHUNK_OVERHEAD + 1))),
        variant(body(with_rec(5, hash=recs[5][2].upper()))),
        variant(body(with_rec(5, hash=recs[5][2][:-1]))),
        variant(body(recs), chunk_count=len(recs) + 1),
        variant(body(recs), size=base.size + 1),
        variant(body(recs[:-1])),  # one chunk fewer than the entry says
        variant(body(recs, sep=", ")),  # not canonical
        variant(body(recs, sep="")),  # records run together
        variant(body(recs, sep=",,")),
        variant(body(recs, sep=",x")),
        variant(body(recs).replace("]],", "]\n],", 1)),
        variant(body(recs).replace("]],", "],]],", 1)),
        variant(body(recs) + "\n"),
        variant(body([])),  # no chunks, but the entry says 130
        variant(body(recs).replace('[0,100,', '[00,100,', 1)),
        variant(body(recs).replace(',"version":1}', ',"version":1,"x":0}')),
        variant(body(recs).replace('{"chunks"', ' {"chunks"')),
        variant(body([[r[0], r[1], r[2], r[3] * 10**20, r[4]] for r in recs])),
        (body(recs).encode(), base),  # the entry names another map
    ]
    for data, e in odd:
        (got, err), (want, want_err) = _answers(data, e)
        assert (got, err) == (want, want_err), data[:80]
        if err is None:
            assert list(model.filemap_records(data, e)) == [(c.hash, c.stored_size, c.codec) for c in want]
        else:
            with pytest.raises(ManifestError, match="^" + re.escape(err)):
                model.filemap_records(data, e)
    assert sum(1 for d, e in odd if _answers(d, e)[0][1] is None) == 2  # only the escaped codecs are valid maps


def test_fixity_status_counts_map_chunks_and_refuses_a_missing_map_in_one_line(tmp_path, low_threshold, monkeypatch):
    """The catalog keeps no per-chunk rows for file maps (schema 6): `fixity status` reads each
    map from the store, so a version's map chunks count; a missing map is one clear error."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    store = str(tmp_path / "store")
    _, mid, m = archive_v2(tmp_path, store)
    want = {c.hash for e in m.files if not e.filemap for c in e.chunks}
    want |= {c.hash for e in m.files if e.filemap
             for c in parse_filemap(RawStore(store).read(filemap_key(RawStore(store), e.filemap)), e)}
    r = run_cli("--store", store, "fixity", "status", "--json")
    (arch,) = r.json()["archives"]
    assert arch["manifest"] == mid and arch["chunks"] == arch["never_checked"] == len(want)
    victim = next(e for e in m.files if e.filemap)
    RawStore(store).delete(filemap_key(RawStore(store), victim.filemap))
    r = run_cli("--store", store, "fixity", "status")
    assert r.code != 0 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert victim.filemap[:16] in r.err and "missing" in r.err


def _catalog_facts(path: Path) -> tuple[list, list, list]:
    """What a catalog knows of chunks and maps, with owners named by map hash (rowids may differ)."""
    import sqlite3
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("SELECT c.key, c.stored_size, c.codec, f.hash FROM chunks c LEFT JOIN filemaps f "
                             "ON f.rowid = c.owner ORDER BY c.key").fetchall(),
                conn.execute("SELECT hash, chunk_count, size, fresh_stored FROM filemaps ORDER BY hash").fetchall(),
                conn.execute("SELECT id, stored_size FROM manifests ORDER BY id").fetchall())
    finally:
        conn.close()


def test_rebuild_records_maps_in_bulk_as_the_commit_did(repo: Repository, tmp_path: Path) -> None:
    """A rebuild records a version's new maps together from their arrays (as a commit records a
    worker's maps): the same chunk rows, owners, map freshness and stored sizes as the commits
    gave, for fresh maps, a map reusing another's chunk and a chunk repeated in a map."""
    a, b = big_entry(path="a.bin"), big_entry(path="b.bin")
    reuse = dataclasses.replace(b, path="c.bin", chunks=(a.chunks[0],) + tuple(
        dataclasses.replace(c, hash=manifest_id(f"new{i}".encode())) for i, c in enumerate(b.chunks[1:])))
    twice = dataclasses.replace(a, path="d.bin", chunks=tuple(
        dataclasses.replace(c, hash=manifest_id(f"rep{i % 50}".encode())) for i, c in enumerate(a.chunks)))
    first = repo.commit_manifest(Manifest(name="m", entries=tuple(repo.save_filemaps(e) for e in (a, b)))).id
    second = repo.commit_manifest(Manifest(name="m", parent=first,
                                           entries=tuple(repo.save_filemaps(e) for e in (a, reuse, twice)))).id
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat2.db")) as fresh:
        assert sorted(fresh.rebuild_catalog().added) == sorted([first, second])
    committed, rebuilt = _catalog_facts(tmp_path / "cat.db"), _catalog_facts(tmp_path / "cat2.db")
    assert rebuilt == committed
    fresh_of = {h: f for h, _, _, f in committed[1]}
    assert sorted(f is None for f in fresh_of.values()) == [False, False, False, True]  # c.bin reused a's chunk
    assert dict(committed[2])[second] == sum({c.hash: c.stored_size for e in (a, reuse, twice)
                                              for c in e.chunks}.values())


def test_a_commit_reads_each_new_map_once_and_records_what_two_reads_gave(repo: Repository, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A version whose new maps reuse known chunks (a fine-tune's changed shards): the commit
    proves each worker's map once and hands the records of those that are not fresh to the
    catalog for the version's stored size, instead of fetching and checking them again; the
    catalog's rows and stored sizes are exactly those of a rebuild (which reads every map)."""
    a, b = big_entry(path="a.bin"), big_entry(path="b.bin")
    reuse = dataclasses.replace(b, path="c.bin", chunks=(a.chunks[0],) + tuple(
        dataclasses.replace(c, hash=manifest_id(f"new{i}".encode())) for i, c in enumerate(b.chunks[1:])))
    reuse2 = dataclasses.replace(a, path="e.bin", chunks=a.chunks[:-1] + (
        dataclasses.replace(a.chunks[-1], hash=manifest_id(b"last")),))
    first = repo.commit_manifest(Manifest(name="m", entries=tuple(repo.save_filemaps(e) for e in (a, b)))).id
    slim = tuple(repo.save_filemaps(e) for e in (a, reuse, reuse2))
    fetched: list[str] = []
    real = Repository.filemap_object
    monkeypatch.setattr(Repository, "filemap_object", lambda self, e: fetched.append(e.filemap) or real(self, e))
    second = repo.commit_manifest(Manifest(name="m", parent=first, entries=slim)).id
    new_maps = {slim[1].filemap, slim[2].filemap}
    assert sorted(fetched) == sorted(new_maps | {slim[0].filemap})  # each once (a's known map: its hash checked)
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat2.db")) as fresh:
        assert sorted(fresh.rebuild_catalog().added) == sorted([first, second])
    committed = _catalog_facts(tmp_path / "cat.db")
    assert committed == _catalog_facts(tmp_path / "cat2.db")
    assert {h: f is None for h, _, _, f in committed[1] if h in new_maps} == {h: True for h in new_maps}
    assert dict(committed[2])[second] == sum({c.hash: c.stored_size for e in (a, reuse, reuse2)
                                              for c in e.chunks}.values())


# -- the map's key names its form: .bin binary, .json JSON (earlier archivers) ------------------------

def archive_legacy(tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, Manifest]:
    """An archive whose maps an earlier archiver wrote: JSON, under `.json`. Only the writing
    is forced to JSON; everything afterwards runs today's code (binary writer, binary-first reader)."""
    with monkeypatch.context() as mp:
        mp.setattr(model, "filemap_bytes", model.filemap_json_bytes)
        ck, mid, m = archive_v2(tmp_path, store)
    raw = RawStore(store)
    maps = {e.filemap for e in m.files if e.filemap}
    assert set(raw.keys(layout.FILEMAPS)) == {layout.filemap(h, binary=False) for h in maps}
    return ck, mid, m


def test_legacy_json_maps_verify_restore_replicate_repair_and_rebuild(low_threshold: int, tmp_path: Path,
                                                                      home: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    ck, mid, m = archive_legacy(tmp_path, store, monkeypatch)
    raw, rawc = RawStore(store), RawStore(copy)
    legacy = sorted(raw.keys(layout.FILEMAPS))
    assert legacy  # model.safetensors (and blob.bin, when it is more than one chunk)
    assert run_cli("--store", store, "verify", mid, "--deep").code == 0  # found under .json after .bin is absent
    with Repository.open(Settings.resolve(store)) as used:
        n_chunks = len(used.load_manifest(mid).unique_chunks())
    fx = run_cli("--store", store, "fixity", "status", "--json")  # counts the chunks each legacy map names
    assert fx.code == 0 and fx.json()["archives"][0]["chunks"] == n_chunks
    assert run_cli("--store", store, "restore", mid, str(tmp_path / "out")).code == 0
    assert tree(tmp_path / "out" / "ck") == tree(ck)
    # replicate keeps each map's form and so its key; the copy set counts them
    assert run_cli("--store", store, "copies", "add", copy).code == 0
    assert run_cli("--store", store, "replicate", "--all", "--to", copy).code == 0
    assert sorted(rawc.keys(layout.FILEMAPS)) == legacy and all(rawc.read(k) == raw.read(k) for k in legacy)
    assert run_cli("--store", copy, "verify", "--all", "--deep").code == 0
    ok = run_cli("--store", store, "verify", "--all", "--copies", "--json")
    assert ok.code == 0 and ok.json()["copies"]["copies"] == {mid: "2/2"}
    # repair heals a damaged and a missing legacy map under its own key
    for state, damage in (("damaged", lambda k: raw.mutate(k, flip)), ("missing", raw.delete)):
        damage(legacy[0])
        fixed = run_cli("--store", store, "repair", "--from", copy, "--json")
        assert fixed.code == 0, fixed.err
        assert [(f["kind"], f["state"]) for f in fixed.json()["fixes"]] == [("filemap", state)]
        assert sorted(raw.keys(layout.FILEMAPS)) == legacy and all(raw.read(k) == rawc.read(k) for k in legacy)
        assert run_cli("--store", store, "verify", mid, "--deep").code == 0
    # a catalog rebuilt from the store reads the legacy maps (chunks and stored size as before)
    with Repository.open(Settings.resolve(store, tmp_path / "cat2.db")) as fresh:
        res = fresh.rebuild_catalog()
        assert res.added == [mid] and res.problems == []
        with Repository.open(Settings.resolve(store)) as used:  # the catalog the CLI wrote
            assert [(r.id, r.stored_size) for r in fresh.list_archives()] == [
                (r.id, r.stored_size) for r in used.list_archives()]
        assert {c[3] for c in fresh.chunk_coverage()} == {c.hash for e in
                                                          fresh.load_manifest(mid).files for c in e.chunks}
    with Repository.open(Settings.resolve(store, tmp_path / "cat3.db")) as other:  # another host's catalog
        res = other.sync_catalog()
        assert res.added == [mid] and res.problems == []


@pytest.mark.parametrize("stored", ["binary-under-json", "json-under-bin"])
def test_a_map_under_the_wrong_suffix_for_its_bytes_is_refused_as_damage(low_threshold: int, tmp_path: Path,
                                                                         home: Path, stored: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "store")
    if stored == "binary-under-json":
        ck, mid, m = archive_v2(tmp_path, store)
    else:
        ck, mid, m = archive_legacy(tmp_path, store, monkeypatch)
    e = next(e for e in m.files if e.filemap)
    raw = RawStore(store)
    right = filemap_key(raw, e.filemap)
    wrong = layout.filemap(e.filemap, binary=stored == "json-under-bin")
    assert right != wrong
    raw.write(wrong, raw.read(right))  # renamed: the same bytes (they still hash to the entry's map)
    raw.delete(right)
    v = run_cli("--store", store, "verify", mid, "--deep", "--json")
    assert v.code == 1
    assert [(p["kind"], p["path"], p["chunk"]) for p in v.json()["problems"]] == [("filemap", e.path, e.filemap)]
    assert "wrong suffix" in v.json()["problems"][0]["detail"]
    r = run_cli("--store", store, "restore", mid, str(tmp_path / "out"))
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1 and "wrong suffix" in r.err
    assert "Traceback" not in r.err and not (tmp_path / "out").exists()
    with Repository.open(Settings.resolve(store, tmp_path / "cat2.db")) as fresh:
        res = fresh.rebuild_catalog()
        assert res.added == [] and "wrong suffix" in res.problems[0].detail


def test_repair_writes_a_map_under_its_own_key_and_names_a_stray_it_cannot_remove(
        low_threshold: int, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A binary map found only under .json is healed by writing it under .bin (read first, so
    the stray is never read again); a JSON map shadowed by a .bin stray cannot be healed on a
    store that never deletes: repair says so in one line."""
    store, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    ck, mid, m = archive_v2(tmp_path, store)
    assert run_cli("--store", store, "replicate", "--all", "--to", copy).code == 0
    e = next(e for e in m.files if e.filemap)
    raw = RawStore(store)
    good = raw.read(layout.filemap(e.filemap))
    raw.write(layout.filemap(e.filemap, binary=False), good)
    raw.delete(layout.filemap(e.filemap))
    fixed = run_cli("--store", store, "repair", "--from", copy, "--json")
    assert fixed.code == 0, fixed.err
    assert [(f["kind"], f["state"]) for f in fixed.json()["fixes"]] == [("filemap", "damaged")]
    assert raw.read(layout.filemap(e.filemap)) == good
    assert run_cli("--store", store, "verify", mid, "--deep").code == 0

    legacy_store, legacy_copy = str(tmp_path / "legacy"), str(tmp_path / "legacy-copy")
    _, lmid, lm = archive_legacy(tmp_path / "l", legacy_store, monkeypatch)
    assert run_cli("--store", legacy_store, "replicate", "--all", "--to", legacy_copy).code == 0
    le = next(e for e in lm.files if e.filemap)
    lraw = RawStore(legacy_store)
    lraw.write(layout.filemap(le.filemap), lraw.read(layout.filemap(le.filemap, binary=False)))  # a .bin stray
    r = run_cli("--store", legacy_store, "repair", "--from", legacy_copy)
    assert r.code != 0 and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert "wrong suffix" in r.err and layout.filemap(le.filemap) in r.err and "moved aside" in r.err, r.err


@pytest.mark.parametrize("form", ["binary", "json"])
def test_a_reader_asks_for_the_binary_key_first_and_the_json_key_only_when_absent(
        repo: Repository, tmp_path: Path, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What reading a map costs: a binary map one GET; a JSON map of an earlier archiver one
    GET that finds nothing, then its own. `fixity status`, rebuild and verify read the same way."""
    from archiver.stores.local import LocalStore
    with monkeypatch.context() as mp:
        if form == "json":
            mp.setattr(model, "filemap_bytes", model.filemap_json_bytes)
        mid = repo.commit_manifest(Manifest(name="m", entries=(big_entry(),))).id
    h = repo.load_manifest(mid).files[0].filemap
    asked: list[str] = []
    real = LocalStore.get

    def get(self, key: str, max_size: int | None = None) -> bytes:
        if key.startswith(layout.FILEMAPS):
            asked.append(key)
        return real(self, key, max_size)
    monkeypatch.setattr(LocalStore, "get", get)
    assert repo.load_manifest(mid).files[0].chunks == big_entry().chunks
    want = [layout.filemap(h)] if form == "binary" else [layout.filemap(h), layout.filemap(h, binary=False)]
    assert asked == want
    assert repo.filemap_sizes() == {h: len(RawStore(str(tmp_path / "store")).read(want[-1]))}
