"""CPU of writing real chunk objects to a local store with O_DIRECT: raw byte planes written
straight from the codec's plane buffer vs copied into the writer's aligned buffer first
(issue 12 item 6, branch bigwall3).

    PYTHONPATH=. .venv/bin/python bench/plane_write_cost.py --input FILE [--chunks 16] [--runs 6] [--dir DIR]

Reads --chunks 8 MiB pieces of FILE (a bf16 safetensors, e.g. bench/cpu_per_gib.py's input),
encodes each as archive does (Codec.address, then encode_parts: a raw low-byte plane and a zstd
exponent plane), and times only LocalStore.put_parts_if_absent of the pieces (thread CPU: temp
file, O_DIRECT writes, fsync, link, directory fsync) into a fresh store under DIR, once as the
writer now does and once with every piece copied through its buffer (the straight path turned
off), alternating which goes first. Prints CPU ms per object and per GiB of input (medians)."""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from archiver import directio
from archiver.codecs import Codec
from archiver.stores.local import LocalStore

PIECE = 8 << 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--dir", type=Path, default=None, help="where the stores go (the filesystem measured)")
    a = ap.parse_args()
    with open(a.input, "rb") as f:
        f.seek(1 << 20)  # past the header: tensor bytes
        chunks = [f.read(PIECE) for _ in range(a.chunks)]
    straight = directio._straight_lead
    codec = Codec()
    cpu: dict[str, list[float]] = {"copied": [], "straight": []}
    work = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        for run in range(a.runs):
            for mode in (("copied", "straight") if run % 2 == 0 else ("straight", "copied")):
                directio._straight_lead = straight if mode == "straight" else (lambda src, pos: None)
                root = work / f"{mode}{run}"
                store = LocalStore(root)
                spent = 0.0
                for i, data in enumerate(chunks):
                    codec.address(data, 2)
                    parts = codec.encode_parts(data, 2)
                    t = time.thread_time()
                    store.put_parts_if_absent(f"chunks/{i:02x}/{i:064x}", parts.parts)
                    spent += time.thread_time() - t
                cpu[mode].append(spent / len(chunks))
                shutil.rmtree(root)
    finally:
        directio._straight_lead = straight
        shutil.rmtree(work, ignore_errors=True)
    for mode, per in cpu.items():
        med = statistics.median(per)
        print(f"{mode:9s} CPU ms per object: {' '.join(f'{x * 1e3:.2f}' for x in per)}; median {med * 1e3:.2f}, "
              f"{med * (1 << 30) / PIECE:.3f} CPU-s per GiB of input")


if __name__ == "__main__":
    main()
