"""Shared test plumbing: run the CLI in-process, build a sample checkpoint, and reach
around the Store API to damage objects the way disks and buckets do."""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import boto3

from archiver.cli import main
from tests.fixtures import make_safetensors, random_tensor_bytes


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def run_cli(*args: str) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def make_checkpoint(root: Path, *, layers: int = 4, dim: int = 256, seed: int = 0) -> Path:
    """A small model directory: bf16 + fp32 safetensors, config, tokenizer, an empty file,
    an empty directory and a nested directory."""
    root.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i in range(layers):
        tensors[f"layers.{i}.weight"] = ("BF16", [dim, dim], random_tensor_bytes("BF16", dim * dim, seed=seed + i))
        tensors[f"layers.{i}.bias"] = ("F32", [dim], random_tensor_bytes("F32", dim, seed=seed + 100 + i))
    make_safetensors(root / "model.safetensors", tensors, metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps({"hidden": dim, "layers": layers}))
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(3000)))
    (root / "empty.txt").write_bytes(b"")
    (root / "empty_dir").mkdir(exist_ok=True)
    os.chmod(root / "config.json", 0o640)
    return root


def make_small_file_tree(root: Path, *, dirs: int, files: int, size: Callable[[int, int], int],
                         modes: bool = False) -> Path:
    """A checkpoint (its bigger files stay on the driver's threads) beside `dirs` nested
    directories d{d}/inner of `files` small files each (every seventh the same bytes; the rest
    random, `size(i, d)` bytes; modes 600/644/755 in turn if `modes`) and an empty file, plus an
    empty directory and a symlink to d0/inner/f01.txt: the small-file trees of the worker tests."""
    make_checkpoint(root / "ckpt", layers=2, dim=64)
    for d in range(dirs):
        sub = root / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(files):
            body = b"the same bytes\n" if i % 7 == 0 else os.urandom(size(i, d))
            (sub / f"f{i:02}.txt").write_bytes(body)
            if modes:
                os.chmod(sub / f"f{i:02}.txt", (0o600, 0o644, 0o755)[i % 3])
        (sub / "empty").write_bytes(b"")
    (root / "empty-dir").mkdir()
    os.symlink("d0/inner/f01.txt", root / "link")
    return root


def live_children() -> set[int]:
    """Live (not zombie) child processes of this process, read from /proc (no psutil): what a
    worker pool must not leave behind."""
    me, out = os.getpid(), set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                out.add(int(d))
    return out


def tree(root: Path) -> dict[str, tuple[str, bytes | None, int]]:
    """Relative path -> (kind, content, mode) for comparing trees byte for byte."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            out[rel] = ("dir", None, p.stat().st_mode & 0o7777)
        else:
            out[rel] = ("file", p.read_bytes(), p.stat().st_mode & 0o7777)
    return out


class RawStore:
    """Direct access to a store's objects, bypassing every safety check, to simulate damage."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("s3://"):
            bucket, _, prefix = url[5:].partition("/")
            self.bucket, self.prefix = bucket, prefix.strip("/")
            self.s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        else:
            self.root = Path(url[7:] if url.startswith("file://") else url)

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def keys(self, prefix: str) -> list[str]:
        if self.url.startswith("s3://"):
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._k(prefix))
            cut = len(self.prefix) + 1 if self.prefix else 0
            return sorted(o["Key"][cut:] for pg in pages for o in pg.get("Contents", []))
        base = self.root
        return sorted(p.relative_to(base).as_posix() for p in (base / prefix).rglob("*")
                      if p.is_file() and not p.name.startswith(".tmp"))

    def read(self, key: str) -> bytes:
        if self.url.startswith("s3://"):
            return self.s3.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        return (self.root / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        if self.url.startswith("s3://"):
            self.s3.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)
            return
        p = self.root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            os.chmod(p, 0o644)
        p.write_bytes(data)

    def delete(self, key: str) -> None:
        if self.url.startswith("s3://"):
            self.s3.delete_object(Bucket=self.bucket, Key=self._k(key))
        else:
            (self.root / key).unlink()

    def mutate(self, key: str, fn: Callable[[bytes], bytes]) -> None:
        self.write(key, fn(self.read(key)))


def filemap_key(raw: RawStore, h: str) -> str:
    """The key file map `h` is stored under in `raw`: `.bin` (binary maps, written now) or
    `.json` (JSON maps, as earlier archivers wrote them); tests that damage or delete a map
    use it so they work for both forms."""
    from archiver import layout
    stored = set(raw.keys(layout.FILEMAPS))
    found = [k for k in layout.filemap_keys(h) if k in stored]
    assert len(found) == 1, f"file map {h} is stored under {found or 'no key'}"
    return found[0]


class InterruptAfterClose:
    """An `os.close` that really closes, then raises KeyboardInterrupt once, on the first
    call `when(fd)` picks (asked before the close): a Ctrl-C that lands right after a
    close returned, before the code marks the descriptor closed. Cleanup that closes it
    again raises EBADF instead of letting the interrupt through (or, with threads, closes
    a descriptor some other file has just been given)."""

    def __init__(self, when: Callable[[int], bool]) -> None:
        self.when, self.fired, self.real = when, False, os.close

    def __call__(self, fd: int) -> None:
        fire = not self.fired and self.when(fd)
        self.real(fd)
        if fire:
            self.fired = True
            raise KeyboardInterrupt


def interrupt_each_close(monkeypatch, module: Any, run: Callable[[int], None], check: Callable[[int], None],
                         limit: int = 2000) -> int:
    """Run `run(n)` for n = 1, 2, ... with a Ctrl-C right after the n-th descriptor the main
    thread closes through `module.os.close` (InterruptAfterClose); `check(n)` follows each
    interrupted run. Ends at the first run that passes its last close, and returns its n."""
    import threading
    n = 0
    while True:
        n += 1
        closes = [0]

        def nth(_fd: int) -> bool:
            if threading.current_thread() is not threading.main_thread():
                return False
            closes[0] += 1
            return closes[0] == n
        ctrl_c = InterruptAfterClose(nth)
        monkeypatch.setattr(module.os, "close", ctrl_c)
        try:
            run(n)
        except KeyboardInterrupt:
            pass
        finally:
            monkeypatch.setattr(module.os, "close", ctrl_c.real)
        if not ctrl_c.fired:
            return n  # past the run's last close: it ran to its end
        check(n)
        assert n < limit


def open_fds() -> set[int]:
    """This process's open descriptors (Linux /proc), to show nothing leaked: compared as
    `open_fds() <= before`, since another test's leftover thread may close one meanwhile."""
    return {int(n) for n in os.listdir("/proc/self/fd")}
