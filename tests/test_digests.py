"""archiver/digests.py: the whole-file digests of archive, verify and restore."""
from __future__ import annotations

import dataclasses
import hashlib

import blake3

from archiver.digests import FileDigest, sha256_matches
from manifests.model import Entry


def test_sha256_matches_is_the_one_piece_digest_without_blake3() -> None:
    """Deep verify's check of an intact one-chunk file: the same verdict as a FileDigest
    without BLAKE3 fed the whole file at once, for a right and a wrong SHA-256 (BLAKE3 is
    not looked at: the chunk's re-hash proved it)."""
    data = b"some small file\n" * 100
    e = Entry("a", "file", 0o644, len(data), 1, blake3.blake3(data).hexdigest(), hashlib.sha256(data).hexdigest())
    for entry in (e, dataclasses.replace(e, sha256="0" * 64), dataclasses.replace(e, blake3="0" * 64)):
        d = FileDigest(True, blake3=False)
        d.update(data)
        assert sha256_matches(data, entry) is d.matches(entry)
        assert sha256_matches(memoryview(data), entry) is d.matches(entry)
    assert sha256_matches(data, e) and not sha256_matches(data, dataclasses.replace(e, sha256="0" * 64))
    assert sha256_matches(data, dataclasses.replace(e, blake3="0" * 64))
