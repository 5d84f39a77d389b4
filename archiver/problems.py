"""One `Problem` record for everything verify and restore find, and the result shape
both share: ok exactly when no problems were found."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from archiver.errors import ArchiverError, ObjectMissingError
from manifests.model import ChunkRef, Entry


@dataclass(frozen=True)
class Problem:
    """What is wrong, and where: manifest, file, byte range, chunk."""

    manifest: str
    kind: str  # missing-chunk | size-mismatch | corrupt-chunk | file-hash | manifest | chain | signature | unsafe-path
    #            | retention | event (the store's event log; manifest is "")
    #            | filemap (a v2 file map missing or damaged; chunk = the map's hash)
    #            | tree (a v3 tree missing or damaged; path = its directory, chunk = the tree's hash)
    detail: str
    path: str | None = None
    offset: int | None = None
    length: int | None = None
    chunk: str | None = None

    def line(self) -> str:
        where = f" {self.path}" if self.path else ""
        if self.offset is not None:
            where += f" bytes {self.offset}-{self.offset + (self.length or 0)}"
        chunk = f" chunk {self.chunk}" if self.chunk else ""
        if not self.manifest:  # store-level (an event-log problem names no manifest)
            return f"{self.kind}:{where}{chunk}: {self.detail}"
        return f"{self.kind}: manifest {self.manifest[:16]}{where}{chunk}: {self.detail}"


def chunk_problem(mid: str, e: Entry, ref: ChunkRef, err: ArchiverError | str, kind: str | None = None) -> Problem:
    """A problem with one chunk of one file: missing-chunk, corrupt-chunk, or the given kind."""
    if kind is None:
        kind = "missing-chunk" if isinstance(err, ObjectMissingError) else "corrupt-chunk"
    return Problem(mid, kind, str(err), e.path, ref.offset, ref.length, ref.hash)


def file_hash_problem(mid: str, e: Entry) -> Problem:
    return Problem(mid, "file-hash", "whole-file hash does not match the manifest", e.path, 0, e.size)


class Outcome:
    """Mixin for result dataclasses with a `problems` list; `to_dict` is what --json prints."""

    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d["ok"] = self.ok
        return d
