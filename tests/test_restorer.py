"""Restore into hostile destinations: symlinks planted in DEST never redirect a write. Names
at the byte limit, temp names and leftovers of killed restores, special bits, sparse files
and directory mtimes."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest

import archiver
from archiver import errors, fileio, restorer
from archiver.restorer import HOLE_WINDOW, PORTABLE_TEMP_PREFIX, TEMP_PREFIX, is_temp_name, select, temp_name
from manifests.errors import ManifestError, UnsafePathError
from manifests.model import Entry, Manifest, manifest_id, parse_manifest
from manifests.paths import check_path
from tests.helpers import make_checkpoint, run_cli, tree


@pytest.fixture
def archived(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    r = run_cli("archive", str(ckpt), "--name", "m", "--json")
    assert r.code == 0, r.err
    return r.json()["id"], ckpt


def test_symlinked_directory_in_dest_refused(archived, tmp_path):
    mid, ckpt = archived
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "ckpt").symlink_to(outside, target_is_directory=True)
    r = run_cli("restore", mid, str(dest), "--force")
    assert r.code == 1 and "symlink" in r.err and "Traceback" not in r.err, r.err
    assert list(outside.iterdir()) == []


def test_symlinked_file_in_dest_is_replaced_not_followed(archived, tmp_path):
    mid, ckpt = archived
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    dest = tmp_path / "dest"
    (dest / "ckpt").mkdir(parents=True)
    (dest / "ckpt" / "config.json").symlink_to(victim)
    r = run_cli("restore", mid, str(dest), "--force")
    assert r.code == 0, r.err
    assert victim.read_text() == "do not touch"
    assert not (dest / "ckpt" / "config.json").is_symlink()
    assert tree(dest / "ckpt") == tree(ckpt)


def test_dest_itself_a_symlink_refused(archived, tmp_path):
    mid, _ = archived
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    r = run_cli("restore", mid, str(link))
    assert r.code == 1 and "symlink" in r.err
    assert list(real.iterdir()) == []


def test_existing_file_without_force_is_kept(archived, tmp_path):
    mid, ckpt = archived
    dest = tmp_path / "dest"
    r = run_cli("restore", mid, str(dest))
    assert r.code == 0
    (dest / "ckpt" / "config.json").write_text("local edit")
    r = run_cli("restore", mid, str(dest))
    assert r.code == 2 and "not empty" in r.err
    assert (dest / "ckpt" / "config.json").read_text() == "local edit"


def test_modes_and_mtimes_restored(archived, tmp_path):
    mid, ckpt = archived
    dest = tmp_path / "dest"
    assert run_cli("restore", mid, str(dest)).code == 0
    for p in ckpt.rglob("*"):
        q = dest / "ckpt" / p.relative_to(ckpt)
        assert (q.stat().st_mode & 0o7777) == (p.stat().st_mode & 0o7777), p
        if p.is_file():
            assert q.stat().st_mtime_ns == p.stat().st_mtime_ns


def test_select_includes_parents_and_subtrees():
    es = [Entry("a", "dir", 0o755), Entry("a/b", "dir", 0o755), Entry("a/b/x.json", "file", 0o644),
          Entry("a/c.bin", "file", 0o644), Entry("d.txt", "file", 0o644)]
    assert [e.path for e in select(es, ["a/b"])] == ["a", "a/b", "a/b/x.json"]
    # fnmatch on the whole path: '*' also matches '/'
    assert [e.path for e in select(es, ["*.json"])] == ["a", "a/b", "a/b/x.json"]
    assert [e.path for e in select(es, ["a/*.bin", "d.*"])] == ["a", "a/c.bin", "d.txt"]
    assert [e.path for e in select(es, ["nomatch"])] == []
    assert select(es, []) == es


# --- issue 14: names at the byte limit, temp names, stale temp files, special bits, sparse files,
# --- directory mtimes

ROOT = Path(__file__).resolve().parent.parent


def name_of_255_bytes(ch: str, pad: str = "x") -> str:
    """As many `ch` as fit in 255 UTF-8 bytes, padded with ASCII to exactly 255 bytes."""
    n = 255 // len(ch.encode())
    name = ch * n + pad * (255 - n * len(ch.encode()))
    assert len(name.encode()) == 255
    return name


# One per script and width: 2-byte Latin, Greek, Arabic, Cyrillic; 3-byte CJK, Hangul, Devanagari;
# 4-byte emoji and a CJK extension-B ideograph.
LONG_NAMES = [name_of_255_bytes(c) for c in ("é", "λ", "ع", "ж", "模", "한", "क", "😀", "𠀀")]


def make_long_names(root: Path) -> Path:
    root.mkdir(parents=True)
    for i, n in enumerate(LONG_NAMES):
        (root / n).write_bytes(f"file {i} ".encode() * (i + 1))
    sub = root / name_of_255_bytes("ü")  # a directory at the limit, with a file at the limit inside
    sub.mkdir()
    (sub / name_of_255_bytes("語")).write_bytes(os.urandom(3000))
    (root / "zz-after-them.txt").write_text("restored too")  # sorts after every long name
    return root


@pytest.mark.parametrize("via", ["cli", "api"])
def test_names_at_the_255_byte_limit_restore(tmp_path, monkeypatch, via):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    src = make_long_names(tmp_path / "src" / "names")
    dest = tmp_path / "dest"
    if via == "cli":
        r = run_cli("archive", str(src), "--name", "n", "--json")
        assert r.code == 0, r.err
        mid = r.json()["id"]
        assert run_cli("verify", mid, "--deep").code == 0
        r = run_cli("restore", mid, str(dest))
        assert r.code == 0, r.err
    else:
        mid = archiver.archive([src], name="n").id
        assert archiver.verify([mid], deep=True).ok
        res = archiver.restore(mid, dest)
        assert res.ok, [p.line() for p in res.problems]
        assert res.files == len(LONG_NAMES) + 2
    assert tree(dest / "names") == tree(src)
    assert not [p for p in dest.rglob("*") if is_temp_name(p.name)]


def test_temp_names_are_short_fixed_and_never_an_archivable_name():
    names = {temp_name() for _ in range(200)}
    assert len(names) == 200
    for n in names:
        assert is_temp_name(n) and is_temp_name(PORTABLE_TEMP_PREFIX + n[len(TEMP_PREFIX):])
        assert len(n.encode()) == len(TEMP_PREFIX) + 32 == 46  # whatever the final name's length
        assert "archiver-tmp" in n  # what the older leftover checks in the test suite look for
        with pytest.raises(UnsafePathError):  # archive refuses it, and so does restore: no real name is one
            check_path(n)
        with pytest.raises(UnsafePathError):
            check_path(f"dir/{n}")


@pytest.mark.parametrize("lookalike", [
    TEMP_PREFIX + "0" * 32,                               # right shape, wrong tag
    TEMP_PREFIX + "0123456789abcdef" * 2,
    ".archiver-tmp-" + "0" * 32,                          # no backslash
    ".config.json.0123456789ab.archiver-tmp",             # the old style of temp name
    TEMP_PREFIX + "ABCDEF0123456789" * 2,                 # upper case
    "",
    TEMP_PREFIX,
])
def test_is_temp_name_rejects_lookalikes(lookalike):
    assert not is_temp_name(lookalike)
    good = temp_name()
    for variant in (good + "0", good[:-1], "x" + good, good.upper(), good[:-1] + ("0" if good[-1] != "0" else "1")):
        assert not is_temp_name(variant), variant


def test_filesystem_refusing_backslashes_gets_portable_temp_names(archived, tmp_path, monkeypatch):
    """FAT and exFAT refuse '\\' in names (EINVAL): restore still works there, with the same
    fixed-length tagged name spelled with '-', which cleanup also knows."""
    mid, ckpt = archived
    monkeypatch.setattr(fileio, "unnamed_files", lambda fd: False)  # small files too go by temp name here
    real_open = os.open
    tried = []

    def fat_open(path, flags, mode=0o777, *, dir_fd=None):
        if isinstance(path, str) and "\\" in path:
            tried.append(path)
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fat_open)
    dest = tmp_path / "dest"
    created = []
    real_create = restorer._create_temp
    monkeypatch.setattr(restorer, "_create_temp", lambda *a: created.append(real_create(*a)) or created[-1])
    res = archiver.restore(mid, dest)
    assert res.ok and tried and created
    assert all(name.startswith(PORTABLE_TEMP_PREFIX) and is_temp_name(name) and len(name) == 46
               for name, _ in created)
    assert tree(dest / "ckpt") == tree(ckpt)
    assert not [q for q in dest.rglob("*") if is_temp_name(q.name)]


def test_stale_temp_files_removed_by_next_restore_only_ours(archived, tmp_path):
    mid, ckpt = archived
    dest = tmp_path / "dest"
    assert run_cli("restore", mid, str(dest)).code == 0
    ours = [dest / temp_name(), dest / "ckpt" / temp_name(), dest / "ckpt" / "tokenizer" / temp_name(),
            dest / "ckpt" / "empty_dir" / temp_name(), dest / "ckpt" / temp_name(PORTABLE_TEMP_PREFIX)]
    for i, p in enumerate(ours):
        p.write_bytes(b"partial" * i)
    os.chmod(ours[1], 0o444)  # a kill after the final mode was set
    victim = tmp_path / "victim"
    victim.write_text("keep")
    user_dir = dest / "mine"
    user_dir.mkdir()
    keep = {user_dir / (TEMP_PREFIX + "0" * 32): b"user data",       # looks like ours, wrong tag
            user_dir / ".archiver-tmp-notours": b"user data 2",
            dest / "ckpt" / "notes.archiver-tmp": b"user data 3"}
    for p, data in keep.items():
        p.write_bytes(data)
    link = dest / "ckpt" / temp_name()  # a symlink with our name: not a file of ours, never followed
    link.symlink_to(victim)
    a_dir = dest / temp_name()          # a directory with our name is not a temp file either
    a_dir.mkdir()

    r = run_cli("restore", mid, str(dest), "--force")
    assert r.code == 0, r.err
    assert not any(p.exists() for p in ours)
    assert all(p.read_bytes() == data for p, data in keep.items())
    assert link.is_symlink() and victim.read_text() == "keep" and a_dir.is_dir()
    restored = tree(dest / "ckpt")
    assert {k: v for k, v in restored.items() if k not in (link.name, "notes.archiver-tmp")} == tree(ckpt)


def test_temp_file_of_a_running_restore_is_left_alone(archived, tmp_path):
    """A temp file still locked by a restore in progress is live, not stale."""
    mid, ckpt = archived
    dest = tmp_path / "dest"
    assert run_cli("restore", mid, str(dest)).code == 0
    dir_fd = os.open(dest / "ckpt", os.O_RDONLY | os.O_DIRECTORY)
    try:
        live, fd = restorer._create_temp(dir_fd)
        try:
            assert run_cli("restore", mid, str(dest), "--force").code == 0
            assert (dest / "ckpt" / live).exists()
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
    assert run_cli("restore", mid, str(dest), "--force").code == 0  # unlocked now: a leftover
    assert not (dest / "ckpt" / live).exists()


KILL_AFTER_FIRST_WRITE = """
import os, signal, sys
from archiver import api, fileio, restorer
if sys.argv[3] == "temp-names":
    fileio.unnamed_files = lambda fd: False
real = restorer._write_sparse
def write_then_die(fd, data, pos):
    real(fd, data, pos)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 mid-restore: no cleanup of any kind runs
restorer._write_sparse = write_then_die
api.restore(sys.argv[1], sys.argv[2], force=True)
"""


@pytest.mark.parametrize("how", ["temp-names", "unnamed"])
def test_killed_restore_leftover_removed_by_next_restore(archived, tmp_path, how):
    """Killed mid-write: with temp names, its leftovers are removed by the next restore;
    with unnamed files (O_TMPFILE, where the filesystem has it), nothing is left at all."""
    mid, ckpt = archived
    dest = tmp_path / "dest"
    dest.mkdir()
    if how == "unnamed" and not fileio.unnamed_files(os.open(dest, os.O_RDONLY)):
        pytest.skip("no O_TMPFILE here")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_WRITE, mid, str(dest), how], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    left = [q for q in dest.rglob("*") if is_temp_name(q.name)]
    if how == "unnamed":  # no file of the killed run has any name: not its temp files, not partial files
        assert left == [] and [q for q in dest.rglob("*") if not q.is_dir()] == []
    else:  # small files are restored several at a time, so other temp files may be open at the kill
        assert len(left) >= 1 and any(q.stat().st_size > 0 for q in left)
    r = run_cli("restore", mid, str(dest), "--force")
    assert r.code == 0, r.err
    assert not [q for q in dest.rglob("*") if is_temp_name(q.name)]
    assert tree(dest / "ckpt") == tree(ckpt)


SPECIAL = {"setuid.bin": 0o4755, "setgid.bin": 0o2755, "sticky.bin": 0o1644, "all.bin": 0o7777,
           "shared": 0o1777, "group": 0o2775, "group/inside.bin": 0o6750}


def make_special(root: Path) -> Path:
    root.mkdir(parents=True)
    for rel, mode in SPECIAL.items():
        p = root / rel
        if "." in rel:
            p.write_bytes(rel.encode())
        else:
            p.mkdir()
    for rel, mode in sorted(SPECIAL.items(), key=lambda kv: -kv[0].count("/")):
        os.chmod(root / rel, mode)
    return root


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o7777 for p in root.rglob("*")}


@pytest.mark.parametrize("via", ["cli", "api"])
def test_special_bits_stripped_unless_asked(tmp_path, monkeypatch, via):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    src = make_special(tmp_path / "src" / "s")
    assert modes(src) == SPECIAL  # the bits really are on the source
    mid = archiver.archive([src], name="s").id
    recorded = {e.path.removeprefix("s/"): e.mode for e in archiver.show(mid)[1].entries if e.path != "s"}
    assert recorded == SPECIAL
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    if via == "cli":
        assert run_cli("restore", mid, str(plain)).code == 0
        r = run_cli("restore", mid, str(kept), "--preserve-special-bits")
        assert r.code == 0, r.err
    else:
        assert archiver.restore(mid, plain).ok
        assert archiver.restore(mid, kept, preserve_special_bits=True).ok
    assert modes(plain / "s") == {rel: mode & 0o777 for rel, mode in SPECIAL.items()}
    assert modes(kept / "s") == SPECIAL
    assert tree(plain / "s").keys() == tree(src).keys()


def test_preserve_special_bits_in_restore_help():
    r = run_cli("restore", "--help")
    assert "--preserve-special-bits" in r.out


def allocated(p: Path) -> int:
    return p.stat().st_blocks * 512


def test_sparse_file_restored_sparse(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    size = 64 << 20
    src = tmp_path / "src" / "disk.img"
    src.parent.mkdir()
    head, tail = os.urandom(1 << 20), os.urandom((1 << 20) + 12345)  # tail ends off any block boundary
    with open(src, "wb") as f:
        f.write(head)
        f.seek(size - len(tail))
        f.write(tail)
    (tmp_path / "src" / "ends-in-hole.img").write_bytes(b"data" * 1000 + bytes(3 << 20))
    mid = archiver.archive([tmp_path / "src"], name="sp").id
    dest = tmp_path / "dest"
    assert archiver.restore(mid, dest).ok
    out = dest / "src" / "disk.img"
    assert out.stat().st_size == size
    assert allocated(out) < 8 << 20, allocated(out)  # ~2 MiB of data, not 64 MiB of blocks
    with open(out, "rb") as f:
        assert f.read(len(head)) == head
        f.seek(size - len(tail))
        assert f.read() == tail
    assert blake3.blake3(out.read_bytes()).digest() == blake3.blake3(src.read_bytes()).digest()
    hole_end = dest / "src" / "ends-in-hole.img"
    assert hole_end.read_bytes() == b"data" * 1000 + bytes(3 << 20)  # the size is right: ftruncate
    assert allocated(hole_end) < 1 << 20


def test_small_files_ending_in_a_hole_or_shorter_than_a_window_have_their_size(tmp_path, monkeypatch):
    """Small files (restored in sync batches) are truncated to their size only when they can
    end in a hole: every size around HOLE_WINDOW comes back exact."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    sizes = [0, 1, HOLE_WINDOW - 1, HOLE_WINDOW, HOLE_WINDOW + 1, 3 * HOLE_WINDOW]
    for n in sizes:
        (src / f"zeros-{n}").write_bytes(bytes(n))
        (src / f"ends-in-hole-{n}").write_bytes(b"x" * 100 + bytes(n))
    mid = archiver.archive([src], name="sz").id
    assert archiver.restore(mid, tmp_path / "dest").ok
    assert tree(tmp_path / "dest" / "src") == tree(src)
    for n in sizes:
        assert (tmp_path / "dest" / "src" / f"ends-in-hole-{n}").stat().st_size == 100 + n


@pytest.mark.parametrize("seed", range(8))
def test_write_sparse_any_layout_same_bytes(tmp_path, seed):
    """Zero and data runs of any length, cut into pieces at any offsets: the bytes are exact,
    the size is exact, and long zero runs become holes."""
    rng = random.Random(seed)
    parts = []
    for _ in range(12):
        n = rng.choice([1, 100, HOLE_WINDOW - 1, HOLE_WINDOW, HOLE_WINDOW + 1, 3 * HOLE_WINDOW + 7,
                        rng.randrange(1, 5 * HOLE_WINDOW)])
        parts.append(bytes(n) if rng.random() < 0.5 else rng.randbytes(n))
    parts.append(bytes(rng.choice([0, 5, 4 * HOLE_WINDOW])))  # maybe end in a hole
    parts.insert(rng.randrange(len(parts)), bytes(40 * HOLE_WINDOW))  # at least one long zero run
    content = b"".join(parts)
    cuts = sorted(rng.sample(range(1, len(content)), 9))
    p = tmp_path / "f"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        pos = 0
        for a, b in zip([0] + cuts, cuts + [len(content)]):
            restorer._write_sparse(fd, content[a:b], pos)
            pos += b - a
        os.ftruncate(fd, pos)
    finally:
        os.close(fd)
    assert p.read_bytes() == content
    assert allocated(p) <= len(content) - 30 * HOLE_WINDOW  # the long run is (mostly) a hole


def test_directory_mtimes_recorded_and_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    ckpt = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    (ckpt / "a" / "b").mkdir(parents=True)
    (ckpt / "a" / "b" / "deep.txt").write_text("deep")
    dirs = sorted((p for p in [ckpt, *ckpt.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts))
    for i, d in enumerate(dirs):  # deepest first, so setting one does not disturb another
        os.utime(d, ns=(1_500_000_000_000_000_000 + i, 1_600_000_000_123_456_789 + i * 1_000_003))
    want = {d.relative_to(ckpt.parent).as_posix(): d.stat().st_mtime_ns for d in dirs}
    r = run_cli("archive", str(ckpt), "--name", "d", "--json")
    assert r.code == 0, r.err
    mid = r.json()["id"]
    m = archiver.show(mid)[1]
    assert {e.path: e.mtime_ns for e in m.entries if not e.is_file} == want
    dest = tmp_path / "dest"
    assert run_cli("restore", mid, str(dest)).code == 0
    assert {d: (dest / d).stat().st_mtime_ns for d in want} == want
    assert tree(dest / "ckpt") == tree(ckpt)
    part = tmp_path / "part"
    assert run_cli("restore", mid, str(part), "--include", "ckpt/a/b/deep.txt").code == 0
    assert {d: (part / d).stat().st_mtime_ns for d in ("ckpt", "ckpt/a", "ckpt/a/b")} == \
        {d: want[d] for d in ("ckpt", "ckpt/a", "ckpt/a/b")}


OLD_MANIFEST = (
    '{"entries":[{"mode":493,"path":"ckpt","type":"dir"},'
    '{"blake3":"' + "1" * 64 + '","chunks":[],"format":"","mode":420,"mtime_ns":1732480000000000000,'
    '"path":"ckpt/empty","sha256":"' + "2" * 64 + '","size":0,"type":"file"},'
    '{"mode":448,"path":"ckpt/sub","type":"dir"}],'
    '"format":"archiver-manifest","label":null,"meta":{},"name":"old","parent":null,"version":1}').encode()


def test_manifest_without_directory_mtimes_keeps_its_bytes_and_id():
    m = parse_manifest(OLD_MANIFEST, manifest_id(OLD_MANIFEST))
    assert [e.mtime_ns for e in m.entries if not e.is_file] == [None, None]
    assert m.canonical_json() == OLD_MANIFEST and m.id == manifest_id(OLD_MANIFEST)


@pytest.mark.parametrize("value", [0, -1, 1_732_480_000_123_456_789])
def test_directory_mtime_round_trips(value):
    m = Manifest(name="x", entries=(Entry(path="d", type="dir", mode=0o755, mtime_ns=value),))
    data = m.canonical_json()
    assert b'"mtime_ns":%d' % value in data
    assert parse_manifest(data, m.id).entries[0].mtime_ns == value


@pytest.mark.parametrize("value", ["null", "true", '"1"', "1.5", "[]"])
def test_bad_directory_mtime_refused(value):
    data = b'{"entries":[{"mode":493,"mtime_ns":%s,"path":"d","type":"dir"}],"format":"archiver-manifest",' \
           b'"label":null,"meta":{},"name":"x","parent":null,"version":1}' % value.encode()
    with pytest.raises(ManifestError, match="mtime"):
        parse_manifest(data)


def test_restore_of_manifest_without_directory_mtimes(archived, tmp_path):
    """Archives made before directory mtimes were recorded still restore; their directories
    just keep the time of the restore."""
    mid, ckpt = archived
    with archiver.open_repository() as repo:
        m = repo.load_manifest(mid)
        old = dataclasses.replace(m, entries=tuple(e if e.is_file else dataclasses.replace(e, mtime_ns=None)
                                                   for e in m.entries), parent=None)
        assert b'"type":"dir"' in old.canonical_json() and all(
            "mtime_ns" not in e for e in json.loads(old.canonical_json())["entries"] if e["type"] == "dir")
        old_id = repo.commit_manifest(old).id
    before = time.time_ns()
    dest = tmp_path / "dest"
    r = run_cli("restore", old_id, str(dest))
    assert r.code == 0, r.err
    assert tree(dest / "ckpt") == tree(ckpt)
    assert (dest / "ckpt" / "tokenizer").stat().st_mtime_ns >= before - 10**9


# -- many small files: in parallel, directories synced in a batch before success -------------

@pytest.fixture
def small_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = tmp_path / "small"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(30):
            (src / f"d{d}" / f"f{i}.bin").write_bytes(random.Random(d * 100 + i).randbytes(500 + i))
        (src / f"d{d}" / "empty").write_bytes(b"")
    store, catalog = str(tmp_path / "store"), tmp_path / "cat.db"
    mid = archiver.archive([src], name="small", store=store, catalog=catalog).id
    return src, store, catalog, mid


def _record_syncs(monkeypatch, log: list[tuple[str, int]], *, with_syncfs: bool = True) -> None:
    """Log every file / directory fsync, syncfs and rename of a restore, by inode (syncfs: -1)."""
    real_fsync, real_rename, real_syncfs = os.fsync, os.rename, fileio.syncfs

    def fsync(fd):
        st = os.fstat(fd)
        log.append(("dir-sync" if os.path.stat.S_ISDIR(st.st_mode) else "file-sync", st.st_ino))
        return real_fsync(fd)

    def syncfs(fd):
        if not with_syncfs:
            return False  # a system without syncfs: an fsync each
        log.append(("syncfs", -1))
        return real_syncfs(fd)

    def rename(a, b, *, src_dir_fd=None, dst_dir_fd=None):
        log.append(("rename", os.fstat(dst_dir_fd).st_ino))
        return real_rename(a, b, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    real_link = os.link

    def link(a, b, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):  # an unnamed file put in place
        if dst_dir_fd is not None:  # (the local store links its own objects by path)
            log.append(("rename", os.fstat(dst_dir_fd).st_ino))
        return real_link(a, b, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=follow_symlinks)
    monkeypatch.setattr(restorer.os, "fsync", fsync)
    monkeypatch.setattr(restorer.os, "rename", rename)
    monkeypatch.setattr(restorer.os, "link", link)
    monkeypatch.setattr(fileio, "syncfs", syncfs)


def _check_dirs_synced_after_renames(log: list[tuple[str, int]]) -> None:
    renamed = {ino for k, ino in log if k == "rename"}
    assert len(renamed) == 4
    for ino in renamed:  # each directory is synced after the last file renamed into it
        last_rename = max(i for i, (k, x) in enumerate(log) if k == "rename" and x == ino)
        assert any(k == "syncfs" or (k == "dir-sync" and x == ino) for k, x in log[last_rename:])


def _has_syncfs() -> bool:
    fd = os.open(".", os.O_RDONLY)
    try:
        return fileio.syncfs(fd)
    finally:
        os.close(fd)


@pytest.mark.skipif(not _has_syncfs(), reason="no syncfs on this system")
def test_small_files_are_made_durable_in_batches_before_their_renames(small_tree, tmp_path, monkeypatch):
    src, store, catalog, mid = small_tree
    monkeypatch.setattr(restorer, "SYNC_BATCH_FILES", 32)
    log: list[tuple[str, int]] = []
    _record_syncs(monkeypatch, log)
    res = archiver.restore(mid, tmp_path / "out", store=store, catalog=catalog)
    monkeypatch.undo()
    assert res.ok and res.files == 124 and tree(tmp_path / "out" / "small") == tree(src)
    out = tmp_path / "out"
    mine = {q.stat().st_ino for q in out.rglob("*")} | {out.stat().st_ino, -1}
    log = [(k, ino) for k, ino in log if ino in mine]  # not the store's own writes (its event)
    assert sum(k == "file-sync" for k, _ in log) == 0  # no fsync per file ...
    renames = [i for i, (k, _) in enumerate(log) if k == "rename"]
    syncs = [i for i, (k, _) in enumerate(log) if k == "syncfs"]
    assert len(renames) == 124
    # ... one syncfs per batch of 32 files, each before that batch's renames
    batch_syncs = [i for i in syncs if i < renames[-1]]
    assert len(batch_syncs) == 4
    for n, i in enumerate(batch_syncs):
        assert renames[32 * n] > i and (n == 0 or renames[32 * n - 1] < i)
    _check_dirs_synced_after_renames(log)
    assert sum(k == "dir-sync" for k, _ in log) <= 2 * (4 + 1) + 1  # once per directory, not per file


def test_without_syncfs_each_small_file_is_fsynced_before_its_rename(small_tree, tmp_path, monkeypatch):
    src, store, catalog, mid = small_tree
    log: list[tuple[str, int]] = []
    _record_syncs(monkeypatch, log, with_syncfs=False)
    res = archiver.restore(mid, tmp_path / "out", store=store, catalog=catalog)
    monkeypatch.undo()
    assert res.ok and res.files == 124 and tree(tmp_path / "out" / "small") == tree(src)
    out = tmp_path / "out"
    inode_of = {q.stat().st_ino for q in out.rglob("*") if q.is_file()}
    mine = inode_of | {q.stat().st_ino for q in out.rglob("*") if q.is_dir()} | {out.stat().st_ino}
    log = [(k, ino) for k, ino in log if ino in mine]
    assert {ino for k, ino in log if k == "file-sync"} == inode_of  # every file, by the fallback
    first_rename = min(i for i, (k, _) in enumerate(log) if k == "rename")
    assert all(i < first_rename for i, (k, _) in enumerate(log) if k == "file-sync")  # one batch: all before
    _check_dirs_synced_after_renames(log)


@pytest.mark.parametrize("fail_at", ["sync", "write"])
def test_a_failure_in_a_batch_leaves_no_file_of_it_under_its_final_name(small_tree, tmp_path, monkeypatch,
                                                                         fail_at):
    """A sync that fails (or a write of one file of the batch) renames none of the batch and
    leaves no temp file; files of batches made durable and renamed before stay."""
    src, store, catalog, mid = small_tree
    monkeypatch.setattr(restorer, "SYNC_BATCH_FILES", 32)
    real_sync, real_utime = fileio.sync_together, os.utime
    calls = {"sync": 0, "utime": 0}

    def sync_together(fds, pool=None, **kw):
        calls["sync"] += 1
        if fail_at == "sync" and calls["sync"] == 2:  # the second batch's files
            raise OSError(errno.EIO, "Input/output error")
        return real_sync(fds, pool, **kw)

    def utime(*a, **kw):
        calls["utime"] += 1
        if fail_at == "write" and calls["utime"] == 40:  # in the second batch
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_utime(*a, **kw)
    monkeypatch.setattr(fileio, "sync_together", sync_together)
    monkeypatch.setattr(restorer.os, "utime", utime)
    out = tmp_path / "out"
    with pytest.raises((errors.DestinationError, errors.DestinationFullError)):
        archiver.restore(mid, out, store=store, catalog=catalog)
    monkeypatch.undo()
    restored = [q for q in out.rglob("*") if q.is_file()]
    assert not [q for q in restored if is_temp_name(q.name)]
    assert len(restored) == 32  # the first batch only, each whole
    for q in restored:
        assert q.read_bytes() == (src.parent / q.relative_to(out)).read_bytes()


def test_damaged_small_files_are_reported_never_renamed_and_the_rest_restored(small_tree, tmp_path):
    src, store, catalog, mid = small_tree
    _, m = archiver.show(mid, store=store, catalog=catalog)
    files = [e for e in m.entries if e.type == "file" and e.size]
    bad = files[::25]
    for e in bad:
        h = e.chunks[0].hash
        p = Path(store) / "chunks" / h[:2] / h
        b = p.read_bytes()
        os.chmod(p, 0o644)
        p.write_bytes(b[:-1] + bytes([b[-1] ^ 1]))
    out = tmp_path / "out"
    res = archiver.restore(mid, out, store=store, catalog=catalog)
    assert not res.ok and sorted(p.path for p in res.problems) == sorted(e.path for e in bad)
    assert res.files == 124 - len(bad)
    for e in bad:
        assert not (out / e.path).exists()
    assert not [q for q in out.rglob("*") if is_temp_name(q.name)]
    good = [e for e in files if e not in bad]
    for e in good:
        assert (out / e.path).read_bytes() == (src.parent / e.path).read_bytes()


def _restore_modes(tmp_path: Path, monkeypatch, modes: dict[str, int], umask: int) -> list[int]:
    """Archive small files with `modes`, restore them under `umask` (special bits kept) and
    check every mode came out as recorded; returns the modes fchmod gave regular files."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    src = tmp_path / "src"
    for name, mode in modes.items():
        (src / "sub").mkdir(parents=True, exist_ok=True)
        (src / "sub" / name).write_bytes(name.encode() * 100)
        os.chmod(src / "sub" / name, mode)
    r = run_cli("archive", str(src), "--name", "modes", "--json")
    assert r.code == 0, r.err
    chmodded: list[int] = []
    real_fchmod = os.fchmod

    def fchmod(fd: int, mode: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # files only (directories get theirs at the end)
            chmodded.append(mode)
        real_fchmod(fd, mode)
    monkeypatch.setattr(os, "fchmod", fchmod)
    old = os.umask(umask)
    try:
        res = archiver.restore(r.json()["id"], tmp_path / "dest", preserve_special_bits=True)
    finally:
        os.umask(old)
    assert res.ok
    for name, mode in modes.items():
        assert (tmp_path / "dest" / "src" / "sub" / name).stat().st_mode & 0o7777 == mode, name
    return chmodded


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_small_files_get_their_modes_whatever_the_umask_with_no_fchmod_when_created_so(tmp_path, monkeypatch, umask):
    """A small file whose mode has no special bit and lets its owner read is created with that
    mode (what the umask takes is put back at once) and needs no fchmod after writing; any
    other (no owner read: a cleanup could not see its lock) is created 0o600 and fchmodded."""
    modes = {"a": 0o644, "b": 0o600, "c": 0o444, "d": 0o755, "e": 0o640, "f": 0o200, "g": 0o070, "h": 0o4755}
    monkeypatch.setattr(fileio, "unnamed_files", lambda fd: False)  # the temp-name protocol (unnamed: below)
    created = []
    real_create = restorer._create_temp
    monkeypatch.setattr(restorer, "_create_temp", lambda *a: created.append(a[1:]) or real_create(*a))
    chmodded = _restore_modes(tmp_path, monkeypatch, modes, umask)
    plain = [m for m in modes.values() if not m & 0o7000 and m & 0o400]
    assert sorted(m for (m,) in created) == sorted(plain + [0o600] * (len(modes) - len(plain)))
    put_back = [m for m in plain if m & umask]  # the umask took bits: one fchmod at creation
    assert sorted(chmodded) == sorted(put_back + [0o200, 0o070, 0o4755] + [0o600] * (3 if umask & 0o600 else 0))


def test_a_temp_file_a_cleanup_took_before_the_lock_is_made_again(tmp_path, monkeypatch):
    """A concurrent cleanup may unlink a temp file between its creation and our lock: the
    locked file then has no link, and a fresh temp file is made under a new name."""
    d = tmp_path / "d"
    d.mkdir()
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    real_flock = restorer.fcntl.flock
    taken = []

    def flock(fd: int, op: int) -> None:
        if not taken:  # the cleanup wins the first race
            name = next(n for n in os.listdir(d) if is_temp_name(n))
            os.unlink(name, dir_fd=dfd)
            taken.append(name)
        real_flock(fd, op)
    monkeypatch.setattr(restorer.fcntl, "flock", flock)
    try:
        tmp, fd = restorer._create_temp(dfd, 0o644)
        assert taken and tmp != taken[0] and os.listdir(d) == [tmp]
        assert os.fstat(fd).st_nlink == 1 and stat.S_IMODE(os.fstat(fd).st_mode) == 0o644
        os.close(fd)
    finally:
        os.close(dfd)


def test_a_one_chunk_file_is_read_as_the_stream_reads_it(tmp_path):
    """The one-chunk shortcut of a small-file restore yields what stream_file yields (the
    chunk, or its damage) and refuses a file BLAKE3 that is not the chunk's, as it does."""
    from concurrent.futures import ThreadPoolExecutor

    from archiver.repository import Repository
    from archiver.settings import Settings
    from tests.test_repository import file_entry, save

    def answer(read):
        try:
            return [(p.ref, p.data, type(p.error).__name__ if p.error else None) for p in read()]
        except errors.FileHashError as err:
            return str(err)

    with Repository.open(Settings.resolve(str(tmp_path / "store"), tmp_path / "cat.db"), create=True) as repo:
        data, other = os.urandom(5000), os.urandom(700)
        e = file_entry("a", [data], [save(repo, data)])
        gone = file_entry("b", [other], [save(repo, other)])
        next((tmp_path / "store").rglob(gone.chunks[0].hash + "*")).unlink()
        flipped = dataclasses.replace(e, chunks=(dataclasses.replace(e.chunks[0], hash="1" * 64),))
        cases = [e, dataclasses.replace(e, sha256="0" * 64), dataclasses.replace(e, blake3="0" * 64), gone, flipped]
        with ThreadPoolExecutor(2) as pool:
            got = [answer(lambda: restorer._one_chunk(repo, x)) for x in cases]
            assert got == [answer(lambda: repo.stream_file(x, pool, 2, keep_going=True, sha256=False)) for x in cases]
    assert got[0][0][1] == data and got[1] == got[0] and isinstance(got[2], str)
    assert [g[0][2] for g in got[3:]] == ["ObjectMissingError", "ObjectMissingError"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_unnamed_small_files_get_their_modes_whatever_the_umask(tmp_path, monkeypatch, umask):
    """Small files made with no name (O_TMPFILE) are created with their mode less its special
    bits (what the umask takes is put back at once); special bits are set after the write,
    which would clear them. No temp name is made for any of them."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        if not fileio.unnamed_files(fd):
            pytest.skip("no O_TMPFILE here")
    finally:
        os.close(fd)
    modes = {"a": 0o644, "b": 0o600, "c": 0o444, "d": 0o755, "f": 0o200, "g": 0o070, "h": 0o4755, "i": 0o2750}
    monkeypatch.setattr(restorer, "_create_temp", lambda *a: pytest.fail("a temp name was made"))
    chmodded = _restore_modes(tmp_path, monkeypatch, modes, umask)
    put_back = [m & 0o777 for m in modes.values() if m & 0o777 & umask]
    assert sorted(chmodded) == sorted(put_back + [m for m in modes.values() if m & 0o7000])


def test_an_unnamed_file_takes_no_name_that_exists_unless_forced(small_tree, tmp_path):
    """The link that names an unnamed file never replaces anything: a file in the way is
    refused without --force and replaced with it; a directory in the way is always refused."""
    src, store, catalog, mid = small_tree
    out = tmp_path / "out"
    (out / "small" / "d1").mkdir(parents=True)
    (out / "small" / "d1" / "f3.bin").write_bytes(b"in the way")
    with pytest.raises(errors.DestinationError):
        archiver.restore(mid, out, store=store, catalog=catalog)  # not empty: refused before any write
    res = archiver.restore(mid, out, store=store, catalog=catalog, force=True)
    assert res.ok and tree(out / "small") == tree(src)
    assert not [q for q in out.rglob("*") if is_temp_name(q.name)]
    (out / "small" / "d2" / "f4.bin").unlink()
    (out / "small" / "d2" / "f4.bin").mkdir()
    with pytest.raises(errors.DestinationError, match="a directory is in the way"):
        archiver.restore(mid, out, store=store, catalog=catalog, force=True)


def test_a_batch_is_synced_while_the_tasks_write_the_next_one(small_tree, tmp_path, monkeypatch):
    """The sync of one batch overlaps the writing of the next (its wait for the disk is not
    added to the restore's time): the first batch's sync does not return until a file of the
    second batch has been written, which a sync made before the next batch is handed to the
    tasks would never see (bounded wait). Every file still comes out whole, each batch's
    files are synced before any of them is in place, and the directories are synced last."""
    src, store, catalog, mid = small_tree
    monkeypatch.setattr(restorer, "SYNC_BATCH_FILES", 32)
    real_sync, real_utime = fileio.sync_together, os.utime
    import threading
    utimes = {"n": 0}
    second_batch_written = threading.Event()
    overlapped: list[bool] = []

    def utime(*a, **kw):
        utimes["n"] += 1
        if utimes["n"] > 32:  # a file of the second batch (the first has 32)
            second_batch_written.set()
        return real_utime(*a, **kw)

    def sync_together(fds, pool=None, **kw):
        if not overlapped and len(fds) == 32:  # the first batch's files
            overlapped.append(second_batch_written.wait(10))
        return real_sync(fds, pool, **kw)
    monkeypatch.setattr(fileio, "sync_together", sync_together)
    monkeypatch.setattr(restorer.os, "utime", utime)
    log: list[tuple[str, int]] = []
    _record_syncs(monkeypatch, log)
    res = archiver.restore(mid, tmp_path / "out", store=store, catalog=catalog)
    monkeypatch.undo()
    assert overlapped == [True]
    assert res.ok and res.files == 124 and tree(tmp_path / "out" / "small") == tree(src)
    first_rename = min(i for i, (k, _) in enumerate(log) if k == "rename")
    assert any(k in ("syncfs", "file-sync") for k, _ in log[:first_rename])  # the first batch synced first
    _check_dirs_synced_after_renames(log)


def _set_default_acl(d: Path) -> bool:
    """Give directory `d` the default ACL user::rwx, group::r-x, other::--- (its raw xattr
    form), so files created in it take their mode from it, not from the umask. False where
    this filesystem or system has no ACLs."""
    import struct
    undefined = 0xFFFFFFFF
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, undefined)
                                          for tag, perm in ((0x01, 7), (0x04, 5), (0x20, 0)))
    try:
        os.setxattr(d, "system.posix_acl_default", acl)
    except (OSError, AttributeError):
        return False
    return True


def test_unnamed_files_get_their_recorded_modes_with_or_without_a_default_acl(tmp_path, monkeypatch):
    """An unnamed file's mode is looked at and put right: under a plain umask and under a
    directory whose default ACL replaces the umask, every recorded mode comes out exactly."""
    modes = {"a": 0o644, "b": 0o600, "c": 0o755, "d": 0o4755}
    _restore_modes(tmp_path / "plain", monkeypatch, modes, 0o022)
    with_acl = tmp_path / "acl"
    (with_acl / "dest").mkdir(parents=True)
    if not _set_default_acl(with_acl / "dest"):
        pytest.skip("no default ACLs here")
    _restore_modes(with_acl, monkeypatch, modes, 0o000)  # the ACL gives 0o640 for 0o644: put right


def test_an_empty_file_whose_recorded_blake3_is_not_that_of_no_bytes_is_reported_not_restored(small_tree, tmp_path):
    """A file of no chunks is written with nothing, but only if its recorded BLAKE3 is that of
    no bytes: otherwise it is a damaged entry, reported, and never appears under its name."""
    src, store, catalog, mid = small_tree
    with archiver.open_repository(store, catalog) as repo:
        m = repo.load_manifest(mid)
        bad = dataclasses.replace(m, parent=None, entries=tuple(
            dataclasses.replace(e, blake3="1" * 64) if e.is_file and e.path.endswith("d1/empty") else e
            for e in m.entries))
        bad_id = repo.commit_manifest(bad).id
    out = tmp_path / "out"
    res = archiver.restore(bad_id, out, store=store, catalog=catalog)
    assert not res.ok and [(p.path, p.kind) for p in res.problems] == [("small/d1/empty", res.problems[0].kind)]
    assert "hash" in res.problems[0].kind
    assert not (out / "small" / "d1" / "empty").exists() and (out / "small" / "d0" / "empty").read_bytes() == b""
    assert res.files == 123


@pytest.mark.parametrize("n", [0, 1, 4096, HOLE_WINDOW - 1])
def test_data_shorter_than_a_hole_window_is_one_write_resumed_if_short(tmp_path, monkeypatch, n):
    """A piece shorter than a window (most small files) is written with one write, and a short
    write is resumed: every byte lands, zeros included (no whole window, so no hole)."""
    content = (bytes(n // 2) + random.Random(n).randbytes(n))[:n]
    real_write = os.write
    calls = []

    def short_write(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(memoryview(data)[:max(1, len(data) // 3)]))
    p = tmp_path / "f"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        monkeypatch.setattr(restorer.os, "write", short_write)
        restorer._write_sparse(fd, content, 0)
        monkeypatch.undo()
    finally:
        os.close(fd)
    assert p.read_bytes() == content
    assert (calls[:1] == [n]) if n else calls == []


def test_a_batch_is_synced_through_directories_opened_before_its_files_were_made(small_tree, tmp_path, monkeypatch):
    """syncfs(2) reports a write-back error only if it happened after the fd it is called on
    was opened (the filesystem's error sequence is sampled at open: `fileio.syncfs`), so the
    syncfs that makes a batch durable must go through a directory opened before the batch's
    files were made. Since a batch is synced while the next one is written, the directories
    then open include those opened for the next batch: the one taken for each filesystem is
    the first opened, never one opened after the batch was written (whose syncfs could miss
    an error already seen elsewhere, and report a batch durable that is not)."""
    src, store, catalog, mid = small_tree
    monkeypatch.setattr(restorer, "SYNC_BATCH_FILES", 32)
    import itertools
    import threading
    seq, lock = itertools.count(), threading.Lock()
    opened_at: dict[int, int] = {}  # directory fd -> when it was (last) opened
    made_at: dict[int, int] = {}  # file fd -> when it was (last) made
    late: list[tuple[int, int]] = []
    checked = {"batches": 0}
    real_open_dir, real_unnamed, real_temp = restorer._open_dir, fileio.open_unnamed, restorer._create_temp
    real_sync = fileio.sync_together

    def open_dir(*a, **kw):
        fd = real_open_dir(*a, **kw)
        with lock:
            opened_at[fd] = next(seq)
        return fd

    def open_unnamed(dir_fd, mode):
        fd = real_unnamed(dir_fd, mode)
        if fd is not None:
            with lock:
                made_at[fd] = next(seq)
        return fd

    def create_temp(dir_fd, mode=0o600):
        tmp, fd = real_temp(dir_fd, mode)
        with lock:
            made_at[fd] = next(seq)
        return tmp, fd

    def sync_together(fds, pool=None, *, within=None):
        if within is not None:  # a batch of files, synced through the directories `within`
            checked["batches"] += 1
            through = {os.fstat(fd).st_dev: fd for fd in within}
            with lock:
                late.extend((fd, through[os.fstat(fd).st_dev]) for fd in fds
                            if opened_at[through[os.fstat(fd).st_dev]] > made_at[fd])
        return real_sync(fds, pool, within=within)
    monkeypatch.setattr(restorer, "_open_dir", open_dir)
    monkeypatch.setattr(restorer, "_create_temp", create_temp)
    monkeypatch.setattr(fileio, "open_unnamed", open_unnamed)
    monkeypatch.setattr(fileio, "sync_together", sync_together)
    res = archiver.restore(mid, tmp_path / "out", store=store, catalog=catalog)
    monkeypatch.undo()
    assert res.ok and res.files == 124 and tree(tmp_path / "out" / "small") == tree(src)
    assert checked["batches"] == 4 and late == []


def test_a_umask_changed_by_another_thread_during_a_restore_does_not_change_the_modes(tmp_path, monkeypatch):
    """The recorded modes come out exactly whatever the process's umask is when each file is
    made: a Python API caller's other thread may set it (say to 0o077 while it writes private
    files) while a restore runs. Here progress, called on the restore's file tasks after each
    file's write, sets it once the first file is written: the files made after that must
    still get their recorded 0o640, not 0o600, or the restore must not report success."""
    from archiver.progress import Progress
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(200):
        (src / "sub" / f"f{i}").write_bytes(b"x" * (100 + i))
        os.chmod(src / "sub" / f"f{i}", 0o640)
    store, catalog = str(tmp_path / "store"), tmp_path / "cat.db"
    mid = archiver.archive([src], name="m", store=store, catalog=catalog).id

    class UmaskSetMeanwhile(Progress):
        def advance(self, n: int) -> None:
            os.umask(0o077)
            super().advance(n)
    old = os.umask(0o022)
    try:
        res = archiver.restore(mid, tmp_path / "out", store=store, catalog=catalog, progress=UmaskSetMeanwhile())
    finally:
        os.umask(old)
    got = {p.name: p.stat().st_mode & 0o7777 for p in (tmp_path / "out" / "src" / "sub").iterdir()}
    assert len(got) == 200
    assert not res.ok or set(got.values()) == {0o640}


@pytest.mark.packs
def test_one_chunk_files_read_as_views_of_their_packs_restore_exactly(tmp_path, monkeypatch):
    """Small files of one chunk or none, read from packs as views of their spans, go through
    `_stage_unnamed` (where the filesystem has O_TMPFILE): bytes, modes, mtimes and holes come
    out as archived; a packed chunk damaged in its pack is reported for its file, which does
    not appear, while the others are restored."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    rng = random.Random(6)
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    files = {"a/empty": (b"", 0o640), "a/small.bin": (rng.randbytes(3000), 0o600),
             "a/raw300k.bin": (rng.randbytes(300 * 1024), 0o755),
             "b/holes.bin": (rng.randbytes(HOLE_WINDOW) + bytes(2 * HOLE_WINDOW) + rng.randbytes(HOLE_WINDOW)
                             + bytes(2 * HOLE_WINDOW), 0o644),
             "b/text.txt": (b"config line\n" * 900, 0o444), "b/victim.bin": (rng.randbytes(5000), 0o644)}
    for i, (rel, (data, mode)) in enumerate(sorted(files.items())):
        (src / rel).write_bytes(data)
        os.chmod(src / rel, mode)
        os.utime(src / rel, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i * 7))
    store, catalog = tmp_path / "store", tmp_path / "cat.db"
    mid = archiver.archive([src], name="v", store=str(store), catalog=catalog).id
    probe = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not fileio.unnamed_files(probe):
            pytest.skip("no O_TMPFILE here")
    finally:
        os.close(probe)
    lean: list[str] = []
    real = restorer._stage_unnamed

    def counted(repo, mid, dir_fd, name, e, *rest):
        lean.append(e.path)
        return real(repo, mid, dir_fd, name, e, *rest)
    monkeypatch.setattr(restorer, "_stage_unnamed", counted)
    res = archiver.restore(mid, tmp_path / "out", store=str(store), catalog=catalog)
    assert res.ok and res.files == len(files)
    assert sorted(lean) == sorted(f"src/{rel}" for rel in files)
    out = tmp_path / "out" / "src"
    assert tree(out) == tree(src)
    for rel in files:
        assert (out / rel).stat().st_mtime_ns == (src / rel).stat().st_mtime_ns
    holes = (out / "b" / "holes.bin").stat()
    assert holes.st_size == 6 * HOLE_WINDOW and holes.st_blocks * 512 <= 4 * HOLE_WINDOW  # its zeros are holes
    packed = [p for p in store.rglob("*") if p.is_file() and files["b/victim.bin"][0] in p.read_bytes()]
    assert len(packed) == 1  # stored raw, inside one pack
    body = bytearray(packed[0].read_bytes())
    body[body.index(files["b/victim.bin"][0]) + 100] ^= 1
    os.chmod(packed[0], 0o644)
    packed[0].write_bytes(bytes(body))
    res = archiver.restore(mid, tmp_path / "again", store=str(store), catalog=catalog)
    assert not res.ok and [(p.kind, p.path) for p in res.problems] == [("corrupt-chunk", "src/b/victim.bin")]
    again = tmp_path / "again" / "src"
    assert not (again / "b" / "victim.bin").exists()
    assert {k: v for k, v in tree(again).items() if k != "b/victim.bin"} == \
        {k: v for k, v in tree(src).items() if k != "b/victim.bin"}


def test_empty_files_are_written_while_the_reads_are_planned(tmp_path, monkeypatch):
    """The plan of the reads (`Repository.plan_reads`) is made on a thread of its own while
    whole sync batches of empty files, which need no read, are written: here the plan waits
    (bounded) until an empty file has been made, and every file still comes out whole, data
    files after the plan."""
    import threading
    from archiver.repository import Repository
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = tmp_path / "small"
    for d in range(2):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(9):
            (src / f"d{d}" / f"empty{i}").write_bytes(b"")
            (src / f"d{d}" / f"f{i}.bin").write_bytes(random.Random(d * 10 + i).randbytes(700 + i))
    store, catalog = str(tmp_path / "store"), tmp_path / "cat.db"
    mid = archiver.archive([src], name="small", store=store, catalog=catalog).id
    monkeypatch.setattr(restorer, "SYNC_BATCH_FILES", 8)  # 18 empty files: two whole batches ahead of the plan
    made_empty, plan_done = threading.Event(), threading.Event()
    order: list[str] = []
    real_plan, real_stage = Repository.plan_reads, restorer._stage_unnamed

    def plan_reads(self, refs):
        waited = made_empty.wait(10)
        order.append(f"plan (an empty file made before it: {waited})")
        try:
            return real_plan(self, refs)
        finally:
            plan_done.set()

    def stage(repo, mid, dir_fd, name, e, got, *rest):
        if got is not None and not plan_done.is_set():
            order.append(f"{e.path} read before the plan")
        real_stage(repo, mid, dir_fd, name, e, got, *rest)
        if not e.chunks:
            made_empty.set()
    monkeypatch.setattr(Repository, "plan_reads", plan_reads)
    monkeypatch.setattr(restorer, "_stage_unnamed", stage)
    probe = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        unnamed = fileio.unnamed_files(probe)
    finally:
        os.close(probe)
    res = archiver.restore(mid, tmp_path / "out", store=store, catalog=catalog)
    assert res.ok and res.files == 36 and tree(tmp_path / "out" / "small") == tree(src)
    if unnamed:
        assert order == ["plan (an empty file made before it: True)"]


def test_a_failed_plan_of_the_reads_fails_the_restore_and_names_no_data_file(small_tree, tmp_path, monkeypatch):
    """An error while the reads are planned (on its own thread) is the restore's error: it is
    raised, not lost or hung on, and no file that needs a chunk gets its name."""
    from archiver.repository import Repository
    src, store, catalog, mid = small_tree

    def plan_reads(self, refs):
        raise errors.ArchiverError("the catalog could not be read")
    monkeypatch.setattr(Repository, "plan_reads", plan_reads)
    with pytest.raises(errors.ArchiverError, match="catalog could not be read"):
        archiver.restore(mid, tmp_path / "out", store=store, catalog=catalog)
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.stat().st_size > 0] == []


@pytest.mark.packs
def test_restores_through_one_repository_leave_no_catalog_connection_behind(small_tree, tmp_path):
    """The reads are planned on a thread of the restore's own ("restore-head"), which opens a
    catalog read connection of its own (`Catalog._reader`, one per thread): it must be closed
    when the plan is made, not kept until the repository is closed, or an API user restoring
    many archives through one Repository runs out of file descriptors."""
    from archiver import api
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd")
    src, store, catalog, mid = small_tree
    repo = api.open_repository(store, catalog, read_only=True)
    try:
        assert archiver.restore(mid, tmp_path / "out0", repo=repo).ok
        before = len(os.listdir("/proc/self/fd"))
        for k in range(1, 5):
            res = archiver.restore(mid, tmp_path / f"out{k}", repo=repo)
            assert res.ok and tree(tmp_path / f"out{k}" / "small") == tree(src)
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        repo.close()


def test_a_sync_batch_of_files_in_many_directories_keeps_at_most_dir_fds_kept_open(tmp_path, monkeypatch):
    """A sync batch may hold more files (SYNC_BATCH_FILES, 2048) than the directory fds kept
    open between renames and sync (DIR_FDS_KEPT, 512): a batch whose files lie in more
    directories than that is cut, so no more than DIR_FDS_KEPT directories are ever open
    (here 32 and 8, the same 4:1, with 40 directories of one file each)."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd")
    src = tmp_path / "many"
    for d in range(40):
        (src / f"d{d:02}").mkdir(parents=True)
        (src / f"d{d:02}" / "f.bin").write_bytes(random.Random(d).randbytes(100 + d))
    store, catalog = str(tmp_path / "store"), tmp_path / "cat.db"
    mid = archiver.archive([src], name="many", store=store, catalog=catalog).id
    monkeypatch.setattr(restorer, "SYNC_BATCH_FILES", 32)
    monkeypatch.setattr(restorer, "DIR_FDS_KEPT", 8)
    below = str(tmp_path / "out" / "many") + "/"
    most = [0]
    real = restorer._open_dir

    def open_dir(root_fd, parts, *, create):
        fd = real(root_fd, parts, create=create)
        n = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{name}").startswith(below) and \
                    stat.S_ISDIR(os.stat(f"/proc/self/fd/{name}").st_mode)
            except OSError:
                pass
        most[0] = max(most[0], n)
        return fd
    monkeypatch.setattr(restorer, "_open_dir", open_dir)
    res = archiver.restore(mid, tmp_path / "out", store=store, catalog=catalog)
    assert res.ok and res.files == 40 and tree(tmp_path / "out" / "many") == tree(src)
    assert most[0] <= 8 + 1  # (+1: the directory thread's one open directory)


def test_a_failed_restore_makes_no_more_directories(tmp_path, monkeypatch):
    """The directories are made on a thread of their own (`_make_dirs`): once the restore has
    failed (here its small files' writing), that thread stops rather than go on making every
    remaining directory of the archive in DEST while the error waits to be reported."""
    import threading
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = tmp_path / "dirs"
    for d in range(200):
        (src / f"d{d:03}").mkdir(parents=True)
    (src / "f.bin").write_bytes(b"data" * 100)
    store, catalog = str(tmp_path / "store"), tmp_path / "cat.db"
    mid = archiver.archive([src], name="dirs", store=store, catalog=catalog).id
    failed = threading.Event()
    real = restorer._open_dir

    def open_dir(root_fd, parts, *, create):
        if threading.current_thread().name.startswith("restore-head"):
            failed.wait(10)
            time.sleep(0.002)
        return real(root_fd, parts, create=create)

    def restore_small(*args, **kwargs):
        failed.set()
        raise errors.DestinationFullError("dirs/f.bin")
    monkeypatch.setattr(restorer, "_open_dir", open_dir)
    monkeypatch.setattr(restorer, "_restore_small", restore_small)
    with pytest.raises(errors.DestinationFullError):
        archiver.restore(mid, tmp_path / "out", store=store, catalog=catalog)
    made = [p for p in (tmp_path / "out" / "dirs").iterdir()] if (tmp_path / "out" / "dirs").exists() else []
    assert len(made) < 50


def _fail_mkdir_of(monkeypatch, name: str, code: int) -> None:
    """os.mkdir of `name` (relative to its dir_fd, as restore makes directories) fails with `code`."""
    real = os.mkdir

    def mkdir(path, mode=0o777, *, dir_fd=None):
        if os.fspath(path) == name:
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real(path, mode, dir_fd=dir_fd)
    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOSPC, errno.EROFS])
def test_a_directory_that_cannot_be_made_fails_the_restore_with_one_line(small_tree, tmp_path, monkeypatch, code):
    """A directory the directory thread (or a file's writer) cannot make (mkdir fails: no
    permission, no space, a read-only filesystem) fails the restore once, with one line and a
    non-zero exit; no file appears in it and no temp name is left anywhere."""
    src, store, catalog, mid = small_tree
    _fail_mkdir_of(monkeypatch, "d2", code)
    out = tmp_path / "out"
    monkeypatch.setenv("ARCHIVER_STORE", store)
    monkeypatch.setenv("ARCHIVER_CATALOG", str(catalog))
    r = run_cli("restore", mid, str(out))
    assert r.code != 0
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1, r.err
    assert os.strerror(code) in lines[0] or "disk full" in lines[0]
    assert not (out / "small" / "d2").exists()
    assert [p for p in out.rglob("*") if is_temp_name(p.name)] == []


@pytest.mark.parametrize("planted", ["file", "symlink"])
def test_force_over_a_tree_with_a_file_or_symlink_where_a_directory_goes_refuses_it(small_tree, tmp_path, planted):
    """With --force over an existing tree, a regular file or a symlink (to a directory outside
    DEST) where the archive has a directory is refused whichever thread reaches it first (the
    directory thread or a file's writer): an UnsafePathError, nothing written through the
    symlink, the file in the way left as it is, no temp name left anywhere."""
    src, store, catalog, mid = small_tree
    out = tmp_path / "out"
    assert archiver.restore(mid, out, store=store, catalog=catalog).ok
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = out / "small" / "d1"
    for p in victim.iterdir():
        p.unlink()
    victim.rmdir()
    if planted == "file":
        victim.write_bytes(b"not a directory")
    else:
        victim.symlink_to(outside)
    with pytest.raises(errors.UnsafePathError, match="small/d1"):
        archiver.restore(mid, out, store=store, catalog=catalog, force=True)
    assert list(outside.iterdir()) == []
    if planted == "file":
        assert victim.read_bytes() == b"not a directory"
    else:
        assert victim.is_symlink()
    assert [p for p in out.rglob("*") if is_temp_name(p.name)] == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_directory_that_cannot_be_made_is_the_one_the_error_names(small_tree, tmp_path, monkeypatch, code):
    """Directories are made by their own thread and, racing it, by the writer of the first
    sync batch with a file in them: a mkdir that fails names that directory, not DEST nor a
    file of an earlier batch (written, waiting for its sync) that has nothing wrong with it."""
    src, store, catalog, mid = small_tree
    monkeypatch.setattr(restorer, "SYNC_BATCH_FILES", 8)  # batches of d0, d1 files pending when d2 is reached
    _fail_mkdir_of(monkeypatch, "d2", code)
    with pytest.raises(errors.DestinationError) as got:
        archiver.restore(mid, tmp_path / "out", store=store, catalog=catalog)
    assert got.value.path == "small/d2" and os.strerror(code) in str(got.value)
    assert not (tmp_path / "out" / "small" / "d2").exists()


FD_LIMITED_RESTORE = """
import resource, sys
from archiver import api
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[4]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
res = api.restore(sys.argv[1], sys.argv[2], store=sys.argv[3], catalog=sys.argv[5])
print(res.ok, res.files)
"""


@pytest.mark.packs
def test_a_restore_under_a_low_open_file_limit_stays_inside_it(tmp_path, monkeypatch):
    """Sync batches (up to 2048 files), the directories kept open until their sync, the
    directory and plan threads: all sized by `_batch_limits` from the open-file limit, so a
    restore of many small files (some empty) in many directories runs under a limit of 128."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = tmp_path / "many"
    for d in range(60):
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(8):
            (src / f"d{d:02}" / f"f{i}").write_bytes(random.Random(d * 10 + i).randbytes(200 + i) if i % 3 else b"")
    store, catalog = str(tmp_path / "store"), tmp_path / "cat.db"
    mid = archiver.archive([src], name="many", store=store, catalog=catalog).id
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", FD_LIMITED_RESTORE, mid, str(tmp_path / "out"), store, "128",
                        str(catalog)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["True", "480"], p.stderr
    assert tree(tmp_path / "out" / "many") == tree(src)


@pytest.mark.packs
def test_two_restores_at_once_through_one_repository_both_come_out_whole(tmp_path, monkeypatch):
    """Two restores of two archives at the same time, in two threads, through one Repository:
    each plans its reads on its own thread (the plan is the repository's, so the second
    replaces the first's), makes its directories on another, reads views of pack spans;
    both come out byte for byte, every time."""
    import threading
    from archiver import api
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    store, catalog = str(tmp_path / "store"), tmp_path / "cat.db"
    srcs, mids = [], []
    for k in range(2):
        src = tmp_path / f"src{k}"
        for d in range(6):
            (src / f"d{d}").mkdir(parents=True)
            for i in range(40):
                (src / f"d{d}" / f"f{i}").write_bytes(random.Random(k * 1000 + d * 50 + i).randbytes(50 + 37 * i)
                                                      if i % 5 else b"")
        srcs.append(src)
        mids.append(archiver.archive([src], name=f"a{k}", store=store, catalog=catalog).id)
    repo = api.open_repository(store, catalog, read_only=True)
    try:
        results: dict[int, object] = {}

        def run(k):
            try:
                results[k] = archiver.restore(mids[k], tmp_path / f"out{k}", repo=repo)
            except BaseException as e:  # reported below
                results[k] = e
        for _ in range(2):
            threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            for k in range(2):
                res = results[k]
                assert not isinstance(res, BaseException), res
                assert res.ok and res.files == 240
                assert tree(tmp_path / f"out{k}" / f"src{k}") == tree(srcs[k])
                shutil.rmtree(tmp_path / f"out{k}")
    finally:
        repo.close()


def _writable_file_on_main_thread(fd: int) -> bool:
    """A restored file's own descriptor closed by the driver (not a store read's, not a task's,
    not the unnamed-file probe's, which has no name)."""
    import fcntl
    import threading
    st = os.fstat(fd)
    return (threading.current_thread() is threading.main_thread() and stat.S_ISREG(st.st_mode)
            and st.st_nlink > 0 and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY)


def test_a_ctrl_c_right_after_a_big_file_is_closed_is_an_interrupt_and_closes_nothing_twice(tmp_path, monkeypatch):
    """A file above SMALL_FILE is written by the driver (`_restore_file`) and closed once
    renamed into place: a Ctrl-C landing just after that close must come out as
    KeyboardInterrupt (the CLI's "interrupted"), not EBADF from the `finally` closing it
    again, and the file named is whole."""
    from tests.helpers import InterruptAfterClose, open_fds
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = tmp_path / "big"
    src.mkdir()
    (src / "w.bin").write_bytes(random.Random(7).randbytes(restorer.SMALL_FILE + 4096))
    store, catalog = str(tmp_path / "store"), tmp_path / "cat.db"
    mid = archiver.archive([src], name="big", store=store, catalog=catalog).id
    before = open_fds()
    repo = archiver.open_repository(store, catalog, read_only=True)
    try:
        ctrl_c = InterruptAfterClose(_writable_file_on_main_thread)
        monkeypatch.setattr(restorer.os, "close", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            archiver.restore(mid, tmp_path / "out", repo=repo, processes=0)
        monkeypatch.setattr(restorer.os, "close", ctrl_c.real)
    finally:
        repo.close()
    assert ctrl_c.fired and open_fds() <= before
    assert (tmp_path / "out" / "big" / "w.bin").read_bytes() == (src / "w.bin").read_bytes()


def test_a_ctrl_c_right_after_a_parent_directory_is_closed_is_an_interrupt_and_closes_nothing_twice(tmp_path,
                                                                                                    monkeypatch):
    """`_open_dir` walks down closing each parent once the child is open: a Ctrl-C landing
    just after that close is KeyboardInterrupt, nothing left open, nothing closed twice."""
    from tests.helpers import InterruptAfterClose, open_fds
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = open_fds()
        ctrl_c = InterruptAfterClose(lambda fd: True)  # the dup of root_fd, closed once "a" is open
        monkeypatch.setattr(restorer.os, "close", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            restorer._open_dir(root_fd, ["a", "b", "c"], create=True)
        monkeypatch.setattr(restorer.os, "close", ctrl_c.real)
        assert ctrl_c.fired and open_fds() <= before
    finally:
        os.close(root_fd)
    assert (tmp_path / "a").is_dir()


@pytest.mark.slow
def test_a_ctrl_c_right_after_any_close_of_a_restore_is_an_interrupt(tmp_path, monkeypatch):
    """Every descriptor the driver closes during a restore (a big file, small ones, empty
    ones, nested directories), one restore each: a Ctrl-C landing right after that close
    comes out as KeyboardInterrupt, never EBADF or another error from a cleanup closing it
    again, and leaves nothing open."""
    from tests.helpers import interrupt_each_close, open_fds
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    (src / "big.bin").write_bytes(random.Random(1).randbytes(restorer.SMALL_FILE + 4096))
    for d in range(2):
        (src / f"d{d}" / "e").mkdir(parents=True)
        for i in range(8):
            (src / f"d{d}" / ("e" if i % 2 else "") / f"f{i}").write_bytes(random.Random(10 * d + i).randbytes(40 + i))
    store, catalog = str(tmp_path / "store"), tmp_path / "cat.db"
    mid = archiver.archive([src], name="m", store=store, catalog=catalog).id
    before = open_fds()

    def run(n: int) -> None:
        archiver.restore(mid, tmp_path / f"out{n}", store=store, catalog=catalog, processes=0)

    def check(n: int) -> None:
        assert open_fds() <= before, (n, {f: os.readlink(f"/proc/self/fd/{f}") for f in open_fds() - before})
    n = interrupt_each_close(monkeypatch, restorer, run, check)
    assert n > 20 and tree(tmp_path / f"out{n}" / "ckpt") == tree(src)
