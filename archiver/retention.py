"""Write policies for long-term storage: S3 Object Lock (mode, retain-until, legal hold)
and the storage class of chunk objects.

A `WritePolicy` is resolved once from the user's options and passed down through the
Repository to `Store.put_if_absent`; stores that cannot honour it refuse it before any
write (`stores.check_write_policy`). Retention only ever grows: `merge` gives the lock an
object must end up with when a new policy meets an existing lock (later date, stronger
mode), never a shorter one. The policy an archive was made with is kept in the store as a
small record under `layout.retention_record` (locked like the archive), so `verify
--retention` can check it after a catalog rebuild."""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from archiver.errors import InvalidOptionError

MODES = ("GOVERNANCE", "COMPLIANCE")
# Storage classes a chunk may be written in; the first two are read like STANDARD.
STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")
# Classes whose objects cannot be read until a RestoreObject ("thaw") has completed.
COLD_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
TIERS = ("Bulk", "Standard", "Expedited")
RECORD_FORMAT = "archiver-retention"

_FOR = re.compile(r"^\s*(\d+)\s*([dwy])\s*$")


def utc(t: dt.datetime) -> dt.datetime:
    """`t` in UTC, whole seconds (S3 keeps retain-until dates to the second)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).replace(microsecond=0)


def iso(t: dt.datetime) -> str:
    return utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_date(text: str, option: str) -> dt.datetime:
    """'2056-01-01' (midnight UTC) or an ISO 8601 date-time ('2056-01-01T12:00:00Z')."""
    raw = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            return dt.datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
        return utc(dt.datetime.fromisoformat(raw.replace("Z", "+00:00")))
    except ValueError:
        raise InvalidOptionError(option, f"takes a date such as 2056-01-01 or 2056-01-01T00:00:00Z, got {text!r}") \
            from None


def add_period(now: dt.datetime, text: str, option: str) -> dt.datetime:
    """now + '30y' (calendar years), '52w' or '90d'."""
    m = _FOR.match(text.lower())
    if m is None:
        raise InvalidOptionError(option, f"takes a period such as 30y, 52w or 90d, got {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    if unit == "y":
        year = now.year + n
        day = now.day if not (now.month == 2 and now.day == 29) else 28
        return utc(now.replace(year=year, day=day))
    return utc(now + dt.timedelta(days=n * (7 if unit == "w" else 1)))


@dataclass(frozen=True)
class Lock:
    """An Object Lock as S3 reports or applies it: mode and retain-until, and legal hold."""

    mode: str | None = None
    until: dt.datetime | None = None
    legal_hold: bool = False

    def covers(self, want: "Lock") -> bool:
        """Whether this lock is at least `want`: as long, as strong a mode, the hold if asked."""
        if want.mode is not None:
            if self.mode is None or self.until is None or want.until is None or self.until < want.until:
                return False
            if want.mode == "COMPLIANCE" and self.mode != "COMPLIANCE":
                return False
        return self.legal_hold or not want.legal_hold

    def merge(self, want: "Lock") -> "Lock":
        """The lock to apply so the object holds both: later date, stronger mode, either hold."""
        until = max((t for t in (self.until, want.until) if t is not None), default=None)
        mode = "COMPLIANCE" if "COMPLIANCE" in (self.mode, want.mode) else (self.mode or want.mode)
        return Lock(mode, until, self.legal_hold or want.legal_hold)

    def shortfall(self, want: "Lock") -> str | None:
        """Why this lock does not cover `want`, in words; None if it does."""
        if self.covers(want):
            return None
        if want.mode is not None and (self.mode is None or self.until is None):
            return "no Object Lock retention"
        if want.mode is not None and want.until is not None and self.until is not None and self.until < want.until:
            return f"retained until {iso(self.until)}, less than {iso(want.until)}"
        if want.mode == "COMPLIANCE" and self.mode != "COMPLIANCE":
            return f"lock mode {self.mode}, not COMPLIANCE"
        return "no legal hold"


@dataclass(frozen=True)
class WritePolicy:
    """How new objects are written: an optional Object Lock and, for chunks only, a storage class."""

    lock: Lock = Lock()
    storage_class: str | None = None

    @property
    def locked(self) -> bool:
        return self.lock.mode is not None or self.lock.legal_hold

    def for_metadata(self) -> "WritePolicy":
        """The same lock in the STANDARD class: manifests, signatures and records stay hot, so
        list, show, shallow verify and catalog rebuild never need a thaw."""
        return replace(self, storage_class=None)

    def record(self, mid: str) -> bytes:
        """The canonical bytes of this policy's record for manifest `mid`."""
        doc: dict[str, Any] = {"format": RECORD_FORMAT, "version": 1, "manifest": mid,
                               "mode": self.lock.mode, "retain_until": iso(self.lock.until) if self.lock.until else None,
                               "legal_hold": self.lock.legal_hold, "storage_class": self.storage_class}
        return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def parse_record(data: bytes, mid: str) -> Lock:
    """The lock a retention record asks for; ValueError if it is not one for `mid`."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT or doc.get("manifest") != mid:
        raise ValueError("not a retention record of this manifest")
    mode = doc.get("mode")
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown lock mode {mode!r}")
    until = doc.get("retain_until")
    return Lock(mode, parse_date(until, "retain_until") if until else None, bool(doc.get("legal_hold")))


def make_policy(*, lock_mode: str | None = None, retain_until: str | dt.datetime | None = None,
                retain_for: str | None = None, legal_hold: bool = False, storage_class: str | None = None,
                now: dt.datetime | None = None) -> WritePolicy | None:
    """The policy for these options, checked now (InvalidOptionError naming the parameter);
    None when nothing was asked for."""
    now = utc(now or dt.datetime.now(dt.timezone.utc))
    mode = lock_mode.upper() if lock_mode else None
    if mode is not None and mode not in MODES:
        raise InvalidOptionError("lock_mode", f"must be governance or compliance, got {lock_mode!r}")
    if retain_until is not None and retain_for is not None:
        raise InvalidOptionError("retain_for", "and retain_until cannot both be given")
    until: dt.datetime | None = None
    if retain_until is not None:
        until = utc(retain_until) if isinstance(retain_until, dt.datetime) else parse_date(retain_until, "retain_until")
    elif retain_for is not None:
        until = add_period(now, retain_for, "retain_for")
    if (mode is None) != (until is None):
        raise InvalidOptionError("lock_mode" if mode is None else "retain_until",
                                 "is needed too: an Object Lock takes a mode and a retention date "
                                 "(retain_until or retain_for)")
    if until is not None and until <= now:
        raise InvalidOptionError("retain_until", f"must be in the future, got {iso(until)}")
    sc = storage_class.upper() if storage_class else None
    if sc is not None and sc not in STORAGE_CLASSES:
        raise InvalidOptionError("storage_class", f"must be one of {', '.join(STORAGE_CLASSES)}, got {storage_class!r}")
    if mode is None and not legal_hold and sc in (None, "STANDARD"):
        return None
    return WritePolicy(Lock(mode, until, legal_hold), None if sc == "STANDARD" else sc)
