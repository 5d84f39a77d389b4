"""What writing a big chunk object as pieces saves (issue 12 item 6, branch wall2): thread
CPU per GiB of input of `LocalStore.put_if_absent` of the joined object (`EncodedParts.join`,
what the write path did) against `put_parts_if_absent` of the pieces (what it does now), on
32 real byte-plane chunks of the bf16 input, the two variants alternating in order run by run.

    PYTHONPATH=. .venv/bin/python bench/parts_cost.py [--input FILE] [--runs 5] [--dir SCRATCH]

Each chunk is encoded (untimed) just before its write, as the worker does, so the raw
planes are views of the codec's plane buffer; the stored bytes of both variants are
compared. CPU = `time.thread_time` (user + system of this thread, fsyncs included)."""
from __future__ import annotations

import argparse
import os
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
from archiver.stores.local import LocalStore  # noqa: E402

CHUNKS = 32


def chunks(path: Path) -> list[tuple[str, bytes]]:
    """(address, raw bytes) of the first CHUNKS byte-plane chunks of `path`."""
    out = []
    with open(path, "rb") as f:
        for rc in iter_chunks(f, path.stat().st_size, ChunkPolicy()):
            if len(out) >= CHUNKS:
                break
            if rc.width == 2:
                out.append((blake3.blake3(rc.data).hexdigest(), bytes(rc.data)))
    return out


def joined(store: LocalStore, key: str, parts) -> None:
    store.put_if_absent(key, parts.join().data)


def pieces(store: LocalStore, key: str, parts) -> None:
    store.put_parts_if_absent(key, parts.parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=HERE / ".work" / "parts_cost")
    args = ap.parse_args()
    malloc.tune()
    if args.input is None:
        from cpu_per_gib import make_input  # noqa: E402 (bench/ is on sys.path as the script's dir)
        args.input = make_input(1024)
    raws = chunks(args.input)
    gib = sum(len(d) for _, d in raws) / (1 << 30)
    codec = Codec()
    variants = {"joined": joined, "pieces": pieces}
    for r in range(args.runs):
        cells, stored = [], {}
        for name, fn in (list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]):
            root = args.dir / name
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            store = LocalStore(root)
            store.put_if_absent("warm/x", b"x")
            os.sync()
            spent = 0.0
            for h, data in raws:
                parts = codec.encode_parts(data, 2)
                t = time.thread_time()
                fn(store, layout.chunk(h), parts)
                spent += time.thread_time() - t
            stored[name] = [(root / layout.chunk(h)).read_bytes() for h, _ in raws]
            cells.append(f"{name} {spent / gib:.3f}")
            shutil.rmtree(root)
        if stored["joined"] != stored["pieces"]:
            raise SystemExit("the two variants stored different bytes")
        print("  ".join(sorted(cells)), "CPU-s per GiB of input (same bytes stored)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
