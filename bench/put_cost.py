"""What writing a big chunk object costs beyond the write itself (issue 12 item 6, branch
hotpath): thread CPU per GiB of input of the object join (`codecs._assemble`'s copy) and of
`LocalStore.put_if_absent` against the same temp file + write + fsync + link without the
directory fsync, on 32 real chunks of the bf16 input, interleaved.

    PYTHONPATH=. .venv/bin/python bench/put_cost.py [--input FILE] [--runs 5] [--dir SCRATCH]

CPU = `time.thread_time` (user + system of this thread: the fsyncs' write-back runs here)."""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import blake3  # noqa: E402

from archiver import layout, malloc  # noqa: E402
from archiver.chunking import ChunkPolicy, iter_chunks  # noqa: E402
from archiver.codecs import Codec  # noqa: E402
from archiver.fileio import write_all  # noqa: E402
from archiver.stores.local import LocalStore  # noqa: E402

CHUNKS = 32


def objects(path: Path) -> tuple[list[tuple[str, bytes]], int]:
    """(address, encoded object) of the first CHUNKS byte-plane chunks, and their input bytes."""
    codec = Codec()
    out, raw = [], 0
    with open(path, "rb") as f:
        for rc in iter_chunks(f, path.stat().st_size, ChunkPolicy()):
            if len(out) >= CHUNKS:
                break
            if rc.width == 2:
                out.append((blake3.blake3(rc.data).hexdigest(), codec.encode(rc.data, rc.width).data))
                raw += len(rc.data)
    return out, raw


def put_store(root: Path, key: str, obj: bytes) -> None:
    LocalStore(root).put_if_absent(key, obj)


def put_without_dir_fsync(root: Path, key: str, obj: bytes) -> None:
    final = root / key
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        write_all(fd, obj)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.link(tmp, final)
    os.unlink(tmp)


def join_cost(objs: list[tuple[str, bytes]]) -> float:
    """The copy `_assemble` makes: each object's bytes joined from three views of it."""
    t = time.thread_time()
    for _, o in objs:
        mv = memoryview(o)
        b"".join([mv[:88], mv[88:100], mv[100:]])
    return time.thread_time() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=HERE / ".work" / "put_cost")
    args = ap.parse_args()
    malloc.tune()
    if args.input is None:
        from cpu_per_gib import make_input  # noqa: E402 (bench/ is on sys.path as the script's dir)
        args.input = make_input(1024)
    objs, raw = objects(args.input)
    gib = raw / (1 << 30)
    variants = {"put_if_absent": put_store, "no dir fsync": put_without_dir_fsync}
    for r in range(args.runs):
        cells = [f"join {join_cost(objs) / gib:.3f}"]
        for name, fn in (list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]):
            root = args.dir / name.replace(" ", "-")
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            fn(root, "warm/x", b"x")
            os.sync()
            t = time.thread_time()
            for h, o in objs:
                fn(root, layout.chunk(h), o)
            cells.append(f"{name} {(time.thread_time() - t) / gib:.3f}")
            shutil.rmtree(root)
        print("  ".join(sorted(cells)), "CPU-s per GiB of input", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
