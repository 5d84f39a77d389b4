"""archiver list --where: conditions on the indexed metadata (profile fields, meta, attachment
roles, tech summary), with = != < <= > >= and glob ~, all of which must hold; fast on 10,000
manifests."""
from __future__ import annotations

import copy
import json
import time

import pytest

from manifests.catalog import Catalog, Condition, parse_condition
from manifests.model import Manifest
from tests.helpers import make_checkpoint, run_cli
from tests.test_profile import GOOD


def test_parse_condition():
    assert parse_condition("license=apache-2.0") == Condition("license", "=", "apache-2.0")
    assert parse_condition("retired>=2026-01-01") == Condition("retired", ">=", "2026-01-01")
    assert parse_condition("name~all-*") == Condition("name", "~", "all-*")
    assert parse_condition("a!=b=c") == Condition("a", "!=", "b=c")  # the first operator splits
    with pytest.raises(ValueError):
        parse_condition("=x")


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "ck", layers=1, dim=16)
    ids = {}
    for name, license_, retired, policy in [("a", "apache-2.0", "2025-06-01", "public"),
                                            ("b", "mit", "2026-02-01", "restricted"),
                                            ("c", "Apache-2.0", "2026-09-30", "sealed")]:
        data = copy.deepcopy(GOOD)
        data.update(name=name, license=license_, retired=retired, parameters=len(name) * 1000 + ord(name))
        data["access"]["policy"] = policy
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        r = run_cli("archive", str(src), "--name", name, "--profile", "model", "--meta-file",
                    str(tmp_path / f"{name}.json"), "--meta", f"team=t-{name}", "--json")
        assert r.code == 0, r.err
        ids[name] = r.json()["id"]
    r = run_cli("archive", str(src), "--name", "plain", "--json")  # no profile at all
    ids["plain"] = r.json()["id"]
    return ids


def names(*where: str) -> list[str]:
    args = [a for w in where for a in ("--where", w)]
    r = run_cli("list", *args, "--json")
    assert r.code == 0, r.err
    return sorted(row["name"] for row in r.json())


def test_where_conditions(models):
    assert names("license=apache-2.0") == ["a", "c"]  # = ignores case
    assert names("license=apache-2.0", "retired>=2026-01-01") == ["c"]
    assert names("retired<2026-01-01") == ["a"]
    assert names("license!=mit") == ["a", "c"]  # has the key, and no value equal: 'plain' has no license
    assert names("access.policy~s*") == ["c"]  # glob, case-sensitive
    assert names("parameters>2000") == []
    assert names("parameters>=1097", "parameters<=1099") == ["a", "b", "c"]  # numbers compare as numbers
    assert names("meta.team=t-b") == ["b"]
    assert names("profile=archiver-model/1") == ["a", "b", "c"]
    assert names("tech.format=safetensors") == ["a", "b", "c", "plain"]
    assert names("nothing=here") == []


def test_where_is_refused_in_one_line(models):
    r = run_cli("list", "--where", "licence", "--json")
    assert r.code == 2 and r.json()["option"] == "where" and len(r.err.strip().splitlines()) == 1


def test_search_is_fast_on_10000_manifests(tmp_path, capsys):
    """10,000 manifests with ~12 indexed fields each, inserted directly; two conditions."""
    cat = Catalog(tmp_path / "c.db", "file:///s")
    data = Manifest(name="x", entries=()).canonical_json()
    n = 10_000
    with cat.write() as conn:
        conn.executemany("INSERT INTO manifests(id, name, label, parent, recorded_at, file_count, total_size, "
                         "stored_size, json) VALUES (?,?,?,?,?,?,?,?,?)",
                         ((f"{i:064x}", f"model-{i}", None, None, float(i), 1, 1, 1, data) for i in range(n)))
        rows = []
        for i in range(n):
            mid = f"{i:064x}"
            fields = {"profile": "archiver-model/1", "license": ["apache-2.0", "mit", "llama3", "cc-by-4.0"][i % 4],
                      "retired": f"20{20 + i % 10}-{1 + i % 12:02d}-01", "developer": f"lab-{i % 50}",
                      "access.policy": ["public", "restricted"][i % 2], "provenance.revision": f"{i:08x}",
                      "runtime.frameworks.torch": "2.3.1", "name": f"model-{i}", "version": "1",
                      "tech.format": "safetensors", "tech.parameters": i * 1000, "tech.architecture": "BertModel"}
            for k, v in fields.items():
                rows.append((mid, k, 0, str(v), float(v) if isinstance(v, int) else None))
        conn.executemany("INSERT INTO fields(manifest_id, key, seq, value, num) VALUES (?,?,?,?,?)", rows)
    conds = [parse_condition("license=apache-2.0"), parse_condition("retired>=2026-01-01")]
    cat.search(conds)  # warm the page cache, as a second query would
    started = time.perf_counter()
    found = cat.search(conds)
    seconds = time.perf_counter() - started
    only = time.perf_counter()
    from manifests.catalog import search_ids
    ids = search_ids(cat._conn, conds)
    index_seconds = time.perf_counter() - only
    cat.close()
    expected = [i for i in range(n) if i % 4 == 0 and 20 + i % 10 >= 26]
    assert sorted(int(r.id, 16) for r in found) == expected and len(ids) == len(expected)
    with capsys.disabled():
        print(f"\nsearch over {n} manifests: {len(found)} found in {seconds * 1000:.1f} ms "
              f"(index query alone {index_seconds * 1000:.1f} ms)")
    assert seconds < 2.0


def test_rebuilt_catalog_indexes_the_same_fields(models, tmp_path):
    """The index is derived from the manifests alone: a catalog rebuilt from the store finds the same."""
    import os
    before = names("license=apache-2.0", "retired>=2026-01-01")
    cat = tmp_path / "home" / "catalog.db"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(str(cat) + suffix):
            os.remove(str(cat) + suffix)
    assert run_cli("catalog", "rebuild").code == 0
    assert names("license=apache-2.0", "retired>=2026-01-01") == before == ["c"]
    assert names("meta.team=t-a") == ["a"]
