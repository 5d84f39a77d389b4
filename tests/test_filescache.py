"""Issue 15, item 3: the files cache. An unchanged file (same path, size, mtime, ctime,
inode, device) is not read again; its entry is reused from the earlier committed manifest
once every chunk is proved by save_chunk's rule (read back and re-hashed, or trusted within
a deep-verify window). Any change, a damaged chunk, `reread`, or a cache that points at the
wrong entry means the file is read."""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import blake3

from archiver import layout, pipeline
from archiver.filescache import cache_path
from archiver.pipeline import archive as pipeline_archive
from archiver.repository import Repository
from archiver.stores import open_store
from manifests.catalog import Catalog
from tests.helpers import RawStore, make_checkpoint, run_cli


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)


@pytest.fixture
def repo(tmp_path):
    store = open_store(str(tmp_path / "store"), create=True)
    r = Repository(store, Catalog(tmp_path / "cat.db", store.url))
    yield r
    r.close()


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every source file the pipeline opens for reading, in order."""
    seen: list[str] = []
    real = pipeline.open_settled  # every file the pipeline reads is opened through it, once

    def counting(src, *more):
        seen.append(src.path)
        return real(src, *more)
    monkeypatch.setattr(pipeline, "open_settled", counting)
    return seen


@pytest.fixture
def chunk_reads(monkeypatch) -> list[str]:
    """Every chunk read back from the store (proofs and verified reads)."""
    seen: list[str] = []
    real = Repository.try_read_chunk

    def counting(self, ref):
        seen.append(ref.hash)
        return real(self, ref)
    monkeypatch.setattr(Repository, "try_read_chunk", counting)
    return seen


def files_of(repo: Repository, mid: str) -> dict:
    return {e.path: e for e in repo.load_manifest(mid).files}


def test_unchanged_files_are_not_read_and_their_entries_are_reused(repo, ckpt, reads, chunk_reads):
    first = pipeline_archive(repo, [ckpt], name="m")
    assert first.files_reused == 0 and len(reads) == first.files == 4
    reads.clear()
    chunk_reads.clear()
    again = pipeline_archive(repo, [ckpt], name="m")
    assert reads == [] and again.files_reused == 4
    assert files_of(repo, again.id) == files_of(repo, first.id)  # the same entries, byte for byte
    uniq = repo.load_manifest(first.id).unique_chunks()
    assert sorted(chunk_reads) == sorted(uniq)  # every chunk proved once, without the source
    assert again.new_chunks == 0 and again.bytes_in == first.bytes_in


def test_reread_reads_every_file(repo, ckpt, reads):
    first = pipeline_archive(repo, [ckpt], name="m")
    reads.clear()
    again = pipeline_archive(repo, [ckpt], name="m", reread=True)
    assert again.files_reused == 0 and len(reads) == 4
    assert files_of(repo, again.id) == files_of(repo, first.id)


def test_a_rewrite_that_keeps_size_and_mtime_is_read_again(repo, ckpt, reads):
    """ctime moves on any write, and no caller can set it back."""
    pipeline_archive(repo, [ckpt], name="m")
    cfg = ckpt / "config.json"
    st = cfg.stat()
    data = cfg.read_bytes()
    cfg.write_bytes(data.upper() if data.upper() != data else data.lower())
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cfg.stat().st_size == st.st_size and cfg.stat().st_mtime_ns == st.st_mtime_ns
    reads.clear()
    again = pipeline_archive(repo, [ckpt], name="m")
    assert reads == ["ckpt/config.json"] and again.files_reused == 3
    e = files_of(repo, again.id)["ckpt/config.json"]
    assert repo.read_chunk(e.chunks[0]) == cfg.read_bytes()


def test_a_replaced_file_is_read_again(repo, ckpt, reads):
    pipeline_archive(repo, [ckpt], name="m")
    vocab = ckpt / "tokenizer" / "vocab.txt"
    new = vocab.with_name("new")
    new.write_bytes(vocab.read_bytes())
    st = vocab.stat()
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, vocab)  # same path, size and mtime; another inode
    reads.clear()
    assert pipeline_archive(repo, [ckpt], name="m").files_reused == 3
    assert reads == ["ckpt/tokenizer/vocab.txt"]


def test_a_damaged_chunk_is_not_reused_the_file_is_read_and_the_chunk_repaired(repo, ckpt, reads, tmp_path):
    first = pipeline_archive(repo, [ckpt], name="m")
    e = files_of(repo, first.id)["ckpt/model.safetensors"]
    c = max(e.chunks, key=lambda c: c.stored_size)
    raw = RawStore(str(tmp_path / "store"))
    raw.mutate(layout.chunk(c.hash), lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    reads.clear()
    again = pipeline_archive(repo, [ckpt], name="m")
    assert reads == ["ckpt/model.safetensors"] and again.files_reused == 3
    assert again.repaired_chunks == 1
    assert files_of(repo, again.id) == files_of(repo, first.id)
    repo.read_chunk(c)  # intact again


def test_missing_chunk_is_not_reused(repo, ckpt, reads, tmp_path):
    first = pipeline_archive(repo, [ckpt], name="m")
    e = files_of(repo, first.id)["ckpt/tokenizer/vocab.txt"]
    RawStore(str(tmp_path / "store")).delete(layout.chunk(e.chunks[0].hash))
    reads.clear()
    again = pipeline_archive(repo, [ckpt], name="m")
    assert reads == ["ckpt/tokenizer/vocab.txt"] and again.new_chunks == 1
    repo.read_chunk(e.chunks[0])


def test_trust_window_reuses_recently_verified_chunks_without_reading_them(repo, ckpt, reads, chunk_reads):
    first = pipeline_archive(repo, [ckpt], name="m")
    hashes = list(repo.load_manifest(first.id).unique_chunks())
    chunk_reads.clear()
    pipeline_archive(repo, [ckpt], name="m", trust_verified_within=3600)
    assert sorted(chunk_reads) == sorted(hashes)  # never deep-verified: each one is read and proved
    repo.record_chunk_checks((h, True) for h in hashes)  # what verify --deep records
    chunk_reads.clear()
    reads.clear()
    res = pipeline_archive(repo, [ckpt], name="m", trust_verified_within=3600)
    assert chunk_reads == [] and reads == [] and res.files_reused == 4
    repo.record_chunk_checks([(hashes[0], False)])  # last found bad: proved again
    chunk_reads.clear()
    pipeline_archive(repo, [ckpt], name="m", trust_verified_within=3600)
    assert chunk_reads == [hashes[0]]


def test_a_cache_row_pointing_at_another_entry_is_not_trusted(repo, ckpt, reads):
    pipeline_archive(repo, [ckpt], name="m")
    db = sqlite3.connect(cache_path(repo.catalog_path))
    with db:  # config.json's row now names vocab.txt's entry (other size): refused, the file is read
        db.execute("UPDATE files SET entry_path='ckpt/tokenizer/vocab.txt' WHERE entry_path='ckpt/config.json'")
        db.execute("UPDATE files SET manifest=? WHERE entry_path='ckpt/empty.txt'", ("0" * 64,))
    db.close()
    reads.clear()
    again = pipeline_archive(repo, [ckpt], name="m")
    assert sorted(reads) == ["ckpt/config.json", "ckpt/empty.txt"] and again.files_reused == 2
    assert files_of(repo, again.id)["ckpt/config.json"].size == (ckpt / "config.json").stat().st_size


def test_an_unreadable_cache_only_turns_the_cache_off(repo, ckpt, reads):
    cache_path(repo.catalog_path).write_bytes(b"not a database" * 100)
    first = pipeline_archive(repo, [ckpt], name="m")
    reads.clear()
    again = pipeline_archive(repo, [ckpt], name="m")
    assert len(reads) == 4 and again.files_reused == 0 and again.id != first.id


def test_a_different_chunk_policy_does_not_reuse(repo, ckpt, reads):
    from archiver.chunking import ChunkPolicy
    pipeline_archive(repo, [ckpt], name="m")
    reads.clear()
    pipeline_archive(repo, [ckpt], name="m", policy=ChunkPolicy(max_chunk=1 << 20))
    assert len(reads) == 4


def test_cli_reread_and_json_count(tmp_path, ckpt, home):
    store = str(tmp_path / "clistore")
    r = run_cli("--store", store, "archive", str(ckpt), "--name", "m", "--json")
    assert r.code == 0 and r.json()["files_reused"] == 0
    r = run_cli("--store", store, "archive", str(ckpt), "--name", "m", "--json")
    assert r.code == 0 and r.json()["files_reused"] == 4
    r = run_cli("--store", store, "archive", str(ckpt), "--name", "m", "--reread", "--json")
    assert r.code == 0 and r.json()["files_reused"] == 0
    assert run_cli("--store", store, "verify", "m", "--deep").code == 0


def test_a_chunk_shared_at_different_offsets_is_proved_once_and_both_files_reused(repo, tmp_path, reads,
                                                                                 chunk_reads):
    from tests.fixtures import make_safetensors, random_tensor_bytes
    src = tmp_path / "two"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    tensors = {"w": ("BF16", [1024, 1024], random_tensor_bytes("BF16", 1024 * 1024, seed=3))}
    make_safetensors(src / "a" / "model.safetensors", tensors, metadata={"format": "pt"})
    make_safetensors(src / "b" / "model.safetensors", tensors, metadata={"format": "pt", "note": "x" * 300})
    first = pipeline_archive(repo, [src], name="two")
    fa, fb = (files_of(repo, first.id)[f"two/{d}/model.safetensors"] for d in "ab")
    shared = {c.hash for c in fa.chunks} & {c.hash for c in fb.chunks}
    assert shared and any(c.offset != d.offset for c in fa.chunks for d in fb.chunks if c.hash == d.hash in shared)
    reads.clear()
    chunk_reads.clear()
    again = pipeline_archive(repo, [src], name="two")
    assert reads == [] and again.files_reused == 2
    assert sorted(chunk_reads) == sorted(repo.load_manifest(first.id).unique_chunks())  # each hash once


class CountingStore:
    """A store that counts every call by method name (what a re-archive costs in requests)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.calls: dict[str, int] = {}
        self.listed: list[str] = []

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*a, **kw):
            self.calls[name] = self.calls.get(name, 0) + 1
            if name == "list":
                self.listed.append(a[0] if a else kw.get("prefix", ""))
            return attr(*a, **kw)
        return counted


def _many_files(root: Path, n: int) -> Path:
    for i in range(n):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"f{i:03d}.bin").write_bytes(os.urandom(1000 + 37 * i))
    return root


def _trusting_rearchive_calls(tmp_path: Path, n: int, url: str | None = None) -> tuple[dict, int, int]:
    """Archive `n` small files, record them deep-verified, re-archive trusting that: the
    store calls of that re-archive (and "listed": the prefixes LISTed), its files reused,
    and the number of chunks."""
    src = _many_files(tmp_path / "src" / "tree", n)
    store = CountingStore(open_store(url or str(tmp_path / "store"), create=True))
    repo = Repository(store, Catalog(tmp_path / "cat.db", store.url))
    try:
        first = pipeline_archive(repo, [src], name="m")
        hashes = list(repo.load_manifest(first.id).unique_chunks())
        repo.record_chunk_checks((h, True) for h in hashes)  # what verify --deep records
        store.calls.clear()
        store.listed.clear()
        again = pipeline_archive(repo, [src], name="m", trust_verified_within=3600)
        return dict(store.calls, listed=sorted(store.listed)), again.files_reused, len(hashes)
    finally:
        repo.close()


def _chunk_requests(calls: dict[str, int]) -> int:
    """Calls that read or look at one object: GET, ranged GET, HEAD."""
    return sum(n for name, n in calls.items() if name in ("get", "get_range", "get_versioned", "stat",
                                                          "object_state"))


def test_trust_window_reuse_reads_no_chunk_and_heads_none(tmp_path, reads, store_url):
    calls, reused, nchunks = _trusting_rearchive_calls(tmp_path, 40, store_url)
    assert len(reads) == 40  # the first archive's reads only
    assert reused == 40 and nchunks >= 40
    # one LIST for the chunks' sizes (and the commit's one of manifests/); no GET or HEAD of a chunk
    assert calls["listed"] == ["chunks/", "manifests/"]
    assert _chunk_requests(calls) == 0, calls


@pytest.mark.packs
def test_trust_window_reuse_of_packed_chunks_reads_no_chunk(tmp_path, reads, chunk_reads):
    calls, reused, nchunks = _trusting_rearchive_calls(tmp_path, 40)
    assert reused == 40 and nchunks >= 40
    # one LIST of packs and one of their indexes for the sizes; no ranged GET, no HEAD per chunk
    assert calls["listed"] == ["manifests/", "packindex/", "packs/"]
    assert _chunk_requests(calls) == 0 and chunk_reads == [], calls


def test_trust_window_still_proves_a_chunk_whose_size_changed(repo, ckpt, chunk_reads, tmp_path):
    first = pipeline_archive(repo, [ckpt], name="m")
    hashes = list(repo.load_manifest(first.id).unique_chunks())
    repo.record_chunk_checks((h, True) for h in hashes)
    e = files_of(repo, first.id)["ckpt/model.safetensors"]
    c = max(e.chunks, key=lambda c: c.stored_size)
    RawStore(str(tmp_path / "store")).mutate(layout.chunk(c.hash), lambda b: b + b"x")  # verified, since grown
    chunk_reads.clear()
    again = pipeline_archive(repo, [ckpt], name="m", trust_verified_within=3600)
    assert chunk_reads == [c.hash]  # the only one not trusted: read, found damaged, repaired from the source
    assert again.repaired_chunks == 1 and again.files_reused == 3
    repo.read_chunk(c)


def test_the_cache_compares_the_scans_stat_without_a_second_stat(repo, ckpt, reads, monkeypatch):
    import types
    from archiver import filescache
    pipeline_archive(repo, [ckpt], name="m")

    def no_stat(*a, **kw):
        raise AssertionError("the files cache stat a file the scan had already stat")
    monkeypatch.setattr(filescache, "os", types.SimpleNamespace(stat=no_stat))
    reads.clear()
    again = pipeline_archive(repo, [ckpt], name="m")
    assert reads == [] and again.files_reused == 4


def test_trust_window_a_changed_file_asks_the_store_about_none_of_its_unchanged_chunks(tmp_path, reads,
                                                                                      chunk_reads):
    """A changed file is read again; with a trust window the chunks of its previous entry
    that a deep verify proved are trusted in the same bulk check, so its unchanged chunks
    cost no HEAD or GET each, and only its new chunk is written."""
    from archiver.chunking import ChunkPolicy
    src = tmp_path / "src" / "big"
    src.mkdir(parents=True)
    data = bytearray(os.urandom(8 << 20))
    (src / "weights.bin").write_bytes(bytes(data))
    store = CountingStore(open_store(str(tmp_path / "store"), create=True))
    repo = Repository(store, Catalog(tmp_path / "cat.db", store.url))
    policy = ChunkPolicy(max_chunk=1 << 20, cdc_min=128 << 10, cdc_avg=512 << 10, cdc_max=1 << 20)  # >= 8 chunks
    try:
        first = pipeline_archive(repo, [src], name="m", policy=policy)
        hashes = list(repo.load_manifest(first.id).unique_chunks())
        assert len(hashes) >= 4
        repo.record_chunk_checks((h, True) for h in hashes)
        data[100:104] = b"\xff\x00\xff\x00" if data[100:104] != b"\xff\x00\xff\x00" else b"\x00\xff\x00\xff"
        (src / "weights.bin").write_bytes(bytes(data))
        store.calls.clear()
        reads.clear()
        chunk_reads.clear()
        again = pipeline_archive(repo, [src], name="m", policy=policy, trust_verified_within=3600)
        assert reads == ["big/weights.bin"] and again.files_reused == 0
        assert again.new_chunks >= 1 and again.new_chunks < len(hashes)  # the changed stretch only
        assert chunk_reads == [] and _chunk_requests(store.calls) == 0, store.calls
        # without a trust window each unchanged chunk is read back and compared with the source
        data[200:204] = b"abcd" if data[200:204] != b"abcd" else b"dcba"
        (src / "weights.bin").write_bytes(bytes(data))
        store.calls.clear()
        third = pipeline_archive(repo, [src], name="m", policy=policy)
        assert _chunk_requests(store.calls) >= len(hashes) - 2
        assert repo.load_manifest(third.id).files[0].size == len(data)
    finally:
        repo.close()


def test_an_unchanged_rearchive_through_trees_parses_no_tree_again(repo, tmp_path, reads, monkeypatch):
    """Manifest v3: the previous manifest's trees were proved when it was committed, so the
    files cache reads its entries without parsing a tree again (archiver.treereuse), and the
    reused entries are the recorded ones, not copies; one changed file is read, the rest reused."""
    from manifests import model
    from archiver import treereuse
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    ck = make_checkpoint(tmp_path / "src" / "ck", layers=2, dim=64)
    (ck / "sub").mkdir()
    for i in range(4):
        (ck / "sub" / f"s{i}.txt").write_bytes(b"x" * (i + 1))
    first = pipeline_archive(repo, [ck], name="m")
    assert repo.load_root(first.id).tree  # through trees
    parsed: list[str] = []
    real = model.parse_tree
    counted = lambda data, h, where: parsed.append(where) or real(data, h, where)  # noqa: E731
    monkeypatch.setattr(model, "parse_tree", counted)
    monkeypatch.setattr(treereuse, "parse_tree", counted)
    reads.clear()
    again = pipeline_archive(repo, [ck], name="m")
    assert parsed == [] and reads == [] and again.files_reused == first.files
    assert files_of(repo, again.id) == files_of(repo, first.id)
    (ck / "sub" / "s2.txt").write_bytes(b"changed")
    reads.clear()
    third = pipeline_archive(repo, [ck], name="m")
    assert reads == ["ck/sub/s2.txt"] and third.files_reused == first.files - 1
    assert files_of(repo, third.id)["ck/sub/s2.txt"].size == 7


def test_rows_of_many_paths_are_read_by_one_range_and_only_theirs(tmp_path):
    from archiver.filescache import FileStat, FilesCache, Row, _common_dir
    cache = FilesCache(tmp_path / "c.files")
    try:
        wanted = [f"/data/t/d{i % 7}/f{i:04}" for i in range(600)]
        others = ["/data/t2/f", "/data/tt/f", "/data/t", "/data/s/f", "/data/t/d1/not-asked"]
        cache.put([(p, Row(FileStat(1, i, 2, 3, 4), "r", "m", p)) for i, p in enumerate(wanted + others)], 1.0)
        got = cache.rows(wanted)
        assert sorted(got) == sorted(wanted) and got[wanted[5]] == Row(FileStat(1, 5, 2, 3, 4), "r", "m", wanted[5])
        assert sorted(cache.rows(wanted[:3] + others[:2])) == sorted(wanted[:3] + others[:2])  # few: by key
    finally:
        cache.close()
    assert _common_dir(["/data/t/a/x", "/data/t/b/y"]) == "/data/t"
    assert _common_dir(["/data/t/x1", "/data/t/x2"]) == "/data/t"
    assert _common_dir(["/data/t1/x", "/data/t2/y"]) == "/data"
    assert _common_dir(["/a/x", "/b/y"]) is None and _common_dir(["/x", "/y"]) is None


def test_an_unchanged_rearchive_commits_without_serialising_its_trees_again(repo, tmp_path, monkeypatch):
    """The commit keeps the trees the files cache read for every directory whose entries are
    all reused; a directory with one changed file, and those above it, get new trees; the
    manifests read back as the entries given (the other directories' trees are the same)."""
    from manifests import model
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    ck = make_checkpoint(tmp_path / "src" / "ck", layers=2, dim=64)
    for sub in ("a", "b"):
        (ck / sub).mkdir()
        for i in range(3):
            (ck / sub / f"s{i}.txt").write_bytes(sub.encode() * (i + 1))
    first = pipeline_archive(repo, [ck], name="m")
    serialised: list[list[str]] = []
    real = model.tree_bytes
    monkeypatch.setattr(model, "tree_bytes", lambda es, hs: serialised.append([e.path for e in es]) or real(es, hs))
    again = pipeline_archive(repo, [ck], name="m")
    assert [p for p in serialised if p] == [] and again.files_reused == first.files  # [] is an empty directory's
    assert repo.load_root(again.id).tree == repo.load_root(first.id).tree
    (ck / "a" / "s1.txt").write_bytes(b"changed")
    serialised.clear()
    third = pipeline_archive(repo, [ck], name="m")
    serialised = [p for p in serialised if p]
    assert sorted(p[0].rsplit("/", 1)[0] if p[0].count("/") else "" for p in serialised) == ["", "ck", "ck/a"]
    monkeypatch.setattr(model, "tree_bytes", real)
    m = repo.load_manifest(third.id)
    assert m.tree != repo.load_root(first.id).tree
    assert model.tree_objects(m.entries)[0] == m.tree  # the trees are exactly the entries' own
    assert model.tree_objects(m.entries)[2]["ck/b"] == model.tree_objects(repo.load_manifest(first.id).entries)[2]["ck/b"]


def test_commit_rows_laid_out_for_the_statement_are_the_rows_put_writes(repo, tmp_path):
    """FilesRun.commit hands FilesCache.put_values its rows as the statement takes them (no
    Row per file): the cache then holds exactly what `put` of Rows writes, and an update
    replaces a row."""
    from archiver.filescache import FileStat, FilesCache, Row
    a, b = FilesCache(tmp_path / "a.files"), FilesCache(tmp_path / "b.files")
    try:
        rows = [(f"/d/f{i}", Row(FileStat(1, i, 2, 3, 4 + i), "r", "m", f"f{i}")) for i in range(50)]
        a.put(rows, 5.0)
        b.put_values([(p, r.stat.dev, r.stat.ino, r.stat.size, r.stat.mtime_ns, r.stat.ctime_ns, r.reader, r.manifest,
                       r.entry_path, 5.0) for p, r in rows], 5.0)
        paths = [p for p, _ in rows]
        assert a.rows(paths) == b.rows(paths) == dict(rows)
        b.put_values([("/d/f3", 9, 9, 9, 9, 9, "r2", "m2", "g", 6.0)], 6.0)
        assert b.rows(["/d/f3"]) == {"/d/f3": Row(FileStat(9, 9, 9, 9, 9), "r2", "m2", "g")}
    finally:
        a.close()
        b.close()
    ck = make_checkpoint(tmp_path / "ck", layers=2, dim=64)
    first = pipeline_archive(repo, [ck], name="m")
    again = pipeline_archive(repo, [ck], name="m")
    assert again.files_reused == first.files  # the rows the commit wrote are hits

def _packed_rearchive(tmp_path: Path, n: int, damage=None) -> tuple[Repository, CountingStore, Path, object, object]:
    """Archive `n` small files into packs, let `damage(repo, first)` harm the store, then
    re-archive with the default read-back proof; the store's calls count only the re-archive."""
    src = _many_files(tmp_path / "src" / "tree", n)
    store = CountingStore(open_store(str(tmp_path / "store"), create=True))
    repo = Repository(store, Catalog(tmp_path / "cat.db", store.url))
    first = pipeline_archive(repo, [src], name="m")
    if damage is not None:
        damage(repo, first)
    store.calls.clear()
    store.listed.clear()
    return repo, store, src, first, pipeline_archive(repo, [src], name="m")


@pytest.mark.packs
def test_read_back_proof_reads_each_pack_once_and_hashes_every_chunk(tmp_path, reads, monkeypatch):
    """The default proof of reused packed chunks: one catalog lookup places them, each pack's
    needed ranges are read with one request per span (here one: they lie together), and
    every chunk is decoded and hashed against its address, each once."""
    hashed: list[str] = []
    real = Repository._decode_checked
    monkeypatch.setattr(Repository, "_decode_checked",
                        lambda self, obj, h, length: hashed.append(h) or real(self, obj, h, length))
    located: list[int] = []
    real_loc = Repository._pack_locations_many
    monkeypatch.setattr(Repository, "_pack_locations_many",
                        lambda self, hs, *rest: located.append(len(list(hs) if not isinstance(hs, (set, dict)) else hs))
                        or real_loc(self, hs, *rest))
    n = 60
    reads.clear()
    hashed.clear()
    repo, store, _src, first, again = _packed_rearchive(tmp_path, n, lambda *_: (hashed.clear(), located.clear(),
                                                                                reads.clear()))
    try:
        uniq = repo.load_manifest(first.id).unique_chunks()
        packs_used = {repo.pack_positions([h])[h][0] for h in uniq}
        assert reads == [] and again.files_reused == n
        assert sorted(hashed) == sorted(uniq)  # every reused chunk re-hashed, each once
        assert store.calls.get("get_range", 0) == len(packs_used) and store.calls.get("get", 0) <= 2 + 60
        assert located and located[0] == len(uniq)  # one lookup for all of them
        assert files_of(repo, again.id) == files_of(repo, first.id)
    finally:
        repo.close()


@pytest.mark.packs
def test_a_damaged_chunk_in_a_pack_makes_only_its_file_read_again(tmp_path, reads):
    """One flipped byte inside a pack: the read-back proof of that pack's span fails for that
    chunk alone; its file is read from the source (and its chunk stored again), every other
    file of the same pack is still reused, and the new version restores intact."""
    victim: list = []

    def damage(repo: Repository, first) -> None:
        e = files_of(repo, first.id)["tree/d1/f004.bin"]
        c = e.chunks[0]
        pack, offset = repo.pack_positions([c.hash])[c.hash]
        RawStore(str(tmp_path / "store")).mutate(
            layout.pack(pack), lambda b: b[:offset + c.stored_size - 1] + bytes([b[offset + c.stored_size - 1] ^ 1])
            + b[offset + c.stored_size:])
        victim.append(c)
        reads.clear()

    repo, _store, src, first, again = _packed_rearchive(tmp_path, 30, damage)
    try:
        assert reads == ["tree/d1/f004.bin"] and again.files_reused == 29 and again.repaired_chunks == 1
        got = files_of(repo, again.id)["tree/d1/f004.bin"]
        assert got == files_of(repo, first.id)["tree/d1/f004.bin"]
        assert repo.read_chunk(victim[0]) == (src / "d1" / "f004.bin").read_bytes()  # a good copy is stored
    finally:
        repo.close()


@pytest.mark.packs
def test_a_missing_pack_makes_its_files_read_again(tmp_path, reads):
    def damage(repo: Repository, first) -> None:
        uniq = repo.load_manifest(first.id).unique_chunks()
        pack = repo.pack_positions(list(uniq))[next(iter(uniq))][0]
        RawStore(str(tmp_path / "store")).delete(layout.pack(pack))
        reads.clear()

    repo, _store, _src, first, again = _packed_rearchive(tmp_path, 12, damage)
    try:
        assert sorted(reads) == sorted(files_of(repo, first.id)) and again.files_reused == 0
        for e in files_of(repo, again.id).values():
            assert b"".join(repo.read_chunk(c) for c in e.chunks) == (tmp_path / "src" / e.path).read_bytes()
    finally:
        repo.close()


@pytest.fixture
def puts(monkeypatch) -> list[tuple[list[str], set[str], str]]:
    """Every write of the files cache (FilesCache.put_values, which `put` also goes through):
    (paths written, manifests moved, the manifest moved to)."""
    from archiver.filescache import FilesCache
    seen: list[tuple[list[str], set[str], str]] = []
    real = FilesCache.put_values

    def counting(self, values, now, moved=(), to=""):
        values = list(values)
        seen.append(([v[0] for v in values], set(moved), to))
        return real(self, values, now, moved, to)  # as given: a commit's mapping of kept rows
    monkeypatch.setattr(FilesCache, "put_values", counting)
    return seen


def test_an_unchanged_rearchive_writes_no_cache_row_and_the_next_still_reuses(repo, tmp_path, reads, puts):
    """A reused file's row keeps naming its manifest; one `moved` row says the new manifest
    holds those entries now. Every later run still reuses every unchanged file; a changed
    file's row alone is written; and the moved rows stay one hop, whatever the runs."""
    src = _many_files(tmp_path / "src" / "tree", 12)
    first = pipeline_archive(repo, [src], name="m")
    assert len(puts[-1][0]) == 12
    ids = [first.id]
    for _ in range(3):
        reads.clear()
        again = pipeline_archive(repo, [src], name="m")
        assert reads == [] and again.files_reused == 12
        assert puts[-1][0] == [] and puts[-1][2] == again.id  # no row rewritten, their manifest moved
        ids.append(again.id)
    (src / "d1" / "f004.bin").write_bytes(b"changed")
    reads.clear()
    fifth = pipeline_archive(repo, [src], name="m")
    assert reads == ["tree/d1/f004.bin"] and fifth.files_reused == 11
    assert [os.path.basename(p) for p in puts[-1][0]] == ["f004.bin"]
    reads.clear()
    sixth = pipeline_archive(repo, [src], name="m")
    assert sixth.files_reused == 12 and reads == [] and puts[-1][0] == []
    db = sqlite3.connect(cache_path(repo.catalog_path))
    try:
        moved = dict(db.execute("SELECT old, new FROM moved"))
        assert set(moved.values()) == {sixth.id}  # one hop, to the newest
        assert set(moved) == set(ids) | {fifth.id}
    finally:
        db.close()


def test_old_rows_are_rewritten_and_a_partial_run_keeps_the_rest_reusable(repo, tmp_path, reads, puts, monkeypatch):
    """Rows older than REFRESH_S are written again (their `used` renewed). A run over part of
    the tree under another name (its entries at other paths) leaves the rest of the rows
    reusable: an entry its manifest moved away from is found in the row's own manifest."""
    from archiver import filescache
    src = _many_files(tmp_path / "src" / "tree", 9)
    pipeline_archive(repo, [src], name="all")
    monkeypatch.setattr(filescache, "REFRESH_S", -1.0)
    assert pipeline_archive(repo, [src], name="all").files_reused == 9 and len(puts[-1][0]) == 9
    monkeypatch.setattr(filescache, "REFRESH_S", 86400.0)
    part = pipeline_archive(repo, [src / "d0"], name="part")  # entries at d0/..., not tree/d0/...
    assert part.files_reused == 3 and len(puts[-1][0]) == 3
    reads.clear()
    again = pipeline_archive(repo, [src], name="all")
    assert reads == [] and again.files_reused == 9
    reads.clear()
    assert pipeline_archive(repo, [src / "d0"], name="part").files_reused == 3 and reads == []
    assert pipeline_archive(repo, [src], name="all").files_reused == 9 and reads == []


def test_a_moved_manifest_never_lends_a_row_another_sources_entry_at_the_same_path(repo, tmp_path, reads):
    """A `moved` row says a manifest's reused entries are in the new one at the same paths;
    it must not make a row of a file the new run did not see take whatever entry the new
    manifest holds at that path. Sources are named by their basename, so /p/d2 and /q/d2
    both archive as d2/...: with the same size and mtime, /p/d2/g must still be read, never
    recorded with /q/d2/g's bytes."""
    p, q = tmp_path / "p", tmp_path / "q"
    (p / "d1").mkdir(parents=True)
    (p / "d2").mkdir()
    (q / "d2").mkdir(parents=True)
    (p / "d1" / "f.bin").write_bytes(b"kept " * 50)
    (p / "d2" / "g.bin").write_bytes(b"P" * 300)
    (q / "d2" / "g.bin").write_bytes(b"Q" * 300)  # same size, same mtime, other bytes
    st = os.stat(p / "d2" / "g.bin")
    os.utime(q / "d2" / "g.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    pipeline_archive(repo, [p / "d1", p / "d2"], name="m")
    mixed = pipeline_archive(repo, [p / "d1", q / "d2"], name="m")  # reuses d1/f.bin: moves the first manifest
    assert mixed.files_reused == 1
    reads.clear()
    third = pipeline_archive(repo, [p / "d1", p / "d2"], name="m")
    assert third.files_reused == 2 and reads == []  # each from the manifest that recorded it
    e = files_of(repo, third.id)["d2/g.bin"]
    assert e.blake3 == blake3.blake3(b"P" * 300).hexdigest(), "recorded another source's bytes for d2/g.bin"


def test_a_row_no_run_sees_keeps_its_manifest_from_moving_for_one_run_only(repo, tmp_path, reads, puts):
    """A deleted file's row (no run sees it again until it expires) still looks its manifest
    up: that manifest does not move, so the run writes the rows it kept, naming its own
    manifest; the run after moves that one again and writes none. Every run reuses all."""
    src = _many_files(tmp_path / "src" / "tree", 9)
    pipeline_archive(repo, [src], name="m")
    assert pipeline_archive(repo, [src], name="m").files_reused == 9 and puts[-1][0] == []
    (src / "d0" / "f000.bin").unlink()
    third = pipeline_archive(repo, [src], name="m")
    assert third.files_reused == 8 and len(puts[-1][0]) == 0  # spy: the kept rows are passed as `moved`
    db = sqlite3.connect(cache_path(repo.catalog_path))
    try:
        naming = dict(db.execute("SELECT manifest, count(*) FROM files GROUP BY manifest"))
        assert naming.get(third.id) == 8 and sum(naming.values()) == 9  # the deleted file's row stays
    finally:
        db.close()
    reads.clear()
    fourth = pipeline_archive(repo, [src], name="m")
    assert fourth.files_reused == 8 and reads == [] and puts[-1][0] == [] and puts[-1][2] == fourth.id
    db = sqlite3.connect(cache_path(repo.catalog_path))
    try:
        assert dict(db.execute("SELECT old, new FROM moved")).get(third.id) == fourth.id
    finally:
        db.close()


def test_cache_rows_are_written_beside_the_commit_and_kept_only_if_it_commits(repo, tmp_path, monkeypatch):
    """The rows of a run are laid out and written while the manifest commits, in a
    transaction that commits only once the manifest is: while the root manifest is being
    written no row names it, a commit that fails leaves no row, and the cache stays writable."""
    from archiver.errors import StoreError
    src = _many_files(tmp_path / "src" / "tree", 6)
    db = cache_path(repo.catalog_path)
    seen: list[int] = []
    real = Repository._put

    def at_root(self, key, data, policy):
        if key.startswith(layout.MANIFESTS):
            seen.append(_rows_in(db))  # what another process sees while the root is written
            if len(seen) == 1:
                raise StoreError("disk full")
        return real(self, key, data, policy)
    monkeypatch.setattr(Repository, "_put", at_root)
    with pytest.raises(StoreError):
        pipeline_archive(repo, [src], name="m")
    assert _rows_in(db) == 0  # rolled back with the failed commit
    res = pipeline_archive(repo, [src], name="m")
    assert seen == [0, 0]  # not visible before the manifest is committed
    assert _rows_in(db) == 6 and res.files == 6
    again = pipeline_archive(repo, [src], name="m")
    assert again.files_reused == 6


def test_cache_rows_are_written_while_the_catalog_records_the_manifest(repo, tmp_path, monkeypatch):
    """Once the manifest is durably in the store, its rows are written on the cache's own
    thread while the catalog records the manifest (not after, in series); the next run
    reuses them as before."""
    src = _many_files(tmp_path / "src" / "tree", 6)
    db = cache_path(repo.catalog_path)
    during: list[int] = []
    real = Catalog.record_manifest

    def recording(self, m, data, **kw):
        if m.name == "m":
            deadline = time.monotonic() + 60
            while _rows_in(db) < 6 and time.monotonic() < deadline:  # bounded: rows come on another thread
                time.sleep(0.005)
            during.append(_rows_in(db))
        return real(self, m, data, **kw)
    monkeypatch.setattr(Catalog, "record_manifest", recording)
    res = pipeline_archive(repo, [src], name="m")
    assert during == [6] and repo.is_recorded(res.id)
    again = pipeline_archive(repo, [src], name="m")
    assert again.files_reused == 6 and again.parent == res.id


def test_a_decided_pending_commit_keeps_its_decision(repo, tmp_path):
    """PendingCommit.decide(True) (the manifest is in the store) is not undone by a later
    finish(False): the rows are only ever candidates, re-checked before any reuse."""
    from archiver.chunking import ChunkPolicy
    from archiver.filescache import FilesRun
    from archiver.scan import scan
    src = _many_files(tmp_path / "src" / "tree", 6)
    first = pipeline_archive(repo, [src], name="m")
    db = cache_path(repo.catalog_path)
    for p in db.parent.glob(db.name + "*"):
        p.unlink()  # no rows: only the pending commit below writes them
    run = FilesRun.start(repo, scan([src]), ChunkPolicy())
    pending = run.commit_when(first.id, repo.load_manifest(first.id).entries)
    assert pending is not None
    pending.decide(True)
    pending.finish(False)
    run.close()
    assert _rows_in(db) == 6
    assert pipeline_archive(repo, [src], name="m").files_reused == 6


def _rows_in(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM files").fetchone()[0]
    finally:
        conn.close()


def test_a_tree_with_no_cache_row_under_it_is_keyed_only_with_its_rows(repo, tmp_path, reads, monkeypatch):
    """A first archive of a tree (no row of the cache at or below its PATH) makes no key or
    stat before its files are read: they are made from the scan's stats with the rows,
    beside the commit, and the next run reuses every file. Rows under another tree do not
    count; a tree with rows is looked up before any read, as always."""
    from archiver.filescache import FilesRun
    events: list[str] = []
    real_key = FilesRun._key
    monkeypatch.setattr(FilesRun, "_key", lambda self, files: events.append("key") or real_key(self, files))
    real_open = pipeline.open_settled
    monkeypatch.setattr(pipeline, "open_settled", lambda src, *more: events.append("read") or real_open(src, *more))
    a = _many_files(tmp_path / "src" / "a", 9)
    b = _many_files(tmp_path / "src" / "b", 6)
    for src, n in ((a, 9), (b, 6)):  # b: the cache holds rows, but only under a
        events.clear()
        assert pipeline_archive(repo, [src], name=src.name).files_reused == 0
        assert events.count("read") == n and events.index("key") > max(i for i, e in enumerate(events) if e == "read")
    for src, n in ((a, 9), (b, 6)):
        events.clear()
        assert pipeline_archive(repo, [src], name=src.name).files_reused == n
        assert events == ["key"]  # looked up before any read, and nothing read


def test_a_tree_under_a_directory_whose_name_is_not_utf8_is_archived_with_the_cache_off(repo, tmp_path):
    """The cache keys rows by absolute path, and SQLite takes only UTF-8 text: a tree under a
    directory whose name is not UTF-8 (any bytes are a valid Linux name; the archive's own
    paths below PATH stay checked) cannot have rows. That only turns the cache off, as any
    error of the cache does: the archive and its re-archive commit and restore byte for byte.
    Before, the range probe of a first archive raised UnicodeEncodeError and nothing was archived."""
    from archiver.restorer import restore
    from tests.helpers import tree
    parent = Path(os.fsdecode(os.fsencode(tmp_path) + b"/src-\xff"))
    src = make_checkpoint(parent / "ckpt", layers=2, dim=64)
    first = pipeline_archive(repo, [src], name="m")
    again = pipeline_archive(repo, [src], name="m")
    assert again.id != first.id and again.files == first.files
    restore(repo, again.id, tmp_path / "out")
    assert tree(tmp_path / "out" / "ckpt") == tree(src)


@pytest.mark.packs
def test_a_pack_failing_on_the_commits_packs_thread_commits_nothing_and_keeps_no_cache_row(repo, tmp_path,
                                                                                            monkeypatch):
    """The commit writes the open pack on a thread of its own while the files cache lays out
    its rows (uncommitted) beside it: a failure of that pack write is raised by the commit,
    and nothing names the lost chunks: no root manifest, no catalog row, no files-cache row.
    The next run stores them again, and its re-archive reuses every file. (Review of the
    overlapped commit, branch sfarch: no bug found; the failure path had no test.)"""
    from archiver.errors import StoreError
    from archiver.restorer import restore
    from tests.helpers import tree
    src = _many_files(tmp_path / "src" / "tree", 12)
    db = cache_path(repo.catalog_path)
    committing: list[str] = []
    real_commit, real_write = Repository.commit_manifest, Repository._write_pack

    def commit(self, *a, **k):
        committing.append("yes")
        return real_commit(self, *a, **k)

    def write(self, builder, policy):
        if committing:
            committing.append(threading.current_thread().name)
            raise StoreError("disk full (simulated)")
        return real_write(self, builder, policy)
    with monkeypatch.context() as m:
        m.setattr(Repository, "commit_manifest", commit)
        m.setattr(Repository, "_write_pack", write)
        with pytest.raises(StoreError, match="disk full"):
            pipeline_archive(repo, [src], name="m")
    assert len(committing) == 2  # the commit's open pack (on its packs thread, unless the commit took it first)
    assert RawStore(str(tmp_path / "store")).keys(layout.MANIFESTS) == []
    assert repo.list_archives() == [] and _rows_in(db) == 0
    first = pipeline_archive(repo, [src], name="m")
    assert first.new_chunks == 12 and _rows_in(db) == 12
    again = pipeline_archive(repo, [src], name="m")
    assert again.files_reused == 12
    restore(repo, again.id, tmp_path / "out")
    assert tree(tmp_path / "out" / "tree") == tree(src)


def test_a_commit_held_up_does_not_cost_another_archive_its_cache_rows(tmp_path, monkeypatch):
    """Two archives on one host share the files cache (next to the shared catalog). While one
    archive's commit is held up (a slow PUT of its root manifest: a big last pack or many trees
    on S3 take longer than the cache's busy timeout), another archive that commits meanwhile
    keeps its rows: its re-archive reuses every file instead of reading them all again.
    The rows of the held-up commit were kept in a transaction open (the cache's one write
    lock) for its whole commit, so the other archive's row write waited out the busy timeout
    and was dropped."""
    from archiver import filescache
    monkeypatch.setattr(filescache, "BUSY_TIMEOUT_S", 0.5)  # the default 10 s, shortened
    store = open_store(str(tmp_path / "store"), create=True)
    repo_a = Repository(store, Catalog(tmp_path / "cat.db", store.url))
    repo_b = Repository(open_store(str(tmp_path / "store")), Catalog(tmp_path / "cat.db", store.url))
    src_a = _many_files(tmp_path / "src" / "a", 6)
    src_b = _many_files(tmp_path / "src" / "b", 9)
    at_root, b_done = threading.Event(), threading.Event()
    real = Repository._put

    def put(self, key, data, policy):
        if self is repo_a and key.startswith(layout.MANIFESTS):
            at_root.set()
            b_done.wait(30)
        return real(self, key, data, policy)
    monkeypatch.setattr(Repository, "_put", put)
    got: list[object] = []
    a = threading.Thread(target=lambda: got.append(pipeline_archive(repo_a, [src_a], name="a")))
    a.start()
    try:
        assert at_root.wait(30)
        time.sleep(0.2)  # a's files-cache rows are laid out and written meanwhile
        pipeline_archive(repo_b, [src_b], name="b")
    finally:
        b_done.set()
        a.join(30)
    assert got and got[0].files == 6
    assert pipeline_archive(repo_b, [src_b], name="b").files_reused == 9
    assert pipeline_archive(repo_a, [src_a], name="a").files_reused == 6
    repo_a.close()
    repo_b.close()


def test_rows_of_a_manifest_the_catalog_failed_to_record_are_only_candidates(repo, tmp_path, monkeypatch, reads):
    """The rows are written once the root is durable (on_stored), before the catalog records
    it; that record fails (disk full under the catalog): the archive fails, and the rerun
    takes nothing from those rows unproved (a chunk damaged since makes its file read and the
    chunk repaired), keeps the id, and everything verifies."""
    from archiver.errors import ArchiverError
    from archiver.checker import verify
    src = _many_files(tmp_path / "src" / "tree", 6)
    first = pipeline_archive(repo, [src], name="base")
    (src / "d0" / "f000.bin").write_bytes(os.urandom(2000))
    real = Catalog.record_manifest

    def full(self, m, data, **kw):
        if m.name == "m":
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, m, data, **kw)
    with monkeypatch.context() as mp:
        mp.setattr(Catalog, "record_manifest", full)
        with pytest.raises((ArchiverError, sqlite3.Error)):
            pipeline_archive(repo, [src], name="m")
    assert _rows_in(cache_path(repo.catalog_path)) >= 6  # written once the root was durable
    stored = {k for k in RawStore(str(tmp_path / "store")).keys(layout.MANIFESTS)}
    assert len(stored) == 2  # the failed archive's root is in the store, not in the catalog
    e = files_of(repo, first.id)["tree/d1/f001.bin"]
    raw = RawStore(str(tmp_path / "store"))
    raw.mutate(layout.chunk(e.chunks[0].hash), lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    reads.clear()
    again = pipeline_archive(repo, [src], name="m")
    assert "tree/d1/f001.bin" in reads and again.repaired_chunks == 1
    assert layout.manifest(again.id) in stored  # the same archive: its id kept
    assert verify(repo, [again.id], deep=True).problems == []


class _SwitchAnsweredLocked:
    """A connection whose switch to WAL answers "database is locked" `times` times, as SQLite
    does at once (no busy handler) while another process switches the same brand-new file."""

    def __init__(self, conn: sqlite3.Connection, times: int) -> None:
        self.conn, self.times, self.tries = conn, times, 0

    def execute(self, sql: str, *args):
        if sql == "PRAGMA journal_mode=WAL":
            self.tries += 1
            if self.tries <= self.times:
                raise sqlite3.OperationalError("database is locked")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.conn, name)


def test_a_brand_new_cache_opened_by_two_processes_at_once_is_still_a_cache(tmp_path, monkeypatch):
    """Two archives starting at once (one HOME) open a brand-new files cache together: the
    one whose switch to WAL SQLite answers "database is locked" (at once, no busy handler)
    asks again instead of running without a cache (reading every file, silently)."""
    from archiver import filescache
    path = tmp_path / "files.db"
    real_connect = sqlite3.connect
    made: list[_SwitchAnsweredLocked] = []

    def connect(target, *a, **k):  # type: ignore[no-untyped-def]
        conn = real_connect(target, *a, **k)
        if str(target) != str(path):
            return conn
        made.append(_SwitchAnsweredLocked(conn, 3))
        return made[-1]
    monkeypatch.setattr(filescache.sqlite3, "connect", connect)
    cache = filescache.FilesCache.open(path)
    monkeypatch.undo()
    assert cache is not None and made[0].tries == 4
    try:
        assert cache.rows(["/nowhere"]) == {}
    finally:
        cache.close()
    conn = real_connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def _deferred_run(repo, src: Path):
    """A FilesRun of a first archive of `src` (no row under it): its keys deferred."""
    from archiver.chunking import ChunkPolicy
    from archiver.filescache import FilesRun
    from archiver.scan import scan
    sources = scan([src])
    run = FilesRun.start(repo, sources, ChunkPolicy())
    assert run.deferred and not run.keys
    return run, sources


def test_keys_made_ahead_on_their_thread_are_the_commits_rows(repo, tmp_path, monkeypatch):
    """`key_ahead` makes the deferred keys and stats on a thread of its own (once); the
    commit's rows are then those of keys made by the commit itself, and it makes none again."""
    from archiver.filescache import FilesRun
    src = _many_files(tmp_path / "src" / "t", 12)
    made_on: list[str] = []
    real_key = FilesRun._key
    monkeypatch.setattr(FilesRun, "_key",
                        lambda self, files: made_on.append(threading.current_thread().name) or real_key(self, files))
    ahead, sources = _deferred_run(repo, src)
    ahead.key_ahead()
    ahead.key_ahead()  # once per run
    ahead._keying.join(60)
    assert made_on == ["files-cache-keys"] and not ahead.deferred and len(ahead.keys) == 12
    entries = [pipeline.Entry(path=s.path, type="file", size=s.size, mode=s.mode, mtime_ns=s.seen[3],
                              blake3="", sha256="") for s in sources if not s.is_dir]
    rows_ahead, _, _ = ahead._commit_rows("m" * 64, entries)
    assert made_on == ["files-cache-keys"]  # not made again
    plain, _ = _deferred_run(repo, src)
    rows_plain, _, _ = plain._commit_rows("m" * 64, entries)
    assert [r[:9] for r in rows_ahead] == [r[:9] for r in rows_plain] and len(rows_ahead) == 12
    ahead.close()
    plain.close()


def test_keys_that_fail_ahead_are_made_and_raised_by_the_commit(repo, tmp_path, monkeypatch):
    """A failure making the keys on their thread is not lost, nor printed as a thread's
    traceback: the files stay deferred, and the commit's own call makes them (or raises)."""
    from archiver.filescache import FilesRun
    src = _many_files(tmp_path / "src" / "t", 6)
    real_key = FilesRun._key
    calls: list[str] = []

    def key(self, files):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise MemoryError("no room")
        return real_key(self, files)
    monkeypatch.setattr(FilesRun, "_key", key)
    run, _ = _deferred_run(repo, src)
    run.key_ahead()
    run._keying.join(60)
    assert calls == ["files-cache-keys"] and run.deferred and not run.keys
    run._keyed()
    assert calls == ["files-cache-keys", threading.current_thread().name] and len(run.keys) == 6
    run.close()


def _worker_tree(tmp_path: Path) -> Path:
    """12 directories of 90 small files (1,080): over the trees' threshold, archived in several
    worker tasks."""
    src = tmp_path / "src" / "tree"
    for d in range(12):
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(90):
            (src / f"d{d:02}" / f"f{i:02}").write_bytes(os.urandom(1 + 13 * i + d))
    return src


def _refuse_thread(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Starting the thread named `name` fails as it does when no thread is to be had; any
    other thread starts."""
    real_start = threading.Thread.start

    def start(self):
        if self.name == name:
            raise RuntimeError("can't start new thread")
        return real_start(self)
    monkeypatch.setattr(threading.Thread, "start", start)


def test_an_archive_on_worker_processes_makes_its_keys_ahead_and_reuses_every_file(tmp_path, monkeypatch):
    """With worker processes (and trees made ahead), the first results back start the keys'
    thread; the archive's cache rows then let its re-archive reuse every file."""
    from archiver import api
    from archiver.filescache import FilesRun
    src = _worker_tree(tmp_path)
    started: list[bool] = []
    real = FilesRun.key_ahead
    monkeypatch.setattr(FilesRun, "key_ahead", lambda self: started.append(bool(self.deferred)) or real(self))
    kw = dict(store=str(tmp_path / "store"), catalog=tmp_path / "cat.db", processes=2)
    first = api.archive([src], name="t", **kw)
    assert started and started[0] and first.files_reused == 0 and first.files_by_processes == 1080
    again = api.archive([src], name="t", **kw)
    assert again.files_reused == 1080 and again.parent == first.id


def _cache_rows(conn: sqlite3.Connection) -> list[tuple]:
    return conn.execute("SELECT *, typeof(dev), typeof(ino), typeof(size), typeof(mtime_ns), typeof(ctime_ns), "
                        "typeof(used), rowid FROM files ORDER BY rowid").fetchall()


def test_a_commits_rows_upserted_at_once_are_those_of_one_row_at_a_time(tmp_path):
    """A commit's rows (one reader, manifest and time) go in as one statement over a JSON
    array: the same rows, values, types and order as binding each row, an existing row
    updated in place, a path named twice taking its last row; rows that do not share those
    (or a number past 64 bits) are bound one by one, as before."""
    from archiver import filescache
    mid, now = "a" * 64, 1700000000.25
    rows = [("/t/é \"q\\", 1, 2, 3, 4, 5, "r", mid, "t/é \"q\\", now),
            ("/t/b", 2 ** 63 - 1, 0, 0, -1, 7, "r", mid, "t/b", now), ("/t/c", 1, 2, 3, 4, 5, "r", mid, "t/c", now),
            ("/t/b", 9, 9, 9, 9, 9, "r", mid, "t/b2", now)]
    out = []
    for side in ("once", "each"):
        cache = filescache.FilesCache(tmp_path / f"{side}.files")
        cache._conn.executemany(filescache._UPSERT, [("/t/c", 0, 0, 0, 0, 0, "old", "b" * 64, "t/c", 1.0)])
        statements: list[str] = []
        cache._conn.set_trace_callback(statements.append)
        if side == "once":
            filescache._upsert(cache._conn, rows)
            assert len(statements) == 1 and "json_each" in statements[0]
        else:
            cache._conn.executemany(filescache._UPSERT, rows)
        cache._conn.set_trace_callback(None)
        out.append(_cache_rows(cache._conn))
        cache.close()
    assert out[0] == out[1] and len(out[0]) == 3
    for mixed in ([rows[0], rows[1][:7] + ("c" * 64,) + rows[1][8:]], [rows[0][:1] + (2 ** 63,) + rows[0][2:]]):
        conn = filescache.FilesCache(tmp_path / "mixed.files")._conn
        statements = []
        conn.set_trace_callback(statements.append)
        try:
            filescache._upsert(conn, mixed)
        except OverflowError:  # what binding a number past 64 bits raises, as before
            pass
        assert not any("json_each" in s for s in statements)
        conn.close()


def test_a_commits_one_statement_upsert_needs_no_sqlite_newer_than_json_each(tmp_path):
    """SQLite added the `->`/`->>` JSON operators only in 3.38 (Ubuntu 22.04's is 3.37.2);
    the catalog's statements need no more than JSON1's json_each. The one-statement upsert
    must run there too: were it to fail, every commit's rows would be lost (a cache error
    only turns the cache off) and every next archive would read every file again. Here the
    operator is made to fail as it does on such an SQLite, and the rows still go in."""
    from archiver import filescache

    def no_operator(*args):
        raise sqlite3.OperationalError("no ->> operator before SQLite 3.38")
    mid, now = "a" * 64, 1700000000.25
    rows = [(f"/t/f{i}", 1, i, 3, 4, 5, "r", mid, f"t/f{i}", now) for i in range(20)]
    cache = filescache.FilesCache(tmp_path / "old.files")
    try:
        cache._conn.create_function("->>", 2, no_operator)  # SQLite resolves `a ->> b` to this name
        statements: list[str] = []
        cache._conn.set_trace_callback(statements.append)
        cache.put_values(rows, now, {}, mid)
        cache._conn.set_trace_callback(None)
        assert any("json_each" in s for s in statements)  # still the one statement
        assert cache._conn.execute("SELECT path, dev, ino, size, mtime_ns, ctime_ns, reader, manifest, entry_path, "
                                   "used FROM files ORDER BY rowid").fetchall() == rows
    finally:
        cache.close()


@pytest.mark.parametrize("rows", [
    [("/t/a\x00b", 1, 2, 3, 4, 5, "r", "a" * 64, "t/a\x00b", 1.5)],  # json_extract would stop at the NUL
    [("/t/a", -(2 ** 63), 2 ** 63 - 1, 0, -1, 7, "r", "a" * 64, "t/a", 1.5),
     ("[1, \"x\"]", 1, 2, 3, 4, 5, "r", "a" * 64, "null", 1.5),  # text that looks like JSON stays text
     ("/t/\\u0000", 1, 2, 3, 4, 5, "r", "a" * 64, "t/\u2028\x7f\U0001F600", 1.5)],
])
def test_the_one_statement_upsert_writes_any_path_as_binding_it_does(tmp_path, rows):
    """Whatever the paths hold (a NUL, JSON-looking text, escapes, the int64 bounds), the
    rows `_upsert` writes are those executemany writes, to the byte and type."""
    from archiver import filescache
    out = []
    for side in ("once", "each"):
        cache = filescache.FilesCache(tmp_path / f"{side}.files")
        if side == "once":
            filescache._upsert(cache._conn, rows)
        else:
            cache._conn.executemany(filescache._UPSERT, rows)
        out.append(cache._conn.execute("SELECT hex(path), hex(entry_path), typeof(dev), typeof(ino), dev, ino, size, "
                                       "mtime_ns, ctime_ns, reader, manifest, used FROM files ORDER BY rowid").fetchall())
        cache.close()
    assert out[0] == out[1] and len(out[0]) == len(rows)


def test_the_one_statement_upsert_stays_within_sqlites_length_limit(tmp_path, monkeypatch):
    """One JSON text for every row of a tree of millions of files would pass SQLite's
    length limit (1e9 bytes by default) and fail the commit's cache write (every row lost,
    the cache silently off for that tree) where binding row by row did not. The rows go in
    as a statement per slice, and a slice whose text would pass the limit row by row; the
    rows are executemany's, a path listed twice across slices taking its last row."""
    from archiver import filescache
    monkeypatch.setattr(filescache, "_UPSERT_SLICE", 64, raising=False)
    mid, now = "a" * 64, 1700000000.25
    rows = [(f"/t/f{i % 150:04}", 1, i, 3, 4, 5, "r", mid, f"t/f{i}", now) for i in range(200)]
    out = []
    for side, limit in (("rows", 2000), ("slices", 20000), ("each", 2000)):
        cache = filescache.FilesCache(tmp_path / f"{side}.files")
        try:
            cache._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limit)  # a slice's text fits 20,000 bytes, not 2,000
            statements: list[str] = []
            cache._conn.set_trace_callback(statements.append)
            if side == "each":
                with cache._conn:
                    cache._conn.executemany(filescache._UPSERT, rows)
            else:
                cache.put_values(rows, now, {}, mid)
            cache._conn.set_trace_callback(None)
            # slices of 64, 64, 64 and 8 rows: under 2,000 bytes, only the last one's text fits
            assert sum("json_each" in s for s in statements) == {"slices": 4, "rows": 1, "each": 0}[side]
            out.append(_cache_rows(cache._conn))
        finally:
            cache.close()
    assert out[0] == out[1] == out[2] and len(out[0]) == 150


def test_an_archive_that_fails_leaves_no_keys_thread_running(tmp_path, monkeypatch):
    """The files cache's keys thread (`key_ahead`) is waited for when the archive fails
    after it started, as the early trees' builder is: nothing of the failed run is left
    running (for a tree of a million files, that thread runs for seconds). Here the keys
    thread is held until the run's files cache is closed, and a worker task's packs fail
    to be adopted once it has started."""
    from archiver import api
    from archiver.errors import ArchiverError
    from archiver.filescache import FilesRun
    from archiver.repository import Repository
    src = _worker_tree(tmp_path)
    keying, closed = threading.Event(), threading.Event()
    real_key, real_close, real_adopt = FilesRun._key, FilesRun.close, Repository.adopt_packs

    def key(self, files):
        if threading.current_thread().name == "files-cache-keys":
            keying.set()
            closed.wait(60)  # still making keys when the run fails
        return real_key(self, files)

    def close(self):
        closed.set()
        real_close(self)
    adopted: list[int] = []

    def adopt(self, packs):
        adopted.append(1)
        if len(adopted) > 1 and keying.wait(60):
            raise OSError(5, "Input/output error")
        return real_adopt(self, packs)
    monkeypatch.setattr(FilesRun, "_key", key)
    monkeypatch.setattr(FilesRun, "close", close)
    monkeypatch.setattr(Repository, "adopt_packs", adopt)
    try:
        with pytest.raises(ArchiverError, match="Input/output error"):
            api.archive([src], name="t", store=str(tmp_path / "store"), catalog=tmp_path / "cat.db", processes=2)
        assert keying.is_set()
        assert not [t for t in threading.enumerate() if t.name == "files-cache-keys" and t.is_alive()]
    finally:
        closed.set()


def test_an_archive_whose_keys_thread_cannot_start_fails_with_its_error(tmp_path, monkeypatch):
    """A keys thread that cannot be started (no threads left) fails the worker task that
    asked for it, as any thread the run cannot start: the archive then ends with that one
    error, and its files cache is closed without waiting for a thread that never ran."""
    from archiver import api
    from archiver.errors import ArchiverError
    src = _worker_tree(tmp_path)
    _refuse_thread(monkeypatch, "files-cache-keys")
    with pytest.raises(ArchiverError, match="can't start new thread"):
        api.archive([src], name="t", store=str(tmp_path / "store"), catalog=tmp_path / "cat.db", processes=2)


@pytest.mark.parametrize("where", ["early-trees", "agent"])
def test_an_archive_failing_before_its_files_are_archived_closes_its_files_cache(tmp_path, monkeypatch, where):
    """The run's files cache is closed on every path out of the archive, a failure between
    its start and the files' archiving too (the early trees' builder or the event's agent
    failing to start, a damaged Hugging Face blob at a cache hit): its connection is not
    left to the GC, nor a write lock's chance with it."""
    from archiver import api, earlytrees
    from archiver.filescache import FilesRun
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}").write_bytes(os.urandom(100 + i))
    opened: list[FilesRun] = []
    closed: list[FilesRun] = []
    real_start, real_close = FilesRun.start.__func__, FilesRun.close

    def start(cls, *a, **k):
        run = real_start(cls, *a, **k)
        opened.append(run)
        return run

    def close(self):
        closed.append(self)
        real_close(self)
    monkeypatch.setattr(FilesRun, "start", classmethod(start))
    monkeypatch.setattr(FilesRun, "close", close)
    if where == "early-trees":
        def refuse(cls, *a, **k):
            raise OSError(24, "Too many open files")
        monkeypatch.setattr(earlytrees.EarlyTrees, "start", classmethod(refuse))
    else:
        _refuse_thread(monkeypatch, "archive-agent")
    with pytest.raises((OSError, RuntimeError)):
        api.archive([src], name="t", store=str(tmp_path / "store"), catalog=tmp_path / "cat.db", processes=0)
    assert len(opened) == 1 and closed == opened
