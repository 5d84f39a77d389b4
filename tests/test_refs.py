"""References (issue 14, items 7 and 8): a NAME that looks like hex is never silently
shadowed by an id prefix, `id:`/`name:` are never ambiguous, a full id is always an id,
and NAME means the head of the name's chain of versions (a fork or a second root is
refused, not guessed), through the catalog, the repository and the command line."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import archiver
from archiver.errors import AmbiguousReferenceError, UnknownReferenceError
from manifests.catalog import Catalog
from manifests.errors import AmbiguousReference
from manifests.errors import UnknownReference
from manifests.model import Manifest
from tests.helpers import make_checkpoint, run_cli
from tests.test_catalog import STORE, make_manifest, record


@pytest.fixture
def cat(tmp_path: Path):
    c = Catalog(tmp_path / "catalog.db", STORE)
    yield c
    c.close()


# -- item 7: hex-looking names and id prefixes -----------------------------------------------------

@pytest.mark.parametrize("length", [4, 9, 63])
def test_name_that_is_also_an_id_prefix_is_ambiguous_not_shadowed(cat, length):
    other = make_manifest("other", files={"f": ["o"]})
    record(cat, other)
    name = other.id[:length]
    named = make_manifest(name, files={"f": ["n"]})
    record(cat, named)
    with pytest.raises(AmbiguousReference) as ei:
        cat.resolve(name)
    err = ei.value
    assert set(err.matches) == {other.id, named.id}
    msg = str(err)
    assert other.id[:12] in msg and named.id[:12] in msg and "\n" not in msg
    assert f"name:{name}" in msg and f"id:{name}" in msg
    # qualified references are never ambiguous
    assert cat.resolve(f"name:{name}") == named.id
    assert cat.resolve(f"id:{name}") == other.id
    assert cat.resolve(f"id:{name.upper()}") == other.id


def test_hex_name_without_a_colliding_id_is_the_name(cat):
    names = ("2024", "cafe", "deadbeef", "0000", "CAFE0")
    ms = [make_manifest(name, files={"f": [name]}) for name in names]
    for m in ms:
        record(cat, m)
    assert not any(m.id.startswith(n.lower()) for m in ms for n in names)  # fixed inputs: no collision
    for name, m in zip(names, ms):
        assert cat.resolve(name) == m.id
        assert cat.resolve(f"name:{name}") == m.id
        with pytest.raises(UnknownReference):
            cat.resolve(f"id:{name}")


def test_full_id_is_always_an_id(cat):
    target = make_manifest("t", files={"f": ["t"]})
    record(cat, target)
    impostor = make_manifest(target.id, files={"f": ["i"]})  # a name spelled like another's full id
    record(cat, impostor)
    assert cat.resolve(target.id) == target.id
    assert cat.resolve(target.id.upper()) == target.id
    assert cat.resolve(f"name:{target.id}") == impostor.id
    unknown = "f" * 64 if not target.id.startswith("f") else "e" * 64
    named_unknown = make_manifest(unknown, files={"f": ["u"]})
    record(cat, named_unknown)
    with pytest.raises(UnknownReference):  # not the archive of that name: a full id is never a name
        cat.resolve(unknown)


def test_qualifier_syntax(cat):
    m = make_manifest("id:weird", "v1", files={"f": ["w"]})  # names may start with a qualifier word
    record(cat, m)
    assert cat.resolve("name:id:weird") == m.id
    assert cat.resolve("name:id:weird@v1") == m.id
    for bad in ("id:", "id:abc", "id:xyz1", "id:" + "a" * 65, "id:m"):
        with pytest.raises(UnknownReference, match="not an id or an id prefix"):
            cat.resolve(bad)
    with pytest.raises(UnknownReference, match="no archive named 'nope'"):
        cat.resolve("name:nope")
    with pytest.raises(UnknownReference, match="no archive has an id starting"):
        cat.resolve("id:" + ("0" if not m.id.startswith("0") else "1") * 10)


def test_ambiguity_reaches_the_api_as_a_usage_error_with_fields(tmp_path):
    store, catalog = str(tmp_path / "store"), tmp_path / "c.db"
    src = make_checkpoint(tmp_path / "a" / "ckpt", layers=1, dim=16)
    first = archiver.archive([src], name="first", store=store, catalog=catalog).id
    hexname = first[:8]
    second = archiver.archive([src], name=hexname, store=store, catalog=catalog).id
    with pytest.raises(AmbiguousReferenceError) as ei:
        archiver.show(hexname, store=store, catalog=catalog)
    assert ei.value.exit_code == 2 and ei.value.ref == hexname and set(ei.value.matches) == {first, second}
    assert archiver.show(f"name:{hexname}", store=store, catalog=catalog)[0] == second
    assert archiver.show(f"id:{hexname}", store=store, catalog=catalog)[0] == first


def test_cli_restore_of_ambiguous_ref_refuses_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARCHIVER_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("ARCHIVER_CATALOG", raising=False)
    a = make_checkpoint(tmp_path / "a" / "ckpt", layers=1, dim=16, seed=1)
    b = make_checkpoint(tmp_path / "b" / "ckpt", layers=1, dim=16, seed=2)
    first = run_cli("archive", str(a), "--name", "first", "--json").json()["id"]
    hexname = first[:6]
    second = run_cli("archive", str(b), "--name", hexname, "--json").json()["id"]
    dest = tmp_path / "out"
    for cmd in (["restore", hexname, str(dest)], ["show", hexname], ["verify", hexname]):
        r = run_cli(*cmd)
        assert r.code == 2, (cmd, r.err)
        assert r.err.count("\n") == 1 and "Traceback" not in r.err
        assert first[:12] in r.err and second[:12] in r.err and "ambiguous" in r.err
    assert not dest.exists()
    assert run_cli("show", f"name:{hexname}", "--json").json()["id"] == second
    assert run_cli("show", f"id:{hexname}", "--json").json()["id"] == first
    r = run_cli("restore", f"name:{hexname}", str(dest), "--json")
    assert r.code == 0 and r.json()["id"] == second
    assert (dest / "ckpt" / "config.json").read_bytes() == (b / "config.json").read_bytes()
    assert run_cli("verify", f"id:{first}").code == 0  # a full id, qualified, also reaches the store


# -- item 8: NAME is the head of its chain -----------------------------------------------------------

def _chain(name: str, n: int, *, parent: str | None = None, seed: str = "", labels=None) -> list[Manifest]:
    out: list[Manifest] = []
    for i in range(n):
        label = labels[i] if labels else f"v{i}"
        m = make_manifest(name, label, files={"f": [f"{seed}{name}{i}"]}, parent=parent)
        out.append(m)
        parent = m.id
    return out


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_name_resolves_to_the_chain_head_whatever_the_recording_order_and_times(cat, order):
    chain = _chain("m", 3)
    for k, i in enumerate(order):
        record(cat, chain[i], at=1000.0 - 10 * k if k % 2 else None)  # times unrelated to the chain
    assert cat.resolve("m") == chain[2].id
    assert cat.latest("m") == chain[2].id
    assert [r.id for r in cat.manifest_rows("m")] == [m.id for m in chain]  # never a child before its parent


def test_fork_makes_name_ambiguous_listing_the_heads(cat):
    root, = _chain("m", 1)
    left = make_manifest("m", "left", files={"f": ["l"]}, parent=root.id)
    right = make_manifest("m", "right", files={"f": ["r"]}, parent=root.id)
    for m in (root, left, right):
        record(cat, m)
    with pytest.raises(AmbiguousReference) as ei:
        cat.resolve("m")
    assert set(ei.value.matches) == {left.id, right.id}
    assert "2 newest versions" in str(ei.value) and left.id[:12] in str(ei.value) and right.id[:12] in str(ei.value)
    # a label or an id still picks one; a label on both branches is ambiguous too
    assert cat.resolve("m@left") == left.id and cat.resolve("m@right") == right.id
    assert cat.resolve(f"id:{left.id[:10]}") == left.id
    again = make_manifest("m", "left", files={"f": ["l2"]}, parent=right.id)
    record(cat, again)
    with pytest.raises(AmbiguousReference):
        cat.resolve("m@left")
    # archiving goes on from the most recently recorded head
    assert cat.latest("m") == again.id
    assert cat.chain("m").problem() is not None


def test_second_root_makes_name_ambiguous(cat):
    a = _chain("m", 2, seed="a")
    b = _chain("m", 1, seed="b")  # a second, unrelated chain under the same name
    for m in a + b:
        record(cat, m)
    with pytest.raises(AmbiguousReference, match="2 separate chains") as ei:
        cat.resolve("m")
    assert set(ei.value.matches) == {a[1].id, b[0].id}
    # a parent the catalog does not know (not of this name) makes a root too
    foreign = make_manifest("x", files={"f": ["x"]})
    record(cat, foreign)
    stray = make_manifest("n", files={"f": ["n"]}, parent=foreign.id)
    record(cat, stray)
    assert cat.resolve("n") == stray.id  # one root, one head: fine
    stray2 = make_manifest("n", files={"f": ["n2"]})
    record(cat, stray2)
    with pytest.raises(AmbiguousReference):
        cat.resolve("n")


def test_label_picks_the_newest_in_a_single_chain(cat):
    chain = _chain("m", 4, labels=["a", "b", "a", "c"])
    for m in reversed(chain):
        record(cat, m)
    assert cat.resolve("m@a") == chain[2].id
    assert cat.resolve("m@b") == chain[1].id
    assert cat.resolve("name:m@c") == chain[3].id


def test_long_chain_resolves_without_recursion(cat):
    chain = _chain("long", 2500)
    for m in chain:
        record(cat, m, at=5.0)
    assert cat.resolve("long") == chain[-1].id
    assert cat.resolve("long@v0") == chain[0].id
    rows = cat.manifest_rows("long")
    assert [r.id for r in rows] == [m.id for m in chain]


def test_forked_name_is_a_chain_problem_in_verify(tmp_path):
    """verify reports a fork and a second root once per name (kind 'chain'), exit 1 via the CLI."""
    store, catalog = str(tmp_path / "store"), tmp_path / "c.db"
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    with archiver.open_repository(store, catalog, create=True) as repo:
        root = archiver.archive([src], name="m", repo=repo).id
        (src / "extra.txt").write_text("one")
        left = archiver.archive([src], name="m", label="left", repo=repo).id
        assert archiver.verify(["m"], repo=repo).ok
        # a second writer that still saw `root` as newest: a fork
        (src / "extra.txt").write_text("two")
        from archiver import pipeline
        real_latest = repo.latest
        repo.latest = lambda name: root  # type: ignore[method-assign]
        try:
            right = pipeline.archive(repo, [src], name="m", label="right").id
        finally:
            repo.latest = real_latest  # type: ignore[method-assign]
        rep = archiver.verify([], all_archives=True, repo=repo)
        chain = [p for p in rep.problems if p.kind == "chain"]
        assert len(chain) == 1 and not rep.ok
        assert left[:12] in chain[0].detail and right[:12] in chain[0].detail and "'m'" in chain[0].detail
        rep = archiver.verify(["m@left"], repo=repo)
        assert [p.kind for p in rep.problems] == ["chain"]
    r = run_cli("--store", store, "--catalog", str(catalog), "verify", "m")
    assert r.code == 2 and "ambiguous" in r.err
    r = run_cli("--store", store, "--catalog", str(catalog), "verify", "--all")
    assert r.code == 1 and "chain: manifest" in r.out and "2 newest versions" in r.out


def test_unknown_qualified_reference_is_exit_2(tmp_path):
    store, catalog = str(tmp_path / "s"), tmp_path / "c.db"
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    archiver.archive([src], name="m", store=store, catalog=catalog)
    for ref in ("name:nothing", "id:abcdef0123", "id:zz"):
        with pytest.raises(UnknownReferenceError) as ei:
            archiver.show(ref, store=store, catalog=catalog)
        assert ei.value.exit_code == 2
        r = run_cli("--store", store, "--catalog", str(catalog), "show", ref)
        assert r.code == 2 and r.err.count("\n") == 1
