"""Faults on the local side: full disks, files changing under the archiver, and
concurrent archive jobs sharing one store and catalog."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archiver import pipeline
from tests.fixtures import make_safetensors, random_tensor_bytes
from tests.helpers import RawStore, make_checkpoint, run_cli, tree

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    monkeypatch.delenv("ARCHIVER_CATALOG", raising=False)
    return tmp_path / "home"


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real small filesystem, so ENOSPC comes from the kernel, not from a mock."""
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {p.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name or "archiver-tmp" in p.name]


def test_store_disk_full_real_tmpfs(home, tmp_path):
    with tmpfs(tmp_path / "small", "6m") as fs:
        store = fs / "store"
        small = make_checkpoint(tmp_path / "a" / "small", layers=1, dim=256)
        ok = run_cli("--store", str(store), "archive", str(small), "--name", "small", "--json")
        assert ok.code == 0, ok.err
        big = make_checkpoint(tmp_path / "b" / "big", layers=6, dim=1200, seed=50)  # ~17 MB, mostly incompressible
        r = run_cli("--store", str(store), "archive", str(big), "--name", "big")
        assert r.code == 1 and "Traceback" not in r.err
        assert "disk full" in r.err.lower() or "no space" in r.err.lower(), r.err
        assert r.err.count("\n") == 1
        assert leftovers(store) == []
        names = [x["name"] for x in run_cli("--store", str(store), "list", "--json").json()]
        assert names == ["small"]  # nothing half-written recorded as good
        assert len(RawStore(str(store)).keys("manifests")) == 1
        # existing data intact
        assert run_cli("--store", str(store), "verify", "--all", "--deep").code == 0


def test_store_disk_full_injected(home, tmp_path, monkeypatch):
    """ENOSPC from the write itself (mocked), on the default store."""
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=2, dim=256)
    assert run_cli("archive", str(ckpt), "--name", "first").code == 0
    other = make_checkpoint(tmp_path / "other", layers=2, dim=256, seed=9)
    import archiver.stores.local as local
    real = local._write_all
    calls = [0]

    def failing(fd, data):
        calls[0] += 1
        if calls[0] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)
    monkeypatch.setattr(local, "_write_all", failing)
    r = run_cli("archive", str(other), "--name", "second")
    assert r.code == 1 and "disk full" in r.err.lower() and "Traceback" not in r.err
    monkeypatch.setattr(local, "_write_all", real)
    assert [x["name"] for x in run_cli("list", "--json").json()] == ["first"]
    assert leftovers(home / "store") == []
    assert run_cli("verify", "--all", "--deep").code == 0


def test_restore_disk_full_real_tmpfs(home, tmp_path):
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=6, dim=1200)
    mid = run_cli("archive", str(ckpt), "--name", "m", "--json").json()["id"]
    with tmpfs(tmp_path / "small", "4m") as fs:
        dest = fs / "out"
        r = run_cli("restore", mid, str(dest))
        assert r.code == 1 and "disk full" in r.err.lower() and "Traceback" not in r.err, r.err
        assert not (dest / "ckpt" / "model.safetensors").exists()
        assert leftovers(dest) == []


def test_source_changed_while_archiving(home, tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=4, dim=700)
    target = ckpt / "model.safetensors"
    real = pipeline.iter_chunks

    def growing(f, size, policy, **kw):
        for i, rc in enumerate(real(f, size, policy, **kw)):
            if i == 0 and f.name == str(target):
                with open(target, "ab") as g:
                    g.write(b"appended while archiving")
            yield rc
    monkeypatch.setattr(pipeline, "iter_chunks", growing)
    r = run_cli("archive", str(ckpt), "--name", "m")
    assert r.code == 1 and "changed while" in r.err, r.err
    assert run_cli("list", "--json").json() == []
    assert RawStore(str(home / "store")).keys("manifests") == []


def test_source_rewritten_same_size(home, tmp_path, monkeypatch):
    """Same size, new mtime: still detected."""
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=4, dim=700)
    target = ckpt / "model.safetensors"
    real = pipeline.iter_chunks

    def rewriting(f, size, policy, **kw):
        for i, rc in enumerate(real(f, size, policy, **kw)):
            if i == 1 and f.name == str(target):
                with open(target, "r+b") as g:
                    g.seek(size - 10)
                    g.write(b"X" * 10)
                st = os.stat(target)
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
            yield rc
    monkeypatch.setattr(pipeline, "iter_chunks", rewriting)
    r = run_cli("archive", str(ckpt), "--name", "m")
    assert r.code == 1 and "changed while" in r.err


@pytest.mark.slow
def test_two_archive_jobs_at_once(home, tmp_path):
    """Two processes, one store, one catalog, overlapping content: both succeed."""
    shared = {f"shared.{i}": ("BF16", [600, 600], random_tensor_bytes("BF16", 600 * 600, seed=i)) for i in range(6)}
    dirs = []
    for j in range(2):
        d = tmp_path / f"job{j}"
        d.mkdir()
        own = {f"own.{i}": ("BF16", [600, 600], random_tensor_bytes("BF16", 600 * 600, seed=100 * (j + 1) + i))
               for i in range(3)}
        make_safetensors(d / "model.safetensors", {**shared, **own})
        dirs.append(d)
    env = {**os.environ, "ARCHIVER_HOME": str(home)}
    for round_ in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "archiver.cli", "archive", str(d), "--name",
                                   f"job{j}-{round_}", "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for j, d in enumerate(dirs)]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
            assert "locked" not in err
    rows = run_cli("list", "--json").json()
    assert len(rows) == 6
    v = run_cli("verify", "--all", "--deep", "--json")
    assert v.code == 0, v.out
    dest = tmp_path / "restored"
    assert run_cli("restore", "job1-2", str(dest)).code == 0
    assert tree(dest / "job1") == tree(dirs[1])


_SWAP_TO_FIFO = """
import os, sys
from archiver import cli, pipeline, scan
victim, when, argv = sys.argv[1], sys.argv[2], sys.argv[3:]

def to_fifo():
    os.unlink(victim)
    os.mkfifo(victim)

if when == "after-scan":
    real_scan = pipeline.scan
    def scan_then_swap(paths, **kw):
        out = real_scan(paths, **kw)
        to_fifo()
        return out
    pipeline.scan = scan_then_swap
else:  # in the window between the look (stat) and the open
    real_open = os.open
    def racing(name, flags, mode=0o777, *, dir_fd=None):
        if os.fsdecode(name) == os.path.basename(victim) and os.path.isfile(victim):
            to_fifo()
        return real_open(name, flags, mode, dir_fd=dir_fd)
    scan.os.open = racing
cli.main(argv)
"""


@pytest.mark.parametrize("when", ["after-scan", "at-open"])
def test_file_swapped_for_a_fifo_fails_fast(home, tmp_path, when):
    """A FIFO in place of a scanned file must not hang the archive (opening one for reading
    blocks until a writer comes): it is refused at once, in a subprocess with a deadline."""
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=2, dim=64)
    victim = ckpt / "tokenizer" / "vocab.txt"
    store = tmp_path / "store"
    p = subprocess.run([sys.executable, "-c", _SWAP_TO_FIFO, str(victim), when, "--store", str(store), "archive",
                        str(ckpt), "--name", "m"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "vocab.txt changed while it was being archived" in p.stderr and p.stderr.count("\n") == 1
    assert os.path.exists(victim) and not os.path.isfile(victim)  # the swap really happened
    assert RawStore(str(store)).keys("manifests") == []


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("how", ["overwrite", "truncate-and-rewrite"])
def test_in_place_rewrite_that_restores_mtime_is_detected(home, tmp_path, monkeypatch, where, how):
    """`rsync --inplace -t` (or `touch -r`) rewrites bytes and puts the old mtime back; the
    size stays too. ctime moves anyway (no caller can set it), so a torn file, part old
    and part new bytes, is never recorded."""
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=4, dim=256)
    target = ckpt / "model.safetensors"
    real = pipeline.iter_chunks
    done = []

    def rewriting(f, size, policy, **kw):
        for rc in real(f, size, policy, **kw):
            if not done and f.name == str(target):
                st = os.stat(target)
                old = target.read_bytes()
                off = {"start": 0, "middle": size // 2, "end": size - 64}[where]
                new = old[:off] + bytes(b ^ 0xFF for b in old[off:off + 64]) + old[off + 64:]
                with open(target, "r+b") as g:
                    if how == "truncate-and-rewrite":
                        g.truncate(0)
                        g.write(new)
                    else:
                        g.seek(off)
                        g.write(new[off:off + 64])
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
                after = os.stat(target)
                assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)  # only ctime tells
                done.append(True)
            yield rc
    monkeypatch.setattr(pipeline, "iter_chunks", rewriting)
    r = run_cli("archive", str(ckpt), "--name", "m")
    assert done and r.code == 1 and "changed while" in r.err and r.err.count("\n") == 1, r.err
    assert run_cli("list", "--json").json() == []
    assert RawStore(str(home / "store")).keys("manifests") == []
    monkeypatch.setattr(pipeline, "iter_chunks", real)
    assert run_cli("archive", str(ckpt), "--name", "m").code == 0  # left alone, the same tree archives


@pytest.mark.parametrize("args", [
    ["--label", b"v\xff"],
    ["--label", b"\xc3"],                    # truncated UTF-8 sequence
    ["--name", b"model-\xff"],
    ["--meta", b"epoch=\xfe"],
    ["--meta", b"\xff=1"],
    ["--label", "v\x1b[31m"],               # a terminal escape
    ["--meta", "k=a\u202eb"],               # a bidi override
], ids=lambda a: repr(a[1]))
def test_cli_refuses_undecodable_or_control_text_before_writing(tmp_path, args):
    """Invalid UTF-8 on the command line arrives as lone surrogates: the archive is refused
    with one line and exit 2 before the scan, and the store holds no chunk and no manifest."""
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=2, dim=64)
    store = tmp_path / "store"
    argv = [sys.executable, "-m", "archiver.cli", "--store", str(store), "--catalog", str(tmp_path / "c.db"),
            "archive", str(ckpt)] + (["--name", "m"] if args[0] != "--name" else []) + args
    p = subprocess.run([os.fsencode(a) if isinstance(a, str) else a for a in argv], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8"}, capture_output=True,
                       timeout=60)
    err = p.stderr.decode("utf-8")  # the message itself is valid UTF-8
    assert p.returncode == 2, err
    assert err.startswith(f"archiver: error: {args[0]} ") and err.count("\n") == 1 and "Traceback" not in err
    raw = RawStore(str(store))
    assert raw.keys("chunks") == [] and raw.keys("manifests") == []
