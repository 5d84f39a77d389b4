"""Technical metadata read from the files themselves: per weights file the format, tensor
count and parameters per dtype (equal to the sum of the products of the shapes), the
safetensors __metadata__, GGUF key/values, the torch zip tensor count, config.json's
architecture and torch_dtype; recorded in the manifest, indexed, summarised by `show`."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from archiver import api
from archiver.formats import detect_regions, detect_summary
from archiver.techmeta import config_tech, human_count, summary_line
from manifests.fields import model_summary
from tests.fixtures import make_gguf, make_safetensors, make_torch_zip, random_tensor_bytes, transformer_tensors
from tests.helpers import run_cli


def expected_params(tensors) -> dict[str, int]:
    out: dict[str, int] = {}
    for dtype, shape, _ in tensors.values():
        n = 1
        for d in shape:
            n *= d
        out[dtype] = out.get(dtype, 0) + n
    return out


def summarize(path: Path) -> dict | None:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        fmt = detect_regions(f, size)
        return detect_summary(f, size, fmt[0]) if fmt else None


def test_safetensors_parameters_are_the_sum_of_the_shape_products(tmp_path):
    tensors = transformer_tensors(n_layers=2, hidden=32, vocab=50)
    tensors["pos"] = ("BF16", [7, 3], random_tensor_bytes("BF16", 21, 9))
    tensors["ids"] = ("I64", [5], random_tensor_bytes("I64", 5, 8))
    make_safetensors(tmp_path / "m.safetensors", tensors, metadata={"format": "pt", "note": "x"})
    s = summarize(tmp_path / "m.safetensors")
    assert s == {"format": "safetensors", "tensors": len(tensors), "parameters": expected_params(tensors),
                 "metadata": {"format": "pt", "note": "x"}}
    h = 32  # by hand: embeddings + per layer (q, k, v, out, 2 MLP matrices; their biases; 2 norms)
    per_layer = 4 * h * h + 2 * 4 * h * h + 4 * h + 4 * h + h + 2 * h
    assert s["parameters"] == {"F32": 50 * h + 2 * per_layer, "BF16": 21, "I64": 5}


def test_gguf_key_values_architecture_context_length_and_quantisation(tmp_path):
    tensors = {"tok": ("F32", [8, 4], random_tensor_bytes("F32", 32, 1)), "blk.q": ("Q8_0", [64, 2], bytes(4 * 34))}
    kv = {"general.architecture": "llama", "general.name": "tiny", "llama.context_length": 4096,
          "general.file_type": 7, "tokenizer.ggml.tokens": ["a", "b"], "general.alignment": 32}
    make_gguf(tmp_path / "m.gguf", tensors, kv)
    s = summarize(tmp_path / "m.gguf")
    assert s["format"] == "gguf" and s["tensors"] == 2
    assert s["parameters"] == {"F32": 32, "Q8_0": 128}
    assert s["architecture"] == "llama" and s["context_length"] == 4096 and s["quantization"] == "MOSTLY_Q8_0"
    assert s["gguf"]["general.name"] == "tiny" and not any(k.startswith("tokenizer.") for k in s["gguf"])


def test_torch_zip_tensor_count_and_storage_elements(tmp_path):
    tensors = transformer_tensors(n_layers=1, hidden=16, vocab=20)
    make_torch_zip(tmp_path / "pytorch_model.bin", tensors)
    s = summarize(tmp_path / "pytorch_model.bin")
    assert s == {"format": "torchzip", "tensors": len(tensors), "storages": len(tensors),
                 "parameters": expected_params(tensors)}


def test_hostile_headers_give_no_summary_and_never_raise():
    junk = io.BytesIO(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}" + bytes(100))
    assert detect_summary(junk, 116, "safetensors") is None
    assert detect_summary(io.BytesIO(b"GGUF" + bytes(40)), 44, "gguf") is None
    assert detect_summary(io.BytesIO(b"PK\x03\x04" + bytes(40)), 44, "torchzip") is None
    assert detect_summary(io.BytesIO(b""), 0, "unknown") is None


def test_config_json_architecture_and_dtype():
    raw = json.dumps({"architectures": ["BertModel"], "torch_dtype": "float32", "model_type": "bert",
                      "hidden_size": 384}).encode()
    assert config_tech(raw) == {"config": {"architectures": ["BertModel"], "model_type": "bert",
                                           "torch_dtype": "float32"}}
    assert config_tech(b"[1, 2]") is None and config_tech(b"{not json") is None
    assert config_tech(json.dumps({"architectures": "BertModel"}).encode()) is None


def test_human_count():
    assert [human_count(n) for n in (999, 22_713_216, 7_000_000_000)] == ["999", "22.7 M", "7.0 B"]


def test_archive_records_tech_and_show_prints_the_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = tmp_path / "model"
    src.mkdir()
    tensors = transformer_tensors(n_layers=2, hidden=32, vocab=100)
    make_safetensors(src / "model.safetensors", tensors, metadata={"format": "pt"})
    make_torch_zip(src / "pytorch_model.bin", tensors)  # the same weights twice: summarised once
    (src / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "torch_dtype": "float32"}))
    (src / "README.md").write_text("hello")
    r = run_cli("archive", str(src), "--name", "bert", "--json")
    assert r.code == 0, r.err
    mid = r.json()["id"]
    shown = run_cli("show", mid, "--json").json()
    entries = {e["path"]: e for e in shown["manifest"]["entries"]}
    assert entries["model/model.safetensors"]["tech"]["parameters"] == expected_params(tensors)
    assert entries["model/config.json"]["tech"] == {"config": {"architectures": ["BertModel"],
                                                               "torch_dtype": "float32"}}
    assert "tech" not in entries["model/README.md"]  # omitted when there is nothing to say
    total = sum(expected_params(tensors).values())
    assert shown["summary"] == {"architecture": "BertModel", "torch_dtype": "float32", "format": "safetensors",
                                "files": 1, "parameters": total, "dtypes": ["F32"],
                                "dtype_parameters": {"F32": total}}
    assert f"model:   BertModel, {human_count(total)} parameters, F32, 1 safetensors file" in run_cli("show", mid).out
    with api.open_repository(read_only=True) as repo:
        fields = repo.manifest_fields(mid)
    assert ("tech.architecture", "BertModel") in fields and ("tech.parameters", str(total)) in fields


def test_summary_line_for_gguf(tmp_path):
    make_gguf(tmp_path / "m.gguf", {"t": ("Q8_0", [32, 4], bytes(4 * 34))},
              {"general.architecture": "llama", "general.file_type": 7})
    res = api.archive([tmp_path / "m.gguf"], name="g", store=str(tmp_path / "s"), catalog=str(tmp_path / "c.db"))
    _, m = api.show(res.id, store=str(tmp_path / "s"), catalog=str(tmp_path / "c.db"))
    assert summary_line(m) == "llama, 128 parameters, Q8_0, MOSTLY_Q8_0, 1 gguf file"
    assert model_summary(m)["quantization"] == "MOSTLY_Q8_0"


def test_summary_line_names_the_dtypes_that_hold_the_weights(tmp_path):
    """A small int64 buffer (BERT's position_ids) is in the JSON summary, not in the line."""
    tensors = transformer_tensors(n_layers=1, hidden=32, vocab=100)
    tensors["embeddings.position_ids"] = ("I64", [1, 8], random_tensor_bytes("I64", 8, 3))
    make_safetensors(tmp_path / "model.safetensors", tensors)
    res = api.archive([tmp_path / "model.safetensors"], name="b", store=str(tmp_path / "s"),
                      catalog=str(tmp_path / "c.db"))
    _, m = api.show(res.id, store=str(tmp_path / "s"), catalog=str(tmp_path / "c.db"))
    total = sum(expected_params(tensors).values())
    assert summary_line(m) == f"{human_count(total)} parameters, F32, 1 safetensors file"
    assert model_summary(m)["dtypes"] == ["F32", "I64"]


def deep(n: int) -> dict:
    node: dict = {}
    for _ in range(n):
        node = {"a": node}
    return node


@pytest.mark.parametrize("tech, why", [
    ([1], "is not an object"),
    ({"a": float("inf")}, "non-finite"),
    (deep(40), "nested deeper"),
])
def test_reader_refuses_malformed_tech(tech, why):
    from manifests.errors import ManifestError
    from manifests.model import Manifest, canonical, parse_manifest
    entry = {"blake3": "0" * 64, "chunks": [], "format": "", "mode": 420, "mtime_ns": 1, "path": "a",
             "sha256": "1" * 64, "size": 0, "type": "file", "tech": tech}
    obj = {**Manifest(name="n", entries=()).to_dict(), "entries": [entry]}
    with pytest.raises(ManifestError, match=why):
        parse_manifest(canonical(obj))


def test_model_summary_takes_the_shallowest_config_among_many_files():
    """The config.json nearest the top wins (a nested one, e.g. a draft model's, does not),
    whatever the order of the entries; files without tech do not count."""
    from manifests.model import Entry, Manifest

    def f(path, tech=None):
        return Entry(path=path, type="file", mode=0o644, size=0, mtime_ns=0, blake3="0" * 64, sha256="0" * 64,
                     tech=tech)
    deep = f("m/draft/config.json", {"config": {"architectures": ["Draft"]}})
    top = f("m/config.json", {"config": {"architectures": ["Top"], "torch_dtype": "bfloat16"}})
    other = f("m/x/notconfig.json", {"config": {"architectures": ["Other"]}})
    plain = [f(f"m/d{i}/f{i}.txt") for i in range(50)]
    for entries in ([deep, top, other, *plain], [*plain, other, top, deep]):
        got = model_summary(Manifest(name="n", entries=tuple(entries)))
        assert got == {"architecture": "Top", "torch_dtype": "bfloat16"}
    assert model_summary(Manifest(name="n", entries=tuple(plain))) is None
