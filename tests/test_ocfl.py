"""export --ocfl: the name's parent chain as an OCFL 1.1 object (v1 = oldest), each file's
content stored once, validated by ocfl-py's validator; every byte re-hashed on the way."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from ocfl import Validator

from tests.helpers import RawStore, make_checkpoint, run_cli


@pytest.fixture
def chain(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "ck", layers=1, dim=16)
    ids = [run_cli("archive", str(src), "--name", "m", "--label", "v1", "--json").json()["id"]]
    (src / "notes.txt").write_text("second version")
    ids.append(run_cli("archive", str(src), "--name", "m", "--label", "v2", "--json").json()["id"])
    (src / "config.json").write_text('{"changed": true}')
    (src / "notes.txt").unlink()
    ids.append(run_cli("archive", str(src), "--name", "m", "--label", "v3", "--json").json()["id"])
    run_cli("archive", str(src), "--name", "other", "--json")  # another name: not in the object
    return tmp_path, src, ids


def test_object_validates_and_follows_the_chain(chain):
    tmp_path, src, ids = chain
    r = run_cli("export", "m", str(tmp_path / "obj"), "--ocfl", "--json")
    assert r.code == 0, r.err
    assert r.json()["versions"] == ids
    v = Validator(show_warnings=False)
    assert v.validate(str(tmp_path / "obj")), str(v.log)
    script = Path(sys.executable).parent / "ocfl-validate.py"  # the validator's own command line
    cli = subprocess.run([sys.executable, str(script), str(tmp_path / "obj")], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0 and "is VALID" in cli.stdout + cli.stderr, cli.stdout + cli.stderr
    inv = json.loads((tmp_path / "obj" / "inventory.json").read_text())
    assert inv["head"] == "v3" and list(inv["versions"]) == ["v1", "v2", "v3"]
    assert inv["type"] == "https://ocfl.io/1.1/spec/#inventory" and inv["digestAlgorithm"] == "sha512"
    assert (tmp_path / "obj" / "0=ocfl_object_1.1").read_text() == "ocfl_object_1.1\n"
    for n, mid in enumerate(ids, start=1):
        version = inv["versions"][f"v{n}"]
        assert mid in version["message"]
        manifest = run_cli("show", mid, "--json").json()["manifest"]
        files = {e["path"] for e in manifest["entries"] if e["type"] == "file"}
        assert {p for paths in version["state"].values() for p in paths} == files
    # content stored once: v2 adds only notes.txt, v3 only the changed config.json
    content = sorted(p.relative_to(tmp_path / "obj").as_posix() for p in (tmp_path / "obj").rglob("content/**/*")
                     if p.is_file())
    assert [c for c in content if c.startswith("v2/")] == ["v2/content/ck/notes.txt"]
    assert [c for c in content if c.startswith("v3/")] == ["v3/content/ck/config.json"]
    assert all(len(paths) == 1 for paths in inv["manifest"].values())
    for digest, (path,) in inv["manifest"].items():
        assert hashlib.sha512((tmp_path / "obj" / path).read_bytes()).hexdigest() == digest
    assert json.loads((tmp_path / "obj" / "v1" / "inventory.json").read_text())["head"] == "v1"


def test_exporting_an_older_version_stops_there(chain):
    tmp_path, _src, ids = chain
    assert run_cli("export", "m@v2", str(tmp_path / "obj"), "--ocfl").code == 0
    inv = json.loads((tmp_path / "obj" / "inventory.json").read_text())
    assert inv["head"] == "v2" and Validator(show_warnings=False).validate(str(tmp_path / "obj"))


def test_damage_stops_the_ocfl_export_and_leaves_nothing(chain):
    tmp_path, _src, ids = chain
    raw = RawStore(str(tmp_path / "home" / "store"))
    for key in raw.keys("chunks/"):
        raw.mutate(key, lambda b: b[:-1] + bytes([b[-1] ^ 1]))
        break
    r = run_cli("export", "m", str(tmp_path / "obj"), "--ocfl")
    assert r.code == 1 and not (tmp_path / "obj").exists()
