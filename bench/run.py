"""`make bench`: archiver vs borg, restic, zstd and b3sum on the same inputs, in one run.

    .venv/bin/python bench/run.py [--runs N] [--quick] [--no-8g] [--mem-runs N] [--only SECTION]

Prints one table per input (wall time median of N runs, MB/s, peak RSS, stored bytes,
ours-vs-baseline ratios and the issue's targets with PASS/FAIL), a memory-scaling table
and a target summary; writes bench/.work/results.json and (full runs) bench/RESULTS.md,
keeping that file's hand-written last section (design measurements).
Inputs are generated once under bench/.work/inputs (see bench/inputs.py); every run uses
fresh stores/repositories under bench/.work/tmp, deleted afterwards. Exit status 1 if
any command failed or any restore was not byte-identical to its source."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

TOOL_PACKAGES = {"borg": "borgbackup", "restic": "restic", "zstd": "zstd", "b3sum": "b3sum"}
GiB = 1 << 30
MiB = 1 << 20
RSS_LIMIT_MIB = 256
RSS_RATIO_LIMIT = 1.1
TRUSTING = "archiver --trust-verified-within"  # the v2 row that trusts recently verified chunks


def log(msg: str = "") -> None:
    print(msg, flush=True)


# -- setup ---------------------------------------------------------------------------------

def ensure_tools(notes: list[str]) -> dict[str, bool]:
    missing = [t for t in TOOL_PACKAGES if shutil.which(t) is None]
    if missing:
        pkgs = [TOOL_PACKAGES[t] for t in missing]
        if os.geteuid() == 0 and shutil.which("apt-get"):
            cmd = ["apt-get", "install", "-y", "-q", *pkgs]
            log(f"baseline tools missing: {', '.join(missing)}; running: {' '.join(cmd)}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            if subprocess.run(cmd, env=env).returncode != 0:
                log("apt-get install failed; running apt-get update and trying once more")
                subprocess.run(["apt-get", "update", "-q"], env=env)
                subprocess.run(cmd, env=env)
        else:
            log(f"baseline tools missing: {', '.join(missing)} (not root: not installing; "
                f"apt-get install {' '.join(pkgs)})")
    have = {t: shutil.which(t) is not None for t in TOOL_PACKAGES}
    for t, ok in have.items():
        if not ok:
            msg = f"NOTE: `{t}` is not available (Debian package {TOOL_PACKAGES[t]}); its rows are skipped"
            log(msg)
            notes.append(msg)
    return have


def machine_info() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    fs = subprocess.run(["df", "-T", str(HERE)], capture_output=True, text=True).stdout.splitlines()[-1:]
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "filesystem": fs[0] if fs else "?"}


def tool_versions(have: dict[str, bool]) -> dict[str, str]:
    from tools import ARCHIVER, version
    import numpy
    out = {"archiver": f"{version([str(ARCHIVER), '--version'])} (source fingerprint {source_fingerprint()})",
           "numpy": numpy.__version__}
    cmds = {"borg": ["borg", "--version"], "restic": ["restic", "version"], "zstd": ["zstd", "--version"],
            "b3sum": ["b3sum", "--version"]}
    for t, c in cmds.items():
        out[t] = version(c) if have.get(t) else "unavailable"
    return out


def source_fingerprint() -> str:
    """BLAKE3 over the archiver/ and manifests/ sources (path + content), so a result names
    the code it measured even between commits."""
    import blake3
    h = blake3.blake3()
    for pkg in ("archiver", "manifests"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def restic_supports_v2() -> bool:
    p = subprocess.run(["restic", "init", "--help"], capture_output=True, text=True)
    return "--repository-version" in p.stdout


# -- correctness ---------------------------------------------------------------------------

FAILURES: list[str] = []


def fail(msg: str) -> None:
    FAILURES.append(msg)
    log("!" * 78)
    log(f"!!! {msg}")
    log("!" * 78)


def hash_tree(root: Path) -> dict[str, str]:
    import blake3
    from inputs import files_under
    out = {}
    for p in files_under(root):
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        h.update_mmap(p) if p.stat().st_size else None
        out[str(p.relative_to(root))] = h.hexdigest()
    return out


def check_restore(ref: dict[str, str], restored: Path, who: str) -> None:
    if not restored.is_dir():
        fail(f"RESTORE FAILED: {who} did not restore {restored}")
        return
    got = hash_tree(restored)
    if got != ref:
        missing = sorted(set(ref) - set(got))
        extra = sorted(set(got) - set(ref))
        differ = sorted(k for k in set(ref) & set(got) if ref[k] != got[k])
        fail(f"RESTORE MISMATCH ({who}, {restored}): missing {missing[:5]}, extra {extra[:5]}, "
             f"different content {differ[:5]}")


# -- running -------------------------------------------------------------------------------

def record(raw: dict, op: str, tool: str, m, **extra: Any) -> None:
    d = m.to_dict()
    d["wall_sync"] = round(m.wall + m.sync, 4)
    d.update(extra)
    raw[f"{op}|{tool}"].append(d)
    stored = extra.get("stored")
    log(f"    {op:8} {tool:34} {m.wall:8.2f} s (+sync {m.sync:5.2f})  {m.rss_mib:7.1f} MiB  cpu {m.cpu:7.2f} s  "
        f"others' cpu {m.other_cpu:5.2f} s"
        + (f"  stored {stored:,}" if stored is not None else ""))


def guarded(what: str, fn: Callable[[], None]) -> None:
    from measure import CommandFailed
    try:
        fn()
    except CommandFailed as e:
        fail(f"{what}: {e}")


def compare_input(label: str, src: Path, runs: int, have: dict[str, bool], tmproot: Path,
                  v2: Path | None, restic_v2: bool) -> dict[str, Any]:
    from inputs import files_under, tree_bytes
    from measure import warm
    from tools import TRUST_WINDOW, Borg, Ours, Restic, b3sum, zstd_compress

    files = files_under(src)
    nbytes = tree_bytes(src)
    log(f"\n== {label}: {src} ({len(files)} files, {nbytes:,} bytes); warming the page cache (cat > /dev/null)")
    warm(files + (files_under(v2) if v2 else []))
    ref = hash_tree(src)
    v2_bytes = tree_bytes(v2) if v2 else None
    raw: dict[str, list] = defaultdict(list)
    for r in range(runs):
        log(f"  run {r + 1}/{runs}")
        tmp = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=tmproot))
        try:
            def ours() -> None:
                o = Ours(tmp)
                m = o.archive(src)
                record(raw, "archive", "archiver", m, stored=o.stored())
                record(raw, "verify", "archiver", o.verify())
                dest = tmp / "restore-ours"
                record(raw, "restore", "archiver", o.restore(dest))
                check_restore(ref, dest / src.name, "archiver restore")
                shutil.rmtree(dest)
                if v2 is not None and r == 0:
                    before = o.stored()
                    snap = o.snapshot()  # v1 and its verify records, for the second v2 below
                    m = o.archive(v2, "v2")
                    record(raw, "v2", "archiver", m, stored=o.stored() - before)
                    o.rollback(snap)
                    m = o.archive(v2, "v2", "--trust-verified-within", TRUST_WINDOW)
                    record(raw, "v2", TRUSTING, m, stored=o.stored() - before)
                shutil.rmtree(o.home)
            blocks: list[Callable[[], None]] = [lambda: guarded(f"{label}: archiver", ours)]

            if have["borg"]:
                def borg() -> None:
                    b = Borg(tmp)
                    record(raw, "archive", "borg create -C zstd,3", b.archive(src), stored=b.stored())
                    record(raw, "verify", "borg check --verify-data", b.verify())
                    dest = tmp / "restore-borg"
                    record(raw, "restore", "borg extract", b.restore(dest))
                    check_restore(ref, dest / src.name, "borg extract")
                    shutil.rmtree(dest)
                    if v2 is not None and r == 0:
                        before = b.stored()
                        record(raw, "v2", "borg create -C zstd,3", b.archive(v2, "v2"), stored=b.stored() - before)
                    shutil.rmtree(b.repo)
                blocks.append(lambda: guarded(f"{label}: borg", borg))

            if have["restic"]:
                def restic() -> None:
                    rs = Restic(tmp, v2=restic_v2)
                    record(raw, "archive", rs.backup_label, rs.archive(src), stored=rs.stored())
                    record(raw, "verify", "restic check --read-data", rs.verify())
                    dest = tmp / "restore-restic"
                    record(raw, "restore", "restic restore", rs.restore(dest))
                    check_restore(ref, dest / src.name, "restic restore")
                    shutil.rmtree(dest)
                    record(raw, "restore", "restic restore --verify", rs.restore(dest, verify=True))
                    check_restore(ref, dest / src.name, "restic restore --verify")
                    shutil.rmtree(dest)
                    if v2 is not None and r == 0:
                        before = rs.stored()
                        record(raw, "v2", rs.backup_label, rs.archive(v2, "v2"), stored=rs.stored() - before)
                    shutil.rmtree(rs.repo)
                blocks.append(lambda: guarded(f"{label}: restic", restic))

            if have["zstd"]:
                def z() -> None:
                    for t in (1, 2):
                        m = zstd_compress(src, tmp / "zstd-out", t)
                        record(raw, "archive", f"zstd -3 -T{t}", m, stored=m.extra["stored"])
                blocks.append(lambda: guarded(f"{label}: zstd", z))
            if have["b3sum"]:
                blocks.append(lambda: guarded(f"{label}: b3sum",
                                              lambda: record(raw, "archive", "b3sum (hash only)", b3sum(src, tmp))))
            k = r % len(blocks)  # rotate the tool order run by run, so no tool always goes first
            for block in blocks[k:] + blocks[:k]:
                block()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"label": label, "path": str(src), "files": len(files), "bytes": nbytes, "runs": runs,
            "v2_path": str(v2) if v2 else None, "v2_bytes": v2_bytes, "raw": dict(raw)}


def mem_scaling(mem: dict[str, Path], runs: int, tmproot: Path) -> dict[str, Any]:
    from inputs import files_under, tree_bytes
    from measure import warm
    from tools import Ours

    out: dict[str, Any] = {}
    for label, src in mem.items():
        files = files_under(src)
        nbytes = tree_bytes(src)
        log(f"\n== memory scaling {label}: {src} ({nbytes:,} bytes); warming the page cache")
        warm(files)
        ref = hash_tree(src)
        raw: dict[str, list] = defaultdict(list)
        for r in range(runs):
            log(f"  run {r + 1}/{runs}")
            tmp = Path(tempfile.mkdtemp(prefix=f"mem-{label}-", dir=tmproot))
            try:
                def ours() -> None:
                    o = Ours(tmp)
                    record(raw, "archive", "archiver", o.archive(src), stored=o.stored())
                    record(raw, "verify", "archiver", o.verify())
                    dest = tmp / "restore"
                    record(raw, "restore", "archiver", o.restore(dest))
                    check_restore(ref, dest / src.name, f"archiver restore (mem {label})")
                guarded(f"mem {label}: archiver", ours)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        out[label] = {"path": str(src), "bytes": nbytes, "runs": runs, "raw": dict(raw)}
    return out


# -- aggregation, targets ------------------------------------------------------------------

def agg(raw: dict[str, list], key: str, field: str) -> float | None:
    from measure import median
    vals = [d.get(field) for d in raw.get(key, []) if d.get("rc") == 0]
    return median([v for v in vals if v is not None])


def speed(ours: float | None, other: float | None) -> float | None:
    return other / ours if ours and other else None


def speed_text(ours: dict | None, other: dict) -> str:
    """'speed Ax (+sync Bx)': this tool's time / ours, plain and with the sync afterwards."""
    if not ours:
        return "speed ?"
    sp = speed(ours.get("wall"), other.get("wall"))
    sp2 = speed(ours.get("wall_sync"), other.get("wall_sync"))
    text = f"speed {sp:.2f}x" if sp else "speed ?"
    return text + (f" (+sync {sp2:.2f}x)" if sp2 else "")


def status(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def build_rows(res: dict[str, Any], dtype: str | None, targets: list[dict]) -> list[dict[str, Any]]:
    raw = res["raw"]
    n = res["bytes"]
    label = res["label"]
    rows: list[dict[str, Any]] = []

    def row(op: str, tool: str, **kw: Any) -> dict[str, Any] | None:
        key = f"{op}|{tool}"
        if key not in raw:
            return None
        wall = agg(raw, key, "wall")
        r = {"op": op, "tool": tool, "wall": wall, "mbps": (n / wall / 1e6) if wall else None,
             "rss": agg(raw, key, "rss_mib"), "cpu": agg(raw, key, "cpu_s"), "stored": None,
             "wall_sync": agg(raw, key, "wall_sync"), "vs": "", "target": "", "status": ""}
        st = agg(raw, key, "stored")
        if st is not None:
            r["stored"] = int(st)
        r.update(kw)
        rows.append(r)
        return r

    def target(r: dict | None, name: str, value: float | None, limit: float, higher_is_better: bool,
               text: str) -> None:
        ok = None if value is None else (value >= limit if higher_is_better else value <= limit)
        if r is not None:
            r["target"] = text
            r["status"] = status(ok)
        targets.append({"input": label, "target": name, "value": value, "limit": limit,
                        "higher_is_better": higher_is_better, "status": status(ok)})

    # archive
    o = row("archive", "archiver")
    ow = o["wall"] if o else None
    ostored = o["stored"] if o else None
    if o and ostored:
        o["stored_note"] = f"{ostored / n:.3f} of input"
    archive_targets = {"borg create -C zstd,3": 2.5, "restic backup --compression auto": 2.0}
    for tool in ("borg create -C zstd,3", "restic backup --compression auto", "restic backup",
                 "zstd -3 -T1", "zstd -3 -T2", "b3sum (hash only)"):
        r = row("archive", tool)
        if r is None:
            continue
        sp = speed(ow, r["wall"])
        parts = [speed_text(o, r)]
        size_ratio = (ostored / r["stored"]) if (ostored and r.get("stored")) else None
        if size_ratio is not None:
            parts.append(f"size {size_ratio:.3f}x")
            r["stored_note"] = f"{r['stored'] / n:.3f} of input"
        r["vs"] = ", ".join(parts)
        if tool in archive_targets:
            lim = archive_targets[tool]
            target(r, f"archive >= {lim}x faster than {tool}", sp, lim, True, f"speed >= {lim}x")
        if tool == "zstd -3 -T1" and dtype:
            lim = 0.88 if dtype == "bf16" else 0.93
            target(r, f"stored size ({dtype}) <= {lim}x zstd -3", size_ratio, lim, False, f"size <= {lim}x")
    # verify
    o = row("verify", "archiver", vs="(--deep)")
    for tool in ("borg check --verify-data", "restic check --read-data"):
        r = row("verify", tool)
        if r is not None:
            sp = speed(o["wall"] if o else None, r["wall"])
            r["vs"] = speed_text(o, r)
            if tool.startswith("restic"):
                r["target"], r["status"] = "report", "-"
                targets.append({"input": label, "target": "deep verify vs restic check --read-data (report)",
                                "value": sp, "limit": None, "higher_is_better": True, "status": "-"})
    # restore
    o = row("restore", "archiver", vs="(verifies)")
    for tool in ("borg extract", "restic restore", "restic restore --verify"):
        r = row("restore", tool)
        if r is None:
            continue
        sp = speed(o["wall"] if o else None, r["wall"])
        r["vs"] = speed_text(o, r)
        if tool == "restic restore":
            target(r, "restore (verified) >= 1.5x faster than restic restore", sp, 1.5, True, "speed >= 1.5x")
        elif tool == "borg extract":
            targets.append({"input": label, "target": "restore vs borg extract (report)", "value": sp,
                            "limit": None, "higher_is_better": True, "status": "-"})
    # dedup (v2 into the same repository)
    if res.get("v2_bytes"):
        v2b = res["v2_bytes"]
        o = row("v2", "archiver")
        if o is not None:
            o["stored_note"] = f"{o['stored'] / v2b:.1%} of v2"
            js = agg(raw, "v2|archiver", "new_bytes_stored")
            o["vs"] = f"JSON new_bytes_stored {int(js):,}" if js is not None else ""
            target(o, "10%-changed checkpoint stores <= 15% new bytes", o["stored"] / v2b, 0.15, False,
                   "new <= 15% of v2")
        t = row("v2", TRUSTING)
        if o is not None and t is not None:
            proof = speed(t["wall"], o["wall"])  # default wall / trusting wall
            cpu = speed(t["cpu"], o["cpu"])
            t["vs"] = (f"default proof takes {proof:.2f}x the wall time" if proof else "") + \
                (f", {cpu:.2f}x the CPU" if cpu else "")
            targets.append({"input": label, "target": "re-archive of the 10%-changed v2: default (every stored "
                            "chunk read back and proved) / --trust-verified-within, wall time (report)",
                            "value": proof, "limit": None, "higher_is_better": False, "status": "-"})
        for tool in ("borg create -C zstd,3", "restic backup --compression auto", "restic backup"):
            r = row("v2", tool)
            if r is not None and r.get("stored") is not None:
                r["stored_note"] = f"{r['stored'] / v2b:.1%} of v2"
                if o is not None and r["stored"]:
                    r["vs"] = f"new bytes {o['stored'] / r['stored']:.2f}x"
    for r in rows:
        if r["op"] == "v2" and r["wall"]:
            r["mbps"] = res["v2_bytes"] / r["wall"] / 1e6
    return rows


def build_mem_rows(mem: dict[str, Any], targets: list[dict]) -> list[dict[str, Any]]:
    labels = list(mem)
    if not labels:
        return []
    small, large = labels[0], labels[-1]
    rows = []
    for op in ("archive", "verify", "restore"):
        key = f"{op}|archiver"
        s_rss, l_rss = agg(mem[small]["raw"], key, "rss_mib"), agg(mem[large]["raw"], key, "rss_mib")
        l_wall = agg(mem[large]["raw"], key, "wall")
        r = {"op": {"verify": "verify --deep"}.get(op, op), "small_wall": agg(mem[small]["raw"], key, "wall"),
             "small_rss": s_rss, "large_wall": l_wall,
             "large_mbps": mem[large]["bytes"] / l_wall / 1e6 if l_wall else None, "large_rss": l_rss,
             "ratio": (l_rss / s_rss) if (s_rss and l_rss and large != small) else None}
        ok_abs = l_rss is not None and l_rss < RSS_LIMIT_MIB
        if r["ratio"] is None:
            r["target"] = f"< {RSS_LIMIT_MIB} MiB (no ratio: one size)"
            ok = ok_abs if l_rss is not None else None
        else:
            r["target"] = f"<= {RSS_RATIO_LIMIT}x and < {RSS_LIMIT_MIB} MiB"
            ok = ok_abs and r["ratio"] <= RSS_RATIO_LIMIT
        r["status"] = status(ok)
        rows.append(r)
        targets.append({"input": f"mem {small} vs {large}", "target": f"peak RSS of {r['op']}: "
                        f"{large}/{small} <= {RSS_RATIO_LIMIT}x and < {RSS_LIMIT_MIB} MiB",
                        "value": r["ratio"], "rss_large_mib": l_rss, "rss_small_mib": s_rss,
                        "limit": RSS_RATIO_LIMIT, "higher_is_better": False, "status": r["status"]})
    return rows


def target_line(t: dict[str, Any]) -> str:
    v = t.get("value")
    if v is None:
        val = "n/a"
    elif "stores" in t["target"]:
        val = f"{v:.1%}"
    else:
        val = f"{v:.3f}x"
    if t.get("rss_large_mib") is not None:
        val += f" ({t['rss_small_mib']:.1f} -> {t['rss_large_mib']:.1f} MiB)"
    return f"[{t['status']:>4}] {t['input']}: {t['target']}: {val}"


# -- output --------------------------------------------------------------------------------

def write_markdown(path: Path, doc: dict[str, Any], sections: list[tuple[str, str, list]], mem_rows: list,
                   mem_title: str) -> None:
    from report import MEM_COLUMNS, md_table, mem_cells
    from tools import COMMANDS
    m, v = doc["machine"], doc["versions"]
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` (`{' '.join(['.venv/bin/python', 'bench/run.py', *doc['argv']])}`) on "
        f"{doc['date']}; total benchmark time {doc['elapsed_s'] / 60:.1f} min.",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}, Python {m['python']}; "
        f"filesystem: `{m['filesystem']}`.",
        "",
        "Tool versions: " + "; ".join(f"{k}: `{val}`" for k, val in v.items()) + ".",
        "",
        "## How to read this",
        "",
    ]
    lines += [f"- {n}" for n in doc["notes"]]
    lines += ["", "## Targets", "", "```"] + [target_line(t) for t in doc["targets"]] + ["```", ""]
    for title, desc, rows in sections:
        lines += [f"## {title}", "", desc, "", md_table(rows), ""]
    if mem_rows:
        lines += [f"## {mem_title}", "", md_table(mem_rows, MEM_COLUMNS, mem_cells), ""]
    lines += ["## Exact commands", "", "```"]
    for tool, cmds in COMMANDS.items():
        lines += [f"# {tool}"] + cmds
    lines += ["```", ""]
    kept = kept_section(path)
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


# Hand-written last section of bench/RESULTS.md: measurements behind design choices that
# `make bench` does not repeat, so a rewrite of the file must carry it over.
KEPT_HEADING = "## Design measurements behind codec and malloc choices"


def kept_section(path: Path) -> str:
    """The hand-written section of the file about to be rewritten, from its heading to
    the end ("" if there is none)."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    at = old.find("\n" + KEPT_HEADING + "\n")
    return old[at:].lstrip("\n") if at >= 0 else ""


# -- main ----------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    """The command line, with the run counts and sections resolved from their defaults."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=None, help="runs per input (median reported); default 3, 1 with --quick")
    ap.add_argument("--llm-runs", type=int, default=None, help="runs for the 2 GiB input (default: --runs)")
    ap.add_argument("--mem-runs", type=int, default=None, help="runs per memory-scaling size (default 3, 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="smoke mode: 1 run, ~190 MiB LLM input, 128 MiB/1 GiB "
                    "memory scaling")
    ap.add_argument("--no-8g", action="store_true", help="skip the 8 GiB memory-scaling input")
    ap.add_argument("--only", choices=["minilm", "llm", "mem"], action="append",
                    help="run only these sections (repeatable)")
    ap.add_argument("--work", type=Path, default=HERE / ".work", help="inputs, temp stores, results.json")
    ap.add_argument("--markdown", type=Path, default=None,
                    help="where to write the markdown table (default bench/RESULTS.md; quick runs: "
                         "bench/.work/RESULTS-quick.md)")
    args = ap.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.llm_runs = args.llm_runs or args.runs
    args.mem_runs = args.mem_runs or (1 if args.quick else 3)
    args.sections = set(args.only or ["minilm", "llm", "mem"])
    return args


def memory_sizes(args: argparse.Namespace) -> dict[str, int]:
    """The single-file inputs of the memory-scaling section, smallest first."""
    if "mem" not in args.sections:
        return {}
    if args.quick:
        return {"128M": 128 * MiB, "1G": GiB}
    if args.no_8g:
        return {"1G": GiB}
    return {"1G": GiB, "8G": 8 * GiB}


def fresh_tmproot(work: Path) -> Path:
    """Where every run's stores and repositories go; emptied first."""
    tmproot = work / "tmp"
    shutil.rmtree(tmproot, ignore_errors=True)
    tmproot.mkdir(parents=True)
    return tmproot


def describe_machine(have: dict[str, bool]) -> tuple[dict[str, Any], dict[str, str]]:
    """Machine facts and tool versions, logged as well as returned (a busy machine is warned about)."""
    machine = machine_info()
    versions = tool_versions(have)
    log(f"machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']}; "
        f"load average {os.getloadavg()[0]:.2f}")
    if os.getloadavg()[0] > 0.5:
        log("WARNING: the machine is busy (load average > 0.5): wall times will be noisy")
    log("versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()))
    return machine, versions


def method_notes(args: argparse.Namespace, floor: float, llm_changed: dict[str, float]) -> list[str]:
    """The 'How to read this' notes that describe the method (known before anything runs)."""
    notes = [
        f"Wall time and peak RSS are the median of {args.runs} run(s) per input ({args.llm_runs} for the LLM input, "
        f"{args.mem_runs} per memory-scaling size); each run uses fresh stores/repositories in a temp directory.",
        "Peak RSS: each command runs in a fresh child of a small wrapper (bench/rsswrap.py) and is read with "
        "os.wait4 (ru_maxrss: the largest RSS of the command or any descendant it waited for). "
        f"The method's floor (what `true` reports) is {floor:.1f} MiB.",
        "The page cache cannot be dropped here: inputs are read once (cat > /dev/null) before timing, so all "
        "tools read warm inputs; stores are written to the same local disk.",
        "MB/s = input bytes / wall time (1 MB = 10^6 bytes). 'stored bytes' = sum of file sizes of the whole "
        "store/repository directory (ours: store + SQLite catalog; borg/restic: their repository; zstd: the "
        "compressed files).",
        "'ours vs this': speed = this tool's wall time / ours (> 1 means ours is faster); size = ours / this "
        "tool's stored bytes (< 1 means ours is smaller). Targets are judged on plain wall time.",
        "'+sync s' = wall time plus a `sync` run right after the command, i.e. until what it wrote is on disk. "
        "Our archiver fsyncs every chunk object and restored file before it exits; borg, restic and zstd "
        "leave much of their output dirty in the page cache, so '+sync' is the like-for-like durability "
        "comparison (a `sync` also runs, untimed, before every command so none pays for another's writeback).",
        "b3sum memory-maps its input, so its peak RSS counts the file's cached pages.",
        "restic always encrypts (RESTIC_PASSWORD=bench) and uses all cores; borg runs unencrypted (-e none), "
        "single-threaded; our archiver uses one worker thread per core plus two (4 here); zstd -3 -T1 is the size reference, -T2 shown "
        "for time. Our restore re-hashes every chunk and every whole file (BLAKE3; deep verify also re-checks SHA-256); plain restic restore does not "
        "re-read what it wrote, `restic restore --verify` does.",
        *([("The v2 rows (LLM input): v2 is archived into the same store/repository right after v1 (first "
             "run only); 'stored bytes' there is the growth of the store. v2 differs from v1 in "
             f"{llm_changed['tensors_changed']} of {llm_changed['tensors_total']} tensors "
             f"({llm_changed['tensors']:.1%} by count, {llm_changed['bytes']:.1%} of the bytes) "
             "and has a longer header (more __metadata__). Our v2 is archived twice from the same state "
             "(the store and catalog after v1 and its verify --deep, copied aside and put back): with the default, which "
             "reads back, decodes and compares every chunk the store already holds before the manifest "
             "commits, and with --trust-verified-within, which trusts chunks that verify found intact; "
             "the ratio of the two is the cost of the default proof.")] if llm_changed else []),
        "All restores (ours, borg, restic) are compared file by file (BLAKE3) with the source; a mismatch "
        "fails the benchmark.",
    ]
    if args.quick:
        notes.append("QUICK MODE: 1 run, small inputs: numbers are a smoke test, not results.")
    return notes


def run_minilm(inputs, args: argparse.Namespace, have: dict[str, bool], tmproot: Path,
               restic_v2: bool) -> dict[str, Any]:
    """The real model, as is and converted to bf16/fp16, against every baseline tool."""
    results: dict[str, Any] = {}
    for dt, d in inputs.minilm.items():
        label = f"minilm-{dt}"
        results[label] = compare_input(label, d, args.runs, have, tmproot, None, restic_v2)
        results[label]["dtype"] = dt
    return results


def run_llm(inputs, args: argparse.Namespace, have: dict[str, bool], tmproot: Path,
            restic_v2: bool) -> dict[str, Any]:
    """The generated LLM checkpoint against every baseline tool, plus its v2 for dedup."""
    if inputs.llm_v1 is None:
        return {}
    label = "llm-bf16-quick" if args.quick else "llm-bf16-2g"
    res = compare_input(label, inputs.llm_v1, args.llm_runs, have, tmproot, inputs.llm_v2, restic_v2)
    res["dtype"] = "bf16"
    res["v2_changed"] = inputs.llm_changed
    return {label: res}


INPUT_DESCRIPTIONS = {
    "minilm-fp32": "the real all-MiniLM-L6-v2 directory (model.safetensors fp32 + config/tokenizer)",
    "minilm-bf16": "all-MiniLM-L6-v2 with its F32 tensors converted to bf16 (round to nearest even)",
    "minilm-fp16": "all-MiniLM-L6-v2 with its F32 tensors converted to fp16",
}
LLM_DESCRIPTION = ("a generated llama-shaped bf16 safetensors checkpoint (N(0, per-tensor std) weights); "
                   "v2 = ~10% of tensors changed + longer header")


def input_tables(results: dict[str, Any], targets: list[dict]) -> list[tuple[str, str, list]]:
    """(title, description, rows) per input; judges the targets into `targets`."""
    table_sections: list[tuple[str, str, list]] = []
    for label, res in results.items():
        rows = build_rows(res, res.get("dtype"), targets)
        res["rows"] = rows
        what = INPUT_DESCRIPTIONS.get(label, LLM_DESCRIPTION)
        desc = f"{what}: {res['files']} files, {res['bytes']:,} bytes, median of {res['runs']} run(s)."
        table_sections.append((label, desc, rows))
    return table_sections


def memory_title(mem_res: dict[str, Any], mem_runs: int) -> str:
    return "memory scaling (archiver only, " + " vs ".join(mem_res) + f" single-file bf16 safetensors, " \
        f"{mem_runs} run(s))"


def competing_load_note(results: dict[str, Any], mem_res: dict[str, Any]) -> str | None:
    """How much CPU other processes took while the commands ran (None if nothing was measured)."""
    measured = [d for res in list(results.values()) + list(mem_res.values()) for ms in res["raw"].values()
                for d in ms if d.get("wall")]
    if not measured:
        return None
    tot_other = sum(d.get("other_cpu_s", 0.0) for d in measured)
    tot_wall = sum(d["wall"] for d in measured)
    longer = [d.get("other_cpu_s", 0.0) / d["wall"] for d in measured if d["wall"] >= 1.0]
    return (f"Competing load: other processes used {tot_other / tot_wall:.2f} CPUs on average (of "
            f"{os.cpu_count()}) while the commands ran"
            + (f", at most {max(longer):.2f} during a command of >= 1 s" if longer else "")
            + " (/proc/stat busy time minus the command's own CPU time; per command in results.json "
            "as other_cpu_s). Well above ~0.1 means something else used the machine and wall times "
            "are inflated.")


def print_report(table_sections: list[tuple[str, str, list]], mem_rows: list, mem_title: str,
                 targets: list[dict], notes: list[str]) -> None:
    from report import MEM_COLUMNS, mem_cells, text_table
    log("\n" + "=" * 100)
    for title, desc, rows in table_sections:
        log(f"\n## {title}: {desc}\n")
        log(text_table(rows))
    if mem_rows:
        log(f"\n## {mem_title}\n")
        log(text_table(mem_rows, MEM_COLUMNS, mem_cells))
    log("\n## targets\n")
    for t in targets:
        log(target_line(t))
    log("\nnotes:")
    for n in notes:
        log(f"- {n}")


def write_results(args: argparse.Namespace, work: Path, doc: dict[str, Any],
                  table_sections: list[tuple[str, str, list]], mem_rows: list, mem_title: str) -> Path:
    """results.json under the work directory, and the markdown report (whose path is returned)."""
    (work / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    md = args.markdown or (work / "RESULTS-quick.md" if args.quick else HERE / "RESULTS.md")
    write_markdown(md, doc, table_sections, mem_rows, mem_title)
    return md


def report_failures() -> int:
    """Exit status: 1 if any command failed or any restore differed from its source."""
    if not FAILURES:
        return 0
    log(f"\nFAILED: {len(FAILURES)} problem(s):")
    for f in FAILURES:
        log(f"- {f.splitlines()[0]}")
    return 1


def main() -> int:
    from measure import compile_bytecode
    compile_bytecode()  # as an install does: no command below compiles archiver again
    args = parse_args()
    started = time.monotonic()
    notes: list[str] = []

    have = ensure_tools(notes)
    from inputs import prepare
    from measure import floor_mib

    restic_v2 = have["restic"] and restic_supports_v2()
    if have["restic"] and not restic_v2:
        notes.append("this restic has no repository format v2, so no compression: `restic backup` without "
                     "--compression")
    mem_sizes = memory_sizes(args)
    work = args.work.resolve()
    tmproot = fresh_tmproot(work)
    machine, versions = describe_machine(have)
    inputs = prepare(work, args.quick, mem_sizes, log, want_llm="llm" in args.sections)
    floor = floor_mib()
    notes += method_notes(args, floor, inputs.llm_changed)

    results: dict[str, Any] = {}
    if "minilm" in args.sections:
        results.update(run_minilm(inputs, args, have, tmproot, restic_v2))
    if "llm" in args.sections:
        results.update(run_llm(inputs, args, have, tmproot, restic_v2))
    mem_res = mem_scaling(inputs.mem, args.mem_runs, tmproot) if inputs.mem else {}

    targets: list[dict] = []
    table_sections = input_tables(results, targets)
    mem_rows = build_mem_rows(mem_res, targets) if mem_res else []
    mem_title = memory_title(mem_res, args.mem_runs)
    load = competing_load_note(results, mem_res)
    if load is not None:
        notes.append(load)
    print_report(table_sections, mem_rows, mem_title, targets, notes)

    elapsed = time.monotonic() - started
    doc = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "argv": sys.argv[1:],
           "elapsed_s": round(elapsed, 1), "machine": machine, "versions": versions, "notes": notes,
           "rss_floor_mib": floor, "targets": targets, "inputs": results, "memory_scaling": mem_res,
           "memory_rows": mem_rows, "failures": FAILURES}
    md = write_results(args, work, doc, table_sections, mem_rows, mem_title)
    log(f"\nwrote {work / 'results.json'} and {md}; total {elapsed / 60:.1f} min")
    shutil.rmtree(tmproot, ignore_errors=True)
    return report_failures()


if __name__ == "__main__":
    sys.exit(main())
