"""Tests for archiver.codecs: lossless round trips, compression on float data, the
documented byte layout, and rejection of every kind of malformed object (with
bounded memory for forged zstd sizes)."""
from __future__ import annotations

import array
import os
import random
import shutil
import struct
import subprocess
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard

from archiver.codecs import Codec, Encoded, describe
from archiver.errors import CorruptChunkError

HEADER = struct.Struct("<4sBBBBQ")
DESC = struct.Struct("<B7sQQ")
ZSTD3 = zstandard.ZstdCompressor(level=3)


# -- data -----------------------------------------------------------------------


def _normal(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0.0, 0.02) for _ in range(n)]


def _bf16_from_fp32(fp32: bytes) -> bytes:
    """bf16 = the high 2 bytes of each little-endian fp32 (truncation)."""
    out = bytearray(len(fp32) // 2)
    out[0::2] = fp32[2::4]
    out[1::2] = fp32[3::4]
    return bytes(out)


@pytest.fixture(scope="module")
def floats() -> dict[str, bytes]:
    vals = _normal(1 << 18, seed=1234)
    fp32 = array.array("f", vals).tobytes()
    return {
        "fp32": fp32,  # 1 MiB
        "bf16": _bf16_from_fp32(fp32),  # 512 KiB
        "fp16": struct.pack(f"<{len(vals)}e", *vals),  # 512 KiB
        "fp64": array.array("d", vals[: 1 << 16]).tobytes(),  # 512 KiB
    }


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


# -- helpers --------------------------------------------------------------------


def build(
    sections: list[tuple[int, bytes, int]],
    *,
    transform: int = 0,
    width: int = 0,
    raw_length: int | None = None,
    magic: bytes = b"ARCK",
    version: int = 1,
    nsections: int | None = None,
) -> bytes:
    """Assemble an object by hand from the documented layout (independent of the codec)."""
    if raw_length is None:
        raw_length = sum(rl for _, _, rl in sections)
    n = len(sections) if nsections is None else nsections
    out = HEADER.pack(magic, version, transform, width, n, raw_length)
    out += b"".join(DESC.pack(c, bytes(7), len(p), rl) for c, p, rl in sections)
    return out + b"".join(p for _, p, _ in sections)


def parse(obj: bytes) -> tuple[tuple, list[tuple[int, int, int]], list[bytes]]:
    """Split an object per the documented layout: header, descriptors, payloads."""
    hdr = HEADER.unpack_from(obj, 0)
    n = hdr[4]
    descs = []
    payloads = []
    off = HEADER.size + n * DESC.size
    for i in range(n):
        codec, zeros, stored, raw = DESC.unpack_from(obj, HEADER.size + i * DESC.size)
        assert zeros == bytes(7)
        descs.append((codec, stored, raw))
        payloads.append(obj[off : off + stored])
        off += stored
    assert off == len(obj)
    return hdr, descs, payloads


def zstd_bomb(claimed: int, real: int) -> bytes:
    """A valid zstd frame whose header claims `claimed` bytes and whose RLE blocks
    expand to `real` zero bytes (4 stored bytes per 128 KiB). Window 128 KiB, so a
    streaming decoder can check it without a big allocation."""
    fhd = 0b1000_0000  # FCS field 4 bytes, not single-segment, no checksum, no dict
    window = 7 << 3  # windowLog = 10 + 7 = 17 -> 128 KiB
    frame = bytearray(b"\x28\xb5\x2f\xfd" + bytes([fhd, window]) + struct.pack("<I", claimed))
    block = 128 * 1024
    left = real
    while True:
        size = min(block, left)
        left -= size
        last = 1 if left == 0 else 0
        frame += (last | (1 << 1) | (size << 3)).to_bytes(3, "little") + b"\x00"  # RLE block
        if last:
            return bytes(frame)


def assert_corrupt(codec: Codec, obj: bytes, expected: int, *, chunk: str = "c0ffee") -> CorruptChunkError:
    with pytest.raises(CorruptChunkError) as info:
        codec.decode(obj, expected, chunk)
    assert info.value.chunk == chunk
    assert info.value.reason
    return info.value


# -- round trips ----------------------------------------------------------------

LENGTHS = [0, 1, 2, 3, 5, 7, 8, 9, 100, 4095, 4096, 4097, 4099, 65535, 65536 * 3 + 5, 300_001]


@pytest.mark.parametrize("width", [0, 1, 2, 4, 8])
@pytest.mark.parametrize("kind", ["random", "zeros", "text"])
def test_roundtrip_lengths(codec: Codec, width: int, kind: str) -> None:
    rng = random.Random(width * 7 + len(kind))
    for n in LENGTHS:
        if kind == "random":
            data = rng.randbytes(n)
        elif kind == "zeros":
            data = bytes(n)
        else:
            data = (b"tensor.weight layer.%d " * (n // 10 + 1))[:n]
        enc = codec.encode(data, width)
        assert isinstance(enc, Encoded)
        assert codec.decode(enc.data, n) == data, (kind, width, n)
        assert describe(enc.data) == enc.codec
        # memoryview in, memoryview out
        enc2 = codec.encode(memoryview(data), width)
        assert enc2 == enc
        assert codec.decode(memoryview(enc2.data), n) == data


@pytest.mark.parametrize("name,width", [("fp32", 4), ("bf16", 2), ("fp16", 2), ("fp64", 8)])
def test_roundtrip_floats(codec: Codec, floats: dict[str, bytes], name: str, width: int) -> None:
    data = floats[name]
    for n in (len(data), len(data) - 1, len(data) - width - 1, 4096 + width - 1, 5000):
        piece = data[:n]
        enc = codec.encode(piece, width)
        assert enc.codec == f"bg{width}"
        assert codec.decode(enc.data, n) == piece
    # also plain (width 0) on float data
    enc = codec.encode(data, 0)
    assert enc.codec == "zstd"
    assert codec.decode(enc.data, len(data)) == data


def test_typed_memoryview_counts_bytes(codec: Codec) -> None:
    arr = array.array("f", _normal(5000, seed=3))
    enc = codec.encode(memoryview(arr), 4)
    assert codec.decode(enc.data, len(arr) * 4) == arr.tobytes()


def test_codec_choice(codec: Codec, floats: dict[str, bytes]) -> None:
    rnd = os.urandom(200_000)
    assert codec.encode(rnd, 0).codec == "raw"
    # no plane of random data compresses -> plain raw, not a grouped object
    assert codec.encode(rnd, 4).codec == "raw"
    assert len(codec.encode(rnd, 4).data) == len(rnd) + 16 + 24
    assert codec.encode(bytes(100_000), 0).codec == "zstd"
    assert codec.encode(bytes(100_000), 2).codec == "bg2"
    # below 4 KiB grouping is not attempted
    assert codec.encode(floats["bf16"][:4094], 2).codec in ("raw", "zstd")
    assert codec.encode(floats["fp32"], 4).codec == "bg4"
    # a width outside {2, 4, 8} is only a hint: plain encoding, still lossless
    for odd_width in (3, 16, -1):
        enc = codec.encode(floats["fp32"][:50_000], odd_width)
        assert enc.codec == "zstd"
        assert codec.decode(enc.data, 50_000) == floats["fp32"][:50_000]


def test_empty_chunk_layout(codec: Codec) -> None:
    for width in (0, 2, 4, 8):
        enc = codec.encode(b"", width)
        assert enc.data == b"ARCK" + bytes([1, 0, 0, 1]) + bytes(8) + bytes(24)
        assert enc.codec == "raw"
        assert codec.decode(enc.data, 0) == b""


# -- compression ----------------------------------------------------------------


@pytest.mark.parametrize("name,width,limit", [("bf16", 2, 0.88), ("fp32", 4, 0.93), ("fp16", 2, 0.95)])
def test_grouping_beats_plain_zstd3(
    codec: Codec, floats: dict[str, bytes], name: str, width: int, limit: float
) -> None:
    data = floats[name]
    grouped = len(codec.encode(data, width).data)
    plain = len(ZSTD3.compress(data))
    assert grouped / plain <= limit, (name, grouped, plain)
    assert grouped < len(data)


# -- layout (as documented in docs/FORMAT.md) -------------------------------------


def test_layout_grouped(codec: Codec, floats: dict[str, bytes]) -> None:
    data = floats["fp32"] + b"xyz"  # 3 tail bytes
    enc = codec.encode(data, 4)
    (magic, version, transform, width, n, raw_len), descs, payloads = parse(enc.data)
    assert (magic, version, transform, width, n, raw_len) == (b"ARCK", 1, 1, 4, 5, len(data))
    body = len(data) - 3
    for i in range(4):
        codec_byte, stored, raw = descs[i]
        assert raw == body // 4
        plane = data[i:body:4]
        if codec_byte == 0:
            assert payloads[i] == plane
        else:
            assert codec_byte == 1
            assert payloads[i][:4] == b"\x28\xb5\x2f\xfd"
            assert zstandard.frame_content_size(payloads[i]) == raw
            assert zstandard.ZstdDecompressor().decompress(payloads[i]) == plane
    assert descs[4] == (0, 3, 3)
    assert payloads[4] == b"xyz"
    # the exponent plane (byte 3) compresses; the lowest mantissa byte does not
    assert descs[3][0] == 1
    assert descs[0][0] == 0


def test_layout_plain(codec: Codec) -> None:
    data = b"hello world " * 1000
    enc = codec.encode(data, 0)
    hdr, descs, payloads = parse(enc.data)
    assert hdr == (b"ARCK", 1, 0, 0, 1, len(data))
    assert descs[0][0] == 1 and descs[0][2] == len(data)
    assert zstandard.ZstdDecompressor().decompress(payloads[0]) == data


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd command not installed")
def test_sections_decode_with_zstd_cli(codec: Codec, floats: dict[str, bytes], tmp_path) -> None:
    """The recipe in docs/FORMAT.md: split by descriptors, `zstd -d` each, interleave."""
    data = floats["bf16"] + b"!"
    enc = codec.encode(data, 2)
    (_, _, _, width, _, raw_len), descs, payloads = parse(enc.data)
    out = bytearray(raw_len)
    body = raw_len - raw_len % width
    for i, ((codec_byte, _, _), payload) in enumerate(zip(descs, payloads)):
        if codec_byte == 1:
            payload = subprocess.run(["zstd", "-d", "-c", "-q"], input=payload, capture_output=True, check=True).stdout
        if i < width:
            out[i:body:width] = payload
        else:
            out[body:] = payload
    assert bytes(out) == data


# -- corruption -----------------------------------------------------------------


@pytest.fixture(scope="module")
def samples(codec: Codec, floats: dict[str, bytes]) -> list[tuple[bytes, bytes]]:
    """(raw, object) pairs covering every object shape the encoder makes."""
    raws = [
        b"",
        os.urandom(1000),  # plain raw
        b"abc" * 3000,  # plain zstd
        floats["bf16"][:20001],  # bg2 with a 1-byte tail
        floats["fp32"][:40000],  # bg4
        floats["fp64"][:40003],  # bg8 with tail
    ]
    widths = [0, 0, 0, 2, 4, 8]
    out = []
    for raw, w in zip(raws, widths):
        obj = codec.encode(raw, w).data
        out.append((raw, obj))
    assert sorted({describe(o) for _, o in out}) == ["bg2", "bg4", "bg8", "raw", "zstd"]
    return out


def test_every_header_byte_flip_rejected(codec: Codec, samples: list[tuple[bytes, bytes]]) -> None:
    checked = 0
    for raw, obj in samples:
        n = obj[7]
        for pos in range(16 + 24 * n):
            bad = bytearray(obj)
            bad[pos] ^= 0xFF
            assert_corrupt(codec, bytes(bad), len(raw))
            with pytest.raises(CorruptChunkError):  # describe validates the header too
                describe(bytes(bad))
            checked += 1
    assert checked > 400


def test_describe_rejects_garbage() -> None:
    for junk in (b"", b"ARCK", b"nope" * 10, b"ARCK\x02" + bytes(40)):
        with pytest.raises(CorruptChunkError):
            describe(junk)


def test_truncation_rejected(codec: Codec, samples: list[tuple[bytes, bytes]]) -> None:
    for raw, obj in samples:
        cuts = {0, 1, 4, 15, 16, 17, 39, 40, 41, len(obj) // 2, len(obj) - 1}
        for cut in sorted(c for c in cuts if c < len(obj)):
            assert_corrupt(codec, obj[:cut], len(raw))


def test_trailing_bytes_rejected(codec: Codec, samples: list[tuple[bytes, bytes]]) -> None:
    for raw, obj in samples:
        for extra in (b"\x00", b"x" * 100, obj[-24:]):
            err = assert_corrupt(codec, obj + extra, len(raw))
            assert "trailing" in err.reason


def test_wrong_expected_length(codec: Codec, samples: list[tuple[bytes, bytes]]) -> None:
    for raw, obj in samples:
        for wrong in {len(raw) + 1, max(len(raw) - 1, 0) if raw else 5, 0 if raw else 1, 1 << 40}:
            assert_corrupt(codec, obj, wrong)


def test_unknown_codec_version_transform_width(codec: Codec) -> None:
    data = b"a" * 64
    ok = build([(0, data, 64)])
    assert codec.decode(ok, 64) == data
    for codec_byte in (2, 7, 255):
        assert_corrupt(codec, build([(codec_byte, data, 64)]), 64)
    assert_corrupt(codec, build([(0, data, 64)], version=2), 64)
    assert_corrupt(codec, build([(0, data, 64)], version=0), 64)
    assert_corrupt(codec, build([(0, data, 64)], magic=b"ARCL"), 64)
    assert_corrupt(codec, build([(0, data, 64)], transform=2), 64)
    assert_corrupt(codec, build([(0, data, 64)], width=4), 64)  # transform 0 needs width 0
    # grouped objects with consistent sections but a width outside {2, 4, 8}
    for w in (0, 1, 3, 5, 16):
        secs = [(0, data[i::w] if w else b"", 64 // w if w else 0) for i in range(w)] + [(0, b"", 0)]
        assert_corrupt(codec, build(secs, transform=1, width=w, raw_length=64), 64)
    # a valid grouped object built by hand decodes
    planes = [(0, data[i::4], 16) for i in range(4)] + [(0, b"", 0)]
    assert codec.decode(build(planes, transform=1, width=4, raw_length=64), 64) == data
    # nsections that do not match the width / transform
    assert_corrupt(codec, build(planes[:4], transform=1, width=4, raw_length=64), 64)
    assert_corrupt(codec, build([(0, data[:32], 32), (0, data[32:], 32)]), 64)
    # nonzero reserved bytes
    bad = bytearray(ok)
    bad[16 + 3] = 1
    assert_corrupt(codec, bytes(bad), 64)


def test_section_lengths_must_add_up(codec: Codec) -> None:
    data = bytes(range(256)) * 4
    planes = [(0, data[i::2], 512) for i in range(2)] + [(0, b"", 0)]
    # plane raw lengths that sum right but are uneven
    uneven = [(0, data[0::2][:511], 511), (0, data[1::2] + data[:1], 513), (0, b"", 0)]
    assert_corrupt(codec, build(uneven, transform=1, width=2, raw_length=1024), 1024)
    # tail length wrong (tail claims 1 byte, planes shortened)
    wrong_tail = [(0, data[0:1022:2], 511), (0, data[1:1022:2], 511), (0, data[-2:], 2)]
    assert_corrupt(codec, build(wrong_tail, transform=1, width=2, raw_length=1024), 1024)
    # a raw section whose stored length differs from its raw length
    obj = bytearray(build(planes, transform=1, width=2, raw_length=1024))
    struct.pack_into("<Q", obj, 16 + 8, 511)  # stored_length of plane 0
    assert_corrupt(codec, bytes(obj) + b"", 1024)
    # a zstd tail section is not allowed
    tail = zstandard.ZstdCompressor(write_content_size=True).compress(b"z")
    odd = data + b"z"
    secs = [(0, odd[0:1024:2], 512), (0, odd[1:1024:2], 512), (1, tail, 1)]
    assert_corrupt(codec, build(secs, transform=1, width=2, raw_length=1025), 1025)


def test_zstd_section_trailing_bytes(codec: Codec) -> None:
    data = b"weights " * 1000
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    assert codec.decode(build([(1, frame, len(data))]), len(data)) == data
    for extra in (b"\x00", b"junk", frame):  # junk, or a second whole frame
        err = assert_corrupt(codec, build([(1, frame + extra, len(data))]), len(data))
        assert "zstd" in err.reason
    empty_frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"")
    assert_corrupt(codec, build([(1, frame + empty_frame, len(data))]), len(data))


def test_zstd_section_content_size_rules(codec: Codec) -> None:
    data = b"0123456789" * 100
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    # frame content size (1000) differs from the descriptor (999 / 1001)
    assert_corrupt(codec, build([(1, frame, 999)]), 999)
    assert_corrupt(codec, build([(1, frame, 1001)]), 1001)
    # frame without a content size
    no_size = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    unsized = no_size.compress(data) + no_size.flush()
    assert zstandard.frame_content_size(unsized) == -1
    err = assert_corrupt(codec, build([(1, unsized, 1000)]), 1000)
    assert "content size" in err.reason
    # not a zstd frame at all / a skippable frame / an empty zstd section
    assert_corrupt(codec, build([(1, b"\x00" * 20, 1000)]), 1000)
    skippable = b"\x50\x2a\x4d\x18" + struct.pack("<I", 4) + b"abcd"
    assert_corrupt(codec, build([(1, skippable, 0)]), 0)
    zero = zstandard.ZstdCompressor(write_content_size=True).compress(b"")
    assert_corrupt(codec, build([(1, zero + b"garbage", 0)]), 0)
    assert_corrupt(codec, build([(1, zero, 0)]), 0)


def test_decompression_bomb_is_bounded(codec: Codec) -> None:
    gib = 1 << 30
    bomb = zstd_bomb(claimed=gib, real=gib)
    assert len(bomb) < 64 * 1024
    # it really is a working bomb: valid header, streams zeros
    assert zstandard.frame_content_size(bomb) == gib
    with zstandard.ZstdDecompressor().stream_reader(bomb) as reader:
        assert reader.read(1 << 20) == bytes(1 << 20)
    honest_header = zstd_bomb(claimed=1000, real=gib)  # says 1000, expands to 1 GiB

    tracemalloc.start()
    try:
        # descriptor says 1000 bytes, frame claims 1 GiB: refused before decompressing
        err = assert_corrupt(codec, build([(1, bomb, 1000)]), 1000)
        assert "declares" in err.reason
        # header and descriptor both forged to 1 GiB: refused against expected_length
        assert_corrupt(codec, build([(1, bomb, gib)]), 1000)
        # same inside a byte-plane object
        planes = [(1, bomb, 500), (0, b"\x00" * 500, 500), (0, b"", 0)]
        assert_corrupt(codec, build(planes, transform=1, width=2, raw_length=1000), 1000)
        # frame header says 1000 but its blocks expand further: output capped at 1000
        assert_corrupt(codec, build([(1, honest_header, 1000)]), 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak


def test_payload_corruption_in_zstd_section(codec: Codec) -> None:
    """A flipped bit inside a zstd payload either raises or changes the output
    (the caller's BLAKE3 check catches the latter); it never crashes otherwise."""
    data = b"layer norm bias " * 4000
    obj = codec.encode(data, 0).data
    raised = 0
    for pos in range(40, len(obj), max(1, (len(obj) - 40) // 50)):
        bad = bytearray(obj)
        bad[pos] ^= 0x55
        try:
            out = codec.decode(bytes(bad), len(data))
        except CorruptChunkError:
            raised += 1
        else:
            assert len(out) == len(data)
    assert raised > 0


# -- threads --------------------------------------------------------------------


def test_thread_safety(floats: dict[str, bytes]) -> None:
    shared = Codec()
    rng = random.Random(99)
    jobs = []
    for i in range(48):
        name, width = [("fp32", 4), ("bf16", 2), ("fp16", 2), ("fp64", 8)][i % 4]
        start = rng.randrange(0, 10_000)
        jobs.append((floats[name][start : start + 100_000 + i], width if i % 5 else 0))
    expected = [Codec().encode(d, w) for d, w in jobs]

    def roundtrip(job: tuple[bytes, int]) -> tuple[Encoded, bytes]:
        enc = shared.encode(*job)
        return enc, shared.decode(enc.data, len(job[0]))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(roundtrip, jobs))
    for (data, _), exp, (enc, dec) in zip(jobs, expected, results):
        assert enc == exp
        assert dec == data


# -- the chunk length cap (issue 14) ----------------------------------------------------------


def test_max_object_size_matches_the_manifest_cap_and_bounds_encode(codec: Codec, floats: dict[str, bytes]) -> None:
    """A manifest refuses a stored size above length + MAX_CHUNK_OVERHEAD; nothing encode
    makes may exceed it (else a valid archive would be refused), for any data or width."""
    from archiver.codecs import DESCRIPTOR, GROUP_WIDTHS, HEADER, max_object_size
    from manifests.model import MAX_CHUNK_OVERHEAD

    assert HEADER.size + (max(GROUP_WIDTHS) + 1) * DESCRIPTOR.size == MAX_CHUNK_OVERHEAD
    rng = random.Random(5)
    mixed = bytes(rng.getrandbits(8) if i % 4 else 0 for i in range(40_003))  # some planes compress
    cases = [os.urandom(70_001), mixed, floats["fp32"][:100_003], bytes(9000), b"x", b""]
    for data in cases:
        for width in (0, 2, 4, 8):
            obj = codec.encode(data, width).data
            assert len(obj) <= max_object_size(len(data)) == len(data) + MAX_CHUNK_OVERHEAD


def test_decode_refuses_lengths_over_the_cap_before_allocating(codec: Codec) -> None:
    """A forged object that honestly decodes to 2 GiB (a ~65 KB zstd bomb whose header,
    descriptor and frame all agree) is refused from the expected length alone."""
    from manifests.model import MAX_CHUNK_LENGTH

    two_gib = 2 << 30
    bomb = build([(1, zstd_bomb(claimed=two_gib, real=two_gib), two_gib)])
    assert len(bomb) < 70_000
    tracemalloc.start()
    try:
        for expected in (two_gib, MAX_CHUNK_LENGTH + 1, -1):
            err = assert_corrupt(codec, bomb, expected)
            assert "chunk length limit" in err.reason
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak


def test_chunk_at_the_cap_decodes_and_longer_is_not_encoded(codec: Codec) -> None:
    from archiver.errors import EncodeError
    from manifests.model import MAX_CHUNK_LENGTH

    data = bytes(MAX_CHUNK_LENGTH)
    assert codec.decode(codec.encode(data, 2).data, MAX_CHUNK_LENGTH) == data
    with pytest.raises(EncodeError, match="longer than"):
        codec.encode(bytes(MAX_CHUNK_LENGTH + 1), 0)


# -- vectorised planes, reused buffers, the round-trip check (issue 12) -------------------------


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "unaligned"])
def test_split_and_merge_planes_follow_the_format_definition(width: int, kind: str) -> None:
    """Plane i is bytes i, i+width, ... (docs/FORMAT.md), whatever the buffer type or
    alignment; merging the planes gives the body back."""
    import numpy as np

    from archiver.codecs import merge_planes, split_planes

    for n in (width, 7 * width + 3, 4096 + 5, 65536):
        raw = os.urandom(n + 1)
        data: bytes | bytearray | memoryview = {"bytes": raw[:n], "bytearray": bytearray(raw[:n]),
                                                "unaligned": memoryview(raw)[1:]}[kind]
        body = n - n % width
        planes = np.empty((width, body // width), dtype=np.uint8)
        split_planes(data, width, planes)
        flat = bytes(data)
        for i in range(width):
            assert planes[i].tobytes() == flat[i:body:width]
        out = np.zeros(body, dtype=np.uint8)
        merge_planes([planes[i] for i in range(width)], width, out)
        assert out.tobytes() == flat[:body]


@pytest.mark.parametrize("name,width", [("bf16", 2), ("fp16", 2), ("fp32", 4), ("fp64", 8)])
def test_encoding_is_the_format_definition_applied_to_sliced_planes(floats: dict[str, bytes], name: str,
                                                                    width: int) -> None:
    """The vectorised split feeds zstd exactly the planes the format defines, so objects are
    byte-identical to what the earlier strided encoder made (stored size unchanged, and a
    cold chunk's ETag proof still matches)."""
    from archiver.codecs import CODEC_RAW, CODEC_ZSTD, TRANSFORM_PLANES, _assemble

    codec = Codec()
    data = floats[name][: 300_001]
    n = len(data)
    body = n - n % width
    sections = []
    for i in range(width):
        plane = data[i:body:width]
        packed = codec._pack(plane, codec.plane_level)
        sections.append((CODEC_RAW, plane, len(plane)) if packed is None else (CODEC_ZSTD, packed, len(plane)))
    sections.append((CODEC_RAW, data[body:], n - body))
    assert codec.encode(data, width).data == _assemble(TRANSFORM_PLANES, width, n, sections)


def test_same_bytes_finds_any_difference() -> None:
    import numpy as np

    from archiver.codecs import same_bytes

    for n in (0, 1, 7, 8, 9, 64, 1001):
        a = os.urandom(n)
        for other in (a, bytearray(a), memoryview(a), np.frombuffer(a, dtype=np.uint8)):
            assert same_bytes(a, other) and same_bytes(other, a)
        for pos in {0, n // 2, n - n % 8 - 1, n - 1} - {-1}:
            if 0 <= pos < n:
                b = bytearray(a)
                b[pos] ^= 0x01
                assert not same_bytes(a, b) and not same_bytes(memoryview(b), a)
        assert not same_bytes(a, a + b"\0")


def test_round_trip_check_refuses_a_frame_that_decodes_to_other_bytes() -> None:
    codec = Codec()
    payload = bytes(range(256)) * 64
    frame = ZSTD3.compress(payload)
    assert codec._round_trips(frame, payload)
    assert codec._round_trips(frame, memoryview(payload))
    assert not codec._round_trips(ZSTD3.compress(payload + b"x"), payload)  # longer
    assert not codec._round_trips(ZSTD3.compress(payload[:-1]), payload)  # shorter
    changed = bytearray(payload)
    changed[5000] ^= 0xFF
    assert not codec._round_trips(ZSTD3.compress(bytes(changed)), payload)


def test_a_compressor_fault_never_reaches_an_object(floats: dict[str, bytes], monkeypatch) -> None:
    """If zstd's output did not decode to its input, encode raises instead of storing it."""
    from archiver.errors import EncodeError

    codec = Codec()
    real = codec._pack

    def faulty(payload, level):  # a frame of slightly different bytes, as a compressor fault would give
        wrong = bytearray(payload)
        wrong[len(wrong) // 2] ^= 0x40
        return real(bytes(wrong), level)

    monkeypatch.setattr(codec, "_pack", faulty)
    with pytest.raises(EncodeError, match="round trip"):
        codec.encode(floats["bf16"], 2)


def test_scratch_buffers_are_per_thread_and_never_leak_into_results(floats: dict[str, bytes]) -> None:
    """Each thread reuses its own buffers; an object made from one chunk is unchanged by
    encoding the next (raw planes are copied out of the reused buffer)."""
    import numpy as np

    codec = Codec()
    first = codec._scratch("planes", 1000)
    assert np.shares_memory(first, codec._scratch("planes", 500))  # reused, not reallocated
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(codec._scratch, "planes", 1000).result()
    assert not np.shares_memory(first, other)
    noisy = os.urandom(200_000)  # every plane raw: falls back, but the planes were in scratch
    a = floats["bf16"][:200_000]
    enc_a = codec.encode(a, 2)
    before = bytes(enc_a.data)
    codec.encode(noisy, 2)
    codec.encode(floats["fp16"][:200_000], 2)
    assert enc_a.data == before and codec.decode(enc_a.data, len(a)) == a


def test_matches_agrees_with_decode_and_refuses_what_decode_refuses(codec: Codec, floats: dict[str, bytes],
                                                                    samples: list[tuple[bytes, bytes]]) -> None:
    """`matches` (the dedup proof: compare plane by plane, no reassembly) is True exactly
    when the object decodes to the bytes, and raises where decode raises."""
    jobs = [(floats[name][:n], w) for name, w in (("bf16", 2), ("fp32", 4), ("fp64", 8), ("fp16", 0))
            for n in (5000, 100_003)]
    jobs.append((os.urandom(70_001), 2))  # no plane compresses: a plain object
    for data, width in jobs:
        obj = codec.encode(data, width).data
        assert codec.matches(obj, data) and codec.matches(obj, memoryview(data)) and codec.matches(obj, bytearray(data))
        for pos in (0, 1, len(data) // 2, len(data) - 2, len(data) - 1):  # every plane, and the tail
            other = bytearray(data)
            other[pos] ^= 0x10
            assert not codec.matches(obj, bytes(other))
    for raw, obj in samples:
        bad = bytearray(obj)
        bad[0] ^= 0xFF  # magic
        with pytest.raises(CorruptChunkError):
            codec.matches(bytes(bad), raw)
        with pytest.raises(CorruptChunkError):  # a declared length other than the source's
            codec.matches(obj, raw + b"\0")
        with pytest.raises(CorruptChunkError):  # trailing bytes, as decode refuses them
            codec.matches(obj + b"\0", raw)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_split_planes_of_a_big_chunk_match_the_format_and_feed_it_in_one_call(width: int) -> None:
    """split_planes of a chunk of several MiB (planes of odd length, a tail shorter than one
    element) gives exactly the planes the format defines, and so do the objects made from
    them; `feed` gets the elements' bytes in one call, not block by block (the blocked split
    cost the archive more CPU and wall time: bench/RESULTS.md, seventh pass)."""
    import numpy as np

    from archiver.codecs import split_planes

    elements = (3 << 20) // width + 777
    grid = np.random.default_rng(width).integers(0, 256, (elements, width), dtype=np.uint8)
    grid[:, width - 1] = 0x3C + (grid[:, width - 1] & 1)  # a low-entropy top byte, like exponents
    raw = grid.tobytes() + os.urandom(width - 1)  # and a tail shorter than one element
    body = elements * width
    planes = np.empty((width, elements), dtype=np.uint8)
    fed: list[bytes] = []
    split_planes(raw, width, planes, feed=lambda piece: fed.append(bytes(piece)))
    assert fed == [raw[:body]]
    for i in range(width):
        assert planes[i].tobytes() == raw[i:body:width]
    codec = Codec()
    enc = codec.encode(raw, width)
    assert enc.codec == f"bg{width}"
    assert codec.decode(enc.data, len(raw)) == raw


def _bf16_like(elements: int, width: int, seed: int) -> bytes:
    import numpy as np

    grid = np.random.default_rng(seed).integers(0, 256, (elements, width), dtype=np.uint8)
    grid[:, width - 1] = 0x3C + (grid[:, width - 1] & 1)  # low-entropy top byte: planes compress
    return grid.tobytes() + bytes(range(width - 1))  # and a tail shorter than one element


@pytest.mark.parametrize("width", [0, 2, 4, 8, 3])
def test_address_is_blake3_and_the_planes_it_splits_make_the_same_object(width: int) -> None:
    """Codec.address is BLAKE3 of the chunk whatever the width hint, and the encode (and
    the dedup proof) that follows on the same thread, using the planes it split in the same
    pass, gives exactly the object a fresh codec makes."""
    import blake3

    raw = _bf16_like((1 << 17) + 12_345, max(width, 2), 7)
    codec = Codec()
    assert codec.address(raw, width) == blake3.blake3(raw).hexdigest()
    enc = codec.encode(raw, width)
    assert enc == Codec().encode(raw, width)
    assert codec.address(raw, width) == blake3.blake3(raw).hexdigest()
    assert codec.matches(enc.data, raw)
    assert codec.decode(enc.data, len(raw)) == raw


def test_address_planes_are_never_used_for_another_chunk() -> None:
    """The planes split by `address` belong to that one chunk object: encoding another chunk
    (even an equal copy, or the same bytes with another width), or encoding after something
    else used the plane buffer, splits afresh, so no object is ever built from stale planes."""
    import blake3

    a = _bf16_like(50_000, 2, 1)
    b = _bf16_like(50_000, 2, 2)
    ref = Codec()
    codec = Codec()
    codec.address(a, 2)
    assert codec.encode(b, 2) == ref.encode(b, 2)  # another chunk: its own planes
    codec.address(a, 2)
    copy = bytes(bytearray(a))
    assert copy is not a and codec.encode(copy, 2) == ref.encode(a, 2)
    codec.address(a, 2)
    assert codec.encode(a, 4) == ref.encode(a, 4)  # another width: split again
    codec.address(a, 2)
    assert codec.matches(ref.encode(b, 2).data, b)  # the proof of another chunk uses the buffer...
    assert codec.encode(a, 2) == ref.encode(a, 2)  # ...so a's planes are split again
    mv = memoryview(bytearray(a))
    assert codec.address(mv, 2) == blake3.blake3(a).hexdigest()  # a mutable buffer is not remembered
    mv[0] ^= 1
    assert codec.encode(mv, 2) == ref.encode(bytes(mv), 2)


def test_address_planes_are_per_thread() -> None:
    """A chunk addressed on one thread and encoded on another is split by the encoding thread."""
    import threading

    a = _bf16_like(50_000, 2, 3)
    b = _bf16_like(50_000, 2, 4)
    codec = Codec()
    codec.address(a, 2)
    out: list[object] = []
    t = threading.Thread(target=lambda: (codec.address(b, 2), out.append(codec.encode(a, 2))))
    t.start()
    t.join()
    assert out == [Codec().encode(a, 2)]
    assert codec.encode(a, 2) == Codec().encode(a, 2)


def test_encode_after_address_does_not_split_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of Codec.address: one pass over a new chunk for its hash and its planes;
    the encode that follows on the same thread does not split it a second time."""
    from archiver import codecs

    calls: list[bool] = []
    real = codecs.split_planes

    def counting(data: object, width: int, out: object, feed: object = None) -> None:
        calls.append(feed is not None)
        real(data, width, out, feed)

    monkeypatch.setattr(codecs, "split_planes", counting)
    a = _bf16_like(50_000, 2, 5)
    codec = Codec()
    codec.address(a, 2)
    enc = codec.encode(a, 2)
    assert calls == [True]  # the fused pass only
    assert enc == Codec().encode(a, 2)
    assert calls == [True, False]  # the fresh codec split it itself


# -- unjoined objects (encode_parts) ----------------------------------------------------


def test_encode_parts_joined_is_encode_for_every_object_shape(codec: Codec, floats: dict[str, bytes]) -> None:
    """Every shape the encoder makes (empty, plain raw, plain zstd, planes with and without a
    tail, planes that fall back to plain): the pieces join to exactly `encode`'s object, with
    its size and codec name, and the address's held planes are used the same way."""
    cases = [(b"", 0), (os.urandom(1000), 0), (b"abc" * 3000, 0), (floats["bf16"][:20001], 2),
             (floats["fp32"][:40000], 4), (floats["fp64"][:40003], 8), (os.urandom(20000), 2)]
    seen = set()
    for raw, width in cases:
        want = codec.encode(raw, width)
        codec.address(raw, width)  # planes split in the hash pass, taken by encode_parts
        parts = codec.encode_parts(raw, width)
        assert b"".join(parts.parts) == want.data
        assert parts.size == len(want.data) and parts.codec == want.codec
        assert parts.join() == want
        assert codec.decode(parts.join().data, len(raw)) == raw
        seen.add(want.codec)
    assert seen == {"raw", "zstd", "bg2", "bg4", "bg8"}


def test_encode_parts_raw_planes_are_not_copied(codec: Codec) -> None:
    """The point of the pieces: a plane stored raw is handed out as a view of the thread's
    plane buffer, not copied into the object (the join did that), and nothing else is long."""
    rng = random.Random(7)
    raw = bytes(b for _ in range(30000) for b in (rng.randrange(256), 0x3C))  # noisy low plane, constant high
    parts = Codec().encode_parts(raw, 2)
    assert parts.codec == "bg2"
    views = [p for p in parts.parts if isinstance(p, memoryview)]
    assert [len(v) for v in views] == [30000]  # the noisy plane, raw, as a view
    assert bytes(views[0]) == raw[0::2]
    assert len(parts.parts[0]) == 16 + 3 * 24  # header and descriptors, one piece


def test_encode_parts_refuses_an_oversized_chunk(codec: Codec, monkeypatch: pytest.MonkeyPatch) -> None:
    from archiver import codecs
    from archiver.errors import EncodeError
    monkeypatch.setattr(codecs, "MAX_CHUNK_LENGTH", 100)
    with pytest.raises(EncodeError, match="longer than the 100"):
        codec.encode_parts(b"x" * 101, 0)


def test_stored_raw_payload_cuts_exactly_what_decode_returns_and_nothing_else() -> None:
    """A raw object (no transform, one raw section) is cut out without parsing only when its
    whole head is the one decode accepts for that length; every other object (compressed,
    byte planes, a changed head byte, a wrong length, trailing bytes) gets None, so decode
    parses it and words what is wrong."""
    from archiver import codecs
    c = Codec()
    rnd = random.Random(5)
    for n in (0, 1, 4095, 70_000):
        data = rnd.randbytes(n)
        obj = c.encode(data).data
        assert describe(obj) == "raw"
        got = codecs.stored_raw_payload(memoryview(obj), n)
        assert got is not None and bytes(got) == data == c.decode(obj, n)
        assert codecs.stored_raw_payload(obj, n + 1) is None  # another length: not this form
        assert codecs.stored_raw_payload(obj + b"x", n) is None  # trailing bytes
        for i in range(40):  # any head byte changed: not the form (decode refuses or reads it otherwise)
            bad = bytearray(obj)
            bad[i] ^= 0x01
            assert codecs.stored_raw_payload(bytes(bad), n) is None
            with pytest.raises(CorruptChunkError):
                c.decode(bytes(bad), n)
    squeezable = bytes(10_000)
    z = c.encode(squeezable).data
    assert describe(z) == "zstd" and codecs.stored_raw_payload(z, len(squeezable)) is None
    planes = c.encode(bytes(range(256)) * 64, width=2).data
    assert describe(planes).startswith("bg") and codecs.stored_raw_payload(planes, 256 * 64) is None
    assert codecs.stored_raw_payload(b"", -1) is None


def test_encode_small_is_encode_for_every_plain_chunk(codec: Codec, floats: dict[str, bytes]) -> None:
    """`encode_small` (a small file's chunk) makes exactly `encode(raw, 0)`'s object and codec
    for random, compressible and float bytes from 1 byte up to SAMPLE_BYTES and just past it
    (handed to `encode`), and for a bytearray (not immutable bytes: handed to `encode`)."""
    from archiver.codecs import SAMPLE_BYTES
    rng = random.Random(7)
    cases = [b"x", os.urandom(1), os.urandom(4096), b"abc" * 3000, floats["bf16"][:8191], bytes(16384),
             rng.randbytes(SAMPLE_BYTES), b"ab" * (SAMPLE_BYTES // 2), os.urandom(SAMPLE_BYTES + 1),
             b"z" * (SAMPLE_BYTES + 1), bytearray(b"qr" * 500)]
    seen = set()
    for raw in cases:
        want = codec.encode(raw, 0)
        assert codec.encode_small(raw) == (want.data, want.codec)
        assert codec.decode(codec.encode_small(raw)[0], len(raw)) == raw
        seen.add(want.codec)
    assert seen == {"raw", "zstd"}


def test_encode_small_refuses_a_frame_that_does_not_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compressor fault never reaches a small chunk's object either."""
    from archiver.errors import EncodeError
    codec = Codec()
    raw = b"abc" * 1000
    real = codec._compressor(codec.level)

    class Faulty:
        def compress(self, data: bytes) -> bytes:
            return real.compress(data[:-1] + b"d")

    monkeypatch.setattr(codec, "_compressor", lambda level: Faulty())
    with pytest.raises(EncodeError, match="round trip"):
        codec.encode_small(raw)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_raw_planes_lie_in_memory_at_their_object_offset_modulo_the_page(width: int) -> None:
    """The plane buffer is placed (Codec._plane_buffer) so the first plane lies in memory at
    its offset in the object modulo PLANE_ALIGN, and each raw plane after a raw one too: the
    local store's O_DIRECT writer then sends them without a copy (archiver.directio). The
    object is byte for byte what `encode` makes."""
    import numpy as np
    from archiver.codecs import PLANE_ALIGN
    rng = np.random.default_rng(width)
    n = 1 << 20
    elems = rng.integers(0, 1 << (8 * width), n // width, dtype=np.uint64)
    elems &= ~np.uint64(0xFF << (8 * (width - 1)))  # the top byte of each element: zero, so it compresses
    data = elems.astype(f"<u{width}").tobytes()
    codec = Codec()
    codec.address(data, width)
    parts = codec.encode_parts(data, width)
    assert b"".join(bytes(p) for p in parts.parts) == Codec().encode(data, width).data
    offset, raw = 0, 0
    for part in parts.parts:
        view = memoryview(part)
        if isinstance(part, memoryview) and len(view) == n // width:  # a raw plane, a view of the buffer
            raw += 1
            assert (np.frombuffer(view, dtype=np.uint8).ctypes.data - offset) % PLANE_ALIGN == 0
        offset += view.nbytes
    assert raw == width - 1  # every plane but the top one is noise, stored raw


@pytest.mark.parametrize("level", [-5, 1, 3, 19])
def test_encode_small_is_encode_at_every_level_and_length_edge(level: int) -> None:
    """`encode_small` keeps `encode(raw, 0)`'s bytes and codec for every zstd level the codec
    takes, at the lengths where the object's form could change: 1 byte, a frame's size around
    the header's, a page, SAMPLE_BYTES (its last length) and one past it (the sample probe's
    first, handed to `encode`); random, zero, text and half-random bytes; a bytes subclass and a
    memoryview go through `encode`."""
    from archiver.codecs import SAMPLE_BYTES
    codec = Codec(level)
    rng = random.Random(level)
    kinds = {"random": rng.randbytes, "zero": bytes, "text": lambda n: (b"a line of text\n" * (n // 15 + 1))[:n],
             "half": lambda n: (rng.randbytes(n // 2) + bytes(n))[:n]}
    seen = set()
    for n in (1, 2, 13, 39, 40, 41, 127, 4095, 4096, 4097, SAMPLE_BYTES - 1, SAMPLE_BYTES, SAMPLE_BYTES + 1):
        for kind, make in kinds.items():
            raw = make(n)
            want = codec.encode(raw, 0)
            got = codec.encode_small(raw)
            assert got == (want.data, want.codec), (n, kind)
            assert codec.decode(got[0], n) == raw
            seen.add(got[1])

    class Sub(bytes):
        pass
    for odd in (Sub(b"xy" * 3000), memoryview(b"xy" * 3000)):
        want = codec.encode(odd, 0)
        assert codec.encode_small(odd) == (want.data, want.codec)  # type: ignore[arg-type]
    assert seen == {"raw", "zstd"}
