"""Issue 14, item 4: dedup never builds on rot.

Every chunk an archive depends on is proved intact (read back, decoded, compared with the
source) before the manifest commits; a damaged one is repaired from the source bytes
(local: the damaged object moved to quarantine; S3: copied to quarantine, then replaced
only if its ETag is unchanged), so the archive succeeds and the store heals.
`--trust-verified-within` trusts chunks a deep verify proved recently instead."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import blake3
import pytest

from archiver import layout
from archiver.codecs import Codec
from archiver.digests import FileDigest
from archiver.errors import CorruptChunkError, InvalidOptionError, ObjectMissingError
from archiver.pipeline import archive as pipeline_archive
from archiver.repository import Repository
from archiver.settings import Settings
from archiver.stores import open_store
from archiver.stores.base import ObjectVersion
from manifests.catalog import Catalog
from manifests.model import ChunkRef, Entry, Manifest
from tests.helpers import RawStore, make_checkpoint, run_cli, tree

# Every backend gets the damages whose handling differs by store (a same-size flip, a size
# change, an object too large to read); the rest exercise the backend-independent proof.
ALL_BACKENDS = ["flip", "truncate", "inflate"]
LOCAL_ONLY = ["trailing", "swap", "garbage"]


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)


def cli_archive(ckpt: Path, *extra: str) -> dict:
    r = run_cli("archive", str(ckpt), "--name", "model", *extra, "--json")
    assert r.code == 0, r.err
    return r.json()


def chunks_of(mid: str) -> list[tuple[str, str, int, int]]:
    """(hash, file path, length, stored size) of every chunk of a manifest, via show --json."""
    r = run_cli("show", mid, "--json")
    assert r.code == 0, r.err
    return [(h, e["path"], length, stored) for e in r.json()["manifest"]["entries"]
            for _, length, h, stored, _ in e.get("chunks", [])]


def victim_and_other(mid: str) -> list[tuple[str, str, int, int]]:
    """The largest chunk of the weights file, then the largest chunk of another file."""
    chunks = sorted(chunks_of(mid), key=lambda c: -c[2])
    victim = next(c for c in chunks if c[1].endswith("model.safetensors"))
    return [victim, next(c for c in chunks if c[1] != victim[1])]


def damage(raw: RawStore, victim: str, other: str, how: str) -> bytes:
    """Damage chunk object `victim` the way disks and hostile stores do; returns the bytes left there."""
    key = layout.chunk(victim)
    good = raw.read(key)
    mid = len(good) // 2
    bad = {
        "flip": lambda: good[:mid] + bytes([good[mid] ^ 0x01]) + good[mid + 1:],  # same size
        "truncate": lambda: good[:-7],
        "trailing": lambda: good + b"\0junk",
        "swap": lambda: raw.read(layout.chunk(other)),  # another chunk's valid object
        "inflate": lambda: good + bytes(3 * len(good) + 65536),  # larger than any encoding: never read whole
        "garbage": lambda: os.urandom(len(good)),  # same size, undecodable
    }[how]()
    raw.write(key, bad)
    return bad


def quarantined(raw: RawStore, h: str) -> list[bytes]:
    return [raw.read(k) for k in raw.keys(layout.QUARANTINE) if k.startswith(layout.quarantined(layout.chunk(h), ""))]


@pytest.mark.parametrize("how", ALL_BACKENDS)
def test_rearchive_onto_damaged_chunk_repairs_it(env, ckpt, tmp_path, how):
    """Re-archiving an intact source onto a damaged chunk exits 0, repairs the chunk (the
    damaged bytes kept in quarantine), and both archives verify deeply and restore."""
    rearchive_onto_damage(env, ckpt, tmp_path, how)


@pytest.mark.parametrize("how", LOCAL_ONLY)
def test_rearchive_onto_other_damage_repairs_it(tmp_path, monkeypatch, ckpt, how):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARCHIVER_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("ARCHIVER_CATALOG", raising=False)
    rearchive_onto_damage(str(tmp_path / "store"), ckpt, tmp_path, how)


def rearchive_onto_damage(url: str, ckpt: Path, tmp_path: Path, how: str) -> None:
    first = cli_archive(ckpt)
    weights = victim_and_other(first["id"])
    victim, other = weights[0][0], weights[1][0]
    raw = RawStore(url)
    bad = damage(raw, victim, other, how)
    assert run_cli("verify", first["id"], "--deep", "--json").code == 1  # the damage is real

    again = cli_archive(ckpt)
    assert again["repaired_chunks"] == 1 and again["new_chunks"] == 0 and again["new_bytes_stored"] == 0
    assert quarantined(raw, victim) == [bad]
    for mid in (first["id"], again["id"]):
        v = run_cli("verify", mid, "--deep", "--json")
        assert v.code == 0, v.out
        dest = tmp_path / f"out-{mid[:8]}"
        r = run_cli("restore", mid, str(dest))
        assert r.code == 0, r.err
        assert tree(dest / "ckpt") == tree(ckpt)
    # the third archive finds nothing left to repair
    assert cli_archive(ckpt)["repaired_chunks"] == 0


def test_repair_is_audited_and_reported_in_words(env, ckpt):
    first = cli_archive(ckpt)
    victim, path, _, _ = max(chunks_of(first["id"]), key=lambda c: c[2])
    other = next(c[0] for c in chunks_of(first["id"]) if c[0] != victim)
    damage(RawStore(env), victim, other, "flip")
    r = run_cli("archive", str(ckpt), "--name", "model")
    assert r.code == 0 and "repaired 1 damaged chunk" in r.err and "Traceback" not in r.err
    with Repository.open(Settings.resolve()) as repo:
        repairs = [a for a in repo.audit_log() if a.event == "repair"]
        assert len(repairs) == 1 and repairs[0].ok
        d = repairs[0].details
        assert d["chunk"] == victim and d["quarantined"].startswith(layout.QUARANTINE)
        archives = [a for a in repo.audit_log() if a.event == "archive"]
        assert archives[-1].details["repaired_chunks"] == 1


@pytest.mark.parametrize("trust", [False, True])
def test_hostile_store_and_rebuilt_catalog_cannot_poison_a_genuine_archive(env, ckpt, tmp_path, trust):
    """An attacker who controls the store plants another chunk's valid object under a genuine
    weight chunk's key, plus a manifest that records it at that size, and deletes the genuine
    manifest; after `catalog rebuild` the catalog vouches for the planted object. The next
    archive of the genuine weights must repair it, not trust it (with or without
    --trust-verified-within: a rebuilt catalog holds no verification record)."""
    first = cli_archive(ckpt)
    weights = victim_and_other(first["id"])
    victim, other = weights[0][0], weights[1][0]
    raw = RawStore(env)
    planted = raw.read(layout.chunk(other))
    raw.write(layout.chunk(victim), planted)
    other_len = weights[1][2]
    d = FileDigest()
    d.update(bytes(other_len))
    evil = Manifest(name="evil", entries=(Entry(
        path="w.bin", type="file", mode=0o644, size=other_len, blake3=d.blake3, sha256=d.sha256,
        chunks=(ChunkRef(0, other_len, victim, len(planted), "raw"),)),))
    raw.write(layout.manifest(evil.id), evil.canonical_json())
    raw.delete(layout.manifest(first["id"]))
    for f in (tmp_path / "home").rglob("*.db*"):
        f.unlink()
    assert run_cli("catalog", "rebuild").code == 0
    with Repository.open(Settings.resolve()) as repo:
        assert repo._catalog.known_chunk(victim)[0] == len(planted)  # the catalog now vouches for it

    res = cli_archive(ckpt, *(["--trust-verified-within", "30d"] if trust else []))
    assert res["repaired_chunks"] == 1
    assert raw.read(layout.chunk(victim)) != planted
    assert run_cli("verify", res["id"], "--deep").code == 0
    dest = tmp_path / "out"
    assert run_cli("restore", res["id"], str(dest)).code == 0 and tree(dest / "ckpt") == tree(ckpt)


# -- the trust window ----------------------------------------------------------------------

class CountingStore:
    """A store that counts object reads of chunk keys (GET, or a versioned GET)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.chunk_reads = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _count(self, key: str) -> None:
        if layout.chunk_hash(key):
            self.chunk_reads += 1

    def get(self, key, max_size=None):
        self._count(key)
        return self.inner.get(key, max_size=max_size)

    def get_versioned(self, key, max_size):
        self._count(key)
        return self.inner.get_versioned(key, max_size)


def open_counting(url: str, catalog: Path) -> tuple[Repository, CountingStore]:
    store = CountingStore(open_store(url, create=True))
    return Repository(store, Catalog(catalog, store.url)), store


def test_trust_window_skips_reads_only_for_recently_verified_unchanged_chunks(store_url, tmp_path, ckpt):
    repo, store = open_counting(store_url, tmp_path / "cat.db")
    with repo:
        first = pipeline_archive(repo, [ckpt], name="m")
        n = first.chunks
        # reread: these runs read the source, so each stored chunk meets save_chunk's proof
        # (the files cache's reuse of unchanged files is proved the same way: test_filescache.py)
        store.chunk_reads = 0
        pipeline_archive(repo, [ckpt], name="m", trust_verified_within=3600, reread=True)
        assert store.chunk_reads == n  # never verified: every chunk is proved
        store.chunk_reads = 0
        pipeline_archive(repo, [ckpt], name="m", reread=True)
        assert store.chunk_reads == n  # the default proves every chunk

        hashes = list(repo.load_manifest(first.id).unique_chunks())
        repo.record_chunk_checks((h, True) for h in hashes)  # what verify --deep records
        store.chunk_reads = 0
        trusted = pipeline_archive(repo, [ckpt], name="m", trust_verified_within=3600, reread=True)
        assert store.chunk_reads == 0 and trusted.repaired_chunks == 0

        # outside the window, or last found bad: proved again
        repo._catalog.mark_verified([(hashes[0], True)], at=0.0)
        repo.record_chunk_checks([(hashes[1], False)])
        store.chunk_reads = 0
        pipeline_archive(repo, [ckpt], name="m", trust_verified_within=3600, reread=True)
        assert store.chunk_reads == 2

        # a verified chunk whose stored size changed since is not trusted: proved and repaired
        raw = RawStore(store_url)
        h = max(hashes[2:], key=lambda x: len(raw.read(layout.chunk(x))))
        raw.mutate(layout.chunk(h), lambda b: b[:-3])
        store.chunk_reads = 0
        res = pipeline_archive(repo, [ckpt], name="m", trust_verified_within=3600, reread=True)
        assert res.repaired_chunks == 1 and store.chunk_reads == 2 + 2  # the repair is read back and proved


def test_trust_window_documented_limit(tmp_path, ckpt):
    """What the option gives up, pinned down: a same-size flip after the last verify inside
    the window is trusted (the default would have repaired it)."""
    repo, store = open_counting(str(tmp_path / "store"), tmp_path / "cat.db")
    with repo:
        first = pipeline_archive(repo, [ckpt], name="m")
        hashes = list(repo.load_manifest(first.id).unique_chunks())
        repo.record_chunk_checks((h, True) for h in hashes)
        raw = RawStore(str(tmp_path / "store"))
        h = max(hashes, key=lambda x: len(raw.read(layout.chunk(x))))
        raw.mutate(layout.chunk(h), lambda b: b[:-1] + bytes([b[-1] ^ 1]))
        assert pipeline_archive(repo, [ckpt], name="m", trust_verified_within=3600).repaired_chunks == 0
        assert pipeline_archive(repo, [ckpt], name="m").repaired_chunks == 1


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "7d", True])
def test_trust_window_bad_values_refused(tmp_path, ckpt, bad):
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as repo:
        with pytest.raises(InvalidOptionError) as ei:
            pipeline_archive(repo, [ckpt], name="m", trust_verified_within=bad)
        assert ei.value.option == "trust_verified_within"
        assert repo.list_archives() == []


@pytest.mark.parametrize("text", ["soon", "-5m", "7y", "", "1.5.2h"])
def test_cli_bad_duration_is_one_line_exit_2(tmp_path, ckpt, monkeypatch, text):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    r = run_cli("archive", str(ckpt), "--name", "m", "--trust-verified-within", text)
    assert r.code == 2 and "--trust-verified-within" in r.err and len(r.err.strip().splitlines()) == 1
    assert "Traceback" not in r.err and not (tmp_path / "home" / "store").exists()


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200),
                                          ("7d", 604800), ("2w", 1209600), ("1.5h", 5400)])
def test_cli_durations(text, seconds):
    from archiver.cli import parse_duration
    assert parse_duration(text, "trust_verified_within") == seconds


# -- conditional replace -------------------------------------------------------------------

def encoded(data: bytes) -> tuple[str, bytes]:
    return blake3.blake3(data).hexdigest(), Codec().encode(data, 0).data


def test_replace_damaged_refuses_when_the_object_changed(store_url, tmp_path):
    """The store-level condition: a replacement happens only while the key still holds the
    version that was read; otherwise nothing is overwritten (ETag If-Match on S3, file
    identity locally) and the newer object stays."""
    store = open_store(store_url, create=True)
    assert store.can_replace_damaged
    raw = RawStore(store_url)
    data = os.urandom(5000)
    h, good = encoded(data)
    key = layout.chunk(h)
    raw.write(key, b"rotten-1")
    obj, v1 = store.get_versioned(key, 1 << 20)
    assert obj == b"rotten-1" and v1.size == 8
    raw.write(key, b"rotten-22")  # changed after our read (another writer, or more damage)
    assert not store.replace_damaged(key, good, v1, layout.quarantined(key, "t1"))
    assert raw.read(key) == b"rotten-22"
    obj, v2 = store.get_versioned(key, 1 << 20)
    assert obj == b"rotten-22" and v2 != v1
    assert store.replace_damaged(key, good, v2, layout.quarantined(key, "t2"))
    assert raw.read(key) == good and raw.read(layout.quarantined(key, "t2")) == b"rotten-22"
    # a stale version never clobbers the good object
    assert not store.replace_damaged(key, b"other", v2, layout.quarantined(key, "t3"))
    assert raw.read(key) == good
    # gone meanwhile: refused, nothing written
    raw.delete(key)
    assert not store.replace_damaged(key, good, v2, layout.quarantined(key, "t4"))
    with pytest.raises(ObjectMissingError):
        store.get_versioned(key, 1 << 20)


def test_get_versioned_bounds_what_it_reads(store_url):
    store = open_store(store_url, create=True)
    raw = RawStore(store_url)
    raw.write("chunks/aa/big", os.urandom(10_000))
    obj, v = store.get_versioned("chunks/aa/big", 9_999)
    assert obj is None and v.size == 10_000
    obj, v2 = store.get_versioned("chunks/aa/big", 10_000)
    assert obj == raw.read("chunks/aa/big") and v2 == v
    raw.write("chunks/aa/empty", b"")
    obj, v3 = store.get_versioned("chunks/aa/empty", 10)
    assert obj == b"" and v3.size == 0 and v3 != v


class RaceStore(CountingStore):
    """Another writer acts on the key between our read and our replace."""

    def __init__(self, inner, raw: RawStore, then: bytes) -> None:
        super().__init__(inner)
        self.raw, self.then, self.replaces = raw, then, []

    def replace_damaged(self, key: str, data: bytes, expected: ObjectVersion, quarantine_key: str) -> bool:
        if not self.replaces:
            self.raw.write(key, self.then)
        ok = self.inner.replace_damaged(key, data, expected, quarantine_key)
        self.replaces.append(ok)
        return ok


@pytest.mark.parametrize("meanwhile", ["repaired", "damaged again"])
def test_object_changed_between_read_and_replace_is_rechecked(store_url, tmp_path, meanwhile):
    """save_chunk's repair loses the race: its replace is refused, the key is read again and
    proved: a concurrent good write is kept (not clobbered, not counted as a repair); a new
    damaged version is repaired in turn."""
    data = os.urandom(20_000)
    h, good = encoded(data)
    key = layout.chunk(h)
    raw = RawStore(store_url)
    inner = open_store(store_url, create=True)
    raw.write(key, b"rot")
    then = good if meanwhile == "repaired" else b"rot, again"
    store = RaceStore(inner, raw, then)
    with Repository(store, Catalog(tmp_path / "cat.db", store.url)) as repo:
        saved = repo.save_chunk(h, data, 0)
        assert store.replaces[0] is False
        if meanwhile == "repaired":
            assert not saved.repaired and store.replaces == [False]
        else:
            assert saved.repaired and store.replaces == [False, True]
        assert raw.read(key) == good
        assert repo.read_chunk(ChunkRef(0, len(data), h, saved.stored_size, saved.codec)) == data


def test_local_concurrent_repairs_of_one_chunk(tmp_path):
    """Several archivers repair the same damaged chunk at once: every one succeeds, the final
    object is good, and the damaged bytes are in quarantine exactly once."""
    url = str(tmp_path / "store")
    data = os.urandom(50_000)
    h, good = encoded(data)
    key = layout.chunk(h)
    raw = RawStore(url)
    open_store(url, create=True)
    for round_ in range(5):
        rotten = f"rot {round_}".encode()
        raw.write(key, rotten)
        repos = [Repository(open_store(url), Catalog(tmp_path / f"cat{i}.db", url)) for i in range(4)]
        barrier = threading.Barrier(len(repos))
        out: list = []

        def run(repo: Repository) -> None:
            barrier.wait()
            try:
                out.append(repo.save_chunk(h, data, 0))
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                out.append(e)

        threads = [threading.Thread(target=run, args=(r,)) for r in repos]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in repos:
            r.close()
        assert all(not isinstance(o, Exception) for o in out), out
        assert raw.read(key) == good
        assert [q for q in quarantined(raw, h) if q == rotten] == [rotten]
        assert sum(o.repaired for o in out) == 1


def test_store_that_cannot_repair_refuses_the_archive(tmp_path, ckpt):
    """A store without the repair verbs still never builds on rot: the damaged chunk fails
    the archive with one clear error and nothing is recorded."""
    class PlainStore:
        def __init__(self, inner) -> None:
            self.inner, self.url = inner, inner.url

        def put_if_absent(self, key, data):
            return self.inner.put_if_absent(key, data)

        def get(self, key, max_size=None):
            return self.inner.get(key, max_size=max_size)

        def stat(self, key):
            return self.inner.stat(key)

        def exists(self, key):
            return self.inner.exists(key)

        def list(self, prefix):
            return self.inner.list(prefix)

    url = str(tmp_path / "store")
    store = PlainStore(open_store(url, create=True))
    with Repository(store, Catalog(tmp_path / "cat.db", store.url)) as repo:
        first = pipeline_archive(repo, [ckpt], name="m")
        h = max(repo.load_manifest(first.id).unique_chunks().values(), key=lambda c: c.length).hash
        RawStore(url).mutate(layout.chunk(h), lambda b: b[:-1] + bytes([b[-1] ^ 1]))
        with pytest.raises(CorruptChunkError) as ei:
            pipeline_archive(repo, [ckpt], name="m", label="again")
        assert ei.value.chunk == h and "cannot replace" in str(ei.value)
        assert [r.label for r in repo.list_archives()] == [None]


# -- S3 faults during a repair (a fault proxy in front of moto's HTTP server) ---------------

@pytest.fixture
def proxied(moto_server, aws_env, monkeypatch, tmp_path):
    """(store URL through a fault proxy, the proxy, a boto3 client straight to moto, bucket)."""
    import boto3

    from tests.conftest import _delete_bucket
    from tests.faultproxy import FaultProxy

    with FaultProxy(moto_server) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
        direct = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
        bucket = f"rot-{os.urandom(6).hex()}"
        direct.create_bucket(Bucket=bucket)
        yield f"s3://{bucket}/prefix", proxy, direct, bucket
        _delete_bucket(direct, bucket)


@pytest.mark.integration
def test_s3_repair_whose_put_response_is_lost_still_counts(proxied, ckpt, tmp_path):
    """moto stores the repaired object but the client never hears; botocore's retry gets
    412 (the ETag is now ours): the store sees it holds exactly our bytes, so the repair is
    counted and audited, and the chunk is read back and proved."""
    url, proxy, direct, bucket = proxied
    first = run_cli("--store", url, "archive", str(ckpt), "--name", "m", "--json").json()
    shown = run_cli("--store", url, "show", first["id"], "--json").json()["manifest"]["entries"]
    victim = max((length, h) for e in shown for _, length, h, _, _ in e.get("chunks", []))[1]
    key = f"prefix/{layout.chunk(victim)}"
    good = direct.get_object(Bucket=bucket, Key=key)["Body"].read()
    direct.put_object(Bucket=bucket, Key=key, Body=good[:-1] + bytes([good[-1] ^ 1]))
    target = f"/{bucket}/{key}$"
    proxy.reset_log()
    proxy.add("lose_response", method="PUT", path=target, times=1)
    again = run_cli("--store", url, "archive", str(ckpt), "--name", "m", "--json")
    assert again.code == 0, again.err
    assert again.json()["repaired_chunks"] == 1
    puts = proxy.requests("PUT", target)
    assert [(p.fault, p.status) for p in puts] == [("lose_response", 200), (None, 412)]
    assert all(p.headers.get("if-match") for p in puts)
    assert direct.get_object(Bucket=bucket, Key=key)["Body"].read() == good
    assert run_cli("--store", url, "verify", again.json()["id"], "--deep").code == 0


@pytest.mark.integration
def test_s3_get_versioned_resumes_a_cut_body_on_the_same_version(proxied):
    url, proxy, direct, bucket = proxied
    store = open_store(url, create=True)
    key = layout.chunk("ab" * 32)
    data = os.urandom(3 * 1024 * 1024 + 5)
    assert store.put_if_absent(key, data)
    target = f"/{bucket}/prefix/{key}$"
    proxy.add("cut", method="GET", path=target, ranged=False, cut_at=1024 * 1024 + 3)
    obj, version = store.get_versioned(key, len(data))
    etag = direct.head_object(Bucket=bucket, Key=f"prefix/{key}")["ETag"]
    assert obj == data and version.tag == etag and version.size == len(data)
    gets = proxy.requests("GET", target)
    assert [g.fault for g in gets] == ["cut", None]
    assert [g.headers.get("if-match") for g in gets] == [None, etag] and gets[1].range == f"bytes={1024 * 1024 + 3}-"


def test_proof_compares_any_buffer_type(tmp_path):
    """The source bytes may come as bytes, bytearray or memoryview: an intact stored chunk
    is proved (not 'repaired') whatever the type, and a damaged one is repaired."""
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as repo:
        data = os.urandom(10_000) + bytes(10_000)
        h = blake3.blake3(data).hexdigest()
        first = repo.save_chunk(h, data, 2)
        for buf in (data, bytearray(data), memoryview(data)):
            again = repo.save_chunk(h, buf, 2)
            assert (again.written, again.repaired, again.stored_size) == (False, False, first.stored_size)
        RawStore(str(tmp_path / "store")).mutate(layout.chunk(h), lambda b: b[:-1] + bytes([b[-1] ^ 1]))
        fixed = repo.save_chunk(h, memoryview(data), 2)
        assert fixed.repaired and repo.read_chunk(ChunkRef(0, len(data), h, fixed.stored_size, fixed.codec)) == data


@pytest.mark.parametrize("trust", [False, True])
def test_a_chunk_sharing_a_known_chunks_key_is_still_stored(tmp_path, trust):
    """The catalog's dedup index is keyed by the first 8 bytes of the hash (schema 6): a
    chunk whose key is already known (another hash with the same first 8 bytes) is a hint
    only. Saving it proves the store's own object under its full hash, finds none, and
    writes it; nothing is trusted on the shared key, with or without a verification window."""
    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as repo:
        data = os.urandom(20_000)
        h = blake3.blake3(data).hexdigest()
        twin = h[:16] + ("0" if h[16] != "0" else "1") + h[17:]  # same key, another hash
        m = Manifest(name="other", entries=(Entry(path="t.bin", type="file", mode=0o644, size=len(data), mtime_ns=1,
                                                   blake3=twin, sha256="0" * 64,
                                                   chunks=(ChunkRef(0, len(data), twin, len(data), "raw"),)),))
        repo._catalog.record_manifest(m, m.canonical_json())
        repo._catalog.mark_verified([(h, True)])  # even a verification record under the full hash
        assert repo._catalog.known_chunk(h) == (len(data), "raw")  # the hint
        saved = repo.save_chunk(h, data, 0, trust_verified_within=86400.0 if trust else None)
        assert saved.written
        assert repo.read_chunk(ChunkRef(0, len(data), h, saved.stored_size, saved.codec)) == data
        assert RawStore(str(tmp_path / "store")).keys("chunks") == [layout.chunk(h)]
