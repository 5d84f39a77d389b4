"""Cut a file into chunks whose bytes (and so BLAKE3 addresses) survive edits.

Weights files (safetensors, GGUF, torch zip) are cut at tensor boundaries: a header edit
shifts every tensor but changes no tensor chunk, and changing a few tensors changes only
their chunks. Everything else - and the non-tensor parts of weights files - is cut with
content-defined chunking (FastCDC), streamed through a bounded window so an 8 GiB file is
never held in memory.

Plan for a recognised weights file (all decisions depend only on the sequence of tensor
lengths/widths and the gaps between tensors, never on absolute offsets, so they are
unchanged when a header edit shifts the whole data section):

* bytes before the first tensor (header) and after the last (zip central directory,
  trailing members) and any gap between tensors larger than SMALL_GAP: width-0 CDC
  chunks of their own, so a header edit touches only header chunks;
* a gap of <= SMALL_GAP bytes after a tensor (GGUF alignment padding, zip local
  headers) is appended to the chunk ending that tensor, instead of becoming a tiny
  object of its own (if that would exceed max_chunk it stays a separate chunk);
* a tensor > max_chunk is split into pieces of floor(max_chunk/width)*width bytes from
  the tensor start (last piece shorter), so every piece starts on an element boundary;
* a tensor <= small_group starts a group, greedily extended by the following tensors of
  the same width that are each <= small_group, start at a multiple of the width from
  the group start, and keep the group (tensors plus absorbed gaps) <= small_group;
* any other tensor (small_group < length <= max_chunk) is one chunk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from fastcdc.fastcdc_cy import chunk_generator

from archiver.errors import SourceChangedError
from archiver.formats import Region, detect_regions
from manifests.model import MAX_CHUNK_LENGTH

SMALL_GAP = 4096  # non-tensor bytes between tensors up to this size ride with the tensor before


@dataclass(frozen=True)
class ChunkPolicy:
    """Chunk size limits. Defaults keep objects few (~2-8 MiB) but small enough to dedup."""

    max_chunk: int = 8 * 1024 * 1024  # largest chunk; big tensors are split into pieces of this size (a multiple of the width), counted from the tensor start
    # consecutive small tensors of the same width share a chunk up to this size: fewer objects, while
    # changing 10% of a real model's tensors still leaves ~95% of bytes deduplicated (8 MiB: only ~52%)
    small_group: int = 1024 * 1024
    cdc_min: int = 512 * 1024
    cdc_avg: int = 2 * 1024 * 1024
    cdc_max: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        # fastcdc's own limits (it does not check them when called this way).
        if not (64 <= self.cdc_min <= self.cdc_avg <= self.cdc_max <= 1 << 30):
            raise ValueError(f"bad CDC sizes {self.cdc_min}/{self.cdc_avg}/{self.cdc_max}")
        if self.cdc_avg < 256 or self.cdc_max < 1024:
            raise ValueError("cdc_avg must be >= 256 and cdc_max >= 1024")
        if self.max_chunk < 64 or not (0 < self.small_group <= self.max_chunk):
            raise ValueError("need 64 <= max_chunk and 0 < small_group <= max_chunk")
        if max(self.max_chunk, self.cdc_max) > MAX_CHUNK_LENGTH:  # no manifest could name such a chunk
            raise ValueError(f"max_chunk and cdc_max must be <= {MAX_CHUNK_LENGTH} (the chunk length limit)")


@dataclass(frozen=True)
class RawChunk:
    """A chunk's bytes and where they came from; `width` is a byte-grouping hint."""

    offset: int
    data: bytes
    width: int


@dataclass(frozen=True)
class Span:
    """A planned byte range: exactly one chunk, or (cdc=True) to be cut by FastCDC."""

    start: int
    end: int
    width: int
    cdc: bool


def _split_step(width: int, max_chunk: int) -> int:
    step = (max_chunk // width) * width if width else max_chunk
    return step or max_chunk


def plan(regions: list[Region], size: int, policy: ChunkPolicy) -> Iterator[Span]:
    """Turn sorted, non-overlapping regions into spans covering [0, size) in order.
    See the module docstring for the rules."""
    n = len(regions)

    def unit_end(k: int) -> int:
        """End of region k plus the gap after it when that gap is absorbed."""
        end = regions[k].end
        if k + 1 < n and regions[k + 1].offset - end <= SMALL_GAP:
            return regions[k + 1].offset
        return end

    pos = 0
    i = 0
    while i < n:
        r = regions[i]
        if r.offset > pos:  # header, or a large non-tensor gap
            yield Span(pos, r.offset, 0, True)
        end = unit_end(i)
        if r.length <= policy.small_group and end - r.offset <= policy.small_group:
            j = i
            while j + 1 < n and end == regions[j + 1].offset:
                q = regions[j + 1]
                if q.width != r.width or q.length > policy.small_group:
                    break
                if r.width and (q.offset - r.offset) % r.width:
                    break
                new_end = unit_end(j + 1)
                if new_end - r.offset > policy.small_group:
                    break
                j, end = j + 1, new_end
            yield Span(r.offset, end, r.width, False)
            i = j + 1
        else:
            a = r.offset
            if r.length > policy.max_chunk:
                step = _split_step(r.width, policy.max_chunk)
                while r.end - a > step:
                    yield Span(a, a + step, r.width, False)
                    a += step
            if end - a <= policy.max_chunk:
                yield Span(a, end, r.width, False)
            else:
                yield Span(a, r.end, r.width, False)
                yield Span(r.end, end, 0, False)
            i += 1
        pos = end
    if pos < size:
        yield Span(pos, size, 0, True)


def _changed(f: BinaryIO, detail: str) -> SourceChangedError:
    name = getattr(f, "name", None)
    where = name if isinstance(name, str) else "input"
    return SourceChangedError(f"{where} changed while being read: {detail}")


def _read_exact(f: BinaryIO, n: int, offset: int) -> bytes:
    data = f.read(n)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            raise _changed(f, f"ended at byte {offset + got}, expected {offset + n}")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _cdc_window(policy: ChunkPolicy) -> int:
    return 2 * policy.cdc_max


def cdc_stream(
    f: BinaryIO, start: int, end: int, policy: ChunkPolicy, window: int | None = None
) -> Iterator[RawChunk]:
    """FastCDC over f[start:end) (f positioned at `start`), identical to chunking those
    bytes in one buffer, holding at most `window` bytes (>= cdc_max).

    FastCDC decides a cut from at most cdc_max bytes after the chunk start, so a cut found
    in the window is final once the window extends cdc_max past the chunk start (or
    reaches the end); otherwise the unconsumed tail moves to the front and we refill."""
    total = end - start
    if total <= 0:
        return
    cap = max(window or _cdc_window(policy), policy.cdc_max)
    cap = min(cap, total)
    buf = bytearray(cap)
    mv = memoryview(buf)
    lo = hi = 0  # unconsumed bytes are buf[lo:hi]
    base = start  # file offset of buf[0]
    unread = total
    cmin, cavg, cmax = policy.cdc_min, policy.cdc_avg, policy.cdc_max
    while True:
        if lo:
            mv[: hi - lo] = mv[lo:hi]  # memmove; the tail is < cdc_max bytes
            base += lo
            hi -= lo
            lo = 0
        while hi < cap and unread:
            got = f.readinto(mv[hi : hi + min(cap - hi, unread)])
            if not got:
                raise _changed(f, f"ended at byte {base + hi}, expected {end}")
            hi += got
            unread -= got
        eof = not unread
        for c in chunk_generator(mv[:hi], cmin, cavg, cmax, False, None):
            s = c.offset
            if not eof and s + cmax > hi:
                break
            lo = s + c.length
            yield RawChunk(base + s, bytes(mv[s:lo]), 0)
        if eof and lo >= hi:
            return


_DETECT: Any = object()


def iter_chunks(f: BinaryIO, size: int, policy: ChunkPolicy = ChunkPolicy(), *,
                detected: tuple[str, list[Region]] | None = _DETECT) -> Iterator[RawChunk]:
    """Read `f` (opened 'rb', positioned anywhere) once, sequentially, yielding chunks that
    cover [0, size) exactly and contiguously in order. Memory stays within a small multiple
    of max(max_chunk, cdc_max) whatever the file size (nothing is mmapped or read whole).
    `detected` is `detect_regions`' answer when the caller already has it (so the header
    is parsed once). Raises SourceChangedError if the file ends before `size` or has
    bytes beyond it."""
    if size < 0:
        raise ValueError("negative size")
    if size == 0:
        spans: Iterator[Span] = iter(())
    elif size < policy.cdc_min:
        spans = iter([Span(0, size, 0, False)])
    else:
        if detected is _DETECT:
            detected = detect_regions(f, size)
        spans = plan(detected[1] if detected else [], size, policy)
    f.seek(0)
    for span in spans:
        if span.cdc:
            yield from cdc_stream(f, span.start, span.end, policy)
        else:
            data = _read_exact(f, span.end - span.start, span.start)
            yield RawChunk(span.start, data, span.width)
            del data
    if f.read(1):
        raise _changed(f, f"longer than the {size} bytes expected")


def describe_plan(path: str | os.PathLike[str], policy: ChunkPolicy = ChunkPolicy()) -> str:
    """One-paragraph summary of how a file would be chunked (format, regions, planned
    spans) without reading its data - for debugging dedup surprises."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        detected = detect_regions(f, size)
    fmt, regions = detected if detected else ("unrecognised", [])
    spans = list(plan(regions, size, policy))
    fixed = [s for s in spans if not s.cdc]
    by_width: dict[int, int] = {}
    for s in fixed:
        by_width[s.width] = by_width.get(s.width, 0) + 1
    cdc_bytes = sum(s.end - s.start for s in spans if s.cdc)
    return (
        f"{os.fspath(path)}: {size} bytes, format={fmt}, {len(regions)} tensor regions; "
        f"{len(fixed)} tensor chunks (by width: {dict(sorted(by_width.items()))}), "
        f"{len(spans) - len(fixed)} CDC ranges covering {cdc_bytes} bytes"
    )
