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
    """A reference matches more than one manifest."""

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
