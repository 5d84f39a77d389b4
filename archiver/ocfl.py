"""export --ocfl: an archive's version chain as an OCFL 1.1 object (https://ocfl.io/1.1/spec/).

REF names the newest version; its `parent` chain, oldest first, becomes v1..vN. Content is
stored once per distinct file (keyed by the manifest's SHA-256, which `stream_file` checks
while the bytes are written, and addressed in the inventory by SHA-512, computed on the
way), in the version that first holds it: a later version that keeps a file only names it
in its state. Each version directory carries the inventory as of that version, the root
the newest, each with its .sha512 sidecar. Directories (OCFL has no empty ones) and
symlinks are not part of an OCFL object's state; the version message names the archiver
manifest each version came from. Built under a temporary name and renamed into place."""
from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from archiver.bagit import ExportResult, staged, write_file
from archiver.errors import IntegrityError, translated
from archiver.parallel import default_workers, window_for
from archiver.progress import Progress
from archiver.repository import Repository
from manifests.model import Manifest
from manifests.paths import check_paths

SPEC = "1.1"
INVENTORY_TYPE = "https://ocfl.io/1.1/spec/#inventory"


def version_chain(repo: Repository, mid: str) -> list[tuple[str, Manifest]]:
    """(id, manifest) from the root of `mid`'s parent chain to `mid`, each checked against its id."""
    chain: list[tuple[str, Manifest]] = []
    seen: set[str] = set()
    cur: str | None = mid
    while cur is not None:
        if cur in seen:
            raise IntegrityError(f"the parent chain of {mid[:16]} has a cycle at {cur[:16]}")
        seen.add(cur)
        m = repo.load_manifest(cur) if repo.is_recorded(cur) else repo.fetch_manifest(cur)
        if chain and m.name != chain[-1][1].name:
            raise IntegrityError(f"broken chain: {cur[:16]} is named {m.name!r}, not {chain[-1][1].name!r}")
        chain.append((cur, m))
        cur = m.parent
    return chain[::-1]


def _created(at: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if at is None else at))


def _inventory(object_id: str, versions: dict[str, dict[str, Any]], manifest: dict[str, list[str]],
               fixity: dict[str, list[str]]) -> dict[str, Any]:
    head = f"v{len(versions)}"
    return {"id": object_id, "type": INVENTORY_TYPE, "digestAlgorithm": "sha512", "head": head,
            "contentDirectory": "content", "manifest": {d: list(p) for d, p in manifest.items()},
            "fixity": {"sha256": {d: list(p) for d, p in fixity.items()}},
            "versions": {k: versions[k] for k in sorted(versions, key=lambda v: int(v[1:]))}}


def _write_inventory(directory: Path, inventory: dict[str, Any]) -> None:
    data = json.dumps(inventory, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")
    for name, blob in (("inventory.json", data),
                       ("inventory.json.sha512", f"{hashlib.sha512(data).hexdigest()}  inventory.json\n".encode())):
        with open(directory / name, "xb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())


def export_ocfl(repo: Repository, ref: str, dest: str | os.PathLike, *, workers: int | None = None,
                trusted: list[bytes] | None = None, progress: Progress | None = None) -> ExportResult:
    """Write the chain ending at `ref` as an OCFL 1.1 object at `dest` (new or empty)."""
    started = time.monotonic()
    progress = progress or Progress()
    mid = repo.resolve(ref)
    chain = version_chain(repo, mid)
    if trusted:
        for vid, _m in chain:
            bad = repo.signature_problems(vid, trusted)
            if bad:
                raise IntegrityError(f"refusing to export {vid[:16]}: {'; '.join(bad)}")
    for _vid, m in chain:
        with translated():
            check_paths((e.path, e.type) for e in m.entries)
    name = chain[-1][1].name
    recorded = {r.id: r.recorded_at for r in repo.list_archives(name)}
    root = Path(dest)
    result = ExportResult(id=mid, dest=str(root), format="ocfl")
    object_id = "urn:archiver:" + urllib.parse.quote(name, safe="")
    stored: dict[str, str] = {}  # manifest sha256 -> sha512 of content already in the object
    manifest: dict[str, list[str]] = {}
    fixity: dict[str, list[str]] = {}
    versions: dict[str, dict[str, Any]] = {}
    nworkers = workers or default_workers()
    with staged(root, progress) as tmp:
        progress.start(f"export {name}", sum(e.size for _, m in chain for e in m.files))
        (tmp / "0=ocfl_object_1.1").write_text("ocfl_object_1.1\n")
        with ThreadPoolExecutor(nworkers, thread_name_prefix="export") as pool:
            for n, (vid, m) in enumerate(chain, start=1):
                vdir = tmp / f"v{n}"
                vdir.mkdir()
                state: dict[str, list[str]] = {}
                for e in sorted(m.files, key=lambda e: e.path):
                    if e.sha256 not in stored:
                        content = f"v{n}/content/{e.path}"
                        digests = write_file(repo, e, tmp / content, pool, window_for(nworkers), progress,
                                             ("sha512", "sha256"))
                        stored[e.sha256] = digests["sha512"]
                        manifest[digests["sha512"]] = [content]
                        fixity[digests["sha256"]] = [content]
                        result.files += 1
                        result.bytes += e.size
                    else:
                        progress.advance(e.size)
                    state.setdefault(stored[e.sha256], []).append(e.path)
                versions[f"v{n}"] = {
                    "created": _created(recorded.get(vid)),
                    "message": f"archiver manifest {vid} ({m.name}@{m.label or '-'})",
                    "user": {"name": "archiver", "address": f"urn:archiver:manifest:{vid}"},
                    "state": {d: sorted(p) for d, p in state.items()}}
                _write_inventory(vdir, _inventory(object_id, versions, manifest, fixity))
                result.versions.append(vid)
        _write_inventory(tmp, _inventory(object_id, versions, manifest, fixity))
    result.seconds = round(time.monotonic() - started, 3)
    return result
