"""A hostile or damaged store: objects that are not regular files (a FIFO, a symlink to
/dev/zero), objects far larger than anything the archiver writes (a sparse 64 GiB chunk,
a manifest over its cap), and forged manifests that declare huge chunks.

Every command must finish quickly with a Problem or one clear line, never hang or run out
of memory. Each scenario runs its commands in a fresh process under a timeout (a
regression fails the test instead of hanging the suite) and measures that process's peak
RSS (a regression that reads or decodes the object whole blows the bound). Linux only
(/proc/self/status, FIFOs)."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from archiver import layout
from archiver.chunking import ChunkPolicy
from archiver.stores import MAX_MARKER_BYTES
from manifests.errors import ManifestError
from manifests.model import (MAX_CHUNK_LENGTH, MAX_CHUNK_OVERHEAD, MAX_MANIFEST_BYTES, ChunkRef, Entry, Manifest,
                             parse_manifest)
from tests.helpers import make_checkpoint, run_cli
from tests.test_codecs import build, zstd_bomb

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30
RSS_LIMIT_MB = 300
TIMEOUT = 120  # generous for a shared, loaded machine; a hang is forever

# Runs CLI commands in one fresh process and reports each result plus the process's peak RSS.
# Address space is capped at 2 GiB (a normal run peaks near 200 MB), so a regression that reads
# /dev/zero or decodes a huge chunk fails fast with MemoryError instead of eating the machine.
SCRIPT = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from tests.helpers import run_cli
out = []
for args in json.loads(sys.argv[1]):
    r = run_cli(*args)
    out.append({"code": r.code, "out": r.out, "err": r.err})
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would count the parent (pytest).
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({"results": out, "rss_mb": hwm[0] / 1024}))
"""


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self):
        assert self.out, (self.code, self.err)
        return json.loads(self.out)

    def skipped_by_rebuild(self, *words: str) -> None:
        """catalog rebuild skipped one bad manifest, naming why, and exited 1 (no traceback)."""
        assert self.code == 1 and "internal error" not in self.err and "Traceback" not in self.err, self.err
        skipped = [line for line in self.err.splitlines() if line.startswith("skipped: ")]
        assert len(skipped) == 1 and all(w in skipped[0] for w in words), self.err

    def one_line_error(self, *words: str) -> str:
        """The command failed with exactly one stderr line containing `words`, no traceback."""
        assert self.code != 0, (self.out, self.err)
        assert self.err.count("\n") == 1 and self.err.startswith("archiver: error: "), self.err
        assert "Traceback" not in self.err and "internal error" not in self.err, self.err
        for w in words:
            assert w in self.err, (w, self.err)
        return self.err


def isolated(*commands: list[str]) -> tuple[list[Ran], float]:
    """Run CLI commands in one fresh process under a timeout; (results, peak RSS in MB)."""
    p = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(list(commands))], cwd=ROOT, env=dict(os.environ),
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout.splitlines()[-1])
    return [Ran(**r) for r in doc["results"]], doc["rss_mb"]


@pytest.fixture
def archived(tmp_path, monkeypatch):
    """A small archive in a local store: (store dir, manifest id, the manifest as JSON, source dir)."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_CATALOG", raising=False)
    store = tmp_path / "store"
    monkeypatch.setenv("ARCHIVER_STORE", str(store))
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    r = run_cli("archive", str(src), "--name", "m", "--json")
    assert r.code == 0, r.err
    mid = r.json()["id"]
    manifest = json.loads((store / layout.manifest(mid)).read_bytes())
    return store, mid, manifest, src


def plant(path: Path, kind: str, size: int = 64 * GiB) -> None:
    """Put a hostile thing where an object was: a FIFO, a symlink to /dev/zero, or a
    sparse file of `size` bytes (instant to create, takes no disk)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        os.symlink("/dev/zero", path)
    else:
        assert kind == "sparse"
        with open(path, "wb") as f:
            f.truncate(size)


# Words each hostile kind must be named by in the error or Problem.
NAMED = {"fifo": "a FIFO", "devzero": "a symlink", "sparse": "more than the"}
KINDS = list(NAMED)


def model_chunk(manifest: dict) -> tuple[str, str]:
    """(path, hash) of the first chunk of the safetensors file."""
    e = next(e for e in manifest["entries"] if e["path"].endswith("model.safetensors"))
    return e["path"], e["chunks"][0][2]


# -- objects that are not what they claim: verify reports, restore skips, nothing hangs ------------

@pytest.mark.parametrize("kind", KINDS)
def test_hostile_chunk_is_a_problem(archived, tmp_path, kind):
    store, mid, manifest, src = archived
    path, h = model_chunk(manifest)
    plant(store / layout.chunk(h), kind)
    out = tmp_path / "out"
    (verify, sample, restore, listed, again, check), rss = isolated(
        ["verify", mid, "--deep", "--json"], ["verify", "--all", "--sample", "1", "--json"],
        ["restore", mid, str(out)], ["list", "--json"],
        ["archive", str(src), "--name", "again", "--json"], ["verify", "again", "--deep", "--json"])
    assert rss < RSS_LIMIT_MB, rss
    for report in (verify, sample):
        assert report.code == 1, report.err
        found = [p for p in report.json()["problems"] if p["chunk"] == h and p["kind"] == "corrupt-chunk"]
        assert found and found[0]["path"] == path and NAMED[kind] in found[0]["detail"], report.out
    assert restore.code == 1
    assert f"not restored: {path}" in restore.err and NAMED[kind] in restore.err, restore.err
    assert not (out / path).exists()
    assert (out / "ckpt" / "config.json").read_bytes() == (src / "config.json").read_bytes()  # the rest restored
    assert listed.code == 0 and [a["id"] for a in listed.json()] == [mid]
    # archiving the same bytes again meets the hostile object where its chunk goes: it is
    # refused in one line naming the chunk (or, if replaced, the new archive must verify)
    if again.code != 0:
        again.one_line_error(h)
        assert check.code == 2  # nothing was recorded under the name
    else:
        assert check.code == 0 and check.json()["ok"], check.out


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_store_marker_is_one_line_error(archived, tmp_path, kind):
    store, mid, _, src = archived
    plant(store / layout.MARKER, kind)
    runs, rss = isolated(["list"], ["verify", mid, "--deep"], ["restore", mid, str(tmp_path / "out")],
                         ["archive", str(src), "--name", "again"], ["catalog", "rebuild"])
    assert rss < RSS_LIMIT_MB, rss
    for r in runs:
        r.one_line_error(layout.MARKER, NAMED[kind])
        assert r.code == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_manifest_is_a_problem(archived, tmp_path, kind):
    store, mid, _, _ = archived
    plant(store / layout.manifest(mid), kind, size=MAX_MANIFEST_BYTES + 1)
    fresh = str(tmp_path / "fresh.db")
    (verify, rebuild, lookup), rss = isolated(
        ["verify", mid, "--json"], ["--catalog", fresh, "catalog", "rebuild"],
        ["--catalog", fresh, "verify", mid, "--json"])
    assert rss < RSS_LIMIT_MB, rss  # a manifest one byte over the cap is refused unread
    # the catalog's copy is still good; the store's copy is reported
    assert verify.code == 1
    problems = verify.json()["problems"]
    assert [p["kind"] for p in problems] == ["manifest"] and NAMED[kind] in problems[0]["detail"], problems
    if kind == "sparse":  # an object is there: listed, resolved, then refused as too large
        rebuild.skipped_by_rebuild("manifest too large", NAMED[kind])
        assert lookup.code == 1 and "manifest too large" in lookup.json()["problems"][0]["detail"]
    else:  # not an object, so not listed: the store has no such manifest (as if deleted)
        assert rebuild.code == 0 and "0 manifest(s) added" in rebuild.out, rebuild.err
        lookup.one_line_error(mid)
        assert lookup.code == 2


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_signature_is_a_problem(archived, kind):
    store, mid, _, _ = archived
    plant(store / layout.signature(mid, "0" * 32), kind)
    (verify,), rss = isolated(["verify", mid, "--json"])
    assert rss < RSS_LIMIT_MB, rss
    problems = verify.json()["problems"]
    if kind == "sparse":  # an object far larger than a signature: refused unread
        assert verify.code == 1
        assert [p["kind"] for p in problems] == ["signature"] and NAMED[kind] in problems[0]["detail"], problems
    else:  # not an object, so not listed: no signature there (as if deleted), and no hang
        assert verify.code == 0 and problems == []


# -- forged manifests declaring huge chunks: refused before anything is allocated ------------------

def forged(store: Path, chunk_length: int, stored_size: int | None = None, *, chunks: int = 1) -> str:
    """Store a manifest (with a valid id) naming `chunks` chunks of `chunk_length` bytes, all
    one ~65 KB zstd-bomb object that really decodes to `chunk_length` zero bytes."""
    h = secrets.token_hex(32)
    obj = build([(1, zstd_bomb(claimed=chunk_length, real=chunk_length), chunk_length)])
    key = store / layout.chunk(h)
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(obj)
    stored = len(obj) if stored_size is None else stored_size
    refs = tuple(ChunkRef(i * chunk_length, chunk_length, h, stored, "zstd") for i in range(chunks))
    entry = Entry(path="big.bin", type="file", mode=0o644, size=chunks * chunk_length, mtime_ns=0,
                  blake3="a" * 64, sha256="b" * 64, format="", chunks=refs)
    data = Manifest(name="forged", entries=(entry,)).canonical_json()
    mid = Manifest(name="forged", entries=(entry,)).id
    (store / layout.manifest(mid)).write_bytes(data)
    return mid


@pytest.mark.parametrize("length, stored, words", [
    (2 * GiB, None, "chunk length 2147483648"),  # the review's 65 KB object declaring a 2 GiB chunk
    (MAX_CHUNK_LENGTH + 1, None, f"chunk length {MAX_CHUNK_LENGTH + 1}"),
    (1024, 2 * GiB, "chunk stored size 2147483648"),  # a small chunk whose object is declared huge
])
def test_forged_manifest_with_huge_chunk_is_refused(archived, tmp_path, length, stored, words):
    store, _, _, _ = archived
    mid = forged(store, length, stored)
    (verify, restore, rebuild), rss = isolated(
        ["verify", mid, "--deep", "--json"], ["restore", mid, str(tmp_path / "out")],
        ["--catalog", str(tmp_path / "fresh.db"), "catalog", "rebuild"])
    assert rss < RSS_LIMIT_MB, rss
    assert verify.code == 1
    problems = verify.json()["problems"]
    assert [p["kind"] for p in problems] == ["manifest"] and words in problems[0]["detail"], problems
    restore.one_line_error(words)
    rebuild.skipped_by_rebuild(words)
    assert not (tmp_path / "out" / "big.bin").exists()


def test_chunk_at_the_length_cap_decodes_within_it(archived, tmp_path):
    """A chunk of exactly the cap is accepted and decoded in bounded memory; the forged
    object then fails its hash like any corrupt chunk."""
    store, _, _, _ = archived
    mid = forged(store, MAX_CHUNK_LENGTH)
    (verify,), rss = isolated(["verify", mid, "--deep", "--json"])
    assert rss < RSS_LIMIT_MB, rss
    assert verify.code == 1
    problems = verify.json()["problems"]
    assert [(p["kind"], p["length"]) for p in problems] == [("corrupt-chunk", MAX_CHUNK_LENGTH)], problems
    assert "do not match the chunk hash" in problems[0]["detail"]


# -- the caps themselves -------------------------------------------------------------------------

def _manifest_bytes(length: int, stored: int) -> bytes:
    h = "c" * 64
    entry = Entry(path="f", type="file", mode=0o644, size=length, mtime_ns=0, blake3="a" * 64, sha256="b" * 64,
                  chunks=(ChunkRef(0, length, h, stored, "zstd"),))
    return Manifest(name="n", entries=(entry,)).canonical_json()


def test_manifest_chunk_caps_are_exact():
    parse_manifest(_manifest_bytes(MAX_CHUNK_LENGTH, MAX_CHUNK_LENGTH + MAX_CHUNK_OVERHEAD))
    with pytest.raises(ManifestError, match="chunk length"):
        parse_manifest(_manifest_bytes(MAX_CHUNK_LENGTH + 1, 100))
    with pytest.raises(ManifestError, match="chunk stored size"):
        parse_manifest(_manifest_bytes(1000, 1000 + MAX_CHUNK_OVERHEAD + 1))
    parse_manifest(_manifest_bytes(1000, 1000 + MAX_CHUNK_OVERHEAD))


def test_manifest_size_cap_fits_a_large_archive():
    """A 10 TB archive in default 8 MiB chunks (~1.3 M chunk records) fits under the cap."""
    record = len(json.dumps([10 ** 13, 8 << 20, "f" * 64, (8 << 20) + 232, "bg2"], separators=(",", ":"))) + 1
    assert (10 ** 13 // (8 << 20)) * record * 2 < MAX_MANIFEST_BYTES < GiB
    too_big = b" " * (MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ManifestError, match="too large"):
        parse_manifest(too_big)


def test_chunk_policy_cannot_exceed_the_chunk_length_cap():
    """The chunker cannot cut a chunk no manifest may name (an archive that could never be read)."""
    assert max(ChunkPolicy().max_chunk, ChunkPolicy().cdc_max) <= MAX_CHUNK_LENGTH
    ChunkPolicy(max_chunk=MAX_CHUNK_LENGTH, cdc_max=MAX_CHUNK_LENGTH)
    with pytest.raises(ValueError, match="chunk length limit"):
        ChunkPolicy(max_chunk=MAX_CHUNK_LENGTH + 1)
    with pytest.raises(ValueError, match="chunk length limit"):
        ChunkPolicy(cdc_min=1 << 20, cdc_avg=1 << 24, cdc_max=MAX_CHUNK_LENGTH * 2)


def test_marker_cap_is_small():
    assert 64 < MAX_MARKER_BYTES <= 64 * 1024
