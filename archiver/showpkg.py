"""The retirement-package part of `show`: model summary, profile fields and attachments,
as human lines (the CLI escapes them with `printable`)."""
from __future__ import annotations

import json

from archiver.progress import human_bytes
from archiver.techmeta import attachments_of, summary_line
from manifests.fields import flatten
from manifests.model import Manifest

MAX_VALUE_CHARS = 120  # longer profile values (notes) are shortened here; --json has them whole


def package_lines(m: Manifest) -> list[str]:
    lines = []
    summary = summary_line(m)
    if summary:
        lines.append(f"model:   {summary}")
    if m.profile is not None:
        lines.append(f"profile: {m.profile['id']}")
        for key, value in flatten(m.profile["data"]):
            text = value if isinstance(value, str) else json.dumps(value)
            text = " ".join(text.split())
            if len(text) > MAX_VALUE_CHARS:
                text = text[:MAX_VALUE_CHARS - 3] + "..."
            lines.append(f"  {key} = {text}")
    for role, e in attachments_of(m):
        lines.append(f"attach:  {role}: {e.path} ({human_bytes(e.size)})")
    return lines
