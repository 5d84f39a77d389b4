"""bench/measure.py: the A/B scripts compile each side's own checkout, wherever they run from."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from measure import compile_bytecode  # noqa: E402


def _checkout(root: Path) -> Path:
    """A stand-in checkout: the two packages a benched command imports, one module each."""
    for pkg in ("archiver", "manifests"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("X = 1\n")
    return root


def test_compile_bytecode_compiles_the_side_given_not_the_checkout_it_runs_from(tmp_path, monkeypatch):
    """Run from inside one checkout (the working directory comes first on a `python -c`
    probe's sys.path, before PYTHONPATH), the side named by PYTHONPATH and `cwd` is the one
    compiled; without `cwd`, the probe finds the checkout it runs from (the bug this guards)."""
    here, side = _checkout(tmp_path / "here"), _checkout(tmp_path / "side")
    monkeypatch.chdir(here)
    env = dict(os.environ, PYTHONPATH=str(side))
    assert compile_bytecode(env, cwd=str(side)) == [str(side / "archiver"), str(side / "manifests")]
    assert list((side / "archiver" / "__pycache__").glob("__init__.*.pyc"))
    assert not (here / "archiver" / "__pycache__").exists()
    assert compile_bytecode(env) == [str(here / "archiver"), str(here / "manifests")]  # cwd first: the wrong side
