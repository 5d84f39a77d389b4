"""export --bagit: an archive as a BagIt bag (RFC 8493), for repositories and tools that
speak the standard instead of archiver's store format.

    DEST/bagit.txt                 BagIt-Version 1.0, UTF-8
    DEST/bag-info.txt              Bagging-Date, Payload-Oxum, External-Identifier (the manifest id),
                                   Bag-Software-Agent, the profile's fields (Profile-KEY: VALUE)
    DEST/data/...                  the archive's files, byte for byte
    DEST/manifest-sha256.txt, manifest-sha512.txt
    DEST/archiver/manifest.json    the archiver manifest (its BLAKE3 is the External-Identifier)
    DEST/archiver/signatures/*.json  its Ed25519 signatures, if any
    DEST/archiver/trees/<h>.json     manifest v3: the trees holding its entries (h = BLAKE3 of the bytes)
    DEST/tagmanifest-sha256.txt, tagmanifest-sha512.txt

Every byte comes through Repository.stream_file (each chunk re-hashed with BLAKE3, the whole
file with BLAKE3 and SHA-256 against the manifest) and is hashed again here for the bag's
SHA-256 and SHA-512 manifests while it is written, one window of chunks at a time: memory
stays bounded whatever the file size. The bag is built under a temporary name beside DEST
and renamed into place only when complete, so DEST never holds half a bag."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from archiver.errors import DestinationError, DestinationFullError, IntegrityError
from archiver.fileio import write_all
from archiver.parallel import default_workers, window_for
from archiver.progress import Progress
from archiver.repository import Repository
from archiver.restorer import load_checked
from manifests.fields import flatten
from manifests.model import Entry

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass
class ExportResult:
    id: str
    dest: str
    format: str
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    versions: list[str] = field(default_factory=list)  # OCFL: manifest id of v1..vN

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def encode_path(path: str) -> str:
    """A file name as a BagIt manifest line writes it (RFC 8493 2.1.3: %, CR and LF percent-encoded)."""
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def one_line(text: str) -> str:
    """A bag-info value on one line: newlines and runs of whitespace become one space."""
    return " ".join(str(text).split())


def label(key: str) -> str:
    """A bag-info label from a metadata key: no colon and no whitespace (RFC 8493 2.2.2)."""
    return "".join("_" if ch == ":" or ch.isspace() else ch for ch in key)


def staging_dir(dest: Path) -> Path:
    """A fresh directory beside `dest` to build in; DEST must not exist or be an empty directory."""
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise DestinationError(str(dest), "must not exist, or be an empty directory", exit_code=2)
    parent = dest.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{dest.name}.archiver-export-{secrets.token_hex(6)}"
        tmp.mkdir()
    except OSError as e:
        raise DestinationError(str(dest), f"cannot create: {e.strerror}") from None
    return tmp


def finish(tmp: Path, dest: Path) -> None:
    """Rename the finished directory to DEST (replacing an empty directory) and fsync its parent."""
    if dest.exists():
        dest.rmdir()  # empty (checked before), or someone wrote into it meanwhile: refused by rmdir
    os.rename(tmp, dest)
    fd = os.open(dest.absolute().parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged(dest: Path, progress: Progress) -> Iterator[Path]:
    """Build an export in a fresh staging directory beside `dest`: renamed to `dest` when
    the block completes, removed if anything fails, so no partial export is ever left under
    its name. Every export format finishes through here."""
    tmp = staging_dir(dest)
    try:
        yield tmp
        finish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        progress.finish()


def write_file(repo: Repository, e: Entry, target: Path, pool: ThreadPoolExecutor, window: int,
               progress: Progress, algorithms: tuple[str, ...]) -> dict[str, str]:
    """Write one file's verified bytes to `target` (created new, never through a symlink) and
    return its hex digests for `algorithms`. Damage raises (the export is then abandoned)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    hashes = {a: hashlib.new(a) for a in algorithms}
    try:
        fd = os.open(target, _CREATE, 0o600)
        try:
            for piece in repo.stream_file(e, pool, window):  # chunk and whole-file checks inside
                assert piece.data is not None
                for h in hashes.values():
                    h.update(piece.data)
                write_all(fd, piece.data)
                progress.advance(len(piece.data))
            os.fchmod(fd, e.mode & 0o777)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.utime(target, ns=(e.mtime_ns, e.mtime_ns))
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise DestinationFullError(e.path) from None
        raise DestinationError(str(target), f"cannot write: {err.strerror}") from None
    digests = {a: h.hexdigest() for a, h in hashes.items()}
    if "sha256" in digests and digests["sha256"] != e.sha256:  # stream_file checked it too: belt and braces
        raise IntegrityError(f"{e.path}: SHA-256 of the exported bytes does not match the manifest")
    return digests


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _digest_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bag_info(mid: str, m: Any, oxum: str, software: str, bagging_date: str) -> list[tuple[str, str]]:
    """The bag-info.txt (label, value) lines: the required and reserved fields first, then
    the profile's fields as Profile-KEY (dotted key paths, one line per list item)."""
    info = [("Bagging-Date", bagging_date), ("Payload-Oxum", oxum), ("External-Identifier", mid),
            ("External-Description", one_line(f"archiver archive {m.name}@{m.label or '-'} (manifest BLAKE3 {mid})")),
            ("Bag-Software-Agent", software)]
    if m.profile is not None:
        data = m.profile["data"]
        if isinstance(data.get("developer"), str):
            info.append(("Source-Organization", one_line(data["developer"])))
        custodian = data.get("custodian")
        if isinstance(custodian, dict):
            if isinstance(custodian.get("name"), str):
                info.append(("Contact-Name", one_line(custodian["name"])))
            if isinstance(custodian.get("contact"), str) and "@" in custodian["contact"]:
                info.append(("Contact-Email", one_line(custodian["contact"])))
        info.append(("Archiver-Profile", m.profile["id"]))
        for key, value in flatten(data):
            info.append((f"Profile-{label(key)}", one_line(value if isinstance(value, str) else json.dumps(value))))
    for key, value in sorted(m.meta.items()):
        info.append((f"Archiver-Meta-{label(key)}", one_line(value)))
    for role, path in sorted(m.attachments, key=lambda a: a[1]):
        info.append(("Archiver-Attachment", f"{role}: data/{one_line(path)}"))
    return info


def export_bag(repo: Repository, ref: str, dest: str | os.PathLike, *, workers: int | None = None,
               trusted: list[bytes] | None = None, progress: Progress | None = None) -> ExportResult:
    """Write the archive `ref` as a BagIt bag at `dest` (which must not exist or be empty)."""
    started = time.monotonic()
    progress = progress or Progress()
    mid, m = load_checked(repo, ref, trusted, "export")
    root = Path(dest)
    result = ExportResult(id=mid, dest=str(root), format="bagit")
    files = sorted(m.files, key=lambda e: e.path)
    nworkers = workers or default_workers()
    with staged(root, progress) as tmp:
        progress.start(f"export {m.name}", sum(e.size for e in files))
        lines: dict[str, list[str]] = {"sha256": [], "sha512": []}
        with ThreadPoolExecutor(nworkers, thread_name_prefix="export") as pool:
            for e in sorted(m.entries, key=lambda e: e.path):
                if e.type == "dir":
                    (tmp / "data" / e.path).mkdir(parents=True, exist_ok=True)
                    continue
                if not e.is_file:
                    continue
                digests = write_file(repo, e, tmp / "data" / e.path, pool, window_for(nworkers), progress,
                                     ("sha256", "sha512"))
                for alg, hexd in digests.items():
                    lines[alg].append(f"{hexd}  {encode_path('data/' + e.path)}\n")
                result.files += 1
                result.bytes += e.size
        (tmp / "data").mkdir(exist_ok=True)
        _write_text(tmp / "bagit.txt", "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n")
        for alg, ls in lines.items():
            _write_text(tmp / f"manifest-{alg}.txt", "".join(ls))
        _write_bytes(tmp / "archiver" / "manifest.json", m.canonical_json())
        for h, (_, tree_data) in sorted(repo.manifest_trees(m).items()):  # v3: the trees its id covers
            _write_bytes(tmp / "archiver" / "trees" / f"{h}.json", tree_data)
        for fingerprint, data in repo.signature_objects(mid)[0]:  # the valid ones only
            _write_bytes(tmp / "archiver" / "signatures" / f"{fingerprint}.json", data)
        info = bag_info(mid, m, f"{result.bytes}.{result.files}", f"archiver {_version()}",
                        time.strftime("%Y-%m-%d", time.gmtime()))
        _write_text(tmp / "bag-info.txt", "".join(f"{k}: {v}\n" for k, v in info))
        tags = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*")
                      if p.is_file() and not p.relative_to(tmp).as_posix().startswith(("data/", "tagmanifest-")))
        for alg in ("sha256", "sha512"):
            _write_text(tmp / f"tagmanifest-{alg}.txt",
                        "".join(f"{_digest_file(tmp / t, alg)}  {encode_path(t)}\n" for t in tags))
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("archiver")
    except Exception:  # noqa: BLE001 - running from a checkout without metadata
        return "dev"
