"""Thaw before restore: chunks in GLACIER or DEEP_ARCHIVE cannot be read until a
RestoreObject ("thaw") has made a temporary copy readable, which takes minutes to days.

Restore asks here first, before it writes anything: which of the chunks it needs are
cold and not yet readable. Without a thaw it refuses (ColdChunksError, naming how many
and how much). With one, each needed chunk is asked for once (deduplicated), a chunk
already thawing or thawed (its HEAD's x-amz-restore) is never asked for again, so a
restore killed while waiting resumes without re-requesting; then it polls until every
chunk is readable, or with wait=False returns at once saying when to come back."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from archiver.errors import InvalidOptionError, UsageError
from archiver.repository import Repository
from archiver.retention import COLD_CLASSES, TIERS
from manifests.model import Entry

GiB = 1024 ** 3
# Typical thaw times in hours, (from, to), as AWS documents them ("Archive retrieval options"
# in the S3 user guide): GLACIER Expedited 1-5 minutes, Standard 3-5 h, Bulk 5-12 h;
# DEEP_ARCHIVE Standard within 12 h, Bulk within 48 h (no Expedited).
THAW_HOURS = {
    ("GLACIER", "Expedited"): (1 / 60, 5 / 60),
    ("GLACIER", "Standard"): (3.0, 5.0),
    ("GLACIER", "Bulk"): (5.0, 12.0),
    ("DEEP_ARCHIVE", "Standard"): (0.0, 12.0),
    ("DEEP_ARCHIVE", "Bulk"): (0.0, 48.0),
}


class ColdChunksError(UsageError):
    """Restore needs chunks that sit in a cold class and are not thawed (remedy: thaw)."""

    def __init__(self, chunks: int, size: int, classes: list[str]) -> None:
        super().__init__(f"{chunks} chunks, {size / GiB:.2f} GiB in {'/'.join(classes)} are not thawed; "
                         f"nothing was written: re-run with a thaw")
        self.chunks = chunks
        self.bytes = size
        self.classes = ",".join(classes)
        self.remedy = "thaw"


@dataclass
class ThawStatus:
    """Where each needed cold chunk stands: frozen (no thaw asked), thawing, thawed."""

    chunks: int = 0  # distinct chunks needed
    cold_bytes: int = 0
    classes: dict[str, str] = field(default_factory=dict)  # hash -> storage class, cold ones only
    sizes: dict[str, int] = field(default_factory=dict)  # hash -> stored size, cold ones only
    frozen: list[str] = field(default_factory=list)
    thawing: list[str] = field(default_factory=list)
    thawed: list[str] = field(default_factory=list)
    requested: int = 0  # RestoreObject requests made by this run
    waited_seconds: float = 0.0

    @property
    def ready(self) -> bool:
        return not self.frozen and not self.thawing

    def to_dict(self) -> dict[str, object]:
        return {"chunks": self.chunks, "cold_chunks": len(self.classes), "cold_bytes": self.cold_bytes,
                "frozen": len(self.frozen), "thawing": len(self.thawing), "thawed": len(self.thawed),
                "requested": self.requested, "ready": self.ready, "waited_seconds": round(self.waited_seconds, 3),
                "classes": sorted(set(self.classes.values()))}


@dataclass(frozen=True)
class ThawOptions:
    """How to thaw: RestoreObject tier and days the thawed copy stays readable; wait polls
    every poll_seconds (at most max_wait seconds) with `report` called after each poll."""

    days: int = 7
    tier: str = "Bulk"
    wait: bool = True
    poll_seconds: float = 60.0
    max_wait: float | None = None
    report: Callable[[ThawStatus], None] | None = None


def prepare(repo: Repository, entries: Iterable[Entry], options: ThawOptions | None) -> ThawStatus | None:
    """What restore calls before writing anything: None on a store without storage classes;
    else the status of the needed cold chunks, after asking for their thaw if `options`.
    Without options, refuses (ColdChunksError) unless every needed chunk is readable now."""
    return prepare_chunks(repo, needed(entries), options)


def prepare_chunks(repo: Repository, chunks: dict[str, int], options: ThawOptions | None) -> ThawStatus | None:
    """`prepare` for a set of chunks (hash -> stored size)."""
    if not repo.has_storage_classes():
        return None
    if options is not None:
        check_tier(options.tier, options.days)
    st = survey(repo, chunks)
    if options is None:
        refuse_if_cold(st)
        return st
    if st.ready:
        return st
    return thaw(repo, st, days=options.days, tier=options.tier, wait=options.wait,
                poll_seconds=options.poll_seconds, max_wait=options.max_wait, report=options.report)


def needed(entries: Iterable[Entry]) -> dict[str, int]:
    """Distinct chunks of these entries -> stored size."""
    out: dict[str, int] = {}
    for e in entries:
        for c in e.chunks:
            out[c.hash] = c.stored_size
    return out


def survey(repo: Repository, chunks: dict[str, int]) -> ThawStatus:
    """One LIST per chunk prefix for the classes, then one HEAD per cold chunk for its
    thaw state."""
    st = ThawStatus(chunks=len(chunks))
    for h, sc in repo.chunk_classes(chunks).items():
        if sc in COLD_CLASSES:
            st.classes[h] = sc
            st.sizes[h] = chunks[h]
            st.cold_bytes += chunks[h]
    _refresh(repo, st, sorted(st.classes))
    return st


def _refresh(repo: Repository, st: ThawStatus, hashes: list[str]) -> None:
    st.frozen, st.thawing, st.thawed = [], [], []
    for h in hashes:
        state = repo.chunk_state(h)
        if state is None or state.restore_ongoing is None:
            st.frozen.append(h)
        elif state.restore_ongoing:
            st.thawing.append(h)
        else:
            st.thawed.append(h)


def _poll(repo: Repository, st: ThawStatus) -> None:
    """HEAD only the chunks still thawing (one request each per poll, not one per cold chunk)."""
    still: list[str] = []
    for h in st.thawing:
        state = repo.chunk_state(h)
        if state is None or state.restore_ongoing is None:
            st.frozen.append(h)  # its thaw is gone (replaced object, cancelled): asked for again
        elif state.restore_ongoing is False:
            st.thawed.append(h)
        else:
            still.append(h)
    st.thawing = still


def check_tier(tier: str, days: int) -> None:
    if tier not in TIERS:
        raise InvalidOptionError("tier", f"must be one of {', '.join(TIERS)}, got {tier!r}")
    if not isinstance(days, int) or days < 1:
        raise InvalidOptionError("days", f"must be a whole number of days >= 1, got {days!r}")


def refuse_if_cold(st: ThawStatus) -> None:
    """Without a thaw: refuse if any needed chunk cannot be read now."""
    if not st.ready:
        waiting = st.frozen + st.thawing
        raise ColdChunksError(len(waiting), sum(st.sizes[h] for h in waiting),
                              sorted({st.classes[h] for h in waiting}))


def thaw(repo: Repository, st: ThawStatus, *, days: int, tier: str, wait: bool, poll_seconds: float = 60.0,
         max_wait: float | None = None, report: Callable[[ThawStatus], None] | None = None,
         sleep: Callable[[float], None] = time.sleep) -> ThawStatus:
    """Ask for a thaw of every frozen chunk (once each), then with `wait` poll until all are
    readable (or `max_wait` seconds have passed), calling `report` after each poll."""
    check_tier(tier, days)
    if tier == "Expedited" and any(st.classes[h] == "DEEP_ARCHIVE" for h in st.frozen):
        raise InvalidOptionError("tier", "Expedited is not available for DEEP_ARCHIVE (use Standard or Bulk)")
    for h in list(st.frozen):
        repo.request_thaw(h, days, tier)
        st.requested += 1
    _refresh(repo, st, sorted(st.classes))
    if report is not None:
        report(st)
    started = time.monotonic()
    while wait and not st.ready:
        if max_wait is not None and time.monotonic() - started >= max_wait:
            break
        sleep(poll_seconds)
        _poll(repo, st)
        for h in st.frozen:
            repo.request_thaw(h, days, tier)
            st.requested += 1
            st.thawing.append(h)
        st.frozen = []
        st.waited_seconds = time.monotonic() - started
        if report is not None:
            report(st)
    return st


def expected_hours(classes: Iterable[str], tier: str) -> tuple[float, float] | None:
    """The slowest documented thaw time of these classes at this tier, or None if unknown."""
    spans = [THAW_HOURS.get((c, tier)) for c in set(classes)]
    if not spans or any(s is None for s in spans):
        return None
    return min(s[0] for s in spans if s), max(s[1] for s in spans if s)
