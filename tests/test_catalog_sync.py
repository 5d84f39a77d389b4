"""Many hosts, one store: each host keeps its own catalog; `catalog sync` and archive's own
sync record what the others wrote, so chains of versions do not fork."""
from __future__ import annotations

from pathlib import Path

from archiver import api
from tests.helpers import make_checkpoint, run_cli


def _host(tmp_path: Path, n: int) -> str:
    return str(tmp_path / f"host{n}.sqlite")


def test_two_catalogs_one_store_do_not_fork(tmp_path, home):
    store = str(tmp_path / "store")
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    a = api.archive([src], name="m", store=store, catalog=_host(tmp_path, 1))
    (src / "config.json").write_text('{"v": 2}')
    b = api.archive([src], name="m", store=store, catalog=_host(tmp_path, 2))
    assert b.parent == a.id  # host 2 saw host 1's version before choosing its parent
    (src / "config.json").write_text('{"v": 3}')
    c = api.archive([src], name="m", store=store, catalog=_host(tmp_path, 1))
    assert c.parent == b.id
    for n in (1, 2):
        chain = [r.id for r in api.list_archives("m", store=store, catalog=_host(tmp_path, n))]
        assert set(chain) >= {a.id, b.id}
    r = run_cli("--store", store, "--catalog", _host(tmp_path, 2), "verify", "--all", "--json")
    assert r.code == 0, r.out  # no 'chain' problem: one line of versions


def test_catalog_sync_records_only_what_is_new(tmp_path, home):
    store = str(tmp_path / "store")
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    a = api.archive([src], name="m", store=store, catalog=_host(tmp_path, 1))
    r = run_cli("--store", store, "--catalog", _host(tmp_path, 2), "catalog", "sync", "--json")
    assert r.code == 0 and r.json()["added"] == [a.id] and r.json()["manifests"] == 1
    again = run_cli("--store", store, "--catalog", _host(tmp_path, 2), "catalog", "sync", "--json")
    assert again.code == 0 and again.json()["added"] == []
    (src / "config.json").write_text('{"v": 2}')
    b = api.archive([src], name="n", store=store, catalog=_host(tmp_path, 1))
    res = api.sync_catalog(store=store, catalog=_host(tmp_path, 2))
    assert res.added == [b.id] and res.ok
    human = run_cli("--store", store, "--catalog", _host(tmp_path, 2), "catalog", "sync")
    assert human.code == 0 and "0 manifest(s) added of 2" in human.out


def test_catalog_sync_skips_a_bad_manifest(tmp_path, home):
    store = tmp_path / "store"
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    a = api.archive([src], name="m", store=str(store), catalog=_host(tmp_path, 1))
    [obj] = [p for p in (store / "manifests").rglob("*") if p.is_file()]
    obj.write_bytes(obj.read_bytes().replace(b'"m"', b'"x"', 1))  # no longer matches its id
    r = run_cli("--store", str(store), "--catalog", _host(tmp_path, 2), "catalog", "sync", "--json")
    assert r.code == 1 and r.json()["added"] == [] and r.json()["problems"][0]["manifest"] == a.id


def test_rerun_of_an_archive_another_catalog_committed_keeps_its_id(tmp_path, home):
    """The same bytes archived under the same name by two hosts (or re-run after a kill that
    left the manifest in the store but not in the catalog) give one version, not two."""
    store = str(tmp_path / "store")
    src = make_checkpoint(tmp_path / "src", layers=1, dim=32)
    a = api.archive([src], name="m", store=store, catalog=_host(tmp_path, 1))
    b = api.archive([src], name="m", store=store, catalog=_host(tmp_path, 2))
    assert b.id == a.id and b.parent is None
    c = api.archive([src], name="m", store=store, catalog=_host(tmp_path, 2))
    assert c.parent == a.id  # a known head: archiving again is a new version, as always
