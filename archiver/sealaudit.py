"""Audit of a sealed store without keys: every object each archive's public companion
lists is fetched and its ciphertext re-hashed, so bit rot, truncation, a forged object or
a missing one is found (and named precisely) by someone who can decrypt nothing."""
from __future__ import annotations

import time
from typing import Iterable

from archiver import layout
from archiver.checker import VerifyReport
from archiver.errors import ArchiverError
from archiver.problems import Problem
from archiver.repository import Repository


def verify_sealed(repo: Repository, refs: Iterable[str], *, all_archives: bool,
                  trusted: list[bytes] | None = None) -> VerifyReport:
    """Deep verify of ciphertext: for each archive, its companion (signature checked if it
    has one; with `trusted` keys it must be signed by one of them, else anyone who can write
    the bucket could replace an object together with its companion), each listed object's
    size and BLAKE3, and that every run key it names exists."""
    start = time.monotonic()
    ids = repo.companion_ids() if all_archives else [repo.resolve(r) for r in refs]
    rep = VerifyReport("deep-sealed", ids)
    for mid in ids:
        try:
            doc = repo.companion(mid)
        except ArchiverError as e:
            rep.add(Problem(mid, "manifest", str(e)))
            continue
        signer = (doc.get("signature") or {}).get("public_key")
        if trusted and signer not in {k.hex() for k in trusted}:
            rep.add(Problem(mid, "signature", "companion is not signed by any trusted key"))
        for key, size, b3, kid in doc["objects"]:
            why = repo.audit_object(key, size, b3)
            kind = "manifest" if layout.manifest_id(key) is not None else "corrupt-chunk"
            if why is not None:
                rep.add(Problem(mid, "missing-chunk" if why == "object is missing" and kind != "manifest" else kind,
                                f"{key}: {why}", chunk=key.rsplit("/", 1)[-1] if kind != "manifest" else None))
            else:
                rep.chunks_read += 1
                rep.bytes_read += size
            rep.chunks_checked += 1
        for kid in sorted({o[3] for o in doc["objects"]}):
            if not repo.run_key_present(kid):
                rep.add(Problem(mid, "manifest", f"run key {kid} is missing from the store (keys/runs/{kid}/)"))
    rep.seconds = time.monotonic() - start
    return rep
