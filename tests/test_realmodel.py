"""The real all-MiniLM-L6-v2 model directory (fp32 safetensors, tokenizer, configs):
archived, deep-verified and restored byte-identical, locally and over real HTTP S3."""
from __future__ import annotations

import pytest

from tests.helpers import run_cli, tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("backend", ["local", "s3-server"])
def test_real_model_roundtrip(minilm, backend, tmp_path, monkeypatch, request):
    url = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_server_url")
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARCHIVER_STORE", url)
    r = run_cli("archive", str(minilm), "--name", "all-MiniLM-L6-v2", "--label", "retired", "--json")
    assert r.code == 0, r.err
    res = r.json()
    assert res["bytes_in"] > 90_000_000
    # byte-grouped fp32 beats plain zstd on real weights; plain zstd -3 stores ~0.915 of fp32
    assert res["bytes_stored"] < 0.86 * res["bytes_in"], res
    shown = run_cli("show", res["id"], "--json").json()["manifest"]
    st = next(e for e in shown["entries"] if e["path"].endswith("model.safetensors"))
    assert st["format"] == "safetensors" and {c[4] for c in st["chunks"]} >= {"bg4"}
    v = run_cli("verify", "all-MiniLM-L6-v2@retired", "--deep", "--json")
    assert v.code == 0 and v.json()["bytes_read"] == res["bytes_in"]
    again = run_cli("archive", str(minilm), "--name", "all-MiniLM-L6-v2", "--json").json()
    assert again["new_bytes_stored"] == 0
    dest = tmp_path / "restored"
    r = run_cli("restore", res["id"], str(dest), "--json")
    assert r.code == 0, r.err
    assert tree(dest / minilm.name) == tree(minilm)
