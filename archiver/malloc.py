"""glibc malloc settings for a process that churns through multi-MiB buffers.

Every chunk passes through several 2-8 MiB buffers (read, compressed, decoded; the
byte planes and the encoder's round-trip check use per-thread buffers the codec
reuses, see codecs.Codec._scratch). By default glibc serves each from a fresh mmap and unmaps it on free, so
every page is faulted in and zeroed again, a large share of an archive's system
time. Raising the mmap threshold to its maximum (32 MiB) and keeping up to 128 MiB
of freed memory keeps those buffers in the heap for reuse; peak RSS is unchanged
(the working set is the same bounded window of chunks). One arena instead of one per
thread: each arena keeps its own freed memory, so with several worker threads deep
verify's peak RSS crept up with the size of the file; with one arena it stays nearly
flat, and is no slower (the threads allocate a few large buffers per chunk, so the
shared arena's lock is not contended). Measurements: bench/RESULTS.md, "Design
measurements behind codec and malloc choices".
The CLI calls `tune()` at start; API users may call it too. A no-op off glibc."""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 1
MMAP_THRESHOLD = 32 * 1024 * 1024   # glibc's maximum on 64-bit
TRIM_THRESHOLD = 128 * 1024 * 1024


def tune() -> bool:
    """Apply the settings; True if glibc accepted them."""
    try:
        # the process's own symbols (libc is among them), not ctypes.util.find_library: that
        # imports subprocess and shutil and may run ldconfig, in every command's start-up
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all([mallopt(M_ARENA_MAX, ARENA_MAX), mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)])
