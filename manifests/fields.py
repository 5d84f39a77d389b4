"""What the catalog indexes of a manifest for search, and the model summary it is built on.

Both depend only on the manifest: the profile's data flattened to dotted keys, meta,
attachment roles, and a summary of the weights files' technical metadata ("tech")."""
from __future__ import annotations

from typing import Any, Iterable

from manifests.model import Manifest

# the order weights formats are preferred in when one model ships several (safetensors and .bin)
_PREFERRED = ("safetensors", "gguf", "torchzip")


def model_summary(m: Manifest) -> dict[str, Any] | None:
    """{architecture, parameters, dtypes, format, files} over the manifest's weights files
    (of the preferred format when several are present), or None if it holds none."""
    weights = [e for e in m.files if e.tech and e.tech.get("format") in _PREFERRED]
    configs = [e for e in m.files if e.tech and "config" in e.tech and e.path.rsplit("/", 1)[-1] == "config.json"]
    # the shallowest (a stable sort of the few with a config, not of every file of the manifest)
    config = next((e.tech["config"] for e in sorted(configs, key=lambda e: e.path.count("/"))), None)
    if not weights and not config:
        return None
    out: dict[str, Any] = {}
    if config and config.get("architectures"):
        out["architecture"] = config["architectures"][0]
    if config and config.get("torch_dtype"):
        out["torch_dtype"] = config["torch_dtype"]
    if weights:
        fmt = next(f for f in _PREFERRED if any(e.tech["format"] == f for e in weights))
        chosen = [e for e in weights if e.tech["format"] == fmt]
        params: dict[str, int] = {}
        for e in chosen:
            for dtype, n in (e.tech.get("parameters") or {}).items():
                if isinstance(n, int):
                    params[dtype] = params.get(dtype, 0) + n
        out.update(format=fmt, files=len(chosen), parameters=sum(params.values()),
                   dtypes=sorted(params, key=lambda d: -params[d]), dtype_parameters=params)
        if "architecture" not in out:
            arch = next((e.tech.get("architecture") for e in chosen if e.tech.get("architecture")), None)
            if arch:
                out["architecture"] = arch
        quant = next((e.tech.get("quantization") for e in chosen if e.tech.get("quantization")), None)
        if quant:
            out["quantization"] = quant
    return out


def index_fields(m: Manifest) -> Iterable[tuple[str, Any]]:
    """(key, value) pairs the catalog indexes for search: profile data flattened to dotted
    keys (a list gives one pair per item), meta as meta.KEY, the profile id, attachment
    roles, and the model summary as tech.* ."""
    if m.profile is not None:
        yield "profile", m.profile["id"]
        yield from flatten(m.profile["data"])
    for k, v in m.meta.items():
        yield f"meta.{k}", v
    for role, _path in m.attachments:
        yield "attachment", role
    s = model_summary(m)
    if s:
        for k, v in s.items():
            if isinstance(v, dict):
                continue  # dtype_parameters: tech.dtypes and tech.parameters index it
            if isinstance(v, list):
                for item in v:
                    yield f"tech.{k}", item
            else:
                yield f"tech.{k}", v


def flatten(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """{"a": {"b": 1, "c": [2, 3]}} -> ("a.b", 1), ("a.c", 2), ("a.c", 3). Iterative: the
    depth is bounded by the manifest reader, not by the interpreter's stack."""
    stack: list[tuple[str, Any]] = [(prefix, value)]
    out: list[tuple[str, Any]] = []
    while stack:
        key, v = stack.pop()
        if isinstance(v, dict):
            stack.extend((f"{key}.{k}" if key else k, x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((key, x) for x in v)
        elif key:
            out.append((key, v))
    return sorted(out, key=lambda kv: kv[0])
