"""Cost arithmetic (archiver/costs.py) with the shipped, dated price file, and the
`estimate` and `restore --plan` commands on moto."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from archiver.costs import GB, class_cost, estimate, load_prices
from archiver.errors import InvalidOptionError
from tests.helpers import make_checkpoint, run_cli

MiB = 1024 * 1024


def test_shipped_price_file_is_dated_and_sourced() -> None:
    p = load_prices()
    assert p["as_of"] == "2025-11-01" and "aws.amazon.com/s3/pricing" in p["source"] and p["region"] == "us-east-1"
    assert p["minimum_storage_days"]["GLACIER"] == 90 and p["minimum_storage_days"]["DEEP_ARCHIVE"] == 180
    assert p["cold_object_overhead_kib"] == {"at_class_rate": 32, "at_standard_rate": 8}


def test_deep_archive_costs_with_per_object_overhead() -> None:
    c = class_cost("DEEP_ARCHIVE", [8 * MiB] * 1000, load_prices())
    assert c.bytes == 8000 * MiB
    assert c.billed_bytes == 8000 * MiB + 1000 * 32 * 1024  # 32 KiB per object at the cold rate
    assert c.standard_overhead_bytes == 1000 * 8 * 1024  # 8 KiB per object at STANDARD's rate
    # 7.843017578125 GiB x $0.00099 + 0.00762939453125 GiB x $0.023
    assert c.monthly_storage == pytest.approx(0.0079400634765625, rel=1e-12)
    assert c.upload_requests == pytest.approx(0.05)
    assert c.minimum_days == 180 and c.minimum_charge == pytest.approx(0.0079400634765625 * 6)
    assert set(c.restore) == {"Bulk", "Standard"}  # no Expedited for DEEP_ARCHIVE
    bulk = c.restore["Bulk"]
    assert bulk["restore_requests"] == pytest.approx(0.025) and bulk["retrieval"] == pytest.approx(0.01953125)
    assert bulk["get_requests"] == pytest.approx(0.0004) and bulk["total"] == pytest.approx(0.04493125)
    assert bulk["hours"] == [0.0, 48.0]
    std = c.restore["Standard"]
    assert std["total"] == pytest.approx(0.1 + 0.15625 + 0.0004) and std["hours"] == [0.0, 12.0]


def test_glacier_tiers_and_minimum_object_size_of_infrequent_access() -> None:
    prices = load_prices()
    g = class_cost("GLACIER", [GB] * 2, prices)
    assert g.monthly_storage == pytest.approx((2 + 2 * 32 / 1024 / 1024) * 0.0036 + 2 * 8 / 1024 / 1024 * 0.023)
    assert g.restore["Expedited"]["total"] == pytest.approx(2 / 1000 * 10 + 2 * 0.03 + 2 / 1000 * 0.0004)
    assert g.restore["Bulk"]["total"] == pytest.approx(2 / 1000 * 0.0004)  # Bulk is free but for the GETs
    assert g.restore["Expedited"]["hours"] == pytest.approx([1 / 60, 5 / 60])
    ia = class_cost("STANDARD_IA", [1024] * 10, prices)
    assert ia.billed_bytes == 10 * 128 * 1024 and ia.standard_overhead_bytes == 0  # billed as 128 KiB each
    assert ia.monthly_storage == pytest.approx(10 * 128 / 1024 / 1024 * 0.0125)
    assert ia.minimum_days == 30 and ia.restore["immediate"]["retrieval"] == pytest.approx(10 * 1024 / GB * 0.01)


def test_estimate_splits_by_class_and_prices_a_what_if() -> None:
    prices = load_prices()
    sizes = {"a" * 64: 4 * MiB, "b" * 64: 4 * MiB}
    e = estimate("f" * 64, sizes, {"a" * 64: "DEEP_ARCHIVE"}, [2000], prices)
    assert set(e.classes) == {"DEEP_ARCHIVE", "STANDARD"}
    assert e.classes["STANDARD"].objects == 2 and e.classes["STANDARD"].bytes == 4 * MiB + 2000
    assert e.monthly_storage == pytest.approx(sum(c.monthly_storage for c in e.classes.values()))
    w = estimate("f" * 64, sizes, {}, [2000], prices, what_if="GLACIER")
    assert w.classes["GLACIER"].objects == 2 and w.classes["STANDARD"].objects == 1 and w.what_if == "GLACIER"


def test_price_file_is_replaceable_and_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "archiver-prices"}')
    with pytest.raises(InvalidOptionError) as e:
        load_prices(bad)
    assert e.value.option == "prices"
    with pytest.raises(InvalidOptionError):
        load_prices(tmp_path / "missing.json")


def test_estimate_and_restore_plan_commands(s3_mock_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    store = s3_mock_url
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    r = run_cli("--store", store, "archive", str(src), "--name", "m", "--storage-class", "DEEP_ARCHIVE", "--json")
    assert r.code == 0, r.err
    chunks, stored = r.json()["chunks"], r.json()["bytes_stored"]
    est = run_cli("--store", store, "estimate", "m", "--json")
    assert est.code == 0, est.err
    d = est.json()
    assert d["chunks"] == chunks and d["stored_bytes"] == stored and d["prices_as_of"] == "2025-11-01"
    deep = d["classes"]["DEEP_ARCHIVE"]
    assert deep["objects"] == chunks and deep["bytes"] == stored
    assert deep["billed_bytes"] == stored + chunks * 32 * 1024
    # a price file of our own: DEEP_ARCHIVE at $1 per GB-month, everything else as shipped
    mine = load_prices()
    mine["storage_per_gb_month"]["DEEP_ARCHIVE"] = 1.0
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(mine))
    own = run_cli("--store", store, "estimate", "m", "--prices", str(path), "--json").json()
    assert own["classes"]["DEEP_ARCHIVE"]["monthly_storage"] == pytest.approx(
        (stored + chunks * 32 * 1024) / GB + chunks * 8 * 1024 / GB * 0.023)
    what_if = run_cli("--store", store, "estimate", "m", "--class", "STANDARD", "--json").json()
    assert set(what_if["classes"]) == {"STANDARD"} and what_if["what_if"] == "STANDARD"
    human = run_cli("--store", store, "estimate", "m")
    assert human.code == 0 and "DEEP_ARCHIVE" in human.out and "within 48 h" in human.out
    # restore --plan writes nothing and says what the thaw would take and cost
    dest = tmp_path / "out"
    plan = run_cli("--store", store, "restore", "m", str(dest), "--plan", "--json")
    assert plan.code == 0, plan.err
    p = plan.json()
    assert p["needs_thaw"] and p["thaw"]["frozen"] == chunks and p["chunks"] == chunks
    assert set(p["thaw_cost"]["DEEP_ARCHIVE"]) == {"Bulk", "Standard"} and p["expected_hours"] == [0.0, 48.0]
    assert not dest.exists()
    text = run_cli("--store", store, "restore", "m", str(dest), "--plan", "--tier", "Standard")
    assert text.code == 0 and "needs a thaw" in text.out and "--thaw --tier Standard" in text.out
