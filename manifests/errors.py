"""Errors of the manifests package. It stands alone (no `archiver` imports), so it has
its own small hierarchy; `archiver.errors.translate` maps each to the archiver error
a user sees. Every error carries the fields a caller needs and a one-line message."""
from __future__ import annotations


class ManifestsError(Exception):
    """Base class: `str(err)` is a complete one-line message."""


class ManifestError(ManifestsError):
    """Manifest bytes are malformed, tampered with, or do not match their id."""


class UnsafePathError(ManifestsError):
    """A manifest path would write outside the destination or collide with another."""

    def __init__(self, path: object, reason: str) -> None:
        shown = repr(path)
        if len(shown) > 300:  # a hostile multi-megabyte path must not make a multi-megabyte message
            shown = f"{shown[:200]}...{shown[-60:]} ({len(str(path))} characters)"
        super().__init__(f"unsafe path in manifest: {shown} ({reason})")
        self.path = path
        self.reason = reason


class SignatureError(ManifestsError):
    """A signature object is malformed."""


class KeyFileError(ManifestsError):
    """A key file is missing, unreadable, of the wrong kind, or would be overwritten."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnknownReference(ManifestsError):
    """No manifest matches a reference (id, id prefix, NAME, NAME@LABEL)."""

    def __init__(self, ref: str, message: str | None = None) -> None:
        super().__init__(message or f"no archive matches {ref!r}")
        self.ref = ref


class AmbiguousReference(ManifestsError):
    """A reference matches more than one manifest (`matches`: their ids), e.g. a NAME that
    is also an id prefix, or a NAME whose chain has forked."""

    def __init__(self, ref: str, matches: list[str], message: str | None = None) -> None:
        super().__init__(message or f"ambiguous reference {ref!r}: matches "
                         f"{', '.join(m[:12] for m in matches)}")
        self.ref = ref
        self.matches = matches


class CatalogError(ManifestsError):
    """The catalog file cannot be opened or used."""


class CatalogStoreMismatch(CatalogError):
    """A catalog is bound to one store and was opened for another."""

    def __init__(self, catalog: str, bound: str, store: str) -> None:
        super().__init__(f"catalog {catalog} belongs to store {bound}, not {store}")
        self.catalog = catalog
        self.bound = bound
        self.store = store


class CatalogLocked(CatalogError):
    """Another process holds the catalog's write lock (longer than the busy timeout).
    `pid` (and `host`) name the holder when it left its mark in the lock file."""

    def __init__(self, catalog: str, pid: int | None = None, host: str | None = None) -> None:
        who = "" if pid is None else f" (pid {pid}{'' if host is None else ' on ' + host})"
        super().__init__(f"catalog is locked by another process{who}: {catalog}")
        self.catalog = catalog
        self.pid = pid
        self.host = host


class CatalogReadOnly(CatalogError):
    """The catalog cannot be written (read-only file, directory or filesystem)."""

    def __init__(self, catalog: str, reason: str) -> None:
        super().__init__(f"catalog {catalog} cannot be written: {reason}")
        self.catalog = catalog
        self.reason = reason
