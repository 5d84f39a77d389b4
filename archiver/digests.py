"""Whole-file digests, the same on the way in (archive) and on the way out (verify,
restore): BLAKE3 always, SHA-256 where it is recorded or re-checked."""
from __future__ import annotations

import hashlib

import blake3

from manifests.model import Entry


class FileDigest:
    """Running BLAKE3 (+ optional SHA-256) of one file's bytes, fed in order.

    Restore skips SHA-256 (a third of its CPU); every chunk is already re-hashed with
    BLAKE3 and `verify --deep` re-checks SHA-256 for auditors."""

    def __init__(self, sha256: bool = True) -> None:
        self._b3 = blake3.blake3()
        self._sha = hashlib.sha256() if sha256 else None

    def update(self, data: bytes | memoryview) -> None:
        self._b3.update(data)
        if self._sha is not None:
            self._sha.update(data)

    @property
    def blake3(self) -> str:
        return self._b3.hexdigest()

    @property
    def sha256(self) -> str:
        if self._sha is None:
            raise ValueError("this digest was made without SHA-256")
        return self._sha.hexdigest()

    def matches(self, e: Entry) -> bool:
        return self.blake3 == e.blake3 and (self._sha is None or self.sha256 == e.sha256)
