"""Recognise weights files and find their tensor byte ranges.

The chunker cuts weights at tensor boundaries so that a header edit (which shifts every
tensor) or a change to a few tensors leaves every other tensor's chunks byte-identical.
Everything here reads only headers/indexes, through a byte budget, and answers None
for anything it does not fully understand: the caller then falls back to plain
content-defined chunking, which is always correct, just less dedup-friendly.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO, Callable

# Never read more than this while parsing a header/index (spec: refuse headers > 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024
# Slack on top of MAX_HEADER_BYTES for the few fixed-size reads around a header.
_READ_BUDGET = MAX_HEADER_BYTES + 4 * 1024 * 1024


@dataclass(frozen=True)
class Region:
    """One tensor's bytes in a file."""

    offset: int  # absolute file offset of a tensor's bytes
    length: int
    width: int  # element byte width for byte-grouping, 0 = none

    @property
    def end(self) -> int:
        return self.offset + self.length


class Malformed(Exception):
    """Internal: the header is not what the format promises; detection answers None."""


class BudgetExceeded(Malformed):
    """Internal: parsing would read more than the header budget."""


class BoundedReader(io.RawIOBase):
    """A read-only view of `f` that refuses to read more than `budget` bytes in total.

    Wrapping every parser (including `zipfile`, which trusts the central-directory size
    it finds) in this makes "bounded reads on hostile input" a property of one class
    instead of a promise each parser has to keep."""

    def __init__(self, f: BinaryIO, budget: int = _READ_BUDGET):
        super().__init__()
        self._f = f
        self.budget = budget
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def _take(self, n: int) -> None:
        if n > self.budget - self.bytes_read:
            raise BudgetExceeded(f"header read of {n} bytes exceeds budget")
        self.bytes_read += n

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            pos = self._f.tell()
            end = self._f.seek(0, io.SEEK_END)
            self._f.seek(pos)
            n = max(0, end - pos)
        self._take(n)
        data = self._f.read(n) or b""
        if len(data) < n:  # raw files and pipes may return short reads: parsers want all
            parts = [data]
            got = len(data)
            while got < n:
                more = self._f.read(n - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def finalize(regions: list[Region], size: int, what: str) -> list[Region]:
    """Sort, drop empty regions, and check the result is usable (inside the file, no
    overlaps, positive widths). Raises Malformed(what) if not: a malformed index must
    not mis-cut a file."""
    out = sorted((r for r in regions if r.length > 0), key=lambda r: r.offset)
    prev_end = 0
    for r in out:
        if r.offset < prev_end or r.offset < 0 or r.end > size or r.width < 0:
            raise Malformed(what)
        prev_end = r.end
    return out


def tolerant(parse: Callable[[BinaryIO, int], list[Region]]) -> Callable[[BinaryIO, int], list[Region] | None]:
    """Wrap a parser that raises on malformed input into `regions(f, size)`, which
    returns None instead: hostile input must never raise out of format detection."""
    def regions(f: BinaryIO, size: int) -> list[Region] | None:
        try:
            return parse(f, size)
        except Exception:  # noqa: BLE001 - hostile input must never raise
            return None
    regions.__doc__ = parse.__doc__
    return regions


def detect_regions(f: BinaryIO, size: int) -> tuple[str, list[Region]] | None:
    """(format name, tensor regions sorted by offset, non-overlapping, within [0,size)) or
    None if not a recognised weights format or malformed (then the caller falls back to
    content-defined chunking). Never raises on hostile/garbage input; reads at most
    ~100 MB of header regardless of what the file claims."""
    from archiver.formats import gguf, safetensors, torchzip

    try:
        if size < 8:
            return None
        r = BoundedReader(f, 8)
        r.seek(0)
        head = r.read(8)
        if len(head) < 8:
            return None
        if head[:4] == gguf.MAGIC:
            name, mod = "gguf", gguf
        elif head[:4] == torchzip.MAGIC:
            name, mod = "torchzip", torchzip
        elif safetensors.looks_like(head, size):
            name, mod = "safetensors", safetensors
        else:
            return None
        regions = mod.regions(f, size)
        if regions is None:
            return None
        return name, regions
    except Exception:  # noqa: BLE001 - detection must never take the archiver down
        return None


def may_be_weights(head: bytes, size: int) -> bool:
    """Whether a file of `size` bytes starting with `head` (its first 8 bytes, or all of a
    shorter file) could be one that `detect_regions` recognises: False means it answers None
    without reading more, so a small file's bytes need no file object to tell."""
    if size < 8 or len(head) < 8:
        return False
    return head[:4] == gguf.MAGIC or head[:4] == torchzip.MAGIC or safetensors.looks_like(head, size)


def detect_summary(f: BinaryIO, size: int, fmt: str) -> dict | None:
    """Technical metadata of a weights file already recognised as `fmt` by `detect_regions`:
    {format, tensors, parameters: {dtype: count}, ...}, or None. Reads headers only, through
    the same byte budget, and never raises on hostile input."""
    from archiver.formats import gguf, safetensors, torchzip

    mod = {"safetensors": safetensors, "gguf": gguf, "torchzip": torchzip}.get(fmt)
    if mod is None:
        return None
    try:
        return mod.summary(f, size)
    except Exception:  # noqa: BLE001 - detection must never take the archiver down
        return None


# The parsers, once the names they import from this package exist (may_be_weights runs once
# per small file: it does not import them on each call).
from archiver.formats import gguf, safetensors, torchzip  # noqa: E402
