"""--attach ROLE=PATH: documents stored under the manifest's reserved _archive/ directory
with their role recorded; restored byte-identically, listed by show, fetched alone with
restore --include '_archive/*'."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from manifests.errors import ManifestError
from manifests.model import Entry, Manifest, canonical, parse_manifest
from tests.helpers import make_checkpoint, run_cli, tree


@pytest.fixture
def package(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "ck", layers=1, dim=16)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "README.md").write_text("# tiny model\nretired 2026\n")
    (docs / "interview.md").write_bytes("Q: what should we keep?\nA: the weights, and this.\n\u00e9\r\n".encode())
    (docs / "evals").mkdir()
    (docs / "evals" / "results.json").write_text(json.dumps({"mmlu": 0.31}))
    r = run_cli("archive", str(src), "--name", "m", "--attach", f"model-card={docs / 'README.md'}",
                "--attach", f"interview={docs / 'interview.md'}", "--attach", f"eval={docs / 'evals'}", "--json")
    assert r.code == 0, r.err
    return tmp_path, src, docs, r.json()["id"]


def test_attachments_are_recorded_with_roles_and_listed(package):
    _, _, _, mid = package
    m = run_cli("show", mid, "--json").json()["manifest"]
    assert m["attachments"] == [{"path": "_archive/eval/evals/results.json", "role": "eval"},
                                {"path": "_archive/interview/interview.md", "role": "interview"},
                                {"path": "_archive/model-card/README.md", "role": "model-card"}]
    text = run_cli("show", mid).out
    assert "attach:  interview: _archive/interview/interview.md" in text
    assert "attach:  model-card: _archive/model-card/README.md" in text


def test_restore_include_fetches_just_the_attachments_byte_identically(package):
    tmp_path, src, docs, mid = package
    out = tmp_path / "out"
    r = run_cli("restore", mid, str(out), "--include", "_archive/*")
    assert r.code == 0, r.err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "_archive/eval/evals/results.json", "_archive/interview/interview.md", "_archive/model-card/README.md"]
    assert (out / "_archive/interview/interview.md").read_bytes() == (docs / "interview.md").read_bytes()
    full = tmp_path / "full"
    assert run_cli("restore", mid, str(full)).code == 0
    assert tree(full / "ck") == tree(src)
    assert tree(full / "_archive" / "eval" / "evals") == tree(docs / "evals")
    assert run_cli("verify", mid, "--deep").code == 0


def test_a_path_named_archive_is_refused_and_bad_roles_too(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    (tmp_path / "_archive").mkdir()
    (tmp_path / "_archive" / "x").write_text("x")
    r = run_cli("archive", str(tmp_path / "_archive"), "--name", "m")
    assert r.code == 2 and "reserved for attachments" in r.err
    (tmp_path / "doc").write_text("d")
    for spec, msg in [("Bad Role=" + str(tmp_path / "doc"), "--attach role 'Bad Role' is invalid"),
                      ("card", "--attach takes ROLE=PATH"), ("=x", "--attach takes ROLE=PATH")]:
        r = run_cli("archive", str(tmp_path / "doc"), "--name", "m", "--attach", spec)
        assert r.code == 2 and msg in r.err and len(r.err.strip().splitlines()) == 1, r.err
    r = run_cli("archive", str(tmp_path / "doc"), "--name", "m", "--attach", f"a={tmp_path / 'doc'}",
                "--attach", f"a={tmp_path / 'doc'}")
    assert r.code == 2 and "collides" in r.err


def _file(path: str) -> Entry:
    return Entry(path=path, type="file", mode=0o644, size=0, mtime_ns=1, blake3="0" * 64, sha256="1" * 64)


@pytest.mark.parametrize("attachments, why", [
    ([{"path": "_archive/a/x", "role": "A B"}], "attachment role"),
    ([{"path": "x", "role": "a"}], "is not a file under _archive/"),
    ([{"path": "_archive/a/missing", "role": "a"}], "is not a file under _archive/"),
    ([], "non-empty list"),
    ([{"path": "_archive/a/x"}], "is not {path, role}"),
])
def test_reader_refuses_malformed_attachments(attachments, why):
    m = Manifest(name="n", entries=(_file("_archive/a/x"), _file("x")))
    obj = {**m.to_dict(), "attachments": attachments}
    with pytest.raises(ManifestError, match=why.replace("{", r"\{").replace("}", r"\}")):
        parse_manifest(canonical(obj))


def test_manifest_without_attachments_has_no_field():
    m = Manifest(name="n", entries=(_file("x"),))
    assert "attachments" not in m.to_dict()
    withatt = Manifest(name="n", entries=(_file("_archive/a/x"),), attachments=(("a", "_archive/a/x"),))
    assert parse_manifest(withatt.canonical_json(), withatt.id) == withatt
