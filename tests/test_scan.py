"""archiver/scan.py: PATHs -> the sorted list of entries to archive; refusals up front."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import archiver.scan as scan_mod
from archiver.errors import ArchiverError, NotFoundError, UsageError
from archiver.scan import Source, scan


def build_tree(root: Path) -> Path:
    ckpt = root / "ckpt"
    (ckpt / "sub" / "deeper").mkdir(parents=True)
    (ckpt / "empty_dir").mkdir()
    (ckpt / "b.bin").write_bytes(b"b" * 100)
    (ckpt / "a.bin").write_bytes(b"a" * 10)
    (ckpt / "empty.txt").write_bytes(b"")
    (ckpt / ".gitattributes").write_text("*.bin filter=lfs\n")
    (ckpt / "sub" / "z.txt").write_text("z")
    (ckpt / "sub" / "deeper" / "w.txt").write_text("ww")
    (ckpt / "sub-file").write_text("s")  # sorts between 'sub' and 'sub/...' by plain string order
    os.chmod(ckpt / "a.bin", 0o600)
    os.chmod(ckpt / "sub", 0o750)
    os.chmod(ckpt / "b.bin", 0o755)
    return ckpt


def test_directory_tree(tmp_path):
    ckpt = build_tree(tmp_path)
    out = scan([ckpt])
    paths = [s.path for s in out]
    assert paths == sorted(paths)
    assert paths == [
        "ckpt", "ckpt/.gitattributes", "ckpt/a.bin", "ckpt/b.bin", "ckpt/empty.txt", "ckpt/empty_dir",
        "ckpt/sub", "ckpt/sub-file", "ckpt/sub/deeper", "ckpt/sub/deeper/w.txt", "ckpt/sub/z.txt",
    ]
    by = {s.path: s for s in out}
    assert by["ckpt"].is_dir and by["ckpt/empty_dir"].is_dir and by["ckpt/sub/deeper"].is_dir
    assert not by["ckpt/empty.txt"].is_dir and by["ckpt/empty.txt"].size == 0
    assert by["ckpt/b.bin"].size == 100 and by["ckpt/a.bin"].size == 10
    assert by["ckpt/a.bin"].mode == 0o600 and by["ckpt/b.bin"].mode == 0o755 and by["ckpt/sub"].mode == 0o750
    assert all(s.size == 0 for s in out if s.is_dir)
    assert by["ckpt/sub/z.txt"].abspath == ckpt / "sub" / "z.txt"
    assert all(s.abspath.is_absolute() for s in out)


def test_file_argument_uses_its_basename(tmp_path, monkeypatch):
    f = tmp_path / "dir" / "model.safetensors"
    f.parent.mkdir()
    f.write_bytes(b"x" * 7)
    os.chmod(f, 0o640)
    assert scan([f]) == [Source("model.safetensors", f, False, 7, 0o640)]
    monkeypatch.chdir(tmp_path / "dir")
    assert scan(["model.safetensors"])[0].abspath == f  # relative PATHs are made absolute
    assert scan(["./model.safetensors"])[0].path == "model.safetensors"


def test_several_paths_sorted_together(tmp_path):
    (tmp_path / "zz").write_text("1")
    d = tmp_path / "aa"
    d.mkdir()
    (d / "x").write_text("2")
    assert [s.path for s in scan([tmp_path / "zz", d])] == ["aa", "aa/x", "zz"]


def test_empty_directory_argument(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    out = scan([d])
    assert [(s.path, s.is_dir, s.size) for s in out] == [("empty", True, 0)]


def test_no_paths():
    with pytest.raises(UsageError, match="nothing to archive"):
        scan([])


def test_top_level_symlink_refused(tmp_path):
    target = tmp_path / "real"
    target.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ArchiverError, match="symlink"):
        scan([link])
    dlink = tmp_path / "dlink"
    dlink.symlink_to(tmp_path)
    with pytest.raises(ArchiverError, match="symlink"):
        scan([dlink])


def test_nested_symlink_refused(tmp_path):
    ckpt = build_tree(tmp_path)
    (ckpt / "sub" / "deeper" / "ln").symlink_to(ckpt / "a.bin")
    with pytest.raises(ArchiverError, match="symlink") as ei:
        scan([ckpt])
    assert "ln" in str(ei.value)
    (ckpt / "sub" / "deeper" / "ln").unlink()
    (ckpt / "dangling").symlink_to(tmp_path / "missing")
    with pytest.raises(ArchiverError, match="symlink"):
        scan([ckpt])


def test_fifo_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    fifo = d / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ArchiverError, match="special file"):
        scan([d])
    with pytest.raises(ArchiverError, match="special file"):
        scan([fifo])


def test_missing_path(tmp_path):
    with pytest.raises(NotFoundError, match="no such file or directory"):
        scan([tmp_path / "nope"])


def test_same_basename_twice_collides(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub / "ckpt").mkdir(parents=True)
        (tmp_path / sub / "ckpt" / "w.bin").write_text(sub)
    with pytest.raises(UsageError, match="cannot archive path.*collides") as ei:
        scan([tmp_path / "x" / "ckpt", tmp_path / "y" / "ckpt"])
    assert "\n" not in str(ei.value)
    (tmp_path / "x" / "f").write_text("1")
    (tmp_path / "y" / "f").write_text("2")
    with pytest.raises(UsageError, match="collides"):
        scan([tmp_path / "x" / "f", tmp_path / "y" / "f"])


def test_same_path_twice_collides(tmp_path):
    f = tmp_path / "f"
    f.write_text("1")
    with pytest.raises(UsageError, match="collides"):
        scan([f, f])


def test_case_collision_inside_tree(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "A.txt").write_text("1")
    (d / "a.txt").write_text("2")
    if len(os.listdir(d)) != 2:
        pytest.skip("case-insensitive filesystem")
    with pytest.raises(UsageError, match="collides"):
        scan([d])


def test_unreadable_file(tmp_path, monkeypatch):
    ckpt = build_tree(tmp_path)
    victim = ckpt / "sub" / "z.txt"
    real_access = os.access
    monkeypatch.setattr(scan_mod.os, "access", lambda p, mode: False if Path(p) == victim else real_access(p, mode))
    with pytest.raises(ArchiverError, match="permission denied") as ei:
        scan([ckpt])
    assert str(victim) in str(ei.value)
    with pytest.raises(ArchiverError, match="permission denied"):
        scan([victim])
    monkeypatch.undo()
    assert len(scan([ckpt])) == 11


@pytest.mark.parametrize("name", ["back\\slash", "tab\there", "new\nline", "bell\x07", "del\x7f"])
def test_unarchivable_names(tmp_path, name):
    d = tmp_path / "d"
    d.mkdir()
    (d / name).write_text("x")
    with pytest.raises(UsageError, match="cannot archive path") as ei:
        scan([d])
    assert "\n" not in str(ei.value)
    with pytest.raises(UsageError, match="cannot archive path"):
        scan([d / name])


def test_non_utf8_name_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    try:
        fd = os.open(os.path.join(os.fsencode(d), b"bad\xff"), os.O_CREAT | os.O_WRONLY)
    except OSError:
        pytest.skip("filesystem refuses non-UTF-8 names")
    os.close(fd)
    with pytest.raises(ArchiverError, match="not valid UTF-8"):
        scan([d])


def test_unicode_and_spaces_accepted(tmp_path):
    d = tmp_path / "модель v1"
    d.mkdir()
    (d / "权重 ☃.bin").write_text("x")
    assert [s.path for s in scan([d])] == ["модель v1", "модель v1/权重 ☃.bin"]
