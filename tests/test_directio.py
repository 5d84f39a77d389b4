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
