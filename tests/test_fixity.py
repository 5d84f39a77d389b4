"""Budgeted rotation and `fixity status` (issue 10): with a byte budget B, repeated
sampled verifies cover all T stored bytes in ceil(T / B) runs, never checking a chunk twice
before every chunk has been checked once; `fixity status` says how much was proved intact
within the window and exits 1 when anything falls outside it."""
from __future__ import annotations

import math
import os

import pytest

import archiver
from archiver import layout
from archiver.checker import budgeted, verify
from archiver.errors import InvalidOptionError
from archiver.repository import Repository
from archiver.settings import Settings
from tests.helpers import RawStore, make_checkpoint, run_cli


@pytest.fixture
def many(tmp_path, monkeypatch):
    """An archive of K incompressible files of different sizes: K chunks of K sizes."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(1000 + 700 * i))
    store, cat = str(tmp_path / "store"), tmp_path / "c.db"
    mid = archiver.archive([src], name="many", store=store, catalog=cat).id
    return store, cat, mid


@pytest.mark.parametrize("divisor", [1, 2.5, 3, 7, 40])
def test_budget_covers_everything_in_ceil_total_over_budget_runs(many, divisor):
    store, cat, mid = many
    with Repository.open(Settings.resolve(store, cat)) as repo:
        sizes = {c.hash: c.stored_size for c in repo.load_manifest(mid).unique_chunks().values()}
        everything, total, biggest = set(sizes), sum(sizes.values()), max(sizes.values())
        budget = max(1, int(total / divisor))
        runs = math.ceil(total / budget)
        seen: set[str] = set()
        full_at = None
        for run in range(1, runs + 1):
            report = verify(repo, [mid], sample=1.0, max_bytes=budget)
            assert report.ok
            checked = set(repo.read_events().records[-1].event.chunks_ok)
            new = checked - seen
            # no chunk twice before every chunk once: a run re-reads a chunk only after the
            # last never-checked ones (stalest first), i.e. once the rotation is complete
            assert new or seen == everything
            if checked & seen:
                assert seen | new == everything
            read = sum(sizes[h] for h in checked)
            assert read >= min(budget, total)  # a run stops only once its budget is reached...
            assert read - biggest < budget  # ...and reads at most one chunk past it
            seen |= new
            cov = archiver.fixity_status(repo=repo).overall
            assert (cov.chunks_ok == len(sizes)) == (seen == everything)
            if seen == everything and full_at is None:
                full_at = run
        assert full_at is not None and math.ceil(total / (budget + biggest)) <= full_at <= runs


def test_budgeted_picks_stalest_first_and_stops_at_the_budget():
    order = ["a", "b", "c", "d"]
    sizes = {"a": 5, "b": 5, "c": 5, "d": 5}
    assert budgeted(order, sizes, 1.0, 10) == ["a", "b"]
    assert budgeted(order, sizes, 1.0, 11) == ["a", "b", "c"]
    assert budgeted(order, sizes, 0.5, 100) == ["a", "b"]
    assert budgeted(order, sizes, 1.0, None) == order
    assert budgeted([], {}, 1.0, 10) == []


def test_max_seconds_stops_starting_chunks(many):
    store, cat, mid = many
    with Repository.open(Settings.resolve(store, cat)) as repo:
        report = verify(repo, [mid], max_seconds=1e-9)
        assert report.ok and report.mode == "sample:1" and report.chunks_read == 0
        report = verify(repo, [mid], max_seconds=60)
        assert report.chunks_read == 12


def test_budget_options_are_checked(many):
    store, cat, mid = many
    base = ["--store", store, "--catalog", str(cat)]
    for args in (["--deep", "--max-bytes", "1M"], ["--max-bytes", "lots"], ["--max-bytes", "0"],
                 ["--max-seconds", "soon"]):
        r = run_cli(*base, "verify", "many", *args)
        assert r.code == 2 and r.err.count("\n") == 1, (args, r.err)
    assert "--max-bytes" in run_cli(*base, "verify", "many", "--deep", "--max-bytes", "1M").err
    r = run_cli(*base, "verify", "many", "--max-bytes", "1k", "--json")
    assert r.code == 0 and 0 < r.json()["chunks_read"] < 12
    with pytest.raises(InvalidOptionError):
        verify(Repository.open(Settings.resolve(store, cat)), [mid], max_bytes=-1)


def test_fixity_status_window_failures_and_repair(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    store, cat = str(tmp_path / "store"), tmp_path / "c.db"
    base = ["--store", store, "--catalog", str(cat)]
    mid = run_cli(*base, "archive", str(src), "--name", "m", "--json").json()["id"]

    r = run_cli(*base, "fixity", "status", "--json")
    d = r.json()
    assert r.code == 1 and not d["ok"]
    (arch,) = d["archives"]
    assert arch["manifest"] == mid and arch["never_checked"] == arch["chunks"] > 0
    assert arch["fraction_chunks"] == 0.0 and arch["oldest_check"] is None
    assert "OUTSIDE THE WINDOW" in run_cli(*base, "fixity", "status").err

    assert run_cli(*base, "verify", "m", "--deep").code == 0
    r = run_cli(*base, "fixity", "status", "--window", "1d", "--json")
    d = r.json()
    assert r.code == 0 and d["ok"] and d["overall"]["fraction_bytes"] == 1.0
    assert d["overall"]["oldest_check"].endswith("Z") and d["overall"]["bytes"] == d["overall"]["bytes_ok"]
    human = run_cli(*base, "fixity", "status")
    assert human.code == 0 and "100.0% of" in human.out and human.out.startswith(mid[:16])

    manifest = archiver.show(mid, store=store, catalog=cat)[1]
    victim = max((c for e in manifest.files for c in e.chunks), key=lambda c: c.length)
    RawStore(store).mutate(layout.chunk(victim.hash), lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    assert run_cli(*base, "verify", "m", "--deep").code == 1
    d = run_cli(*base, "fixity", "status", "--json").json()
    assert d["overall"]["failed"] == [victim.hash] and not d["ok"]
    run_cli(*base, "archive", str(src), "--name", "m2")  # dedup proves the chunk and repairs it from the source
    d = run_cli(*base, "fixity", "status", "--json").json()
    assert d["overall"]["failed"] == [] and d["ok"]


def test_fixity_status_stale_and_bad_window(tmp_path, monkeypatch):
    import time
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    store, cat = str(tmp_path / "store"), tmp_path / "c.db"
    archiver.archive([src], name="m", store=store, catalog=cat)
    archiver.verify(["m"], deep=True, store=store, catalog=cat)
    now = archiver.fixity_status(store=store, catalog=cat)
    assert now.ok and now.overall.stale == 0
    later = archiver.fixity_status(90 * 86400, store=store, catalog=cat, now=time.time() + 91 * 86400)
    assert not later.ok and later.overall.stale == later.overall.chunks and later.overall.chunks_ok == 0
    assert run_cli("--store", store, "--catalog", str(cat), "fixity", "status", "--window", "never").code == 2


def test_equal_chunks_rotate_in_exactly_total_over_budget_runs(tmp_path, monkeypatch):
    """K equal chunks and a budget of k of them: K / k runs of exactly k new chunks each."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(3000))
    store, cat = str(tmp_path / "store"), tmp_path / "c.db"
    mid = archiver.archive([src], name="eq", store=store, catalog=cat).id
    with Repository.open(Settings.resolve(store, cat)) as repo:
        sizes = {c.hash: c.stored_size for c in repo.load_manifest(mid).unique_chunks().values()}
        (size,) = set(sizes.values())
        seen: set[str] = set()
        for run in range(4):
            verify(repo, [mid], max_bytes=3 * size)
            checked = set(repo.read_events().records[-1].event.chunks_ok)
            assert len(checked) == 3 and not checked & seen
            seen |= checked
            assert archiver.fixity_status(repo=repo).ok == (run == 3)
        assert seen == set(sizes)


def test_fixity_status_reports_each_copy_from_its_own_checks(tmp_path, monkeypatch):
    """With copies, coverage is per copy: a copy nobody verified is outside the window even
    when the primary is fully checked; verifying the copy brings it in."""
    import json
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src, dst = str(tmp_path / "primary"), str(tmp_path / "copy")
    ck = make_checkpoint(tmp_path / "ck", layers=1, dim=32)
    assert run_cli("--store", src, "archive", str(ck), "--name", "m").code == 0
    assert run_cli("--store", src, "copies", "add", dst).code == 0
    assert run_cli("--store", src, "replicate", "--all", "--to", dst).code == 0
    assert run_cli("--store", src, "verify", "--all", "--deep").code == 0
    assert run_cli("--store", src, "fixity", "status").code == 0  # the primary alone is covered
    r = run_cli("--store", src, "fixity", "status", "--copies", "--json")
    doc = json.loads(r.out)
    assert r.code == 1 and doc["overall"]["within_window"] and not doc["ok"]
    (copy,) = doc["copies"].values()
    assert copy["overall"]["never_checked"] == copy["overall"]["chunks"] > 0
    human = run_cli("--store", src, "fixity", "status", "--copies")
    assert human.code == 1 and "copy " in human.out and "a copy falls outside it" in human.err
    assert run_cli("--store", dst, "verify", "--all", "--deep").code == 0
    r = run_cli("--store", src, "fixity", "status", "--copies", "--json")
    assert r.code == 0 and json.loads(r.out)["ok"], r.out
