"""Error types. Every error a user can cause or meet carries fields and a one-line
message that says what is wrong in the library's own terms (parameter names, paths,
ids). Only the CLI words them as command-line flags (`option`, `remedy`) and turns
them into exit codes; a traceback is never the answer to bad input."""
from __future__ import annotations

import contextlib
from typing import Iterator

from manifests import errors as m


class ArchiverError(Exception):
    """Base class: `str(err)` is a complete one-line message for the user.

    `remedy` names the parameter that would get past this error (e.g. "force"); the
    CLI shows it as a flag ("use --force"), the Python API leaves it to the caller."""

    exit_code = 1
    remedy: str | None = None


class UsageError(ArchiverError):
    """Bad arguments or a refused request (CLI exit 2)."""

    exit_code = 2


class IdentityError(UsageError):
    """A sealed store needs a key this process was not given (no identity, a wrong one, a
    removed custodian's, a missing key object): refused before anything is written."""

    remedy = "identity"


class InvalidOptionError(UsageError):
    """One parameter has a value it cannot take."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option} {reason}")
        self.option = option
        self.reason = reason


class NotFoundError(ArchiverError):
    """A path, manifest, reference or object that does not exist."""


class UnknownReferenceError(NotFoundError):
    """No archive matches a reference: a usage error (exit 2), so a typo is never read as
    "corruption found" (1)."""

    exit_code = 2

    def __init__(self, ref: str, message: str) -> None:
        super().__init__(message)
        self.ref = ref


class AmbiguousReferenceError(UsageError):
    """A reference matches more than one archive (`matches`: their ids): a NAME that is
    also an id prefix, an id prefix shared by several ids, or a NAME whose chain forked."""

    def __init__(self, ref: str, matches: list[str], message: str) -> None:
        super().__init__(message)
        self.ref = ref
        self.matches = matches


class NoStoreError(NotFoundError):
    """No archiver store at a URL (a typo, an unset variable): a usage error."""

    exit_code = 2

    def __init__(self, url: str) -> None:
        super().__init__(f"no archiver store at {url} (run an archive first)")
        self.url = url


class StoreError(ArchiverError):
    """The store cannot be reached or refused an operation (network, permissions, full disk)."""


class ObjectMissingError(StoreError):
    """A key that should be in the store is not."""

    def __init__(self, key: str, message: str | None = None):
        super().__init__(message or f"object missing from store: {key}")
        self.key = key


class CatalogError(ArchiverError):
    """The catalog cannot be opened or used."""


class CatalogLockedError(CatalogError):
    """Another process holds the catalog's write lock; `pid` (and `host`) name it when known."""

    def __init__(self, catalog: str, pid: int | None, host: str | None, message: str) -> None:
        super().__init__(message)
        self.catalog = catalog
        self.pid = pid
        self.host = host


class CatalogReadOnlyError(CatalogError):
    """The catalog cannot be written (read-only file, directory or filesystem)."""

    def __init__(self, catalog: str, message: str) -> None:
        super().__init__(message)
        self.catalog = catalog


class EmptyCatalogError(UsageError):
    """The catalog records no archive although the store holds `manifests` of them: a
    catalog that was lost, or another one than intended. Rebuilding it from the store fixes it."""

    def __init__(self, catalog: str, store: str, manifests: int) -> None:
        super().__init__(f"the catalog {catalog} records no archives, but the store {store} holds "
                         f"{manifests} manifest(s)")
        self.catalog = catalog
        self.store = store
        self.manifests = manifests


class IntegrityError(ArchiverError):
    """Bytes read back do not match what was recorded (corrupt, truncated, forged)."""


class CorruptChunkError(IntegrityError):
    """A stored chunk object cannot be decoded or decodes to the wrong bytes."""

    def __init__(self, chunk: str, reason: str):
        super().__init__(f"corrupt chunk {chunk}: {reason}")
        self.chunk = chunk
        self.reason = reason


class FileHashError(IntegrityError):
    """Every chunk of a file checked out, but the whole file does not hash to the manifest's value."""

    def __init__(self, path: str):
        super().__init__(f"{path}: whole-file hash does not match the manifest")
        self.path = path


class EncodeError(ArchiverError):
    """The encoder produced an object that does not decode back to its input (a bug or
    bad memory on this machine): nothing was stored."""

    def __init__(self, chunk: str | None, reason: str):
        super().__init__(f"refusing to store chunk {chunk or '(unhashed)'}: {reason}")
        self.chunk = chunk
        self.reason = reason


class ManifestError(IntegrityError):
    """A manifest is malformed, tampered with, or does not match its id."""


class RefusedSourceError(UsageError):
    """A source archive will not take (a symlink given as PATH, a special file, a name that is
    not UTF-8): refused before anything is read or written (exit 2, as any refused input)."""

    def __init__(self, path: str, reason: str, what: str = "") -> None:
        super().__init__(f"refusing {what + ' ' if what else ''}{path}: {reason}")
        self.path = path
        self.reason = reason
        self.what = what  # "symlink", "special file" or "" (a name)


class UnsafePathError(ArchiverError):
    """A manifest path would write outside the destination or collide with another."""


class SourceChangedError(ArchiverError):
    """A source file changed while it was being archived."""


class DestinationError(ArchiverError):
    """A restore destination cannot take the files (not empty, in the way, unwritable)."""

    def __init__(self, path: str, reason: str, remedy: str | None = None, exit_code: int = 1) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.remedy = remedy
        self.exit_code = exit_code


class DestinationFullError(DestinationError):
    """The restore destination ran out of space; nothing partial was left under a final name."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "disk full while restoring; nothing partial was left under its name")


def translate(err: m.ManifestsError) -> ArchiverError:
    """The archiver error for an error raised by the standalone `manifests` package."""
    out: ArchiverError
    if isinstance(err, m.UnknownReference):
        out = UnknownReferenceError(err.ref, str(err))
    elif isinstance(err, m.AmbiguousReference):
        out = AmbiguousReferenceError(err.ref, list(err.matches), str(err))
    elif isinstance(err, m.KeyFileError):
        out = UsageError(str(err))
    elif isinstance(err, m.CatalogLocked):
        out = CatalogLockedError(err.catalog, err.pid, err.host, str(err))
    elif isinstance(err, m.CatalogReadOnly):
        out = CatalogReadOnlyError(err.catalog, str(err))
    elif isinstance(err, m.CatalogStoreMismatch):
        out = UsageError(str(err))
        out.remedy = "catalog"
    elif isinstance(err, m.CatalogError):
        out = CatalogError(str(err))
    elif isinstance(err, m.UnsafePathError):
        out = UnsafePathError(str(err))
    elif isinstance(err, m.ManifestError):
        out = ManifestError(str(err))
    elif isinstance(err, m.SignatureError):
        out = IntegrityError(str(err))
    else:
        out = ArchiverError(str(err))
    out.__cause__ = err
    return out


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Re-raise errors of the `manifests` package as archiver errors."""
    try:
        yield
    except m.ManifestsError as err:
        raise translate(err) from err
