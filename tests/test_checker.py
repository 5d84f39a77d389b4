"""verify semantics through the Python API (archiver.verify) and its VerifyReport: what
shallow, deep and sampled runs read and count, and how each kind of damage is reported
(kind, manifest, file, byte range, chunk). Mirrors archiver/checker.py; the CLI flows and
restore refusals are in test_e2e.py.

Damage is done directly on the local store directory, whose layout is documented:
store.json, chunks/<h[0:2]>/<h>, manifests/<id>.json, signatures/<id>/<fingerprint>.json."""
from __future__ import annotations

import dataclasses
import json
import math
import random
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import archiver
from archiver import checker
from archiver.api import open_repository
from archiver.errors import ArchiverError, InvalidOptionError, UsageError
from archiver.progress import Progress
from archiver.repository import Repository
from archiver.settings import Settings
from tests.helpers import RawStore, make_checkpoint
from tests.test_repository import file_entry, save

FRACTIONS = (0.5, 0.1, 0.01, 1.0)


def chunk_key(h: str) -> str:
    return f"chunks/{h[:2]}/{h}"


def manifest_key(mid: str) -> str:
    return f"manifests/{mid}.json"


def flip_at(pos: int):
    """Same-size damage: one byte inverted at `pos` (negative counts from the end)."""
    def fn(b: bytes) -> bytes:
        i = pos % len(b)
        return b[:i] + bytes([b[i] ^ 0xFF]) + b[i + 1:]
    return fn


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    for var in ("ARCHIVER_STORE", "ARCHIVER_CATALOG"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A checkpoint with 11 unique chunks in 12 chunk references over 9 files:
    model.safetensors is 5 chunks (header, two bf16 tensors, two fp32 tensors; codecs zstd
    and bg2), config_copy.json repeats config.json's bytes (one chunk, two files), four
    small random files are one raw chunk each, and empty.txt has no chunk."""
    root = make_checkpoint(tmp_path_factory.mktemp("src") / "ckpt", layers=2, dim=512)
    shutil.copyfile(root / "config.json", root / "config_copy.json")
    extra = root / "extra"
    extra.mkdir()
    for i in range(4):
        (extra / f"part{i}.bin").write_bytes(random.Random(i).randbytes(3000 + i))
    return root


@dataclass
class Archived:
    store: str
    catalog: Path
    id: str
    manifest: object  # archiver's Manifest, as returned by archiver.show
    raw: RawStore

    def verify(self, refs=None, **kw) -> archiver.VerifyReport:
        refs = [self.id] if refs is None else refs
        return archiver.verify(refs, store=self.store, catalog=self.catalog, **kw)

    def archive(self, paths, name, **kw):
        return archiver.archive(paths, name=name, store=self.store, catalog=self.catalog, **kw)

    def show(self, ref):
        return archiver.show(ref, store=self.store, catalog=self.catalog)

    # facts about the manifest, computed from its entries
    def refs(self, m=None) -> list[tuple[str, object]]:
        m = m or self.manifest
        return [(e.path, c) for e in m.entries if e.type == "file" for c in e.chunks]

    def unique(self, m=None) -> dict[str, object]:
        return {c.hash: c for _, c in self.refs(m)}

    def paths_of(self, h: str, m=None) -> set[str]:
        return {p for p, c in self.refs(m) if c.hash == h}

    def files(self, m=None) -> list:
        return [e for e in (m or self.manifest).entries if e.type == "file"]

    def chunk_where(self, pred) -> object:
        return next(c for p, c in self.refs() if pred(p, c))


@pytest.fixture
def arch(tmp_path, source) -> Archived:
    store, catalog = str(tmp_path / "store"), tmp_path / "catalog.db"
    res = archiver.archive([source], name="m", label="v1", store=store, catalog=catalog)
    mid, m = archiver.show(res.id, store=store, catalog=catalog)
    assert mid == res.id
    return Archived(store, catalog, res.id, m, RawStore(store))


def test_fixture_shape(arch, source):
    """The counts the other tests rely on (so a chunking change fails here, clearly)."""
    assert len(arch.files()) == 9
    assert len(arch.refs()) == 12 and len(arch.unique()) == 11
    assert {c.codec for _, c in arch.refs()} >= {"raw", "zstd", "bg2"}
    assert any(c.offset > 0 for _, c in arch.refs())
    assert sorted(k for k in arch.raw.keys("chunks")) == sorted(chunk_key(h) for h in arch.unique())


# -- what each mode reads -------------------------------------------------------------------

def test_shallow_lists_every_unique_chunk_and_reads_none(arch):
    rep = arch.verify()
    assert rep.ok and rep.problems == []
    assert rep.mode == "shallow" and rep.manifests == [arch.id]
    assert rep.chunks_checked == len(arch.unique()) == 11  # the shared chunk counts once
    assert rep.chunks_read == 0 and rep.bytes_read == 0 and rep.files_hashed == 0


def test_deep_reads_every_chunk_and_hashes_every_file(arch, source):
    rep = arch.verify(deep=True)
    assert rep.ok and rep.problems == [] and rep.mode == "deep"
    copy = (source / "config_copy.json").stat().st_size
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    # config_copy.json is the same entry as config.json (chunk list and whole-file hashes):
    # proved once in the run, accepted for the second file without reading it again
    assert rep.files_hashed == len(arch.files()) == 9  # the empty file is hashed too
    assert rep.files_proven_earlier == 1  # of those, not read again
    assert rep.bytes_read == total - copy
    assert rep.chunks_checked == len(arch.unique())
    assert rep.chunks_read == len(arch.unique()) == 11


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_sample_reads_ceil_fraction_of_unique_chunks(arch, fraction):
    rep = arch.verify(sample=fraction)
    assert rep.ok and rep.problems == []
    assert rep.mode == f"sample:{fraction:g}"
    want = math.ceil(fraction * len(arch.unique()))
    assert rep.chunks_read == want == {0.5: 6, 0.1: 2, 0.01: 1, 1.0: 11}[fraction]
    assert rep.chunks_checked == len(arch.unique())  # the shallow pass still lists everything
    assert rep.files_hashed == 0
    if fraction == 1.0:
        assert rep.bytes_read == sum(c.length for c in arch.unique().values())
    else:
        assert 0 < rep.bytes_read < sum(c.length for c in arch.unique().values())


def test_repeated_samples_rotate_through_all_chunks_stalest_first(arch):
    """Damage every chunk (same size, so shallow passes): each sampled run then reports
    exactly the chunks it read, which shows which ones it picked."""
    for h in arch.unique():
        arch.raw.mutate(chunk_key(h), flip_at(len(arch.raw.read(chunk_key(h))) // 2))
    assert arch.verify().ok

    def sampled() -> set[str]:
        rep = arch.verify(sample=0.5)
        assert not rep.ok and {p.kind for p in rep.problems} == {"corrupt-chunk"}
        for p in rep.problems:
            assert p.manifest == arch.id and p.path in arch.paths_of(p.chunk)
        hit = {p.chunk for p in rep.problems}
        assert rep.chunks_read == len(hit)
        return hit

    everything = set(arch.unique())
    first, second, third = sampled(), sampled(), sampled()
    assert len(first) == len(second) == len(third) == 6  # ceil(0.5 * 11) each time
    # run 2 takes the 5 chunks never verified, then one of the 6 verified in run 1
    assert everything - first <= second and len(second & first) == 1
    assert first | second == everything
    # run 3 takes the 5 verified only in run 1 (the stalest), then one from run 2
    assert first - second <= third


# -- damage -------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["shared", "inner"])
def test_deleted_chunk_is_missing_chunk_in_shallow(arch, which):
    if which == "shared":  # one object, two files
        c = arch.chunk_where(lambda p, c: p.endswith("config_copy.json"))
    else:  # a chunk in the middle of model.safetensors
        c = arch.chunk_where(lambda p, c: c.offset > 0 and c.codec == "bg2")
    arch.raw.delete(chunk_key(c.hash))
    rep = arch.verify()
    assert not rep.ok
    assert rep.chunks_read == 0
    assert {p.kind for p in rep.problems} == {"missing-chunk"}
    assert {p.path for p in rep.problems} == arch.paths_of(c.hash) == (
        {"ckpt/config.json", "ckpt/config_copy.json"} if which == "shared" else {"ckpt/model.safetensors"})
    for p in rep.problems:
        assert (p.manifest, p.chunk, p.offset, p.length) == (arch.id, c.hash, c.offset, c.length)
        assert "missing" in p.detail
    assert len(rep.problems) == len(arch.paths_of(c.hash))

    deep = arch.verify(deep=True)
    assert {p.kind for p in deep.problems} == {"missing-chunk"}
    assert {(p.path, p.chunk, p.offset) for p in deep.problems} == {
        (path, c.hash, c.offset) for path in arch.paths_of(c.hash)}
    # a file with a chunk missing is not whole-file hashed; every other file is
    assert deep.files_hashed == len(arch.files()) - len(arch.paths_of(c.hash))


@pytest.mark.parametrize("mode", [{"deep": True}, {"sample": 1.0}])
def test_missing_chunk_reported_once_per_reference(arch, mode):
    c = arch.chunk_where(lambda p, c: p.endswith("vocab.txt"))
    arch.raw.delete(chunk_key(c.hash))
    rep = arch.verify(**mode)
    assert {(p.kind, p.path, p.chunk) for p in rep.problems} == {
        ("missing-chunk", "ckpt/tokenizer/vocab.txt", c.hash)}
    assert len(rep.problems) == 1


@pytest.mark.parametrize("codec", ["raw", "zstd", "bg2"])
@pytest.mark.parametrize("pos", [0, "middle", -1])
def test_flipped_byte_passes_shallow_fails_deep(arch, codec, pos):
    c = arch.chunk_where(lambda p, c: c.codec == codec)
    key = chunk_key(c.hash)
    arch.raw.mutate(key, flip_at(len(arch.raw.read(key)) // 2 if pos == "middle" else pos))
    assert len(arch.raw.read(key)) == c.stored_size

    shallow = arch.verify()
    assert shallow.ok and shallow.problems == []  # same size: shallow cannot see it

    deep = arch.verify(deep=True)
    assert not deep.ok
    assert {p.kind for p in deep.problems} == {"corrupt-chunk"}  # not a vaguer file-hash problem
    assert {p.path for p in deep.problems} == arch.paths_of(c.hash)
    for p in deep.problems:
        assert (p.manifest, p.chunk, p.offset, p.length) == (arch.id, c.hash, c.offset, c.length)
    assert deep.files_hashed == len(arch.files()) - len(arch.paths_of(c.hash))


@pytest.mark.parametrize("change", [-1, +1])
def test_wrong_size_chunk_is_size_mismatch_in_shallow(arch, change):
    c = arch.chunk_where(lambda p, c: p.endswith("vocab.txt"))
    key = chunk_key(c.hash)
    arch.raw.mutate(key, lambda b: b[:-1] if change < 0 else b + b"\0")
    rep = arch.verify()
    assert not rep.ok and rep.chunks_read == 0
    (p,) = rep.problems
    assert (p.kind, p.manifest, p.path, p.chunk, p.offset, p.length) == (
        "size-mismatch", arch.id, "ckpt/tokenizer/vocab.txt", c.hash, 0, c.length)
    assert str(c.stored_size + change) in p.detail and str(c.stored_size) in p.detail
    deep = arch.verify(deep=True)
    assert {p.kind for p in deep.problems} == {"size-mismatch", "corrupt-chunk"}
    assert {p.chunk for p in deep.problems} == {c.hash}


@pytest.mark.parametrize("damage", ["deleted", "altered"])
def test_damaged_manifest_object_is_a_manifest_problem(arch, damage):
    key = manifest_key(arch.id)
    if damage == "deleted":
        arch.raw.delete(key)
    else:  # still valid JSON, but no longer the bytes that hash to the id
        arch.raw.mutate(key, lambda b: json.dumps(json.loads(b), indent=1).encode())
    for rep in (arch.verify(), arch.verify(all_archives=True)):
        assert not rep.ok
        (p,) = rep.problems
        assert p.kind == "manifest" and p.manifest == arch.id and p.path is None and p.chunk is None
        assert ("missing" if damage == "deleted" else "differs") in p.detail
        # the catalog's copy still names the chunks, and they are all still checked
        assert rep.chunks_checked == len(arch.unique())


def test_verify_all_covers_every_archive(arch, source, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "own.bin").write_bytes(random.Random(99).randbytes(5000))
    shutil.copyfile(source / "tokenizer" / "vocab.txt", other / "vocab.txt")  # shared with the first archive
    second = arch.archive([other], name="other").id
    _, m2 = arch.show(second)
    union = set(arch.unique()) | set(arch.unique(m2))
    assert len(union) == len(arch.unique()) + 1

    rep = arch.verify([], all_archives=True)
    assert rep.ok and rep.manifests == [arch.id, second]
    assert rep.chunks_checked == len(union)
    deep = arch.verify([], all_archives=True, deep=True)
    assert deep.ok and deep.files_hashed == len(arch.files()) + len(arch.files(m2))

    own = arch.unique(m2).keys() - arch.unique().keys()
    (h,) = own
    arch.raw.delete(chunk_key(h))
    rep = arch.verify([], all_archives=True)
    assert not rep.ok
    assert [(p.kind, p.manifest, p.path, p.chunk) for p in rep.problems] == [
        ("missing-chunk", second, "other/own.bin", h)]
    assert arch.verify([arch.id]).ok


def test_refs_resolve_and_deduplicate(arch):
    rep = arch.verify([arch.id, arch.id[:12], "m", "m@v1"])
    assert rep.ok and rep.manifests == [arch.id]
    assert rep.chunks_checked == len(arch.unique())


@pytest.mark.parametrize("sample", [0, 0.0, -0.5, 1.5, float("nan")])
def test_sample_outside_unit_interval_is_usage_error(arch, sample):
    with pytest.raises(InvalidOptionError, match="sample") as ei:
        arch.verify(sample=sample)
    assert ei.value.option == "sample" and "--" not in str(ei.value)  # only the CLI words flags


def test_no_ref_and_unknown_ref_raise(arch):
    with pytest.raises(UsageError):
        arch.verify([])
    with pytest.raises(ArchiverError, match="nope"):
        arch.verify(["nope"])


# -- signatures -----------------------------------------------------------------------------

@pytest.fixture
def keys(tmp_path):
    priv, pub = archiver.keygen(tmp_path / "k1")
    _, other_pub = archiver.keygen(tmp_path / "k2")
    return priv, pub, other_pub


def _signature_keys(arch: Archived, mid: str) -> list[str]:
    return arch.raw.keys(f"signatures/{mid}")


def test_signed_archive_trusted_and_untrusted_keys(arch, source, keys):
    priv, pub, other_pub = keys
    mid = arch.archive([source], name="signed", sign_key=priv).id
    (sig_key,) = _signature_keys(arch, mid)
    assert sig_key.startswith(f"signatures/{mid}/") and sig_key.endswith(".json")

    assert arch.verify([mid]).ok
    assert arch.verify([mid], trust_keys=[str(pub)]).ok
    hex_key = pub.read_text().split()[-1]
    assert arch.verify([mid], trust_keys=[hex_key]).ok  # a hex key works like the file
    assert arch.verify([mid], trust_keys=[str(other_pub), str(pub)]).ok  # any one trusted signer suffices

    rep = arch.verify([mid], trust_keys=[str(other_pub)])
    assert not rep.ok
    (p,) = rep.problems
    assert p.kind == "signature" and p.manifest == mid and "trusted" in p.detail and p.path is None
    assert rep.chunks_checked == len(arch.unique())  # the data was still checked

    # an unsigned archive cannot satisfy a trust requirement
    rep = arch.verify([arch.id], trust_keys=[str(pub)])
    assert [(p.kind, p.manifest) for p in rep.problems] == [("signature", arch.id)]
    assert "not signed" in rep.problems[0].detail


def test_forged_or_replayed_signature_is_a_signature_problem(arch, source, keys):
    priv, pub, _ = keys
    mid = arch.archive([source], name="signed", sign_key=priv).id
    (sig_key,) = _signature_keys(arch, mid)
    good = arch.raw.read(sig_key)

    # replay: the valid signature of `mid` filed under another manifest
    fp = sig_key.rsplit("/", 1)[-1]
    arch.raw.write(f"signatures/{arch.id}/{fp}", good)
    rep = arch.verify([arch.id])
    assert [p.kind for p in rep.problems] == ["signature"] and "bad signature" in rep.problems[0].detail
    rep = arch.verify([arch.id], trust_keys=[str(pub)])
    assert {p.kind for p in rep.problems} == {"signature"} and len(rep.problems) == 2
    assert any("trusted" in p.detail for p in rep.problems)

    # forgery: one hex digit of the signature changed; reported even without trust keys
    obj = json.loads(good)
    s = obj["signature"]
    obj["signature"] = s[:10] + ("0" if s[10] != "0" else "1") + s[11:]
    arch.raw.write(sig_key, json.dumps(obj).encode())
    for trust in (None, [str(pub)]):
        rep = arch.verify([mid], trust_keys=trust)
        assert not rep.ok and {p.kind for p in rep.problems} == {"signature"}
        assert any("bad signature" in p.detail and fp[:-5] in p.detail for p in rep.problems)

    # garbage in the signature object
    arch.raw.write(sig_key, b"not json")
    rep = arch.verify([mid])
    assert [p.kind for p in rep.problems] == ["signature"] and sig_key in rep.problems[0].detail


# -- how problems read -----------------------------------------------------------------------

def test_problem_line_names_manifest_path_range_and_chunk(arch):
    c = arch.chunk_where(lambda p, c: c.offset > 0)
    (path,) = arch.paths_of(c.hash)
    arch.raw.delete(chunk_key(c.hash))
    arch.raw.delete(manifest_key(arch.id))
    rep = arch.verify()
    by_kind = {p.kind: p for p in rep.problems}
    assert set(by_kind) == {"missing-chunk", "manifest"}

    line = by_kind["missing-chunk"].line()
    assert line.startswith("missing-chunk: ")
    assert arch.id[:16] in line and path in line and c.hash in line
    assert f"bytes {c.offset}-{c.offset + c.length}" in line
    assert "\n" not in line

    line = by_kind["manifest"].line()
    assert line.startswith("manifest: ") and arch.id[:16] in line and "missing" in line


# -- deep verify once per chunk per run (many versions of one model) ------------------------

@pytest.fixture
def versions(arch, source, tmp_path) -> list[str]:
    """Four versions of the checkpoint under one name, only config.json changing."""
    src = tmp_path / "versions" / "ckpt"
    shutil.copytree(source, src)
    ids = [arch.id]
    for i in range(3):
        (src / "config.json").write_text(json.dumps({"version": i}))
        ids.append(arch.archive([src], name="m").id)
    return ids


def test_deep_verify_of_many_versions_reads_each_chunk_once(arch, versions):
    one = arch.verify([versions[0]], deep=True)
    rep = arch.verify([], all_archives=True, deep=True)
    assert rep.ok and rep.manifests == versions
    shown = [arch.show(v)[1] for v in versions]
    unique = set().union(*(arch.unique(m) for m in shown))
    assert rep.chunks_read == len(unique) == one.chunks_read + 3  # each version adds its config.json
    entries = [e for m in shown for e in arch.files(m)]
    assert rep.files_hashed == len(entries)  # every file of every version is proved ...
    distinct = {(e.size, e.blake3, e.sha256, e.chunks) for e in entries}
    assert rep.files_proven_earlier == len(entries) - len(distinct)  # ... most of them without a read


def test_damaged_chunk_shared_by_every_version_is_reported_for_each(arch, versions):
    c = arch.chunk_where(lambda p, c: p.endswith("model.safetensors") and c.codec == "bg2")
    arch.raw.mutate(chunk_key(c.hash), flip_at(-1))
    rep = arch.verify([], all_archives=True, deep=True)
    assert not rep.ok
    assert rep.chunks_read == len(set().union(*(arch.unique(arch.show(v)[1]) for v in versions)))  # read once
    assert sorted((p.manifest, p.kind, p.path, p.chunk, p.offset) for p in rep.problems) == sorted(
        (v, "corrupt-chunk", "ckpt/model.safetensors", c.hash, c.offset) for v in versions)


def test_file_hash_mismatch_is_reported_for_every_version_naming_the_entry(arch, versions, monkeypatch):
    """A whole-file hash that fails (chunks all intact) is a file-hash problem in each version."""
    from archiver import digests
    from archiver.digests import FileDigest
    real, real_one = FileDigest.matches, digests.sha256_matches

    def mismatched(self, e):  # the whole-file check itself, whichever path (batch, stream) proves the file
        return real(self, e) and not e.path.endswith("vocab.txt")
    monkeypatch.setattr(FileDigest, "matches", mismatched)
    monkeypatch.setattr(digests, "sha256_matches", lambda data, e: real_one(data, e) and not e.path.endswith("vocab.txt"))
    rep = arch.verify([], all_archives=True, deep=True)
    assert sorted((p.manifest, p.kind, p.path) for p in rep.problems) == sorted(
        (v, "file-hash", "ckpt/tokenizer/vocab.txt") for v in versions)


def _archived_small_files(tmp_path, dirs: int, per_dir: int) -> tuple[str, Path, str]:
    """(store, catalog, id) of an archive of `dirs` x `per_dir` small random files of ~1 KB."""
    src = tmp_path / "small"
    for d in range(dirs):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(per_dir):
            (src / f"d{d}" / f"f{i}.bin").write_bytes(random.Random(d * 100 + i).randbytes(1000 + i))
    store, catalog = str(tmp_path / "store"), tmp_path / "catalog.db"
    return store, catalog, archiver.archive([src], name="small", store=store, catalog=catalog).id


def test_many_small_files_are_deep_verified_across_files(tmp_path):
    """Small files are read in parallel across files; damage is still named per file."""
    store, catalog, mid = _archived_small_files(tmp_path, dirs=5, per_dir=40)
    rep = archiver.verify([mid], deep=True, store=store, catalog=catalog)
    assert rep.ok and rep.files_hashed == 200 and rep.chunks_read == 200
    _, m = archiver.show(mid, store=store, catalog=catalog)
    bad = [e for e in m.entries if e.type == "file"][::37]
    raw = RawStore(store)
    for e in bad:
        raw.mutate(chunk_key(e.chunks[0].hash), flip_at(0))
    rep = archiver.verify([mid], deep=True, store=store, catalog=catalog)
    assert sorted(p.path for p in rep.problems) == sorted(e.path for e in bad)
    assert rep.files_hashed == 200 - len(bad)


def test_small_files_are_proved_on_no_more_threads_than_cores(tmp_path, monkeypatch):
    """The small-file batches' pool is capped at the cores (GIL-bound work: more threads only
    hand the GIL around), whatever `workers` says; never fewer than one thread; the findings
    (damage named per file) are the same on one thread as on several."""
    assert checker.small_file_workers(1) == 1
    monkeypatch.setattr(checker.os, "cpu_count", lambda: None)
    assert checker.small_file_workers(6) == 1
    monkeypatch.setattr(checker.os, "cpu_count", lambda: 2)
    assert [checker.small_file_workers(n) for n in (1, 2, 6)] == [1, 2, 2]
    store, catalog, mid = _archived_small_files(tmp_path, dirs=4, per_dir=60)
    threads: set[str] = set()
    real = checker._prove_batch

    def prove_batch(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return real(*args, **kwargs)
    monkeypatch.setattr(checker, "_prove_batch", prove_batch)

    def deep_verify() -> checker.VerifyReport:
        with open_repository(store, catalog) as repo:
            return checker.verify(repo, [mid], deep=True, workers=6)
    rep = deep_verify()
    assert rep.ok and rep.files_hashed == 240 and rep.chunks_read == 240
    assert threads and len(threads) <= 2 and all(t.startswith("verify-files") for t in threads), threads
    _, m = archiver.show(mid, store=store, catalog=catalog)
    bad = [e for e in m.entries if e.type == "file"][::41]
    for e in bad:
        RawStore(store).mutate(chunk_key(e.chunks[0].hash), flip_at(0))
    monkeypatch.setattr(checker.os, "cpu_count", lambda: 1)
    one = deep_verify()
    monkeypatch.setattr(checker.os, "cpu_count", lambda: 4)
    four = deep_verify()
    assert sorted(p.path for p in one.problems) == sorted(e.path for e in bad)
    assert [p.line() for p in one.problems] == [p.line() for p in four.problems]
    assert one.files_hashed == four.files_hashed == 240 - len(bad)


def test_chain_checks_within_one_run_match_the_store_fetching_ones(arch, source):
    """A parent verified in the same run (its store copy proved) is not fetched again; the
    chain findings are the same as verifying the child alone."""
    from manifests.model import Manifest
    other = arch.archive([source], name="x").id
    _, m = arch.show(other)
    forged = Manifest(name="m", entries=m.entries, parent=other)
    arch.raw.write(manifest_key(forged.id), forged.canonical_json())
    alone = [p for p in arch.verify([forged.id]).problems if p.kind == "chain"]
    both = [p for p in arch.verify([other, forged.id]).problems if p.kind == "chain"]
    assert [(p.manifest, p.detail) for p in both] == [(p.manifest, p.detail) for p in alone]
    assert [p.detail for p in alone] == [f"broken chain: parent {other[:16]} is named 'x', not 'm'"]
    # a parent whose store copy is gone: the child's chain is checked against the store
    child = arch.archive([source], name="x").id
    arch.raw.delete(manifest_key(other))
    rep = arch.verify([other, child])
    assert {(p.manifest, p.kind) for p in rep.problems} == {(other, "manifest"), (child, "chain")}


def test_a_one_chunk_file_is_proved_as_the_stream_proves_it(tmp_path):
    """The one-chunk shortcut of a deep read finds what the streamed read finds: intact,
    a wrong SHA-256 or BLAKE3 on record, a damaged chunk, a missing one."""

    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as repo:
        data, other = os.urandom(5000), os.urandom(700)
        e = file_entry("a", [data], [save(repo, data)])
        gone = file_entry("b", [other], [save(repo, other)])
        (tmp_path / "store" / chunk_key(gone.chunks[0].hash)).unlink()
        cases = [e, dataclasses.replace(e, sha256="0" * 64), dataclasses.replace(e, blake3="0" * 64), gone]
        flipped = dataclasses.replace(e, chunks=(dataclasses.replace(e.chunks[0], hash="1" * 64),))
        with ThreadPoolExecutor(2) as pool:
            for x in cases + [flipped]:
                fast = checker._prove_one_chunk(repo, x, Progress())
                slow = checker._prove_streamed(repo, x, pool, 2, Progress())
                assert (fast.chunks, fast.cold, fast.bytes_read, fast.hashed, fast.hash_mismatch) == \
                    (slow.chunks, slow.cold, slow.bytes_read, slow.hashed, slow.hash_mismatch)
                assert [(c, str(err)) for c, err in fast.damaged] == [(c, str(err)) for c, err in slow.damaged]
        proofs = [checker._prove_one_chunk(repo, x, Progress()) for x in cases]
    assert [(p.hashed, p.hash_mismatch, len(p.damaged)) for p in proofs] == \
        [(True, False, 0), (True, True, 0), (True, True, 0), (False, False, 1)]


def test_a_batch_proves_each_file_as_the_stream_proves_it(tmp_path):
    """`_prove_batch` (one-chunk files read together, an intact one marked INTACT_ONE rather
    than given a proof object of its own) finds for each file what the streamed read finds:
    intact, a wrong SHA-256 or BLAKE3 on record, a damaged chunk, a missing one, no chunk;
    and progress advances by the same bytes."""
    import hashlib

    import blake3
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as repo:
        data, other = os.urandom(5000), os.urandom(700)
        e = file_entry("a", [data], [save(repo, data)])
        gone = file_entry("b", [other], [save(repo, other)])
        (tmp_path / "store" / chunk_key(gone.chunks[0].hash)).unlink()
        empty = dataclasses.replace(e, size=0, chunks=(), blake3=blake3.blake3().hexdigest(),
                                    sha256=hashlib.sha256().hexdigest())
        cases = [e, dataclasses.replace(e, sha256="0" * 64), dataclasses.replace(e, blake3="0" * 64), gone, empty, e]
        with ThreadPoolExecutor(2) as pool:
            fast_progress, slow_progress = Progress(), Progress()
            done = {"fast": 0, "slow": 0}
            fast_progress.advance = lambda n: done.__setitem__("fast", done["fast"] + n)
            slow_progress.advance = lambda n: done.__setitem__("slow", done["slow"] + n)
            batch = checker._prove_batch(repo, cases, pool, fast_progress)
            slow = [checker._prove_streamed(repo, x, pool, 2, slow_progress) for x in cases]
    assert [p is checker.INTACT_ONE for p in batch] == [True, False, False, False, False, True]
    for x, fast, want in zip(cases, batch, slow):
        if fast is checker.INTACT_ONE:  # what it stands for: the one chunk read intact, the file proved
            fast = checker.FileProof([(x.chunks[0].hash, True)], bytes_read=x.chunks[0].length, hashed=True)
        assert (fast.chunks, fast.cold, fast.bytes_read, fast.hashed, fast.hash_mismatch) == \
            (want.chunks, want.cold, want.bytes_read, want.hashed, want.hash_mismatch)
        assert [(c, str(err)) for c, err in fast.damaged] == [(c, str(err)) for c, err in want.damaged]
    assert done["fast"] == done["slow"] == 3 * 5000 + 5000
