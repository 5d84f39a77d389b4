"""The files cache: an unchanged source file is not read again; its entry in an earlier
committed manifest is reused, after its chunks are proved intact in the store.

"Unchanged" is the identity restic and borg use: same absolute path, size, mtime_ns,
ctime_ns, inode and device. ctime cannot be set by any caller, so an in-place rewrite that
restores the mtime (`touch -r`, `rsync --inplace -t`) still misses. The stat recorded for a
file is taken *before* the run reads it (and the read starts only once the file's ctime tick
has passed, see pipeline._settled), so a write racing the read leaves a stat that never
matches again: the worst a race costs is a re-read, never a stale entry.

Nothing in the cache is trusted on its own. A row names (manifest id, path in it): the
entry itself comes from that manifest, loaded through the repository and re-checked
against its id, so a damaged or edited cache can only point at entries some committed
manifest holds, and only ones whose size and mtime match the file now. Rows are written
only after the manifest naming them is committed. Every chunk of a reused entry is proved by
the rule `save_chunk` applies to a chunk the store already holds (Repository.prove_stored_chunks):
read back, decoded and re-hashed (pack by pack: one read per span of a pack), or with `trust_verified_within` trusted if a deep verify
found it intact within that window (decided for all chunks at once: one catalog query, and one
LIST for their stored sizes, never a request per chunk). A chunk that fails its proof (damaged, missing, cold)
makes the file a miss: it is read from the source, so save_chunk repairs the chunk.

A run writes only the rows that changed. A reused file's row keeps naming the manifest it
named, and one `moved` row says that this manifest's reused entries are now in the new one
(the very entries, at the same paths): so an unchanged re-archive writes a row per changed
file, not one per file. A manifest moves only when this run kept every row that looks it up:
a row no run saw since would otherwise take whatever the new manifest holds at its path (two
sources of one basename archive to the same paths); else the kept rows are written. The next run looks a row's entry up in the manifest its manifest
moved to, and, if that one lacks it (another run over part of the tree moved it since),
in the row's own manifest. Rows are still rewritten every REFRESH_S, so that `used` ages
only for paths no run sees.

Where: a SQLite file next to the catalog (`<catalog>.files`), not a table in it. The
catalog is an index that `catalog rebuild` recreates from the store; inodes, devices and
ctimes are facts of one host's filesystem that no store holds, so they stay out of it (and
out of its size). Next to the catalog, the cache follows the catalog's binding to one store.
Losing it costs one full read. Any error opening or writing it only turns the cache off."""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

from archiver.parallel import ordered_map
from archiver.repository import Repository, SavedChunk
from archiver.scan import Source
from archiver.treereuse import entries_by_path
from manifests.catalog import switch_to_wal
from manifests.model import ChunkRef, Entry, PreviousTree

# Bumped when what an entry records from a file changes (format detection, technical
# metadata): entries from an older reader are then missed and the file read again.
READER_VERSION = 1
SUFFIX = ".files"
BUSY_TIMEOUT_S = 10.0
# Rows not used by any archive run for this long are dropped (paths that no longer exist).
EXPIRE_S = 90 * 86400
# A reused file's unchanged row is rewritten (its `used` renewed) once it is this old.
REFRESH_S = EXPIRE_S / 3
# Above this many `moved` rows, those no row names any more are dropped at the next write.
MOVED_KEEP = 64
# What using the cache may raise, and only turns it off: SQLite's errors, and UnicodeError for
# a path that is not UTF-8 (a PATH under a directory whose name is other bytes: SQLite text is UTF-8)
_CACHE_ERRORS = (sqlite3.Error, UnicodeError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,      -- absolute path of the source file (or the link followed to it)
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    reader TEXT NOT NULL,       -- READER_VERSION and chunk policy the entry was made with
    manifest TEXT NOT NULL,     -- a committed manifest holding the entry
    entry_path TEXT NOT NULL,   -- the entry's path in that manifest
    used REAL NOT NULL          -- last archive run that read or reused it
)"""
_MOVED = """
CREATE TABLE IF NOT EXISTS moved (
    old TEXT PRIMARY KEY,       -- a manifest rows may name
    new TEXT NOT NULL           -- a later manifest holding those rows' reused entries at the same paths
)"""

_ON_CONFLICT = ("ON CONFLICT(path) DO UPDATE SET dev=excluded.dev, ino=excluded.ino, "
                "size=excluded.size, mtime_ns=excluded.mtime_ns, ctime_ns=excluded.ctime_ns, "
                "reader=excluded.reader, manifest=excluded.manifest, entry_path=excluded.entry_path, "
                "used=excluded.used")
_UPSERT = ("INSERT INTO files(path, dev, ino, size, mtime_ns, ctime_ns, reader, manifest, entry_path, used) "
           "VALUES (?,?,?,?,?,?,?,?,?,?) " + _ON_CONFLICT)
# The same rows from one JSON array of [path, dev, ino, size, mtime_ns, ctime_ns, entry_path],
# the reader, manifest and time shared by all (`_upsert`); "WHERE true" lets SQLite parse the upsert.
# json_extract, not the `->>` operator: that came only with SQLite 3.38, and on an older one
# the statement would fail at every commit (and the cache with it)
_UPSERT_JSON = ("INSERT INTO files(path, dev, ino, size, mtime_ns, ctime_ns, reader, manifest, entry_path, used) "
                "SELECT " + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(6)) +
                ", ?2, ?3, json_extract(value, '$[6]'), ?4 FROM json_each(?1) WHERE true " + _ON_CONFLICT)
_INT64 = (-(1 << 63), 1 << 63)
# Rows per JSON statement: the text stays far below SQLite's length limit (SQLITE_MAX_LENGTH,
# 1e9 bytes by default), which one text for every row of a tree of millions of files passes
_UPSERT_SLICE = 65536


def _upsert(conn: sqlite3.Connection, values: list[tuple[Any, ...]]) -> None:
    """Upsert rows laid out as `_UPSERT` takes them. Rows that share their reader, manifest
    and time (a commit's) and whose numbers are 64-bit ints go in as one statement over a
    JSON array per `_UPSERT_SLICE` rows: SQLite then runs without the GIL for the whole insert,
    instead of taking it back at every row's step, which beside the catalog's own row inserts
    on the committing thread (Repository.commit_manifest's on_stored) made both threads hand
    the GIL over at every row. The rows, their values and types, and their order are executemany's."""
    if not values:
        return
    shared = _json_columns(values)
    if shared is None:  # bound row by row (and executemany says what is wrong, if anything is)
        conn.executemany(_UPSERT, values)
        return
    (reader, mid, used), columns = shared
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    for i in range(0, len(values), _UPSERT_SLICE):
        # ensure_ascii=False: a path that is not UTF-8 text fails to bind, as it does row by row
        rows = json.dumps(list(zip(*(c[i:i + _UPSERT_SLICE] for c in columns))), ensure_ascii=False)
        # json_extract ends a text at a NUL ("\u0000"), and a text over SQLite's length
        # limit (at most 4 UTF-8 bytes a character) is refused: those rows are bound one by one
        if "\\u0000" in rows or 4 * len(rows) >= limit:
            conn.executemany(_UPSERT, values[i:i + _UPSERT_SLICE])
        else:
            conn.execute(_UPSERT_JSON, (rows, reader, mid, used))


def _json_columns(values: list[tuple[Any, ...]]) -> tuple[tuple[str, str, float], tuple[tuple[Any, ...], ...]] | None:
    """((reader, manifest, time), the columns `_UPSERT_JSON` takes from its JSON array) if
    every row of `values` can go in through it: ten values, the last three shared and of
    their types, text paths, 64-bit int numbers. None: the rows are bound one by one."""
    if {*map(len, values)} != {10}:
        return None
    reader, mid, used = values[0][6], values[0][7], values[0][9]
    if {(r[6], r[7], r[9]) for r in values} != {(reader, mid, used)} or \
            type(used) is not float or type(reader) is not str or type(mid) is not str:
        return None
    paths, devs, inos, sizes, mtimes, ctimes, _, _, entry_paths, _ = zip(*values)
    numbers = (*devs, *inos, *sizes, *mtimes, *ctimes)
    if set(map(type, numbers)) != {int} or min(numbers) < _INT64[0] or max(numbers) >= _INT64[1] or \
            set(map(type, paths)) != {str} or set(map(type, entry_paths)) != {str}:
        return None
    return (reader, mid, used), (paths, devs, inos, sizes, mtimes, ctimes, entry_paths)


def cache_path(catalog_path: Path) -> Path:
    return catalog_path.with_name(catalog_path.name + SUFFIX)


class FileStat(NamedTuple):
    """What must be equal for a file to count as unchanged. A tuple, not a dataclass: one is
    made per source file before the first file is read (a serial step of every archive)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStat":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Row:
    stat: FileStat
    reader: str
    manifest: str
    entry_path: str
    used: float = field(default=0.0, compare=False)  # as read (rows); put records the time given


class FilesCache:
    """The SQLite file: rows by absolute path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        switch_to_wal(self._conn, BUSY_TIMEOUT_S)  # asked again while another process switches a new file
        self._conn.execute(_SCHEMA)
        self._conn.execute(_MOVED)

    @classmethod
    def open(cls, path: Path) -> "FilesCache | None":
        """The cache, or None if it cannot be opened (the run then reads every file)."""
        try:
            return cls(path)
        except (sqlite3.Error, OSError):
            return None

    def close(self) -> None:
        self._conn.close()

    def rows(self, paths: Iterable[str]) -> dict[str, Row]:
        out: dict[str, Row] = {}
        wanted = list(paths)
        top = _common_dir(wanted) if len(wanted) > 500 else None
        if top is not None:  # one range scan of the primary key instead of a lookup per path
            want = set(wanted)
            lo = top.rstrip("/") + "/"
            hi = lo[:-1] + chr(ord("/") + 1)
            q = ("SELECT path, dev, ino, size, mtime_ns, ctime_ns, reader, manifest, entry_path, used FROM files "
                 "WHERE path >= ? AND path < ?")
            for p, dev, ino, size, mt, ct, reader, mid, ep, used in self._conn.execute(q, (lo, hi)):
                if p in want:
                    out[p] = Row(FileStat(dev, ino, size, mt, ct), reader, mid, ep, used)
            return out
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            q = (f"SELECT path, dev, ino, size, mtime_ns, ctime_ns, reader, manifest, entry_path, used FROM files "
                 f"WHERE path IN ({','.join('?' * len(part))})")
            for p, dev, ino, size, mt, ct, reader, mid, ep, used in self._conn.execute(q, part):
                out[p] = Row(FileStat(dev, ino, size, mt, ct), reader, mid, ep, used)
        return out

    def any_under(self, tops: Iterable[str]) -> bool:
        """Whether any row's path is one of `tops` or lies below one (one range probe each)."""
        q = "SELECT 1 FROM files WHERE path = ? OR (path >= ? AND path < ?) LIMIT 1"
        return any(self._conn.execute(q, (t, t.rstrip("/") + "/", t.rstrip("/") + "0")).fetchone() is not None
                   for t in tops)

    def moved(self) -> dict[str, str]:
        """old manifest -> the manifest its rows' reused entries moved to (one hop: see put)."""
        return dict(self._conn.execute("SELECT old, new FROM moved"))

    def put(self, rows: Iterable[tuple[str, Row]], now: float, moved: Iterable[str] = (), to: str = "") -> None:
        """Record rows in one transaction, and drop the ones unused for EXPIRE_S. `moved`:
        manifests whose rows' reused entries are now in manifest `to`, at the same paths;
        whatever moved to one of them moves on to `to`, so a lookup is one hop."""
        self.put_values([(p, r.stat.dev, r.stat.ino, r.stat.size, r.stat.mtime_ns, r.stat.ctime_ns, r.reader,
                          r.manifest, r.entry_path, now) for p, r in rows], now, moved, to)

    def put_values(self, values: list[tuple[Any, ...]], now: float,
                   moved: Iterable[str] | Mapping[str, list[tuple[Any, ...]]] = (), to: str = "") -> None:
        """`put` of rows already laid out as the statement takes them (path, dev, ino, size,
        mtime_ns, ctime_ns, reader, manifest, entry_path, used): a commit builds no Row
        per file. `moved` as a mapping (a commit): each manifest -> the rows this run kept
        naming it (laid out the same, naming `to`); it moves only if those are every row
        that looks it up (naming it, or a manifest moved to it), since a row this run did
        not see would otherwise take whatever `to` holds at its path (another source of
        the same name); else its kept rows are written naming `to`."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            if isinstance(moved, Mapping):
                _upsert(self._conn, values)  # rewritten rows no longer name what moved
                values, moving = [], set()
                for old, kept in moved.items():
                    n = self._conn.execute("SELECT count(*) FROM files WHERE manifest=? OR manifest IN "
                                           "(SELECT old FROM moved WHERE new=?)", (old, old)).fetchone()[0]
                    if n == len(kept):
                        moving.add(old)
                    else:
                        values += kept
                moved = moving
            for old in set(moved) - {to}:
                self._conn.execute("UPDATE moved SET new=? WHERE new=?", (to, old))
                self._conn.execute("INSERT INTO moved(old, new) VALUES (?, ?) ON CONFLICT(old) DO UPDATE SET "
                                   "new=excluded.new", (old, to))
            _upsert(self._conn, values)
            self._conn.execute("DELETE FROM files WHERE used < ?", (now - EXPIRE_S,))
            if self._conn.execute("SELECT count(*) FROM moved").fetchone()[0] > MOVED_KEEP:
                self._conn.execute("DELETE FROM moved WHERE old NOT IN (SELECT DISTINCT manifest FROM files)")


def _common_dir(paths: list[str]) -> str | None:
    """The deepest directory holding every one of `paths` (absolute), or None if it is the
    filesystem root (a range over it would be the whole table)."""
    lo, hi = min(paths), max(paths)  # the common prefix of all is that of the least and greatest
    top = os.path.commonprefix([lo, hi])
    if not (lo.startswith(top + "/") and hi.startswith(top + "/")):
        top = top[:top.rfind("/")]  # cut back to a whole component
    return top if top.startswith("/") and top != "/" and top.strip("/") else None


@dataclass
class FilesRun:
    """One archive run's use of the cache: `start` stats every source file and proves the
    cached entries of unchanged ones (chunks in parallel, each hash once); `entry` hands the
    pipeline a reused entry or None (read the file); `commit` records the run's files once
    its manifest is committed."""

    repo: Repository
    reader: str
    cache: FilesCache | None = None
    stats: dict[str, FileStat] = field(default_factory=dict)  # abspath -> stat before any read
    hits: dict[str, Entry] = field(default_factory=dict)      # abspath -> proved entry (its old path)
    proved: dict[str, ChunkRef] = field(default_factory=dict)  # chunks proved intact by `start`
    keys: dict[str, str] = field(default_factory=dict)        # archive path -> abspath, made once
    # the trees read for the previous entries (directory -> tree): the commit keeps those of
    # directories whose entries are all reused as they were (manifests.model.tree_objects)
    trees: dict[str, PreviousTree] = field(default_factory=dict)
    reused: int = 0
    rows: dict[str, Row] = field(default_factory=dict)     # abspath -> its row as `start` read it
    came_from: dict[str, str] = field(default_factory=dict)  # abspath -> manifest its candidate entry is in
    moved: dict[str, str] = field(default_factory=dict)    # the cache's `moved` rows, as read
    # files whose keys and stats are made only when the rows are (`_keyed`): no row of the
    # cache lies under any PATH archived, so nothing is looked up before the first read
    deferred: list[Source] = field(default_factory=list)
    _key_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _keying: threading.Thread | None = field(default=None, repr=False, compare=False)
    _ahead_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def start(cls, repo: Repository, sources: Iterable[Source], policy: Any, *, reread: bool = False,
              trust_verified_within: float | None = None, write_policy: Any = None,
              workers: int = 2) -> "FilesRun":
        run = cls(repo, f"{READER_VERSION}:{policy!r}", FilesCache.open(cache_path(repo.catalog_path)))
        sources = list(sources)
        files = [s for s in sources if not s.is_dir and not s.is_link]
        lookup = run.cache is not None and not reread and not repo.sealed
        # a tree this host never archived (a first archive): its keys and the scan's stats are
        # made with the rows, beside the manifest's commit, not in the serial head of the run
        if all(s.seen is not None for s in files) and \
                (not lookup or not run._rows_under([str(s.abspath) for s in sources if s.parent is None])):
            run.deferred = files
            return run
        run._key(files)
        if not lookup:  # sealed: a write-only host cannot prove by decrypting
            return run
        try:
            rows = run.rows = run.cache.rows(run.stats)  # type: ignore[union-attr]
            run.moved = run.cache.moved()  # type: ignore[union-attr]
        except _CACHE_ERRORS:
            return run
        changed: list[Entry] = []  # with a trust window: the previous entries of changed files
        candidates = run._candidates(rows, changed if trust_verified_within is not None else None)
        run.hits = run._proved(candidates, trust_verified_within, write_policy, workers, changed)
        return run

    def _rows_under(self, tops: list[str]) -> bool:
        """Whether the cache may hold a row for a file at or below one of `tops` (the PATHs
        archived): True if it cannot tell."""
        try:
            return self.cache is not None and self.cache.any_under(tops)
        except _CACHE_ERRORS:
            return True

    def _keyed(self) -> None:
        """Make the keys and stats `start` deferred (from the scan's stats, taken before any read);
        waits for `key_ahead`'s thread if it is making them."""
        with self._key_lock:
            files, self.deferred = self.deferred, []
            if files:
                try:
                    self._key(files)
                except BaseException:
                    self.deferred = files  # made again (and raised) by the commit's own call
                    raise

    def key_ahead(self) -> None:
        """Make the deferred keys and stats on a thread of their own now, while worker processes
        read the files and the driver's core has time to spare, rather than beside the commit,
        where every step of the driver waits for the one GIL. Once per run; a failure there is
        left for the commit's `_keyed` to meet again and raise."""
        def run() -> None:
            try:
                self._keyed()
            except BaseException:  # noqa: BLE001 - the deferred files are kept: the commit raises it
                pass
        with self._ahead_lock:  # called from any thread: one keys thread, the one `close` waits for
            if not self.deferred or self._keying is not None:
                return
            thread = threading.Thread(target=run, name="files-cache-keys", daemon=True)
            thread.start()
            self._keying = thread  # only once started: `close` cannot join a thread that never started

    def _key(self, files: Iterable[Source]) -> None:
        """Each file's key (its absolute path) and its stat before any read."""
        for s in files:
            key = str(s.abspath)
            self.keys[s.path] = key
            if s.seen is not None:  # the scan's stat: taken before any read, as a stat here would be
                self.stats[key] = FileStat(*s.seen)
                continue
            try:
                st = os.stat(key, follow_symlinks=s.followed)
            except OSError:
                continue  # the read reports it
            if (st.st_dev, st.st_ino) == (s.dev, s.ino):
                self.stats[key] = FileStat.of(st)

    def seed(self, done: dict[str, SavedChunk]) -> None:
        """Give the run's chunk writer the chunks proved here, so that a file read after all
        (one of its chunks failed) does not prove its intact chunks a second time."""
        for h, c in self.proved.items():
            done.setdefault(h, SavedChunk(c.stored_size, c.codec, False))

    def _candidates(self, rows: dict[str, Row], changed: list[Entry] | None = None) -> dict[str, Entry]:
        """Unchanged files whose row names a loadable manifest holding a matching entry. With
        `changed`, the previous entries of files that did change are added to it: most of
        their chunks usually come back when they are read."""
        manifests: dict[str, dict[str, Entry] | None] = {}

        def lookup(row: Row) -> tuple[str, Entry | None]:
            """(manifest, its entry at the row's path): where the row's manifest moved to, else its own."""
            mid = row.manifest
            for m in (self.moved.get(mid), mid) if mid in self.moved else (mid,):
                if m not in manifests:
                    manifests[m] = self._files_of(m)
                e = (manifests[m] or {}).get(row.entry_path)
                if e is not None:
                    return m, e
            return mid, None

        out: dict[str, Entry] = {}
        for p, row in rows.items():
            now = self.stats[p]
            if row.reader != self.reader:
                continue
            if row.stat != now:
                if changed is not None:
                    old = lookup(row)[1]
                    if old is not None:
                        changed.append(old)
                continue
            m, e = lookup(row)
            if e is not None and e.size == now.size and e.mtime_ns == now.mtime_ns:
                out[p] = e
                self.came_from[p] = m
        return out

    def _files_of(self, mid: str) -> dict[str, Entry] | None:
        # re-checked against its id; trees the catalog saw proved are not parsed again (archiver.treereuse)
        return entries_by_path(self.repo, mid, self.trees)

    def _proved(self, candidates: dict[str, Entry], trust: float | None, write_policy: Any,
                workers: int, changed: Iterable[Entry] = ()) -> dict[str, Entry]:
        """The candidates whose every chunk proves intact in the store. With a trust window,
        the chunks a recent deep verify proved are trusted in bulk (one catalog query, one
        LIST or a HEAD per pack for their sizes: `Repository.trusted_stored_chunks`); only
        the others are read back, pack by pack (`Repository.prove_stored_chunks`). The trusted chunks of `changed` files' previous entries
        join `proved` too (`seed`), so a changed file read again does not ask the store
        about each of its unchanged chunks; their others are left to save_chunk."""
        refs: dict[str, ChunkRef] = {}
        for e in candidates.values():
            for c in e.chunks:
                refs.setdefault(c.hash, c)  # one proof per hash (offsets may differ between files)
        locked = write_policy is not None and write_policy.locked
        extra: dict[str, ChunkRef] = {}
        for e in () if locked else changed:  # locked: save_chunk extends each reused chunk's lock itself
            for c in e.chunks:
                if c.hash not in refs:
                    extra.setdefault(c.hash, c)
        asked = [*refs.values(), *extra.values()]
        trusted = self.repo.trusted_stored_chunks(asked, trust) if trust is not None and asked else set()
        rest = {h: c for h, c in refs.items() if h not in trusted}
        bad: set[str] = set()
        with ThreadPoolExecutor(workers, thread_name_prefix="files-cache") as pool:
            if rest:  # pack by pack: one read per span of a pack, every chunk in it re-hashed
                bad = set(self.repo.prove_stored_chunks(rest.values(), policy=write_policy, workers=workers))
            if locked and trusted:  # a reused chunk's retention is extended as save_chunk does
                for _ in ordered_map(pool, lambda h: self.repo.lock_existing_chunk(h, write_policy),
                                     sorted(trusted), 4 * workers):
                    pass
        self.proved = {h: c for h, c in refs.items() if h not in bad}
        self.proved.update((h, c) for h, c in extra.items() if h in trusted)
        return {p: e for p, e in candidates.items()
                if not any(c.hash in bad or (c.stored_size, c.codec) != (refs[c.hash].stored_size, refs[c.hash].codec)
                           for c in e.chunks)}

    def entry(self, src: Source) -> Entry | None:
        """The proved entry of an unchanged file, under its path and mode of this run; None: read it."""
        if not self.hits:
            return None
        e = self.hits.get(self.keys.get(src.path) or str(src.abspath))
        if e is None:
            return None
        self.reused += 1
        if e.path == src.path and e.mode == src.mode:
            return e  # as recorded (entries are immutable): no copy per unchanged file
        return Entry(path=src.path, type="file", mode=src.mode, size=e.size, mtime_ns=e.mtime_ns, blake3=e.blake3,
                     sha256=e.sha256, format=e.format, chunks=e.chunks, tech=e.tech)

    def commit(self, mid: str, sources: Iterable[Source], entries: Iterable[Entry]) -> None:
        """Record every file of committed manifest `mid` whose entry matches the stat taken
        before it was read (a file that changed meanwhile is left out: it is read next time)."""
        if self.cache is None:
            return
        self._write(*self._commit_rows(mid, entries), mid)

    def _write(self, rows: list[tuple[Any, ...]], now: float, moved: dict[str, list[tuple[Any, ...]]],
               mid: str) -> None:
        """Write rows `_commit_rows` laid out for manifest `mid`, which is committed."""
        assert self.cache is not None
        try:
            self.cache.put_values(rows, now, moved, mid)
        except _CACHE_ERRORS:
            pass  # the archive stands; the next run reads these files again

    def commit_when(self, mid: str, entries: Iterable[Entry]) -> "PendingCommit | None":
        """`commit` on a thread of its own while manifest `mid` is still being committed
        (Repository.commit_manifest's `on_id`): the rows are laid out meanwhile, and written
        once `PendingCommit.decide` (the manifest is in the store: `on_stored`) or `finish`
        says `mid` was committed, so a row never names a manifest that is not. None without
        a cache."""
        if self.cache is None:
            return None
        return PendingCommit(self, mid, list(entries))

    def _commit_rows(self, mid: str, entries: Iterable[Entry]
                     ) -> tuple[list[tuple[Any, ...]], float, dict[str, list[tuple[Any, ...]]]]:
        """The rows `commit` writes (laid out as FilesCache.put_values takes them), the time
        they are written at, and the moved manifests' kept rows."""
        self._keyed()
        by_path = {e.path: e for e in entries if e.type == "file"}
        rows = []
        add = rows.append
        moved: dict[str, list[tuple[Any, ...]]] = {}  # manifest -> rows kept naming it (see put_values)
        reader, now, stats = self.reader, time.time(), self.stats
        for path, key in self.keys.items():
            e = by_path.get(path)
            st = stats.get(key)
            if e is None or st is None:
                continue
            if e.size == st.size and e.mtime_ns == st.mtime_ns:  # laid out as FilesCache.put_values takes them
                old = self.rows.get(key)
                if (old is not None and e is self.hits.get(key) and old.entry_path == path and old.stat == st
                        and old.reader == reader and now - old.used < REFRESH_S):
                    # the very entry, at the same path: `mid` holds it now
                    moved.setdefault(self.came_from[key], []).append(
                        (key, st.dev, st.ino, st.size, st.mtime_ns, st.ctime_ns, reader, mid, path, now))
                    continue
                add((key, st.dev, st.ino, st.size, st.mtime_ns, st.ctime_ns, reader, mid, path, now))
        return rows, now, moved

    def close(self) -> None:
        if self._keying is not None:
            self._keying.join()
        if self.cache is not None:
            self.cache.close()


class PendingCommit:
    """A files-cache commit running beside the manifest's commit (FilesRun.commit_when): its
    rows are laid out while the commit writes its trees and root, and written in one short
    transaction once `finish(True)` says the manifest was committed. Not written meanwhile in
    a transaction held open: that would hold the cache's one write lock through the whole
    commit, and another archive on this host committing then would wait out the busy timeout
    and lose its rows (its next run reads every file again)."""

    def __init__(self, run: FilesRun, mid: str, entries: list[Entry]) -> None:
        self.mid = mid
        self._decided = threading.Event()
        self._committed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(run, entries), name="files-cache-commit",
                                        daemon=True)
        self._thread.start()

    def _run(self, run: FilesRun, entries: list[Entry]) -> None:
        try:
            rows, now, moved = run._commit_rows(self.mid, entries)
            self._decided.wait()
            if self._committed:
                run._write(rows, now, moved, self.mid)
        except _CACHE_ERRORS:
            pass  # laying the rows out met the cache's error: the next run reads these files again
        except BaseException as e:  # noqa: BLE001 - raised by finish, on the committing thread
            self._error = e

    def decide(self, committed: bool) -> None:
        """Say, without waiting, whether manifest `mid` is durably in the store: its rows are
        then written (or dropped) on this commit's thread while the caller goes on (the
        manifest's catalog record). Safe before that record: a row is only ever a candidate,
        its manifest re-read and re-checked and its chunks proved before any reuse."""
        if not self._decided.is_set():
            self._committed = committed
            self._decided.set()

    def finish(self, committed: bool) -> None:
        """Write the rows if manifest `mid` was committed, else drop them (unless `decide`
        said so already); waits for the thread, and raises what it raised unexpectedly (as
        `commit` would have)."""
        if not self._decided.is_set():
            self._committed = committed
            self._decided.set()
        self._thread.join()
        if self._error is not None and committed:
            raise self._error
