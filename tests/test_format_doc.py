"""docs/FORMAT.md promises a restore without archiver: run its scripts on a real store."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from archiver import layout
from manifests import model
from manifests.model import parse_filemap, parse_manifest, resolve_trees
from tests.helpers import RawStore, filemap_key, make_checkpoint, run_cli, tree

DOC = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


def _scripts() -> dict[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    out = {}
    for b in blocks:
        m = re.search(r'"""Usage: (\S+)', b)
        if m:
            out[m.group(1)] = b
    return out


@pytest.mark.parametrize("packed", [False, pytest.param(True, marks=pytest.mark.packs),
                                    pytest.param("all", marks=pytest.mark.packs)], ids=["own", "packs", "large-packs"])
def test_doc_scripts_restore_an_archive(tmp_path, monkeypatch, packed):
    _restore_by_hand(tmp_path, monkeypatch, packed=packed)


@pytest.mark.parametrize("form", ["binary", "json"])
def test_doc_scripts_restore_a_v2_archive(tmp_path, monkeypatch, form):
    """The same scripts on a manifest version 2 archive: every file of more than one chunk
    goes through a file map (the threshold lowered so that a small fixture has some), in
    binary form (what archive writes) or JSON (what earlier archivers wrote)."""
    monkeypatch.setattr(model, "FILEMAP_THRESHOLD", 1)
    if form == "json":
        monkeypatch.setattr(model, "filemap_bytes", model.filemap_json_bytes)
    _restore_by_hand(tmp_path, monkeypatch, v2=True, map_form=form)


def test_doc_scripts_restore_a_v3_archive(tmp_path, monkeypatch):
    """The same scripts on a manifest version 3 archive: its entries in trees (the threshold
    lowered so that a small fixture has some), with file maps inside them."""
    monkeypatch.setattr(model, "FILEMAP_THRESHOLD", 1)
    monkeypatch.setattr(model, "TREE_THRESHOLD", 3)
    _restore_by_hand(tmp_path, monkeypatch, v2=True, v3=True)


def _restore_by_hand(tmp_path, monkeypatch, v2: bool = False, packed: bool = False, v3: bool = False,
                     map_form: str = "binary"):
    if shutil.which("zstd") is None:
        pytest.skip("the zstd command is not installed (apt-get install zstd)")
    env = dict(os.environ)
    if shutil.which("b3sum") is None:  # stand-in with the same output, so the script logic is still tested
        shim = tmp_path / "bin"
        shim.mkdir()
        (shim / "b3sum").write_text(
            f"#!{sys.executable}\nimport sys, blake3\n"
            "print(blake3.blake3(open(sys.argv[-1], 'rb').read()).hexdigest())\n")
        (shim / "b3sum").chmod(0o755)
        env["PATH"] = f"{shim}:{env['PATH']}"
    scripts = _scripts()
    assert {"decode_chunk.py", "restore_by_hand.py"} <= set(scripts)
    work = tmp_path / "work"
    work.mkdir()
    for name, body in scripts.items():
        (work / name).write_text(body)
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    store = tmp_path / "store"
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=3, dim=512)
    if packed:
        (ckpt / "big.bin").write_bytes(os.urandom(3 << 20))  # large chunks keep their own keys
    if packed == "all":  # ... unless the threshold is above them (S3's default): every chunk in a pack
        monkeypatch.setenv("ARCHIVER_PACK_BELOW", str(16 << 20))
    res = run_cli("--store", str(store), "archive", str(ckpt), "--name", "m", "--json")
    assert res.code == 0, res.err
    mid = res.json()["id"]
    m = parse_manifest(RawStore(str(store)).read(layout.manifest(mid)), expected_id=mid)
    if v3:
        assert b'"version":3' in m.canonical_json() and b'"entries"' not in m.canonical_json()
        m = resolve_trees(m, lambda h, _: RawStore(str(store)).read(layout.tree(h)))[0]
        assert len(RawStore(str(store)).keys(layout.TREES)) >= 3  # top, ckpt, ckpt/tokenizer
    else:
        assert m.canonical_json().startswith(b'{"entries"') and (b'"version":2' in m.canonical_json()) == v2
    maps = [e for e in m.files if e.filemap]
    assert bool(maps) == v2
    assert all(filemap_key(RawStore(str(store)), e.filemap) == layout.filemap(e.filemap, binary=map_form == "binary")
               for e in maps)  # binary maps under .bin, JSON maps (earlier archivers) under .json: both read
    assert all(RawStore(str(store)).read(filemap_key(RawStore(str(store)), e.filemap)).startswith(
        b"ARCHFMAP" if map_form == "binary" else b'{"chunks":[') for e in maps)
    chunks = [c for e in m.files for c in e.chunks]
    chunks += [c for e in maps for c in parse_filemap(RawStore(str(store)).read(filemap_key(RawStore(str(store)), e.filemap)), e)]
    assert "bg2" in {c.codec for c in chunks}  # the byte-plane path of the script is exercised
    assert any((store / "packs").rglob("*")) == bool(packed)  # small chunk objects in packs (or not)
    assert any((store / "chunks").rglob("*")) == (packed != "all")  # large ones under their own keys
    dest = tmp_path / "dest"
    subprocess.run([sys.executable, "restore_by_hand.py", str(store), mid, str(dest)], cwd=work, env=env,
                   check=True, capture_output=True)
    assert tree(dest / "ckpt") == tree(ckpt)

