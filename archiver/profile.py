"""Metadata profiles: structured metadata checked against a JSON Schema shipped with archiver.

`archive --profile model --meta-file model.json` puts the file's JSON object into the
manifest as {"id": "archiver-model/1", "data": {...}}, so it is hashed, chained and signed
with the weights. It is checked first, with the `jsonschema` package against the schema in
archiver/profiles/, and refused naming the first missing or invalid field as a JSON
pointer: a retirement record that says nothing useful is caught when it can still be fixed."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from archiver.errors import InvalidOptionError
from manifests.errors import ManifestError
from manifests.model import MAX_METADATA_BYTES, metadata_problem


@dataclass(frozen=True)
class Profile:
    """A profile: its short name (`--profile NAME`), its id recorded in manifests, and its schema file."""

    name: str
    id: str
    schema_file: str


PROFILES = {"model": Profile("model", "archiver-model/1", "archiver-model-1.schema.json")}


def schema(profile: Profile) -> dict[str, Any]:
    """The profile's JSON Schema, read from the installed package."""
    return _load_schema(profile.schema_file)


@lru_cache(maxsize=None)
def _load_schema(filename: str) -> dict[str, Any]:
    return json.loads(resources.files("archiver.profiles").joinpath(filename).read_text("utf-8"))


def find(name: str) -> Profile:
    """The profile called `name` (short name or id), or InvalidOptionError listing the known ones."""
    for p in PROFILES.values():
        if name in (p.name, p.id):
            return p
    raise InvalidOptionError("profile", f"{name!r} is not a known profile (known: {', '.join(sorted(PROFILES))})")


def pointer(parts: Any) -> str:
    """A JSON pointer (RFC 6901) for a path of keys and indexes."""
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts) if parts else "/"


def problem(profile: Profile, data: Any) -> str | None:
    """Why `data` does not satisfy the profile, naming the first bad field, or None.
    'First' is the smallest JSON pointer among the errors, so the answer is stable."""
    import jsonschema  # loaded only when a profile is used

    validator_cls = jsonschema.validators.validator_for(schema(profile))
    validator = validator_cls(schema(profile), format_checker=validator_cls.FORMAT_CHECKER)
    found = []
    for err in validator.iter_errors(data):
        path = list(err.absolute_path)
        if err.validator == "required":  # name the missing field itself, not its parent
            missing = [k for k in err.validator_value if isinstance(err.instance, dict) and k not in err.instance]
            if missing:
                found.append((pointer(path + [missing[0]]), "is missing (required)"))
                continue
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            extra = sorted(k for k in err.instance if k not in allowed and not k.startswith("x-"))
            if extra:
                found.append((pointer(path + [extra[0]]), "is not a field of this profile"))
                continue
        found.append((pointer(path), _short(err.message)))
    if not found:
        return None
    where, why = min(found, key=lambda f: (f[0].count("/"), f[0]))
    return f"{where} {why}"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def load_meta_file(path: str | os.PathLike, profile_name: str) -> dict[str, Any]:
    """Read `path` (a JSON object), check it against the profile, and return the manifest's
    profile block {"id", "data"}. InvalidOptionError('meta_file', ...) on any problem."""
    profile = find(profile_name)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_METADATA_BYTES + 1)
    except OSError as e:
        raise InvalidOptionError("meta_file", f"cannot read {os.fspath(path)}: {e.strerror}") from None
    if len(raw) > MAX_METADATA_BYTES:
        raise InvalidOptionError("meta_file", f"{os.fspath(path)} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidOptionError("meta_file", f"{os.fspath(path)} is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidOptionError("meta_file", f"{os.fspath(path)} is nested too deeply") from None
    return check(profile, data, where=os.fspath(path))


def check(profile: Profile, data: Any, where: str = "metadata") -> dict[str, Any]:
    """The profile block for `data`, or InvalidOptionError('meta_file', ...) naming the first bad field."""
    if not isinstance(data, dict):
        raise InvalidOptionError("meta_file", f"{where} must hold a JSON object, not {type(data).__name__}")
    try:
        metadata_problem(data, where)
    except ManifestError as e:
        raise InvalidOptionError("meta_file", str(e).removeprefix("malformed manifest: ")) from None
    why = problem(profile, data)
    if why is not None:
        raise InvalidOptionError("meta_file", f"{where} does not satisfy {profile.id}: {why}")
    return {"id": profile.id, "data": data}
