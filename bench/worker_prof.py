"""CPU of the small-file worker's tasks, run in this process, split by thread, optionally under
cProfile: where a worker's per-file CPU goes (issue 15 item 6, branch sfworkcpu).

    PYTHONPATH=. python bench/worker_prof.py TREE --work DIR [--cprofile OUT.prof] [--top N]
        [--strace] [--all-cores] [--primitives]

Scans TREE, groups its small files into tasks as `fanout.archive_files` does
(`procfiles.tasks_of`, 2 processes), opens a fresh store and catalog under DIR, and runs
every task with `procfiles.run_job` (held directory descriptors, as a worker does), one after
another, inside threadprof's `Measured`: wall, CPU (user, sys) and CPU per thread family.
Then the pickled size of the results (as a worker sends them) and the driver's side of a
take: `unflat_all` of every row, CPU seconds. cProfile roughly doubles the CPU of small Python
calls: read its numbers as proportions. The process is pinned to one core (as a worker of a
2-core machine with two workers and the driver effectively is; `--all-cores` leaves it free:
then the task's two run threads hand the GIL to each other across cores, which costs far
more CPU than in a real worker). With --strace, prints the syscall counts of one more
run under `strace -f -c` (if strace is installed). With --primitives, first the floor of a
file's work on this tree, CPU microseconds a file (best of 3, same core): the bare syscalls of
a held-directory read (open, fstat, read, fstat, close), BLAKE3, SHA-256, the zstd level-3
attempt alone, `encode_parts(...).join()` and `encode_small` (when this archiver has it)."""
from __future__ import annotations

import argparse
import os
import pickle
import resource
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from threadprof import Measured  # noqa: E402

from archiver import api, fanout, pipeline, procfiles  # noqa: E402
from archiver.scan import DirFds, scan  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def jobs_of(tree: str, settings: object) -> list[procfiles.SmallJob]:
    """The tasks an archive of `tree` with 2 worker processes hands out (journal lines on)."""
    files = sorted((s for s in scan([tree]) if not s.is_dir and not s.is_link), key=lambda s: (-s.size, s.path))
    runs = [r for r in fanout.local_batches(files) if r[0].size < fanout.BATCH_FILE_BELOW]
    return [procfiles.SmallJob(settings, pipeline.ChunkPolicy(), None, None, g, journal_lines=True)  # type: ignore[arg-type]
            for g in procfiles.tasks_of(runs, processes=2)]


def run(tree: str, work: Path, cprofile: bool) -> tuple[Measured, list[procfiles.SmallDone]]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = api.open_repository(str(work / "store"), str(work / "store.db"), create=True).settings
    jobs = [pickle.loads(pickle.dumps(j, protocol=pickle.HIGHEST_PROTOCOL)) for j in jobs_of(tree, settings)]
    procfiles._repository.cache_clear()
    procfiles._repository(settings)  # opened before, as `_warm` does during the scan
    dirs = DirFds()
    with Measured(cprofile=cprofile) as m:
        dones = [procfiles.run_job(job, dirs=dirs) for job in jobs]
    dirs.close()
    procfiles._repository(settings).close()
    procfiles._repository.cache_clear()
    return m, dones


def primitives(tree: str) -> None:
    """The per-file floor (see the module docstring), printed one line each."""
    import hashlib
    import blake3
    from archiver.codecs import Codec
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    dirs = []
    for d, _, names in os.walk(tree):
        dirs.append((os.open(d, os.O_RDONLY | os.O_DIRECTORY), sorted(names)))

    def syscalls() -> int:
        n = 0
        for dfd, names in dirs:
            for name in names:
                fd = os.open(name, flags, dir_fd=dfd)
                st = os.fstat(fd)
                os.read(fd, st.st_size + 1)
                os.fstat(fd)
                os.close(fd)
                n += 1
        return n

    def best(fn: object, items: list[bytes]) -> float:
        out = []
        for _ in range(3):
            c = _cpu()
            for d in items:
                fn(d)  # type: ignore[operator]
            out.append(_cpu() - c)
        return min(out) / len(items) * 1e6
    out = []
    for _ in range(3):
        c = _cpu()
        n = syscalls()
        out.append(_cpu() - c)
    print(f"syscalls of a read (every file, empty ones too): {min(out) / n * 1e6:.1f} us")
    datas = []
    for dfd, names in dirs:
        for name in names:
            with open(os.open(name, os.O_RDONLY, dir_fd=dfd), "rb") as f:
                data = f.read()
            if data:
                datas.append(data)
    codec = Codec()
    comp = codec._compressor(codec.level)
    for name, fn in [("blake3", lambda d: blake3.blake3(d).hexdigest()),
                     ("sha256", lambda d: hashlib.sha256(d).hexdigest()),
                     ("zstd-3 attempt", comp.compress),
                     ("encode_parts().join()", lambda d: codec.encode_parts(d, 0).join()),
                     ("encode_small", getattr(codec, "encode_small", None))]:
        if fn is not None:
            print(f"{name} of each non-empty file ({len(datas)}): {best(fn, datas):.1f} us")
    for dfd, _ in dirs:
        os.close(dfd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree")
    ap.add_argument("--work", required=True)
    ap.add_argument("--cprofile")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--all-cores", action="store_true")
    ap.add_argument("--primitives", action="store_true")
    a = ap.parse_args()
    if not a.all_cores:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if a.primitives:
        primitives(a.tree)
    work = Path(a.work)
    m, dones = run(a.tree, work, bool(a.cprofile))
    files = sum(len(d.files) for d in dones)
    print(f"{len(dones)} tasks, {files} files: {m.summary()}")
    print(f"per file: {m.cpu / files * 1e6:.1f} us CPU (user {m.user / files * 1e6:.1f}, sys {m.sys / files * 1e6:.1f})")
    blobs = [pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL) for d in dones]
    c = _cpu()
    got = [pickle.loads(b) for b in blobs]
    loads = _cpu() - c
    c = _cpu()
    for d in got:
        procfiles.unflat_all(d.files)
    unflat = _cpu() - c
    size = sum(len(b) for b in blobs)
    print(f"results pickled: {size} bytes ({size / files:.0f} a file); driver: loads {loads * 1e3:.1f} ms, "
          f"unflat_all {unflat * 1e3:.1f} ms CPU")
    if a.cprofile:
        m.dump_profile(Path(a.cprofile), a.top)
    if a.strace and shutil.which("strace"):
        subprocess.run(["strace", "-f", "-c", "-o", str(work / "strace.txt"), sys.executable, __file__, a.tree,
                        "--work", str(work / "again")] + (["--all-cores"] if a.all_cores else []), check=True, stdout=subprocess.DEVNULL)
        print((work / "strace.txt").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
