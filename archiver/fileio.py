"""Small file-descriptor helpers shared by the local store and restore: whole writes, and
making many files durable together (restore's batches)."""
from __future__ import annotations

import errno
import functools
import os
import sys
from concurrent.futures import Executor
from typing import Callable, Sequence

# Largest single write. Why: for one big write(2) the kernel (ext4, large folios) fills
# the page cache with large folios, whose allocation cost ~0.6 CPU-s more per GiB
# written here (fresh high-order pages, see bench/RESULTS.md, "CPU per GiB (issue 12)")
# than 128 KiB writes; the extra system calls cost nothing measurable (64 per 8 MiB).
WRITE_PIECE = 128 * 1024


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write may write less than asked; loop until everything is written, at most
    WRITE_PIECE bytes per call (memoryview slices: nothing is copied)."""
    view = memoryview(data).cast("B")  # count bytes, whatever the item format
    while view:
        view = view[os.write(fd, view[:WRITE_PIECE]):]


# A batch of fewer files than this is fsynced file by file: syncfs(2) flushes everything
# dirty on the whole filesystem (other programs' writes too), which only pays off when it
# replaces many fsyncs.
SYNCFS_FROM = 16


@functools.cache
def _libc_syncfs() -> Callable[[int], int] | None:  # cached: the lookup, not any state
    """libc's syncfs, or None where there is none (not Linux, or a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here: most commands never sync a batch, and start-up time counts
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def syncfs(fd: int) -> bool:
    """syncfs(2) on the filesystem that holds `fd`: every dirty page and inode of it is
    written and the journal committed, and (Linux >= 5.8) a write-back error of any file
    since `fd` was opened is reported, as OSError. False, having done nothing, where this
    system has no syncfs: the caller then fsyncs each file."""
    fn = _libc_syncfs()
    if fn is None:
        return False
    if fn(fd) != 0:
        import ctypes
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(err, os.strerror(err))
    return True


def sync_together(fds: Sequence[int], pool: Executor | None = None, *, within: Sequence[int] | None = None) -> int:
    """Make every file (or directory) of `fds` durable before returning: one syncfs per
    filesystem they lie on when there are SYNCFS_FROM or more of them, else (or where there
    is no syncfs) one fsync each, in `pool` so their waits overlap. Why: on this kind of VM
    one fsync per small file costs more CPU than writing it. `within`: the directories that
    hold all of `fds` (fewer to stat to find their filesystems). Raises OSError if any sync
    fails; returns the number of sync calls made."""
    if not fds:
        return 0
    if len(fds) >= SYNCFS_FROM:
        one_per_fs: dict[int, int] = {}
        for fd in (fds if within is None else within):
            one_per_fs.setdefault(os.fstat(fd).st_dev, fd)
        done = 0
        for fd in one_per_fs.values():
            if not syncfs(fd):
                break
            done += 1
        else:
            return done
    if pool is None:
        for fd in fds:
            os.fsync(fd)
    else:
        for _ in pool.map(os.fsync, fds):
            pass
    return len(fds)
