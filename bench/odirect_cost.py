"""What would writing chunk objects with O_DIRECT save? (issue 12 item 6: archive's CPU beyond the
required work includes the copy of every stored byte into the page cache and its write-back.)

    .venv/bin/python bench/odirect_cost.py [--objects 128] [--mib 5.6] [--runs 3] [--dir D]

Writes `--objects` objects of `--mib` MiB (one GiB of bf16 input stores ~128 objects of ~5.6 MiB)
into a scratch directory the way `LocalStore.put_parts_if_absent` does (temp file, writes of
at most 128 KiB, fsync, link, unlink, directory fsync), then the same with O_DIRECT: the
object copied into one reused page-aligned buffer, written in one padded write, truncated to
its size, fsynced, linked. Alternating, `--runs` times each. Prints per mode: this process's
CPU (user + system), the whole machine's busy CPU over the same interval (write-back and
interrupts run outside the process), and wall. Measures only the write path: it does not
change the store (objects written with O_DIRECT are not in the page cache, so a read right
after goes to the disk). Linux only."""
from __future__ import annotations

import argparse
import mmap
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

PIECE = 128 << 10  # LocalStore's largest write
ALIGN = 4096


def _busy() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _finish(fd: int, tmp: Path, final: Path) -> None:
    os.fsync(fd)
    os.close(fd)
    os.link(tmp, final)
    os.unlink(tmp)
    dfd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def buffered(obj: bytes, tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    mv = memoryview(obj)
    for a in range(0, len(mv), PIECE):
        os.write(fd, mv[a:a + PIECE])
    _finish(fd, tmp, final)


def direct(obj: bytes, tmp: Path, final: Path, buf: mmap.mmap) -> None:
    n = len(obj)
    padded = -(-n // ALIGN) * ALIGN
    buf[:n] = obj
    buf[n:padded] = bytes(padded - n)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o444)
    view = memoryview(buf)[:padded]
    done = 0
    while done < padded:
        done += os.pwrite(fd, view[done:], done)
    os.ftruncate(fd, n)
    _finish(fd, tmp, final)


def one_run(mode: str, objects: list[bytes], root: Path, buf: mmap.mmap) -> tuple[float, float, float]:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for k in range(len(objects)):
        (root / f"{k:02x}").mkdir()
    os.sync()
    c0, b0, t0 = _cpu(), _busy(), time.monotonic()
    for k, obj in enumerate(objects):
        d = root / f"{k:02x}"
        if mode == "buffered":
            buffered(obj, d / ".tmp", d / "obj")
        else:
            direct(obj, d / ".tmp", d / "obj", buf)
    return _cpu() - c0, _busy() - b0, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=128)
    ap.add_argument("--mib", type=float, default=5.6)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="scratch parent (default: a temp dir)")
    a = ap.parse_args()
    size = int(a.mib * (1 << 20))
    objects = [os.urandom(size) for _ in range(a.objects)]
    buf = mmap.mmap(-1, -(-size // ALIGN) * ALIGN)  # page-aligned, reused for every object
    res: dict[str, list[tuple[float, float, float]]] = {"buffered": [], "O_DIRECT": []}
    with tempfile.TemporaryDirectory(prefix="odirect-", dir=a.dir) as td:
        for r in range(a.runs):
            for mode in ("buffered", "O_DIRECT") if r % 2 == 0 else ("O_DIRECT", "buffered"):
                res[mode].append(one_run(mode, objects, Path(td) / "store", buf))
                cpu, busy, wall = res[mode][-1]
                print(f"run {r} {mode:9s} process CPU {cpu:.3f} s, machine busy {busy:.2f} s, wall {wall:.3f} s, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    gib = a.objects * size / (1 << 30)
    for mode, rows in res.items():
        print(f"{mode:9s} median per GiB written: process CPU {statistics.median(r[0] for r in rows) / gib:.3f} s, "
              f"machine busy {statistics.median(r[1] for r in rows) / gib:.2f} s, "
              f"wall {statistics.median(r[2] for r in rows) / gib:.3f} s")


if __name__ == "__main__":
    main()
