"""What an archive costs to keep and to get back, from a dated price file.

Pure arithmetic over object counts and sizes: no store access here (the caller asks the
Repository for the classes). Prices come from `archiver/prices/aws-us-east-1.json`
(AWS S3 public list prices for us-east-1, dated in the file) or any file of the same shape
given with `--prices`. AWS bills a GB as 2^30 bytes, a month of storage per GB-month, an
object in GLACIER or DEEP_ARCHIVE as its size plus 40 KiB of index data (32 KiB at the
class's rate, 8 KiB at STANDARD's), an object in STANDARD_IA or GLACIER_IR as at least
128 KiB; deleting before the class's minimum duration bills the rest of it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from archiver.errors import InvalidOptionError
from archiver.retention import COLD_CLASSES, TIERS
from archiver.thaw import THAW_HOURS

GB = 1024 ** 3
KiB = 1024
DEFAULT_PRICES = "aws-us-east-1.json"
PRICE_FORMAT = "archiver-prices"


def load_prices(path: str | Path | None = None) -> dict[str, Any]:
    """The shipped price file, or the one at `path` (checked for the keys used here)."""
    try:
        if path is None:
            text = resources.files("archiver").joinpath("prices", DEFAULT_PRICES).read_text()
        else:
            text = Path(path).read_text()
        prices = json.loads(text)
    except (OSError, ValueError) as e:
        raise InvalidOptionError("prices", f"cannot be read as a price file: {e}") from None
    needed = ("storage_per_gb_month", "put_per_1000", "get_per_1000", "retrieval_per_gb",
              "restore_request_per_1000", "minimum_storage_days", "cold_object_overhead_kib")
    if not isinstance(prices, dict) or prices.get("format") != PRICE_FORMAT or any(k not in prices for k in needed):
        raise InvalidOptionError("prices", f"is not an {PRICE_FORMAT} file with {', '.join(needed)}")
    return prices


@dataclass
class ClassCost:
    """One storage class's share of an archive."""

    storage_class: str
    objects: int = 0
    bytes: int = 0
    billed_bytes: int = 0  # with minimum object sizes and cold-object overhead at this class's rate
    standard_overhead_bytes: int = 0  # the cold objects' 8 KiB each billed at STANDARD's rate
    monthly_storage: float = 0.0
    upload_requests: float = 0.0  # PUTs to write these objects once
    minimum_days: int = 0
    minimum_charge: float = 0.0  # storage billed even if deleted at once: monthly * minimum_days / 30
    # per restore tier: requests, retrieval, get, total (USD) and expected hours (min, max)
    restore: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Estimate:
    id: str
    chunks: int
    stored_bytes: int
    classes: dict[str, ClassCost]
    monthly_storage: float
    prices_as_of: str
    prices_source: str
    what_if: str | None = None  # the class every chunk was priced in (estimate --class)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return asdict(self)


def _rate(table: dict[str, Any], cls: str, what: str) -> float:
    if cls not in table:
        raise InvalidOptionError("prices", f"has no {what} price for {cls}")
    return float(table[cls])


def class_cost(cls: str, sizes: Iterable[int], prices: dict[str, Any]) -> ClassCost:
    """Storage, upload and restore cost of objects of these sizes kept in class `cls`."""
    sizes = list(sizes)
    c = ClassCost(cls, objects=len(sizes), bytes=sum(sizes))
    min_kib = int((prices.get("minimum_billable_object_kib") or {}).get(cls, 0))
    c.billed_bytes = sum(max(s, min_kib * KiB) for s in sizes)
    if cls in COLD_CLASSES:
        over = prices["cold_object_overhead_kib"]
        c.billed_bytes += c.objects * int(over["at_class_rate"]) * KiB
        c.standard_overhead_bytes = c.objects * int(over["at_standard_rate"]) * KiB
    storage = prices["storage_per_gb_month"]
    c.monthly_storage = (c.billed_bytes / GB * _rate(storage, cls, "storage")
                         + c.standard_overhead_bytes / GB * _rate(storage, "STANDARD", "storage"))
    c.upload_requests = c.objects / 1000 * _rate(prices["put_per_1000"], cls, "PUT")
    c.minimum_days = int(prices["minimum_storage_days"].get(cls, 0))
    c.minimum_charge = c.monthly_storage * c.minimum_days / 30
    gets = c.objects / 1000 * _rate(prices["get_per_1000"], cls, "GET")
    retrieval = prices["retrieval_per_gb"].get(cls, {})
    requests = prices["restore_request_per_1000"].get(cls, {})
    tiers = [t for t in TIERS if t in retrieval] if cls in COLD_CLASSES else (["Standard"] if retrieval else [])
    for tier in tiers or ["Standard"]:
        req = c.objects / 1000 * float(requests.get(tier, 0.0)) if cls in COLD_CLASSES else 0.0
        ret = c.bytes / GB * float(retrieval.get(tier, 0.0))
        hours = THAW_HOURS.get((cls, tier)) if cls in COLD_CLASSES else (0.0, 0.0)
        c.restore["immediate" if cls not in COLD_CLASSES else tier] = {
            "restore_requests": req, "retrieval": ret, "get_requests": gets, "total": req + ret + gets,
            "hours": list(hours) if hours is not None else None}
    return c


def estimate(mid: str, chunk_sizes: dict[str, int], chunk_classes: dict[str, str], metadata_sizes: list[int],
             prices: dict[str, Any], what_if: str | None = None) -> Estimate:
    """The cost of an archive whose distinct chunks have these stored sizes and classes
    (absent: STANDARD), plus its hot metadata objects (manifest, signatures, records);
    with `what_if`, every chunk priced as if it were in that class."""
    by_class: dict[str, list[int]] = {}
    for h, size in sorted(chunk_sizes.items()):
        cls = what_if or chunk_classes.get(h, "STANDARD")
        by_class.setdefault(cls, []).append(size)
    by_class.setdefault("STANDARD", []).extend(metadata_sizes)
    classes = {cls: class_cost(cls, sizes, prices) for cls, sizes in sorted(by_class.items())}
    return Estimate(id=mid, chunks=len(chunk_sizes), stored_bytes=sum(chunk_sizes.values()), classes=classes,
                    monthly_storage=sum(c.monthly_storage for c in classes.values()),
                    prices_as_of=str(prices.get("as_of", "?")), prices_source=str(prices.get("source", "?")),
                    what_if=what_if)
