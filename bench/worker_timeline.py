"""Where does the worker phase of `archive --processes N` spend its wall: one CLI run, timed
in the driver and in every worker process (issue 15 item 6).

    PYTHONPATH=. python bench/worker_timeline.py [--bin-ms 100] -- --store S --catalog S.db archive SRC --name t --processes 2

Runs `archiver.cli.main()` in this process with this module added to the fork server's
preload (`procfiles.PRELOAD`), so every worker forks with the probes below installed:
the worker's start (`workerprocs._init_worker`), each task (`procfiles.run_job`: wall and
process CPU, its files and runs, and the thread-seconds inside it spent opening and
reading files, hashing and addressing, saving (encode, pack append), writing packs (a
pack's put with its fsyncs, `Repository._write_pack`) and the end-of-task wait for the
last packs (`task_packs`)), and the pickled size and pickling time of its result (pickled
once more here, after the task's end is stamped). The driver stamps the scan, the pool's
start and submit, each result taken (`fanout._taker`) and archive_files' end. Times are
CLOCK_MONOTONIC, shared by all processes on Linux. Prints per worker its tasks in order
with the gaps between them, then per `--bin-ms` bin who is inside a task (a digit per
worker: tasks running; '.' idle) and whether the driver is taking a result ('T')."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import threading
import time
from typing import Any

_OUT = "ARCHIVER_WORKER_PROBE_DIR"  # where each process writes its records (bench only)
_LOCAL = threading.local()


def _add(what: str, dt: float) -> None:
    acc = getattr(_LOCAL, "acc", None)
    if acc is not None:
        with acc["lock"]:
            acc[what] = acc.get(what, 0.0) + dt


def _timed(obj: Any, name: str, what: str) -> None:
    fn = getattr(obj, name)

    def wrapped(*a: Any, **k: Any) -> Any:
        t = time.monotonic()
        try:
            return fn(*a, **k)
        finally:
            _add(what, time.monotonic() - t)
    setattr(obj, name, wrapped)


_TASK: dict[str, Any] = {}


def _install_worker_probes() -> None:
    """In the fork server (imported with the preload): every worker forks with these."""
    from archiver import pipeline, procfiles, workerprocs
    from archiver.repository import Repository
    if getattr(procfiles, "_probed", False):  # the server imports this module twice (also as __mp_main__)
        return
    procfiles._probed = True  # type: ignore[attr-defined]
    init = workerprocs._init_worker

    def init_worker(*a: Any) -> None:
        init(*a)
        _record({"kind": "worker", "pid": os.getpid(), "t": time.monotonic()})
    workerprocs._init_worker = init_worker
    run_job = procfiles.run_job

    def timed_job(job: Any, **kw: Any) -> Any:
        acc: dict[str, Any] = {"lock": threading.Lock()}
        _TASK["acc"] = acc
        t0, c0 = time.monotonic(), time.process_time()
        out = run_job(job, **kw)
        t1, c1 = time.monotonic(), time.process_time()
        blob = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        t2 = time.monotonic()
        acc.pop("lock")
        _record({"kind": "task", "pid": os.getpid(), "t0": t0, "t1": t1, "cpu": c1 - c0,
                 "job_bytes": len(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)),
                 "files": sum(len(r) for r in job.runs), "runs": len(job.runs),
                 "bytes": sum(s.size for r in job.runs for s in r), "result_bytes": len(blob),
                 "pickle_s": t2 - t1, "first": str(job.runs[0][0].path), **acc})
        return out
    procfiles.run_job = timed_job
    from concurrent.futures import process as cf_process
    sendback = cf_process._sendback_result

    def timed_sendback(*a: Any, **k: Any) -> Any:
        t = time.monotonic()
        try:
            return sendback(*a, **k)
        finally:
            _record({"kind": "sendback", "pid": os.getpid(), "t0": t, "t1": time.monotonic()})
    cf_process._sendback_result = timed_sendback

    # thread-local accumulators: the task's run threads and pack writers are threads of this worker
    def bind(fn: Any) -> Any:
        def bound(*a: Any, **k: Any) -> Any:
            _LOCAL.acc = _TASK.get("acc")
            return fn(*a, **k)
        return bound
    from archiver import fanout
    fanout.LocalArchiveBatch.__call__ = bind(fanout.LocalArchiveBatch.__call__)
    procfiles_task_packs = Repository.task_packs

    def task_packs(self: Any) -> Any:
        _LOCAL.acc = _TASK.get("acc")
        t = time.monotonic()
        try:
            return procfiles_task_packs(self)
        finally:
            _add("end_wait", time.monotonic() - t)
    Repository.task_packs = task_packs
    _timed(pipeline, "open_settled", "open")
    _timed(pipeline, "read_small", "read")
    _timed(pipeline, "address_small", "blake3")
    _timed(pipeline, "save_small", "save")
    _timed(Repository, "chunk_hints", "hints")
    _timed(Repository, "_write_pack", "pack_write")


def _record(row: dict[str, Any]) -> None:
    d = os.environ.get(_OUT)
    if not d:
        return
    with open(os.path.join(d, f"{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


if os.environ.get(_OUT) and __name__ != "__main__":
    _install_worker_probes()


def _driver_probes() -> None:
    from archiver import fanout, pipeline, procfiles
    procfiles.PRELOAD.append("bench.worker_timeline")
    scan = pipeline.scan

    def timed_scan(*a: Any, **k: Any) -> Any:
        t = time.monotonic()
        try:
            return scan(*a, **k)
        finally:
            _record({"kind": "driver", "what": "scan", "t0": t, "t1": time.monotonic()})
    pipeline.scan = timed_scan
    init = procfiles.SmallFilePool.__init__

    def pool_init(self: Any, processes: int, jobs: list[Any], *a: Any, **k: Any) -> None:
        t = time.monotonic()
        init(self, processes, jobs, *a, **k)
        _record({"kind": "driver", "what": f"pool start + submit {len(jobs)} tasks", "t0": t, "t1": time.monotonic()})
    procfiles.SmallFilePool.__init__ = pool_init
    taker = fanout._taker

    def timed_taker(*a: Any, **k: Any) -> Any:
        take = taker(*a, **k)

        def timed_take(done: Any) -> None:
            t, c = time.monotonic(), time.thread_time()
            take(done)
            _record({"kind": "driver", "what": f"take {len(done.files)} files", "t0": t, "t1": time.monotonic(),
                     "thread_cpu": time.thread_time() - c})
        return timed_take
    fanout._taker = timed_taker
    archive_files = fanout.archive_files

    def timed_archive_files(*a: Any, **k: Any) -> Any:
        t = time.monotonic()
        try:
            return archive_files(*a, **k)
        finally:
            _record({"kind": "driver", "what": "archive_files", "t0": t, "t1": time.monotonic()})
    fanout.archive_files = timed_archive_files


def _report(d: str, bin_ms: float) -> None:
    rows = []
    for name in os.listdir(d):
        with open(os.path.join(d, name)) as f:
            rows += [json.loads(line) for line in f]
    drv = [r for r in rows if r["kind"] == "driver"]
    af = next((r for r in drv if r["what"] == "archive_files"), None)
    base = af["t0"] if af else min(r.get("t0", r.get("t")) for r in rows)
    tasks = sorted((r for r in rows if r["kind"] == "task"), key=lambda r: (r["pid"], r["t0"]))
    starts = {r["pid"]: r["t"] for r in rows if r["kind"] == "worker"}
    print("times in s from archive_files' start", file=sys.stderr)
    for r in sorted(drv, key=lambda r: r["t0"]):
        extra = f" thread CPU {r['thread_cpu']:.3f}" if "thread_cpu" in r else ""
        print(f"driver  {r['t0'] - base:7.3f} .. {r['t1'] - base:7.3f} ({r['t1'] - r['t0']:.3f}) {r['what']}{extra}",
              file=sys.stderr)
    keys = ["open", "read", "blake3", "save", "hints", "pack_write", "end_wait"]
    total: dict[str, float] = {}
    for pid in sorted({r["pid"] for r in tasks}):
        prev = starts.get(pid)
        print(f"worker {pid}: started {prev - base if prev else float('nan'):.3f}", file=sys.stderr)
        for r in (r for r in tasks if r["pid"] == pid):
            gap = r["t0"] - prev if prev is not None else float("nan")
            parts = " ".join(f"{k} {r.get(k, 0):.3f}" for k in keys)
            print(f"  {r['t0'] - base:7.3f} .. {r['t1'] - base:7.3f} wall {r['t1'] - r['t0']:.3f} cpu {r['cpu']:.3f} "
                  f"gap {gap:.3f} files {r['files']} runs {r['runs']} KiB {r['bytes'] >> 10} | thread-s: {parts} | "
                  f"result {r['result_bytes'] >> 10} KiB pickled in {r['pickle_s']:.3f} job {r['job_bytes'] >> 10} KiB", file=sys.stderr)
            prev = r["t1"]
            for k in keys + ["cpu"]:
                total[k] = total.get(k, 0.0) + r.get(k, 0.0)
        sends = sorted((r for r in rows if r["kind"] == "sendback" and r["pid"] == pid), key=lambda r: r["t0"])
        sb = [r["t1"] - r["t0"] for r in sends]
        mine = [r for r in tasks if r["pid"] == pid]
        # from a result sent to the next task's start: the next job's wait, receipt and unpickling
        gets = [min((t["t0"] for t in mine if t["t0"] >= r["t1"]), default=None) for r in sends]
        waits = [g - r["t1"] for g, r in zip(gets, sends) if g is not None]
        print(f"  last task ends {prev - base:.3f}; result sends {' '.join(f'{x:.3f}' for x in sb)}; "
              f"next job got in {' '.join(f'{x:.3f}' for x in waits)}", file=sys.stderr)
    print("totals: " + " ".join(f"{k} {v:.3f}" for k, v in total.items()), file=sys.stderr)
    end = af["t1"] if af else max(r["t1"] for r in tasks)
    b = bin_ms / 1000
    pids = sorted({r["pid"] for r in tasks})
    for pid in pids:
        line = ""
        t = base
        while t < end:
            busy = sum(min(r["t1"], t + b) - max(r["t0"], t) for r in tasks
                       if r["pid"] == pid and r["t0"] < t + b and r["t1"] > t)
            line += str(min(9, int(round(busy / b * 9)))) if busy > 0 else "."
            t += b
        print(f"w{pid:<7} {line}", file=sys.stderr)
    line = ""
    t = base
    takes = [r for r in drv if r["what"].startswith("take")]
    while t < end:
        line += "T" if any(r["t0"] < t + b and r["t1"] > t for r in takes) else "."
        t += b
    print(f"{'taker':8} {line}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-ms", type=float, default=100.0)
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    with tempfile.TemporaryDirectory(prefix="worker-timeline-") as d:
        os.environ[_OUT] = d  # the fork server and its workers inherit it
        _driver_probes()
        from archiver import cli
        code = 0
        try:
            sys.argv = ["archiver", *args]
            cli.main(end_process=False)  # returns: the report follows
        except SystemExit as e:
            code = int(e.code or 0)
        _report(d, a.bin_ms)
    return code


if __name__ == "__main__":
    sys.exit(main())
