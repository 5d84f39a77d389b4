"""Tests for archiver.fileio.write_all: every byte written, short writes resumed, no single
write longer than WRITE_PIECE (see the module for why)."""
from __future__ import annotations

import array
import os
from pathlib import Path

import pytest

from archiver import fileio
from archiver.fileio import WRITE_PIECE, write_all


@pytest.mark.parametrize("size", [0, 1, WRITE_PIECE - 1, WRITE_PIECE, 3 * WRITE_PIECE + 5])
def test_writes_every_byte_in_bounded_pieces(tmp_path: Path, size: int, monkeypatch) -> None:
    data = os.urandom(size)
    calls: list[int] = []
    real = os.write

    def recording(fd: int, buf) -> int:
        calls.append(len(buf))
        return real(fd, buf)

    monkeypatch.setattr(fileio.os, "write", recording)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        write_all(fd, memoryview(data))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
    assert all(n <= WRITE_PIECE for n in calls)
    assert len(calls) == -(-size // WRITE_PIECE)


def test_short_writes_are_resumed(tmp_path: Path, monkeypatch) -> None:
    data = os.urandom(WRITE_PIECE + 12_345)
    real = os.write
    monkeypatch.setattr(fileio.os, "write", lambda fd, buf: real(fd, buf[:1000]))  # the kernel may write less
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        write_all(fd, bytearray(data))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data


def test_a_typed_buffer_is_written_as_its_bytes(tmp_path: Path) -> None:
    values = array.array("H", (k % 65536 for k in range(70_000)))  # 140,000 bytes, more than one piece
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        write_all(fd, memoryview(values))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == values.tobytes()
