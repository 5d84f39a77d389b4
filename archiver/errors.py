"""Error types. Every error a user can cause or meet carries a one-line message;
the CLI prints it and exits non-zero instead of showing a traceback."""
from __future__ import annotations


class ArchiverError(Exception):
    """Base class: `str(err)` is a complete one-line message for the user."""

    exit_code = 1


class UsageError(ArchiverError):
    """Bad arguments or an unknown reference (CLI exit 2)."""

    exit_code = 2


class NotFoundError(ArchiverError):
    """A path, manifest, reference or object that does not exist."""


class StoreError(ArchiverError):
    """The store cannot be reached or refused an operation (network, permissions, full disk)."""


class ObjectMissingError(StoreError):
    """A key that should be in the store is not."""

    def __init__(self, key: str, message: str | None = None):
        super().__init__(message or f"object missing from store: {key}")
        self.key = key


class IntegrityError(ArchiverError):
    """Bytes read back do not match what was recorded (corrupt, truncated, forged)."""


class CorruptChunkError(IntegrityError):
    """A stored chunk object cannot be decoded or decodes to the wrong bytes."""

    def __init__(self, chunk: str, reason: str):
        super().__init__(f"corrupt chunk {chunk}: {reason}")
        self.chunk = chunk
        self.reason = reason


class ManifestError(IntegrityError):
    """A manifest is malformed, tampered with, or does not match its id."""


class UnsafePathError(ArchiverError):
    """A manifest path would write outside the destination or collide with another."""


class SourceChangedError(ArchiverError):
    """A source file changed while it was being archived."""
