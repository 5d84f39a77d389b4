"""CPU seconds per GiB of bf16: where archive's and restore's CPU goes, stage by stage, and
the whole commands next to zstd, borg and restic on the same file (issue 12).

    .venv/bin/python bench/cpu_per_gib.py [--input FILE] [--size-mib 1024] [--runs 3]
                                          [--no-stages] [--no-commands] [--no-compare]

Input: one bf16 safetensors of N(0, per-tensor std) weights (so random low mantissa bytes),
32 tensors of 4096 x 4096 per GiB, generated once under bench/.work/inputs/cpu-bf16-<N>M
(--input measures any other file instead).

Stages: this process, one thread, does what an archive worker does to each chunk of the
file (the default chunk policy), timing each step with the thread's CPU clock (user +
system, so other processes on a shared machine do not count): read (chunking.iter_chunks),
hash (chunk BLAKE3 + whole-file BLAKE3 and SHA-256; with Codec.address the chunk's byte
planes are split in the same pass and counted here), split (byte planes into the reused
buffer, when not already split with the hash), compress (zstd, with the incompressibility probe), round trip (decode into the
reused buffer and compare), assemble (the object), put (local store: temp file, fsync,
link). Then the way back, as restore does it: get, decode, hash (chunk BLAKE3 + whole-file
BLAKE3), write (to one file, fsynced at the end). The stage code calls the codec's own
internals, so it measures the code that archive runs, not a copy of it.

Commands: `archiver archive`, the same archive again (nothing new to store, but every
chunk already stored is read back, decoded and compared with the source: the dedup
proof), `verify --deep`, `restore` (+ `sync`) as fresh processes
(bench/measure.run: CPU = user + system of the process from wait4, so it includes Python
start-up; `archiver --version` is measured too and archive's CPU without it printed), and,
unless --no-compare, `zstd -3 -T2`, `borg create -C zstd,3` and `restic backup` / `restic
restore` (+ `sync`), median of --runs. Prints the issue's targets.
Writes bench/.work/cpu_per_gib.json."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import blake3  # noqa: E402

from inputs import TensorSpec, _make_dir, _per_tensor_scale, normal_bf16_pieces, write_safetensors  # noqa: E402

from archiver import layout, malloc  # noqa: E402
from archiver.chunking import ChunkPolicy, iter_chunks  # noqa: E402
from archiver.codecs import CODEC_RAW, CODEC_ZSTD, GROUP_MIN_BYTES, GROUP_WIDTHS, TRANSFORM_PLANES, Codec, _assemble  # noqa: E402,E501
from archiver.digests import FileDigest  # noqa: E402
from archiver.fileio import write_all  # noqa: E402
from archiver.stores.local import LocalStore  # noqa: E402

GiB = 1 << 30
DIM = 4096
ARCHIVE_STAGES = ("read", "hash", "split", "compress", "round trip", "assemble", "put")
RESTORE_STAGES = ("get", "decode", "hash", "write")
# issue 12's targets
ARCHIVE_CPU_PER_GIB = 4.0
VS_BORG = 0.4
VS_ZSTD_T2 = 0.9
RESTORE_VS_RESTIC = 0.5
STARTUP = "start-up (--version)"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_input(size_mib: int) -> Path:
    """The generated bf16 file (reused while its parameters are unchanged)."""
    n = max(1, size_mib * (1 << 20) // (DIM * DIM * 2))
    specs = [TensorSpec(f"model.layers.{k}.weight", "BF16", [DIM, DIM],
                        lambda k=k: normal_bf16_pieces(DIM * DIM, 0.02 * _per_tensor_scale(k), 1000 + k))
             for k in range(n)]
    d = _make_dir(HERE / ".work" / "inputs" / f"cpu-bf16-{size_mib}M", {"tensors": n, "dim": DIM, "v": 1},
                  lambda d: write_safetensors(d / "model.safetensors", specs, {"format": "pt"}), log)
    return d / "model.safetensors"


class Clock:
    """Thread CPU time per named stage."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._t = time.thread_time()

    def lap(self, stage: str) -> None:
        now = time.thread_time()
        self.spent[stage] += now - self._t
        self._t = now


def _encode_timed(codec: Codec, data: memoryview | bytes, width: int, clock: Clock) -> bytes:
    """Codec.encode's byte-plane path step by step (its own methods), else encode whole."""
    from archiver.codecs import split_planes  # here, so --no-stages also runs against older code

    n = len(data)
    if width not in GROUP_WIDTHS or n < GROUP_MIN_BYTES:
        obj = codec.encode(data, width).data
        clock.lap("compress")
        return obj
    body = n - n % width
    if hasattr(codec, "_planes"):  # the planes `address` split with the hash, as archive uses them
        planes = codec._planes(data, width, body)
    else:
        planes = codec._scratch("planes", body).reshape(width, body // width)
        split_planes(data, width, planes)
    clock.lap("split")
    sections: list[tuple[int, Any, int]] = []
    for i in range(width):
        view = memoryview(planes[i])
        packed = codec._pack(view, codec.plane_level)
        clock.lap("compress")
        if packed is not None:
            if not codec._round_trips(packed, view):
                raise SystemExit("round trip mismatch")
            clock.lap("round trip")
        sections.append((CODEC_RAW, view, len(view)) if packed is None else (CODEC_ZSTD, packed, len(view)))
    if all(c == CODEC_RAW for c, _, _ in sections):
        return codec.encode(data, width).data  # the encoder falls back to plain here
    sections.append((CODEC_RAW, data[body:], n - body))
    obj = _assemble(TRANSFORM_PLANES, width, n, sections)
    clock.lap("assemble")
    return obj


def stages(path: Path, tmp: Path) -> dict[str, Any]:
    """Archive and restore of `path`, one thread, CPU seconds per stage."""
    codec = Codec()
    store = LocalStore(tmp / "stage-store")
    size = path.stat().st_size
    refs: list[tuple[str, int]] = []
    checked = 0
    clock = Clock()
    digest = FileDigest()
    with open(path, "rb") as f:
        for rc in iter_chunks(f, size, ChunkPolicy()):
            clock.lap("read")
            # the chunk's address as archive computes it (with its byte-planes, in one pass)
            h = codec.address(rc.data, rc.width) if hasattr(codec, "address") else blake3.blake3(rc.data).hexdigest()
            digest.update(rc.data)
            clock.lap("hash")
            obj = _encode_timed(codec, rc.data, rc.width, clock)
            if checked < 3:  # the stage code must make exactly the objects archive makes
                if obj != codec.encode(rc.data, rc.width).data:
                    raise SystemExit("stage encoding differs from Codec.encode")
                checked += 1
                clock.lap("check (not counted)")
            store.put_if_absent(layout.chunk(h), obj)
            clock.lap("put")
            refs.append((h, len(rc.data)))
    back = Clock()
    out = FileDigest(sha256=False)
    fd = os.open(tmp / "restored", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for h, length in refs:
            obj = store.get(layout.chunk(h))
            back.lap("get")
            data = codec.decode(obj, length, h)
            back.lap("decode")
            if blake3.blake3(data).hexdigest() != h:
                raise SystemExit(f"chunk {h} decoded wrong")
            out.update(data)
            back.lap("hash")
            write_all(fd, data)
            back.lap("write")
        os.fsync(fd)
        back.lap("write")
    finally:
        os.close(fd)
    if out.blake3 != digest.blake3:
        raise SystemExit("restored file differs")
    gib = size / GiB
    return {"archive": {s: clock.spent[s] / gib for s in ARCHIVE_STAGES},
            "restore": {s: back.spent[s] / gib for s in RESTORE_STAGES},
            "stored_bytes": sum(p.stat().st_size for p in (tmp / "stage-store").rglob("*") if p.is_file())}


def commands(path: Path, runs: int, compare: bool, tmproot: Path) -> dict[str, list[dict[str, Any]]]:
    """Fresh-process runs of ours (and the other tools), each in fresh stores."""
    from measure import run, warm
    from tools import ARCHIVER, Borg, Ours, Restic, zstd_compress

    src = tmproot / "src"
    src.mkdir()
    if _same_fs(path, src):
        os.link(path, src / path.name)
    else:
        shutil.copy2(path, src / path.name)
    warm([src / path.name])
    res: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def rec(key: str, m: Any, **extra: Any) -> None:
        res[key].append({"cpu": m.cpu, "wall": m.wall, "sync": m.sync, "rss_mib": m.rss_mib, **extra})

    for r in range(runs):
        tmp = Path(tempfile.mkdtemp(prefix=f"run{r}-", dir=tmproot))
        ours = Ours(tmp)
        rec(STARTUP, run([ARCHIVER, "--version"], env=ours.env))
        m = ours.archive(src)
        rec("archive", m, stored=ours.stored())
        rec("re-archive (proof)", ours.archive(src, "again"))  # every stored chunk read back and compared
        rec("verify --deep", ours.verify())
        rec("restore", ours.restore(tmp / "restore-ours"))
        _check_same(src / path.name, tmp / "restore-ours" / src.name / path.name, "archiver restore")
        if compare:
            rec("zstd -3 -T2", zstd_compress(src, tmp / "zstd-out", 2))
            b = Borg(tmp)
            rec("borg create -C zstd,3", b.archive(src), stored=b.stored())
            shutil.rmtree(b.repo)
            rs = Restic(tmp)
            rec("restic backup", rs.archive(src), stored=rs.stored())
            rec("restic restore", rs.restore(tmp / "restore-restic"))
            restored = [p for p in (tmp / "restore-restic").rglob(path.name) if p.is_file()]
            _check_same(src / path.name, restored[0] if restored else tmp / "restore-restic", "restic restore")
        shutil.rmtree(tmp)
        log(f"run {r + 1}/{runs} done")
    return dict(res)


def _file_blake3(p: Path) -> str:
    h = blake3.blake3()
    with open(p, "rb") as f:
        while piece := f.read(8 << 20):
            h.update(piece)
    return h.hexdigest()


def _check_same(src: Path, restored: Path, who: str) -> None:
    """A restore that is not byte-identical fails the benchmark."""
    if not restored.is_file() or _file_blake3(restored) != _file_blake3(src):
        raise SystemExit(f"RESTORE MISMATCH: {who} did not restore {src.name} byte for byte ({restored})")


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(size: int, st: dict[str, Any] | None, cmds: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    gib = size / GiB
    lines = []
    if st:
        lines.append(f"stages, one thread, CPU-s per GiB ({size:,} bytes):")
        for side in ("archive", "restore"):
            parts = st[side]
            lines.append(f"  {side:8s} " + "  ".join(f"{k} {v:.2f}" for k, v in parts.items())
                         + f"  = {sum(parts.values()):.2f}")
        lines.append(f"  stored {st['stored_bytes']:,} bytes ({st['stored_bytes'] / size:.4f} of input)")
    if cmds:
        lines.append(f"commands, median of {len(cmds['archive'])} run(s): CPU-s per GiB (user+sys), wall s, +sync s")
        for key, rows in cmds.items():
            if key == STARTUP:
                lines.append(f"  {key:24s} CPU {med(rows, 'cpu'):5.2f} s (in every command's CPU above; "
                             f"archive without it: {(med(cmds['archive'], 'cpu') - med(rows, 'cpu')) / gib:.2f}/GiB)")
                continue
            stored = f"  stored {int(med(rows, 'stored')):,}" if "stored" in rows[0] else ""
            lines.append(f"  {key:24s} CPU {med(rows, 'cpu') / gib:5.2f}/GiB  wall {med(rows, 'wall'):6.2f}"
                         f"  +sync {med(rows, 'wall') + med(rows, 'sync'):6.2f}{stored}")
        lines += targets(gib, cmds)
    return lines


def targets(gib: float, cmds: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = ["targets (issue 12):"]

    def line(name: str, value: float, limit: float) -> None:
        out.append(f"  [{'PASS' if value <= limit else 'FAIL'}] {name}: {value:.3f} (<= {limit})")

    line("archive CPU-s per GiB", med(cmds["archive"], "cpu") / gib, ARCHIVE_CPU_PER_GIB)
    wall = med(cmds["archive"], "wall")
    if "borg create -C zstd,3" in cmds:
        line("archive wall / borg create -C zstd,3", wall / med(cmds["borg create -C zstd,3"], "wall"), VS_BORG)
    if "zstd -3 -T2" in cmds:
        line("archive wall / zstd -3 -T2", wall / med(cmds["zstd -3 -T2"], "wall"), VS_ZSTD_T2)
    if "restic restore" in cmds:
        ours = med(cmds["restore"], "wall") + med(cmds["restore"], "sync")
        theirs = med(cmds["restic restore"], "wall") + med(cmds["restic restore"], "sync")
        line("restore+sync / restic restore+sync", ours / theirs, RESTORE_VS_RESTIC)
    return out


def main() -> int:
    from measure import compile_bytecode
    compile_bytecode()  # as an install does: no command below compiles archiver again
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, help="measure this file instead of the generated bf16 one")
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the generated input (default 1024)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-stages", action="store_true")
    ap.add_argument("--no-commands", action="store_true")
    ap.add_argument("--no-compare", action="store_true", help="commands: ours only")
    args = ap.parse_args()
    malloc.tune()  # as the CLI does
    path = (args.input or make_input(args.size_mib)).resolve()
    size = path.stat().st_size
    work = HERE / ".work"
    work.mkdir(exist_ok=True)
    tmproot = Path(tempfile.mkdtemp(prefix="cpu-per-gib-", dir=work))
    try:
        st = None if args.no_stages else stages(path, tmproot)
        if st:
            shutil.rmtree(tmproot)
            tmproot.mkdir()
        cmds = None if args.no_commands else commands(path, args.runs, not args.no_compare, tmproot)
    finally:
        shutil.rmtree(tmproot, ignore_errors=True)
    lines = report(size, st, cmds)
    print("\n".join(lines))
    (work / "cpu_per_gib.json").write_text(json.dumps(
        {"input": str(path), "bytes": size, "stages": st, "commands": cmds,
         "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
