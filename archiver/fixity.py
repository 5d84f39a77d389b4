"""fixity status: has every byte been deep-verified within the window?

Why: a fixity programme (NDSA levels 3-4, Merritt's 90-day cycle) needs one answer per
archive and overall: the fraction of chunks and stored bytes a deep or sampled verify
found intact within the window, the oldest check, the chunks never checked and the
failures not repaired since. It reads the catalog's per-chunk check times, which a
`catalog rebuild` restores from the store's event log, so the answer survives losing
the catalog."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from archiver.errors import InvalidOptionError
from archiver.events import format_time
from archiver.repository import Repository


@dataclass
class Coverage:
    """One archive's chunks (or, for 'overall', every distinct chunk of every archive)."""

    name: str
    manifest: str | None
    chunks: int = 0
    bytes: int = 0
    chunks_ok: int = 0          # last deep check within the window found it intact
    bytes_ok: int = 0
    never_checked: int = 0
    stale: int = 0              # last check intact but older than the window
    failed: list[str] = field(default_factory=list)  # last check found it damaged or missing: unrepaired
    oldest_check: float | None = None  # the oldest last-check among checked chunks

    def add(self, h: str, size: int, at: float | None, ok: bool | None, since: float) -> None:
        self.chunks += 1
        self.bytes += size
        if at is None:
            self.never_checked += 1
            return
        self.oldest_check = at if self.oldest_check is None else min(self.oldest_check, at)
        if not ok:
            self.failed.append(h)
        elif at >= since:
            self.chunks_ok += 1
            self.bytes_ok += size
        else:
            self.stale += 1

    @property
    def within(self) -> bool:
        return self.chunks_ok == self.chunks

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "manifest": self.manifest, "chunks": self.chunks, "bytes": self.bytes,
                "chunks_ok": self.chunks_ok, "bytes_ok": self.bytes_ok,
                "fraction_chunks": _fraction(self.chunks_ok, self.chunks),
                "fraction_bytes": _fraction(self.bytes_ok, self.bytes), "never_checked": self.never_checked,
                "stale": self.stale, "failed": list(self.failed),
                "oldest_check": None if self.oldest_check is None else format_time(self.oldest_check),
                "within_window": self.within}


def _fraction(part: int, whole: int) -> float:
    return 1.0 if whole == 0 else part / whole


@dataclass
class FixityStatus:
    window_seconds: float
    since: float
    overall: Coverage
    archives: list[Coverage]
    # with copies: each copy's own coverage (from its catalog: the verifies run against it), by URL;
    # a copy that could not be opened is a string saying why
    copies: dict[str, "FixityStatus | str"] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.overall.within and all(not isinstance(c, str) and c.ok for c in self.copies.values())

    def to_dict(self) -> dict[str, Any]:
        out = {"ok": self.ok, "window_seconds": self.window_seconds, "since": format_time(self.since),
               "overall": self.overall.to_dict(), "archives": [a.to_dict() for a in self.archives]}
        if self.copies:
            out["copies"] = {url: ({"error": c} if isinstance(c, str) else c.to_dict()) for url, c in self.copies.items()}
        return out


DEFAULT_WINDOW = 90 * 86400.0


def status(repo: Repository, window: float = DEFAULT_WINDOW, now: float | None = None) -> FixityStatus:
    """Coverage of deep checks within `window` seconds before `now`, per archive and overall."""
    if not window > 0:
        raise InvalidOptionError("window", f"must be a duration > 0, got {window!r}")
    since = (time.time() if now is None else now) - window
    per: dict[str, Coverage] = {}
    overall = Coverage("overall", None)
    seen: set[str] = set()
    for mid, name, label, h, size, at, ok in repo.chunk_coverage():
        cov = per.get(mid)
        if cov is None:
            cov = per[mid] = Coverage(f"{name}@{label}" if label else name, mid)
        cov.add(h, size, at, ok, since)
        if h not in seen:
            seen.add(h)
            overall.add(h, size, at, ok, since)
    order = {r.id: i for i, r in enumerate(repo.list_archives())}  # oldest first, as `list` shows them
    return FixityStatus(window, since, overall, sorted(per.values(), key=lambda c: order.get(c.manifest or "", 0)))
