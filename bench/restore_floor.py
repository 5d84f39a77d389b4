"""The floor of restoring (and deep-verifying) the small-file tree from Python alone: the
same 20,000 files of 1-16 KiB + 5,000 empty files in 500 directories, each created under a
temp name, written, given its mode and mtime, and renamed into place, with nothing else.
Modes: `nosync`; `syncfs N` (one syncfs per N files, and one at the end); `fsync-each` (an
fsync per file before its rename, and per directory at the end); `verify` (hash the bytes as
a deep verify does: BLAKE3 of each chunk, BLAKE3 + SHA-256 of each file). Prints CPU-s
(user+sys of this process) and wall s of the measured part."""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import random
import shutil
import time

import blake3

FILES, EMPTY, DIRS = 20_000, 5_000, 500


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def restore(work: str, mode: str, batch: int) -> None:
    root = os.path.join(work, "floor")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = random.Random(1)
    datas = [rng.randbytes(rng.randint(1024, 16384)) for _ in range(200)]
    libc = ctypes.CDLL(None, use_errno=True)
    os.sync()
    c0, t0 = cpu(), time.monotonic()
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    dfds = []
    for i in range(DIRS):
        os.mkdir(f"d{i:03d}", 0o700, dir_fd=rfd)
        dfds.append(os.open(f"d{i:03d}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=rfd))
    files = ([(dfds[i % DIRS], f"f{i:05d}", datas[i % 200]) for i in range(FILES)] +
             [(dfds[i % DIRS], f"e{i:05d}", b"") for i in range(EMPTY)])

    def write(d: int, name: str, data: bytes, sync: bool) -> int:
        fd = os.open("t" + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=d)
        if data:
            os.write(fd, data)
        os.fchmod(fd, 0o644)
        if sync:
            os.fsync(fd)
        os.utime(fd, ns=(1, 1))
        return fd

    def syncfs() -> None:
        if libc.syncfs(rfd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")

    step = batch if mode == "syncfs" else 1  # else each file renamed and closed at once
    for b in range(0, len(files), step):
        part = files[b:b + step]
        fds = [write(d, name, data, mode == "fsync-each") for d, name, data in part]
        if mode == "syncfs":
            syncfs()
        for (d, name, _), fd in zip(part, fds):
            os.rename("t" + name, name, src_dir_fd=d, dst_dir_fd=d)
            os.close(fd)
    if mode == "syncfs":
        syncfs()
    elif mode == "fsync-each":
        for d in dfds:
            os.fsync(d)
    print(mode, batch if mode == "syncfs" else "", "cpu", round(cpu() - c0, 2), "wall", round(time.monotonic() - t0, 2))
    for d in dfds:
        os.close(d)
    os.close(rfd)
    shutil.rmtree(root, ignore_errors=True)


def verify(work: str) -> None:
    rng = random.Random(15)
    sizes = [rng.randint(1024, 16384) for _ in range(FILES)] + [0] * EMPTY
    blob = rng.randbytes(sum(sizes))  # the bytes, as one pack-like buffer, read before timing
    c0, t0 = cpu(), time.monotonic()
    view, off = memoryview(blob), 0
    for n in sizes:
        d = view[off:off + n]
        off += n
        if n:
            blake3.blake3(d).hexdigest()
        blake3.blake3(d).hexdigest()
        hashlib.sha256(d).hexdigest()
    print("verify hashing", "cpu", round(cpu() - c0, 2), "wall", round(time.monotonic() - t0, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["nosync", "syncfs", "fsync-each", "verify"])
    ap.add_argument("batch", nargs="?", type=int, default=512)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    if a.mode == "verify":
        verify(a.work)
    else:
        restore(a.work, a.mode, a.batch)


if __name__ == "__main__":
    main()
