"""numpy for the manifest modules, imported on its first use rather than when they are.

Why: the catalog and the file-map reader use numpy only for binary file maps and bulk
chunk sets, but every command imports them; importing numpy costs ~0.1 CPU-s of every
run's start-up, and done before the CLI's entry point it starts OpenBLAS's thread per core
before `OPENBLAS_NUM_THREADS` is set (archiver.cli). No archiver import (manifests rule)."""
from __future__ import annotations

from typing import Any


class LazyNumpy:
    """Stands in for the `numpy` module: each attribute is numpy's own, looked up when asked."""

    def __getattr__(self, name: str) -> Any:
        import numpy
        return getattr(numpy, name)


np: Any = LazyNumpy()
