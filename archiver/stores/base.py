"""The Store protocol: the only verbs the layers above use. Nothing above this layer
imports boto3 or touches the store's files directly."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@runtime_checkable
class Store(Protocol):
    """A flat key -> immutable bytes namespace (keys use '/' separators).

    Objects are never overwritten or deleted by the archiver: `put_if_absent` is the
    only write, and it is atomic (a reader sees the whole object or nothing)."""

    url: str

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store `data` under `key` unless the key exists. True if written, False if
        it already existed (the caller reads it back to check it). Durable on return."""
        ...

    def get(self, key: str) -> bytes:
        """Whole object; raises ObjectMissingError if absent, StoreError if unreachable."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Size of one object, or None if absent."""
        ...

    def exists(self, key: str) -> bool:
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, by pages (one request per
        1000 keys on S3), in key order."""
        ...
