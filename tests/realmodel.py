"""The real all-MiniLM-L6-v2 model directory for tests (see archiver.samples.minilm_dir).

The download cache is ARCHIVER_TEST_CACHE, default .cache/ at the repository root."""
from __future__ import annotations

import os
from pathlib import Path

from archiver import samples

CACHE = Path(os.environ.get("ARCHIVER_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache"))


def minilm_dir(cache: Path = CACHE) -> Path | None:
    return samples.minilm_dir(cache)


if __name__ == "__main__":
    print(minilm_dir() or "unavailable")
