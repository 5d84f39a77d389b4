"""`make bench` (sealed stores): encryption overhead of archive and restore, in CPU
seconds per GiB (user + sys of the archiver process, from resource.getrusage of the
children: the machine is shared, so wall time would measure the neighbours).

    .venv/bin/python bench/seal_bench.py [--size-mib N] [--runs N]

Input: one bf16 safetensors file of N(0, 0.02) weights (bench/inputs.normal_bf16_pieces).
Each run archives it into a fresh plain store and a fresh sealed store (one custodian),
then restores each with verification, interleaving plain and sealed so load drifts hit
both alike; reports the median CPU-s/GiB of each and the overhead against the issue's
target (sealed at most 10% more CPU per GiB than plain). Exit 1 if a restore differs."""
from __future__ import annotations

import argparse
import filecmp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from inputs import TensorSpec, normal_bf16_pieces, write_safetensors  # noqa: E402

TARGET = 0.10
GiB = 1 << 30


def cpu_of(cmd: list[str], env: dict[str, str]) -> float:
    """User + sys CPU seconds of one child process (and its threads)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def make_input(root: Path, size_mib: int) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    n = size_mib * (1 << 20) // 2
    rows = 4096
    spec = TensorSpec("w", "BF16", [n // rows, rows], lambda: normal_bf16_pieces((n // rows) * rows, 0.02, seed=7))
    write_safetensors(src / "model.safetensors", [spec], None)
    return src


def main() -> int:
    from measure import compile_bytecode
    compile_bytecode()  # as an install does: no command below compiles archiver again
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import pyrage
    work = HERE / ".work"
    tmp = Path(tempfile.mkdtemp(prefix="seal-bench-", dir=work if work.is_dir() else None))
    try:
        src = make_input(tmp, args.size_mib)
        gib = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / GiB
        ident = pyrage.x25519.Identity.generate()
        (tmp / "id.txt").write_text(f"{ident}\n")
        env = dict(os.environ, ARCHIVER_HOME=str(tmp / "home"), PYTHONPATH=str(HERE.parent))
        arch = [sys.executable, "-m", "archiver.cli"]
        cpu: dict[str, list[float]] = {k: [] for k in ("plain archive", "sealed archive", "plain restore",
                                                       "sealed restore")}
        bad = 0
        for run in range(args.runs):
            for kind in ("plain", "sealed"):
                store = tmp / f"{kind}-{run}"
                if kind == "sealed":
                    subprocess.run(arch + ["--store", str(store), "store", "init", "--encrypt-to",
                                           str(ident.to_public())], env=env, check=True, stdout=subprocess.DEVNULL)
                cpu[f"{kind} archive"].append(cpu_of(arch + ["--store", str(store), "--catalog", str(tmp / f"{kind}-{run}.db"),
                                                             "archive", str(src), "--name", "m"], env)
                                              / gib)
                dest = tmp / f"out-{kind}-{run}"
                extra = ["--identity", str(tmp / "id.txt")] if kind == "sealed" else []
                cpu[f"{kind} restore"].append(cpu_of(arch + ["--store", str(store), "--catalog",
                                                             str(tmp / f"{kind}-{run}.db"), "restore", "m", str(dest)]
                                                     + extra, env) / gib)
                if not filecmp.cmp(src / "model.safetensors", dest / "src" / "model.safetensors", shallow=False):
                    bad += 1
                shutil.rmtree(dest)
                shutil.rmtree(store)
        print(f"sealed-store overhead, {gib:.2f} GiB bf16 input, median of {args.runs} interleaved runs, "
              f"CPU seconds (user+sys) per GiB:")
        for op in ("archive", "restore"):
            plain, sealed = statistics.median(cpu[f"plain {op}"]), statistics.median(cpu[f"sealed {op}"])
            over = sealed / plain - 1
            print(f"  {op:8} plain {plain:6.2f}  sealed {sealed:6.2f}  overhead {over:+6.1%}  "
                  f"target <= {TARGET:.0%}: {'PASS' if over <= TARGET else 'FAIL'}")
        if bad:
            print(f"{bad} restore(s) differed from the source")
        return 1 if bad else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
