"""The Python API mirrors the CLI: archive, verify, restore, list, show, rebuild, keygen."""
from __future__ import annotations

import pytest

import archiver
from archiver.errors import ArchiverError, NotFoundError
from tests.helpers import RawStore, make_checkpoint, tree


def test_api_roundtrip(tmp_path, store_url):
    cat = tmp_path / "cat.db"
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=128)
    priv, pub = archiver.keygen(tmp_path / "key")
    res = archiver.archive([ckpt], name="m", label="v1", meta={"k": "v"}, sign_key=priv, store=store_url,
                           catalog=cat)
    assert isinstance(res, archiver.ArchiveResult) and res.files == 4 and res.signed_by
    rep = archiver.verify([res.id], deep=True, trust_keys=[str(pub)], store=store_url, catalog=cat)
    assert rep.ok and rep.files_hashed == 4
    rows = archiver.list_archives(store=store_url, catalog=cat)
    assert [r.id for r in rows] == [res.id]
    mid, m = archiver.show("m@v1", store=store_url, catalog=cat)
    assert mid == res.id and m.meta == {"k": "v"}
    out = archiver.restore("m", tmp_path / "out", trust_keys=[str(pub)], store=store_url, catalog=cat)
    assert out.ok and out.files == 4
    assert tree(tmp_path / "out" / "ckpt") == tree(ckpt)
    cat.unlink()
    rebuilt = archiver.rebuild_catalog(store=store_url, catalog=cat)
    assert isinstance(rebuilt, archiver.RebuildResult)
    assert rebuilt.added == [res.id] and rebuilt.ok and rebuilt.problems == [] and rebuilt.manifests == 1
    store = archiver.open_store(store_url)
    assert store.exists(f"manifests/{res.id}.json")


def test_api_reports_damage_instead_of_raising(tmp_path, store_url):
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=128)
    with archiver.open_repository(store_url, tmp_path / "c.db", create=True) as repo:
        res = archiver.archive([ckpt], name="m", repo=repo)
        key = next(k for k in RawStore(store_url).keys("chunks"))
        RawStore(store_url).delete(key)
        rep = archiver.verify([res.id], repo=repo)
        assert not rep.ok and rep.problems[0].kind == "missing-chunk"
        assert rep.problems[0].chunk == key.rsplit("/", 1)[-1]
        out = archiver.restore(res.id, tmp_path / "out", repo=repo)
        assert not out.ok and out.problems


def test_api_errors_are_archiver_errors(tmp_path):
    with pytest.raises(NotFoundError):
        archiver.archive([tmp_path / "missing"], name="m", store=str(tmp_path / "s"), catalog=tmp_path / "c.db")
    with pytest.raises(ArchiverError):
        archiver.show("nothing", store=str(tmp_path / "s"), catalog=tmp_path / "c.db")


def test_replicate_and_repair_stay_functions_after_their_modules_load(tmp_path, monkeypatch):
    """archiver.replicate and archiver.repair are API functions that share their names with
    submodules; loading a submodule must not shadow the function (a script calling
    replicate, repair, then replicate again got "'module' object is not callable")."""
    import importlib
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=2, dim=32)
    res = archiver.archive([str(ckpt)], name="m", store=str(tmp_path / "s1"))
    for _ in range(2):
        copied = archiver.replicate(all_archives=True, to=str(tmp_path / "s2"), store=str(tmp_path / "s1"))
        healed = archiver.repair(sources=[str(tmp_path / "s2")], store=str(tmp_path / "s1"))
        assert healed.ok and res.id in copied.manifests
    assert callable(archiver.replicate) and callable(archiver.repair)  # the modules, now loaded, call the functions
    assert importlib.import_module("archiver.replicate").__name__ == "archiver.replicate"  # still importable
    from archiver.repair import RepairResult
    assert isinstance(healed, RepairResult)


def test_import_as_of_the_repair_and_replicate_submodules_binds_the_modules():
    import subprocess
    import sys
    code = ("import types\nimport archiver.repair as a\nimport archiver.replicate as b\n"
            "assert isinstance(a, types.ModuleType) and isinstance(b, types.ModuleType), (a, b)\n"
            "assert a.RepairResult and b.ReplicateResult\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_archive_takes_paths_from_any_iterable_with_resume(tmp_path, home):
    """`paths` is an Iterable: a generator was read once for the journal's key (resume, the
    default), which left nothing to archive ("nothing to archive: give at least one PATH")."""
    from archiver import api
    src = tmp_path / "src"
    make_checkpoint(src, layers=1, dim=8)
    listed = api.archive([src], name="m", store=str(tmp_path / "a"), catalog=str(tmp_path / "a.db"))
    once = api.archive((p for p in [src]), name="m", store=str(tmp_path / "b"), catalog=str(tmp_path / "b.db"))
    assert once.id == listed.id and once.files == listed.files > 0
