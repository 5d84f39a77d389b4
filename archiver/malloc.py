"""glibc malloc settings for a process that churns through multi-MiB buffers.

Every chunk passes through several 2-8 MiB buffers (read, planes, compressed,
decoded). By default glibc serves each from a fresh mmap and unmaps it on free, so
every page is faulted in and zeroed again: on a 1 GiB archive that was ~1.6 s of
system time out of ~5 s. Raising the mmap threshold to its maximum (32 MiB) and
keeping up to 128 MiB of freed memory keeps those buffers in the heap for reuse;
peak RSS is unchanged (the working set is the same bounded window of chunks). One
arena instead of one per thread: each arena keeps its own freed memory, and with 5
threads that let deep verify's peak RSS creep from ~200 MiB (1 GiB file) to ~235 MiB
(8 GiB file); with one arena it is ~134 -> ~143 MiB, and no slower (the threads
allocate a few large buffers per chunk, so the shared arena's lock is not contended).
The CLI calls `tune()` at start; API users may call it too. A no-op off glibc."""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 1
MMAP_THRESHOLD = 32 * 1024 * 1024   # glibc's maximum on 64-bit
TRIM_THRESHOLD = 128 * 1024 * 1024


def tune() -> bool:
    """Apply the settings; True if glibc accepted them."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all([mallopt(M_ARENA_MAX, ARENA_MAX), mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)])
