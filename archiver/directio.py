"""Big object writes of the local store that bypass the page cache (O_DIRECT).

Why: a chunk object written through the page cache is copied into cold cache pages, written
back by the kernel later, and then sits in the cache evicting what the user reads (an
archive of terabytes evicts everything else). With O_DIRECT the bytes are copied into one
reused, page-aligned buffer per thread and go from there to the device: a copy into a hot
buffer instead of into fresh pages, and no write-back (bench/RESULTS.md, branch bigwall2).
Same bytes and the same durability: the caller still fsyncs (the size and the metadata) and
publishes by link. A filesystem that refuses O_DIRECT (or its alignment) gets the buffered
write, from the first byte again; the writer then stops asking."""
from __future__ import annotations

import errno
import mmap
import os
import threading
from typing import Sequence

from archiver.fileio import write_all

DIRECT_FROM = 1 << 20  # objects this big or bigger (chunk objects of big tensors): the copy saved pays for a device wait
ALIGN = 4096  # offsets and lengths of O_DIRECT writes: a multiple of any device's logical block up to 4 KiB
PIECE = 2 << 20  # the per-thread aligned buffer: an object is written in writes of this size
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_REFUSED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}  # what a filesystem without O_DIRECT answers


def _nbytes(part: bytes | memoryview) -> int:
    return memoryview(part).nbytes


class DirectWriter:
    """Per store: the threads' aligned buffers, and whether the filesystem took O_DIRECT."""

    def __init__(self, piece: int = PIECE, direct_from: int = DIRECT_FROM) -> None:
        if piece <= 0 or piece % ALIGN:
            raise ValueError(f"piece must be a positive multiple of {ALIGN}, got {piece}")
        self.piece, self.direct_from = piece, direct_from
        self.available = bool(_O_DIRECT)  # False once the filesystem refused it
        self._local = threading.local()

    def open(self, path: str | os.PathLike, flags: int, mode: int, size: int) -> tuple[int, bool]:
        """os.open(path, flags, mode), with O_DIRECT for an object of `size` bytes when it is
        big enough and the filesystem takes it; (descriptor, whether O_DIRECT is on)."""
        if self.available and size >= self.direct_from:
            try:
                return os.open(path, flags | _O_DIRECT, mode), True
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                self.available = False
        return os.open(path, flags, mode), False

    def write(self, fd: int, parts: Sequence[bytes | memoryview], direct: bool) -> None:
        """Write `parts` in order from offset 0 of the new file `fd` (opened by `open`): with
        O_DIRECT through the thread's buffer, the last write padded to ALIGN and the file cut
        back to its size; buffered otherwise, or if the filesystem refuses the aligned writes."""
        if direct:
            try:
                self._write_direct(fd, parts)
                return
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                self.available = False
                import fcntl
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)
                os.ftruncate(fd, 0)
        for part in parts:
            write_all(fd, part)

    def _buffer(self) -> mmap.mmap:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = mmap.mmap(-1, self.piece)  # page-aligned, reused by this thread
        return buf

    def _write_direct(self, fd: int, parts: Sequence[bytes | memoryview]) -> None:
        buf = self._buffer()
        view = memoryview(buf)
        try:
            fill = offset = 0
            for part in parts:
                src = memoryview(part).cast("B")
                lead = _straight_lead(src, offset + fill)
                if lead is not None:  # its middle goes to the device from where it lies: no copy
                    view[fill:fill + lead] = src[:lead]
                    offset = _pwrite_all(fd, view[:fill + lead], offset) if fill + lead else offset
                    fill = 0
                    middle = (len(src) - lead) // ALIGN * ALIGN
                    offset = _pwrite_all(fd, src[lead:lead + middle], offset)
                    src = src[lead + middle:]
                while src:
                    n = min(len(src), self.piece - fill)
                    view[fill:fill + n] = src[:n]
                    fill += n
                    src = src[n:]
                    if fill == self.piece:
                        offset = _pwrite_all(fd, view, offset)
                        fill = 0
            if fill:
                padded = -(-fill // ALIGN) * ALIGN
                view[fill:padded] = bytes(padded - fill)
                _pwrite_all(fd, view[:padded], offset)
                os.ftruncate(fd, offset + fill)
        finally:
            view.release()


def _address(src: memoryview) -> int | None:
    """Where `src`'s first byte lies in memory, for a writable buffer (None for a read-only
    one: ctypes takes the address of writable buffers only)."""
    if src.readonly:
        return None
    import ctypes  # here: most commands never write a big object, and start-up time counts
    first = ctypes.c_char.from_buffer(src)
    try:
        return ctypes.addressof(first)
    finally:
        del first  # releases the buffer export at once


def _straight_lead(src: memoryview, pos: int) -> int | None:
    """For a piece that lands at file offset `pos`: if its memory lies at the same place
    modulo ALIGN as its bytes in the file (e.g. a raw byte plane the codec placed so,
    codecs.Codec's plane buffer), and at least one aligned block of it lies past the next
    aligned offset, the bytes before that offset (to be copied into the buffer); else None
    (copied through the buffer like any other piece)."""
    if len(src) < 2 * ALIGN:
        return None
    addr = _address(src)
    if addr is None or (addr - pos) % ALIGN:
        return None
    lead = -pos % ALIGN
    return lead if len(src) - lead >= ALIGN else None


def _pwrite_all(fd: int, view: memoryview, offset: int) -> int:
    """Write all of `view` at `offset` (a short O_DIRECT write ends on a block boundary, so the
    rest stays aligned); the offset after it."""
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        done += n
    return offset + done
