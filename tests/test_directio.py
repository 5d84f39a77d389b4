"""Tests for archiver.directio: big objects written with O_DIRECT through an aligned buffer come
back byte for byte at their exact size; a filesystem that refuses O_DIRECT gets the buffered
write; other write errors still surface (disk full), with no temp file left."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from archiver import directio
from archiver.directio import ALIGN, DirectWriter
from archiver.errors import StoreError
from archiver.stores import LocalStore

pytestmark = pytest.mark.skipif(not getattr(os, "O_DIRECT", 0), reason="no O_DIRECT on this platform")

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _needs_direct(directory: Path) -> None:
    """Skip where the test's filesystem refuses O_DIRECT (an old tmpfs or overlayfs in CI): the
    fallback has tests of its own."""
    try:
        fd = os.open(directory / ".probe", FLAGS | os.O_DIRECT, 0o600)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            pytest.skip("this filesystem refuses O_DIRECT")
        raise
    os.close(fd)
    os.unlink(directory / ".probe")


def _parts(seed: int, sizes: list[int]) -> list[bytes | memoryview]:
    rng = np.random.default_rng(seed)
    out: list[bytes | memoryview] = []
    for k, n in enumerate(sizes):
        b = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        out.append(memoryview(b) if k % 2 else b)
    return out


def _write(w: DirectWriter, path: Path, parts: list[bytes | memoryview]) -> bool:
    size = sum(memoryview(p).nbytes for p in parts)
    fd, direct = w.open(path, FLAGS, 0o444, size)
    try:
        w.write(fd, parts, direct)
        os.fsync(fd)
    finally:
        os.close(fd)
    return direct


@pytest.mark.parametrize("sizes", [
    [100, 1 << 20, 3],  # a ragged end
    [ALIGN * 16, ALIGN * 16],  # exactly a piece: no padded write
    [5, (2 << 20) + 1, 4095, 0, 77],  # spans pieces, an empty part
])
def test_direct_write_is_byte_exact(tmp_path, sizes):
    _needs_direct(tmp_path)
    w = DirectWriter(piece=ALIGN * 32, direct_from=0)
    parts = _parts(sum(sizes), sizes)
    direct = _write(w, tmp_path / "obj", parts)
    assert direct and w.available  # this filesystem (ext4 or tmpfs) takes O_DIRECT
    assert (tmp_path / "obj").read_bytes() == b"".join(bytes(p) for p in parts)


def test_non_byte_views_are_written_as_their_bytes(tmp_path):
    _needs_direct(tmp_path)
    values = np.arange(300_000, dtype=np.uint16)
    w = DirectWriter(piece=ALIGN * 8, direct_from=0)
    _write(w, tmp_path / "obj", [memoryview(values)])
    assert (tmp_path / "obj").read_bytes() == values.tobytes()


def test_small_objects_stay_buffered(tmp_path):
    w = DirectWriter()
    assert not _write(w, tmp_path / "obj", [b"x" * 1000])
    assert (tmp_path / "obj").read_bytes() == b"x" * 1000 and w.available


def test_refused_open_falls_back_to_buffered(tmp_path, monkeypatch):
    real = os.open

    def refusing(path, flags, *a, **k):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *a, **k)
    monkeypatch.setattr(directio.os, "open", refusing)
    w = DirectWriter(direct_from=0)
    parts = _parts(1, [3 << 20, 5])
    assert not _write(w, tmp_path / "a", parts)
    assert not w.available  # not asked again
    assert (tmp_path / "a").read_bytes() == b"".join(bytes(p) for p in parts)


def test_refused_write_rewrites_buffered_from_the_start(tmp_path, monkeypatch):
    _needs_direct(tmp_path)
    real, calls = os.pwrite, [0]

    def refusing(fd, data, offset):
        calls[0] += 1
        if calls[0] >= 2:  # the first piece went out with O_DIRECT, the second is refused
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)
    monkeypatch.setattr(directio.os, "pwrite", refusing)
    w = DirectWriter(piece=ALIGN * 16, direct_from=0)
    parts = _parts(2, [ALIGN * 40 + 9])
    assert _write(w, tmp_path / "a", parts)
    assert not w.available and calls[0] == 2
    assert (tmp_path / "a").read_bytes() == bytes(parts[0])


def test_local_store_writes_big_objects_directly_and_reads_them_back(tmp_path, monkeypatch):
    _needs_direct(tmp_path)
    opened = []
    real = os.open

    def watching(path, flags, *a, **k):  # os.open itself: the store's other opens pass through
        if flags & os.O_CREAT:
            opened.append(bool(flags & os.O_DIRECT))
        return real(path, flags, *a, **k)
    monkeypatch.setattr(directio.os, "open", watching)
    store = LocalStore(tmp_path / "s")
    parts = _parts(3, [64, (3 << 20) + 123, 1000])
    assert store.put_parts_if_absent("chunks/ab/abcd", parts)
    assert store.get("chunks/ab/abcd") == b"".join(bytes(p) for p in parts)
    assert store.stat("chunks/ab/abcd").size == sum(memoryview(p).nbytes for p in parts)
    assert not store.put_parts_if_absent("chunks/ab/abcd", parts)  # never overwritten
    assert opened == [True]
    assert store.put_if_absent("manifests/small", b"{}")  # small objects: buffered, as before
    assert opened == [True, False]


def test_disk_full_during_a_direct_write_is_one_store_error(tmp_path, monkeypatch):
    _needs_direct(tmp_path)
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(directio.os, "pwrite", full)
    store = LocalStore(tmp_path / "s")
    with pytest.raises(StoreError, match="disk full"):
        store.put_parts_if_absent("chunks/ab/abcd", _parts(4, [2 << 20]))
    assert [p.name for p in (tmp_path / "s").rglob("*") if p.is_file()] == []
    assert store._direct.available  # a full disk is not a refusal of O_DIRECT


def test_threads_writing_at_once_each_get_their_own_bytes_back(tmp_path):
    """The aligned buffer is the thread's own: eight threads writing different big objects
    through one store at once (ragged sizes, pieces spanned) each read back exactly theirs."""
    _needs_direct(tmp_path)
    import threading
    from concurrent.futures import ThreadPoolExecutor
    store = LocalStore(tmp_path / "s")
    store._direct = DirectWriter(piece=ALIGN * 16)  # small pieces: many refills of each buffer
    store._direct.direct_from = 1
    objects = {f"chunks/{k:02x}/{k:064x}": _parts(100 + k, [ALIGN * 7 + k * 513, 1 + k, ALIGN * 33 - k])
               for k in range(24)}
    barrier = threading.Barrier(8)

    def put(key):
        try:
            barrier.wait(timeout=0.5)
        except threading.BrokenBarrierError:
            pass
        return store.put_parts_if_absent(key, objects[key])
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(put, objects))
    for key, parts in objects.items():
        assert store.get(key) == b"".join(bytes(p) for p in parts)
    assert store._direct.available


def test_writers_of_the_same_key_at_once_publish_one_object_and_leave_no_temp(tmp_path):
    _needs_direct(tmp_path)
    from concurrent.futures import ThreadPoolExecutor
    store = LocalStore(tmp_path / "s")
    parts = _parts(7, [(1 << 20) + 4097])
    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(lambda _: store.put_parts_if_absent("chunks/cd/cdef", parts), range(6)))
    assert won.count(True) == 1
    assert store.get("chunks/cd/cdef") == bytes(parts[0])
    assert [p.name for p in (tmp_path / "s").rglob("*") if p.is_file()] == ["cdef"]


@pytest.mark.parametrize("size", [(1 << 20) - 1, 1 << 20, (1 << 20) + 1, (2 << 20) - 1, 2 << 20, (2 << 20) + 512])
def test_sizes_around_the_threshold_and_the_piece_read_back_exactly(tmp_path, size, monkeypatch):
    _needs_direct(tmp_path)
    opened: list[bool] = []
    real = os.open

    def watching(path, flags, *a, **k):
        if flags & os.O_CREAT:
            opened.append(bool(flags & os.O_DIRECT))
        return real(path, flags, *a, **k)
    monkeypatch.setattr(directio.os, "open", watching)
    store = LocalStore(tmp_path / "s")
    half = size // 3
    parts = _parts(size, [half, 0, size - half])
    assert store.put_parts_if_absent("chunks/ab/ab01", parts)
    assert opened == [size >= directio.DIRECT_FROM]
    data = (tmp_path / "s" / "chunks" / "ab" / "ab01").read_bytes()
    assert len(data) == size and data == b"".join(bytes(p) for p in parts)
    assert os.stat(tmp_path / "s" / "chunks" / "ab" / "ab01").st_size == size


def test_non_byte_multidimensional_views_are_written_as_their_bytes(tmp_path):
    _needs_direct(tmp_path)
    w = DirectWriter(piece=ALIGN * 8, direct_from=0)
    a = np.arange(3 * 70_001, dtype=np.float32).reshape(3, 70_001)
    b = np.arange(999, dtype=">u8")
    c = np.zeros(5, dtype=[("x", "<u2"), ("y", "f8")])
    parts = [memoryview(a), memoryview(b), memoryview(c)]
    assert _write(w, tmp_path / "obj", parts)
    assert (tmp_path / "obj").read_bytes() == a.tobytes() + b.tobytes() + c.tobytes()


def test_a_threads_buffer_goes_with_the_thread(tmp_path):
    """Memory stays at one buffer per live thread: a thread that ended frees its buffer (many
    short-lived threads over a run do not pile up buffers)."""
    _needs_direct(tmp_path)
    import threading
    import weakref
    w = DirectWriter(piece=ALIGN * 4, direct_from=0)
    refs = []

    def one(k):
        _write(w, tmp_path / f"o{k}", [b"z" * (ALIGN + k)])
        refs.append(weakref.ref(w._local.buf))
    for k in range(5):
        t = threading.Thread(target=one, args=(k,))
        t.start()
        t.join()
    assert len(refs) == 5 and all(r() is None for r in refs)


def test_a_store_on_tmpfs_writes_big_objects_byte_exact(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    import tempfile
    with tempfile.TemporaryDirectory(dir=shm) as d:
        store = LocalStore(Path(d) / "s")
        parts = _parts(9, [(3 << 20) + 17, 4095])
        assert store.put_parts_if_absent("chunks/ef/ef01", parts)
        assert store.get("chunks/ef/ef01") == b"".join(bytes(p) for p in parts)
        assert store.stat("chunks/ef/ef01").size == sum(memoryview(p).nbytes for p in parts)


def test_a_direct_object_is_cut_to_size_and_fsynced_before_its_name_appears_then_its_directory(tmp_path,
                                                                                               monkeypatch):
    """Same durability as a buffered object: the temp file, at its exact size (the padding cut
    off), is fsynced before the link publishes it, and the directory after."""
    _needs_direct(tmp_path)
    import stat as stat_mod
    from archiver.stores import local
    events: list[tuple] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat_mod.S_ISDIR(st.st_mode) else st.st_size))
        return real_fsync(fd)

    def link(a, b, *args, **kw):
        events.append(("link", Path(b).name))
        return real_link(a, b, *args, **kw)
    monkeypatch.setattr(local.os, "fsync", fsync)
    monkeypatch.setattr(local.os, "link", link)
    store = LocalStore(tmp_path / "s")
    (tmp_path / "s" / "chunks" / "ab").mkdir(parents=True)
    size = (1 << 20) + 4097
    assert store.put_parts_if_absent("chunks/ab/abcd", _parts(5, [size]))
    assert events == [("fsync", size), ("link", "abcd"), ("fsync", "dir")]


def _placed(n: int, at: int, seed: int) -> np.ndarray:
    """`n` random bytes in a writable buffer whose first byte lies at `at` modulo ALIGN."""
    raw = np.empty(n + ALIGN, dtype=np.uint8)
    skip = (at - raw.ctypes.data) % ALIGN
    out = raw[skip:skip + n]
    out[:] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    return out


def _spy_pwrite(monkeypatch) -> list[tuple[object, int, int]]:
    """Every pwrite of directio: (the exporter of the bytes written, their length, the offset)."""
    real, seen = os.pwrite, []

    def spy(fd, data, offset):
        seen.append((getattr(data, "obj", None), len(data), offset))
        return real(fd, data, offset)
    monkeypatch.setattr(directio.os, "pwrite", spy)
    return seen


@pytest.mark.parametrize("head, size", [
    (88, (4 << 20) + 3),  # a bf16 plane object: header and three descriptors, then the raw plane
    (0, 3 * ALIGN),  # already at an aligned offset: no lead
    (4095, 5 * ALIGN + 1),  # a lead of one byte
    (136, (2 << 20) + ALIGN),  # longer than the writer's piece
])
def test_a_piece_lying_at_its_file_offset_modulo_the_alignment_goes_straight_to_the_device(
        tmp_path, monkeypatch, head, size):
    """A writable piece (the codec's raw byte plane) whose memory lies at its file offset
    modulo ALIGN is written from where it lies, in aligned writes at aligned offsets, not
    copied into the aligned buffer; the object reads back byte for byte."""
    _needs_direct(tmp_path)
    plane = _placed(size, head, seed=size)
    parts: list[bytes | memoryview] = [bytes(range(256)) * (head // 256) + bytes(head % 256),
                                       memoryview(plane), b"zstd frame" * 1000]
    seen = _spy_pwrite(monkeypatch)
    w = DirectWriter(piece=ALIGN * 64, direct_from=0)
    assert _write(w, tmp_path / "obj", parts)
    assert (tmp_path / "obj").read_bytes() == b"".join(bytes(p) for p in parts)
    straight = [(n, off) for obj, n, off in seen if obj is plane.base or obj is plane]
    assert straight and all(n % ALIGN == 0 and off % ALIGN == 0 for n, off in straight)
    assert sum(n for n, _ in straight) == (size - (-head % ALIGN)) // ALIGN * ALIGN  # all but its ragged ends


@pytest.mark.parametrize("what", ["misplaced", "read-only", "short"])
def test_other_pieces_are_copied_through_the_buffer(tmp_path, monkeypatch, what):
    _needs_direct(tmp_path)
    plane = _placed(2 * ALIGN - 1 if what == "short" else 3 * ALIGN + 5, 88 + (what == "misplaced"), seed=9)
    piece: bytes | memoryview = plane.tobytes() if what == "read-only" else memoryview(plane)
    parts = [b"h" * 88, piece, b"t" * 7]
    seen = _spy_pwrite(monkeypatch)
    assert _write(DirectWriter(piece=ALIGN * 4, direct_from=0), tmp_path / "obj", parts)
    assert (tmp_path / "obj").read_bytes() == b"".join(bytes(p) for p in parts)
    assert all(obj is not plane.base and obj is not plane for obj, _, _ in seen)


def test_a_refusal_after_a_straight_write_rewrites_everything_buffered(tmp_path, monkeypatch):
    _needs_direct(tmp_path)
    plane = _placed(6 * ALIGN, 88, seed=11)
    parts = [b"h" * 88, memoryview(plane), b"end"]
    real, calls = os.pwrite, [0]

    def refusing(fd, data, offset):
        calls[0] += 1
        if calls[0] >= 3:  # the lead block and the plane's middle went out with O_DIRECT
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)
    monkeypatch.setattr(directio.os, "pwrite", refusing)
    w = DirectWriter(piece=ALIGN * 16, direct_from=0)
    assert _write(w, tmp_path / "obj", parts)
    assert not w.available and calls[0] == 3
    assert (tmp_path / "obj").read_bytes() == b"".join(bytes(p) for p in parts)


def test_a_bf16_chunk_object_is_written_from_the_codecs_plane_buffer_and_stored_exactly(tmp_path, monkeypatch):
    """The codec places its plane buffer so a raw plane lines up (codecs.Codec._plane_buffer):
    the local store writes a bf16 chunk's noisy low-byte plane straight from it, and the
    stored object is byte for byte what `encode` makes."""
    _needs_direct(tmp_path)
    from archiver.codecs import Codec
    rng = np.random.default_rng(5)
    values = (rng.standard_normal(1 << 21).astype(np.float32) * 0.02).view(np.uint32) >> 16
    data = values.astype("<u2").tobytes()  # 4 MiB of bf16: an exponent plane and a noisy one
    codec = Codec()
    want = codec.encode(data, 2)
    assert want.codec == "bg2"
    codec.address(data, 2)
    parts = codec.encode_parts(data, 2)
    seen = _spy_pwrite(monkeypatch)
    store = LocalStore(tmp_path / "s")
    assert store.put_parts_if_absent("chunks/ab/abcd", parts.parts)
    assert store.get("chunks/ab/abcd") == want.data
    planes = codec._local.scratch["planes"]
    assert any(isinstance(obj, np.ndarray) and np.shares_memory(obj, planes) and n >= (1 << 20) for obj, n, _ in seen)


@pytest.mark.parametrize("short", [False, True])
def test_any_mix_of_placed_misplaced_and_read_only_pieces_is_written_byte_exact(tmp_path, monkeypatch, short):
    """Random objects of pieces lying at their file offset modulo ALIGN (straight writes),
    misplaced ones, read-only ones and empty ones, of ragged lengths, through buffers of one to
    four blocks: each file is the pieces joined, at its exact size. `short`: every pwrite
    writes at most three blocks (a short O_DIRECT write ends on a block boundary)."""
    _needs_direct(tmp_path)
    if short:
        real = os.pwrite
        monkeypatch.setattr(directio.os, "pwrite", lambda fd, data, off: real(fd, memoryview(data)[:3 * ALIGN], off))
    rng = np.random.default_rng(17 + short)
    straight = 0
    for trial in range(120):
        parts: list[bytes | memoryview] = []
        pos = 0
        for _ in range(int(rng.integers(1, 6))):
            n = int(rng.integers(0, 5 * ALIGN))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                parts.append(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            else:
                at = pos if kind == 1 else pos + int(rng.integers(1, ALIGN))
                parts.append(memoryview(_placed(n, at, seed=trial)))
                straight += kind == 1 and directio._straight_lead(parts[-1], pos) is not None
            pos += n
        w = DirectWriter(piece=ALIGN * int(rng.integers(1, 5)), direct_from=0)
        path = tmp_path / f"obj{trial}"
        assert _write(w, path, parts)
        assert path.read_bytes() == b"".join(bytes(p) for p in parts), trial
        path.unlink()
    assert straight > 20


def test_threads_sharing_a_codec_and_a_store_store_every_plane_object_exactly(tmp_path):
    """Threads encoding on one Codec (a plane buffer each) and writing through one LocalStore
    (an aligned buffer each, raw planes straight from the plane buffers) at once: every object
    is byte for byte what `encode` makes, for bf16, fp32, fp64 and int8 data of odd lengths."""
    _needs_direct(tmp_path)
    import threading
    from archiver.codecs import Codec
    store, codec, errors = LocalStore(tmp_path / "s"), Codec(), []

    def data_of(width: int, n: int, seed: int) -> bytes:
        g = np.random.default_rng(seed)
        if width == 2:
            return ((g.standard_normal(n).astype(np.float32) * 0.02).view(np.uint32) >> 16).astype("<u2").tobytes()[:n]
        if width in (4, 8):
            return (g.standard_normal(n) * 0.02).astype(np.float32 if width == 4 else np.float64).tobytes()[:n]
        return g.integers(-8, 8, n, dtype=np.int8).tobytes()

    def work(t: int) -> None:
        try:
            for i in range(3):
                width = (2, 4, 8, 0)[(t + i) % 4]
                data = data_of(width, (1 << 20) + (1, 511, 4097)[i] + 3 * ALIGN * t, 10 * t + i)
                codec.address(data, width)
                key = f"chunks/{t:02x}/{t}{i}"
                assert store.put_parts_if_absent(key, codec.encode_parts(data, width).parts)
                assert store.get(key) == Codec().encode(data, width).data, (t, i, width)
        except BaseException as e:  # noqa: BLE001 - reported on the test's thread
            errors.append(e)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
