"""The shape shared by verify and restore results: ok exactly when no problems were found."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any


class Outcome:
    """Mixin for result dataclasses with a `problems` list; `to_dict` is what --json prints."""

    problems: list

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d["ok"] = self.ok
        return d
