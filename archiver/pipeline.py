"""archive: files -> chunks -> (hash, dedup, encode, check, put) on a thread pool -> manifest.

One pass over each file, reading sequentially on the calling thread (which also keeps
the whole-file BLAKE3 and SHA-256); a bounded window of chunks is in flight in the
worker pool, so memory stays at a few chunks whatever the file size. BLAKE3 and zstd
release the GIL, so both cores are busy. The manifest is written only after every chunk
it names is durably in the store, then recorded in the catalog in one transaction."""
from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import blake3

from archiver.chunking import ChunkPolicy, RawChunk, iter_chunks
from archiver.errors import ArchiverError, SourceChangedError, UsageError
from archiver.formats import detect_regions
from archiver.parallel import default_workers, ordered_map, window_for
from archiver.progress import Progress
from archiver.repository import Repository
from archiver.scan import Source, scan
from manifests.model import ChunkRef, Entry, Manifest, chunk_key


@dataclass
class ArchiveResult:
    id: str
    name: str
    label: str | None
    files: int
    dirs: int
    bytes_in: int
    bytes_stored: int
    new_bytes_stored: int
    chunks: int
    new_chunks: int
    seconds: float
    parent: str | None = None
    signed_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    new_chunks: int = 0
    new_bytes: int = 0


class _ChunkWriter:
    """Stores one chunk at most once per run, deduplicating against the store."""

    def __init__(self, repo: Repository, stats: _Stats) -> None:
        self.repo = repo
        self.stats = stats
        self.done: dict[str, tuple[int, str]] = {}
        self.lock = threading.Lock()

    def __call__(self, rc: RawChunk) -> ChunkRef:
        data = rc.data
        h = blake3.blake3(data).hexdigest()
        with self.lock:
            hit = self.done.get(h)
        if hit is None:
            hit = self._ensure_stored(h, data, rc.width)
            with self.lock:
                self.done[h] = hit
        return ChunkRef(rc.offset, len(data), h, hit[0], hit[1])

    def _ensure_stored(self, h: str, data: bytes, width: int) -> tuple[int, str]:
        repo = self.repo
        key = chunk_key(h)
        info = repo.store.stat(key)
        if info is not None:
            known = repo.catalog.known_chunk(h)
            if known is not None and known[0] == info.size:
                return known
            existing = repo.check_existing_chunk(h, len(data))  # not ours: prove it first
            return existing.stored_size, existing.codec
        enc = repo.codec.encode(data, width)  # checks every zstd frame it makes round-trips
        if repo.store.put_if_absent(key, enc.data):
            with self.stats.lock:
                self.stats.new_chunks += 1
                self.stats.new_bytes += len(enc.data)
            return len(enc.data), enc.codec
        existing = repo.check_existing_chunk(h, len(data))  # lost the race, or a lost PUT response
        return existing.stored_size, existing.codec


def archive(repo: Repository, paths: list[str | os.PathLike], *, name: str, label: str | None = None,
            meta: dict[str, str] | None = None, policy: ChunkPolicy | None = None, workers: int | None = None,
            progress: Progress | None = None, sign_key: Any = None) -> ArchiveResult:
    """Archive files and directories under `name`; returns the committed manifest's summary.
    With `sign_key` (an Ed25519 private key) the manifest id is signed before it is recorded."""
    _check_name(name, "name")
    if label is not None:
        _check_name(label, "label")
    started = time.monotonic()
    policy = policy or ChunkPolicy()
    progress = progress or Progress()
    sources = scan(paths)
    progress.start(f"archive {name}", sum(s.size for s in sources))
    stats = _Stats()
    writer = _ChunkWriter(repo, stats)
    nworkers = workers or default_workers()
    entries: list[Entry] = []
    with ThreadPoolExecutor(max_workers=nworkers, thread_name_prefix="archive") as pool:
        for src in sources:
            if src.is_dir:
                entries.append(Entry(path=src.path, type="dir", mode=src.mode))
            else:
                entries.append(_archive_file(src, pool, writer, policy, window_for(nworkers), progress))
    progress.finish()
    parent = repo.catalog.latest(name)
    manifest = Manifest(name=name, label=label, meta=dict(meta or {}), parent=parent, entries=tuple(entries))
    mid, data = repo.write_manifest(manifest)
    signer = repo.sign_manifest(mid, sign_key).fingerprint if sign_key is not None else None
    uniq = manifest.unique_chunks()
    result = ArchiveResult(
        id=mid, name=name, label=label, files=len(manifest.files), dirs=len(entries) - len(manifest.files),
        bytes_in=manifest.total_size, bytes_stored=sum(c.stored_size for c in uniq.values()),
        new_bytes_stored=stats.new_bytes, chunks=len(uniq), new_chunks=stats.new_chunks,
        seconds=round(time.monotonic() - started, 3), parent=parent, signed_by=signer,
    )
    details = result.to_dict()
    details.pop("id")
    repo.catalog.record_manifest(manifest, data, event_details=details)
    return result


def _archive_file(src: Source, pool: ThreadPoolExecutor, writer: _ChunkWriter, policy: ChunkPolicy,
                  window: int, progress: Progress) -> Entry:
    try:
        f = open(src.abspath, "rb")
    except OSError as e:
        raise ArchiverError(f"cannot read {src.abspath}: {e.strerror}") from None
    with f:
        before = os.fstat(f.fileno())
        size = before.st_size
        fmt = detect_regions(f, size)
        f.seek(0)
        b3 = blake3.blake3()
        sha = hashlib.sha256()

        def chunks() -> Iterator[RawChunk]:
            for rc in iter_chunks(f, size, policy):
                b3.update(rc.data)
                sha.update(rc.data)
                progress.advance(len(rc.data))
                yield rc

        try:
            refs = [ref for _, ref in ordered_map(pool, writer, chunks(), window)]
        except OSError as e:
            raise ArchiverError(f"cannot read {src.abspath}: {e.strerror}") from None
        after = os.fstat(f.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or \
            os.stat(src.abspath).st_ino != before.st_ino:
        raise SourceChangedError(f"{src.abspath} changed while it was being archived; nothing was recorded, re-run")
    return Entry(path=src.path, type="file", mode=src.mode, size=size, mtime_ns=before.st_mtime_ns,
                 blake3=b3.hexdigest(), sha256=sha.hexdigest(), format=fmt[0] if fmt else "",
                 chunks=tuple(refs))


def _check_name(value: str, what: str) -> None:
    if not value or "@" in value or any(ord(c) < 32 for c in value) or value != value.strip():
        raise UsageError(f"invalid {what} {value!r}: must be non-empty, without '@', control characters "
                         f"or surrounding spaces")
