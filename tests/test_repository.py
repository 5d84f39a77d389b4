"""archiver/repository.py and archiver/layout.py: the one door to the store and the catalog.

Saving deduplicates and proves what it relies on; every read is re-hashed; a file's
chunks stream in order with a whole-file check; manifests are committed without ever
overwriting; a bad manifest never stops a walk of the store."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest

from archiver import digests as archiver_digests
from archiver import layout
from archiver.digests import FileDigest
from archiver.errors import CorruptChunkError, FileHashError, ManifestError, ObjectMissingError
from archiver.repository import Repository
from archiver.settings import Settings
from manifests.model import ChunkRef, Entry, Manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path):
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as r:
        yield r


def obj_path(tmp_path: Path, key: str) -> Path:
    return tmp_path / "store" / key


def save(repo: Repository, data: bytes, width: int = 0) -> ChunkRef:
    h = blake3.blake3(data).hexdigest()
    saved = repo.save_chunk(h, data, width)
    return ChunkRef(0, len(data), h, saved.stored_size, saved.codec)


def file_entry(path: str, pieces: list[bytes], refs: list[ChunkRef]) -> Entry:
    d = FileDigest()
    off = 0
    placed = []
    for data, r in zip(pieces, refs):
        d.update(data)
        placed.append(ChunkRef(off, r.length, r.hash, r.stored_size, r.codec))
        off += r.length
    return Entry(path=path, type="file", mode=0o644, size=off, mtime_ns=0, blake3=d.blake3, sha256=d.sha256,
                 chunks=tuple(placed))


# -- layout ------------------------------------------------------------------------------------

def test_layout_keys_and_their_inverses():
    h = "ab" + "0" * 62
    assert layout.chunk(h) == f"chunks/ab/{h}" and layout.chunk_hash(layout.chunk(h)) == h
    assert layout.chunk_fanout("ab") == "chunks/ab/" and layout.chunk(h).startswith(layout.chunk_fanout("ab"))
    assert layout.manifest(h) == f"manifests/{h}.json" and layout.manifest_id(layout.manifest(h)) == h
    assert layout.signature(h, "f" * 32) == f"signatures/{h}/{'f' * 32}.json"
    assert layout.signature(h, "f" * 32).startswith(layout.signatures_of(h))
    assert layout.filemap(h) == f"filemaps/ab/{h}.bin" and layout.filemap(h, binary=False) == f"filemaps/ab/{h}.json"
    assert layout.filemap_keys(h) == (layout.filemap(h), layout.filemap(h, binary=False))
    assert layout.filemap_hash(layout.filemap(h)) == (h, True)
    assert layout.filemap_hash(layout.filemap(h, binary=False)) == (h, False)
    assert layout.event("w1", "0001").startswith(layout.EVENTS)
    # strays are not mistaken for objects
    for stray in ("manifests/readme.txt", "manifests/" + h, "chunks/cd/" + h, "chunks/ab/xyz", "store.json"):
        assert layout.chunk_hash(stray) is None and layout.manifest_id(stray) is None


def _string_constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_module_but_layout_spells_a_store_key():
    prefixes = ("chunks/", "manifests/", "signatures/", "filemaps/", "events/", "quarantine/", "store.json",
                "packs/", "packindex/")
    offenders = []
    for path in sorted((ROOT / "archiver").rglob("*.py")) + sorted((ROOT / "manifests").rglob("*.py")):
        if path.name == "layout.py":
            continue
        for s in _string_constants(path):
            if s.startswith(prefixes):
                offenders.append(f"{path.relative_to(ROOT)}: {s!r}")
    assert offenders == []


def test_only_the_repository_touches_store_and_catalog():
    """The one-door rule, checked on the source: no `repo.store`/`repo.catalog`/`repo.codec`
    outside repository.py, and only repository.py (and the stores package, and the API's
    documented open_store) builds a Store or a Catalog."""
    offenders = []
    for path in sorted((ROOT / "archiver").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        for needle in ("repo.store.", "repo.catalog.", "repo.codec.", "._store.", "._catalog."):
            if needle in text and rel != "archiver/repository.py":
                offenders.append(f"{rel}: {needle}")
        if "Catalog(" in text and rel != "archiver/repository.py":
            offenders.append(f"{rel}: Catalog(")
    assert offenders == []


def test_manifests_package_stands_alone():
    code = "import sys, manifests, manifests.model, manifests.catalog, manifests.paths, manifests.signing; " \
           "print(sorted(m for m in sys.modules if m == 'archiver' or m.startswith('archiver.')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- chunks ------------------------------------------------------------------------------------

def test_save_chunk_writes_once_and_round_trips(repo):
    data = os.urandom(1000) + bytes(5000)
    h = blake3.blake3(data).hexdigest()
    first = repo.save_chunk(h, data, 0)
    assert first.written and first.stored_size < len(data)
    again = repo.save_chunk(h, data, 0)
    assert not again.written and (again.stored_size, again.codec) == (first.stored_size, first.codec)
    assert repo.read_chunk(ChunkRef(0, len(data), h, first.stored_size, first.codec)) == data
    assert repo.chunk_sizes([h, "ff" * 32]) == {h: first.stored_size}


def test_existing_chunk_the_catalog_does_not_know_is_proved_before_use(repo, tmp_path):
    """Issue 14 changed this from "raises CorruptChunkError" to "repaired": the source
    bytes are at hand, so a damaged object is replaced and the damaged one quarantined."""
    data = os.urandom(3000)
    ref = save(repo, data)
    p = obj_path(tmp_path, layout.chunk(ref.hash))
    os.chmod(p, 0o644)
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF  # same size, wrong bytes; no manifest recorded it, so it must be read back
    p.write_bytes(bytes(raw))
    saved = repo.save_chunk(ref.hash, data, 0)
    assert saved.repaired and saved.written and saved.stored_size == ref.stored_size
    assert repo.read_chunk(ref) == data
    aside = list((tmp_path / "store" / "quarantine").rglob(f"{ref.hash}.*"))
    assert [q.read_bytes() for q in aside] == [bytes(raw)]


def test_read_chunk_checks_size_and_hash(repo, tmp_path):
    data = os.urandom(2000)
    ref = save(repo, data)
    with pytest.raises(CorruptChunkError, match="stored size"):
        repo.read_chunk(ChunkRef(0, ref.length, ref.hash, ref.stored_size + 1, ref.codec))
    missing = ChunkRef(0, 10, "ee" * 32, 10, "raw")
    with pytest.raises(ObjectMissingError):
        repo.read_chunk(missing)
    assert isinstance(repo.try_read_chunk(missing), ObjectMissingError)


# -- stream_file -------------------------------------------------------------------------------

def test_stream_file_yields_in_order_and_checks_the_whole_file(repo):
    pieces = [os.urandom(1500) for _ in range(6)]
    refs = [save(repo, p) for p in pieces]
    e = file_entry("f.bin", pieces, refs)
    with ThreadPoolExecutor(3) as pool:
        got = [p.data for p in repo.stream_file(e, pool, 3)]
        assert got == pieces
        wrong = Entry(**{**e.__dict__, "sha256": "0" * 64})
        with pytest.raises(FileHashError) as ei:
            list(repo.stream_file(wrong, pool, 3))
        assert ei.value.path == "f.bin"
        list(repo.stream_file(wrong, pool, 3, sha256=False))  # BLAKE3 only: passes


def test_stream_file_of_one_chunk_takes_its_blake3_from_the_chunk_check(repo, monkeypatch):
    """A one-chunk file whose chunk hash is its BLAKE3 is not BLAKE3-hashed a second time (the
    chunk's re-hash on read proved it); SHA-256 is still checked, and a file BLAKE3 that is
    not the chunk's is still refused."""
    data = os.urandom(3000)
    ref = save(repo, data)
    e = file_entry("one.bin", [data], [ref])
    assert e.blake3 == ref.hash
    made = []
    real = archiver_digests.FileDigest.__init__

    def spy(self, sha256=True, *, blake3=True):
        made.append(blake3)
        real(self, sha256, blake3=blake3)
    monkeypatch.setattr(archiver_digests.FileDigest, "__init__", spy)
    with ThreadPoolExecutor(2) as pool:
        assert [p.data for p in repo.stream_file(e, pool, 2)] == [data]
        assert made == [False]
        with pytest.raises(FileHashError):
            list(repo.stream_file(Entry(**{**e.__dict__, "sha256": "0" * 64}), pool, 2))
        with pytest.raises(FileHashError):
            list(repo.stream_file(Entry(**{**e.__dict__, "blake3": "0" * 64}), pool, 2, sha256=False))
        assert made == [False, False, True]


def test_stream_file_damage_raises_or_is_reported_with_keep_going(repo, tmp_path):
    pieces = [os.urandom(1500) for _ in range(4)]
    refs = [save(repo, p) for p in pieces]
    e = file_entry("f.bin", pieces, refs)
    os.unlink(obj_path(tmp_path, layout.chunk(refs[1].hash)))
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(ObjectMissingError):
            list(repo.stream_file(e, pool, 2))
        out = list(repo.stream_file(e, pool, 2, keep_going=True))  # no FileHashError: it cannot pass
    assert [p.error is None for p in out] == [True, False, True, True]
    assert out[1].ref.hash == refs[1].hash and out[1].ref.offset == 1500


# -- manifests ---------------------------------------------------------------------------------

def test_commit_manifest_never_overwrites_a_different_object(repo, tmp_path):
    data = os.urandom(100)
    ref = save(repo, data)
    m = Manifest(name="m", entries=(file_entry("a", [data], [ref]),))
    done = repo.commit_manifest(m, details={"note": "x"})
    assert done.id == m.id and repo.is_recorded(m.id) and repo.resolve("m") == m.id
    assert repo.commit_manifest(m).id == m.id  # identical bytes: idempotent
    other = Manifest(name="other", entries=())
    p = obj_path(tmp_path, layout.manifest(other.id))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"not the manifest")
    with pytest.raises(ManifestError, match="different object"):
        repo.commit_manifest(other)


def test_on_stored_is_called_once_the_root_is_durable_and_before_the_catalog_records_it(repo, tmp_path):
    """commit_manifest's `on_stored`: the manifest is in the store (and signed) when it is
    called, and not yet in the catalog (the files cache writes its rows meanwhile)."""
    data = os.urandom(100)
    m = Manifest(name="m", entries=(file_entry("a", [data], [save(repo, data)]),))
    seen: list[tuple[str, bool, bool]] = []
    done = repo.commit_manifest(m, details={"note": "x"}, on_stored=lambda mid: seen.append(
        (mid, obj_path(tmp_path, layout.manifest(mid)).is_file(), repo.is_recorded(mid))))
    assert seen == [(done.id, True, False)] and repo.is_recorded(done.id)


def test_on_stored_is_not_called_when_the_root_cannot_be_stored(repo, tmp_path):
    other = Manifest(name="other", entries=())
    p = obj_path(tmp_path, layout.manifest(other.id))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"not the manifest")
    seen: list[str] = []
    with pytest.raises(ManifestError, match="different object"):
        repo.commit_manifest(other, details={"note": "x"}, on_stored=seen.append)
    assert seen == [] and not repo.is_recorded(other.id)


def test_iter_manifests_reports_a_bad_one_and_goes_on(repo, tmp_path):
    good = [Manifest(name=f"m{i}", entries=()) for i in range(3)]
    for m in good:
        repo.commit_manifest(m)
    bad_id = "ab" * 32
    obj_path(tmp_path, layout.manifest(bad_id)).write_bytes(b"{}")
    (tmp_path / "store" / "manifests" / "stray.txt").write_bytes(b"x")
    seen = {sm.id: sm for sm in repo.iter_manifests()}
    assert set(seen) == {m.id for m in good} | {bad_id}
    assert isinstance(seen[bad_id].error, ManifestError) and seen[bad_id].manifest is None
    assert all(seen[m.id].manifest == m for m in good)


@pytest.mark.packs
def test_prove_stored_chunks_pack_by_pack_names_each_bad_chunk(tmp_path):
    """Many packed chunks proved at once: one read per pack span, every chunk re-hashed;
    a flipped byte fails its chunk alone (named with its pack), a chunk under its own key is
    proved by itself, an absent one is reported missing, and a fresh process (no pack state)
    gives the same answers."""
    from tests.helpers import RawStore
    settings = Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db")
    with Repository.open(settings, create=True) as r:
        small = [save(r, os.urandom(500 + i)) for i in range(30)]
        r.flush_packs()
        own = r.save_chunk(blake3.blake3(big := os.urandom(3 << 20)).hexdigest(), big, 0)
        large = ChunkRef(0, len(big), blake3.blake3(big).hexdigest(), own.stored_size, own.codec)
        assert r.prove_stored_chunks([*small, large]) == {}
        victim = small[7]
        pack, offset = r.pack_positions([victim.hash])[victim.hash]
    end = offset + victim.stored_size
    RawStore(str(tmp_path / "store")).mutate(layout.pack(pack), lambda b: b[:end - 1] + bytes([b[end - 1] ^ 1]) + b[end:])
    ghost = ChunkRef(0, 10, "ab" * 32, 30, "raw")
    with Repository.open(settings) as r:
        calls: list[tuple[int, int]] = []
        real = r._read_range
        r._read_range = lambda key, start, length: calls.append((start, length)) or real(key, start, length)
        bad = r.prove_stored_chunks([*small, large, ghost])
        assert set(bad) == {victim.hash, ghost.hash}
        assert isinstance(bad[victim.hash], CorruptChunkError) and pack in str(bad[victim.hash])
        assert isinstance(bad[ghost.hash], ObjectMissingError)
        assert len([c for c in calls if c[1] > victim.stored_size]) == 1  # the pack: one span for all 30


@pytest.mark.packs
def test_commit_writes_the_open_pack_beside_its_trees_and_before_the_root(tmp_path, monkeypatch):
    """The open pack goes to the store on a thread of its own while the commit builds and
    proves its trees, and the trees while the pack is recorded; the root manifest is still
    written only once the pack, its index and every tree are durable, and the pack is
    recorded in the catalog by the commit."""
    import threading
    from archiver.pipeline import archive
    src = tmp_path / "src"
    for i in range(20):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"f{i}").write_bytes(os.urandom(1000 + i))
    settings = Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db")
    monkeypatch.setattr("manifests.model.TREE_THRESHOLD", 0)  # a v3 root with trees, for 20 files
    order: list[tuple[str, str]] = []
    with Repository.open(settings, create=True) as r:
        real, real_store = r._put, r._store.put_if_absent
        r._put = lambda key, data, policy: order.append((key, threading.current_thread().name)) or \
            real(key, data, policy)
        r._store.put_if_absent = lambda key, data, *a, **k: (key.startswith(layout.TREES) and order.append(
            (key, threading.current_thread().name))) or real_store(key, data, *a, **k)
        res = archive(r, [src], name="m")
        root = [i for i, (k, _) in enumerate(order) if k.startswith(layout.MANIFESTS)]
        packed = [i for i, (k, _) in enumerate(order) if k.startswith((layout.PACKS, layout.PACK_INDEXES))]
        trees = [i for i, (k, _) in enumerate(order) if k.startswith(layout.TREES)]
        assert len(root) == 1 and len(packed) == 2 and max(packed) < root[0]
        assert {order[i][1] for i in packed} == {"packs"}  # not the committing thread
        assert r.load_manifest(res.id).tree and len(trees) == 5 and max(trees) < root[0]  # top, src, d0-d2
        stored = {c.hash for c in r.load_manifest(res.id).unique_chunks().values()}
    with Repository.open(settings) as r:  # a fresh process state: the catalog's rows answer
        assert set(r.pack_positions(stored)) == stored

def _bf16_like(n: int) -> bytes:
    """Bytes shaped like bf16 weights: a noisy low plane, a repetitive high plane."""
    low = os.urandom(n)
    return bytes(b for pair in zip(low, b"\x3c\x3d\xbc\xbd" * (n // 4)) for b in pair)


def test_a_new_large_chunk_reaches_a_local_store_as_pieces(repo, tmp_path, monkeypatch):
    """The big-file write path hands a local store the object's pieces (no joined copy), and
    the object it writes is byte for byte the codec's `encode` of the chunk, readable back."""
    from archiver.codecs import Codec
    from archiver.stores.local import LocalStore
    calls = []
    real = LocalStore.put_parts_if_absent

    def spy(self, key, parts, policy=None):
        calls.append((key, len(parts)))
        return real(self, key, parts, policy)

    monkeypatch.setattr(LocalStore, "put_parts_if_absent", spy)
    data = _bf16_like(200_000)
    h = repo.chunk_address(data, 2)
    saved = repo.save_chunk(h, data, 2)
    want = Codec().encode(data, 2)
    assert saved.written and saved.codec == want.codec and saved.stored_size == len(want.data)
    assert calls == [(layout.chunk(h), 3)]  # header + descriptors, two planes (the empty tail left out)
    assert obj_path(tmp_path, layout.chunk(h)).read_bytes() == want.data
    assert repo.save_chunk(h, data, 2).written is False  # stored: read back and proved, not written again


def test_a_store_without_pieces_gets_the_joined_object(tmp_path):
    """A store with only put_if_absent (S3, wrappers) is handed the joined object."""
    from archiver.codecs import Codec
    from archiver.stores import open_store
    from manifests.catalog import Catalog

    class PlainStore:
        def __init__(self, inner) -> None:
            self.inner, self.url, self.puts = inner, inner.url, []

        def put_if_absent(self, key, data, policy=None):
            self.puts.append((key, type(data)))
            return self.inner.put_if_absent(key, data)

        def __getattr__(self, name):
            if name == "put_parts_if_absent":
                raise AttributeError(name)
            return getattr(self.inner, name)

    store = PlainStore(open_store(str(tmp_path / "store"), create=True))
    data = _bf16_like(200_000)
    with Repository(store, Catalog(tmp_path / "cat.db", store.url), pack_below=0) as r:
        h = r.chunk_address(data, 2)
        assert r.save_chunk(h, data, 2).written
    assert store.puts == [(layout.chunk(h), bytes)]
    assert obj_path(tmp_path, layout.chunk(h)).read_bytes() == Codec().encode(data, 2).data


@pytest.mark.integration
def test_a_commits_tree_writers_on_s3_stay_within_the_connection_pool(s3_server_url, tmp_path, home, monkeypatch,
                                                                       caplog):
    """Repository.TREE_WRITERS trees written at once on one S3 client: no more than its
    connection pool holds (S3Store.connections), so no request waits for or throws away a
    connection ('Connection pool is full, discarding connection' on stderr)."""
    import logging
    from archiver import api
    from manifests import model
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    src = tmp_path / "src"
    for d in range(120):
        (src / f"d{d:03}").mkdir(parents=True)
        for i in range(4):
            (src / f"d{d:03}" / f"f{i}").write_bytes(f"{d}/{i}".encode())
    assert Repository.TREE_WRITERS > 16
    caplog.set_level(logging.WARNING, logger="urllib3")
    done = api.archive([src], name="t", store=s3_server_url, catalog=str(tmp_path / "c.db"))
    with Repository.open(Settings.resolve(s3_server_url, tmp_path / "c.db")) as repo:
        assert len(repo.manifest_trees(repo.load_manifest(done.id))) > 100
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


@pytest.mark.packs
def test_a_small_plain_chunk_takes_encode_small_only_with_the_stock_codec_and_packs(tmp_path, monkeypatch):
    """Repository._save_fast sends a plain chunk of up to SAMPLE_BYTES to `Codec.encode_small`
    only with the stock Codec and packs on; a codec of another class (a test's, or one that
    encodes otherwise) and a repository without packs keep `encode_parts`; a chunk past
    SAMPLE_BYTES too. Each chunk reads back."""
    from archiver.codecs import SAMPLE_BYTES, Codec
    from archiver.stores import open_store
    from manifests.catalog import Catalog
    calls: list[str] = []
    real_small, real_parts = Codec.encode_small, Codec.encode_parts
    monkeypatch.setattr(Codec, "encode_small", lambda self, raw: calls.append("small") or real_small(self, raw))
    monkeypatch.setattr(Codec, "encode_parts",
                        lambda self, raw, width=0: calls.append("parts") or real_parts(self, raw, width))

    class Louder(Codec):  # another class: what it makes is its own business
        def __init__(self) -> None:
            super().__init__(level=19)

    chunks = [b"x", os.urandom(SAMPLE_BYTES), b"text " * (SAMPLE_BYTES // 5), os.urandom(SAMPLE_BYTES + 1)]
    for name, codec, pack_below, want in [("stock", None, None, ["small", "small", "small", "parts"]),
                                          ("sub", Louder(), None, ["parts"] * 4),
                                          ("nopacks", None, 0, ["parts"] * 4)]:
        store = open_store(str(tmp_path / name), create=True)
        calls.clear()
        with Repository(store, Catalog(tmp_path / f"{name}.db", store.url), codec, pack_below=pack_below) as r:
            refs = []
            for data in chunks:
                h = r.chunk_address(data, 0)
                saved = r.save_chunk(h, data, 0)
                assert saved.written
                refs.append(ChunkRef(0, len(data), h, saved.stored_size, saved.codec))
            r.flush_packs()
            assert calls == want, (name, calls)
            for ref, data in zip(refs, chunks):
                assert r.read_chunk(ref) == data


@pytest.mark.packs
def test_flush_packs_behind_is_durable_at_once_and_recorded_before_the_manifest(tmp_path, monkeypatch):
    """The packs are in the store when flush_packs_behind returns; their catalog rows go in on
    a thread of their own (through a connection of their own: reads through the catalog
    meanwhile see none of them, nor tables it creates), while the commit writes its manifest
    to the store; the commit records its manifest only once they are in."""
    import threading
    from manifests.catalog import Catalog
    settings = Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db")
    release, started = threading.Event(), threading.Event()
    real_pack, real_manifest = Catalog._record_pack, Catalog.record_manifest
    packs_when_recorded: list[set[str]] = []

    def held(self, conn, *a):  # the rows and the new tables are in, not committed
        got = real_pack(self, conn, *a)
        started.set()
        assert release.wait(60)  # bounded: the test releases it below
        return got

    def record_manifest(self, *a, **k):
        packs_when_recorded.append(self.known_packs())
        return real_manifest(self, *a, **k)
    monkeypatch.setattr(Catalog, "_record_pack", held)
    monkeypatch.setattr(Catalog, "record_manifest", record_manifest)
    with Repository.open(settings, create=True) as r:  # a fresh catalog: no pack tables yet
        datas = [os.urandom(500 + i) for i in range(20)]
        small = [save(r, d) for d in datas]
        assert r.flush_packs_behind() == 1
        [pack] = {p for p, _ in r.pack_positions([c.hash for c in small]).values()}
        assert os.path.exists(obj_path(tmp_path, layout.pack(pack)))  # durable before the rows
        assert started.wait(60)
        assert r._catalog.known_packs() == set() and r._catalog.pack_locations([small[0].hash]) == {}
        assert r.flush_packs() == 0  # nothing of its own to record: it does not wait
        m = Manifest(name="m", entries=(file_entry("a", datas, small),))

        def stored(mid: str) -> None:  # the manifest is in the store, the rows not yet in the catalog
            assert r._catalog.known_packs() == set() and not r.is_recorded(mid)
            release.set()
        done = r.commit_manifest(m, details={"note": "x"}, on_stored=stored)
        assert packs_when_recorded == [{pack}] and r.is_recorded(done.id)
        assert {h for h, *_ in r._catalog.pack_entries(pack)} == {c.hash for c in small}


@pytest.mark.packs
def test_flush_packs_behind_ctrl_c_during_the_commits_wait_leaves_the_rows_for_close(tmp_path, monkeypatch):
    """Ctrl-C while the commit waits for the rows recorded behind: the thread is not forgotten,
    so close still waits for it (it never runs on past the catalog's close) and its rows land."""
    import threading
    from concurrent.futures import Future
    from manifests.catalog import Catalog
    settings = Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db")
    release, started = threading.Event(), threading.Event()
    real_pack, real_exception = Catalog._record_pack, Future.exception
    interrupted: list[bool] = []

    def held(self, conn, *a):
        started.set()
        assert release.wait(60)  # bounded: the test releases it below
        return real_pack(self, conn, *a)

    def exception(self, timeout=None):  # the signal arrives during the first wait
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real_exception(self, timeout)
    monkeypatch.setattr(Catalog, "_record_pack", held)
    monkeypatch.setattr(Future, "exception", exception)
    with Repository.open(settings, create=True) as r:
        data = os.urandom(600)
        ref = save(r, data)
        assert r.flush_packs_behind() == 1 and started.wait(60)
        rows = r._pack_rows
        m = Manifest(name="m", entries=(file_entry("a", [data], [ref]),))
        with pytest.raises(KeyboardInterrupt):
            r.commit_manifest(m, details={"note": "x"})
        assert interrupted and r._pack_rows is rows and not rows.done()  # still pending: close waits for it
        release.set()
    assert rows.done() and rows.exception() is None  # close waited for the thread
    with Repository.open(settings) as r:
        assert r._catalog.known_packs() and not r.is_recorded(m.id)


@pytest.mark.packs
def test_flush_packs_behind_without_a_thread_to_be_had_leaves_nothing_to_wait_for(tmp_path, monkeypatch):
    """No thread could be started for the rows (RuntimeError: can't start new thread): the
    error is raised, and neither the commit nor close waits for rows nobody is recording."""
    import threading
    settings = Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db")
    real_start = threading.Thread.start

    def start(self):
        if self.name == "pack-rows":
            raise RuntimeError("can't start new thread")
        return real_start(self)
    with Repository.open(settings, create=True) as r:
        data = os.urandom(650)
        ref = save(r, data)
        with monkeypatch.context() as m:
            m.setattr(threading.Thread, "start", start)
            with pytest.raises(RuntimeError, match="start new thread"):
                r.flush_packs_behind()
        assert r._pack_rows is None
        done = r.commit_manifest(Manifest(name="m", entries=(file_entry("a", [data], [ref]),)), details={"n": 1})
        assert r.is_recorded(done.id)


@pytest.mark.packs
def test_flush_packs_behind_hands_its_error_to_the_commit_and_close_waits(tmp_path, monkeypatch):
    """A failure recording the rows behind is raised by the commit before it records its
    manifest (the store holds the manifest: a catalog sync records it), and by a flush_packs
    that has packs of its own to record; close waits for the thread and, the rows being a
    cache of the store's indexes (a rebuild records them), does not raise it."""
    from manifests.catalog import Catalog
    from manifests.errors import CatalogError
    settings = Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db")

    def broken(self, packs):
        raise CatalogError("catalog: disk full, nothing of this write was recorded")
    monkeypatch.setattr(Catalog, "record_packs_apart", broken)
    with Repository.open(settings, create=True) as r:
        data = os.urandom(700)
        ref = save(r, data)
        assert r.flush_packs_behind() == 1
        m = Manifest(name="m", entries=(file_entry("a", [data], [ref]),))
        with pytest.raises(Exception, match="disk full"):
            r.commit_manifest(m, details={"note": "x"})
        assert not r.is_recorded(m.id) and os.path.exists(obj_path(tmp_path, layout.manifest(m.id)))
        save(r, os.urandom(800))
        assert r.flush_packs_behind() == 1
        save(r, os.urandom(850))
        with pytest.raises(Exception, match="disk full"):
            r.flush_packs()
        save(r, os.urandom(900))
        assert r.flush_packs_behind() == 1
    with Repository.open(settings) as r:  # closed without raising; the store holds every pack
        assert len(list(r._store.list(layout.PACKS))) == 4 and r._catalog.known_packs() == set()


def test_put_trees_made_writes_a_batch_and_heals_a_damaged_tree_already_there(repo, tmp_path):
    """`put_trees_made` (early trees, a batch at a time): new trees written with their bytes,
    one already stored intact left as it is, one stored damaged replaced by the proved bytes,
    as `put_tree_made` does tree by tree."""
    from manifests.model import manifest_id
    trees = [(manifest_id(b), b) for b in (b'{"tree":%d}' % i for i in range(20))]
    (h_ok, data_ok), (h_bad, data_bad) = trees[0], trees[1]
    repo.put_tree_made(h_ok, data_ok)
    repo.put_tree_made(h_bad, data_bad)
    bad = obj_path(tmp_path, layout.tree(h_bad))
    ok_ino = obj_path(tmp_path, layout.tree(h_ok)).stat().st_ino
    bad.chmod(0o644)
    bad.write_bytes(b"damaged")
    repo.put_trees_made(trees)
    assert all(obj_path(tmp_path, layout.tree(h)).read_bytes() == data for h, data in trees)
    assert obj_path(tmp_path, layout.tree(h_ok)).stat().st_ino == ok_ino
