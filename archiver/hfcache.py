"""Hugging Face cache snapshots: `.../models--ORG--NAME/snapshots/REV/`, whose files are
symlinks into `../../blobs/`, named by their content hash (SHA-256 for LFS files, git's
SHA-1 for small ones).

Archiving such a directory follows those symlinks (what the snapshot *means* is the blob
bytes), records the repo id and revision, and checks each LFS blob's bytes against its
name: a blob whose SHA-256 is not its name was tampered with or rotted in the cache, and
archiving it would preserve the damage under a good name."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_REPO_DIR = re.compile(r"^(models|datasets|spaces)--(.+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Snapshot:
    repo_type: str  # "model", "dataset" or "space"
    repo_id: str    # "org/name" (or "name")
    revision: str   # the snapshot directory's name: a commit hash
    blobs: Path     # the repository's blobs/ directory

    def meta(self) -> dict[str, str]:
        """What an archive of the snapshot records in its meta."""
        return {"hf.repo_type": self.repo_type, "hf.repo_id": self.repo_id, "hf.revision": self.revision}


def snapshot_of(path: Path) -> Snapshot | None:
    """The snapshot `path` is (an absolute path ending in REPO/snapshots/REV), or None."""
    rev, snaps, repo = path.name, path.parent.name, path.parent.parent.name
    m = _REPO_DIR.match(repo)
    if snaps != "snapshots" or m is None or not rev:
        return None
    blobs = path.parent.parent / "blobs"
    if not blobs.is_dir():
        return None
    return Snapshot(m.group(1).rstrip("s"), m.group(2).replace("--", "/"), rev, blobs)


def in_blobs(snapshot: Snapshot, link_dir: Path, target: str) -> str | None:
    """The blob name if symlink `target` (relative to `link_dir`) names a file directly in
    the snapshot's blobs/ directory, else None. Lexical: no symlink is followed to decide."""
    resolved = Path(os.path.normpath(link_dir / target))
    return resolved.name if resolved.parent == snapshot.blobs else None


def lfs_sha256(blob: str | None) -> str | None:
    """The SHA-256 a blob's name promises (LFS blobs are named by it), or None (git SHA-1 names)."""
    return blob if blob is not None and _SHA256.match(blob) else None
