"""Whole-file digests, the same on the way in (archive) and on the way out (verify,
restore): BLAKE3 always, SHA-256 where it is recorded or re-checked."""
from __future__ import annotations

import hashlib

import blake3 as _blake3

from manifests.model import Entry


class FileDigest:
    """Running BLAKE3 (+ optional SHA-256) of one file's bytes, fed in order.

    Restore skips SHA-256 (a third of its CPU); every chunk is already re-hashed with
    BLAKE3 and `verify --deep` re-checks SHA-256 for auditors."""

    def __init__(self, sha256: bool = True, *, blake3: bool = True) -> None:
        """`blake3=False`: the caller has proved the file's BLAKE3 otherwise (a one-chunk file,
        whose chunk was re-hashed on read and is the whole file): `matches` then checks only
        SHA-256 (when kept), and `blake3` cannot be asked for."""
        self._b3 = _blake3.blake3() if blake3 else None
        self._sha = hashlib.sha256() if sha256 else None

    def update(self, data: bytes | memoryview) -> None:
        if self._b3 is not None:
            self._b3.update(data)
        if self._sha is not None:
            self._sha.update(data)

    @property
    def blake3(self) -> str:
        if self._b3 is None:
            raise ValueError("this digest was made without BLAKE3")
        return self._b3.hexdigest()

    @property
    def sha256(self) -> str:
        if self._sha is None:
            raise ValueError("this digest was made without SHA-256")
        return self._sha.hexdigest()

    def matches(self, e: Entry) -> bool:
        return (self._b3 is None or self.blake3 == e.blake3) and (self._sha is None or self.sha256 == e.sha256)


def sha256_matches(data: bytes | memoryview, e: Entry) -> bool:
    """`FileDigest(True, blake3=False)` fed `data` alone, then `matches(e)`: the whole-file
    check of a one-chunk file whose BLAKE3 its chunk's re-hash proved, without a digest
    object (deep verify makes one such check per small file)."""
    return hashlib.sha256(data).hexdigest() == e.sha256
