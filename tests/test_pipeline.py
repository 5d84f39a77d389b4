"""archive() across formats: tensor-aware chunking and byte-grouped codecs really reach
the store, results are reported accurately, and everything restores byte-identical."""
from __future__ import annotations

import os
import time

import blake3
import pytest

from archiver import pipeline
from archiver.chunking import ChunkPolicy
from archiver.errors import SourceChangedError, UsageError
from archiver.pipeline import archive
from archiver.repository import Repository
from archiver.scan import open_source, scan
from archiver.settings import Settings
from archiver.restorer import restore
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

    def scan_then_swap(paths):
        out = real(paths)
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
