"""Small file-descriptor helpers shared by the local store and restore."""
from __future__ import annotations

import os

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
