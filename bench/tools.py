"""The tools under comparison, each driven through bench.measure.run in its own fresh
repository/store under a temporary directory. Every method returns a Measure."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from measure import Measure, run
from inputs import ROOT, files_under, tree_bytes

# The checkout's own venv (make bench); else the `archiver` script beside the running Python
# (a worktree run as `PYTHONPATH=. /other/.venv/bin/python bench/...`: PYTHONPATH picks the code).
ARCHIVER = ROOT / ".venv" / "bin" / "archiver"
if not ARCHIVER.exists():
    ARCHIVER = Path(sys.executable).parent / "archiver"
TRUST_WINDOW = "1d"  # the v2 re-archive is also timed with --trust-verified-within this

# Exact command templates, quoted in RESULTS.md.
COMMANDS = {
    "archiver": [
        "ARCHIVER_HOME=$TMP/home archiver archive SRC --name bench --json",
        f"ARCHIVER_HOME=$TMP/home archiver archive V2 --name bench --trust-verified-within {TRUST_WINDOW} --json"
        "   (v2 only, from the same state as the default v2: after v1 + verify --deep)",
        "ARCHIVER_HOME=$TMP/home archiver verify ID --deep --json",
        "ARCHIVER_HOME=$TMP/home archiver restore ID DEST --json",
    ],
    "borg": [
        "borg init -e none REPO",
        "borg create -C zstd,3 REPO::v1 SRC            (cwd = parent of SRC)",
        "borg check --verify-data REPO",
        "borg extract REPO::v1                         (cwd = DEST)",
    ],
    "restic": [
        "restic init --repository-version 2            (RESTIC_PASSWORD=bench: restic always encrypts)",
        "restic backup --compression auto --host bench SRC   (cwd = parent of SRC)",
        "restic check --read-data",
        "restic restore latest --target DEST [--verify]",
    ],
    "zstd": [
        "zstd -3 -T1 -q -f --output-dir-mirror OUT FILES...   (cwd = SRC; stored = sum of outputs)",
        "zstd -3 -T2 -q -f --output-dir-mirror OUT FILES...",
    ],
    "b3sum": ["b3sum FILES...   (cwd = SRC; output to a file)"],
}


def _env(**kw: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(kw)
    return env


class Ours:
    name = "archiver"

    def __init__(self, tmp: Path, home: Path | None = None) -> None:
        self.home = home or tmp / "archiver-home"
        self.env = _env(ARCHIVER_HOME=str(self.home))
        self.ids: dict[str, str] = {}

    def snapshot(self) -> Path:
        """Copy the store and catalog aside (the catalog is bound to the store's path, so a
        copy is only usable back in place: see `rollback`)."""
        snap = self.home.with_name(self.home.name + "-snapshot")
        shutil.copytree(self.home, snap, symlinks=True)
        return snap

    def rollback(self, snap: Path) -> None:
        """Put the store and catalog back as they were at `snapshot`."""
        shutil.rmtree(self.home)
        snap.rename(self.home)

    def archive(self, src: Path, tag: str = "v1", *options: str) -> Measure:
        m = run([ARCHIVER, "archive", src, "--name", "bench", *options, "--json"], env=self.env)
        js = json.loads(m.stdout)
        self.ids[tag] = js["id"]
        m.extra.update({k: js.get(k) for k in ("bytes_in", "bytes_stored", "new_bytes_stored", "chunks",
                                                "new_chunks", "repaired_chunks", "seconds")})
        return m

    def verify(self, tag: str = "v1") -> Measure:
        m = run([ARCHIVER, "verify", self.ids[tag], "--deep", "--json"], env=self.env)
        js = json.loads(m.stdout)
        m.extra.update({"ok": js.get("ok"), "bytes_read": js.get("bytes_read"), "seconds": js.get("seconds")})
        return m

    def restore(self, dest: Path, tag: str = "v1") -> Measure:
        m = run([ARCHIVER, "restore", self.ids[tag], dest, "--json"], env=self.env)
        js = json.loads(m.stdout)
        m.extra.update({"ok": js.get("ok"), "seconds": js.get("seconds")})
        return m

    def stored(self) -> int:
        return tree_bytes(self.home)


class Borg:
    name = "borg"

    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "borg-repo"
        self.env = _env(BORG_BASE_DIR=str(tmp / "borg-base"), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_DISPLAY_PASSPHRASE="no")
        run(["borg", "init", "-e", "none", self.repo], env=self.env)

    def archive(self, src: Path, tag: str = "v1") -> Measure:
        return run(["borg", "create", "-C", "zstd,3", f"{self.repo}::{tag}", src.name], env=self.env, cwd=src.parent)

    def verify(self) -> Measure:
        return run(["borg", "check", "--verify-data", self.repo], env=self.env)

    def restore(self, dest: Path, tag: str = "v1") -> Measure:
        dest.mkdir(parents=True, exist_ok=True)
        return run(["borg", "extract", f"{self.repo}::{tag}"], env=self.env, cwd=dest)

    def stored(self) -> int:
        return tree_bytes(self.repo)


class Restic:
    name = "restic"

    def __init__(self, tmp: Path, v2: bool = True) -> None:
        self.repo = tmp / "restic-repo"
        self.v2 = v2  # repository format 2 (restic >= 0.14) is the one with compression
        self.backup_label = "restic backup --compression auto" if v2 else "restic backup"
        self.env = _env(RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=str(self.repo),
                        RESTIC_CACHE_DIR=str(tmp / "restic-cache"))
        run(["restic", "init", "-q", *(["--repository-version", "2"] if v2 else [])], env=self.env)

    def archive(self, src: Path, tag: str = "v1") -> Measure:
        comp = ["--compression", "auto"] if self.v2 else []
        return run(["restic", "backup", "-q", *comp, "--host", "bench", "--tag", tag, src.name],
                   env=self.env, cwd=src.parent)

    def verify(self) -> Measure:
        return run(["restic", "check", "--read-data", "-q"], env=self.env)

    def restore(self, dest: Path, tag: str = "v1", verify: bool = False) -> Measure:
        cmd = ["restic", "restore", "latest", "--tag", tag, "--target", dest, "-q"]
        if verify:
            cmd.append("--verify")
        return run(cmd, env=self.env)

    def stored(self) -> int:
        return tree_bytes(self.repo)


def zstd_compress(src: Path, out: Path, threads: int) -> Measure:
    files = [str(p.relative_to(src)) for p in files_under(src)]
    m = run(["zstd", "-3", f"-T{threads}", "-q", "-f", "--output-dir-mirror", out, *files], cwd=src)
    m.extra["stored"] = tree_bytes(out)
    shutil.rmtree(out, ignore_errors=True)
    return m


def b3sum(src: Path, tmp: Path) -> Measure:
    files = [str(p.relative_to(src)) for p in files_under(src)]
    return run(["b3sum", *files], cwd=src)


def version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"unavailable ({e.strerror})"
    return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else "?"
