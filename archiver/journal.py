"""The resume journal of an archive run: which files are already archived, and as what.

A driver killed after K of M files (a preempted node, a lost SSH session, Ctrl-C) leaves
their entries here; the same archive re-run (same store, name, label, metadata and paths,
which make up the journal's key) reuses each entry whose source file is provably the one
that was read: same device, inode, size, mtime and ctime. Everything else is archived
again, and the driver still checks by LIST that every chunk a reused entry names is in the
store before it commits. The journal lives under the archiver home (never in the store: it
is this driver's scratch, not part of any archive) and is removed once the manifest is
committed. One JSON line per file; lines are written out in batches (every BATCH_LINES lines,
and whenever the caller asks for a sync, about once a second), so a killed process loses at
most its last unwritten batch: those files are simply archived again on resume (a torn last
line is ignored). A clean stop (an error, Ctrl-C) writes everything out in `close`."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import blake3

from manifests.model import Entry, Manifest, canonical, parse_manifest

JOURNAL_DIR = "journals"
VERSION = 1
BATCH_LINES = 512  # lines held in memory before one write(): a write and flush per file cost more than the file


def snapshot_of(st: os.stat_result) -> list[int]:
    """What must not have moved for a journalled entry to be reused (ctime cannot be set back)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def journal_key(store_url: str, name: str, label: str | None, meta: dict[str, str] | None,
                paths: Iterable[str | os.PathLike], extra: dict[str, Any] | None = None) -> str:
    """BLAKE3 of the archive's inputs: another archive (other paths, name or store) never
    picks up this journal."""
    inputs = {"v": VERSION, "store": store_url, "name": name, "label": label, "meta": meta or {},
              "paths": [os.path.abspath(os.fspath(p)) for p in paths], "extra": extra or {}}
    return blake3.blake3(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # what json.dumps writes for a str
_PLAIN_LINE = ('{"path": %s, "snapshot": [%d, %d, %d, %d, %d], "entry": {"path": %s, "type": "file", "mode": %d, '
               '"size": %d, "mtime_ns": %d, "blake3": %s, "sha256": %s, "format": %s, "chunks": [%s]}}\n')
_PLAIN_CHUNK = '[%d, %d, %s, %d, %s]'
_FIVE_INTS = [int] * 5


def line_of(entry: Entry, snapshot: list[int]) -> bytes:
    """One journal line: `json.dumps({"path", "snapshot", "entry": entry.to_json()})`, byte
    for byte. A file with inline chunks, no tech and exact ints (every small file) is laid
    out by %-formatting, since the JSON encoder's dicts are most of a small file's journal
    cost; any other entry goes through json.dumps."""
    e = entry
    if e.type == "file" and e.tech is None and not e.filemap and type(e.mode) is int and type(e.size) is int \
            and type(e.mtime_ns) is int and list(map(type, snapshot)) == _FIVE_INTS:
        parts = []
        for c in e.chunks:
            if type(c.offset) is not int or type(c.length) is not int or type(c.stored_size) is not int:
                break
            parts.append(_PLAIN_CHUNK % (c.offset, c.length, _str(c.hash), c.stored_size, _str(c.codec)))
        else:
            path = _str(e.path)
            return (_PLAIN_LINE % (path, *snapshot, path, e.mode, e.size, e.mtime_ns, _str(e.blake3),
                                   _str(e.sha256), _str(e.format), ", ".join(parts))).encode()
    return json.dumps({"path": e.path, "snapshot": snapshot, "entry": e.to_json()}).encode() + b"\n"


def small_line(path: str, snapshot: list[int], mode: int, size: int, mtime_ns: int, b3: str, sha256: str,
               chunk: tuple[int, str, int, str] | None) -> bytes:
    """`line_of` of a small file's entry (type "file", format "", no tech, at most one chunk:
    `chunk` = (length, hash, stored_size, codec) at offset 0), byte for byte, laid out from those
    values by a worker process (procfiles) without making the Entry first. Ints only (os.stat's)."""
    p = _str(path)
    chunks = _PLAIN_CHUNK % (0, chunk[0], _str(chunk[1]), chunk[2], _str(chunk[3])) if chunk is not None else ""
    return (_PLAIN_LINE % (p, *snapshot, p, mode, size, mtime_ns, _str(b3), _str(sha256), '""', chunks)).encode()


@dataclass(frozen=True)
class Journalled:
    snapshot: list[int]
    entry: Entry


class Journal:
    """An append-only file of (path, snapshot, entry) lines."""

    def __init__(self, path: Path, batch_lines: int | None = None) -> None:
        self.path = path
        self._fh: Any = None
        self._batch = max(1, BATCH_LINES if batch_lines is None else batch_lines)
        self._pending: list[bytes] = []

    @classmethod
    def under(cls, home: Path, key: str) -> "Journal":
        return cls(Path(home) / JOURNAL_DIR / f"{key}.jsonl")

    def load(self) -> dict[str, Journalled]:
        """The entries recorded so far, by archive path; unreadable lines are skipped."""
        out: dict[str, Journalled] = {}
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return out
        for line in raw.splitlines():
            try:
                rec = json.loads(line)
                shell = Manifest(name="journal", entries=()).to_dict()
                shell["entries"] = [rec["entry"]]
                m = parse_manifest(canonical(shell))  # every check the manifest reader makes
                entry = m.entries[0]
                snap = [int(x) for x in rec["snapshot"]]
            except Exception:  # noqa: BLE001 - a torn, foreign or malformed line is not resumed
                continue
            if entry.path == rec.get("path") and len(snap) == 5:
                out[entry.path] = Journalled(snap, entry)
        return out

    def record(self, entry: Entry, snapshot: list[int], *, sync: bool = True) -> None:
        """Append one archived file. Lines are written out a batch at a time (a killed process
        loses at most the batch not yet written: those files are redone on resume); `sync`
        writes out the batch now and fsyncs it (against power loss), which callers do about
        once a second."""
        self._pending.append(line_of(entry, snapshot))
        if sync or len(self._pending) >= self._batch:
            self._write_out(sync)

    def record_lines(self, lines: bytes, *, sync: bool = True) -> None:
        """Append lines already made by `line_of` (a worker process made them, beside the
        entries it hands back), written out now, after the pending ones; `sync` as in `record`."""
        self._pending.append(lines)
        self._write_out(sync)

    def _write_out(self, sync: bool) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")
        if self._pending:
            self._fh.write(b"".join(self._pending))
            self._pending = []
            self._fh.flush()
        if sync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Write out and fsync what is still pending."""
        if self._pending:
            self._write_out(True)
        if self._fh is not None:
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        """The archive is committed: nothing is left to resume."""
        self._pending = []  # nothing to keep: not written out only to be deleted
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
