"""archiver/packs.py and the repository's pack paths: small chunk objects stored in packs,
found through content-addressed indexes; archive, dedup, verify, restore, rebuild,
replicate, repair and Object Lock with packs, end to end."""
from __future__ import annotations

import datetime as dt
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from archiver import layout, packs
from archiver.api import open_repository
from archiver.packs import PackBuilder, PackFormatError, parse_index, plan_spans
from manifests.model import parse_manifest
from tests.helpers import RawStore, make_checkpoint, run_cli, tree
from tests.test_retention import _objects, _until, lock_url  # noqa: F401 - lock_url is a fixture

UTC = dt.timezone.utc


def small_tree(root: Path, n: int = 120, seed: int = 1) -> Path:
    """n files of 1-16 KiB in a few directories (half compressible text, half random)."""
    rnd = random.Random(seed)
    for i in range(n):
        d = root / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        size = rnd.randint(1024, 16 * 1024)
        data = rnd.randbytes(size) if i % 2 else (f"line {i} " * size)[:size].encode()
        (d / f"f{i}.txt").write_bytes(data)
    return root


def keys(url: str, prefix: str) -> list[str]:
    return RawStore(url).keys(prefix)


def archive(url: str, src: Path, *extra: str) -> dict:
    r = run_cli("--store", url, "archive", str(src), "--name", "m", "--json", *extra)
    assert r.code == 0, r.err
    return r.json()


def manifest_of(url: str, mid: str):
    return parse_manifest(RawStore(url).read(layout.manifest(mid)))


def index_of(url: str, pack: str) -> packs.PackIndex:
    raw = RawStore(url)
    for k in raw.keys(layout.PACK_INDEXES):
        idx = parse_index(raw.read(k), layout.pack_index_id(k))
        if idx.pack == pack:
            return idx
    raise AssertionError(f"no index for pack {pack}")


def damage_packed(url: str, pick: Any, flip: int) -> tuple[str, Any]:
    """XOR `flip` into the last stored byte of one chunk of the store's first pack (`pick`:
    the entry number, or a function of the index giving it); returns (pack id, that entry)."""
    pack = layout.pack_id(keys(url, layout.PACKS)[0])
    index = index_of(url, pack)
    victim = index.entries[pick(index) if callable(pick) else pick]
    raw = RawStore(url)
    data = bytearray(raw.read(layout.pack(pack)))
    data[victim.offset + victim.stored_size - 1] ^= flip
    raw.write(layout.pack(pack), bytes(data))
    return pack, victim


# -- the format, pure -------------------------------------------------------------------------

def test_pack_index_round_trip_and_refusals() -> None:
    b = PackBuilder()
    objs = {f"{i:064x}": os.urandom(100 + i) for i in range(3)}
    for h, obj in objs.items():
        b.add(h, obj, 90)
    data, index = b.close()
    assert index.size == len(data) and [e.offset for e in index.entries] == [0, 100, 201]
    raw = index.to_json()
    assert parse_index(raw, index.id) == index
    for e in index.entries:
        assert data[e.offset:e.offset + e.stored_size] == objs[e.hash]
    with pytest.raises(PackFormatError, match="does not hash"):
        parse_index(raw, "0" * 64)
    doc = json.loads(raw)
    bad = [dict(doc, size=doc["size"] + 1),                                  # entries do not tile the pack
           dict(doc, chunks=doc["chunks"] + [doc["chunks"][0]]),               # the same chunk twice
           dict(doc, chunks=[[doc["chunks"][0][0], 5, 100, 90]]),              # not from offset 0
           dict(doc, version=2), dict(doc, extra=1)]
    for d in bad:
        with pytest.raises(PackFormatError):
            parse_index(json.dumps(d, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(PackFormatError, match="canonical"):
        parse_index(json.dumps(doc, sort_keys=True).encode())  # spaces: not canonical


def test_pack_index_pickles_as_rows_and_its_entries_are_the_ones_init_makes() -> None:
    """A PackIndex crosses from a worker process to the driver pickled as plain rows (smaller,
    no dataclass per entry), and comes back equal; its entries, made in their `__dict__` (by
    `close` too), are the PackEntry(...) the dataclass makes: same fields in order, hash, frozen."""
    import dataclasses
    import pickle
    b = PackBuilder()
    for i in range(50):
        b.add(f"{i:064x}", os.urandom(10 + i), 9 + i)
    _, index = b.close()
    made = packs.PackIndex(index.pack, index.size, tuple(packs.PackEntry(e.hash, e.offset, e.stored_size, e.length)
                                                         for e in index.entries))
    plain = pickle.dumps(made.__dict__ | {"entries": [vars(e) for e in made.entries]})
    blob = pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL)
    back = pickle.loads(blob)
    assert back == index == made and back.id == made.id and len(blob) < len(plain)
    for got, want in zip(back.entries + index.entries, made.entries + made.entries):
        assert type(got) is packs.PackEntry and list(vars(got).items()) == list(vars(want).items())
        assert hash(got) == hash(want)
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.entries[0].offset = 1  # type: ignore[misc]


def test_plan_spans_joins_near_ranges_and_bounds_each_span() -> None:
    assert plan_spans([(0, 10), (12, 20), (100, 110)], gap=5, limit=1000) == [(0, 20), (100, 110)]
    assert plan_spans([(0, 10), (10, 20), (20, 30)], gap=5, limit=20) == [(0, 20), (20, 30)]
    assert plan_spans([], gap=5, limit=10) == []


# -- archive, dedup, verify, restore ---------------------------------------------------------------

def test_small_files_go_into_few_packs_and_restore_byte_for_byte(store_url: str, tmp_path: Path, home: Path) -> None:
    src = small_tree(tmp_path / "src")
    make_checkpoint(src / "ck", layers=2, dim=64)
    out = archive(store_url, src)
    assert keys(store_url, layout.CHUNKS) == []  # every object of this tree is small
    pack_keys = keys(store_url, layout.PACKS)
    assert len(pack_keys) == 1 and len(keys(store_url, layout.PACK_INDEXES)) == 1
    index = index_of(store_url, layout.pack_id(pack_keys[0]))
    m = manifest_of(store_url, out["id"])
    assert {e.hash for e in index.entries} == set(m.unique_chunks())  # every chunk, by its content address
    assert out["new_chunks"] == len(m.unique_chunks())
    for mode in ([], ["--deep"]):
        r = run_cli("--store", store_url, "verify", "m", *mode)
        assert r.code == 0, r.out + r.err
    r = run_cli("--store", store_url, "restore", "m", str(tmp_path / "out"))
    assert r.code == 0, r.err
    assert tree(tmp_path / "out" / "src") == tree(src)


def test_unchanged_rearchive_writes_nothing_and_proves_each_pack_once(tmp_path: Path, home: Path) -> None:
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src")
    archive(url, src)
    before = set(keys(url, ""))
    with open_repository(url) as repo:
        reads: list[str] = []
        real_get = repo._store.get
        real_range = repo._store.get_range
        repo._store.get = lambda key, max_size=None: (reads.append(key), real_get(key, max_size))[1]  # type: ignore[method-assign]
        repo._store.get_range = lambda key, *a, **k: (reads.append(key), real_range(key, *a, **k))[1]  # type: ignore[method-assign]
        from archiver.pipeline import archive as run_archive
        res = run_archive(repo, [src], name="m")
    assert res.new_chunks == 0 and res.new_bytes_stored == 0
    assert res.files_reused == len([p for p in src.rglob("*") if p.is_file()])  # the files cache: none read
    new = set(keys(url, "")) - before
    assert all(k.startswith(("events/", "manifests/")) for k in new), new  # no pack, no index, no chunk
    # every reused chunk is still proved, by one read per pack (whole, or the span its chunks cover)
    assert [k for k in reads if k.startswith(layout.PACKS)] == keys(url, layout.PACKS)


def test_a_damaged_chunk_in_a_pack_is_reported_with_its_files_and_pack(tmp_path: Path, home: Path) -> None:
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=30)
    mid = archive(url, src)["id"]
    pack, victim = damage_packed(url, lambda index: len(index.entries) // 2, 0x40)
    r = run_cli("--store", url, "verify", "m", "--deep", "--json")
    assert r.code == 1
    probs = [p for p in r.json()["problems"] if p.get("chunk") == victim.hash]
    files = {e.path for e in manifest_of(url, mid).files if any(c.hash == victim.hash for c in e.chunks)}
    assert probs and {p["path"] for p in probs} == files
    assert all(pack in p["detail"] and p["kind"] == "corrupt-chunk" for p in probs)
    others = [p for p in r.json()["problems"] if p.get("chunk") not in (None, victim.hash)]
    assert others == []  # the rest of the pack proves good
    # a truncated pack: shallow verify names it (HEAD/LIST only, nothing read)
    raw = RawStore(url)
    raw.write(layout.pack(pack), raw.read(layout.pack(pack))[:-10])
    r = run_cli("--store", url, "verify", "m", "--json")
    assert r.code == 1
    assert any(pack in p["detail"] and "bytes, its index says" in p["detail"] for p in r.json()["problems"])


def test_single_file_restore_reads_only_its_ranges(s3_mock_url: str, tmp_path: Path, home: Path) -> None:
    src = small_tree(tmp_path / "src", n=60)
    mid = archive(s3_mock_url, src)["id"]
    entry = next(e for e in manifest_of(s3_mock_url, mid).files if e.path.endswith("d3/f10.txt"))
    from archiver.restorer import restore
    with open_repository(s3_mock_url) as repo:
        gets: list[dict] = []
        repo._store.client.meta.events.register(
            "provide-client-params.s3.GetObject", lambda params, **_: gets.append(dict(params)))
        restore(repo, mid, tmp_path / "one", include=[entry.path])
    pack_gets = [g for g in gets if "/packs/" in g["Key"]]
    assert len(pack_gets) == 1 and all("Range" in g for g in pack_gets)
    first, last = pack_gets[0]["Range"][6:].split("-")
    assert int(last) - int(first) + 1 == sum(c.stored_size for c in entry.chunks)  # just its bytes
    assert (tmp_path / "one" / entry.path).read_bytes() == (src.parent / entry.path).read_bytes()


def test_full_restore_reads_each_pack_with_few_requests(s3_mock_url: str, tmp_path: Path, home: Path) -> None:
    src = small_tree(tmp_path / "src", n=150)
    archive(s3_mock_url, src)
    from archiver.restorer import restore
    with open_repository(s3_mock_url) as repo:
        gets: list[dict] = []
        repo._store.client.meta.events.register(
            "provide-client-params.s3.GetObject", lambda params, **_: gets.append(dict(params)))
        res = restore(repo, "m", tmp_path / "out")
    assert res.ok and tree(tmp_path / "out" / "src") == tree(src)
    assert len([g for g in gets if "/packs/" in g["Key"]]) <= 2  # 150 files: one span read of the pack


def test_catalog_rebuild_and_a_fresh_catalog_find_packs_through_the_store(tmp_path: Path, home: Path) -> None:
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=40)
    archive(url, src)
    fresh = str(tmp_path / "other.db")
    r = run_cli("--store", url, "--catalog", fresh, "restore", keys(url, layout.MANIFESTS)[0][10:-5],
                str(tmp_path / "a"))
    assert r.code == 0, r.err  # a catalog that never saw the pack reads the store's index
    assert tree(tmp_path / "a" / "src") == tree(src)
    r = run_cli("--store", url, "--catalog", str(tmp_path / "rebuilt.db"), "catalog", "rebuild", "--json")
    assert r.code == 0, r.err
    assert r.json()["packs"] == 1
    r = run_cli("--store", url, "--catalog", str(tmp_path / "rebuilt.db"), "verify", "--all", "--deep")
    assert r.code == 0, r.out + r.err


def test_a_tampered_index_is_refused_and_reported_by_rebuild(tmp_path: Path, home: Path) -> None:
    url = str(tmp_path / "store")
    archive(url, small_tree(tmp_path / "src", n=10))
    raw = RawStore(url)
    ikey = keys(url, layout.PACK_INDEXES)[0]
    raw.mutate(ikey, lambda b: b.replace(b'"size":', b'"size": ', 1))
    r = run_cli("--store", url, "--catalog", str(tmp_path / "rebuilt.db"), "catalog", "rebuild", "--json")
    assert r.code == 1
    assert any(p["kind"] == "pack-index" and "does not hash" in p["detail"] for p in r.json()["problems"])


def test_interrupted_archive_leaves_only_unreferenced_packs(tmp_path: Path, home: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=20)
    from archiver.repository import Repository
    real = Repository._put

    def no_manifests(self, key, data, policy):
        if key.startswith(layout.MANIFESTS):
            raise KeyboardInterrupt  # killed between the packs and the manifest
        return real(self, key, data, policy)
    monkeypatch.setattr(Repository, "_put", no_manifests)
    assert run_cli("--store", url, "archive", str(src), "--name", "m").code != 0
    monkeypatch.setattr(Repository, "_put", real)
    assert keys(url, layout.PACKS) and keys(url, layout.MANIFESTS) == []  # packs first, no manifest
    out = archive(url, src)
    assert out["new_chunks"] == 0  # the interrupted run's pack is proved and reused
    assert run_cli("--store", url, "verify", "m", "--deep").code == 0


def test_a_failed_pack_write_commits_nothing(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "store")
    from archiver.errors import StoreError
    from archiver.repository import Repository
    real = Repository._put

    def no_packs(self, key, data, policy):
        if key.startswith(layout.PACKS):
            raise StoreError("disk full")
        return real(self, key, data, policy)
    monkeypatch.setattr(Repository, "_put", no_packs)
    r = run_cli("--store", url, "archive", str(small_tree(tmp_path / "src", n=5)), "--name", "m")
    assert r.code != 0 and "disk full" in r.err and "\n" not in r.err.strip()
    assert keys(url, layout.MANIFESTS) == []


def test_new_chunks_are_put_without_a_read_first(s3_mock_url: str, tmp_path: Path, home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIVER_PACK_BELOW", str(packs.SMALL_OBJECT))  # large chunks in objects of their own
    src = small_tree(tmp_path / "src", n=30)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))  # a large chunk: its own object
    from archiver.pipeline import archive as run_archive
    with open_repository(s3_mock_url, create=True) as repo:
        calls: list[tuple[str, str]] = []
        for op in ("GetObject", "HeadObject", "PutObject"):
            repo._store.client.meta.events.register(
                f"provide-client-params.s3.{op}", lambda params, op=op, **_: calls.append((op, params["Key"])))
        res = run_archive(repo, [src], name="m")
    large = [c for c in manifest_of(s3_mock_url, res.id).unique_chunks().values() if c.stored_size >= packs.SMALL_OBJECT]
    data_calls = [(op, k) for op, k in calls if "/chunks/" in k or "/packs/" in k]
    assert {op for op, _ in data_calls} == {"PutObject"}  # no HEAD or GET before a PUT
    assert large and len(data_calls) == len(large) + 1  # one PUT per large chunk, one for the pack


# -- copies and repair ---------------------------------------------------------------------------

def test_replicate_packs_and_repair_a_pack_from_the_copy(tmp_path: Path, home: Path) -> None:
    url, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    src = small_tree(tmp_path / "src", n=30)
    make_checkpoint(src / "ck", layers=2, dim=64)
    mid = archive(url, src)["id"]
    r = run_cli("--store", url, "replicate", "--all", "--to", copy, "--json")
    assert r.code == 0, r.err
    assert keys(copy, layout.CHUNKS) == [] and len(keys(copy, layout.PACKS)) == 1
    assert run_cli("--store", copy, "verify", "--all", "--deep").code == 0
    assert run_cli("--store", copy, "restore", mid, str(tmp_path / "c")).code == 0
    assert tree(tmp_path / "c" / "src") == tree(src)
    pack = layout.pack_id(keys(url, layout.PACKS)[0])
    victim = index_of(url, pack).entries[3]
    raw = RawStore(url)
    good = raw.read(layout.pack(pack))
    bad = bytearray(good)
    bad[victim.offset + 20] ^= 1
    raw.write(layout.pack(pack), bytes(bad))
    assert run_cli("--store", url, "verify", "m", "--deep").code == 1
    r = run_cli("--store", url, "repair", "--from", copy, "--json")
    assert r.code == 0, r.out + r.err
    fixes = {f["name"]: f for f in r.json()["fixes"]}
    assert fixes[victim.hash]["action"] == "replaced"
    assert raw.read(layout.pack(pack)) == good  # the pack holds its exact bytes again
    assert any(k.startswith("quarantine/packs/") for k in keys(url, "quarantine/"))
    assert run_cli("--store", url, "verify", "m", "--deep").code == 0


def test_repair_of_a_missing_pack_writes_its_chunks_into_a_new_pack(tmp_path: Path, home: Path) -> None:
    url, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    src = small_tree(tmp_path / "src", n=12)
    archive(url, src)
    assert run_cli("--store", url, "replicate", "--all", "--to", copy).code == 0
    raw = RawStore(url)
    raw.delete(keys(url, layout.PACKS)[0])
    assert run_cli("--store", url, "verify", "m").code == 1
    r = run_cli("--store", url, "repair", "--from", copy, "--json")
    assert r.code == 0, r.out + r.err
    assert {f["action"] for f in r.json()["fixes"] if f["kind"] == "chunk"} == {"written"}
    assert run_cli("--store", url, "verify", "m", "--deep").code == 0
    assert run_cli("--store", url, "restore", "m", str(tmp_path / "out")).code == 0
    assert tree(tmp_path / "out" / "src") == tree(src)


# -- Object Lock and storage classes ------------------------------------------------------------

def test_packs_take_the_archives_lock_and_class_and_indexes_stay_hot(lock_url: str, tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src", n=20)
    r = run_cli("--store", lock_url, "archive", str(src), "--name", "m", "--lock-mode", "governance",
                "--retain-until", "2040-01-01", "--storage-class", "GLACIER", "--json")
    assert r.code == 0, r.err
    objs = _objects(lock_url)
    packed = [k for k in objs if k.startswith((layout.PACKS, layout.PACK_INDEXES))]
    assert len(packed) == 2 and not any(k.startswith(layout.CHUNKS) for k in objs)
    for k in packed:
        head = objs[k]
        assert head["ObjectLockMode"] == "GOVERNANCE" and _until(head) == dt.datetime(2040, 1, 1, tzinfo=UTC), k
        assert head.get("StorageClass", "STANDARD") == ("GLACIER" if k.startswith(layout.PACKS) else "STANDARD"), k
    assert run_cli("--store", lock_url, "verify", "m").code == 0  # shallow: no thaw needed
    r = run_cli("--store", lock_url, "verify", "m", "--retention", "--json")
    assert r.code == 0, r.out + r.err


def test_shallow_checks_choose_list_or_head_by_request_count(tmp_path: Path, home: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """LIST pages grow with the store, HEADs with the archive: with few chunks in a store the
    catalog says is huge, presence is checked by HEAD; in a small store by LIST."""
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=10)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    archive(url, src)
    with open_repository(url) as repo:
        m = repo.load_manifest(repo.resolve("m"))
        calls: list[str] = []
        for verb in ("list", "stat"):
            real = getattr(repo._store, verb)
            monkeypatch.setattr(repo._store, verb, lambda *a, verb=verb, real=real, **k: (calls.append(verb), real(*a, **k))[1])
        assert repo.chunk_presence(m.unique_chunks())[0] == {h: c.stored_size for h, c in m.unique_chunks().items()}
        assert "stat" not in calls and "list" in calls
        calls.clear()
        monkeypatch.setattr(repo._catalog, "object_counts", lambda: (10_000_000, 1_000_000))
        assert repo.chunk_presence(m.unique_chunks())[0] == {h: c.stored_size for h, c in m.unique_chunks().items()}
        assert "list" not in calls and "stat" in calls


def test_a_deep_verify_looks_pack_locations_up_once(tmp_path: Path, home: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The read plan's lookups serve the presence check too: one catalog query for the pack
    locations per deep verify; the answer is the unplanned one, also for a chunk the plan
    did not look up, and a missing pack is still reported."""
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=30)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))  # one chunk under its own key
    archive(url, src)
    with open_repository(url) as repo:
        m = repo.load_manifest(repo.resolve("m"))
        chunks = m.unique_chunks()
        want = repo.chunk_presence(chunks)
        some = list(chunks)[: len(chunks) // 2]
        repo.plan_reads(chunks[h] for h in some)
        assert repo.chunk_presence(chunks, planned=True) == want
        asked: list[int] = []
        real = type(repo._catalog).pack_locations
        real_rows = type(repo._catalog).pack_location_rows

        def pack_locations(self, hashes):
            hashes = list(hashes)
            asked.append(len(hashes))
            return real(self, hashes)

        def pack_location_rows(self, hashes):  # the plan's one lookup of the whole archive
            asked.append(len(hashes))
            return real_rows(self, hashes)
        monkeypatch.setattr(type(repo._catalog), "pack_locations", pack_locations)
        monkeypatch.setattr(type(repo._catalog), "pack_location_rows", pack_location_rows)
    r = run_cli("--store", url, "verify", "m", "--deep", "--json")
    assert r.code == 0, r.err
    assert asked[0] == len(chunks) and all(n == 1 for n in asked[1:])  # then only the unpacked chunk's read
    monkeypatch.setattr(type(repo._catalog), "pack_locations", real)
    monkeypatch.setattr(type(repo._catalog), "pack_location_rows", real_rows)
    pack = next(k for k in RawStore(url).keys(layout.PACKS))
    (tmp_path / "store" / pack).unlink()
    r = run_cli("--store", url, "verify", "m", "--deep", "--json")
    assert r.code == 1 and "is missing from the store" in r.out


def test_layout_pack_keys_and_their_inverses() -> None:
    h = "ab" + "0" * 62
    assert layout.pack(h) == f"packs/ab/{h}" and layout.pack_id(layout.pack(h)) == h
    assert layout.pack_index(h) == f"packindex/ab/{h}.json" and layout.pack_index_id(layout.pack_index(h)) == h
    assert layout.pack(h).startswith(layout.pack_fanout("ab"))
    for stray in (f"packs/cd/{h}", f"packs/ab/{h}.json", f"packindex/ab/{h}", "packs/ab/xyz"):
        assert layout.pack_id(stray) is None and layout.pack_index_id(stray) is None


def test_a_locked_rearchive_extends_the_lock_of_existing_packs(lock_url: str, tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src", n=15)
    base = ["--store", lock_url, "archive", str(src), "--name", "m", "--lock-mode", "governance", "--json"]
    assert run_cli(*base, "--retain-until", "2040-01-01").code == 0
    (src / "new.txt").write_text("one more small file")
    r = run_cli(*base, "--retain-until", "2050-01-01")
    assert r.code == 0, r.err
    objs = _objects(lock_url)
    packed = [k for k in objs if k.startswith((layout.PACKS, layout.PACK_INDEXES))]
    assert len(packed) == 4  # the first pack and index, and the second run's (one new chunk)
    assert all(_until(objs[k]) == dt.datetime(2050, 1, 1, tzinfo=UTC) for k in packed), packed


def test_a_cold_pack_is_thawed_once_for_all_its_chunks(s3_mock_url: str, tmp_path: Path, home: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from archiver.stores.s3 import S3Store
    src = small_tree(tmp_path / "src", n=25)
    r = run_cli("--store", s3_mock_url, "archive", str(src), "--name", "m", "--storage-class", "GLACIER", "--json")
    assert r.code == 0, r.err
    assert run_cli("--store", s3_mock_url, "restore", "m", str(tmp_path / "out")).code == 2  # cold: refused
    asked: list[str] = []
    real = S3Store.request_thaw
    monkeypatch.setattr(S3Store, "request_thaw", lambda self, key, days, tier: (asked.append(key),
                                                                              real(self, key, days, tier))[1])
    r = run_cli("--store", s3_mock_url, "restore", "m", str(tmp_path / "out"), "--thaw", "--no-wait", "--json")
    assert r.code == 0, r.err
    assert asked == keys(s3_mock_url, layout.PACKS) and len(asked) == 1  # one pack, asked once for 25 chunks


def test_pack_threshold_setting_is_checked() -> None:
    from archiver.errors import InvalidOptionError
    from archiver.settings import Settings
    assert Settings.resolve(env={"ARCHIVER_HOME": "/tmp/h"}).pack_below == packs.SMALL_OBJECT
    # on S3 large chunks share packs too by default (fewer requests); a set threshold wins
    assert Settings.resolve("s3://b/p", env={"ARCHIVER_HOME": "/tmp/h"}).pack_below == packs.S3_PACK_BELOW
    assert Settings.resolve("s3://b/p", env={"ARCHIVER_HOME": "/tmp/h", "ARCHIVER_PACK_BELOW": "1048576"}
                            ).pack_below == packs.SMALL_OBJECT
    assert Settings.resolve(env={"ARCHIVER_HOME": "/tmp/h", "ARCHIVER_PACK_BELOW": "0"}).pack_below == 0
    s = Settings.resolve(env={"ARCHIVER_HOME": "/tmp/h", "ARCHIVER_PACK_BELOW": "9437184"})
    assert s.pack_below == 9437184 and s.for_copy("/tmp/copy").pack_below == 9437184  # a copy packs alike
    for bad in ("-1", "1e6", "x", str(packs.MAX_PACK_BELOW + 1)):
        with pytest.raises(InvalidOptionError) as e:
            Settings.resolve(env={"ARCHIVER_HOME": "/tmp/h", "ARCHIVER_PACK_BELOW": bad})
        assert e.value.option == "pack_below" and "ARCHIVER_PACK_BELOW" in str(e.value)


def test_deep_verify_restore_and_files_cache_read_each_pack_once_with_many_packs(
        tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More packs than the span cache holds (4), written largest file first: verify, restore
    and the files cache's proof still read each pack once, since they read in pack order
    (in path order each file could evict the span the next one needs). One worker, so the
    order is exactly the one planned (with real 16 MiB packs, the files in flight at once lie
    in one or two packs)."""
    monkeypatch.setattr(packs, "PACK_TARGET", 64 << 10)  # ~20 packs for this tree
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=150)
    out = archive(url, src)
    pack_keys = keys(url, layout.PACKS)
    assert len(pack_keys) > 8
    from archiver.checker import verify
    from archiver.pipeline import archive as run_archive
    from archiver.restorer import restore

    def pack_reads(run) -> list[str]:
        with open_repository(url) as repo:
            reads: list[str] = []
            real_get, real_range = repo._store.get, repo._store.get_range
            repo._store.get = lambda key, max_size=None: (reads.append(key), real_get(key, max_size))[1]  # type: ignore[method-assign]
            repo._store.get_range = lambda key, *a, **k: (reads.append(key), real_range(key, *a, **k))[1]  # type: ignore[method-assign]
            run(repo)
        return [k for k in reads if k.startswith(layout.PACKS)]

    got = pack_reads(lambda repo: verify(repo, [out["id"]], deep=True, workers=1, processes=0))  # threads (tests/test_packproof.py: workers)
    assert sorted(got) == pack_keys
    got = pack_reads(lambda repo: restore(repo, out["id"], tmp_path / "out", workers=1))
    assert sorted(got) == pack_keys
    assert tree(tmp_path / "out" / "src") == tree(src)
    got = pack_reads(lambda repo: run_archive(repo, [src], name="m", workers=1))
    assert sorted(got) == pack_keys


def test_pack_positions_name_each_packed_chunk(tmp_path: Path, home: Path) -> None:
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=20)
    out = archive(url, src)
    m = manifest_of(url, out["id"])
    with open_repository(url) as repo:
        pos = repo.pack_positions([*m.unique_chunks(), "0" * 64])
    assert set(pos) == set(m.unique_chunks())  # an unknown hash has no position
    for pack, offset in pos.values():
        index = index_of(url, pack)
        assert offset in {e.offset for e in index.entries}


# -- large chunk objects in packs (ARCHIVER_PACK_BELOW above the 8 MiB chunk size) ----------------

def _large_tree(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Packing every chunk object (threshold 16 MiB), with large packs closed at 3 MiB so a few
    random files of 3-5 MiB (CDC chunks of 0.5-8 MiB) fill several of them; plus small files."""
    monkeypatch.setenv("ARCHIVER_PACK_BELOW", str(packs.MAX_PACK_BELOW))
    monkeypatch.setattr(packs, "LARGE_PACK_TARGET", 3 << 20)
    src = small_tree(root, n=20)
    rnd = random.Random(5)
    for i in range(4):
        (src / f"big{i}.bin").write_bytes(rnd.randbytes((3 + i % 3) << 20))
    return src


def _large_entries(url: str) -> list[tuple[str, packs.PackEntry]]:
    """(pack, entry) of every chunk object of SMALL_OBJECT bytes or more, over all packs."""
    return [(layout.pack_id(k), e) for k in keys(url, layout.PACKS)
            for e in index_of(url, layout.pack_id(k)).entries if e.stored_size >= packs.SMALL_OBJECT]


def test_large_chunks_share_packs_apart_from_small_ones_and_restore(
        s3_mock_url: str, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _large_tree(tmp_path / "src", monkeypatch)
    mid = archive(s3_mock_url, src)["id"]
    assert keys(s3_mock_url, layout.CHUNKS) == []  # every chunk object is in a pack
    m = manifest_of(s3_mock_url, mid)
    indexes = [index_of(s3_mock_url, layout.pack_id(k)) for k in keys(s3_mock_url, layout.PACKS)]
    assert {e.hash for i in indexes for e in i.entries} == set(m.unique_chunks())
    large = [i for i in indexes if any(e.stored_size >= packs.SMALL_OBJECT for e in i.entries)]
    assert len(large) >= 2 and all(e.stored_size >= packs.SMALL_OBJECT for i in large for e in i.entries)
    assert all(i.size < packs.LARGE_PACK_TARGET + packs.MAX_PACK_BELOW for i in large)
    assert sum(len(i.entries) for i in large) > len(large)  # large chunks share their packs
    # one file: only its byte ranges are read, each with a ranged GET
    entry = next(e for e in m.files if e.path.endswith("big2.bin"))
    from archiver.restorer import restore
    with open_repository(s3_mock_url) as repo:
        gets: list[dict] = []
        repo._store.client.meta.events.register(
            "provide-client-params.s3.GetObject", lambda params, **_: gets.append(dict(params)))
        assert restore(repo, mid, tmp_path / "one", include=[entry.path]).ok
    pack_gets = [g for g in gets if "/packs/" in g["Key"]]
    assert pack_gets and all("Range" in g for g in pack_gets)
    spans = [tuple(int(x) for x in g["Range"][6:].split("-")) for g in pack_gets]
    assert sum(b - a + 1 for a, b in spans) == sum(c.stored_size for c in entry.chunks)  # just its bytes
    assert (tmp_path / "one" / entry.path).read_bytes() == (src.parent / entry.path).read_bytes()
    r = run_cli("--store", s3_mock_url, "restore", "m", str(tmp_path / "all"))
    assert r.code == 0, r.err
    assert tree(tmp_path / "all" / "src") == tree(src)


def test_a_damaged_large_chunk_in_a_pack_is_named_and_repaired_from_a_copy(
        tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    src = _large_tree(tmp_path / "src", monkeypatch)
    mid = archive(url, src)["id"]
    r = run_cli("--store", url, "replicate", "--all", "--to", copy, "--json")
    assert r.code == 0, r.err
    assert keys(copy, layout.CHUNKS) == []  # the copy packs its large chunks alike
    pack, victim = _large_entries(url)[1]
    raw = RawStore(url)
    good = raw.read(layout.pack(pack))
    bad = bytearray(good)
    bad[victim.offset + victim.stored_size // 2] ^= 0x10
    raw.write(layout.pack(pack), bytes(bad))
    r = run_cli("--store", url, "verify", "m", "--deep", "--json")
    assert r.code == 1
    probs = r.json()["problems"]
    files = {e.path for e in manifest_of(url, mid).files if any(c.hash == victim.hash for c in e.chunks)}
    assert files and {p["path"] for p in probs} == files  # only the damaged chunk's file
    assert all(p["chunk"] == victim.hash and pack in p["detail"] and p["kind"] == "corrupt-chunk" for p in probs)
    r = run_cli("--store", url, "repair", "--from", copy, "--json")
    assert r.code == 0, r.out + r.err
    assert {f["name"]: f for f in r.json()["fixes"]}[victim.hash]["action"] == "replaced"
    assert raw.read(layout.pack(pack)) == good  # the pack holds its exact bytes again
    assert run_cli("--store", url, "verify", "m", "--deep").code == 0
    assert run_cli("--store", url, "restore", "m", str(tmp_path / "out")).code == 0
    assert tree(tmp_path / "out" / "src") == tree(src)


def test_large_objects_close_their_own_packs_at_the_large_target() -> None:
    assert packs.pack_target(packs.SMALL_OBJECT - 1) == packs.PACK_TARGET
    assert packs.pack_target(packs.SMALL_OBJECT) == packs.LARGE_PACK_TARGET
    b = PackBuilder(target=packs.LARGE_PACK_TARGET)
    chunk = bytes(8 << 20)
    for i in range(3):
        assert not b.full
        b.add(f"{i:064x}", chunk, len(chunk))
    assert b.full and len(b) == 3  # three 8 MiB chunks: one pack + one index instead of three objects
    assert b.size < 32 << 20 and b.size + packs.MAX_PACK_BELOW <= packs.MAX_PACK_BYTES


@pytest.mark.packs
def test_chunks_of_packs_written_this_run_are_found_and_proved_without_rereading(tmp_path, monkeypatch):
    """A pack written by this process records, per chunk, where it went (PackLocation made
    only when asked) and the codec it was encoded with: a chunk saved again in the same run
    is deduplicated from there, located exactly, and no pack is read back."""
    monkeypatch.setenv("ARCHIVER_PACK_BELOW", str(packs.SMALL_OBJECT))
    from archiver import api, codecs
    repo = api.open_repository(str(tmp_path / "s"), create=True)
    try:
        datas = [os.urandom(3000), b"z" * 5000, bytes(range(256)) * 20]
        hs = [repo.chunk_address(d, 0) for d in datas]
        saved = [repo.save_chunk(h, d, 0) for h, d in zip(hs, datas)]
        assert repo.flush_packs() == 1
        reads = []
        real_get = repo._store.get
        monkeypatch.setattr(repo._store, "get", lambda *a, **k: reads.append(a) or real_get(*a, **k))
        again = [repo.save_chunk(h, d, 0) for h, d in zip(hs, datas)]
        assert [(a.stored_size, a.codec, a.written) for a in again] == [(s.stored_size, s.codec, False) for s in saved]
        assert {s.codec for s in saved} == {"raw", "zstd"} and not reads
        at = 0
        for h, s, d in zip(hs, saved, datas):
            [loc] = repo._pack_locations(h)
            assert (loc.offset, loc.stored_size, loc.length) == (at, s.stored_size, len(d))
            assert codecs.describe(repo._pack_range(loc)) == s.codec
            at += s.stored_size
    finally:
        repo.close()


def test_read_chunks_of_a_batch_equal_one_read_each_and_read_each_span_once(tmp_path: Path, home: Path) -> None:
    """`Repository.read_chunks` (a batch of small files in pack order, restore and deep
    verify) gives what `try_read_chunk` gives chunk by chunk: the bytes, re-hashed, or for a
    damaged chunk the same error naming its pack; a planned span is fetched once per batch."""
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=40)
    mid = archive(url, src)["id"]
    pack, victim = damage_packed(url, 5, 0x01)
    with open_repository(url) as repo:
        refs = [e.chunks[0] for e in repo.load_manifest(mid).files]
        assert repo.plan_reads(refs) == 1  # one pack, one span
        pos = repo.pack_positions(r.hash for r in refs)
        refs.sort(key=lambda r: pos[r.hash])
        reads: list[str] = []
        real_range = repo._store.get_range
        repo._store.get_range = lambda key, *a, **k: (reads.append(key), real_range(key, *a, **k))[1]  # type: ignore[method-assign]
        batch = repo.read_chunks(refs)
        one_each = [repo.try_read_chunk(r) for r in refs]
    # the damaged chunk alone is read again (its error worded by try_read_chunk), the rest from the one span
    assert reads.count(layout.pack(pack)) <= 2
    assert len(batch) == len(refs) == 40
    for r, a, b in zip(refs, batch, one_each):
        if r.hash == victim.hash:
            assert type(a) is type(b) and str(a) == str(b) and pack in str(a)
        else:
            assert isinstance(a, (bytes, bytearray)) and a == b


def test_the_plans_one_catalog_lookup_gives_the_locations_the_per_chunk_lookup_gives(tmp_path: Path,
                                                                                   home: Path) -> None:
    """plan_reads looks a whole archive's pack locations up with one statement
    (`Catalog.pack_location_rows`) when the catalog is their only source: the same lists as
    `_pack_locations_many`, oldest pack first for a chunk in two packs, a location of a pack
    the catalog does not know skipped (as the join skips it), the same plan; and the general
    path still serves a process that wrote packs itself."""
    url = str(tmp_path / "store")
    archive(url, small_tree(tmp_path / "src", n=40))
    with open_repository(url) as repo:
        m = repo.load_manifest(repo.resolve("m"))
        chunks = m.unique_chunks()
        cat = repo._catalog
        [(p1, size1, iid1)] = [(p, s, i) for p, s, i in cat._reader().execute("SELECT pack, size, index_id FROM packs")]
        entries = cat.pack_entries(p1)
        h2 = entries[3][0]  # one chunk also in a second (newer) pack, one in a pack not recorded
        with cat.write() as conn:
            conn.execute("INSERT INTO packs(pack, size, index_id) VALUES (?,?,?)", ("f" * 64, 999, "e" * 64))
            conn.execute('INSERT INTO pack_chunks(hash, pack, "offset", stored_size, length) VALUES (?,?,?,?,?)',
                         (h2, "f" * 64, 7, entries[3][2], entries[3][3]))
            conn.execute('INSERT INTO pack_chunks(hash, pack, "offset", stored_size, length) VALUES (?,?,?,?,?)',
                         (entries[5][0], "0" * 64, 1, entries[5][2], entries[5][3]))
        want = repo._pack_locations_many(chunks)
        got = repo._catalog_locations(set(chunks))
        assert got == want and len(got) == len(chunks)
        assert [x.pack for x in got[h2]] == [p1, "f" * 64]
        assert [x.pack for x in got[entries[5][0]]] == [p1]
        spans = repo.plan_reads(chunks.values())
        planned = repo._packstate.planned_locs
        assert planned == want and spans >= 1
        assert cat.pack_location_rows([]) == ([], {})
        repo._packstate.written["x" * 64] = []  # packs written by this process: the general path
        assert repo._catalog_locations(set(chunks)) is None
        del repo._packstate.written["x" * 64]


def test_batch_reads_cut_raw_chunks_out_unparsed_and_word_a_damaged_head_as_decode_does(
        tmp_path: Path, home: Path) -> None:
    """read_chunks cuts each raw chunk (an incompressible small file's) out of its span
    without parsing its head (`codecs.stored_raw_payload`), still re-hashing it; a chunk
    whose head was damaged in the pack goes through decode and is reported as before,
    naming its pack, and an intact compressed chunk is decoded as before."""
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=20)
    (src / "zeros.bin").write_bytes(bytes(5000))  # compresses: stored as zstd, decoded as before
    mid = archive(url, src)["id"]
    pack = layout.pack_id(keys(url, layout.PACKS)[0])
    victim = index_of(url, pack).entries[2]
    raw = RawStore(url)
    data = bytearray(raw.read(layout.pack(pack)))
    data[victim.offset + 16] ^= 0x01  # the section's codec byte: raw becomes "zstd"
    raw.write(layout.pack(pack), bytes(data))
    with open_repository(url) as repo:
        refs = [e.chunks[0] for e in repo.load_manifest(mid).files]
        repo.plan_reads(refs)
        parsed: list[str] = []
        real = repo._decode_checked
        repo._decode_checked = lambda obj, h, n: (parsed.append(h), real(obj, h, n))[1]  # type: ignore[method-assign]
        batch = repo.read_chunks(refs)
        repo._decode_checked = real  # type: ignore[method-assign]
        viewed = repo.read_chunks(refs, views=True)  # deep verify's: raw chunks as views, not copies
        one_each = [repo.try_read_chunk(r) for r in refs]
    zeros = next(r.hash for r in refs if r.length == 5000 and r.stored_size < 5000)
    stored_raw = {r.hash for r in refs if r.stored_size == r.length + 40}  # half of small_tree's files
    assert len(stored_raw) >= 5 and {victim.hash, zeros} <= set(parsed)
    assert not (set(parsed) & stored_raw) - {victim.hash}  # the raw ones were cut out, not parsed
    for r, a, v, b in zip(refs, batch, viewed, one_each):
        if r.hash == victim.hash:
            assert isinstance(a, Exception) and type(a) is type(b) and str(a) == str(b) and pack in str(a)
            assert type(v) is type(b) and str(v) == str(b)
        else:
            assert isinstance(a, (bytes, bytearray)) and a == b
            assert isinstance(v, memoryview if r.hash in stored_raw else (bytes, bytearray)) and bytes(v) == b


def test_small_chunks_are_packed_as_exactly_their_encode_objects(tmp_path: Path, home: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain chunk up to codecs.SAMPLE_BYTES goes into its pack through `Codec.encode_small`
    (Repository._save_fast); each packed object, cut out by its index entry, is byte for byte
    `Codec().encode(chunk)` (raw and zstd ones), beside a longer chunk that still goes through
    `encode_parts`."""
    from archiver.codecs import SAMPLE_BYTES, Codec
    import blake3
    src = small_tree(tmp_path / "src", n=40)
    (src / "big_text.txt").write_bytes(b"long line of text\n" * 6000)  # > SAMPLE_BYTES: encode_parts
    (src / "big_random.bin").write_bytes(random.Random(3).randbytes(SAMPLE_BYTES + 100))
    calls = []
    real = Codec.encode_small
    monkeypatch.setattr(Codec, "encode_small", lambda self, raw: calls.append(len(raw)) or real(self, raw))
    monkeypatch.setenv("ARCHIVER_PACK_BELOW", str(packs.SMALL_OBJECT))
    url = str(tmp_path / "store")
    archive(url, src, "--processes", "0")
    assert len(calls) == 40 and max(calls) <= SAMPLE_BYTES
    by_hash = {blake3.blake3(p.read_bytes()).hexdigest(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    raw = RawStore(url)
    codecs_seen = set()
    checked = 0
    for k in raw.keys(layout.PACKS):
        data = raw.read(k)
        for e in index_of(url, layout.pack_id(k)).entries:
            want = Codec().encode(by_hash[e.hash], 0)
            assert data[e.offset:e.offset + e.stored_size] == want.data
            codecs_seen.add(want.codec)
            checked += 1
    assert checked == len(by_hash) == 42 and codecs_seen == {"raw", "zstd"}


def test_a_pack_index_id_is_computed_once_and_is_the_hash_of_its_json(tmp_path: Path) -> None:
    """PackIndex.id is cached per object (the driver asks at adoption and again at the commit);
    it is still BLAKE3 of the canonical JSON, the key the index is stored under, also for the
    id `Repository._write_pack` seeds from the bytes it stored."""
    import blake3
    b = PackBuilder()
    for i in range(5):
        b.add(f"{i:064x}", os.urandom(20), 19)
    _, index = b.close()
    assert "id" not in vars(index)
    assert index.id == blake3.blake3(index.to_json()).hexdigest() == parse_index(index.to_json()).id
    assert vars(index)["id"] == index.id
    repo = open_repository(str(tmp_path / "s"), str(tmp_path / "c.db"), create=True)
    b2 = PackBuilder()
    b2.add("ab" * 32, os.urandom(30), 29)
    written, iid = repo._write_pack(b2, None)
    stored = RawStore(str(tmp_path / "s")).read(layout.pack_index(iid))
    assert written.id == iid == blake3.blake3(stored).hexdigest() and parse_index(stored, iid) == written
