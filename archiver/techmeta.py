"""Technical metadata: what a file is, read from the file itself, and a one-line summary.

Weights files get {format, tensors, parameters per dtype, ...} from their headers
(archiver.formats); a Hugging Face style `config.json` gets its architecture, model type
and torch_dtype. It is recorded per file in the manifest ("tech"), so it is hashed and
signed with the bytes it describes, and indexed in the catalog for search."""
from __future__ import annotations

import json
from typing import Any, BinaryIO

from archiver.formats import detect_summary
from manifests.fields import model_summary
from manifests.model import Entry, Manifest

MAX_CONFIG_BYTES = 1024 * 1024  # a config.json larger than this is not a model config
CONFIG_KEYS = ("architectures", "model_type", "torch_dtype", "transformers_version")


def file_tech(f: BinaryIO, size: int, name: str, fmt: str) -> dict[str, Any] | None:
    """The tech object for one file (f positioned anywhere; left anywhere), or None."""
    if fmt:
        return detect_summary(f, size, fmt)
    if name == "config.json" and size <= MAX_CONFIG_BYTES:
        f.seek(0)
        return config_tech(f.read(size))
    return None


def config_tech(raw: bytes) -> dict[str, Any] | None:
    """{"config": {architectures, model_type, torch_dtype, transformers_version}} from a
    config.json, keeping only values of the expected shape; None if there is none."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    out: dict[str, Any] = {}
    archs = obj.get("architectures")
    if isinstance(archs, list) and archs and all(isinstance(a, str) and 0 < len(a) <= 200 for a in archs[:16]):
        out["architectures"] = archs[:16]
    for key in CONFIG_KEYS[1:]:
        value = obj.get(key)
        if isinstance(value, str) and 0 < len(value) <= 200:
            out[key] = value
    return {"config": out} if out else None


def human_count(n: int) -> str:
    """22_713_216 -> '22.7 M'; small counts as they are."""
    for div, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return str(n)


def summary_line(m: Manifest) -> str | None:
    """'BertModel, 22.7 M parameters, F32, 1 safetensors file', or None."""
    s = model_summary(m)
    if s is None:
        return None
    parts = [s["architecture"]] if s.get("architecture") else []
    if "parameters" in s:
        parts.append(f"{human_count(s['parameters'])} parameters")
        total = s["parameters"] or 1
        params = s.get("dtype_parameters", {})
        # the dtypes that hold the weights: a 512-element int64 position_ids buffer is not news
        main = [d for d in s["dtypes"] if params.get(d, total) * 100 >= total] or s["dtypes"][:1]
        if main:
            parts.append("/".join(main))
        if s.get("quantization"):
            parts.append(s["quantization"])
        parts.append(f"{s['files']} {s['format']} file{'s' if s['files'] != 1 else ''}")
    elif s.get("torch_dtype"):
        parts.append(s["torch_dtype"])
    return ", ".join(parts)


def attachments_of(m: Manifest) -> list[tuple[str, Entry]]:
    """(role, entry) of each attachment, in path order."""
    by_path = {e.path: e for e in m.entries}
    return [(role, by_path[path]) for role, path in sorted(m.attachments, key=lambda a: a[1])]


