"""Deep verify's pack proofs on worker processes (archiver.packproof): the same problems as
on threads, each pack read once (by a worker), S3 too, refusals, the auto rule, no process
left behind."""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from archiver import layout, packproof, packs, workerprocs
from archiver.api import open_repository
from archiver.errors import InvalidOptionError
from tests.helpers import RawStore, run_cli
from tests.test_packs import archive, damage_packed, keys, manifest_of, small_tree

pytestmark = pytest.mark.packs


def deep(url: str, processes: int) -> tuple[int, dict]:
    r = run_cli("--store", url, "verify", "m", "--deep", "--json", "--processes", str(processes))
    assert r.err.count("\n") <= 1 and "Traceback" not in r.err
    return r.code, r.json()


def problems(doc: dict) -> list[dict]:
    return sorted(doc["problems"], key=lambda p: (p.get("path", ""), p.get("chunk") or "", p["kind"]))


def test_a_clean_archive_is_proved_by_a_worker_that_reads_each_pack_once(
        tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packs, "PACK_TARGET", 64 << 10)  # several packs
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=150)
    out = archive(url, src)
    pack_keys = keys(url, layout.PACKS)
    assert len(pack_keys) > 4
    started: list[packproof.EarlyProofs | None] = []
    real_start = packproof.start
    monkeypatch.setattr(packproof, "start", lambda *a, **k: (started.append(real_start(*a, **k)), started[-1])[1])
    from archiver.checker import verify
    with open_repository(url) as repo:
        reads: list[str] = []
        real_get, real_range = repo._store.get, repo._store.get_range
        repo._store.get = lambda key, max_size=None: (reads.append(key), real_get(key, max_size))[1]  # type: ignore[method-assign]
        repo._store.get_range = lambda key, *a, **k: (reads.append(key), real_range(key, *a, **k))[1]  # type: ignore[method-assign]
        rep = verify(repo, [out["id"]], deep=True, processes=1)
    assert rep.ok, rep.problems
    assert [k for k in reads if k.startswith(layout.PACKS)] == []  # the driver read no pack: all proved
    proofs = started[0]
    assert proofs is not None
    worker_packs = [layout.pack(p) for p, _s, _e in proofs.reads()]
    assert sorted(worker_packs) == pack_keys  # each pack once (one span each at this size)
    assert multiprocessing.active_children() == []  # workers and the fork server stopped


def test_a_damaged_chunk_in_a_pack_is_named_as_on_threads(tmp_path: Path, home: Path) -> None:
    url = str(tmp_path / "store")
    src = small_tree(tmp_path / "src", n=30)
    mid = archive(url, src)["id"]
    pack, victim = damage_packed(url, 7, 0x40)
    code1, doc1 = deep(url, 1)
    code0, doc0 = deep(url, 0)
    assert code1 == code0 == 1
    assert problems(doc1) == problems(doc0)
    files = {e.path for e in manifest_of(url, mid).files if any(c.hash == victim.hash for c in e.chunks)}
    probs = [p for p in doc1["problems"] if p.get("chunk") == victim.hash]
    assert {p["path"] for p in probs} == files and all(pack in p["detail"] for p in probs)
    assert [p for p in doc1["problems"] if p.get("chunk") not in (None, victim.hash)] == []


def test_a_missing_pack_is_reported_as_on_threads(tmp_path: Path, home: Path) -> None:
    """The worker's store error leaves its spans unproved: the driver reads them and words it."""
    url = str(tmp_path / "store")
    archive(url, small_tree(tmp_path / "src", n=30))
    RawStore(url).delete(keys(url, layout.PACKS)[0])
    code1, doc1 = deep(url, 1)
    code0, doc0 = deep(url, 0)
    assert code1 == code0 == 1 and doc1["problems"]
    assert problems(doc1) == problems(doc0)


def test_s3_server_store_proves_in_a_worker_and_names_damage(s3_server_url: str, tmp_path: Path, home: Path) -> None:
    archive(s3_server_url, small_tree(tmp_path / "src", n=40))
    code, doc = deep(s3_server_url, 1)
    assert code == 0 and doc["ok"], doc
    _pack, victim = damage_packed(s3_server_url, 3, 0x01)
    code1, doc1 = deep(s3_server_url, 1)
    code0, doc0 = deep(s3_server_url, 0)
    assert code1 == code0 == 1
    assert problems(doc1) == problems(doc0)
    assert {p.get("chunk") for p in doc1["problems"]} == {victim.hash}


def test_processes_refused_in_one_line(tmp_path: Path, home: Path) -> None:
    url = str(tmp_path / "store")
    archive(url, small_tree(tmp_path / "src", n=5))
    r = run_cli("--store", url, "verify", "m", "--deep", "--processes", "-1")
    assert r.code == 2 and r.err.strip().count("\n") == 0 and "--processes" in r.err
    with pytest.raises(InvalidOptionError):
        packproof.resolve(1, files=10, sealed=True, local=True, has_settings=True)
    with pytest.raises(InvalidOptionError):
        packproof.resolve(1, files=10, sealed=False, local=False, has_settings=True)


def test_auto_needs_many_files_two_cores_and_an_idle_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(workerprocs, "spare_cores", lambda *a, **k: 1.5)
    many = packproof.AUTO_MIN_FILES
    assert packproof.resolve(None, files=many, sealed=False, local=True, has_settings=True) == 1
    assert packproof.resolve(None, files=many - 1, sealed=False, local=True, has_settings=True) == 0
    assert packproof.resolve(None, files=many, sealed=True, local=True, has_settings=True) == 0
    assert packproof.resolve(None, files=many, sealed=False, local=False, has_settings=True) == 0
    monkeypatch.setattr(workerprocs, "spare_cores", lambda *a, **k: 0.5)
    assert packproof.resolve(None, files=many, sealed=False, local=True, has_settings=True) == 0
    monkeypatch.setattr(workerprocs, "spare_cores", lambda *a, **k: 1.5)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert packproof.resolve(None, files=many, sealed=False, local=True, has_settings=True) == 0
    assert packproof.resolve(0, files=many, sealed=False, local=True, has_settings=True) == 0


class FakeProofs:
    """Claims every chunk proved, with a SHA-256 that is not its bytes'."""

    def sha256s(self, refs):  # type: ignore[no-untyped-def]
        return ["0" * 64 for _ in refs]

    def close(self) -> None:
        pass


def test_a_proof_that_does_not_match_the_file_is_read_again_not_trusted(
        tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "store")
    out = archive(url, small_tree(tmp_path / "src", n=40))
    monkeypatch.setattr(packproof, "start", lambda *a, **k: FakeProofs())
    from archiver.checker import verify
    with open_repository(url) as repo:
        reads: list[str] = []
        real_range = repo._store.get_range
        repo._store.get_range = lambda key, *a, **k: (reads.append(key), real_range(key, *a, **k))[1]  # type: ignore[method-assign]
        rep = verify(repo, [out["id"]], deep=True, processes=1)
    assert rep.ok and rep.files_hashed == 40
    assert sorted(set(k for k in reads if k.startswith(layout.PACKS))) == keys(url, layout.PACKS)  # all read again


def test_a_proof_counts_only_for_the_very_ref_it_proved() -> None:
    proofs = packproof.EarlyProofs.__new__(packproof.EarlyProofs)
    proofs._results = [packproof.TaskProofs({"a" * 64: (100, 90, "s1")}), packproof.TaskProofs({"b" * 64: (50, 50, "s2")})]
    from manifests.model import ChunkRef
    refs = [ChunkRef(0, 90, "a" * 64, 100, "zstd"), ChunkRef(0, 90, "a" * 64, 101, "zstd"),
            ChunkRef(0, 91, "a" * 64, 100, "zstd"), ChunkRef(0, 50, "b" * 64, 50, "raw"),
            ChunkRef(0, 50, "c" * 64, 50, "raw")]
    assert proofs.sha256s(refs) == ["s1", None, None, "s2", None]


@pytest.mark.parametrize("spare", [0.5, 1.5])
def test_auto_measures_the_rest_of_the_machine_over_the_verifys_start(
        tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, spare: float) -> None:
    """Auto decides on the cores the rest of the machine leaves idle while the manifests load
    (a CpuSample taken when the proofs start, read AUTO_SAMPLE_SECONDS later on the starter
    thread), not on the 1-minute load average: busy, no pool (the deep pass reads everything);
    idle, the worker proves the packs. The verdict is the same either way."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(packproof, "AUTO_MIN_FILES", 10)
    asked: list[object] = []

    def spare_cores(since=None, **_k):  # type: ignore[no-untyped-def]
        asked.append(since)
        return spare
    monkeypatch.setattr(workerprocs, "spare_cores", spare_cores)
    url = str(tmp_path / "store")
    out = archive(url, small_tree(tmp_path / "src", n=30))
    started: list[packproof.EarlyProofs | None] = []
    real_start = packproof.start
    monkeypatch.setattr(packproof, "start", lambda *a, **k: (started.append(real_start(*a, **k)), started[-1])[1])
    from archiver.checker import verify
    with open_repository(url) as repo:
        rep = verify(repo, [out["id"]], deep=True, processes=None)
    assert rep.ok, rep.problems
    assert len(asked) == 1 and isinstance(asked[0], workerprocs.CpuSample)  # measured, not the load average
    proofs = started[0]
    assert proofs is not None
    assert (proofs.pool is None) == (spare < packproof.AUTO_IDLE_CORES)
    assert bool(proofs.reads()) == (spare >= packproof.AUTO_IDLE_CORES)
    assert multiprocessing.active_children() == []
