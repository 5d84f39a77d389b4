"""S3 requests per GiB and per small file, archiver vs restic, on one moto server.

    .venv/bin/python bench/s3_requests.py [--gib 1.0] [--files 2000] [--out bench/.work/s3_requests.json]

Two inputs: one safetensors file of --gib GiB (bf16 tensors of random bytes) and a tree of
--files files of 1-16 KiB. For each tool and input, on a fresh bucket of the same moto
server (its own process on 127.0.0.1): archive, shallow verify, deep verify, restore and an
unchanged re-archive (restic: backup, check, check --read-data, restore, backup), and for
archiver one more unchanged re-archive with `--trust-verified-within 86400` (the deep verify
before it proved every chunk; restic: one more backup). Requests
are counted by a counting reverse proxy in front of moto (tests/faultproxy.py, no faults),
every request of any method, so both tools are counted the same way (moto's own request
log misses some of restic's GETs, so it is not used); CPU seconds are user+sys of the child processes (getrusage), since
the machine is shared. Restores are compared byte for byte with their source. Prints one
table, writes JSON, exits 1 if a command fails or a restore differs."""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GiB = 1 << 30
PHASES = ("archive", "verify", "verify-deep", "restore", "re-archive", "re-archive-trusted")
PACK_BELOW: int | None = None


def start_moto(log_path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start within 60 s")


class Counter:
    """Requests (seen by the counting proxy) and child CPU seconds of one phase."""

    def __init__(self, proxy: object) -> None:
        self.proxy = proxy

    def run(self, cmd: list[str], env: dict[str, str]) -> dict[str, object]:
        self.proxy.reset_log()  # type: ignore[attr-defined]
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        by = self.proxy.by_method()  # type: ignore[attr-defined]
        return {"requests": sum(by.values()), "by_method": {k: v for k, v in sorted(by.items()) if v},
                "cpu_s": round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 2),
                "wall_s": round(wall, 2)}


def make_bucket(endpoint: str, name: str) -> None:
    import boto3
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=name)


def make_big(path: Path, nbytes: int) -> None:
    """A safetensors file of bf16 tensors (64 MiB each) of random bytes."""
    per = 64 << 20
    n = max(1, nbytes // per)
    header, off = {}, 0
    for i in range(n):
        header[f"layers.{i}.weight"] = {"dtype": "BF16", "shape": [per // 2], "data_offsets": [off, off + per]}
        off += per
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rnd = random.Random(7)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _ in range(n):
            f.write(rnd.randbytes(per))


def make_small(root: Path, files: int) -> None:
    rnd = random.Random(11)
    for i in range(files):
        d = root / f"d{i % 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        size = rnd.randint(1024, 16 * 1024)
        (d / f"f{i:05d}.bin").write_bytes(rnd.randbytes(size) if i % 2 else (f"{i} " * size).encode()[:size])


def same_tree(a: Path, b: Path) -> bool:
    c = filecmp.dircmp(a, b)
    if c.left_only or c.right_only or c.diff_files or c.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, c.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(a / d, b / d) for d in c.common_dirs)


def archiver_phases(src: Path, work: Path, endpoint: str, bucket: str, count: Counter) -> dict[str, dict]:
    env = dict(os.environ, ARCHIVER_HOME=str(work / "home"), AWS_ENDPOINT_URL=endpoint,
               **({"ARCHIVER_PACK_BELOW": str(PACK_BELOW)} if PACK_BELOW is not None else {}),
               AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
               PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "archiver.cli", "--store", f"s3://{bucket}/a"]
    out = {"archive": count.run(cli + ["archive", str(src), "--name", "bench"], env),
           "verify": count.run(cli + ["verify", "bench"], env),
           "verify-deep": count.run(cli + ["verify", "bench", "--deep"], env),
           "restore": count.run(cli + ["restore", "bench", str(work / "restored")], env),
           "re-archive": count.run(cli + ["archive", str(src), "--name", "bench"], env),
           "re-archive-trusted": count.run(cli + ["archive", str(src), "--name", "bench",
                                                  "--trust-verified-within", "86400"], env)}
    out["restore"]["identical"] = same_tree(src.parent, work / "restored") if src.is_dir() else \
        filecmp.cmp(src, work / "restored" / src.name, shallow=False)
    return out


def restic_phases(src: Path, work: Path, endpoint: str, bucket: str, count: Counter) -> dict[str, dict]:
    env = dict(os.environ, RESTIC_PASSWORD="bench", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               RESTIC_CACHE_DIR=str(work / "cache"))
    repo = ["restic", "-q", "-r", f"s3:{endpoint}/{bucket}/r"]
    subprocess.run(repo + ["init"], env=env, check=True, capture_output=True)
    out = {"archive": count.run(repo + ["backup", str(src)], env),
           "verify": count.run(repo + ["check"], env),
           "verify-deep": count.run(repo + ["check", "--read-data"], env),
           "restore": count.run(repo + ["restore", "latest", "--target", str(work / "restored")], env),
           "re-archive": count.run(repo + ["backup", str(src)], env),
           "re-archive-trusted": count.run(repo + ["backup", str(src)], env)}  # restic has no such mode
    got = work / "restored" / src.relative_to(src.anchor)
    out["restore"]["identical"] = same_tree(src, got) if src.is_dir() else filecmp.cmp(src, got, shallow=False)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--out", default=str(HERE / ".work" / "s3_requests.json"))
    ap.add_argument("--pack-below", type=int, default=None,
                    help="ARCHIVER_PACK_BELOW for archiver (bytes; default: archiver's own default)")
    ap.add_argument("--only", choices=("big", "small"), default=None)
    args = ap.parse_args()
    global PACK_BELOW
    PACK_BELOW = args.pack_below
    if shutil.which("restic") is None:
        print("restic is not installed (apt-get install restic)")
        return 1
    sys.path.insert(0, str(HERE))
    from measure import compile_bytecode
    compile_bytecode()  # as an install does: no command below compiles archiver again
    base = Path(tempfile.mkdtemp(prefix="s3req-", dir=os.environ.get("TMPDIR")))
    log_path = base / "moto.log"
    proc, moto_url = start_moto(log_path)
    sys.path.insert(0, str(ROOT))
    from tests.faultproxy import FaultProxy
    proxy = FaultProxy(moto_url).start()
    endpoint = proxy.url
    results: dict[str, dict] = {}
    ok = True
    try:
        inputs = {}
        if args.only in (None, "big"):
            (base / "big").mkdir()
            big = base / "big" / "model.safetensors"
            make_big(big, int(args.gib * GiB))
            inputs["big"] = (big, big.stat().st_size / GiB, "per GiB")
        if args.only in (None, "small"):
            small = base / "small" / "tree"
            make_small(small, args.files)
            inputs["small"] = (small, args.files, "per file")
        count = Counter(proxy)
        for name, (src, scale, unit) in inputs.items():
            for tool, phases in (("archiver", archiver_phases), ("restic", restic_phases)):
                bucket = f"bench-{tool}-{name}"
                make_bucket(moto_url, bucket)
                work = base / f"{tool}-{name}"
                work.mkdir()
                got = phases(src, work, endpoint, bucket, count)
                for ph in got.values():
                    ph["per_unit"] = round(ph["requests"] / scale, 3)
                ok &= bool(got["restore"].get("identical"))
                results[f"{tool}/{name}"] = {"unit": unit, "scale": scale, "phases": got}
                shutil.rmtree(work, ignore_errors=True)
    finally:
        proxy.stop()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"S3 requests on moto ({args.gib:g} GiB safetensors; {args.files} files of 1-16 KiB; "
          f"ARCHIVER_PACK_BELOW={PACK_BELOW if PACK_BELOW is not None else 'default'}); "
          f"cells: requests per unit (total requests, CPU s)")
    for name in inputs:
        a, r = results[f"archiver/{name}"], results[f"restic/{name}"]
        print(f"\n{name} ({a['unit']}) | archiver | restic | ratio | target")
        for ph in PHASES:
            pa, pr = a["phases"][ph], r["phases"][ph]
            ratio = pa["requests"] / max(1, pr["requests"])
            target = ("<= 0.1/file " + ("PASS" if pa["per_unit"] <= 0.1 else "FAIL")) if name == "small" else \
                ("<= 1.5x " + ("PASS" if ratio <= 1.5 else "FAIL"))
            print(f"{ph} | {pa['per_unit']} ({pa['requests']}, {pa['cpu_s']} s) | "
                  f"{pr['per_unit']} ({pr['requests']}, {pr['cpu_s']} s) | {ratio:.2f} | {target}")
    if not ok:
        print("A RESTORE DIFFERED FROM ITS SOURCE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
