"""restore: rebuild files byte-for-byte from a manifest, or refuse.

All manifest paths are checked before anything is written. Files are created relative
to directory file descriptors opened with O_NOFOLLOW, so a symlink planted in DEST
cannot redirect a write. Each file is written under a temporary name, its chunks are
fetched in parallel, decoded and re-hashed, the whole file is hashed (BLAKE3 + SHA-256),
fsynced, and only then renamed into place: a damaged file never appears under its final
name. A damaged file is reported and skipped; the others are still restored.

Temporary names are fixed-length and hold a backslash, which no archived name can (see
`temp_name`), so any name archive accepts restores and no real file is ever taken for
one; temp files left by a killed restore are removed by the next restore into DEST.
All-zero stretches are skipped with a seek, so sparse files stay sparse. Directory modes
and mtimes are set last, deepest first, once everything inside them is written.
Small files are restored several at a time (one alone cannot keep the workers busy) and
in sync batches: a batch is written under temp names, made durable together (one syncfs(2)
per filesystem on Linux, else an fsync each, in parallel), and only then renamed into
place; each directory they were renamed into is synced once, after its last rename and
before the restore reports success. Where the filesystem has O_TMPFILE (Linux: ext4, xfs,
btrfs, tmpfs), a small file has no name at all until then: it is written unnamed and
linked into place after its batch's sync (the link never replaces anything: see
`_link_into_place`), so a killed restore leaves nothing behind and no temp name, lock or
rename is needed. Big files are fsynced one by one before their rename.
setuid, setgid and sticky bits are dropped unless asked for: a restore should not
create privileged executables from a store someone else may have written to."""
from __future__ import annotations

import errno
import fcntl
import fnmatch
import os
import resource
import secrets
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import blake3

from archiver import events, fileio
from archiver.errors import (ArchiverError, DestinationError, DestinationFullError, FileHashError,
                             IntegrityError, UnsafePathError, translated)
from archiver.fileio import write_all
from archiver.parallel import batches, default_workers, window_for
from archiver.problems import Outcome, Problem, chunk_problem, file_hash_problem
from archiver.progress import Progress
from archiver import thaw as thaw_mod
from archiver.repository import Piece, Repository
from archiver.thaw import ThawOptions
from manifests.model import Entry, Manifest
from archiver.urls import local_path
from manifests.paths import check_link, check_paths

if TYPE_CHECKING:  # imported where used: the pool's modules (multiprocessing) cost a restore on threads
    from archiver import procrestore, workerprocs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
WRITEBACK_EVERY = 64 * 1024 * 1024
# Files up to this size are restored in parallel across files, their directories synced in a batch.
SMALL_FILE = 1 << 20
# Small files are made durable together, in batches of at most this many files / bytes
# (`_restore_small`); and at most this many directory fds are kept open between their renames and their sync.
# Why 2048 files: a syncfs costs a device flush (and flushes whatever else is dirty on the
# filesystem) whatever the batch holds, so the waits grow with the number of batches; a
# bigger batch only lengthens the tail (the last batch's sync and links, not overlapped).
SYNC_BATCH_FILES = 2048
SYNC_BATCH_BYTES = 64 * 1024 * 1024
DIR_FDS_KEPT = 512
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
# Holes are made per aligned window of this size: big enough that checking costs nothing
# next to the write (bytes.startswith is a memcmp that stops at the first non-zero byte),
# small enough to keep every hole of a sparse file that matters.
HOLE_WINDOW = 64 * 1024
_ZERO_WINDOW = bytes(HOLE_WINDOW)
# ".archiver-tmp\" + 16 hex nonce + 16 hex tag (BLAKE3 of the nonce): 46 ASCII bytes whatever
# the final name's length. Archive and restore refuse a backslash in any path, so no archived
# name has this form, and the tag tells our leftovers from a user's file that only looks alike.
# Filesystems that refuse a backslash in names (FAT, exFAT) get the same name with a '-'.
TEMP_PREFIX = ".archiver-tmp\\"
PORTABLE_TEMP_PREFIX = ".archiver-tmp-"
_TEMP_TAG_KEY = b"archiver restore temp file\0"
_EMPTY_BLAKE3 = blake3.blake3().hexdigest()


@dataclass
class RestoreResult(Outcome):
    id: str
    dest: str
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    thaw: dict | None = None  # cold chunks needed and their thaw state (S3 stores), see archiver.thaw
    links: int = 0
    files_by_processes: int = 0  # of `files`, restored on worker processes (archiver.procrestore)


def select(entries: Iterable[Entry], include: Iterable[str]) -> list[Entry]:
    """Entries whose whole path matches any glob (fnmatch: `*` also matches '/'), or that lie
    below a matching directory, plus the directories that contain them."""
    globs = list(include)
    entries = list(entries)
    if not globs:
        return entries
    def hit(p: str) -> bool:
        parts = p.split("/")
        return any(fnmatch.fnmatchcase("/".join(parts[:i]), g) for g in globs for i in range(1, len(parts) + 1))
    chosen = {e.path for e in entries if hit(e.path)}
    parents = {"/".join(p.split("/")[:i]) for p in chosen for i in range(1, p.count("/") + 1)}
    return [e for e in entries if e.path in chosen or e.path in parents]


def restore(repo: Repository, ref: str, dest: str | os.PathLike, *, include: Iterable[str] = (),
            force: bool = False, workers: int | None = None, trusted: list[bytes] | None = None,
            progress: Progress | None = None, preserve_special_bits: bool = False,
            thaw: ThawOptions | None = None, executor: Any = None, processes: int | None = 0) -> RestoreResult:
    """With `trusted` public keys, refuse unless one of them signed the manifest. Modes lose
    their setuid, setgid and sticky bits unless `preserve_special_bits`. Chunks in a cold
    class (GLACIER, DEEP_ARCHIVE) are refused before anything is written unless `thaw` asks
    for their thaw; if they are not all readable when it returns (wait=False), nothing is
    written and `thaw` in the result says where they stand. `processes`: worker processes
    for the small files (archiver.procrestore; 0: threads only, None: auto)."""
    started = time.monotonic()
    since = None
    if processes is None:  # auto: idle cores measured from now (imported here, not by every restore)
        from archiver import workerprocs
        since = workerprocs.CpuSample.now()
    progress = progress or Progress()
    mid, m = load_checked(repo, ref, trusted, "restore")
    with translated():
        for e in m.entries:
            if e.is_symlink:
                check_link(e.path, e.target)  # a target that could leave DEST refuses the whole restore
    chosen = select(m.entries, include)
    if include and not chosen:
        raise DestinationError(str(dest), f"the include patterns matched nothing in {mid[:16]}", exit_code=2)
    root = Path(dest)
    distributed = executor is not None and executor.distributed
    by_procs = _by_processes(repo, chosen, processes, distributed, since)  # an explicit count refused before any write
    _check_dest(root, force)  # a DEST that would be refused is refused before any thaw is paid for
    cold = thaw_mod.prepare(repo, [e for e in chosen if e.is_file], thaw)
    if cold is not None and not cold.ready:
        return RestoreResult(id=mid, dest=str(root), thaw=cold.to_dict(),
                             seconds=round(time.monotonic() - started, 3))
    _prepare_dest(root, force)
    result = RestoreResult(id=mid, dest=str(root), thaw=cold.to_dict() if cold is not None and cold.classes else None)
    nworkers = workers or default_workers()
    progress.start(f"restore {m.name}", sum(e.size for e in chosen))
    mode_mask = 0o7777 if preserve_special_bits else 0o7777 & ~SPECIAL_BITS
    root_fd = os.open(root, _DIR_FLAGS)
    # The directories are made and the reads planned on threads of their own (mkdir waits in
    # the kernel, the plan mostly in SQLite) while the files that need no read (whole batches
    # of empty ones) are written; a file that needs a chunk waits for the plan.
    head = ThreadPoolExecutor(2, thread_name_prefix="restore-head")
    stop = threading.Event()  # set once this restore has ended (failed): `_make_dirs` makes no more
    procs: procrestore.SmallRestore | None = None
    try:
        remove_stale_temps(root_fd)
        if by_procs[0]:
            procs = _start_processes(repo, mid, root_fd, root, force, mode_mask, by_procs)
        made = head.submit(_make_dirs, root_fd, [] if distributed else [e for e in chosen if e.type == "dir"], stop)
        # packed chunks: few, ranged reads
        on_procs = {id(e) for e in by_procs[1]}  # those files' workers plan their own reads
        planned = head.submit(_plan_reads, repo, [c for e in chosen if e.is_file and id(e) not in on_procs
                                                  for c in e.chunks])
        here = chosen
        if distributed:  # files and directories, one task per file
            from archiver import fanout
            planned.result()
            fanout.restore_files(repo, executor, mid, root, chosen, force, mode_mask, result, progress)
            here = []
        here = [e for e in here if id(e) not in on_procs] if on_procs else here
        small = [e for e in here if e.is_file and e.size <= SMALL_FILE]
        with ThreadPoolExecutor(nworkers, thread_name_prefix="restore") as pool:
            for e in here:
                if e.is_file and e.size <= SMALL_FILE:
                    continue  # below, several at a time
                if e.is_file:
                    planned.result()
                    _restore_file(repo, mid, root_fd, e, pool, window_for(nworkers), result, progress, force,
                                  mode_mask)
                elif e.is_symlink:
                    continue  # made last, so no write of this restore can go through one
                else:
                    result.dirs += 1  # made by `_make_dirs`
            small_from = len(result.problems)  # the small files' problems: theirs and the workers', merged
            _restore_small(repo, mid, root_fd, small, pool, nworkers, result, progress, force, mode_mask,
                           planned=planned)
        planned.result()  # (the driver's tasks below replace its plan of the reads)
        if procs is not None:
            _wait_processes(procs, repo, root_fd, chosen, result, progress, nworkers, small_from)
        made.result()
        for e in chosen:
            if e.is_symlink:
                _restore_link(root_fd, e, force)
                result.links += 1
        # Last and deepest first: writing a file or a subdirectory changes its parent's mtime,
        # and a read-only mode would stop the writes below it.
        _finish_dirs(root_fd, sorted((e for e in chosen if e.type == "dir"), key=lambda e: -e.path.count("/")),
                     mode_mask, nworkers)
        os.fsync(root_fd)
    finally:
        stop.set()
        try:  # each step whatever the one before raised (a second Ctrl-C while the workers stop, say)
            if procs is not None:
                procs.close()  # no worker process outlives the restore
        finally:
            try:
                head.shutdown()  # (its tasks use root_fd)
            finally:
                os.close(root_fd)
                progress.finish()
    result.seconds = round(time.monotonic() - started, 3)
    _append_event(repo, result, include)
    return result


def _by_processes(repo: Repository, chosen: list[Entry], processes: int | None, distributed: bool,
                  since: workerprocs.CpuSample | None) -> tuple[int, list[Entry]]:
    """(worker processes, the files they restore): `procrestore.resolve` of the small files
    of one chunk or none; (0, []) for threads only. An explicit count that cannot be honoured
    is refused here, before anything is written."""
    if processes == 0:
        return 0, []
    from archiver import procrestore
    files = [e for e in chosen if e.size <= SMALL_FILE and procrestore.eligible(e)]
    settings = getattr(repo, "settings", None)
    local = settings is not None and local_path(settings.store_url) is not None
    n = procrestore.resolve(processes, small_files=len(files), local=local, sealed=repo.sealed,
                            has_settings=settings is not None, distributed=distributed,
                            busy=since.others_busy() if since is not None else None)
    return (n, files) if n and files else (0, [])


def _start_processes(repo: Repository, mid: str, root_fd: int, root: Path, force: bool, mode_mask: int,
                     by_procs: tuple[int, list[Entry]]) -> procrestore.SmallRestore:
    """Hand the small files of `by_procs` to its worker processes, a sync batch a task."""
    from archiver import procrestore
    from archiver.procfiles import worker_settings
    st = os.fstat(root_fd)
    settings = worker_settings(repo.settings)
    rows = [procrestore.file_row(e) for e in by_procs[1]]
    per_task = min(procrestore.TASK_FILES, _batch_limits()[0])
    jobs = [procrestore.RestoreJob(settings, mid, os.path.abspath(root), (st.st_dev, st.st_ino), force, mode_mask,
                                   task) for task in procrestore.tasks_of(rows, per_task)]
    return procrestore.SmallRestore(min(by_procs[0], len(jobs)), jobs)


def _wait_processes(procs: procrestore.SmallRestore, repo: Repository, root_fd: int, chosen: list[Entry],
                    result: RestoreResult, progress: Progress, nworkers: int, small_from: int) -> None:
    """Run tasks the pool has not started here too (`SmallRestore.wait`), take every task's
    outcome into `result` (the small files' problems, the threads' from `small_from` on and
    the workers', merged in the manifest's order, as on threads), then sync the directories
    they linked files into that `_finish_dirs` will not (those with no entry of their own;
    DEST itself is synced last)."""
    problems: list[Problem] = []
    parents: set[str] = set()

    def take(done: procrestore.RestoreDone) -> None:
        result.files += done.files
        result.bytes += done.bytes
        result.files_by_processes += done.files if done.pid != os.getpid() else 0
        progress.advance(done.bytes)
        problems.extend(done.problems)
        parents.update(done.parents)

    try:
        procs.wait(take, repo)
    finally:
        at = {e.path: i for i, e in enumerate(chosen)}
        result.problems[small_from:] = sorted(result.problems[small_from:] + problems,
                                              key=lambda p: at.get(p.path or "", -1))
    extra = sorted(parents - {e.path for e in chosen if e.type == "dir"} - {""})
    for i in range(0, len(extra), _batch_limits()[1]):
        fds: list[int] = []
        try:
            for path in extra[i:i + _batch_limits()[1]]:
                fds.append(_open_dir(root_fd, path.split("/"), create=False))
            with ThreadPoolExecutor(nworkers, thread_name_prefix="restore-dirs") as pool:
                fileio.sync_together(fds, pool)
        except OSError as err:
            _raise_write_error(extra[i], err, "cannot sync the directory")
        finally:
            _close_all(fds)


def _plan_reads(repo: Repository, refs: list[Any]) -> int:
    """`repo.plan_reads(refs)` on a restore's own thread, which then closes the catalog
    connection it opened (one per thread): a restore leaves none behind."""
    try:
        return repo.plan_reads(refs)
    finally:
        repo.end_thread()


def _make_dirs(root_fd: int, dirs: list[Entry], stop: threading.Event | None = None) -> None:
    """Make each directory of `dirs` below root_fd (mode 0o700 until `_finish_dirs`), never
    through a symlink (`_open_dir`); none more once `stop` is set (the restore has failed)."""
    for e in dirs:
        if stop is not None and stop.is_set():
            return
        os.close(_open_dir(root_fd, e.path.split("/"), create=True))


def _finish_dirs(root_fd: int, dirs: list[Entry], mode_mask: int, nworkers: int) -> None:
    """Set each directory's mode and mtime (in the order given), then make them durable
    together, a bounded number of open directories at a time (`fileio.sync_together`)."""
    most = _batch_limits()[1]
    with ThreadPoolExecutor(nworkers, thread_name_prefix="restore-dirs") as pool:
        for i in range(0, len(dirs), most):
            fds: list[int] = []
            try:
                for e in dirs[i:i + most]:
                    fd = _open_dir(root_fd, e.path.split("/"), create=False)
                    fds.append(fd)
                    os.fchmod(fd, e.mode & mode_mask)
                    if e.mtime_ns is not None:  # None: a manifest made before directory mtimes were recorded
                        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
                fileio.sync_together(fds, pool)
            finally:
                _close_all(fds)


def _append_event(repo: Repository, result: RestoreResult, include: Iterable[str]) -> None:
    """A 'dissemination' event in the store's log (and the catalog's audit log): who
    restored which archive, where, and with what outcome. Not being able to record it does
    not undo a restore."""
    lines = tuple(p.line() for p in result.problems[:events.FIRST_PROBLEMS])
    repo.append_event(events.Event(
        events.DISSEMINATION, ok=result.ok,
        manifests=(events.ManifestOutcome(result.id, result.ok, len(result.problems), lines),),
        problems=lines, problem_count=len(result.problems),
        details={"dest": result.dest, "files": result.files, "bytes": result.bytes, "include": list(include)}))


def temp_name(prefix: str = TEMP_PREFIX) -> str:
    """A fresh temporary name: short and fixed-length, so it fits wherever the final name fits."""
    nonce = secrets.token_hex(8)
    return prefix + nonce + _temp_tag(nonce)


def _temp_tag(nonce: str) -> str:
    return blake3.blake3(_TEMP_TAG_KEY + nonce.encode("ascii")).hexdigest()[:16]


def is_temp_name(name: str) -> bool:
    """True only for names made by `temp_name`: a prefix, 32 lowercase hex, and a matching tag."""
    rest = name[len(TEMP_PREFIX):]
    if not name.startswith((TEMP_PREFIX, PORTABLE_TEMP_PREFIX)) or len(rest) != 32 or \
            rest.strip("0123456789abcdef"):
        return False
    return _temp_tag(rest[:16]) == rest[16:]


def remove_stale_temps(root_fd: int) -> int:
    """Remove temp files that a killed restore left anywhere below root_fd; returns how many.
    Symlinks are never followed, only regular files with our tagged names are touched, and a
    temp file that a restore still running holds (locked) is left alone."""
    removed = 0
    for _, _, files, dir_fd in os.fwalk(".", dir_fd=root_fd):  # follow_symlinks=False by default
        for name in files:
            if is_temp_name(name) and _remove_if_stale(dir_fd, name):
                removed += 1
    return removed


def _remove_if_stale(dir_fd: int, name: str) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    except PermissionError:
        # Its final mode, set just before the kill, denies reading, so it cannot be locked (a live
        # restore's file is in that state only between its fchmod and its rename).
        fd = -1
    except OSError:
        return False  # gone already, or a symlink (ELOOP): not ours
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return False
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live restore is writing it
            except OSError:
                pass  # no locks on this filesystem: take it for the leftover it almost surely is
            if not os.path.samestat(os.fstat(fd), os.stat(name, dir_fd=dir_fd, follow_symlinks=False)):
                return False  # replaced meanwhile
        os.unlink(name, dir_fd=dir_fd)
        return True
    except OSError:
        return False
    finally:
        if fd >= 0:
            os.close(fd)


def _create_temp(dir_fd: int, mode: int = 0o600) -> tuple[str, int]:
    """Create and lock a temp file in dir_fd, with exactly `mode` (what the umask took from it
    is put back, seen in the fstat the lock check makes anyway). The lock tells a
    concurrent restore's cleanup that the file is live; it is held until the file is renamed
    into place. A cleanup only ever unlinks a temp file, after taking its lock: once ours is
    held, the file still having a link (st_nlink) proves it is the one under `tmp` (its random
    name is made by no one else), so no second stat of the name is needed."""
    prefix = TEMP_PREFIX
    while True:
        tmp = temp_name(prefix)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                         mode, dir_fd=dir_fd)
        except OSError as err:
            if prefix == TEMP_PREFIX and err.errno in (errno.EINVAL, errno.EILSEQ):
                prefix = PORTABLE_TEMP_PREFIX  # the filesystem refuses a backslash in names
                continue
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            st = os.fstat(fd)
            if st.st_nlink > 0:
                if stat.S_IMODE(st.st_mode) != mode:
                    os.fchmod(fd, mode)
                return tmp, fd
            # else a cleanup took it between its creation and our lock: start over
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        os.close(fd)


def _write_sparse(fd: int, data: bytes | bytearray | memoryview, pos: int) -> None:
    """Write `data`, which belongs at file offset `pos` (the fd's position), seeking over
    every all-zero HOLE_WINDOW-aligned window instead of writing it: holes stay holes.
    The caller sets the final size with ftruncate, in case the file ends in a hole. Data
    shorter than a window holds no whole window: one write (most small files)."""
    n = len(data)
    if n < HOLE_WINDOW:
        k = os.write(fd, data) if n else 0
        if k < n:
            write_all(fd, memoryview(data)[k:])
        return
    if isinstance(data, memoryview):
        data = data.tobytes()  # a chunk read as a view of its pack span (`read_chunks(views=True)`)
    view = memoryview(data)
    is_zero = data.startswith
    done = 0                       # data[:done] is written or skipped
    s = (-pos) % HOLE_WINDOW       # start of the first aligned window inside data
    while s + HOLE_WINDOW <= n:
        if not is_zero(_ZERO_WINDOW, s):
            s += HOLE_WINDOW
            continue
        end = s + HOLE_WINDOW
        while end + HOLE_WINDOW <= n and is_zero(_ZERO_WINDOW, end):
            end += HOLE_WINDOW
        if s > done:
            write_all(fd, view[done:s])
        os.lseek(fd, end - s, os.SEEK_CUR)
        done = s = end
    if done < n:
        write_all(fd, view[done:])


def load_checked(repo: Repository, ref: str, trusted: list[bytes] | None, doing: str) -> tuple[str, Manifest]:
    """The manifest `ref` names, refused before anything is written unless one of the `trusted`
    keys signed it (when given) and every path in it is safe to create."""
    mid = repo.resolve(ref)
    m = repo.load_manifest(mid)
    if trusted:
        bad = repo.signature_problems(mid, trusted)
        if bad:
            raise IntegrityError(f"refusing to {doing} {mid[:16]}: {'; '.join(bad)}")
    with translated():
        check_paths((e.path, e.type) for e in m.entries)  # all of them, before any write
    return mid, m


def _check_dest(root: Path, force: bool) -> None:
    """The refusals of `_prepare_dest`, without creating anything."""
    if root.is_symlink():
        raise UnsafePathError(f"destination {root} is a symlink; give the real directory")
    if root.exists():
        if not root.is_dir():
            raise DestinationError(str(root), "exists and is not a directory", exit_code=2)
        if any(root.iterdir()) and not force:
            raise DestinationError(str(root), "destination is not empty", remedy="force", exit_code=2)


def _prepare_dest(root: Path, force: bool) -> None:
    _check_dest(root, force)
    if not root.exists():
        try:
            root.mkdir(parents=True)
        except OSError as e:
            raise DestinationError(str(root), f"cannot create the destination: {e.strerror}") from None


def _open_dir(root_fd: int, parts: list[str], *, create: bool) -> int:
    """Walk `parts` below root_fd without following symlinks; returns an fd of the last."""
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as err:  # named here: a caller's handler would name what it was writing
                    _raise_write_error("/".join(parts[:i + 1]), err, "cannot create the directory")
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError(
                        f"refusing to restore through {'/'.join(parts[:i + 1])!r} in the destination: "
                        f"it is a symlink or not a directory") from None
                raise
            fd, parent = nfd, fd  # the walk holds nfd first: a Ctrl-C before the close must not close fd twice
            os.close(parent)
        return fd
    except BaseException:
        os.close(fd)
        raise


@dataclass
class _Staged:
    """A small file written under its temp name (still open and locked) or with no name
    (`tmp` ""), not yet durable."""
    entry: Entry
    dir_fd: int
    name: str
    tmp: str
    fd: int


def _batch_limits() -> tuple[int, int]:
    """(files per sync batch, directory fds kept open): each staged file holds its fd until
    its rename, so both stay well inside the process's open-file limit."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(8, min(SYNC_BATCH_FILES, soft // 4)), max(8, min(DIR_FDS_KEPT, soft // 4))


def _in_few_dirs(runs: Iterable[list[Entry]], most_dirs: int) -> Iterator[list[Entry]]:
    """`runs`, each cut where its files would lie in more than `most_dirs` directories: a
    sync batch may hold more files than there may be directory fds open (2048 against 512),
    and every directory of a batch stays open until its sync."""
    for run in runs:
        cut: list[Entry] = []
        parents: set[str] = set()
        for e in run:
            parent = e.path.rpartition("/")[0]
            if parent not in parents:
                if len(parents) >= most_dirs:
                    yield cut
                    cut, parents = [], set()
                parents.add(parent)
            cut.append(e)
        if cut:
            yield cut


def _restore_small(repo: Repository, mid: str, root_fd: int, files: list[Entry], pool: ThreadPoolExecutor,
                   nworkers: int, result: RestoreResult, progress: Progress, force: bool, mode_mask: int, *,
                   planned: Future[Any] | None = None) -> None:
    """Restore small files in sync batches: the files of a batch are written under temp names
    (or unnamed) several at a time (file tasks on a pool of their own, since they wait on
    chunk tasks), made durable together (`fileio.sync_together`: one syncfs, or an fsync
    each in parallel), and only then put in place, on this thread while the tasks write the
    next batch; every directory they were put into is synced once, after its last file and
    before the restore reports. A damaged or partial file never appears under its final
    name: a failure before a batch's sync puts none of it in place. A batch is synced and put
    in place while the tasks write the next one (the sync's wait for the disk overlaps their
    writing); the next one's sync comes only after all of its tasks have returned."""
    if not files:
        return
    at = {e.path: i for i, e in enumerate(files)}
    problems: list[Problem] = []

    def sync_batches() -> Iterator[list[Entry]]:
        """Whole batches of empty files first (they need no read: written while `planned`, the
        reads' plan, is still being made), then the rest in pack order, so each planned span
        of a pack is read once, not once per file; problems are still reported in the
        manifest's order."""
        empty = [e for e in files if not e.chunks]
        ahead = empty[:len(empty) - len(empty) % most_files]
        yield from _in_few_dirs(batches(ahead, lambda e: e.size, most_files, SYNC_BATCH_BYTES), most_dirs)
        if planned is not None:
            planned.result()
        done = {e.path for e in ahead}
        rest = [e for e in files if e.path not in done] if done else files
        pos = repo.pack_positions(e.chunks[0].hash for e in rest if e.chunks)
        yield from _in_few_dirs(batches(sorted(rest, key=lambda e: pos.get(e.chunks[0].hash, ("", 0)) if e.chunks
                                               else ("", 0)), lambda e: e.size, most_files, SYNC_BATCH_BYTES),
                                most_dirs)

    most_files, most_dirs = _batch_limits()
    dirs: dict[str, int] = {}  # parent path -> open fd, renamed into and not yet synced
    dev_of: dict[int, int] = {}  # open directory fd -> its filesystem (st_dev), stat'ed once when opened
    # written, not yet in place, one list per sync batch: whatever happens, removed in `finally`
    pending: list[list[_Staged]] = []

    unnamed = fileio.unnamed_files(root_fd)  # files get their names only once durable (O_TMPFILE)

    def stage(batch: list[Entry], staged: list[_Staged]) -> list[Problem]:
        mine: list[Problem] = []
        # raw chunks come as views of their pack span (hashed in place, written from there: no copy)
        ones = iter(repo.read_chunks([e.chunks[0] for e in batch if len(e.chunks) == 1], views=True))
        for e in batch:
            parent, _, name = e.path.rpartition("/")
            n = len(e.chunks)
            if unnamed and n <= 1:  # nearly every small file: one chunk or none, no stream
                _stage_unnamed(repo, mid, dirs[parent], name, e, next(ones) if n else None, pool, staged, mine,
                               progress, mode_mask)
                continue
            _stage_file(repo, mid, dirs[parent], e, pool, staged, mine, progress, mode_mask,
                        next(ones) if n == 1 else None, unnamed)
        return mine

    def place(durable: list[_Staged]) -> None:
        """Put a synced batch's files in place (renamed or linked), in order; each one put in
        place leaves `durable` (what is left there is removed by the `finally` below)."""
        done = 0
        try:
            for s in durable:
                try:
                    if s.tmp:
                        _check_target(s.dir_fd, s.name, s.entry.path, force)
                        os.rename(s.tmp, s.name, src_dir_fd=s.dir_fd, dst_dir_fd=s.dir_fd)  # still locked
                    else:
                        _link_into_place(s.fd, s.dir_fd, s.name, s.entry.path, force)
                except OSError as err:
                    _raise_write_error(s.entry.path, err)
                done += 1
                os.close(s.fd)
                result.files += 1
                result.bytes += s.entry.size
        finally:
            del durable[:done]

    def make_durable(written: list[_Staged]) -> None:
        """Sync a fully written batch (every task that wrote it has returned), then put it in place."""
        if not written:
            return
        # not an fstat of every open directory per batch; the first opened of each filesystem:
        # one opened for the next batch would not see a write-back error this one's files met
        # before it was opened, if something else had seen it (syncfs reports errors since its fd's open)
        one_per_fs: dict[int, int] = {}
        for fd in dirs.values():
            one_per_fs.setdefault(dev_of[fd], fd)
        fileio.sync_together([s.fd for s in written], tasks, within=list(one_per_fs.values()))
        place(written)

    try:
        with ThreadPoolExecutor(nworkers, thread_name_prefix="restore-files") as tasks:
            written: list[_Staged] = []  # the previous batch: whole, not yet synced nor in place
            for batch in sync_batches():
                new = {e.path.rpartition("/")[0] for e in batch} - dirs.keys()
                if len(dirs) + len(new) > most_dirs:  # keep the fds bounded: sync what is open, close it
                    make_durable(written)  # (its files go into directories about to be closed)
                    written = []
                    _sync_dirs(dirs, tasks)
                    new = {e.path.rpartition("/")[0] for e in batch}
                for parent in sorted(new):
                    fd = dirs[parent] = _open_dir(root_fd, parent.split("/") if parent else [], create=True)
                    dev_of[fd] = os.fstat(fd).st_dev
                staged: list[_Staged] = []
                pending.append(staged)
                # this batch is written by the tasks while the previous one is synced and put in
                # place here: the sync's wait for the disk overlaps the writing, not the other way
                futures = [tasks.submit(stage, b, staged) for b in batches(batch, lambda e: e.size)]
                try:
                    make_durable(written)
                    for f in futures:
                        problems.extend(f.result())
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
                written = staged
            make_durable(written)
            _sync_dirs(dirs, tasks)
    except OSError as err:
        first = next((s for staged in pending for s in staged), None)
        _raise_write_error(first.entry.path if first is not None else result.dest, err)
    finally:
        try:
            for staged in pending:  # the pool has shut down: no task still adds to them
                for s in staged:
                    _discard(s.dir_fd, s.tmp, s.fd)
        finally:
            _close_all(dirs.values())
    result.problems.extend(sorted(problems, key=lambda p: at.get(p.path or "", -1)))


def _sync_dirs(dirs: dict[str, int], pool: ThreadPoolExecutor) -> None:
    """Sync every directory in `dirs` (after the renames into it), then close and forget them."""
    fds = list(dirs.values())
    dirs.clear()
    try:
        fileio.sync_together(fds, pool)
    finally:
        _close_all(fds)


def _close_all(fds: Iterable[int]) -> None:
    """Close every one of `fds` even if one close raises (a Ctrl-C landing just after it):
    the others are not left open, then the first error is raised."""
    first: BaseException | None = None
    for fd in list(fds):
        try:
            os.close(fd)
        except BaseException as e:  # noqa: BLE001 - raised below, once all are closed
            first = first or e
    if first is not None:
        raise first


def _raise_write_error(path: str, err: OSError, doing: str = "cannot write") -> None:
    if err.errno in _NO_SPACE:
        raise DestinationFullError(path) from None
    raise DestinationError(path, f"{doing}: {err.strerror}") from None


def _discard(dir_fd: int, tmp: str, fd: int) -> None:
    """Close and remove a temp file that will not be renamed into place (`tmp` "": an
    unnamed file, which vanishes when closed)."""
    if fd >= 0:
        os.close(fd)
    if not tmp:
        return
    try:
        os.unlink(tmp, dir_fd=dir_fd)
    except OSError:
        pass


def _link_into_place(fd: int, dir_fd: int, name: str, path: str, force: bool) -> None:
    """Name the unnamed, durable file `fd` `name` in dir_fd. The link never replaces
    anything; if the name is taken, `force` (and no directory in the way) replaces it
    atomically: a link under a temp name (locked, so a concurrent restore's cleanup leaves
    it alone), renamed over the old file."""
    try:
        fileio.link_unnamed(fd, dir_fd, name)
        return
    except FileExistsError:
        _check_target(dir_fd, name, path, force)  # refuses unless force, and always a directory
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    tmp = temp_name()
    fileio.link_unnamed(fd, dir_fd, tmp)
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _discard(dir_fd, tmp, -1)
        raise


def mode_at_create(mode: int) -> bool:
    """True when a restored file can be created with its final `mode` rather than 0o600 and
    an fchmod once written: it has no setuid/setgid/sticky bit (a write would clear them),
    and its owner can read it (a concurrent restore's cleanup must be able to open it to see
    it is locked: a file it cannot open is taken for a leftover). What the umask takes from
    it, `_create_temp` puts back."""
    return not mode & 0o7000 and bool(mode & 0o400)


def _stage_file(repo: Repository, mid: str, dir_fd: int, e: Entry, pool: ThreadPoolExecutor,
                staged: list[_Staged], problems: list[Problem], progress: Progress, mode_mask: int,
                got: bytes | memoryview | ArchiverError | None = None, unnamed: bool = False) -> None:
    """Write small file `e` in dir_fd, every chunk and the whole file re-hashed, with its
    final mode and mtime, and add it to `staged` (not yet durable nor in place): with
    `unnamed`, as a file with no name (`fileio.open_unnamed`), else under a temp name. `got`:
    its one chunk, already read (`Repository.read_chunks`). A file of no chunks is written
    with nothing: its recorded BLAKE3 must be that of no bytes. A damaged file is reported
    in `problems` and its file removed."""
    tmp = ""
    fd = -1
    mode = e.mode & mode_mask
    at_create = mode_at_create(mode)
    try:
        if unnamed:
            fd = _create_unnamed(dir_fd, mode)
        if fd < 0:
            tmp, fd = _create_temp(dir_fd, mode if at_create else 0o600)
        else:
            at_create = not mode & SPECIAL_BITS  # a write clears them: set after it
        written = 0
        if not e.chunks:
            if e.blake3 != _EMPTY_BLAKE3:
                raise FileHashError(e.path)
            pieces: Iterable[Piece] = ()
        elif len(e.chunks) == 1:
            pieces = _one_chunk(repo, e, got)
        else:
            pieces = repo.stream_file(e, pool, 2, keep_going=True, sha256=False)
        for piece in pieces:
            if piece.error is not None:  # stop at the first bad chunk: this file cannot be restored
                problems.append(chunk_problem(mid, e, piece.ref, piece.error))
                return
            data = piece.data
            assert data is not None
            _write_sparse(fd, data, written)
            written += len(data)
            progress.advance(len(data))
        if written >= HOLE_WINDOW:  # a shorter file has no hole (_write_sparse skips only whole windows)
            os.ftruncate(fd, written)  # the size, if the file ends in a hole
        if not at_create:
            os.fchmod(fd, mode)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        staged.append(_Staged(e, dir_fd, e.path.rpartition("/")[2], tmp, fd))  # one append: atomic across threads
        tmp, fd = "", -1
    except FileHashError:
        problems.append(file_hash_problem(mid, e))
    except OSError as err:
        _raise_write_error(e.path, err)
    finally:
        if fd >= 0:
            _discard(dir_fd, tmp, fd)


def _stage_unnamed(repo: Repository, mid: str, dir_fd: int, name: str, e: Entry,
                   got: bytes | memoryview | ArchiverError | None, pool: ThreadPoolExecutor, staged: list[_Staged],
                   problems: list[Problem], progress: Progress, mode_mask: int) -> None:
    """`_stage_file` of a file of one chunk (`got`, read already) or none, made unnamed: the
    same checks, steps and outcome without the stream's per-file objects (most of restore's
    per-file Python work under the GIL). Falls back to `_stage_file` (a temp name) where this
    directory's filesystem cannot make an unnamed file."""
    if got is not None:
        if isinstance(got, ArchiverError):  # damaged or missing: nothing is made
            problems.append(chunk_problem(mid, e, e.chunks[0], got))
            return
        if e.chunks[0].hash != e.blake3:  # the one chunk is the whole file
            problems.append(file_hash_problem(mid, e))
            return
    elif e.blake3 != _EMPTY_BLAKE3:
        problems.append(file_hash_problem(mid, e))
        return
    mode = e.mode & mode_mask
    try:
        fd = _create_unnamed(dir_fd, mode)
    except OSError as err:
        _raise_write_error(e.path, err)
    if fd < 0:
        _stage_file(repo, mid, dir_fd, e, pool, staged, problems, progress, mode_mask, got, False)
        return
    try:
        if got is not None:
            n = len(got)
            _write_sparse(fd, got, 0)
            if n >= HOLE_WINDOW:  # a shorter file has no hole (_write_sparse skips only whole windows)
                os.ftruncate(fd, n)  # the size, if the file ends in a hole
            progress.advance(n)
        if mode & SPECIAL_BITS:  # a write clears them: set after it
            os.fchmod(fd, mode)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        staged.append(_Staged(e, dir_fd, name, "", fd))  # one append: atomic across threads
        fd = -1
    except OSError as err:
        _raise_write_error(e.path, err)
    finally:
        if fd >= 0:
            os.close(fd)


def _create_unnamed(dir_fd: int, mode: int) -> int:
    """An unnamed file in dir_fd (`fileio.open_unnamed`) with exactly `mode` less its special
    bits (what the umask took is put back), or -1 if this directory's filesystem cannot
    make one. No lock, no random name: no other process can see it. The mode is looked at
    for every file: the umask is the process's, and another thread may change it during a
    restore (a umask read once would then narrow modes unseen)."""
    fd = fileio.open_unnamed(dir_fd, mode & ~SPECIAL_BITS)
    if fd is None:
        return -1
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode & ~SPECIAL_BITS:
            os.fchmod(fd, mode & ~SPECIAL_BITS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _one_chunk(repo: Repository, e: Entry, got: bytes | memoryview | ArchiverError | None = None) -> list[Piece]:
    """What `stream_file(e, keep_going=True, sha256=False)` yields for a one-chunk file, read
    on this thread with no stream (or `got`, its chunk read already): the chunk (re-hashed
    on read), or its damage; its hash not being the file's BLAKE3 is a FileHashError (the
    chunk is the whole file)."""
    c = e.chunks[0]
    if got is None:
        got = repo.try_read_chunk(c)
    if isinstance(got, ArchiverError):
        return [Piece(c, None, got)]
    if c.hash != e.blake3:
        raise FileHashError(e.path)
    return [Piece(c, got)]


def _restore_file(repo: Repository, mid: str, root_fd: int, e: Entry, pool: ThreadPoolExecutor, window: int,
                  result: RestoreResult, progress: Progress, force: bool, mode_mask: int,
                  sync_dir: bool = True) -> None:
    """`sync_dir=False`: the caller syncs the directory after a batch of files (the file
    itself is always fsynced before its rename)."""
    parts = e.path.split("/")
    dir_fd = _open_dir(root_fd, parts[:-1], create=True)
    name = parts[-1]
    tmp = ""
    fd = -1
    try:
        tmp, fd = _create_temp(dir_fd)
        # Every chunk is re-hashed, and the whole file with BLAKE3, by stream_file.
        written = flushed = 0
        for piece in repo.stream_file(e, pool, window, keep_going=True, sha256=False):
            if piece.error is not None:  # stop at the first bad chunk: this file cannot be restored
                result.problems.append(chunk_problem(mid, e, piece.ref, piece.error))
                return
            data = piece.data
            assert data is not None
            _write_sparse(fd, data, written)
            written += len(data)
            if written - flushed >= WRITEBACK_EVERY:
                # start writeback now, so the final fsync does not wait for the whole file
                os.posix_fadvise(fd, flushed, written - flushed, os.POSIX_FADV_DONTNEED)
                flushed = written
            progress.advance(len(data))
        os.ftruncate(fd, written)  # the size, if the file ends in a hole
        os.fchmod(fd, e.mode & mode_mask)
        os.fsync(fd)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        _check_target(dir_fd, name, e.path, force)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # still locked: no cleanup takes it
        tmp = ""
        closing, fd = fd, -1  # marked closed first: a Ctrl-C between the two must not close it twice
        os.close(closing)
        if sync_dir:
            os.fsync(dir_fd)
        result.files += 1
        result.bytes += e.size
    except FileHashError:
        result.problems.append(file_hash_problem(mid, e))
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise DestinationFullError(e.path) from None
        raise DestinationError(e.path, f"cannot write: {err.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
        os.close(dir_fd)


def _check_target(dir_fd: int, name: str, path: str, force: bool) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise DestinationError(path, "cannot restore: a directory is in the way")
    if not force:
        raise DestinationError(path, "cannot restore: it already exists", remedy="force")



def _restore_link(root_fd: int, e: Entry, force: bool) -> None:
    """Create symlink `e` (its target checked by check_link before anything was written);
    an existing file or symlink in the way is replaced only with `force`, atomically."""
    parts = e.path.split("/")
    dir_fd = _open_dir(root_fd, parts[:-1], create=True)
    try:
        try:  # creating a symlink is atomic on its own: no temp name unless one must be replaced
            os.symlink(e.target, parts[-1], dir_fd=dir_fd)
            os.fsync(dir_fd)
            return
        except FileExistsError:
            _check_target(dir_fd, parts[-1], e.path, force)  # refuses unless force (and never a directory)
        tmp = temp_name()
        try:
            os.symlink(e.target, tmp, dir_fd=dir_fd)
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.EILSEQ):
                tmp = temp_name(PORTABLE_TEMP_PREFIX)
                os.symlink(e.target, tmp, dir_fd=dir_fd)
            else:
                raise
        try:
            _check_target(dir_fd, parts[-1], e.path, force)
            os.rename(tmp, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)
    except OSError as err:
        raise DestinationError(e.path, f"cannot create the symlink: {err.strerror}") from None
    finally:
        os.close(dir_fd)
