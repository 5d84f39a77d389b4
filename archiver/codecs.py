"""Chunk codec: raw chunk bytes <-> self-describing stored objects ("ARCK" objects).

Why a custom container instead of a bare zstd frame: model weights compress poorly
as a byte stream (the exponent bytes are very repetitive, the low mantissa bytes are
noise, and interleaving them hides the former from zstd). Splitting each element's
bytes into planes ("byte-grouping") lets zstd squeeze the exponent plane and lets us
store the noisy planes raw without paying zstd's CPU for nothing. The container
records how to undo this, so an object can be decoded with nothing but this module
or the stdlib plus the `zstd` command (see docs/FORMAT.md, "Chunk objects").

Layout (little-endian):

    header, 16 bytes:  magic b"ARCK" | version u8 = 1 | transform u8 | width u8
                       | nsections u8 | raw_length u64
    nsections descriptors, 24 bytes each:
                       codec u8 (0 raw, 1 zstd) | 7 zero bytes | stored_length u64
                       | raw_length u64
    section payloads, concatenated in order; nothing after.

    transform 0 (none):        width 0, exactly one section = the whole chunk.
    transform 1 (byte-planes): width in {2, 4, 8}; `width` plane sections (plane i =
                               bytes i, i+width, ... of the first
                               raw_length - raw_length % width bytes), then one raw
                               tail section with the last raw_length % width bytes
                               (possibly empty); nsections = width + 1.

Encoder policy (not part of the format; any valid object decodes):

* width not in {2, 4, 8} (0/1 or any other hint), or a chunk shorter than
  GROUP_MIN_BYTES: plain (transform 0).
* otherwise byte-planes; if no plane compresses at all, fall back to plain, because
  the grouped object would only add descriptors.
* each section (plain payload or plane) is stored zstd only if zstd makes it
  smaller. Sections longer than SAMPLE_BYTES are first probed: 16 evenly spaced
  4 KiB pieces (64 KiB) are compressed together; unless that sample shrinks to at
  most SAMPLE_MAX_RATIO (98%) of its size, the section is stored raw without
  compressing the whole thing. (16 small pieces rather than 4 big ones: a plane
  can be compressible in only part of a chunk, as in the first chunk of a real
  embedding matrix, and a few big pieces can miss that part entirely.)
* plain payloads use zstd `level` (default 3). Planes use a tuned zstd setting
  (_PLANE_ZSTD_KW: strategy "fast", min match 7, hash table of 2**7 entries, window
  512 KiB): an exponent plane is a stream of nearly independent low-entropy
  symbols, where chance matches cost more bits than the Huffman-coded literals they
  replace, so finding fewer of them is both smaller and faster. On real bf16
  weights this beat a larger hash table and zstd levels 1 and 3 on both size and
  speed, and left mantissa planes unchanged (measurements: bench/RESULTS.md,
  "Design measurements behind codec and malloc choices"). The cost: repeats
  further back than a few hundred elements are found less often than by level 1
  (short runs such as zero-filled regions are still found: they match at
  distance 1). Whole repeated chunks are deduplicated by address anyway.
  `plane_level=<int>` switches planes to a standard level.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import blake3
import zstandard

if TYPE_CHECKING:  # numpy is imported where planes or buffers are used, so a CLI start-up does not pay for it
    import numpy as np

from archiver.errors import CorruptChunkError, EncodeError
from manifests.model import MAX_CHUNK_LENGTH

MAGIC = b"ARCK"
VERSION = 1
TRANSFORM_NONE = 0
TRANSFORM_PLANES = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
GROUP_WIDTHS = (2, 4, 8)

HEADER = struct.Struct("<4sBBBBQ")  # 16 bytes
DESCRIPTOR = struct.Struct("<B7sQQ")  # 24 bytes
_ZERO7 = bytes(7)
_ZSTD_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"

# Below this, grouping cannot pay for its extra descriptors (24 bytes per plane)
# and per-plane zstd frame/Huffman-table overhead; such chunks are rare tails anyway.
GROUP_MIN_BYTES = 4096
# Incompressibility probe: compress this much (in SAMPLE_PIECES spread pieces) first.
SAMPLE_BYTES = 64 * 1024
SAMPLE_PIECES = 16
SAMPLE_MAX_RATIO = 0.98
# See the module docstring ("Planes use a tuned zstd setting") for why; the
# measurements are in bench/RESULTS.md.
_PLANE_ZSTD_KW = (
    ("strategy", zstandard.STRATEGY_FAST),
    ("window_log", 19),
    ("hash_log", 7),
    ("chain_log", 12),
    ("search_log", 1),
    ("min_match", 7),
    ("target_length", 0),
)


@dataclass(frozen=True)
class Encoded:
    """A stored object plus the short codec name the manifest records for it."""

    data: bytes
    codec: str  # "raw", "zstd", or "bg<width>" (byte-grouped planes)


class EncodedParts:
    """An encoded object not yet joined (Codec.encode_parts): its pieces, total size and codec
    name. A plain class, not a dataclass: one fewer class to generate at import."""

    __slots__ = ("parts", "size", "codec")

    def __init__(self, parts: list[bytes | memoryview], codec: str) -> None:
        self.parts = parts
        self.size = sum(len(p) for p in parts)
        self.codec = codec

    def join(self) -> Encoded:
        """The object as one bytes (what `encode` returns)."""
        return Encoded(b"".join(self.parts), self.codec)


@dataclass(frozen=True)
class _Section:
    codec: int
    offset: int  # of the payload inside the object
    stored_length: int
    raw_length: int


@dataclass(frozen=True)
class _Parsed:
    transform: int
    width: int
    raw_length: int
    sections: tuple[_Section, ...]


def _sample(data: bytes | memoryview) -> bytes | memoryview:
    """Evenly spread pieces, so a chunk straddling two tensors is judged on both."""
    n = len(data)
    if n <= SAMPLE_BYTES:
        return data
    piece = SAMPLE_BYTES // SAMPLE_PIECES
    step = (n - piece) // (SAMPLE_PIECES - 1)
    return b"".join(data[k * step : k * step + piece] for k in range(SAMPLE_PIECES))


def same_bytes(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> bool:
    """Byte equality at memory speed whatever the buffer types. `bytes == memoryview`
    compares item by item (~20x slower); numpy on 8-byte words makes an eighth of the
    temporary that a byte-wise compare makes."""
    if isinstance(a, bytes) and isinstance(b, bytes):
        return a == b  # memcmp
    import numpy as np
    x = np.frombuffer(a, dtype=np.uint8)
    y = np.frombuffer(b, dtype=np.uint8)
    n = x.size
    if n != y.size:
        return False
    k = n - n % 8
    return bool(np.array_equal(x[:k].view(np.uint64), y[:k].view(np.uint64)) and np.array_equal(x[k:], y[k:]))


_same = same_bytes  # the name the encoder has always used

# Elements as little-endian unsigned integers of `width` bytes: plane i is byte i of each
# element, i.e. (element >> 8*i) & 0xff, whatever the host's byte order.
_ELEMENT = {2: "<u2", 4: "<u4", 8: "<u8"}  # numpy dtype strings


# The page size the local store's O_DIRECT writes align to (archiver.directio.ALIGN): the plane
# buffer is placed at the same offset modulo it as a plane object's first plane.
PLANE_ALIGN = 4096


def split_planes(data: bytes | bytearray | memoryview, width: int, out: np.ndarray,
                 feed: Callable[[memoryview], object] | None = None) -> None:
    """Byte-planes of the first out.shape[1] elements of `data` into `out` (uint8, shape
    (width, plane_len)), e.g. a reused per-thread buffer. `feed`, if given, is called once
    with those elements' bytes (e.g. a hasher's update) before they are split.

    Why shifts and casts rather than a strided copy (grid[:, i]): a byte-strided gather
    runs one byte at a time, while a cast or shift of whole elements is vectorised; both
    release the GIL. Why one call per plane over the whole chunk rather than in cache-sized
    blocks: alone on one thread blocks are a little cheaper, but in the archive's pipeline,
    where a worker splits a chunk while the reading thread hashes that same chunk, the whole
    archive took more CPU (most of it in the reader's SHA-256) and more wall time with blocks
    (bench/RESULTS.md, "Archive wall time, seventh pass")."""
    import numpy as np
    plane_len = out.shape[1]
    elems = np.frombuffer(data, dtype=_ELEMENT[width], count=plane_len)
    if feed is not None:
        feed(memoryview(data).cast("B")[:plane_len * width])
    np.copyto(out[0], elems, casting="unsafe")  # truncation keeps the low byte
    for i in range(1, width):
        np.right_shift(elems, 8 * i, out=out[i], casting="unsafe")


def merge_planes(planes: list[np.ndarray], width: int, out: np.ndarray) -> None:
    """Inverse of split_planes: interleave `planes` (uint8, plane_len each) into `out`
    (uint8, width * plane_len bytes), by Horner's rule on whole elements (vectorised)
    rather than `width` byte-strided scatters."""
    import numpy as np
    dst = out.view(_ELEMENT[width])
    np.left_shift(planes[width - 1], 8, out=dst, dtype=_ELEMENT[width])
    np.bitwise_or(dst, planes[width - 2], out=dst)
    for i in range(width - 3, -1, -1):
        np.left_shift(dst, 8, out=dst)
        np.bitwise_or(dst, planes[i], out=dst)


def _byte_view(raw: bytes | bytearray | memoryview) -> bytes | memoryview:
    """Flat unsigned-byte view: len() must count bytes even for a typed memoryview."""
    if isinstance(raw, bytes):
        return raw
    mv = memoryview(raw)
    if mv.format == "B" and mv.ndim == 1 and mv.c_contiguous:
        return mv
    return mv.cast("B") if mv.c_contiguous else mv.tobytes()


class Codec:
    """Encodes/decodes chunk objects.

    Holds one zstd compressor/decompressor per thread (threading.local inside the
    instance), because zstd contexts are not safe to share across threads and are
    too costly to create per chunk. One instance can be shared by a thread pool.
    """

    def __init__(self, level: int = 3, *, plane_level: int | None = None) -> None:
        self.level = level
        self.plane_level = plane_level  # None: the tuned plane setting (_PLANE_ZSTD_KW)
        self._local = threading.local()

    # -- per-thread zstd contexts -------------------------------------------------

    def _compressor(self, level: int | None) -> zstandard.ZstdCompressor:
        """level None = the tuned plane setting."""
        cache = getattr(self._local, "compressors", None)
        if cache is None:
            cache = self._local.compressors = {}
        c = cache.get(level)
        if c is None:
            # Content size in every frame: the decoder refuses frames without it,
            # which is what bounds decompression memory. No zstd checksum: the
            # caller verifies BLAKE3 of the whole chunk anyway.
            if level is None:
                params = zstandard.ZstdCompressionParameters(
                    write_content_size=True, write_checksum=False, **dict(_PLANE_ZSTD_KW)
                )
                c = zstandard.ZstdCompressor(compression_params=params)
            else:
                c = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
            cache[level] = c
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "decompressor", None)
        if d is None:
            d = self._local.decompressor = zstandard.ZstdDecompressor()
        return d

    def _scratch(self, name: str, nbytes: int) -> np.ndarray:
        """A uint8 buffer of `nbytes` owned by this thread, reused from chunk to chunk.

        Why: a fresh multi-MiB buffer per chunk is fresh pages to fault in and zero (or
        at best a trip through malloc), which cost as much as the copy itself. The
        buffer only grows (to the largest chunk seen); it never leaves the codec but in
        `encode_parts`' raw planes (views, valid until this thread's next codec call): what
        else is returned to callers is always copied out (_assemble) or freshly allocated."""
        bufs = getattr(self._local, "scratch", None)
        if bufs is None:
            bufs = self._local.scratch = {}
        buf = bufs.get(name)
        if buf is None or buf.size < nbytes:
            import numpy as np
            buf = bufs[name] = np.empty(max(nbytes, 1), dtype=np.uint8)
        return buf[:nbytes]

    def _plane_buffer(self, width: int, body: int) -> np.ndarray:
        """This thread's plane buffer, (width, body // width) uint8, placed so that the first
        plane lies in memory where it lies in its object modulo PLANE_ALIGN (after the header
        and width + 1 descriptors). Why: a raw plane is then written by the local store's
        O_DIRECT writer straight from here, without a copy into its aligned buffer
        (archiver.directio); each raw plane that follows another raw one lines up too."""
        head = HEADER.size + (width + 1) * DESCRIPTOR.size
        buf = self._scratch("planes", body + PLANE_ALIGN)
        skip = (head - buf.ctypes.data) % PLANE_ALIGN
        return buf[skip:skip + body].reshape(width, body // width)

    def _round_trips(self, frame: bytes, payload: bytes | memoryview) -> bool:
        """Does `frame` decompress to exactly `payload`? Decoded into a reused per-thread
        buffer (one byte longer, so extra output shows) and compared in place."""
        n = len(payload)
        out = self._scratch("check", n + 1)
        reader = self._decompressor().stream_reader(frame, read_size=len(frame), read_across_frames=False)
        view = memoryview(out)
        got = 0
        while got <= n:
            k = reader.readinto(view[got:])
            if not k:
                break
            got += k
        return got == n and same_bytes(out[:n], payload)

    # -- chunk address and planes in one step ------------------------------------------

    def address(self, raw: bytes | memoryview, width: int = 0) -> str:
        """BLAKE3 (hex) of a chunk: its address. For a chunk that `encode` (or `matches`)
        would split into byte-planes, the planes are split right after it is hashed, into
        this thread's plane buffer; the next `encode`/`matches` of this very chunk on this
        thread then uses them instead of splitting it again (one pass fewer over every new
        chunk).

        Only an immutable `bytes` chunk is remembered (by identity, holding a reference,
        so it cannot change or be replaced by another object at the same address); it is
        forgotten as soon as the planes are used or the buffer is split for anything else,
        and at the latest by this thread's next `address` (so a chunk that turned out to be
        stored already keeps at most one chunk per thread alive a little longer)."""
        data = _byte_view(raw)
        n = len(data)
        self._local.split_of = None
        if type(data) is not bytes or width not in GROUP_WIDTHS or not GROUP_MIN_BYTES <= n <= MAX_CHUNK_LENGTH:
            return blake3.blake3(data).hexdigest()
        body = n - n % width
        planes = self._plane_buffer(width, body)
        hasher = blake3.blake3()
        split_planes(data, width, planes, feed=hasher.update)
        hasher.update(memoryview(data)[body:])
        self._local.split_of = (data, width)
        return hasher.hexdigest()

    def _planes(self, data: bytes | bytearray | memoryview, width: int, body: int) -> np.ndarray:
        """This thread's plane buffer holding the planes of `data`: split now, unless
        `address` just split this very chunk (same object, same width) into it."""
        planes = self._plane_buffer(width, body)
        held = getattr(self._local, "split_of", None)
        self._local.split_of = None
        if held is None or held[0] is not data or held[1] != width:
            split_planes(data, width, planes)
        return planes

    # -- encode -------------------------------------------------------------------

    def encode(self, raw: bytes | memoryview, width: int = 0) -> Encoded:
        """Encode one chunk; `width` is the element size in bytes (0 = not a tensor).

        Byte-planes only for width 2/4/8 (bf16/fp16, fp32, fp64/int64); any other
        width is treated as 0, since it is only a compression hint. See the module
        docstring for the exact policy.
        """
        return self.encode_parts(raw, width).join()

    def _squeeze(self, payload: bytes | memoryview, level: int | None) -> tuple[int, bytes | memoryview]:
        """zstd if it makes the payload smaller, else raw; probe big payloads first.

        Every zstd frame produced is decompressed and compared with its input before
        it is used: a compressor fault can never reach the store. (Decompression and
        the comparison are cheap next to compression, and release the GIL.)"""
        packed = self._pack(payload, level)
        if packed is None:
            return CODEC_RAW, payload
        if not self._round_trips(packed, payload):
            raise EncodeError(None, "zstd round trip mismatch while encoding")
        return CODEC_ZSTD, packed

    def _pack(self, payload: bytes | memoryview, level: int | None) -> bytes | None:
        """The zstd frame of `payload` if it is smaller (not yet checked), else None
        (store raw); big payloads are probed on a sample first (module docstring)."""
        n = len(payload)
        if n == 0:
            return None
        comp = self._compressor(level)
        if n > SAMPLE_BYTES:
            sample = _sample(payload)
            if len(comp.compress(sample)) > len(sample) * SAMPLE_MAX_RATIO:
                return None
        packed = comp.compress(payload)
        return packed if len(packed) < n else None

    def encode_parts(self, raw: bytes | memoryview, width: int = 0) -> EncodedParts:
        """`encode`, without joining the object: its pieces in order (header and descriptors,
        then each section's payload), for a store that writes pieces one after the other
        (LocalStore.put_parts_if_absent): the join is one more copy of every stored byte,
        into fresh pages. Same checks (every zstd frame round-trips), same bytes once joined.

        A raw plane is a view of this thread's plane buffer: the parts are valid only until
        this thread's next call into this codec, so write (or `join`) them before that."""
        data = _byte_view(raw)
        if len(data) > MAX_CHUNK_LENGTH:  # no manifest could name it: it would never be read back
            raise EncodeError(None, f"chunk of {len(data)} bytes is longer than the {MAX_CHUNK_LENGTH} a chunk can be")
        if width in GROUP_WIDTHS and len(data) >= GROUP_MIN_BYTES:
            grouped = self._plane_sections(data, width)
            if grouped is not None:
                return EncodedParts(_assemble_parts(TRANSFORM_PLANES, width, len(data), grouped), f"bg{width}")
        codec, payload = self._squeeze(data, self.level)
        return EncodedParts(_assemble_parts(TRANSFORM_NONE, 0, len(data), [(codec, payload, len(data))]),
                            "zstd" if codec == CODEC_ZSTD else "raw")

    def encode_small(self, raw: bytes) -> tuple[bytes, str]:
        """`encode(raw, 0)` as (object bytes, codec name), for a chunk of 1 to SAMPLE_BYTES
        bytes (no planes, no sample probe; anything else goes through `encode`): the one zstd
        attempt, the round-trip check of a frame kept, and the object joined once. Same bytes
        and codec as `encode` (tests/test_codecs.py). A small file's chunk otherwise spends a
        good part of its encoding in `encode_parts`' general steps and wrappers (bench/RESULTS.md,
        "Small-file archive: the workers' CPU per file (branch sfworkcpu)")."""
        n = len(raw)
        if type(raw) is not bytes or not 0 < n <= SAMPLE_BYTES:
            enc = self.encode(raw, 0)
            return enc.data, enc.codec
        packed = self._compressor(self.level).compress(raw)
        if len(packed) < n:
            if not self._round_trips(packed, raw):
                raise EncodeError(None, "zstd round trip mismatch while encoding")
            return (HEADER.pack(MAGIC, VERSION, TRANSFORM_NONE, 0, 1, n)
                    + DESCRIPTOR.pack(CODEC_ZSTD, _ZERO7, len(packed), n) + packed), "zstd"
        return HEADER.pack(MAGIC, VERSION, TRANSFORM_NONE, 0, 1, n) + DESCRIPTOR.pack(CODEC_RAW, _ZERO7, n, n) + raw, "raw"

    def _plane_sections(self, data: bytes | memoryview, width: int) -> list[tuple[int, bytes | memoryview, int]] | None:
        # Planes go into this thread's reused buffer (split_planes: vectorised, releases
        # the GIL, so two worker threads really use two cores); raw planes are views of
        # it that the join (or the piece-wise write, encode_parts) copies before the buffer is used again.
        n = len(data)
        body = n - n % width
        plane_len = body // width
        planes = self._planes(data, width, body)
        sections: list[tuple[int, bytes | memoryview, int]] = []
        any_zstd = False
        for i in range(width):
            codec, payload = self._squeeze(memoryview(planes[i]), self.plane_level)
            any_zstd |= codec == CODEC_ZSTD
            sections.append((codec, payload, plane_len))
        if not any_zstd:
            return None
        sections.append((CODEC_RAW, data[body:], n - body))
        return sections

    # -- decode -------------------------------------------------------------------

    def decode(self, obj: bytes | memoryview, expected_length: int, chunk: str = "?") -> bytes | bytearray:
        """Decode a stored object back to the chunk bytes.

        Raises CorruptChunkError for any malformation. Memory stays bounded by
        expected_length: every declared length is checked against it, and every
        zstd frame's own content size against its descriptor, before anything
        is allocated or decompressed, and expected_length itself is at most
        MAX_CHUNK_LENGTH (the chunker never cuts longer). The caller still verifies BLAKE3.
        """
        if not 0 <= expected_length <= MAX_CHUNK_LENGTH:
            raise CorruptChunkError(
                chunk, f"expected length {expected_length} is outside 0..{MAX_CHUNK_LENGTH}, the chunk length limit"
            )
        mv = _byte_view(obj)
        if not isinstance(mv, memoryview):
            mv = memoryview(mv)
        parsed = _parse(mv, chunk, expected_length)
        if parsed.transform == TRANSFORM_NONE:
            return bytes(self._section_bytes(mv, parsed.sections[0], chunk))
        width = parsed.width
        body = parsed.raw_length - parsed.raw_length % width
        import numpy as np
        buf = bytearray(parsed.raw_length)  # returned as is: no extra copy of the chunk
        out = np.frombuffer(buf, dtype=np.uint8)
        planes = [np.frombuffer(self._section_bytes(mv, sec, chunk), dtype=np.uint8)
                  for sec in parsed.sections[:width]]
        if body:
            merge_planes(planes, width, out[:body])  # vectorised, releases the GIL
        tail = parsed.sections[width]
        out[body:] = np.frombuffer(mv[tail.offset : tail.offset + tail.stored_length], dtype=np.uint8)
        del planes, out  # release the buffer export so the bytearray is an ordinary object again
        return buf

    def matches(self, obj: bytes | memoryview, data: bytes | bytearray | memoryview, chunk: str = "?") -> bool:
        """Does `obj` decode to exactly `data`? For proving a stored chunk against the
        source bytes at hand (dedup): the same checks as `decode` (CorruptChunkError for
        any malformation, memory bounded by len(data)), but instead of reassembling the
        chunk into a fresh buffer, the source is split into this thread's reused plane
        buffer and each section is compared with its plane as it is decoded."""
        src = _byte_view(data)
        n = len(src)
        if n > MAX_CHUNK_LENGTH:
            raise CorruptChunkError(chunk, f"expected length {n} is outside 0..{MAX_CHUNK_LENGTH}, the chunk length limit")
        mv = _byte_view(obj)
        if not isinstance(mv, memoryview):
            mv = memoryview(mv)
        parsed = _parse(mv, chunk, n)
        if parsed.transform == TRANSFORM_NONE:
            return same_bytes(self._section_bytes(mv, parsed.sections[0], chunk), src)
        width = parsed.width
        body = n - n % width
        planes = self._planes(src, width, body)
        for i, sec in enumerate(parsed.sections[:width]):
            if not same_bytes(self._section_bytes(mv, sec, chunk), planes[i]):
                return False
        tail = parsed.sections[width]
        return same_bytes(mv[tail.offset : tail.offset + tail.stored_length], src[body:])

    def _section_bytes(self, mv: memoryview, sec: _Section, chunk: str) -> bytes | memoryview:
        payload = mv[sec.offset : sec.offset + sec.stored_length]
        if sec.codec == CODEC_RAW:
            return payload
        # zstd: _parse guaranteed raw_length > 0 (python-zstandard returns b"" for a
        # frame declaring size 0 without looking at the rest of the input).
        if payload[:4] != _ZSTD_FRAME_MAGIC:
            raise CorruptChunkError(chunk, "zstd section does not start with a zstd frame")
        try:
            size = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as e:
            raise CorruptChunkError(chunk, f"bad zstd frame header: {e}") from None
        if size < 0:
            raise CorruptChunkError(chunk, "zstd frame does not declare its content size")
        if size != sec.raw_length:
            raise CorruptChunkError(
                chunk, f"zstd frame declares {size} bytes, descriptor {sec.raw_length}"
            )
        try:
            # With a declared content size python-zstandard allocates exactly that
            # (max_output_size only applies when it is absent); we checked it above.
            out = self._decompressor().decompress(
                payload, max_output_size=sec.raw_length, allow_extra_data=False
            )
        except zstandard.ZstdError as e:
            raise CorruptChunkError(chunk, f"zstd section: {e}") from None
        if len(out) != sec.raw_length:
            raise CorruptChunkError(chunk, "zstd section decoded to the wrong length")
        return out


def max_object_size(length: int) -> int:
    """The largest object `encode` makes for a chunk of `length` bytes: a section is zstd
    only when that is smaller, so the chunk's bytes plus the header and the most
    descriptors (width 8: eight planes and a tail). A larger object is not one of ours."""
    return length + HEADER.size + (max(GROUP_WIDTHS) + 1) * DESCRIPTOR.size


def _assemble(
    transform: int, width: int, raw_length: int, sections: list[tuple[int, bytes | memoryview, int]]
) -> bytes:
    return b"".join(_assemble_parts(transform, width, raw_length, sections))


def _assemble_parts(
    transform: int, width: int, raw_length: int, sections: list[tuple[int, bytes | memoryview, int]]
) -> list[bytes | memoryview]:
    """The object's pieces in order: header and descriptors as one small bytes, then each
    section's payload (empty ones left out: they add nothing to the object)."""
    head = [HEADER.pack(MAGIC, VERSION, transform, width, len(sections), raw_length)]
    head.extend(DESCRIPTOR.pack(codec, _ZERO7, len(payload), rl) for codec, payload, rl in sections)
    parts: list[bytes | memoryview] = [b"".join(head)]
    parts.extend(payload for _, payload, _ in sections if len(payload))
    return parts


def _parse(mv: memoryview, chunk: str, expected_length: int | None) -> _Parsed:
    """Validate header and descriptors against each other and the object length."""

    def bad(reason: str) -> CorruptChunkError:
        return CorruptChunkError(chunk, reason)

    total = len(mv)
    if total < HEADER.size:
        raise bad(f"object too short ({total} bytes) for a header")
    magic, version, transform, width, nsections, raw_length = HEADER.unpack_from(mv, 0)
    if magic != MAGIC:
        raise bad(f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise bad(f"unknown object version {version}")
    if expected_length is not None and raw_length != expected_length:
        raise bad(f"object declares {raw_length} bytes, expected {expected_length}")
    if transform == TRANSFORM_NONE:
        if width != 0 or nsections != 1:
            raise bad(f"transform 0 needs width 0 and 1 section, got {width} and {nsections}")
        want_raw = [raw_length]
    elif transform == TRANSFORM_PLANES:
        if width not in GROUP_WIDTHS:
            raise bad(f"invalid byte-plane width {width}")
        if nsections != width + 1:
            raise bad(f"width {width} needs {width + 1} sections, got {nsections}")
        want_raw = [raw_length // width] * width + [raw_length % width]
    else:
        raise bad(f"unknown transform {transform}")

    offset = HEADER.size + nsections * DESCRIPTOR.size
    if total < offset:
        raise bad("object truncated inside the section descriptors")
    sections = []
    for i in range(nsections):
        codec, zeros, stored, sec_raw = DESCRIPTOR.unpack_from(mv, HEADER.size + i * DESCRIPTOR.size)
        if codec not in (CODEC_RAW, CODEC_ZSTD):
            raise bad(f"section {i}: unknown codec {codec}")
        if zeros != _ZERO7:
            raise bad(f"section {i}: reserved bytes are not zero")
        if sec_raw != want_raw[i]:
            raise bad(f"section {i}: raw length {sec_raw}, expected {want_raw[i]}")
        if codec == CODEC_RAW and stored != sec_raw:
            raise bad(f"section {i}: raw section stores {stored} bytes for {sec_raw}")
        if codec == CODEC_ZSTD:
            if transform == TRANSFORM_PLANES and i == width:
                raise bad("tail section must be raw")
            if sec_raw == 0:
                raise bad(f"section {i}: empty sections must be raw")
        sections.append(_Section(codec, offset, stored, sec_raw))
        offset += stored
    if offset > total:
        raise bad(f"object truncated: sections need {offset} bytes, object has {total}")
    if offset < total:
        raise bad(f"{total - offset} trailing bytes after the last section")
    return _Parsed(transform, width, raw_length, tuple(sections))


def describe(obj: bytes | memoryview) -> str:
    """Codec name of a stored object ("raw", "zstd", "bg<width>"), from its header only.

    Validates the header and descriptors (not the payloads); raises CorruptChunkError.
    """
    mv = _byte_view(obj)
    parsed = _parse(mv if isinstance(mv, memoryview) else memoryview(mv), "?", None)
    if parsed.transform == TRANSFORM_PLANES:
        return f"bg{parsed.width}"
    return "zstd" if parsed.sections[0].codec == CODEC_ZSTD else "raw"


def stored_raw_payload(obj: bytes | memoryview, expected_length: int) -> bytes | memoryview | None:
    """The chunk bytes of a stored object in the one form an incompressible chunk takes (no
    transform, one raw section of exactly `expected_length` bytes, nothing after it), cut
    out without parsing: its 40-byte head must equal, byte for byte, the only head
    `Codec.decode` accepts for that form and length. None for any other object (`decode`
    then parses it, and words whatever is wrong). Most small files are stored so; a batch
    read (deep verify, restore) pays `_parse`'s checks once per chunk otherwise. The caller
    still verifies BLAKE3."""
    n = expected_length
    if not 0 <= n <= MAX_CHUNK_LENGTH or len(obj) != _RAW_HEAD_SIZE + n:
        return None
    head = HEADER.pack(MAGIC, VERSION, TRANSFORM_NONE, 0, 1, n) + DESCRIPTOR.pack(CODEC_RAW, _ZERO7, n, n)
    if obj[:_RAW_HEAD_SIZE] != head:
        return None
    return obj[_RAW_HEAD_SIZE:]


_RAW_HEAD_SIZE = HEADER.size + DESCRIPTOR.size
