"""Tests for archiver.fileio.write_all: every byte written, short writes resumed, no single
write longer than WRITE_PIECE (see the module for why)."""
from __future__ import annotations

import array
import os
import sys
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


# -- sync_together: many files made durable at once ------------------------------------------

def _files(tmp_path: Path, n: int) -> list[int]:
    fds = []
    for i in range(n):
        fd = os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT)
        write_all(fd, b"x" * i)
        fds.append(fd)
    return fds


def _count(monkeypatch, with_syncfs: bool = True) -> dict[str, int]:
    calls = {"fsync": 0, "syncfs": 0}
    real_fsync, real_syncfs = os.fsync, fileio.syncfs

    def fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    def syncfs(fd: int) -> bool:
        if not with_syncfs:
            return False
        done = real_syncfs(fd)
        calls["syncfs"] += done  # only a syncfs that was made (not refused for this filesystem)
        return done
    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio, "syncfs", syncfs)
    return calls


def _sync_counted(tmp_path: Path, monkeypatch, n: int) -> tuple[dict[str, int], int]:
    """sync_together of `n` fresh files: the fsync/syncfs calls made, and what it returned."""
    fds = _files(tmp_path, n)
    try:
        calls = _count(monkeypatch)
        return calls, fileio.sync_together(fds)
    finally:
        for fd in fds:
            os.close(fd)


def test_many_files_on_one_filesystem_cost_one_syncfs(tmp_path: Path, monkeypatch) -> None:
    calls, made = _sync_counted(tmp_path, monkeypatch, fileio.SYNCFS_FROM + 4)
    if calls["syncfs"] == 0:  # no syncfs here: the fallback, an fsync each
        assert calls["fsync"] == made == fileio.SYNCFS_FROM + 4
    else:
        assert calls == {"fsync": 0, "syncfs": 1} and made == 1


def test_few_files_are_fsynced_each(tmp_path: Path, monkeypatch) -> None:
    fds = _files(tmp_path, fileio.SYNCFS_FROM - 1)
    try:
        calls = _count(monkeypatch)
        assert fileio.sync_together(fds) == len(fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert calls == {"fsync": len(fds), "syncfs": 0}
    assert fileio.sync_together([]) == 0


def test_without_syncfs_every_file_is_fsynced_in_the_pool(tmp_path: Path, monkeypatch) -> None:
    from concurrent.futures import ThreadPoolExecutor
    fds = _files(tmp_path, fileio.SYNCFS_FROM * 2)
    try:
        calls = _count(monkeypatch, with_syncfs=False)
        with ThreadPoolExecutor(4) as pool:
            assert fileio.sync_together(fds, pool) == len(fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert calls == {"fsync": len(fds), "syncfs": 0}


def test_a_failed_sync_is_raised_never_swallowed(tmp_path: Path, monkeypatch) -> None:
    import errno
    fds = _files(tmp_path, fileio.SYNCFS_FROM)

    def failing(fd: int) -> bool:
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(fileio, "syncfs", failing)
    try:
        with pytest.raises(OSError) as got:
            fileio.sync_together(fds)
        assert got.value.errno == errno.EIO
        monkeypatch.setattr(fileio, "syncfs", lambda fd: False)
        monkeypatch.setattr(fileio.os, "fsync", lambda fd: failing(fd))
        with pytest.raises(OSError):
            fileio.sync_together(fds[:2])
    finally:
        for fd in fds:
            os.close(fd)


def test_syncfs_reports_an_error_of_the_call(monkeypatch) -> None:
    """A real syncfs on a bad descriptor fails with EBADF (where the system has syncfs)."""
    import errno
    if fileio._libc_syncfs() is None:
        assert fileio.syncfs(0) is False
        return
    assert fileio.syncfs(10 ** 6) is False  # fstatfs fails too: not known durable, nothing done
    monkeypatch.setattr(fileio, "syncfs_is_durable", lambda fd: True)
    with pytest.raises(OSError) as got:
        fileio.syncfs(10 ** 6)
    assert got.value.errno == errno.EBADF


def test_within_names_the_filesystems_without_a_stat_per_file(tmp_path: Path, monkeypatch) -> None:
    fds = _files(tmp_path, fileio.SYNCFS_FROM)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    stats: list[int] = []
    real_fstat = os.fstat
    try:
        calls = _count(monkeypatch)
        monkeypatch.setattr(fileio.os, "fstat", lambda fd: stats.append(fd) or real_fstat(fd))
        made = fileio.sync_together(fds, within=[dir_fd])
    finally:
        monkeypatch.undo()
        for fd in [*fds, dir_fd]:
            os.close(fd)
    if calls["syncfs"]:
        assert made == 1 and stats == [dir_fd]
    else:
        assert made == len(fds) == calls["fsync"]


FUSE_SUPER_MAGIC = 0x65735546


@pytest.mark.parametrize("where", ["fuse", "old-kernel"])
def test_a_filesystem_whose_syncfs_is_not_known_durable_gets_an_fsync_per_file(tmp_path: Path, monkeypatch,
                                                                             where: str) -> None:
    """syncfs on a FUSE mount (sshfs, s3fs, rclone) asks its daemon to save nothing and still
    returns 0, and before Linux 5.8 it did not report write-back errors: there, every file of
    a batch is fsynced and syncfs(2) is never called."""
    made_syncfs: list[int] = []
    monkeypatch.setattr(fileio, "_libc_syncfs", lambda: made_syncfs.append)
    if where == "fuse":
        monkeypatch.setattr(fileio, "_fs_magic", lambda fd: FUSE_SUPER_MAGIC)
    else:
        monkeypatch.setattr(fileio, "_fs_magic", lambda fd: 0xEF53)
        monkeypatch.setattr(fileio, "_kernel", lambda: (5, 4))
    calls, made = _sync_counted(tmp_path, monkeypatch, fileio.SYNCFS_FROM + 4)
    n = fileio.SYNCFS_FROM + 4
    assert made_syncfs == [] and calls == {"fsync": n, "syncfs": 0} and made == n


def test_syncfs_is_trusted_only_on_listed_local_filesystems(tmp_path: Path, monkeypatch) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        if sys.platform.startswith("linux"):
            magic = fileio._fs_magic(fd)
            assert magic is not None  # fstatfs answered
            assert fileio.syncfs_is_durable(fd) == (magic in fileio.SYNCFS_FILESYSTEMS
                                                    and fileio._kernel() >= fileio.SYNCFS_KERNEL)
        monkeypatch.setattr(fileio, "_fs_magic", lambda _: FUSE_SUPER_MAGIC)
        assert not fileio.syncfs_is_durable(fd) and fileio.syncfs(fd) is False
        monkeypatch.setattr(fileio, "_fs_magic", lambda _: None)  # unreadable: not trusted
        assert not fileio.syncfs_is_durable(fd)
    finally:
        os.close(fd)


def test_an_unnamed_file_has_no_name_until_linked_and_a_link_replaces_nothing(tmp_path):
    """open_unnamed / link_unnamed (restore's small files): nothing appears in the directory
    until the link; closing an unlinked one leaves nothing; a name that exists (a file, a
    symlink) is never replaced or followed."""
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not fileio.unnamed_files(d):
            pytest.skip("no O_TMPFILE here")
        assert os.listdir(tmp_path) == []  # the probe left nothing
        fd = fileio.open_unnamed(d, 0o640)
        os.write(fd, b"whole")
        assert os.listdir(tmp_path) == []
        fileio.link_unnamed(fd, d, "done")
        os.close(fd)
        assert (tmp_path / "done").read_bytes() == b"whole"
        dropped = fileio.open_unnamed(d, 0o600)
        os.write(dropped, b"partial")
        os.close(dropped)
        assert os.listdir(tmp_path) == ["done"]
        (tmp_path / "victim").write_bytes(b"keep")
        (tmp_path / "link").symlink_to(tmp_path / "victim")
        fd = fileio.open_unnamed(d, 0o600)
        os.write(fd, b"new")
        for taken in ("done", "link"):
            with pytest.raises(FileExistsError):
                fileio.link_unnamed(fd, d, taken)
        os.close(fd)
        assert (tmp_path / "done").read_bytes() == b"whole" and (tmp_path / "victim").read_bytes() == b"keep"
    finally:
        os.close(d)
