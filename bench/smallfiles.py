"""Small files and unchanged re-archives (issue 15): archiver vs restic and borg, same run.

    PYTHONPATH=. python bench/smallfiles.py [--runs N] [--big-gib G] [--files N --empty N --dirs N]
                                            [--only tree|big] [--markdown PATH]

Inputs (generated once under bench/.work/inputs, reused while their parameters match):
* tree: FILES files of 1-16 KiB of random bytes plus EMPTY empty files, spread over DIRS
  directories (default 20,000 + 5,000 in 500: the issue's tree);
* big: one bf16 safetensors file of BIG_GIB GiB (normal weights; default 1, `make bench` 16).

For each input and run, each tool gets a fresh repository and does, in order: archive,
deep verify, restore (compared with the source byte for byte), an unchanged re-archive,
a deep verify of it and an unchanged re-archive trusting that verify (ours:
`--trust-verified-within 86400`; restic and borg: their plain backup, which always trusts
their repository); then 1% of the input is changed (1% of the tree's non-empty files
rewritten; 1% of the big file's bytes, in 16 spread stretches) and each tool re-archives it
and deep-verifies that; then another 1% is changed and each re-archives it trusting the
verify. The changes stay in place (each run changes another 2%), so no copy of the input
is needed.
Reported: median wall seconds and CPU seconds (user+sys of the command and its children,
from wait4) per step, and ours/restic, ours/borg ratios of both (< 1: ours is faster).
The machine is shared, so CPU seconds are the steadier figure. Writes bench/.work/
smallfiles.json and replaces its own section of the markdown file (default bench/RESULTS.md)."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inputs import TensorSpec, normal_bf16_pieces, write_safetensors  # noqa: E402
from measure import Measure, median, run, warm  # noqa: E402
from tools import ARCHIVER, Borg, Ours, Restic  # noqa: E402

HEADING = "## Small files and unchanged re-archives (issue 15)"
TRUST_S = "86400"
TRUST_UNCHANGED = f"re-archive unchanged, after verify --deep, --trust-verified-within {TRUST_S}"
TRUST_CHANGED = f"re-archive 1% changed, after verify --deep, --trust-verified-within {TRUST_S}"
STEPS = ("archive", "deep verify", "restore", "re-archive unchanged", "re-archive 1% changed", TRUST_UNCHANGED,
         TRUST_CHANGED)
TOOLS = ("archiver", "restic", "borg")
GiB = 1 << 30


def log(msg: str = "") -> None:
    print(msg, flush=True)


# -- inputs ----------------------------------------------------------------------------------

def _fresh(d: Path, params: dict) -> bool:
    marker = d / ".complete"
    return marker.exists() and json.loads(marker.read_text()) == params


def make_tree(d: Path, files: int, empty: int, dirs: int) -> Path:
    params = {"files": files, "empty": empty, "dirs": dirs, "v": 1}
    src = d / "tree"
    if _fresh(d, params):
        return src
    shutil.rmtree(d, ignore_errors=True)
    rng = random.Random(15)
    for i in range(dirs):
        (src / f"d{i:03d}").mkdir(parents=True)
    for i in range(files):
        (src / f"d{i % dirs:03d}" / f"f{i:05d}.bin").write_bytes(rng.randbytes(rng.randint(1024, 16384)))
    for i in range(empty):
        (src / f"d{i % dirs:03d}" / f"e{i:05d}").write_bytes(b"")
    (d / ".complete").write_text(json.dumps(params))
    return src


def make_big(d: Path, gib: float) -> Path:
    params = {"gib": gib, "v": 1}
    src = d / "big"
    if _fresh(d, params):
        return src
    shutil.rmtree(d, ignore_errors=True)
    src.mkdir(parents=True)
    cols = 4096
    rows = max(1, int(gib * GiB) // (2 * cols))
    spec = TensorSpec("weight", "BF16", [rows, cols], lambda: normal_bf16_pieces(rows * cols, 0.02, seed=16))
    write_safetensors(src / "model.safetensors", [spec], {"format": "pt"})
    (d / ".complete").write_text(json.dumps(params))
    return src


def change_tree(src: Path, fraction: float, seed: int) -> int:
    rng = random.Random(seed)
    files = sorted(p for p in src.rglob("f*.bin"))
    pick = rng.sample(files, max(1, round(fraction * len(files))))
    for p in pick:
        p.write_bytes(rng.randbytes(rng.randint(1024, 16384)))
    return len(pick)


def change_big(src: Path, fraction: float, seed: int) -> int:
    path = src / "model.safetensors"
    size = path.stat().st_size
    rng = random.Random(seed)
    stretch = max(1, int(size * fraction) // 16)
    with open(path, "r+b") as f:
        for i in range(16):
            f.seek(size * (i + 1) // 17)
            f.write(rng.randbytes(stretch))
    return 16 * stretch


def same_tree(a: Path, b: Path) -> bool:
    """Byte for byte, every regular file and directory (streamed in pieces)."""
    def listing(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*"))
    if listing(a) != listing(b):
        return False
    for p in a.rglob("*"):
        if p.is_file():
            q = b / p.relative_to(a)
            with open(p, "rb") as f, open(q, "rb") as g:
                while True:
                    x, y = f.read(16 << 20), g.read(16 << 20)
                    if x != y:
                        return False
                    if not x:
                        break
    return True


# -- one run ---------------------------------------------------------------------------------

def one_run(src: Path, tmp: Path, change: Callable[[], int], failures: list[str],
            keep: Path | None) -> dict[str, dict[str, Measure]]:
    """One run of every tool; each restored tree is moved under `keep`, deleted by the caller
    only after the last run (see the comment at the restore), or deleted at once if `keep` is
    None (the big file: it frees one inode, and three restores of 16 GiB kept beside three
    repositories and the input would need ~100 GB of disk)."""
    out: dict[str, dict[str, Measure]] = {t: {} for t in TOOLS}
    tools: dict[str, Any] = {}
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if shutil.which("restic"):
        tools["restic"] = Restic(tmp)
    if shutil.which("borg"):
        tools["borg"] = Borg(tmp)
    tools["archiver"] = Ours(tmp)

    def deep(name: str, t: Any, tag: str) -> Measure:
        return t.verify(tag) if name == "archiver" else t.verify()

    def trusting(name: str, t: Any, tag: str) -> Measure:
        # restic and borg always take what their repository holds on trust: their plain backup
        return t.archive(src, tag, "--trust-verified-within", TRUST_S) if name == "archiver" else t.archive(src, tag)

    for name, t in tools.items():
        out[name]["archive"] = t.archive(src, "v1")
        out[name]["deep verify"] = deep(name, t, "v1")
        dest = tmp / f"restore-{name}"
        out[name]["restore"] = t.restore(dest, "v1")
        if not same_tree(src, dest / src.name):
            failures.append(f"{name}: restore of {src} is not byte-identical")
        # Kept until every run has ended (moved under `keep`, which the caller deletes last): ext4
        # without a journal skips recently freed inodes one by one on every allocation (its
        # `recently_deleted`, a window of 5 s, or 305 s once the inode table block is dirty
        # again), so a restore made after a restored tree was deleted pays for that deletion
        # (bench/RESULTS.md, "Small-file restore on worker processes, and the inodes freed
        # before it"). Deleting them at a run's end put that cost on the next run's first
        # restore (restic's), whatever tool deleted them.
        if keep is None:
            shutil.rmtree(dest)
        else:
            keep.mkdir(parents=True, exist_ok=True)
            dest.rename(keep / f"{len(list(keep.iterdir()))}-{name}")
        out[name]["re-archive unchanged"] = t.archive(src, "v2")
        deep(name, t, "v2")
        out[name][TRUST_UNCHANGED] = trusting(name, t, "v2t")
    changed = change()
    log(f"  changed {changed} {'files' if src.name == 'tree' else 'bytes'} of {src}")
    for name, t in tools.items():
        out[name]["re-archive 1% changed"] = t.archive(src, "v3")
        deep(name, t, "v3")
    changed = change()
    log(f"  changed another {changed} {'files' if src.name == 'tree' else 'bytes'} of {src}")
    for name, t in tools.items():
        out[name][TRUST_CHANGED] = trusting(name, t, "v3t")
    if "archiver" in tools:  # the same re-archive with the files cache off, for the cache's effect
        out["archiver"]["re-archive unchanged, --reread"] = tools["archiver"].archive(src, "v4", "--reread")
        for step in ("re-archive unchanged", TRUST_UNCHANGED, TRUST_CHANGED):
            ours = json.loads(out["archiver"][step].stdout)
            out["archiver"][step].extra["files_reused"] = ours.get("files_reused")
        first = json.loads(out["archiver"]["archive"].stdout)  # which mode auto chose (archiver.procfiles)
        out["archiver"]["archive"].extra["files_by_processes"] = first.get("files_by_processes")
        log(f"  archiver archive: {first.get('files_by_processes')} of {first.get('files')} files on worker processes")
        restored = json.loads(out["archiver"]["restore"].stdout)  # which mode restore's auto chose (archiver.procrestore)
        out["archiver"]["restore"].extra["files_by_processes"] = restored.get("files_by_processes")
        log(f"  archiver restore: {restored.get('files_by_processes')} of {restored.get('files')} files on worker "
            f"processes")
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def summarise(runs: list[dict[str, dict[str, Measure]]]) -> dict[str, dict[str, dict[str, float | None]]]:
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    steps = list(STEPS) + ["re-archive unchanged, --reread"]
    for tool in TOOLS:
        for step in steps:
            ms = [r[tool][step] for r in runs if step in r.get(tool, {})]
            if ms:
                table.setdefault(step, {})[tool] = {"wall": median([m.wall for m in ms]),
                                                    "cpu": median([m.cpu for m in ms]),
                                                    "other_cpu": median([m.other_cpu for m in ms])}
    return table


def markdown(results: dict[str, Any], args: argparse.Namespace, notes: list[str]) -> str:
    lines = [HEADING, "",
             f"Generated by `bench/smallfiles.py` ({' '.join(sys.argv[1:]) or 'defaults'}) on "
             f"{results['when']}; {results['minutes']:.1f} min; median of {args.runs} run(s) each. "
             f"Wall s / CPU s (user+sys of the command and its children; the machine is shared, so CPU "
             f"is the steadier figure). Ratios: ours / theirs (< 1: ours is faster), of wall time and of CPU.",
             ""]
    for name, inp in results["inputs"].items():
        lines += [f"### {name}: {inp['what']}", "",
                  "| step | archiver | restic | borg | ours/restic wall (cpu) | ours/borg wall (cpu) |",
                  "|---|---|---|---|---|---|"]
        for step, row in inp["table"].items():
            def cell(t: str) -> str:
                v = row.get(t)
                return f"{v['wall']:.2f} / {v['cpu']:.2f}" if v else "-"

            def ratio(t: str) -> str:
                a, b = row.get("archiver"), row.get(t)
                if not a or not b or not b["wall"] or not b["cpu"]:
                    return "-"
                return f"{a['wall'] / b['wall']:.2f}x ({a['cpu'] / b['cpu']:.2f}x)"
            lines.append(f"| {step} | {cell('archiver')} | {cell('restic')} | {cell('borg')} | {ratio('restic')} "
                         f"| {ratio('borg')} |")
        lines.append("")
    lines += [*(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def put_section(path: Path, text: str, heading: str = HEADING) -> None:
    """Replace a benchmark's section of `path` (from its heading to the next '## '), or append it."""
    old = path.read_text() if path.exists() else ""
    at = old.find(heading)
    if at < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", at + len(heading))
        new = old[:at] + text.rstrip("\n") + "\n" + (old[end:] if end >= 0 else "")
    path.write_text(new)


def main() -> int:
    from measure import compile_bytecode
    compile_bytecode()  # as an install does: no command below compiles archiver again
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--empty", type=int, default=5000)
    ap.add_argument("--dirs", type=int, default=500)
    ap.add_argument("--big-gib", type=float, default=1.0, help="size of the bf16 file (make bench: 16)")
    ap.add_argument("--only", choices=["tree", "big"], action="append")
    ap.add_argument("--work", type=Path, default=HERE / ".work")
    ap.add_argument("--markdown", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    started = time.monotonic()
    work = args.work.resolve()
    inputs: dict[str, tuple[Path, str, Callable[[int], Callable[[], int]]]] = {}
    only = set(args.only or ["tree", "big"])
    if "tree" in only:
        src = make_tree(work / "inputs" / f"smallfiles-{args.files}-{args.empty}-{args.dirs}", args.files,
                        args.empty, args.dirs)
        inputs["small-file tree"] = (src, f"{args.files:,} files of 1-16 KiB + {args.empty:,} empty files in "
                                          f"{args.dirs} directories",
                                     lambda seed, s=src: (lambda: change_tree(s, 0.01, seed)))
    if "big" in only:
        src = make_big(work / "inputs" / f"bigfile-{args.big_gib:g}g", args.big_gib)
        inputs[f"bf16 file {args.big_gib:g} GiB"] = (src, f"one bf16 safetensors file of {args.big_gib:g} GiB",
                                                     lambda seed, s=src: (lambda: change_big(s, 0.01, seed)))
    failures: list[str] = []
    results: dict[str, Any] = {"inputs": {}}
    for name, (src, what, change) in inputs.items():
        log(f"{name}: {what}")
        runs = []
        keep = work / "restored-smallfiles"
        shutil.rmtree(keep, ignore_errors=True)
        for i in range(args.runs):
            warm([p for p in src.rglob("*") if p.is_file()])
            runs.append(one_run(src, work / "tmp-smallfiles", change(int(time.time()) + i), failures,
                                keep if src.name == "tree" else None))
            log(f"  run {i + 1}/{args.runs} done")
        shutil.rmtree(keep, ignore_errors=True)  # after the last restore of this input
        results["inputs"][name] = {"what": what, "table": summarise(runs),
                                   "runs": [{t: {s: m.to_dict() for s, m in r[t].items()} for t in r} for r in runs]}
    results["when"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results["minutes"] = (time.monotonic() - started) / 60
    results["failures"] = failures
    (work / "smallfiles.json").write_text(json.dumps(results, indent=2, default=str))
    notes = [f"archiver: `{ARCHIVER} archive SRC --name bench --json`, `verify ID --deep`, `restore ID DEST`; "
             f"restic: `backup --compression auto`, `check --read-data`, `restore latest --tag v1`; borg: "
             f"`create -C zstd,3`, `check --verify-data`, `extract` (see Exact commands above).",
             "Our unchanged re-archive uses the files cache (archiver/filescache.py): unchanged files are not "
             "read, and each of their chunks is proved by reading it back from the store (no trust window); "
             "the `--reread` row is the same re-archive reading every file. The `--trust-verified-within` rows "
             "follow a `verify --deep` of the previous version: chunks it proved are trusted (one LIST for their "
             "sizes) instead of read back; restic's and borg's cells in those rows are their plain backup.",
             "Each run: fresh repositories; inputs read once before (warm page cache); every restore compared "
             "byte for byte with its source; a restored small-file tree is then kept until the last run has "
             "ended (no restore follows the deletion of a restored tree: this ext4 makes inode allocation slow "
             "for minutes after one), a restored big file is deleted at once (one inode; disk space)."]
    if failures:
        notes += [f"FAILED: {f}" for f in failures]
    text = markdown(results, args, notes)
    log(text)
    put_section(args.markdown, text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
