"""archiver/scan.py: PATHs -> the sorted list of entries to archive; refusals up front."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import archiver.scan as scan_mod
from archiver.errors import ArchiverError, NotFoundError, SourceChangedError, UsageError
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
    st = os.stat(f)
    assert scan([f]) == [Source("model.safetensors", f, False, 7, 0o640, st.st_dev, st.st_ino)]
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


def test_top_level_symlink_is_recorded_or_followed(tmp_path):
    """Symlinks were refused before issue 11; now a link is recorded as a link (its target
    never followed), or with dereference followed to the regular file it names; a link that
    restore could not recreate inside DEST (absolute, escaping) is refused unless followed."""
    target = tmp_path / "real"
    target.write_text("x")
    link = tmp_path / "link"
    link.symlink_to("real")
    (src,) = scan([link])
    assert src.is_link and src.link == "real" and not src.followed
    (src,) = scan([link], dereference=True)
    assert src.followed and not src.is_link and src.size == 1
    assert (src.dev, src.ino) == (target.stat().st_dev, target.stat().st_ino)  # the target's identity
    (tmp_path / "sub").mkdir()
    dlink = tmp_path / "dlink"
    dlink.symlink_to("sub")
    (src,) = scan([dlink], dereference=True)  # a link to a directory is never followed
    assert src.is_link and not src.is_dir
    absolute = tmp_path / "abs"
    absolute.symlink_to(target)
    with pytest.raises(ArchiverError, match="is absolute") as ei:
        scan([absolute])
    assert ei.value.remedy == "dereference"
    (src,) = scan([absolute], dereference=True)
    assert src.followed


def test_nested_symlinks_are_recorded_with_their_targets(tmp_path):
    ckpt = build_tree(tmp_path)
    (ckpt / "sub" / "deeper" / "ln").symlink_to("../../a.bin")
    (ckpt / "dangling").symlink_to("missing")
    by_path = {s.path: s for s in scan([ckpt])}
    assert by_path["ckpt/sub/deeper/ln"].link == "../../a.bin"
    assert by_path["ckpt/dangling"].link == "missing"
    deref = {s.path: s for s in scan([ckpt], dereference=True)}
    assert deref["ckpt/sub/deeper/ln"].followed and deref["ckpt/dangling"].is_link  # dangling: kept as a link
    (ckpt / "escape").symlink_to("../../outside")
    with pytest.raises(ArchiverError, match="leaves the destination"):
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


def test_a_refused_source_is_refused_input_with_its_path_and_reason(tmp_path, monkeypatch):
    from archiver.errors import RefusedSourceError
    from tests.helpers import run_cli
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok.bin").write_bytes(b"fine")
    os.mkfifo(d / "pipe")
    with pytest.raises(RefusedSourceError) as got:
        scan([d])
    assert (got.value.what, got.value.path, got.value.exit_code) == ("special file", str(d / "pipe"), 2)
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARCHIVER_STORE", str(tmp_path / "store"))
    r = run_cli("archive", str(d), "--name", "m")
    assert r.code == 2 and r.out == "" and r.err.count("\n") == 1 and "refusing special file" in r.err, r.err
    assert run_cli("list", "--json").json() == []  # nothing recorded


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

    def access(p, mode, *, dir_fd=None):  # running as root, access(2) says yes to everything
        whole = Path(os.readlink(f"/proc/self/fd/{dir_fd}")) / p if dir_fd is not None else Path(p)
        return False if whole == victim else real_access(p, mode, dir_fd=dir_fd)
    monkeypatch.setattr(scan_mod.os, "access", access)
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


# -- the scanned inode is the one read: swaps after the scan are refused, never followed ----------

SWAPS = ["symlink-to-secret", "hardlink-to-secret", "other-file", "directory", "removed"]


def swap(path: Path, kind: str, secret: Path) -> None:
    """Replace `path` the ways a hostile owner of the tree could between scan and read."""
    if kind == "other-file":  # same bytes, another inode (made before the old one is freed: no number reuse)
        fresh = path.with_name(path.name + ".new")
        fresh.write_bytes(secret.read_bytes())
        os.replace(fresh, path)
        return
    if path.is_dir() and not path.is_symlink():
        os.rename(path, path.with_name(path.name + ".old"))
    else:
        path.unlink()
    if kind == "symlink-to-secret":
        path.symlink_to(secret)
    elif kind == "hardlink-to-secret":
        os.link(secret, path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        assert kind == "removed"


@pytest.fixture
def secret(tmp_path):
    s = tmp_path / "outside" / "secret"
    s.parent.mkdir()
    s.write_bytes(b"not yours to archive")
    return s


def test_sources_carry_the_scanned_identity_and_their_directory(tmp_path):
    ckpt = build_tree(tmp_path)
    by = {s.path: s for s in scan([ckpt])}
    for s in by.values():
        st = os.lstat(s.abspath)
        assert (s.dev, s.ino) == (st.st_dev, st.st_ino)
        parent = s.path.rpartition("/")[0]
        assert (s.parent is None) if s.path == "ckpt" else (s.parent is by[parent])
    fd = scan_mod.open_source(by["ckpt/sub/deeper/w.txt"])
    try:
        assert os.read(fd, 10) == b"ww" and os.get_blocking(fd)  # O_NONBLOCK is cleared for reading
    finally:
        os.close(fd)
    fd = scan_mod.open_source(by["ckpt/sub"])
    try:
        assert sorted(os.listdir(fd)) == ["deeper", "z.txt"]
    finally:
        os.close(fd)


@pytest.mark.parametrize("which,kind", [(w, k) for w in ("ckpt/sub/z.txt", "top-level file") for k in SWAPS] +
                         [("ckpt/sub", k) for k in ("symlink-to-secret", "directory", "removed")])
def test_swap_after_scan_is_refused(tmp_path, secret, kind, which):
    """A file, a directory on its way, or a PATH itself replaced after the scan: opening the
    scanned entry fails with one line; the replacement is never opened."""
    ckpt = build_tree(tmp_path)
    if which == "top-level file":
        src = scan([ckpt / "b.bin"])[0]
        victim = ckpt / "b.bin"
    else:
        src = {s.path: s for s in scan([ckpt])}["ckpt/sub/z.txt"]
        victim = ckpt / which.removeprefix("ckpt/")
    if which == "ckpt/sub":  # a look-alike directory whose z.txt is the secret
        kind_target = secret.parent
        (secret.parent / "z.txt").write_bytes(secret.read_bytes())
        swap(victim, kind, kind_target)
    else:
        swap(victim, kind, secret)
    with pytest.raises(SourceChangedError, match="changed while it was being archived") as ei:
        os.close(scan_mod.open_source(src))
    assert str(victim) in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("kind", ["symlink-to-secret", "hardlink-to-secret", "other-file", "fifo"])
def test_swap_in_the_window_before_open_is_caught_on_the_descriptor(tmp_path, secret, monkeypatch, kind):
    """The swap lands after the look (stat) and before the open: O_NOFOLLOW refuses a symlink,
    O_NONBLOCK keeps a FIFO from blocking, and fstat of what was opened refuses the rest."""
    ckpt = build_tree(tmp_path)
    src = {s.path: s for s in scan([ckpt])}["ckpt/sub/z.txt"]
    victim = ckpt / "sub" / "z.txt"
    real_open = os.open
    opened: list[str] = []

    def racing(name, flags, mode=0o777, *, dir_fd=None):
        if os.fsdecode(name) == "z.txt" and "z.txt" not in opened:
            swap(victim, kind, secret)
        opened.append(os.fsdecode(name))
        return real_open(name, flags, mode, dir_fd=dir_fd)
    monkeypatch.setattr(scan_mod.os, "open", racing)
    with pytest.raises(SourceChangedError, match="changed while it was being archived"):
        os.close(scan_mod.open_source(src))
    assert opened[-1] == "z.txt"  # the race really was in the open window


def test_scan_lists_the_directory_it_saw_not_what_its_path_names_now(tmp_path, secret, monkeypatch):
    """A subdirectory swapped for a symlink between being classified and being listed: the
    scan refuses instead of walking into the symlink's target."""
    ckpt = build_tree(tmp_path)
    real = scan_mod.open_source

    def racing(src):
        if src.path == "ckpt/sub":
            swap(ckpt / "sub", "symlink-to-secret", secret.parent)
        return real(src)
    monkeypatch.setattr(scan_mod, "open_source", racing)
    with pytest.raises(SourceChangedError, match="sub changed while .*symlink"):
        scan([ckpt])


def test_scan_records_each_files_stat_before_any_read(tmp_path):
    """Source.seen: the (dev, ino, size, mtime, ctime) the scan saw, which the files cache
    compares without a second stat (a followed link's: its target's)."""
    ckpt = build_tree(tmp_path)
    (ckpt / "link.bin").symlink_to("a.bin")
    for s in scan([ckpt], dereference=True):
        if s.is_dir:
            assert s.seen is None
            continue
        st = os.stat(s.abspath)  # follows the link to its target
        assert s.seen == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def test_dirfds_open_each_directory_once_and_still_refuse_a_swapped_file(tmp_path, monkeypatch):
    ckpt = build_tree(tmp_path)
    srcs = {s.path: s for s in scan([ckpt])}
    opened: list[str] = []
    real = scan_mod.open_source

    def counting(src, dirs=None):
        if src.is_dir:
            opened.append(src.path)
        return real(src, dirs)
    monkeypatch.setattr(scan_mod, "open_source", counting)
    dirs = scan_mod.DirFds()
    try:
        for name, want in (("ckpt/a.bin", b"a" * 10), ("ckpt/b.bin", b"b" * 100), ("ckpt/sub/z.txt", b"z")):
            fd = scan_mod.open_source(srcs[name], dirs)
            with os.fdopen(fd, "rb") as f:
                assert f.read() == want
        assert sorted(opened) == ["ckpt", "ckpt/sub"]  # each directory reached (and checked) once
        (ckpt / "empty.txt").rename(ckpt / "kept.txt")  # kept: its inode number is not reused
        (ckpt / "empty.txt").write_bytes(b"")  # another inode under the scanned name
        with pytest.raises(SourceChangedError):
            scan_mod.open_source(srcs["ckpt/empty.txt"], dirs)
    finally:
        dirs.close()


def test_dirfds_beyond_their_limit_walk_the_chain(tmp_path):
    ckpt = build_tree(tmp_path)
    srcs = {s.path: s for s in scan([ckpt])}
    dirs = scan_mod.DirFds(limit=0)
    fd = scan_mod.open_source(srcs["ckpt/sub/deeper/w.txt"], dirs)
    with os.fdopen(fd, "rb") as f:
        assert f.read() == b"ww"
    assert dirs.get(srcs["ckpt/sub"]) is None
    dirs.close()


@pytest.mark.parametrize("when", ["after-scan", "in-the-open-window"])
@pytest.mark.parametrize("kind", ["symlink-to-secret", "hardlink-to-secret", "other-file", "fifo"])
def test_open_file_refuses_a_swap_with_one_open_and_one_fstat(tmp_path, secret, monkeypatch, kind, when):
    """open_file (a small file's one open(2), relative to its held directory, no look first):
    a swap after the scan, or just before the open, is refused on the descriptor (O_NOFOLLOW
    for a symlink, O_NONBLOCK so a FIFO does not block, fstat for the rest); nothing is read
    and no descriptor is left open."""
    ckpt = build_tree(tmp_path)
    src = {s.path: s for s in scan([ckpt])}["ckpt/sub/z.txt"]
    victim = ckpt / "sub" / "z.txt"
    dirs = scan_mod.DirFds()
    try:
        dirs.get(src.parent)
        if when == "after-scan":
            swap(victim, kind, secret)
        else:
            real_open = os.open

            def racing(name, flags, mode=0o777, *, dir_fd=None):
                if os.fsdecode(name) == "z.txt":
                    swap(victim, kind, secret)
                return real_open(name, flags, mode, dir_fd=dir_fd)
            monkeypatch.setattr(scan_mod.os, "open", racing)
        held = set(os.listdir("/proc/self/fd"))
        with pytest.raises(SourceChangedError, match="z.txt changed while it was being archived"):
            scan_mod.open_file(src, dirs)
        monkeypatch.undo()
        assert set(os.listdir("/proc/self/fd")) <= held
    finally:
        dirs.close()
    fd, st = scan_mod.open_file(scan([ckpt / "a.bin"])[0], None)  # no held directory: walked, looked at
    os.close(fd)
    assert st.st_size == 10


def test_scanned_sources_are_the_ones_init_makes(tmp_path):
    """The scan sets its Sources' fields in their `__dict__` (cheaper than a frozen dataclass's
    `__init__`): each equals, hashes and pickles as `Source(...)` of the same fields, in the same
    field order, and stays frozen."""
    import dataclasses
    import pickle
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"x" * 10)
    (root / "e").write_bytes(b"")
    os.symlink("d/f", root / "l")
    got = scan([root])
    assert [s.path for s in got] == ["t", "t/d", "t/d/f", "t/e", "t/l"]
    for s in got:
        made = Source(**{f.name: getattr(s, f.name) for f in dataclasses.fields(Source)})
        assert s == made and hash(s) == hash(made) and repr(s) == repr(made)
        assert list(vars(s)) == list(vars(made))  # field order: pickles and compares alike
        assert (s.seen, s.link, s.followed, s.blob) == (made.seen, made.link, made.followed, made.blob)
        assert pickle.loads(pickle.dumps(s)) == made
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.size = 1  # type: ignore[misc]
    f = got[2]
    st = os.lstat(root / "d" / "f")
    assert (f.size, f.is_dir, f.parent, f.mtime_ns) == (10, False, got[1], None)
    assert f.seen == (st.st_dev, st.st_ino, 10, st.st_mtime_ns, st.st_ctime_ns)
    assert got[1].mtime_ns == os.lstat(root / "d").st_mtime_ns and got[1].seen is None


def test_a_ctrl_c_right_after_a_parent_is_closed_is_an_interrupt_and_closes_nothing_twice(tmp_path, monkeypatch):
    """open_source walks down closing each parent once its child is open: a Ctrl-C landing
    just after that close must come out as KeyboardInterrupt, with no descriptor left open
    and none closed twice (closing it again raised EBADF instead of the interrupt)."""
    from tests.helpers import InterruptAfterClose, open_fds
    ckpt = build_tree(tmp_path)
    by = {s.path: s for s in scan([ckpt])}
    before = open_fds()
    ctrl_c = InterruptAfterClose(lambda fd: True)  # the first parent closed, "ckpt"'s parent
    monkeypatch.setattr(scan_mod.os, "close", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        scan_mod.open_source(by["ckpt/sub/deeper/w.txt"])
    monkeypatch.undo()
    assert ctrl_c.fired and open_fds() <= before
