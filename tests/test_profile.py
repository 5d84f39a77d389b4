"""Metadata profile archiver-model/1: the schema ships in the package, archive checks the
metadata with jsonschema (exit 2 naming the first bad field), and the metadata is part of
the manifest (hashed, chained, signed) and of the catalog's search index."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from archiver import api
from archiver import profile as profiles
from archiver.errors import InvalidOptionError
from manifests.errors import ManifestError
from manifests.model import Entry, Manifest, canonical, parse_manifest
from tests.helpers import make_checkpoint, run_cli

GOOD = {
    "name": "tiny-bert", "version": "1.0", "developer": "Example Lab", "released": "2021-08-30",
    "retired": "2026-03-01", "retirement_reason": "superseded by tiny-bert-2", "license": "apache-2.0",
    "provenance": {"source_repository": "https://huggingface.co/example/tiny-bert", "revision": "7dbbc90",
                   "lineage": [{"relation": "fine-tuned-from", "model": "bert-base-uncased", "revision": "86b5e09"}]},
    "architecture": "BertModel", "parameters": 22713216, "dtypes": ["F32"],
    "runtime": {"frameworks": {"torch": "2.3.1", "transformers": "4.41.2"}, "python": "3.11", "hardware": "CPU"},
    "access": {"policy": "restricted", "who": ["alignment-team"], "conditions": "research only"},
    "custodian": {"name": "Model Archive Team", "contact": "archive@example.org"},
    "successor": {"name": "tiny-bert-2", "contact": "https://example.org/tiny-bert-2"},
    "notes": "kept with its retirement interview",
}
MODEL = profiles.find("model")


def test_schema_is_package_data_and_names_every_field_of_the_issue():
    schema = profiles.schema(MODEL)
    assert schema["title"] == "archiver-model/1" == MODEL.id
    props = set(schema["properties"])
    assert {"name", "version", "developer", "released", "retired", "retirement_reason", "license", "provenance",
            "architecture", "parameters", "dtypes", "runtime", "access", "custodian", "successor", "notes"} <= props
    assert {"source_repository", "revision", "lineage"} <= set(schema["properties"]["provenance"]["properties"])
    assert {"frameworks", "hardware"} <= set(schema["properties"]["runtime"]["properties"])
    assert {"policy", "who", "conditions"} <= set(schema["properties"]["access"]["properties"])
    assert profiles.problem(MODEL, GOOD) is None


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d.pop("license"), "/license is missing"),
    (lambda d: d.update(retired="2026-02-30"), "/retired '2026-02-30' is not a 'date'"),
    (lambda d: d.update(retired="March 2026"), "/retired"),
    (lambda d: d["provenance"].pop("revision"), "/provenance/revision is missing"),
    (lambda d: d["access"].update(policy="anyone"), "/access/policy 'anyone' is not one of"),
    (lambda d: d.update(licence="mit"), "/licence is not a field of this profile"),
    (lambda d: d.update(parameters=-1), "/parameters -1 is less than the minimum of 0"),
    (lambda d: d["provenance"]["lineage"][0].pop("model"), "/provenance/lineage/0/model is missing"),
])
def test_first_bad_field_is_named_as_a_json_pointer(edit, expected):
    data = copy.deepcopy(GOOD)
    edit(data)
    why = profiles.problem(MODEL, data)
    assert why is not None and why.startswith(expected), why


def test_extension_fields_are_allowed():
    assert profiles.problem(MODEL, {**GOOD, "x-lab.ticket": {"id": 42}}) is None


def test_cli_refuses_bad_metadata_with_exit_2_and_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "ck", layers=1, dim=16)
    bad = copy.deepcopy(GOOD)
    del bad["custodian"]["contact"]
    (tmp_path / "m.json").write_text(json.dumps(bad))
    r = run_cli("archive", str(src), "--name", "m", "--profile", "model", "--meta-file", str(tmp_path / "m.json"))
    assert r.code == 2
    assert r.err.strip().splitlines() == [
        f"archiver: error: --meta-file {tmp_path / 'm.json'} does not satisfy archiver-model/1: "
        f"/custodian/contact is missing (required)"]
    assert not (tmp_path / "home").exists()  # refused before the store was created
    for args, msg in [(("--meta-file", str(tmp_path / "m.json")), "--profile is needed"),
                      (("--profile", "model"), "--meta-file is needed"),
                      (("--profile", "nope", "--meta-file", str(tmp_path / "m.json")), "--profile 'nope' is not"),
                      (("--profile", "model", "--meta-file", str(tmp_path / "missing.json")), "cannot read")]:
        r = run_cli("archive", str(src), "--name", "m", *args)
        assert r.code == 2 and msg in r.err and len(r.err.strip().splitlines()) == 1, r.err
    (tmp_path / "list.json").write_text("[1]")
    r = run_cli("archive", str(src), "--name", "m", "--profile", "model", "--meta-file", str(tmp_path / "list.json"),
                "--json")
    assert r.code == 2 and r.json()["option"] == "meta_file" and "JSON object" in r.json()["error"]


def test_metadata_is_in_the_manifest_signed_and_indexed(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "ck", layers=1, dim=16)
    (tmp_path / "m.json").write_text(json.dumps(GOOD))
    priv, pub = api.keygen(tmp_path / "key")
    r = run_cli("archive", str(src), "--name", "m", "--profile", "model", "--meta-file", str(tmp_path / "m.json"),
                "--sign-key", str(priv), "--json")
    assert r.code == 0, r.err
    mid = r.json()["id"]
    shown = run_cli("show", mid, "--json").json()
    assert shown["manifest"]["profile"] == {"id": "archiver-model/1", "data": GOOD}
    assert run_cli("verify", mid, "--deep", "--trust-key", str(pub)).code == 0
    with api.open_repository(read_only=True) as repo:
        fields = dict(repo.manifest_fields(mid))
    assert fields["profile"] == "archiver-model/1" and fields["license"] == "apache-2.0"
    assert fields["provenance.lineage.model"] == "bert-base-uncased" and fields["runtime.frameworks.torch"] == "2.3.1"
    text = run_cli("show", mid).out
    assert "profile: archiver-model/1" in text and "  retired = 2026-03-01" in text


def test_manifests_without_a_profile_keep_their_bytes_and_ids():
    """The same trick as directory mtimes: absent fields are omitted, so ids made before hold."""
    e = Entry(path="a", type="file", mode=0o644, size=0, mtime_ns=1, blake3="0" * 64, sha256="1" * 64)
    m = Manifest(name="n", entries=(e,))
    expected = canonical({"entries": [{"blake3": "0" * 64, "chunks": [], "format": "", "mode": 420, "mtime_ns": 1,
                                       "path": "a", "sha256": "1" * 64, "size": 0, "type": "file"}],
                          "format": "archiver-manifest", "label": None, "meta": {}, "name": "n", "parent": None,
                          "version": 1})
    assert m.canonical_json() == expected
    assert parse_manifest(expected, m.id) == m


@pytest.mark.parametrize("profile, why", [
    ({"id": "x"}, "profile is not {id, data}"),
    ({"id": "x", "data": [1]}, "profile data is not an object"),
    ({"id": "", "data": {}}, "profile id"),
    ({"id": "x", "data": {"a": float("nan")}}, "non-finite"),
    ({"id": "x", "data": {"a": "\ud800"}}, "not valid UTF-8"),
    ({"id": "x", "data": {"a": "x" * (1024 * 1024)}}, "more than the"),
])
def test_reader_refuses_a_malformed_profile(profile, why):
    m = Manifest(name="n", entries=())
    obj = {**m.to_dict(), "profile": profile}
    with pytest.raises(ManifestError, match=why.replace("{", r"\{").replace("}", r"\}")):
        parse_manifest(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii", "surrogatepass")
                       if "\ud800" not in json.dumps(profile) else canonical(obj))


def test_reader_refuses_profile_data_nested_too_deeply():
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    obj = {**Manifest(name="n", entries=()).to_dict(), "profile": {"id": "x", "data": deep}}
    with pytest.raises(ManifestError, match="nested deeper"):
        parse_manifest(canonical(obj))


def test_api_takes_profile_data_as_a_dict(tmp_path):
    src = make_checkpoint(tmp_path / "ck", layers=1, dim=16)
    res = api.archive([src], name="m", profile="model", profile_data=GOOD, store=str(tmp_path / "s"),
                      catalog=str(tmp_path / "c.db"))
    _, m = api.show(res.id, store=str(tmp_path / "s"), catalog=str(tmp_path / "c.db"))
    assert m.profile == {"id": "archiver-model/1", "data": GOOD}
    with pytest.raises(InvalidOptionError) as err:
        api.archive([src], name="m", profile="model", profile_data={**GOOD, "license": ""},
                    store=str(tmp_path / "s"), catalog=str(tmp_path / "c.db"))
    assert err.value.option == "meta_file" and "/license" in err.value.reason
