"""The cost of proving dedup hits, alone (no borg/restic/zstd needed): the 10%-changed LLM v2
re-archived with the default (every chunk the store already holds is read back, decoded and
compared with the source before the manifest commits) vs `--trust-verified-within`.

    .venv/bin/python bench/dedup_proof.py [--quick] [--runs N]

Each run, in a fresh ARCHIVER_HOME: archive v1, `verify --deep` (records every chunk as
verified), copy the home aside, archive v2 with the default, put the copy back, archive v2
with `--trust-verified-within 1d` (the order of the two alternates run by run). Prints the
medians and the ratios as a markdown table; `make bench` measures the same pair in its
llm-bf16 section (bench/run.py)."""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    from inputs import prepare_llm, tree_bytes
    from measure import median, warm
    from tools import TRUST_WINDOW, Ours

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the ~190 MiB LLM input instead of ~2.1 GiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=HERE / ".work")
    args = ap.parse_args()

    base = args.work.resolve() / "inputs"
    base.mkdir(parents=True, exist_ok=True)
    v1, v2, changed = prepare_llm(base, args.quick, print)
    warm(sorted(p for d in (v1, v2) for p in d.rglob("*") if p.is_file()))
    tmproot = args.work.resolve() / "tmp-dedup-proof"
    shutil.rmtree(tmproot, ignore_errors=True)
    tmproot.mkdir(parents=True)
    rows: dict[str, list[tuple[float, float, int]]] = {"default": [], "trusting": []}
    try:
        for r in range(args.runs):
            tmp = Path(tempfile.mkdtemp(dir=tmproot))
            o = Ours(tmp)
            o.archive(v1, "v1")
            o.verify("v1")
            snap = o.snapshot()
            runs = [("default", ()), ("trusting", ("--trust-verified-within", TRUST_WINDOW))]
            for i, (mode, opts) in enumerate(runs if r % 2 == 0 else runs[::-1]):
                if i:
                    o.rollback(snap)  # the second mode starts from the same state as the first
                m = o.archive(v2, "v2", *opts)
                rows[mode].append((m.wall, m.cpu, m.extra["chunks"] - m.extra["new_chunks"]))
                print(f"run {r + 1}/{args.runs} {mode:9} wall {m.wall:6.2f} s  cpu {m.cpu:6.2f} s  "
                      f"other cpu {m.other_cpu:5.2f} s  new chunks {m.extra['new_chunks']} of {m.extra['chunks']}")
            shutil.rmtree(tmp)
    finally:
        shutil.rmtree(tmproot, ignore_errors=True)

    wall = {k: median([w for w, _, _ in v]) for k, v in rows.items()}
    cpu = {k: median([c for _, c, _ in v]) for k, v in rows.items()}
    hits = rows["default"][0][2]
    print(f"\nv2: {tree_bytes(v2):,} bytes, {changed['bytes']:.1%} of the bytes changed; {hits} chunks already "
          f"stored; median of {args.runs} run(s)\n")
    print("| re-archive of v2 | wall s | CPU s |")
    print("|---|---|---|")
    print(f"| default (every stored chunk read back and proved) | {wall['default']:.2f} | {cpu['default']:.2f} |")
    print(f"| `--trust-verified-within {TRUST_WINDOW}` (after `verify --deep`) | {wall['trusting']:.2f} | "
          f"{cpu['trusting']:.2f} |")
    print(f"| **ratio default / trusting** | **{wall['default'] / wall['trusting']:.2f}x** | "
          f"**{cpu['default'] / cpu['trusting']:.2f}x** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
