"""Copy sets: copies named once in the catalog; archive --replicate writes to each;
verify --copies checks each by LIST pages and reports `copies: N/M` per archive."""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import boto3
import pytest

from archiver import layout
from tests.faultproxy import FaultProxy
from tests.helpers import RawStore, make_checkpoint, run_cli


def test_copies_add_list_remove(tmp_path: Path, home: Path) -> None:
    store = str(tmp_path / "store")
    ck = make_checkpoint(tmp_path / "ck", layers=1, dim=32)
    assert run_cli("--store", store, "archive", str(ck), "--name", "m").code == 0
    add = run_cli("--store", store, "copies", "add", str(tmp_path / "c1"), "--json")
    assert add.code == 0 and add.json() == {"copy": "file://" + str(tmp_path / "c1"), "added": True}
    s3 = "s3://b/p/?region=eu-west-1&endpoint=http://127.0.0.1:9&profile=dr"
    assert run_cli("--store", store, "copies", "add", s3).code == 0
    assert run_cli("--store", store, "copies", "add", str(tmp_path / "c1"), "--json").json()["added"] is False
    listed = run_cli("--store", store, "copies", "list", "--json").json()
    assert listed == ["file://" + str(tmp_path / "c1"), "s3://b/p?endpoint=http://127.0.0.1:9&profile=dr&region=eu-west-1"]
    assert run_cli("--store", store, "copies", "add", store).code == 2  # the store itself
    assert run_cli("--store", store, "copies", "add", "s3://b/p?bogus=1").code == 2
    assert run_cli("--store", store, "copies", "remove", str(tmp_path / "c1")).code == 0
    assert run_cli("--store", store, "copies", "remove", str(tmp_path / "c1")).code == 1
    assert run_cli("--store", store, "copies", "list", "--json").json() == [listed[1]]
    from archiver import api
    with api.open_repository(store) as repo:
        events = [a.event for a in repo.audit_log()]
    assert events.count("copies-add") == 2 and events.count("copies-remove") == 1


def test_archive_replicate_and_verify_copies(tmp_path: Path, home: Path, s3_mock_url: str) -> None:
    store = str(tmp_path / "store")
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="copy-bucket")
    c1, c2 = str(tmp_path / "c1"), "s3://copy-bucket/c2"
    ck = make_checkpoint(tmp_path / "ck", layers=2, dim=64)
    assert run_cli("--store", store, "archive", str(ck), "--name", "m", "--replicate").code == 2  # no copies yet
    for c in (c1, c2):
        assert run_cli("--store", store, "copies", "add", c).code == 0
    r = run_cli("--store", store, "archive", str(ck), "--name", "m", "--replicate", "--json")
    assert r.code == 0, r.err
    res = r.json()
    mid = res["id"]
    assert [x["manifests"] for x in res["replicated"]] == [[mid], [mid]] and res["ok"]
    for c in (c1, c2):
        assert RawStore(c).keys(layout.MANIFESTS) == [layout.manifest(mid)]

    v = run_cli("--store", store, "verify", "--all", "--copies", "--json")
    assert v.code == 0, v.out
    assert v.json()["copies"]["copies"] == {mid: "3/3"}
    h = RawStore(c2).keys(layout.CHUNKS)[0]
    RawStore(c2).delete(h)
    bad = run_cli("--store", store, "verify", "--all", "--copies", "--json")
    assert bad.code == 1 and not bad.json()["ok"]
    assert bad.json()["copies"]["copies"] == {mid: "2/3"}
    problem = bad.json()["copies"]["problems"][0]
    assert problem["kind"] == "missing-chunk" and problem["chunk"] == h.rsplit("/", 1)[1] and c2 in problem["detail"]
    human = run_cli("--store", store, "verify", "--all", "--copies")
    assert human.code == 1 and f"{mid[:16]}  copies: 2/3" in human.out

    # repair without --from takes good objects from the copies the store names
    RawStore(store).delete(h)
    fixed = run_cli("--store", store, "repair", "--json")
    assert fixed.code == 0 and fixed.json()["fixes"][0]["source"] == c1
    assert run_cli("--store", store, "verify", "--all", "--deep").code == 0
    # and replicate brings c2 back to full health
    assert run_cli("--store", store, "replicate", "--all", "--to", c2).code == 0
    assert run_cli("--store", store, "verify", "--all", "--copies", "--json").json()["copies"]["copies"] == {mid: "3/3"}


def test_verify_copies_lists_and_never_gets_chunks(tmp_path: Path, home: Path, moto_server: str, aws_env) -> None:
    """Shallow verify of an S3 copy uses LIST pages, not a request per chunk."""
    bucket = f"copies-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    store = str(tmp_path / "store")
    ck = make_checkpoint(tmp_path / "ck", layers=3, dim=64)
    with FaultProxy(moto_server) as proxy:
        copy = f"s3://{bucket}/c?endpoint={proxy.url}"
        assert run_cli("--store", store, "copies", "add", copy).code == 0
        assert run_cli("--store", store, "archive", str(ck), "--name", "m", "--replicate").code == 0
        proxy.reset_log()
        v = run_cli("--store", store, "verify", "--all", "--copies", "--json")
        assert v.code == 0, v.out
        chunk_gets = [s for s in proxy.seen if re.search(r"/chunks/[0-9a-f]{2}/[0-9a-f]{64}$", s.path)]
        assert chunk_gets == []
        assert proxy.count(method="GET", path=r"[?&]list-type=2") >= 2  # chunk prefixes and manifests/


@pytest.mark.parametrize("damage", ["map-under-wrong-suffix", "map-truncated", "tree-truncated"])
def test_verify_copies_reports_a_copy_whose_map_or_tree_its_reader_refuses(tmp_path: Path, home: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           damage: str) -> None:
    """A copy that lists a file map under the other suffix than its bytes' form (as a reader
    of the copy refuses it), or a map or tree shorter than its bytes, is not a healthy copy:
    the LIST check compares each map's key and size, and each tree's size, with the bytes the
    store's own checked manifest makes (it counted 2/2 while restore from the copy failed)."""
    from manifests import model
    monkeypatch.setattr(model, "FILEMAP_THRESHOLD", 1)  # every file of more than one chunk has a map
    monkeypatch.setattr(model, "TREE_THRESHOLD", 0)  # and trees (manifest v3)
    store, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    ck = make_checkpoint(tmp_path / "ck", layers=3, dim=512)
    (ck / "blob.bin").write_bytes(os.urandom(3 << 20))
    r = run_cli("--store", store, "archive", str(ck), "--name", "m")
    assert r.code == 0, r.err
    mid = r.out.strip()
    assert run_cli("--store", store, "copies", "add", copy).code == 0
    assert run_cli("--store", store, "replicate", "--all", "--to", copy).code == 0
    ok = run_cli("--store", store, "verify", "--all", "--copies", "--json")
    assert ok.code == 0 and ok.json()["copies"]["copies"] == {mid: "2/2"}
    raw = RawStore(copy)
    prefix = layout.TREES if damage == "tree-truncated" else layout.FILEMAPS
    keys = sorted(raw.keys(prefix))
    assert keys, prefix
    key = keys[0]
    data = raw.read(key)
    raw.delete(key)
    if damage == "map-under-wrong-suffix":
        h, binary = layout.filemap_hash(key)
        raw.write(layout.filemap(h, binary=not binary), data)  # the same bytes, under the other suffix
    else:
        raw.write(key, data[:-1])
    restored = run_cli("--store", copy, "restore", mid, str(tmp_path / "out"))
    assert restored.code == 1  # a reader of the copy refuses it ...
    bad = run_cli("--store", store, "verify", "--all", "--copies", "--json")
    assert bad.code == 1 and bad.json()["copies"]["copies"] == {mid: "1/2"}  # ... so it is not a healthy copy
    problems = bad.json()["copies"]["problems"]
    assert [p["kind"] for p in problems] == ["tree" if damage == "tree-truncated" else "filemap"]
    assert ("bytes under" if damage != "tree-truncated" else "bytes, not") in problems[0]["detail"]
