"""archive() across formats: tensor-aware chunking and byte-grouped codecs really reach
the store, results are reported accurately, and everything restores byte-identical."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import time

import blake3
import pytest

from archiver import pipeline
from archiver.checker import verify
from archiver.chunking import ChunkPolicy
from archiver.errors import InvalidOptionError, ManifestError, SourceChangedError, UsageError
from archiver.pipeline import archive
from archiver.repository import Repository
from archiver.scan import open_source, scan
from archiver.settings import Settings
from archiver.restorer import restore
from manifests.model import ChunkRef, Entry, Manifest, parse_manifest
from tests.fixtures import make_gguf, make_safetensors, make_torch_zip, random_tensor_bytes, transformer_tensors
from tests.helpers import RawStore, make_checkpoint, tree
from tests.test_scan import SWAPS, swap

SMALL = ChunkPolicy(max_chunk=256 * 1024, small_group=64 * 1024, cdc_min=16 * 1024, cdc_avg=64 * 1024,
                    cdc_max=256 * 1024)


@pytest.fixture
def repo(tmp_path):
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as r:
        yield r


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "src" / "model"
    d.mkdir(parents=True)
    tensors = transformer_tensors(n_layers=4, hidden=128, vocab=512, dtype="F32", seed=1)
    make_safetensors(d / "model.safetensors", tensors)
    make_torch_zip(d / "pytorch_model.bin", tensors)
    make_gguf(d / "model.gguf", {name: ("F16", shape, random_tensor_bytes("F16", _numel(shape), seed=i))
                                 for i, (name, (_, shape, _)) in enumerate(tensors.items())})
    (d / "blob.bin").write_bytes(os.urandom(700_000))
    (d / "config.json").write_text('{"hidden": 128}')
    return d


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def test_formats_detected_and_grouped(repo, model_dir, tmp_path):
    res = archive(repo, [model_dir], name="m", policy=SMALL)
    m = repo.load_manifest(res.id)
    by_path = {e.path: e for e in m.files}
    assert by_path["model/model.safetensors"].format == "safetensors"
    assert by_path["model/pytorch_model.bin"].format == "torchzip"
    assert by_path["model/model.gguf"].format == "gguf"
    assert by_path["model/blob.bin"].format == ""
    codecs = lambda p: {c.codec for c in by_path[p].chunks}  # noqa: E731
    assert "bg4" in codecs("model/model.safetensors")   # fp32 tensors byte-grouped
    assert "bg4" in codecs("model/pytorch_model.bin")   # FloatStorage found in data.pkl
    assert "bg2" in codecs("model/model.gguf")          # F16 tensors
    assert codecs("model/blob.bin") <= {"raw"}          # random bytes are stored raw
    # the same big tensors in safetensors and torch zip share chunks (pieces are cut from
    # each tensor's start); small grouped tensors differ because zip headers ride along
    st = {c.hash for c in by_path["model/model.safetensors"].chunks}
    tz = {c.hash for c in by_path["model/pytorch_model.bin"].chunks}
    assert len(st & tz) >= 5
    assert res.bytes_stored < res.bytes_in
    assert res.chunks == len(m.unique_chunks())
    out = restore(repo, res.id, tmp_path / "out")
    assert out.ok and tree(tmp_path / "out" / "model") == tree(model_dir)


def test_second_archive_is_free_and_chained(repo, model_dir):
    first = archive(repo, [model_dir], name="m", policy=SMALL)
    second = archive(repo, [model_dir], name="m", label="again", policy=SMALL)
    assert second.new_chunks == 0 and second.new_bytes_stored == 0
    assert second.bytes_stored == first.bytes_stored and second.parent == first.id
    assert repo.resolve("m") == second.id


def test_known_chunk_missing_from_store_is_uploaded_again(repo, model_dir, tmp_path):
    """The catalog is not trusted: a chunk it knows but the store lost is re-uploaded."""
    first = archive(repo, [model_dir], name="m", policy=SMALL)
    victim = next(iter(repo.load_manifest(first.id).unique_chunks()))
    os.unlink(tmp_path / "store" / "chunks" / victim[:2] / victim)
    again = archive(repo, [model_dir], name="m", policy=SMALL)
    assert again.new_chunks == 1
    assert repo.chunk_sizes([victim])


@pytest.mark.parametrize("bad", ["", "a@b", " padded", "tab\there"])
def test_bad_names_refused(repo, model_dir, bad):
    with pytest.raises(UsageError):
        archive(repo, [model_dir], name=bad)


@pytest.fixture
def small_ckpt(tmp_path):
    return make_checkpoint(tmp_path / "src" / "model", layers=2, dim=64)


# -- sources: the scanned file is the one read ----------------------------------------------------

@pytest.fixture
def secret(tmp_path):
    s = tmp_path / "outside" / "secret.bin"
    s.parent.mkdir()
    s.write_bytes(b"root-only secret " * 1000)
    return s


def _swap_after_scan(monkeypatch, victim, kind, secret):
    real = pipeline.scan

    def scan_then_swap(paths, **kw):
        out = real(paths, **kw)
        swap(victim, kind, secret)
        return out
    monkeypatch.setattr(pipeline, "scan", scan_then_swap)


FILE_SWAPS = [("model/config.json", k) for k in SWAPS] + [("file PATH", k) for k in SWAPS]
DIR_SWAPS = [(w, k) for w in ("model/tokenizer", "model") for k in ("symlink-to-secret", "directory", "removed")]


@pytest.mark.parametrize("where,kind", FILE_SWAPS + DIR_SWAPS)
def test_file_swapped_after_scan_is_never_archived(repo, small_ckpt, tmp_path, monkeypatch, secret, where, kind):
    """A root archiver of a user-writable tree must not be made to read another file: a file,
    a directory above it or the PATH itself swapped after the scan fails the archive and
    records nothing, and none of the other file's bytes reach the store."""
    paths = [small_ckpt / "config.json"] if where == "file PATH" else [small_ckpt]
    if where in ("model/config.json", "file PATH"):
        victim, target = small_ckpt / "config.json", secret
    else:  # a look-alike directory holding the secret under the scanned names
        victim, target = small_ckpt / where.removeprefix("model").lstrip("/"), secret.parent
        for inside in ("config.json", "vocab.txt"):
            (secret.parent / inside).write_bytes(secret.read_bytes())
    _swap_after_scan(monkeypatch, victim, kind, target)
    with pytest.raises(SourceChangedError, match="changed while it was being archived") as ei:
        archive(repo, paths, name="m")
    assert "\n" not in str(ei.value)
    raw = RawStore(str(tmp_path / "store"))
    assert raw.keys("manifests") == [] and repo.list_archives() == []
    assert blake3.blake3(secret.read_bytes()).hexdigest() not in {k.rsplit("/", 1)[-1] for k in raw.keys("chunks")}


# -- a file rewritten while it is read: the snapshot compared against is taken once ctime settles ------

def test_before_snapshot_waits_until_ctime_is_past_its_tick(tmp_path):
    """A write in the same timestamp tick as the last one would not move ctime, so the
    snapshot a read is compared against is taken only once ctime is safely in the past."""
    p = tmp_path / "fresh.bin"
    p.write_bytes(b"just written")
    src = scan([p])[0]
    fd = open_source(src)
    try:
        st = pipeline._settled(fd, src)
    finally:
        os.close(fd)
    assert time.time_ns() - st.st_ctime_ns >= pipeline._FINE_GRAIN_NS


def test_file_that_never_settles_is_refused(tmp_path, monkeypatch):
    p = tmp_path / "busy.bin"
    p.write_bytes(b"always being written")
    src = scan([p])[0]
    monkeypatch.setattr(pipeline, "_FINE_GRAIN_NS", 10**18)  # every ctime looks this recent
    monkeypatch.setattr(pipeline, "_COARSE_GRAIN_NS", 10**18)
    monkeypatch.setattr(pipeline, "SETTLE_LIMIT_S", 0.2)
    fd = open_source(src)
    started = time.monotonic()
    try:
        with pytest.raises(SourceChangedError, match="still being written"):
            pipeline._settled(fd, src)
    finally:
        os.close(fd)
    assert time.monotonic() - started < 2


# -- the write path validates what it writes ------------------------------------------------------

BAD_ARGS = [
    # (name, label, meta, parameter named in the error)
    (3, None, None, "name"),
    ("m\udcff", None, None, "name"),                 # undecodable argv bytes arrive as lone surrogates
    ("m\u202eevil", None, None, "name"),             # bidi override: shows as something else
    ("line\u2028break", None, None, "name"),
    ("m", "\udcff", None, "label"),
    ("m", 3, None, "label"),
    ("m", "v\x85", None, "label"),                   # C1 control
    ("m", "a@b", None, "label"),
    ("m", None, {"epoch": 3}, "meta"),
    ("m", None, {3: "x"}, "meta"),
    ("m", None, {"k": None}, "meta"),
    ("m", None, {"": "x"}, "meta"),
    ("m", None, {"a=b": "x"}, "meta"),
    ("m", None, {"k\udcff": "x"}, "meta"),
    ("m", None, {"k": "v\udcff"}, "meta"),
    ("m", None, {"k": "two\nlines"}, "meta"),
    ("m", None, {"k": "\x1b[2Jclear"}, "meta"),
    ("m", None, ["k=v"], "meta"),
]


@pytest.mark.parametrize("name,label,meta,option", BAD_ARGS)
def test_bad_name_label_or_meta_refused_before_anything_is_read_or_written(repo, small_ckpt, tmp_path, monkeypatch,
                                                                          name, label, meta, option):
    def no_scan(paths, **kw):
        raise AssertionError("scanned before the arguments were checked")
    monkeypatch.setattr(pipeline, "scan", no_scan)
    with pytest.raises(InvalidOptionError) as ei:
        archive(repo, [small_ckpt], name=name, label=label, meta=meta)
    assert ei.value.option == option and "\n" not in str(ei.value)
    str(ei.value).encode("utf-8")  # the message itself is printable whatever the input was
    raw = RawStore(str(tmp_path / "store"))
    assert raw.keys("chunks") == [] and raw.keys("manifests") == [] and repo.list_archives() == []


TEXT_PIECES = ["a", "Z", "7", "-", "_", ".", " ", "é", "模", "☃", "\U0001F600", "e\u0301", "@", "=",
               "\t", "\n", "\x00", "\x7f", "\x85", "\u2028", "\u202e", "\u2066", "\udcff", "\ud800"]


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(TEXT_PIECES[:12] if rng.random() < 0.7 else TEXT_PIECES)
                   for _ in range(rng.randint(0, 6)))


def test_whatever_archive_accepts_every_reader_accepts(repo, tmp_path):
    """The class, not the example: random names, labels and meta are either refused up front
    with nothing written, or committed as a manifest that the reader, show, verify, restore
    and a catalog rebuild all take back unchanged."""
    src = tmp_path / "src" / "w.bin"
    src.parent.mkdir()
    src.write_bytes(b"weights" * 100)
    rng = random.Random(14)
    raw = RawStore(str(tmp_path / "store"))
    accepted: dict[str, tuple[str, str | None, dict[str, str]]] = {}
    refused = 0
    for _ in range(60):
        name, label = _random_text(rng), (_random_text(rng) if rng.random() < 0.5 else None)
        meta = {_random_text(rng): _random_text(rng) for _ in range(rng.randint(0, 3))}
        before = raw.keys("manifests")
        try:
            res = archive(repo, [src], name=name, label=label, meta=meta)
        except InvalidOptionError:
            refused += 1
            assert raw.keys("manifests") == before
            continue
        data = raw.read(f"manifests/{res.id}.json")
        m = parse_manifest(data, expected_id=res.id)
        assert (m.name, m.label, m.meta) == (name, label, meta)
        accepted[res.id] = (name, label, meta)
    assert refused >= 5 and len(accepted) >= 5  # both sides of the line were exercised
    rep = verify(repo, [], all_archives=True, deep=True)
    assert rep.ok and set(rep.manifests) == set(accepted)
    for mid in accepted:
        out = restore(repo, mid, tmp_path / "out" / mid)
        assert out.ok and (tmp_path / "out" / mid / "w.bin").read_bytes() == src.read_bytes()
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "fresh.db")) as fresh:
        assert set(fresh.rebuild_catalog().added) == set(accepted)
        for mid, (name, label, meta) in accepted.items():
            m = fresh.load_manifest(mid)
            assert (m.name, m.label, m.meta) == (name, label, meta)


def _one_file_manifest(repo: Repository, **overrides) -> Manifest:
    data = b"x" * 1000
    h = blake3.blake3(data).hexdigest()
    saved = repo.save_chunk(h, data, 0)
    entry = Entry(path="w.bin", type="file", mode=0o644, size=len(data), blake3=h,
                  sha256=hashlib.sha256(data).hexdigest(), chunks=(ChunkRef(0, len(data), h, saved.stored_size,
                                                                            saved.codec),))
    fields = dict(name="m", label=None, meta={}, parent=None, entries=(entry,))
    fields.update(overrides)
    if "entry" in fields:
        fields["entries"] = (dataclasses.replace(entry, **fields.pop("entry")),)
    return Manifest(**fields)


@pytest.mark.parametrize("overrides", [
    {"meta": {"epoch": 3}}, {"meta": {3: "x"}}, {"meta": {3: "x", "a": "y"}}, {"meta": {"k": b"bytes"}},
    {"label": 3}, {"name": ""}, {"name": 7},
    {"parent": "not-a-hash"}, {"entry": {"size": 999}}, {"entry": {"mode": 0o170000}},
    {"entry": {"sha256": "short"}},
], ids=lambda o: repr(o))
def test_commit_manifest_stores_nothing_the_reader_would_refuse(repo, tmp_path, overrides):
    """Manifests built by hand through the Python API go through the same door: the bytes
    are parsed with the reader's own checks before they are stored or recorded."""
    assert repo.commit_manifest(_one_file_manifest(repo)).id  # the unmodified one is fine
    raw = RawStore(str(tmp_path / "store"))
    before = raw.keys("manifests")
    with pytest.raises(ManifestError, match="malformed manifest"):
        repo.commit_manifest(_one_file_manifest(repo, **overrides), details={})
    assert raw.keys("manifests") == before and len(repo.list_archives()) == 1


def test_a_file_below_the_cdc_minimum_is_one_chunk_hashed_once(tmp_path, home, monkeypatch):
    """A small file is saved on its own thread as one chunk: its chunk address is its BLAKE3
    (computed once), its SHA-256 is the file's, an empty file has no chunk; a file of exactly
    the CDC minimum takes the chunk pipeline, and both paths give the digests hashlib does."""
    import hashlib

    import blake3

    from archiver import api, pipeline
    from archiver.chunking import ChunkPolicy
    policy = ChunkPolicy(cdc_min=4096, cdc_avg=8192, cdc_max=16384)
    src = tmp_path / "src"
    src.mkdir()
    blobs = {"empty": b"", "tiny.bin": b"x", "small.bin": os.urandom(4095), "edge.bin": os.urandom(4096),
             "big.bin": os.urandom(50_000)}
    for name, data in blobs.items():
        (src / name).write_bytes(data)
    passes = []
    real = pipeline.save_small
    monkeypatch.setattr(pipeline, "save_small", lambda *a: passes.append(1) or real(*a))
    repo = api.open_repository(str(tmp_path / "s"), create=True)
    try:
        res = pipeline.archive(repo, [src], name="m", policy=policy)
        m = repo.load_manifest(res.id)
    finally:
        repo.close()
    assert len(passes) == 3  # empty, tiny.bin, small.bin
    for e in m.files:
        data = blobs[e.path.split("/")[-1]]
        assert (e.blake3, e.sha256) == (blake3.blake3(data).hexdigest(), hashlib.sha256(data).hexdigest())
        if len(data) < policy.cdc_min:
            assert [(c.offset, c.length, c.hash) for c in e.chunks] == ([(0, len(data), e.blake3)] if data else [])
        else:
            assert sum(c.length for c in e.chunks) == len(data)


def test_a_small_file_read_whole_still_sees_it_grow_or_shrink(tmp_path):
    """A small file is read whole (one read(2), asking one byte past its size): a file
    longer or shorter than the size it was opened at is refused as the chunker would refuse
    it, naming the file, and the fstat after the read is the file's snapshot."""
    from archiver.errors import SourceChangedError
    p = tmp_path / "f.bin"
    p.write_bytes(b"a" * 100)
    src = scan([p])[0]
    for size, match in ((50, "longer than the 50 bytes"), (200, "ended at byte 100, expected 200")):
        fd = os.open(p, os.O_RDONLY)
        before = os.fstat(fd)
        with pytest.raises(SourceChangedError, match=f"{p}.*{match}"):
            pipeline.read_small(src, fd, os.stat_result((*before[:6], size, *before[7:])))
        with pytest.raises(OSError):
            os.fstat(fd)  # closed by read_small whatever happened
    fd = os.open(p, os.O_RDONLY)
    small = pipeline.read_small(src, fd, os.fstat(fd))
    assert small.data == b"a" * 100 and small.after.st_size == 100


def test_a_small_file_takes_one_read_and_no_path_stat(tmp_path, monkeypatch):
    """The lean path of a small file: one open(2) relative to its held directory (no
    look-before-open stat, no stat of its path after the read), two fstats (the one that
    proves it is the scanned file, and the one after the read), one read(2)."""
    from archiver import scan as scan_mod
    from archiver.scan import DirFds
    p = tmp_path / "d" / "f.bin"
    p.parent.mkdir()
    p.write_bytes(b"b" * 3000)
    os.utime(p, ns=(10**18, 10**18))
    time.sleep(0.03)  # ctime past its tick: _settled takes the first fstat
    src = {s.path: s for s in scan([p.parent])}["d/f.bin"]
    dirs = DirFds()
    dirs.get(src.parent)
    calls: list[str] = []
    for name in ("stat", "fstat", "read", "open"):
        real = getattr(os, name)
        monkeypatch.setattr(scan_mod.os, name, lambda *a, _n=name, _r=real, **k: calls.append(_n) or _r(*a, **k))
    try:
        fd, before = pipeline.open_settled(src, dirs)
        small = pipeline.read_small(src, fd, before)
    finally:
        monkeypatch.undo()
        dirs.close()
    assert calls == ["open", "fstat", "read", "fstat"]
    assert small.data == p.read_bytes() and small.before.st_ino == src.ino


def test_small_format_matches_detection_on_the_file(tmp_path):
    """small_format gives the (format, tech) detect_regions and file_tech give on the file
    itself: a tiny safetensors file and a config.json are recognised, other bytes are not."""
    import io as _io
    import json
    import struct

    from archiver.formats import detect_regions
    from archiver.techmeta import file_tech
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    cases = {"m.safetensors": struct.pack("<Q", len(header)) + header + b"\0" * 8,
             "config.json": json.dumps({"architectures": ["BertModel"], "model_type": "bert"}).encode(),
             "x.bin": b"PK\x03\x04 not a zip at all", "y.txt": b"hello", "e": b"", "g.gguf": b"GGUF" + b"\0" * 20}
    for name, data in cases.items():
        f = _io.BytesIO(data)
        fmt = detect_regions(f, len(data))
        want = (fmt[0] if fmt else "", file_tech(f, len(data), name, fmt[0] if fmt else ""))
        assert pipeline.small_format(data, name) == want, name
    assert pipeline.small_format(cases["m.safetensors"], "m.safetensors")[0] == "safetensors"
    assert pipeline.small_format(cases["config.json"], "config.json")[1] is not None


def test_a_small_file_rewritten_while_archived_is_refused(tmp_path, home, monkeypatch):
    """The read-whole path keeps the before/after snapshot: a write between the settled fstat
    and the read is refused and nothing is recorded."""
    from archiver import api
    from archiver.errors import SourceChangedError
    src = tmp_path / "src"
    src.mkdir()
    victim = src / "small.bin"
    victim.write_bytes(b"x" * 1000)
    real = pipeline._settled

    def settled_then_written(fd, s, st=None):
        st = real(fd, s, st)
        if s.abspath.name == "small.bin":
            with open(victim, "ab") as f:
                f.write(b"more")
        return st

    monkeypatch.setattr(pipeline, "_settled", settled_then_written)
    store = str(tmp_path / "s")
    with pytest.raises(SourceChangedError, match="small.bin"):
        api.archive([src], name="m", store=store)
    assert api.list_archives(store=store) == []


def _hand_off_order(repo, model_dir, monkeypatch):
    """Archive the model's safetensors through `_archive_file` with a 4-chunk window,
    recording when each chunk is handed to the pool and when the whole-file digest reads it:
    (entry, events, ids of chunks in pool order, ids in hash order)."""
    from concurrent.futures import ThreadPoolExecutor

    from archiver.digests import FileDigest
    from archiver.progress import Progress

    events: list[tuple[str, int]] = []
    keep: list[object] = []  # every chunk stays alive, so no id is reused by a later one

    class Recording(FileDigest):
        def update(self, data):
            keep.append(data)
            events.append(("hash", id(data)))
            super().update(data)

    class Pool(ThreadPoolExecutor):
        def submit(self, fn, item, *a, **k):
            keep.append(item.data)
            events.append(("pool", id(item.data)))
            return super().submit(fn, item, *a, **k)

    monkeypatch.setattr(pipeline, "FileDigest", Recording)
    path = model_dir / "model.safetensors"
    [src] = [s for s in scan([path])]
    writer = pipeline._ChunkWriter(repo, pipeline._Stats())
    with Pool(4) as pool:
        entry = pipeline._archive_file(src, pool, writer, SMALL, 4, Progress())
    data = path.read_bytes()
    assert (entry.blake3, entry.sha256) == (blake3.blake3(data).hexdigest(), hashlib.sha256(data).hexdigest())
    pooled = [ident for what, ident in events if what == "pool"]
    hashed = [ident for what, ident in events if what == "hash"]
    assert len(pooled) == len(hashed) == len(entry.chunks)
    assert pooled == hashed  # both in file order
    return entry, events, pooled, hashed


def test_each_chunk_goes_to_the_pool_before_the_whole_file_hashes_read_it(repo, model_dir, monkeypatch):
    """Without the start's read-ahead, the reading thread hands each chunk to the pool first
    and feeds the whole-file BLAKE3 and SHA-256 after, so workers never wait for those hashes;
    the digests still cover every byte."""
    monkeypatch.setattr(pipeline, "START_AHEAD_CHUNKS", 0)
    entry, events, _pooled, hashed = _hand_off_order(repo, model_dir, monkeypatch)
    assert len(entry.chunks) > 4  # more chunks than the window: the steady state is exercised
    # every chunk but the first (parallel.ordered_map peeks at the second item to run a lone
    # one on the calling thread, which resumes the reader once before the first submit)
    for ident in hashed[1:]:
        assert events.index(("pool", ident)) < events.index(("hash", ident))


def test_the_last_chunk_goes_to_the_pool_before_the_hashes_with_the_start_read_ahead(repo, model_dir,
                                                                                       monkeypatch):
    """With the read-ahead of the start (chunks read and hashed beyond the window while the
    first is not done), the last chunk of a file longer than that is still handed to the pool
    before the whole-file hashes read it: no serial hashing at the end of an archive."""
    entry, events, _pooled, hashed = _hand_off_order(repo, model_dir, monkeypatch)
    assert len(entry.chunks) > 4 + pipeline.START_AHEAD_CHUNKS + 2
    last = hashed[-1]
    assert events.index(("pool", last)) < events.index(("hash", last))


def test_the_start_read_ahead_is_at_most_the_files_window(repo, model_dir, monkeypatch):
    """Files archived at once share the pool's window (each gets a part of it): a file's read
    ahead at its start is at most its own window, so chunks held stay a few per core."""
    from concurrent.futures import ThreadPoolExecutor

    from archiver import parallel
    from archiver.progress import Progress

    seen: list[tuple[int, int]] = []
    real = parallel.ordered_map

    def spy(pool, fn, items, window, start_ahead=0):
        seen.append((window, start_ahead))
        return real(pool, fn, items, window, start_ahead)

    monkeypatch.setattr(pipeline, "ordered_map", spy)
    [src] = [s for s in scan([model_dir / "model.safetensors"])]
    writer = pipeline._ChunkWriter(repo, pipeline._Stats())
    with ThreadPoolExecutor(4) as pool:
        for window in (2, 4, 16):
            pipeline._archive_file(src, pool, writer, SMALL, window, Progress())
    assert seen == [(2, 2), (4, 4), (16, pipeline.START_AHEAD_CHUNKS)]


@pytest.mark.packs
def test_a_resume_whose_redone_files_sit_in_an_unwritten_pack_commits(tmp_path, home, monkeypatch, store_url):
    """A run whose later packs failed to be written (or that was killed before writing them)
    leaves a journal of which some files are resumable. The next run resumes those and
    archives the others again, their small chunks into a pack written at the commit: the
    resumed files' check (check_chunks_stored, chunks this process did not save) must not
    take the redone files' chunks, still in that open pack, for missing ones. It did, and
    every re-run failed the same way ("... is missing from the store; nothing was recorded,
    re-run")."""
    from archiver import api, packs
    from archiver.errors import StoreError
    from tests.helpers import run_cli
    src = tmp_path / "src" / "many"
    src.mkdir(parents=True)
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(20_000 + i))
    clean = api.archive([src], name="m", store=str(tmp_path / "clean"))
    store = store_url
    real = Repository._write_pack
    calls = []

    def half_fail(self, *a, **k):
        calls.append(1)
        if len(calls) > 3:
            raise StoreError("disk full (simulated)")
        return real(self, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(packs, "pack_target", lambda stored_size: 1)  # a pack per chunk, written at once
        m.setattr(Repository, "_write_pack", half_fail)
        with pytest.raises(StoreError):
            api.archive([src], name="m", store=store)
    r = run_cli("--store", store, "archive", str(src), "--name", "m", "--json")
    assert r.code == 0, r.err
    assert r.json()["resumed_files"] == 3 and r.json()["id"] == clean.id
    dest = tmp_path / "dest"
    assert run_cli("--store", store, "restore", "m", str(dest)).code == 0
    assert all((dest / "many" / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())


@pytest.mark.packs
def test_a_small_file_repeated_in_a_later_batch_is_saved_once_from_a_pack_this_run_wrote(tmp_path, monkeypatch):
    """Small files go in batches whose catalog hints know nothing of this run's packs: a file
    whose bytes another batch already packed (the pack written mid-run, or still open) is
    deduplicated against this run's packs, not stored twice; verify and restore read it back."""
    from archiver import packs
    monkeypatch.setattr(packs, "PACK_TARGET", 16 << 10)  # several packs written while the run goes on
    src = tmp_path / "src"
    blobs = [os.urandom(900 + 13 * i) for i in range(40)]
    for i in range(80):  # file i and file i + 40 hold the same bytes, in different batches
        (src / f"d{i % 5}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 5}" / f"f{i:02d}").write_bytes(blobs[i % 40])
    settings = Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db")
    with Repository.open(settings, create=True) as repo:
        res = archive(repo, [src], name="m")
        assert res.files == 80 and res.chunks == 40 and res.new_chunks == 40
        assert len(RawStore(str(tmp_path / "store")).keys("packs/")) > 2
        assert verify(repo, [res.id], deep=True).ok
        restore(repo, res.id, tmp_path / "out")
        other = tmp_path / "other"  # the same bytes under other names, by the same process: no new chunk
        other.mkdir()
        for i, b in enumerate(blobs):
            (other / f"g{i}").write_bytes(b)
        again = archive(repo, [other], name="n")
        assert again.chunks == 40 and again.new_chunks == 0
    assert tree(tmp_path / "out" / "src") == tree(src)


def test_a_chunk_saved_by_two_threads_at_once_counts_as_new_once():
    """Two threads save the same new chunk at once: the one that packs it returns written
    after the other (which found it pending in the open pack: not written) was recorded.
    The chunk is new exactly once (a worker process's two run threads, files of the same
    bytes in two runs: new_chunks came out one short, now and then)."""
    import threading
    from archiver.chunking import RawChunk
    from archiver.repository import SavedChunk
    other_returned = threading.Event()

    class Repo:
        def save_chunk(self, h, data, width, **kw):  # type: ignore[no-untyped-def]
            if threading.current_thread().name == "packs-it":
                assert other_returned.wait(5)
                return SavedChunk(46, "zstd", True)
            return SavedChunk(46, "zstd", False)  # found pending in the open pack
    stats = pipeline._Stats()
    writer = pipeline._ChunkWriter(Repo(), stats)  # type: ignore[arg-type]
    rc = RawChunk(0, b"same 1", 1)
    first = threading.Thread(target=writer.save, args=(rc, "ab" * 32), name="packs-it")
    first.start()
    writer.save(rc, "ab" * 32)
    other_returned.set()
    first.join(10)
    assert (stats.new_chunks, stats.new_bytes, stats.repaired_chunks) == (1, 46, 0)
    assert writer.done["ab" * 32].written
    writer.save(rc, "ab" * 32)  # and once only
    assert (stats.new_chunks, stats.new_bytes) == (1, 46)


@pytest.mark.packs
def test_a_failure_recording_the_pack_rows_behind_fails_the_archive_in_one_line_and_a_sync_heals_it(
        tmp_path, home, monkeypatch):
    """An archive on worker processes records its packs' catalog rows behind (flush_packs_behind);
    recording them fails (a full disk under the catalog) after the manifest is in the store.
    The archive exits 1 with one line, the manifest stays out of the catalog; a `catalog sync`
    records it, deep verify passes, and the next archive takes it as its parent and reuses its
    files; the store's restore is byte for byte."""
    from manifests.catalog import Catalog
    from manifests.errors import CatalogError
    from tests.helpers import run_cli
    store = str(tmp_path / "store")
    src = tmp_path / "src" / "many"
    src.mkdir(parents=True)
    for i in range(200):  # enough small files for worker processes
        (src / f"f{i:03d}.txt").write_bytes(os.urandom(1500 + i))

    def full(self, packs):
        raise CatalogError(f"catalog {self.path}: disk full, nothing of this write was recorded")
    with monkeypatch.context() as m:
        m.setattr(Catalog, "record_packs_apart", full)
        r = run_cli("--store", store, "archive", str(src), "--name", "m", "--processes", "2")
    assert r.code == 1 and r.out == "" and "Traceback" not in r.err
    assert r.err.startswith("archiver: error: ") and "disk full" in r.err and r.err.count("\n") == 1
    from archiver import layout
    [stored] = [k[len(layout.MANIFESTS):-len(".json")] for k in RawStore(store).keys(layout.MANIFESTS)
                if k.endswith(".json")]
    assert run_cli("--store", store, "list", "--json").json() == []
    assert run_cli("--store", store, "catalog", "sync").code == 0
    assert [row["id"] for row in run_cli("--store", store, "list", "--json").json()] == [stored]
    assert run_cli("--store", store, "verify", "m", "--deep").code == 0
    (src / "new.txt").write_bytes(os.urandom(999))
    again = run_cli("--store", store, "archive", str(src), "--name", "m", "--processes", "2", "--json")
    assert again.code == 0, again.err
    assert again.json()["parent"] == stored and again.json()["files_reused"] == 200
    dest = tmp_path / "dest"
    assert run_cli("--store", store, "restore", "m", str(dest)).code == 0
    assert tree(dest / "many") == tree(src)
