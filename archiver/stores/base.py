"""The Store protocol: the only verbs the layers above use. Nothing above this layer
imports boto3 or touches the store's files directly."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, runtime_checkable

from archiver.errors import IntegrityError, StoreError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    storage_class: str | None = None  # as a LIST reports it (S3); None: STANDARD or not known


class NotAnObjectError(IntegrityError):
    """Something that is not a stored object sits under a key: a FIFO, a device, a socket
    or a symlink in a local store. The archiver never writes one, so it is damage or
    tampering; it is refused without reading it (a FIFO would block, /dev/zero never ends)."""

    def __init__(self, key: str, where: str, what: str) -> None:
        super().__init__(f"{key} in {where} is {what}, not a regular file: refusing to read it")
        self.key = key
        self.what = what


class ObjectTooLargeError(IntegrityError):
    """An object is larger than any valid object under its key can be (a forged or damaged
    object): refused before it is read whole, so it cannot exhaust memory."""

    def __init__(self, key: str, where: str, size: int, limit: int) -> None:
        super().__init__(f"{key} in {where} is {size} bytes, more than the {limit} it can be: refusing to read it")
        self.key = key
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class ObjectVersion:
    """Which bytes a key held when they were read: the S3 ETag, or a local file's identity
    (device, inode, size, mtime). Opaque above the store; `replace_damaged` acts only if the
    key still holds this version, so a concurrent good write is never clobbered."""

    size: int
    tag: str


@runtime_checkable
class Store(Protocol):
    """A flat key -> immutable bytes namespace (keys use '/' separators).

    Objects are never overwritten or deleted by the archiver: `put_if_absent` is the
    only write, and it is atomic (a reader sees the whole object or nothing)."""

    url: str

    def put_if_absent(self, key: str, data: bytes, policy: Any = None) -> bool:
        """Store `data` under `key` unless the key exists. True if written, False if
        it already existed (the caller reads it back to check it). Durable on return.
        `policy` (archiver.retention.WritePolicy): lock and storage class of the new
        object; a store that cannot honour it raises UsageError before writing."""
        ...

    def get(self, key: str, max_size: int | None = None) -> bytes:
        """Whole object; raises ObjectMissingError if absent, StoreError if unreachable.

        With `max_size`, an object larger than that raises ObjectTooLargeError after
        reading at most max_size + 1 bytes of it (its size is checked first), so a
        forged object cannot make a reader allocate more than a valid one would.
        Something that is not an object (a FIFO, device, socket or symlink in a local
        store) raises NotAnObjectError without being read."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Size of one object, or None if absent (or not an object: see `get`)."""
        ...

    def exists(self, key: str) -> bool:
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, by pages (one request per
        1000 keys on S3), in key order."""
        ...


class ShortObjectError(IntegrityError):
    """A ranged read asked for bytes past the end of the object: the object is shorter than
    the index that points into it says (truncated or replaced), which is damage."""

    def __init__(self, key: str, where: str, size: int, end: int) -> None:
        super().__init__(f"{key} in {where} is {size} bytes, shorter than the {end} a range in it needs")
        self.key = key
        self.size = size
        self.end = end


@runtime_checkable
class RangedStore(Store, Protocol):
    """A store that can read part of an object (a pack range: one chunk of many).
    `supports_ranges` is the capability flag; without it callers read the whole object."""

    supports_ranges: bool

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Exactly bytes [start, start+length) of the object. ObjectMissingError if absent,
        ShortObjectError if the object ends before start+length, ObjectColdError if it must
        be thawed first; never more than `length` bytes are returned or buffered."""
        ...


@runtime_checkable
class RepairableStore(Store, Protocol):
    """A store that can heal a damaged object: the one exception to "never overwritten".

    Only an object proved damaged (it does not decode to the bytes its key names) is
    replaced, only with bytes proved good, and only if it is still the version that was
    read; the damaged bytes are kept under a quarantine key, never deleted."""

    can_replace_damaged: bool  # capability flag: False means damage can only be reported

    def get_versioned(self, key: str, max_size: int) -> tuple[bytes | None, ObjectVersion]:
        """The object and its version in one read; None instead of the bytes if the object
        is larger than `max_size` (so a hostile giant is never read into memory). Raises
        ObjectMissingError if absent."""
        ...

    def replace_damaged(self, key: str, data: bytes, expected: ObjectVersion, quarantine_key: str) -> bool:
        """Keep the damaged object under `quarantine_key`, then store `data` under `key`,
        only if `key` still holds `expected`. True if `expected` is gone from the key (it
        holds `data`, or a concurrent writer's object); False (nothing replaced) if the key
        changed or vanished first. Either way the caller reads the key again and proves it.
        Durable on return."""
        ...


class ObjectColdError(StoreError):
    """An object sits in an archive storage class (GLACIER, DEEP_ARCHIVE) and cannot be read
    until a restore ("thaw") of it completes. Not damage: nothing is wrong with its bytes."""

    def __init__(self, key: str, storage_class: str) -> None:
        super().__init__(f"{key} is in {storage_class} and must be thawed (restored) before it can be read")
        self.key = key
        self.storage_class = storage_class


@dataclass(frozen=True)
class ObjectState:
    """What a HEAD says about one object beyond its size: its storage class, its lock, and
    for a cold object whether a thaw is under way or done (x-amz-restore)."""

    size: int
    storage_class: str
    lock_mode: str | None = None
    retain_until: Any = None  # datetime (UTC) or None
    legal_hold: bool = False
    restore_ongoing: bool | None = None  # None: no restore requested; True: thawing; False: thawed
    restore_expiry: str | None = None
    etag: str | None = None

    @property
    def readable(self) -> bool:
        """Whether a GET will return the bytes now (hot, or thawed)."""
        from archiver.retention import COLD_CLASSES
        return self.storage_class not in COLD_CLASSES or self.restore_ongoing is False


@runtime_checkable
class LockingStore(Store, Protocol):
    """A store that can lock objects (S3 Object Lock) and keep them in storage classes.
    `supports_object_lock` is the capability flag; `object_lock_enabled` asks the bucket."""

    supports_object_lock: bool

    def object_lock_enabled(self) -> bool:
        ...

    def object_state(self, key: str) -> ObjectState | None:
        ...

    def apply_lock(self, key: str, lock: Any) -> None:
        """Set retention (and legal hold) of the current version of `key` to `lock`."""
        ...

    def request_thaw(self, key: str, days: int, tier: str) -> None:
        ...
