"""Scaling benchmark: archive, deep verify and restore per executor and worker count.

    PYTHONPATH=. .venv/bin/python bench/scaling.py [--gib 1] [--shards 8] [--workers 1,2,4]
                                                  [--executors local,ray] [--no-write]

On a generated set of bf16 safetensors shards (N(0, 0.02) values, `--shards` files making
`--gib` GiB together), for each executor and each worker count W (1, 2, 4, ... up to
os.cpu_count() by default): archive into a fresh local store, `verify --deep`, restore into
a fresh directory. Each measurement runs in a fresh process (bench/measure.py's wrapper),
so its CPU seconds (user + sys of the process and every descendant it reaped; for Ray, the
local Ray started with num_cpus=W, plus its worker processes, read from /proc just before
the shutdown since nobody reaps them) are its own, whatever else the machine runs. For Ray, a run that only starts and stops Ray is
measured too: its CPU and wall are Ray's fixed overhead per command, reported separately.

local W: W files at once, W + 2 chunk threads.  ray W: a local Ray with W CPUs, one task
per file (task_cpus 1, so each task has 3 chunk threads), 2W tasks in flight.
Writes the table into bench/RESULTS.md (its own section, replaced on each run; `make bench`
keeps it, since bench/run.py keeps everything from its hand-kept section to the end)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

GiB = 1 << 30
HEADING = "## Scaling: executors and workers (bench/scaling.py)"
OPS = ("archive", "verify", "restore")


def log(msg: str = "") -> None:
    print(msg, flush=True)


def make_input(work: Path, gib: float, shards: int) -> Path:
    """`shards` bf16 safetensors files of N(0, 0.02) values, `gib` GiB in all (reused)."""
    from inputs import TensorSpec, _fresh, _mark, normal_bf16_pieces, write_safetensors
    params = {"gib": gib, "shards": shards, "v": 1}
    d = work / "inputs" / f"scaling-{gib:g}g-{shards}"
    if _fresh(d, params):
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    dim = 2048
    per_tensor = dim * dim * 2
    tensors = max(1, int(gib * GiB) // shards // per_tensor)
    for s in range(shards):
        specs = [TensorSpec(f"layers.{s}.{k}.weight", "BF16", [dim, dim],
                            lambda s=s, k=k: normal_bf16_pieces(dim * dim, 0.02, seed=1000 * s + k))
                 for k in range(tensors)]
        write_safetensors(d / f"model-{s + 1:05d}-of-{shards:05d}.safetensors", specs, {"format": "pt"})
    _mark(d, params)
    return d


# -- one measured command, in its own process ------------------------------------------------

def one(executor: str, op: str, workers: int, store: str, src: str, out: str, ref_file: str) -> None:
    """Run one operation with `workers` workers on `executor` (called in a fresh process)."""
    from archiver import api, checker, executors, pipeline, restorer
    ex: Any
    if executor == "ray":
        import ray
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        ex = executors.make("ray", task_cpus=1, max_inflight=2 * workers)
    else:
        ex = executors.LocalExecutor(max_inflight=workers)
    threads = workers + 2
    try:
        if op == "ray-only":
            return
        with api.open_repository(store, str(Path(store).parent / "catalog.sqlite"), create=op == "archive") as repo:
            if op == "archive":
                res = pipeline.archive(repo, [src], name="scaling", executor=ex, workers=threads)
                Path(ref_file).write_text(res.id)
            elif op == "verify":
                rep = checker.verify(repo, [Path(ref_file).read_text()], deep=True, workers=threads,
                                     executor=ex if ex.distributed else None)
                if not rep.ok:
                    raise SystemExit(f"verify found problems: {[p.line() for p in rep.problems]}")
            else:
                res = restorer.restore(repo, Path(ref_file).read_text(), out, workers=threads,
                                       executor=ex if ex.distributed else None)
                if not res.ok:
                    raise SystemExit("restore failed")
    finally:
        ex.close()
        if executor == "ray":
            import ray
            extra = grandchildren_cpu(os.getpid())
            ray.shutdown()
            Path(ref_file + ".raycpu").write_text(str(extra))


def grandchildren_cpu(root: int) -> float:
    """CPU seconds (user + sys) used so far by the processes below `root`'s direct children
    (Ray's workers: their parent, the raylet, is killed at shutdown without reaping them, so
    their time never reaches this process's rusage). Direct children (raylet, GCS) are
    reaped by Ray's shutdown and counted by the rusage already."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d.name)] = int(fields[1])
        cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / tick
    children: dict[int, list[int]] = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    total = 0.0
    todo = [g for c in children.get(root, []) for g in children.get(c, [])]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def measure(executor: str, op: str, workers: int, tmp: Path, src: Path) -> dict[str, Any]:
    from measure import run
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", executor, op, str(workers), str(tmp / "store"),
           str(src), str(tmp / "out"), str(tmp / "ref")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), ARCHIVER_HOME=str(tmp / "home"))
    m = run(cmd, env=env)
    extra = tmp / "ref.raycpu"
    ray_cpu = float(extra.read_text()) if extra.exists() else 0.0
    extra.unlink(missing_ok=True)
    return {"wall": m.wall, "cpu": m.cpu + ray_cpu, "ray_workers_cpu": ray_cpu, "rss_mib": m.rss_mib,
            "other_cpu": m.other_cpu}


def default_workers() -> list[int]:
    out, w = [], 1
    cores = os.cpu_count() or 1
    while w < cores:
        out.append(w)
        w *= 2
    return out + [cores]


def main() -> None:
    from measure import compile_bytecode
    compile_bytecode()  # as an install does: no command below compiles archiver again
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (default 1,2,4,... cores)")
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    ap.add_argument("--from-json", action="store_true", help="rewrite the table from bench/.work/scaling.json")
    ap.add_argument("--one", nargs=7, metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        ex, op, w, store, src, out, ref = args.one
        one(ex, op, int(w), store, src, out, ref)
        return
    work = HERE / ".work"
    if args.from_json:
        doc = json.loads((work / "scaling.json").read_text())
        lines = table(doc["rows"], doc["bytes"], Path(doc["src"]), doc.get("load"))
        log("\n".join(lines))
        if not args.no_write:
            write_section(HERE / "RESULTS.md", lines)
        return
    src = make_input(work, args.gib, args.shards)
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    workers = [int(x) for x in args.workers.split(",")] if args.workers else default_workers()
    rows: list[dict[str, Any]] = []
    for executor in args.executors.split(","):
        for w in workers:
            (work / "tmp").mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="scaling-", dir=work / "tmp") as td:
                tmp = Path(td)
                row: dict[str, Any] = {"executor": executor, "workers": w}
                if executor == "ray":
                    row["ray-only"] = measure(executor, "ray-only", w, tmp, src)
                for op in OPS:
                    row[op] = measure(executor, op, w, tmp, src)
                    log(f"{executor:5s} W={w} {op:8s} wall {row[op]['wall']:6.2f} s  cpu {row[op]['cpu']:6.2f} s")
                rows.append(row)
    lines = table(rows, size, src)
    log("\n".join(lines))
    (work / "scaling.json").write_text(json.dumps({"bytes": size, "src": str(src), "load": os.getloadavg()[0],
                                                             "rows": rows}, indent=2))
    if not args.no_write:
        write_section(HERE / "RESULTS.md", lines)


def table(rows: list[dict[str, Any]], size: int, src: Path, load: float | None = None) -> list[str]:
    g = size / GiB
    cores = os.cpu_count()
    lines = [HEADING, "",
             f"`bench/scaling.py` on {time.strftime('%Y-%m-%d')}: {len(list(src.glob('*.safetensors')))} bf16 "
             f"safetensors shards, {g:.2f} GiB in all, on a {cores}-core machine shared with other work. "
             f"MB/s = input bytes / wall; CPU-s/GiB = user + sys of the command's process tree (for Ray, "
             f"including starting and stopping a local Ray with W CPUs; `ray start/stop` is that part alone). "
             f"One run each, so expect a few % of noise; on a many-core server the same command gives the "
             f"scaling curve.", "",
             f"Load average at the end of the runs: {os.getloadavg()[0] if load is None else load:.1f}. For Ray, the last column is the per-GiB CPU "
             f"without Ray's own start/stop (archive, verify, restore).", "",
             "| executor | W | archive MB/s | archive CPU-s/GiB | verify --deep MB/s | verify CPU-s/GiB "
             "| restore MB/s | restore CPU-s/GiB | ray start/stop wall s, CPU-s | CPU-s/GiB less start/stop |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["executor"], str(r["workers"])]
        for op in OPS:
            m = r[op]
            cells += [f"{size / m['wall'] / 1e6:.0f}", f"{m['cpu'] / g:.2f}"]
        ro = r.get("ray-only")
        cells.append(f"{ro['wall']:.1f}, {ro['cpu']:.1f}" if ro else "-")
        cells.append(" / ".join(f"{(r[op]['cpu'] - ro['cpu']) / g:.2f}" for op in OPS) if ro else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def write_section(path: Path, lines: list[str]) -> None:
    """Replace this benchmark's section of RESULTS.md (up to the next '## ' heading), or append it."""
    old = path.read_text() if path.exists() else ""
    at = old.find(HEADING)
    if at < 0:
        new = old.rstrip("\n") + "\n\n" + "\n".join(lines)
    else:
        nxt = old.find("\n## ", at + len(HEADING))
        new = old[:at] + "\n".join(lines) + ("\n" + old[nxt + 1:] if nxt >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
