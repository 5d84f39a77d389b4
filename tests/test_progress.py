"""archiver/progress.py and the CLI's use of it: a progress line on a terminal only,
never with --json, never when stderr is not a TTY."""
from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import archiver.progress as progress_mod
from archiver.progress import Progress, human_bytes

MiB = 1024 * 1024


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    return c


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1024) == "1.0 KiB"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(50 * MiB) == "50.0 MiB"
    assert human_bytes(3 * 1024 ** 3) == "3.0 GiB"
    assert human_bytes(2048 * 1024 ** 4) == "2048.0 TiB"


def test_renders_bytes_rate_percentage_and_eta(clock):
    out = io.StringIO()
    p = Progress(enabled=True, stream=out, interval=0.2)
    p.start("archive llama", 100 * MiB)
    clock.t += 2.0
    p.advance(25 * MiB)
    text = out.getvalue()
    assert text.startswith("\r\x1b[K")
    line = text[len("\r\x1b[K"):]
    assert line == "archive llama  25.0 MiB / 100.0 MiB (25%)  12.5 MiB/s  ETA 0:06"
    assert p.line(clock.t) == line


def test_eta_minutes(clock):
    p = Progress("x", 0, enabled=True, stream=io.StringIO())
    p.start("verify", 1000 * MiB)
    clock.t += 10.0
    p.advance(10 * MiB)  # 1 MiB/s, 990 s left
    assert p.line(clock.t).endswith("1.0 MiB/s  ETA 16:30")
    assert "(1%)" in p.line(clock.t)


def test_unknown_total_has_no_percentage_or_eta(clock):
    out = io.StringIO()
    p = Progress("scan", enabled=True, stream=out)
    clock.t += 1.0
    p.advance(3 * 1024)
    assert out.getvalue() == "\r\x1b[Kscan  3.0 KiB  3.0 KiB/s"
    assert "%" not in out.getvalue() and "ETA" not in out.getvalue()


def test_rendering_is_rate_limited_but_shows_completion(clock):
    out = io.StringIO()
    p = Progress(enabled=True, stream=out, interval=0.2)
    p.start("restore", 1000)
    for _ in range(99):
        p.advance(10)  # same instant: only the first renders
    assert out.getvalue().count("\r\x1b[K") == 1
    clock.t += 0.25
    p.advance(5)
    assert out.getvalue().count("\r\x1b[K") == 2
    p.advance(5)  # reaches the total: always rendered
    assert out.getvalue().count("\r\x1b[K") == 3
    assert "(100%)" in out.getvalue().rsplit("\r", 1)[-1] and "ETA 0:00" in out.getvalue()
    p.finish()
    assert out.getvalue().endswith("\r\x1b[K")


def test_rendering_is_rate_limited_with_unknown_total(clock):
    out = io.StringIO()
    p = Progress("stream", enabled=True, stream=out, interval=0.2)
    for _ in range(1000):
        p.advance(1)
    assert out.getvalue().count("\r\x1b[K") == 1
    clock.t += 0.3
    p.advance(1)
    assert out.getvalue().count("\r\x1b[K") == 2


def test_advance_from_many_threads_counts_everything(clock):
    p = Progress(enabled=True, stream=io.StringIO())
    p.start("x", 8 * 1000)
    ts = [threading.Thread(target=lambda: [p.advance(1) for _ in range(1000)]) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert p.done == 8000


def test_disabled_writes_nothing():
    out = io.StringIO()
    p = Progress("x", 100, enabled=False, stream=out, interval=0)
    p.start("y", 100)
    p.advance(50)
    p.advance(50)
    p.finish()
    assert out.getvalue() == ""


class FakeStderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_for_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeStderr(False))
    assert not Progress.for_terminal("archive").enabled
    tty = FakeStderr(True)
    monkeypatch.setattr(sys, "stderr", tty)
    p = Progress.for_terminal("archive", 10)
    assert p.enabled and p.stream is tty and p.total == 10 and p.label == "archive"
    assert not Progress.for_terminal("archive", quiet=True).enabled
    p.advance(10)
    assert "10 B / 10 B (100%)" in tty.getvalue()
    monkeypatch.setattr(sys, "stderr", object())  # no isatty at all
    assert not Progress.for_terminal("archive").enabled


# -- the CLI on a real pseudo-terminal -----------------------------------------------------------

@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("src") / "weights.bin"
    with open(p, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(MiB))
    return p


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    env["ARCHIVER_HOME"] = str(home)
    env["TERM"] = "xterm"
    return env


def _archiver() -> list[str]:
    script = Path(sys.executable).with_name("archiver")
    return [str(script)] if script.exists() else [sys.executable, "-m", "archiver.cli"]


def run_on_pty(args: list[str], home: Path) -> tuple[int, bytes, bytes]:
    """Run the CLI with stderr on a pty (stdout a pipe); return (code, stdout, pty bytes)."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child closed the slave side
                return
            if not data:
                return
            chunks.append(data)

    try:
        proc = subprocess.Popen(_archiver() + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=slave, env=_env(home))
        os.close(slave)
        slave = -1
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        out, _ = proc.communicate(timeout=60)
        reader.join(10)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return proc.returncode, out, b"".join(chunks)


def test_cli_shows_progress_on_a_terminal(big_file, tmp_path):
    code, out, tty = run_on_pty(["archive", str(big_file), "--name", "big"], tmp_path / "home")
    assert code == 0, tty.decode(errors="replace")
    text = tty.decode()
    lines = [seg for seg in re.split(r"\r\x1b\[K", text) if seg]
    progress = [seg for seg in lines if "MiB" in seg and "/s" in seg and "ETA" in seg]
    assert progress, text
    assert any("archive big" in seg and "/ 50.0 MiB" in seg for seg in progress)
    assert "\r\x1b[K" in text  # the line is redrawn and finally cleared
    assert re.fullmatch(rb"[0-9a-f]{64}\n", out)  # stdout: only the id


def test_cli_json_on_a_terminal_prints_only_json(big_file, tmp_path):
    code, out, tty = run_on_pty(["archive", str(big_file), "--name", "big", "--json"], tmp_path / "home")
    assert code == 0, tty.decode(errors="replace")
    assert tty == b""
    doc = json.loads(out)
    assert doc["files"] == 1 and doc["bytes_in"] == 50 * MiB and re.fullmatch(r"[0-9a-f]{64}", doc["id"])
    assert out.decode().strip().startswith("{") and out.decode().strip().endswith("}")


def test_cli_without_a_terminal_shows_no_progress(big_file, tmp_path):
    home = tmp_path / "home"
    res = subprocess.run(_archiver() + ["archive", str(big_file), "--name", "big", "--json"],
                         stdin=subprocess.DEVNULL, capture_output=True, env=_env(home), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr == b""
    doc = json.loads(res.stdout)
    # human output: stdout is the id; stderr only the one summary line, no progress drawing
    res = subprocess.run(_archiver() + ["archive", str(big_file), "--name", "big"],
                         stdin=subprocess.DEVNULL, capture_output=True, env=_env(home), timeout=60)
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(rb"[0-9a-f]{64}\n", res.stdout) and res.stdout.decode().strip() != doc["id"]  # new parent
    assert b"\r" not in res.stderr and b"\x1b" not in res.stderr and b"/s" not in res.stderr
    assert res.stderr.count(b"\n") == 1 and res.stderr.startswith(b"1 files, 50.0 MiB in")
