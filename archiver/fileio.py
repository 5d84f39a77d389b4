"""Small file-descriptor helpers shared by the local store and restore: whole writes, and
making many files durable together (restore's batches)."""
from __future__ import annotations

import errno
import functools
import os
import sys
from concurrent.futures import Executor
from typing import Any, Callable, Sequence

# Largest single write. Why: for one big write(2) the kernel (ext4, large folios) fills
# the page cache with large folios, whose allocation cost ~0.6 CPU-s more per GiB
# written here (fresh high-order pages, see bench/RESULTS.md, "CPU per GiB (issue 12)")
# than 128 KiB writes; the extra system calls cost nothing measurable (64 per 8 MiB).
WRITE_PIECE = 128 * 1024


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write may write less than asked; loop until everything is written, at most
    WRITE_PIECE bytes per call (memoryview slices: nothing is copied)."""
    view = memoryview(data).cast("B")  # count bytes, whatever the item format
    while view:
        view = view[os.write(fd, view[:WRITE_PIECE]):]


# A batch of fewer files than this is fsynced file by file: syncfs(2) flushes everything
# dirty on the whole filesystem (other programs' writes too), which only pays off when it
# replaces many fsyncs.
SYNCFS_FROM = 16


@functools.cache
def _libc(name: str) -> Any:  # cached: the lookup, not any state
    """libc's function `name` (Linux; errno kept for ctypes.get_errno), or None where there
    is none (not Linux, or a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here: most commands never sync a batch, and start-up time counts
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


def _libc_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs, or None where there is none."""
    fn = _libc("syncfs")
    if fn is not None:
        import ctypes
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
    return fn


# Filesystems whose syncfs(2) writes every dirty page and inode to disk and commits the
# journal (f_type of statfs(2)). Anything else (FUSE mounts such as sshfs, s3fs or rclone,
# whose syncfs asks the daemon to save nothing; CIFS, which flushes on the server only at
# fsync; NFS; overlayfs) gets an fsync per file, which every filesystem honours.
SYNCFS_FILESYSTEMS = {
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0xF2F52010: "f2fs",
    0x01021994: "tmpfs",
}
SYNCFS_KERNEL = (5, 8)  # before 5.8, syncfs did not report write-back errors


def _kernel() -> tuple[int, ...]:
    """This Linux kernel's version, e.g. (6, 18); () if it cannot be read."""
    head = os.uname().release.split("-", 1)[0].split(".")[:2]
    return tuple(int(x) for x in head) if all(x.isdigit() for x in head) else ()


def _fs_magic(fd: int) -> int | None:
    """f_type of fstatfs(2) of `fd`'s filesystem (Linux), None if it cannot be read."""
    fstatfs = _libc("fstatfs")
    if fstatfs is None:
        return None
    import ctypes
    buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on 64-bit Linux
    if fstatfs(ctypes.c_int(fd), buf) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF  # f_type: the struct's first word


def syncfs_is_durable(fd: int) -> bool:
    """True if syncfs(2) on `fd`'s filesystem makes its files durable and reports their
    write-back errors: Linux >= 5.8 and a local filesystem of SYNCFS_FILESYSTEMS."""
    return _kernel() >= SYNCFS_KERNEL and _fs_magic(fd) in SYNCFS_FILESYSTEMS


def syncfs(fd: int) -> bool:
    """syncfs(2) on the filesystem that holds `fd`: every dirty page and inode of it is
    written and the journal committed, and a write-back error of any file since `fd` was
    opened is reported, as OSError. False, having done nothing, where this system has no
    syncfs or where syncfs is not known to do that (`syncfs_is_durable`): the caller then
    fsyncs each file."""
    fn = _libc_syncfs()
    if fn is None or not syncfs_is_durable(fd):
        return False
    if fn(fd) != 0:
        import ctypes
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(err, os.strerror(err))
    return True


def sync_together(fds: Sequence[int], pool: Executor | None = None, *, within: Sequence[int] | None = None) -> int:
    """Make every file (or directory) of `fds` durable before returning: one syncfs per
    filesystem they lie on when there are SYNCFS_FROM or more of them, else (or where there
    is no syncfs) one fsync each, in `pool` so their waits overlap. Why: on this kind of VM
    one fsync per small file costs more CPU than writing it. `within`: the directories that
    hold all of `fds` (fewer to stat to find their filesystems). Raises OSError if any sync
    fails; returns the number of sync calls made."""
    if not fds:
        return 0
    if len(fds) >= SYNCFS_FROM:
        one_per_fs: dict[int, int] = {}
        for fd in (fds if within is None else within):
            one_per_fs.setdefault(os.fstat(fd).st_dev, fd)
        done = 0
        for fd in one_per_fs.values():
            if not syncfs(fd):
                break
            done += 1
        else:
            return done
    if pool is None:
        for fd in fds:
            os.fsync(fd)
    else:
        for _ in pool.map(os.fsync, fds):
            pass
    return len(fds)


def open_unnamed(dir_fd: int, mode: int) -> int | None:
    """A new regular file in directory `dir_fd` that has no name yet (O_TMPFILE, Linux),
    open for writing, with `mode` less the umask; None where this system or filesystem
    cannot make one (the caller writes under a temp name instead). Why: such a file is
    named (`link_unnamed`) only once it is whole and durable, so a damaged or partial file
    never appears under any name, a killed run leaves nothing behind, and it costs one
    directory change instead of two (create, rename)."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        return None
    try:
        return os.open(".", os.O_WRONLY | flag | getattr(os, "O_CLOEXEC", 0), mode, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


def link_unnamed(fd: int, dir_fd: int, name: str) -> None:
    """Give the unnamed file `fd` (`open_unnamed`) the name `name` in `dir_fd`: linkat(2)
    through /proc/self/fd (linkat's AT_EMPTY_PATH needs a capability). Never replaces
    anything: FileExistsError if the name is taken, by anything (a symlink is not followed)."""
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


def unnamed_files(dir_fd: int) -> bool:
    """True if files can be made in `dir_fd` with `open_unnamed` and named with
    `link_unnamed` (O_TMPFILE on its filesystem, and /proc mounted): checked once per run
    by making one such file and closing it (it vanishes, never having had a name)."""
    fd = open_unnamed(dir_fd, 0o600)
    if fd is None:
        return False
    try:
        return os.path.exists(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
