"""Store tests. Most run on every backend (local dir, S3 mock, moto HTTP server) via
`store_url`; backend-specific failure modes (full disk, cut downloads, multipart
aborts, unreachable endpoints) are injected."""
from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ResponseStreamingError
from botocore.response import StreamingBody
from botocore.stub import Stubber

from archiver.errors import ArchiverError, IntegrityError, NotFoundError, ObjectMissingError, StoreError, UsageError
from archiver.stores import (
    MAX_MARKER_BYTES,
    LocalStore,
    ObjectInfo,
    S3Options,
    Store,
    _store_for_url,
    marker_bytes,
    open_store,
    validate_key,
)
from archiver.stores.base import NotAnObjectError, ObjectTooLargeError
from archiver.stores.s3 import MAX_PARTS, MiB, S3Store, build_client, part_size_for

SMALL_MULTIPART = S3Options(multipart_threshold=5 * MiB, min_part_size=5 * MiB)


@pytest.fixture
def store(store_url: str) -> Store:
    return open_store(store_url, create=True)


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def raw_store(url: str, options: S3Options | None = None) -> Store:
    """The store at `url` without the store.json check (to plant bad markers)."""
    return _store_for_url(url, options)


def one_line_store_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, StoreError)
    assert message and "\n" not in message
    return message


def count_calls(store: S3Store, operation: str) -> list[dict]:
    """Record the API parameters of every `operation` call the store's client makes."""
    calls: list[dict] = []
    store.client.meta.events.register(
        f"provide-client-params.s3.{operation}", lambda params, **_: calls.append(dict(params))
    )
    return calls


def sent_headers(store: S3Store, operation: str) -> list[dict]:
    """Record the HTTP headers actually sent for every `operation` request."""
    sent: list[dict] = []
    store.client.meta.events.register(
        f"before-send.s3.{operation}", lambda request, **_: sent.append(dict(request.headers))
    )
    return sent


# -- protocol basics, every backend --------------------------------------------------


def test_store_implements_protocol(store: Store) -> None:
    assert isinstance(store, Store)
    assert store.url


@pytest.mark.parametrize("size", [0, 1, 1000, 20 * MiB], ids=["empty", "1B", "1kB", "20MiB"])
def test_put_get_round_trip(store: Store, size: int) -> None:
    data = os.urandom(size)
    assert store.put_if_absent("chunks/ab/abcdef", data) is True
    assert store.get("chunks/ab/abcdef") == data
    assert store.stat("chunks/ab/abcdef") == ObjectInfo("chunks/ab/abcdef", size)


def test_put_if_absent_existing_key_keeps_object(store: Store) -> None:
    assert store.put_if_absent("manifests/m1.json", b"first") is True
    assert store.put_if_absent("manifests/m1.json", b"second, different") is False
    assert store.get("manifests/m1.json") == b"first"


def test_put_accepts_bytearray_and_memoryview(store: Store) -> None:
    assert store.put_if_absent("a/1", bytearray(b"abc")) is True
    assert store.put_if_absent("a/2", memoryview(b"xyz")) is True
    assert store.get("a/1") == b"abc" and store.get("a/2") == b"xyz"


def test_stat_and_exists(store: Store) -> None:
    store.put_if_absent("chunks/cd/cdef", b"12345")
    assert store.stat("chunks/cd/cdef") == ObjectInfo("chunks/cd/cdef", 5)
    assert store.exists("chunks/cd/cdef")
    assert store.stat("chunks/cd/nope") is None
    assert not store.exists("chunks/cd/nope")
    # A "directory" is not an object on any backend.
    assert store.stat("chunks/cd") is None
    assert not store.exists("chunks")


def test_get_missing_raises_object_missing(store: Store) -> None:
    with pytest.raises(ObjectMissingError) as excinfo:
        store.get("chunks/00/0000")
    assert excinfo.value.key == "chunks/00/0000"
    store.put_if_absent("chunks/00/0001", b"x")
    with pytest.raises(ObjectMissingError):
        store.get("chunks/00")  # a directory on the local backend


def test_list_by_prefix_in_key_order(store: Store) -> None:
    keys = [
        "chunks/ab/ab01", "chunks/ab/ab02", "chunks/ac/ac01", "chunks/b0/b001",
        "manifests/m1.json", "manifests/m1.sig", "manifests/m10.json",
        # '.' sorts before '/', so "a.txt" comes before "a/b": local must match S3 order.
        "x/a.txt", "x/a/b", "x/a0", "x/a-",
    ]
    for i, key in enumerate(reversed(keys)):
        assert store.put_if_absent(key, b"v" * i)
    sizes = {key: len(keys) - 1 - i for i, key in enumerate(keys)}

    everything = list(store.list(""))
    assert [o.key for o in everything] == sorted(keys + ["store.json"])
    assert all(o.size == sizes[o.key] for o in everything if o.key != "store.json")

    assert [o.key for o in store.list("chunks/")] == sorted(k for k in keys if k.startswith("chunks/"))
    assert [o.key for o in store.list("chunks/a")] == ["chunks/ab/ab01", "chunks/ab/ab02", "chunks/ac/ac01"]
    assert [o.key for o in store.list("manifests/m1")] == ["manifests/m1.json", "manifests/m1.sig", "manifests/m10.json"]
    assert [o.key for o in store.list("manifests/m1.")] == ["manifests/m1.json", "manifests/m1.sig"]
    assert [o.key for o in store.list("x/")] == sorted(k for k in keys if k.startswith("x/"))
    assert list(store.list("nothing/")) == []
    assert list(store.list("chunks/zz")) == []


def test_list_pages_over_1000_keys(store_url: str) -> None:
    store = open_store(store_url, create=True)
    n = 1005 if is_s3(store_url) else 120  # pagination only exists on S3
    keys = [f"many/{i:05d}" for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(lambda k: store.put_if_absent(k, b"x"), keys))
    calls = count_calls(store, "ListObjectsV2") if isinstance(store, S3Store) else []
    listed = list(store.list("many/"))
    assert [o.key for o in listed] == keys
    if isinstance(store, S3Store):
        assert len(calls) == 2  # one request per 1000 keys
        assert all(c.get("MaxKeys") == 1000 for c in calls)


def test_list_rejects_invalid_prefix(store: Store) -> None:
    for bad in ["../", "/chunks", "a//b", "a\\b"]:
        with pytest.raises(ValueError):
            store.list(bad)  # raised at the call, before iterating


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a/../b", "..", "a/./b", "a//b", "a/", "a\\b", "a/b\x00", ".tmp-x", "a/.tmp-123"],
)
def test_invalid_keys_rejected(store: Store, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_if_absent(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    with pytest.raises(ValueError):
        store.stat(key)


def test_validate_key_accepts_layout_keys() -> None:
    for key in ["store.json", "chunks/ab/abcdef", "manifests/xyz.json", "manifests/xyz.sig"]:
        assert validate_key(key) == key
    assert validate_key("", prefix=True) == ""
    assert validate_key("chunks/", prefix=True) == "chunks/"


def test_concurrent_put_if_absent_single_winner(store_url: str) -> None:
    store = open_store(store_url, create=True)
    barrier = threading.Barrier(8)
    payloads = [f"writer {i}".encode() * 1000 for i in range(8)]

    def write(i: int) -> bool:
        barrier.wait()
        return store.put_if_absent("manifests/race.json", payloads[i])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(write, range(8)))
    winners = [payloads[i] for i, won in enumerate(results) if won]
    stored = store.get("manifests/race.json")
    if is_s3(store_url):
        # Real S3 evaluates If-None-Match atomically. moto 5.2.5 checks "exists?" and
        # then writes without a lock, so under contention two writers can (rarely) both
        # get 200; assert only what moto guarantees.
        assert len(winners) >= 1
        assert stored in winners
    else:
        assert len(winners) == 1
        assert stored == winners[0]


def test_s3_if_none_match_sequential_writers(s3_store_url: str) -> None:
    """moto honours If-None-Match exactly for writers that do not overlap."""
    store = open_store(s3_store_url, create=True)
    assert store.put_if_absent("k", b"a") is True
    assert all(store.put_if_absent("k", b"b") is False for _ in range(5))
    assert store.get("k") == b"a"


# -- open_store and the store.json marker -----------------------------------------


def test_open_store_without_marker_is_not_found(store_url: str) -> None:
    with pytest.raises(NotFoundError) as excinfo:
        open_store(store_url)
    assert str(excinfo.value) == f"no archiver store at {store_url} (run an archive first)"


def test_open_store_create_writes_marker(store_url: str) -> None:
    store = open_store(store_url, create=True)
    assert json.loads(store.get("store.json")) == {"format": "archiver-store", "version": 1}
    assert store.get("store.json") == marker_bytes()
    again = open_store(store_url)  # now exists: no create needed
    assert again.get("store.json") == marker_bytes()
    assert open_store(store_url, create=True).get("store.json") == marker_bytes()


@pytest.mark.parametrize(
    "marker, fragment",
    [
        (b"not json", "not valid JSON"),
        (b'["archiver-store", 1]', "does not mark an archiver store"),
        (b'{"format": "something-else", "version": 1}', "does not mark an archiver store"),
        (b'{"format": "archiver-store", "version": 2}', "upgrade archiver"),
        (b'{"format": "archiver-store", "version": "1"}', "invalid format version"),
        (b'{"format": "archiver-store", "version": true}', "invalid format version"),
        (b'{"format": "archiver-store"}', "invalid format version"),
    ],
)
def test_open_store_wrong_marker_is_store_error(store_url: str, marker: bytes, fragment: str) -> None:
    assert raw_store(store_url).put_if_absent("store.json", marker)
    for create in (False, True):
        with pytest.raises(StoreError) as excinfo:
            open_store(store_url, create=create)
        assert fragment in one_line_store_error(excinfo)


def test_open_store_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "st ore"
    store = open_store(root.as_uri(), create=True)  # file:///.../st%20ore
    assert isinstance(store, LocalStore) and store.root == root
    assert (root / "store.json").read_bytes() == marker_bytes()
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_store("st ore"), LocalStore)
    assert isinstance(open_store(str(root)), LocalStore)
    for bad in ["gs://bucket/x", "s3://", "s3:///prefix", "file://otherhost/x", "", "s3://b/../x"]:
        with pytest.raises(UsageError):
            open_store(bad)


def test_open_store_local_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError):
        open_store(str(tmp_path / "f"), create=True)


def test_open_store_s3_bucket_without_prefix(s3_mock_url: str) -> None:
    store = open_store("s3://archiver-test", create=True)
    assert isinstance(store, S3Store) and store.url == "s3://archiver-test"
    assert store.put_if_absent("chunks/ab/ab", b"1")
    assert store.client.get_object(Bucket="archiver-test", Key="chunks/ab/ab")["Body"].read() == b"1"


def test_s3_prefix_is_a_directory_boundary(s3_store_url: str) -> None:
    store = open_store(s3_store_url, create=True)
    assert isinstance(store, S3Store)
    # A sibling prefix that merely starts with the same characters is another store.
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}-other/chunks/x", Body=b"no")
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/chunks/", Body=b"")  # console "folder"
    store.put_if_absent("chunks/y", b"yes")
    assert [o.key for o in store.list("")] == ["chunks/y", "store.json"]
    assert store.client.get_object(Bucket=store.bucket, Key=f"{store.prefix}/chunks/y")["Body"].read() == b"yes"


# -- local backend specifics ----------------------------------------------------------


def test_local_layout_and_read_only_objects(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), create=True)
    store.put_if_absent("chunks/ab/abcd", b"data")
    path = tmp_path / "chunks" / "ab" / "abcd"
    assert path.read_bytes() == b"data"
    assert path.stat().st_mode & 0o777 == 0o444
    assert not [p for p in tmp_path.rglob(".tmp-*")]


@pytest.mark.parametrize(
    "err, words",
    [(errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk quota exceeded"), (errno.EROFS, "read-only filesystem"),
     (errno.EACCES, "permission denied")],
)
def test_local_write_error_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, words: str
) -> None:
    store = open_store(str(tmp_path), create=True)
    real_write = os.write
    calls: list[int] = []

    def failing_write(fd: int, data) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data[:4096]))  # a partial write, then the disk fills
        raise OSError(err, os.strerror(err))

    key = "chunks/ab/abcdef0123"
    with monkeypatch.context() as m:
        m.setattr(os, "write", failing_write)
        with pytest.raises(StoreError) as excinfo:
            store.put_if_absent(key, os.urandom(100_000))
    message = one_line_store_error(excinfo)
    assert message == f"{words} writing {key} to {tmp_path}"
    assert not store.exists(key)
    assert not (tmp_path / "chunks" / "ab" / "abcdef0123").exists()
    assert not list(tmp_path.rglob(".tmp-*"))
    assert store.put_if_absent(key, b"ok") is True  # and the store still works afterwards


def test_local_fsync_failure_is_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(str(tmp_path), create=True)
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        with pytest.raises(StoreError, match="I/O error writing chunks/aa/aa"):
            store.put_if_absent("chunks/aa/aa", b"x")
    assert not store.exists("chunks/aa/aa")
    assert not list(tmp_path.rglob(".tmp-*"))


def test_local_stale_temp_files_are_ignored(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), create=True)
    store.put_if_absent("chunks/ab/ab01", b"1")
    # What a process killed mid-write leaves behind.
    for stale in [tmp_path / ".tmp-deadbeef", tmp_path / "chunks" / "ab" / ".tmp-0123456789abcdef"]:
        stale.write_bytes(b"partial")
    (tmp_path / "chunks" / ".tmp-dir").mkdir()
    assert [o.key for o in store.list("")] == ["chunks/ab/ab01", "store.json"]
    assert store.put_if_absent("chunks/ab/ab02", b"2") is True
    assert store.get("chunks/ab/ab02") == b"2"
    with pytest.raises(ValueError):  # temp names are never keys
        store.get("chunks/ab/.tmp-0123456789abcdef")


def test_local_without_hard_links_falls_back_to_noreplace_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(str(tmp_path), create=True)

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    try:
        assert store.put_if_absent("chunks/ab/ab", b"first") is True
    except StoreError as exc:
        pytest.skip(f"no renameat2 here: {exc}")
    assert store.put_if_absent("chunks/ab/ab", b"second") is False
    assert store.get("chunks/ab/ab") == b"first"
    assert not list(tmp_path.rglob(".tmp-*"))


def test_local_file_where_directory_needed(tmp_path: Path) -> None:
    """S3 allows keys "a" and "a/b" together; a filesystem cannot. The archiver's
    layout never needs that, but the error must still be a clear one-liner."""
    store = open_store(str(tmp_path), create=True)
    assert store.put_if_absent("a", b"file")
    with pytest.raises(StoreError) as excinfo:
        store.put_if_absent("a/b", b"x")
    assert "a/b" in one_line_store_error(excinfo)
    assert store.stat("a/b") is None
    with pytest.raises(ObjectMissingError):
        store.get("a/b")


def test_local_walk_order_matches_sorted_keys(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    # '-' < '.' < '/' < '0': a directory must sort as "name/" among its siblings.
    keys = ["b", "a/b/c", "a-b", "a.b", "a0", "ab/c", "a/b.c", "a/b-c", "a/b0"]
    for key in keys:
        assert store.put_if_absent(key, b"")
    assert [o.key for o in store.list("")] == sorted(keys)
    assert [o.key for o in store.list("a/b")] == sorted(k for k in keys if k.startswith("a/b"))


# -- S3 specifics -----------------------------------------------------------------------


def test_part_size_for() -> None:
    assert part_size_for(100 * MiB) == 8 * MiB
    assert part_size_for(100 * MiB, 5 * MiB) == 5 * MiB
    for size in [80 * 1024**3, 5 * 1024**4, 10 * 1024**4]:
        part = part_size_for(size)
        assert part % MiB == 0
        assert -(-size // part) <= 9000 < MAX_PARTS


@pytest.mark.parametrize("when_required", [False, True], ids=["crc32", "md5"])
def test_s3_multipart_round_trip(s3_store_url: str, when_required: bool) -> None:
    options = S3Options(multipart_threshold=5 * MiB, min_part_size=5 * MiB, checksum_when_required=when_required)
    store = open_store(s3_store_url, create=True, s3_options=options)
    assert isinstance(store, S3Store)
    parts = count_calls(store, "UploadPart")
    data = os.urandom(12 * MiB + 7)
    assert store.put_if_absent("chunks/bi/big", data) is True
    assert [p["PartNumber"] for p in parts] == [1, 2, 3]
    assert store.get("chunks/bi/big") == data
    assert store.stat("chunks/bi/big") == ObjectInfo("chunks/bi/big", len(data))
    assert store.put_if_absent("chunks/bi/big", os.urandom(6 * MiB)) is False
    assert store.get("chunks/bi/big") == data
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


def test_s3_multipart_loses_race_at_completion(s3_store_url: str) -> None:
    """Another writer commits the key while our parts upload: CompleteMultipartUpload
    with If-None-Match gets 412, we return False, and the upload is aborted."""
    store = open_store(s3_store_url, create=True, s3_options=SMALL_MULTIPART)
    assert isinstance(store, S3Store)
    real_upload_part = store.client.upload_part
    full_key = f"{store.prefix}/chunks/ra/race"

    def upload_part_and_lose_race(**kwargs):
        if kwargs["PartNumber"] == 1:
            store.client.put_object(Bucket=store.bucket, Key=full_key, Body=b"the other writer")
        return real_upload_part(**kwargs)

    store.client.upload_part = upload_part_and_lose_race
    assert store.put_if_absent("chunks/ra/race", os.urandom(11 * MiB)) is False
    assert store.get("chunks/ra/race") == b"the other writer"
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


@pytest.mark.parametrize(
    "failure",
    [
        ClientError({"Error": {"Code": "InternalError", "Message": "boom"},
                     "ResponseMetadata": {"HTTPStatusCode": 500}}, "UploadPart"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ],
    ids=["server-error", "connection-lost"],
)
def test_s3_multipart_failure_aborts_upload(s3_store_url: str, failure: Exception) -> None:
    store = open_store(s3_store_url, create=True, s3_options=SMALL_MULTIPART)
    assert isinstance(store, S3Store)
    real_upload_part = store.client.upload_part
    aborts = count_calls(store, "AbortMultipartUpload")

    def flaky_upload_part(**kwargs):
        if kwargs["PartNumber"] == 2:
            raise failure
        return real_upload_part(**kwargs)

    store.client.upload_part = flaky_upload_part
    with pytest.raises(StoreError) as excinfo:
        store.put_if_absent("chunks/fa/fail", os.urandom(12 * MiB))
    one_line_store_error(excinfo)
    assert len(aborts) == 1
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")
    assert not store.exists("chunks/fa/fail")


class CutBody:
    """A response body that delivers `keep` bytes and then fails like a dropped connection."""

    def __init__(self, body: StreamingBody, keep: int, error: str):
        self._data = body.read()
        body.close()
        self._keep = keep
        self._error = error
        self._pos = 0

    def read(self, amt: int | None = None) -> bytes:
        if self._pos >= self._keep:
            if self._error == "short":
                return b""  # body ends early without an error: caught by the length check
            raise ResponseStreamingError(error="Connection broken: IncompleteRead")
        end = self._keep if amt is None else min(self._keep, self._pos + amt)
        piece = self._data[self._pos:end]
        self._pos = end
        return piece

    def close(self) -> None:
        pass


@pytest.mark.parametrize("error", ["exception", "short", "incomplete-read"])
def test_s3_get_resumes_cut_download_with_range(s3_store_url: str, error: str, monkeypatch) -> None:
    store = open_store(s3_store_url, create=True)
    assert isinstance(store, S3Store)
    data = os.urandom(3 * MiB + 5)
    store.put_if_absent("chunks/cu/cut", data)
    real_get = store.client.get_object
    calls: list[dict] = []

    def get_object(**kwargs):
        calls.append(kwargs)
        resp = real_get(**kwargs)
        if len(calls) == 1:
            if error == "incomplete-read":  # botocore's own check: fewer bytes than Content-Length
                raw = resp["Body"].read()
                resp["Body"] = StreamingBody(io.BytesIO(raw[: 1 * MiB + 3]), len(raw))
            else:
                resp["Body"] = CutBody(resp["Body"], 1 * MiB + 3, error)
        return resp

    monkeypatch.setattr(store.client, "get_object", get_object)
    assert store.get("chunks/cu/cut") == data
    assert len(calls) == 2
    assert "Range" not in calls[0]
    assert calls[1]["Range"] == f"bytes={1 * MiB + 3}-"


def test_s3_get_restarts_when_server_ignores_range(s3_store_url: str, monkeypatch) -> None:
    """Some S3-compatible servers answer a ranged GET with 200 and the whole body."""
    store = open_store(s3_store_url, create=True)
    assert isinstance(store, S3Store)
    data = os.urandom(2 * MiB + 1)
    store.put_if_absent("chunks/ig/ignore", data)
    real_get = store.client.get_object
    calls: list[dict] = []

    def get_object(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            resp = real_get(**kwargs)
            resp["Body"] = CutBody(resp["Body"], 1000, "exception")
            return resp
        kwargs = {k: v for k, v in kwargs.items() if k not in ("Range", "IfMatch")}
        return real_get(**kwargs)  # no ContentRange in the answer

    monkeypatch.setattr(store.client, "get_object", get_object)
    assert store.get("chunks/ig/ignore") == data
    assert calls[1]["Range"] == "bytes=1000-"


def test_s3_get_gives_up_after_max_attempts(s3_store_url: str, monkeypatch) -> None:
    store = open_store(s3_store_url, create=True, s3_options=S3Options(max_attempts=2))
    assert isinstance(store, S3Store)
    store.put_if_absent("chunks/cu/cut", b"z" * 1000)
    real_get = store.client.get_object
    calls: list[dict] = []

    def always_cut(**kwargs):
        calls.append(kwargs)
        resp = real_get(**kwargs)
        resp["Body"] = CutBody(resp["Body"], 10, "exception")
        return resp

    monkeypatch.setattr(store.client, "get_object", always_cut)
    with pytest.raises(StoreError) as excinfo:
        store.get("chunks/cu/cut")
    assert "cut off" in one_line_store_error(excinfo)
    assert len(calls) == 3  # the first GET + max_attempts resumes
    assert calls[-1]["Range"] == "bytes=20-"


def test_s3_unreachable_endpoint_fails_fast(aws_env) -> None:
    with socket.socket() as sock:  # bound, never listening, held throughout: refused, and the port not reusable
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        options = S3Options(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout=2)
        started = time.monotonic()
        with pytest.raises(StoreError) as excinfo:
            open_store("s3://some-bucket/prefix", s3_options=options)
        assert time.monotonic() - started < 15
    message = one_line_store_error(excinfo)
    assert message.startswith(f"cannot reach S3 endpoint http://127.0.0.1:{port}")


def test_s3_nonexistent_bucket(s3_store_url: str) -> None:
    for create in (False, True):
        with pytest.raises(StoreError) as excinfo:
            open_store("s3://no-such-bucket-archiver/prefix", create=create)
        assert one_line_store_error(excinfo).startswith("bucket no-such-bucket-archiver does not exist")
    # A store whose bucket vanishes later gives the same answer, not a botocore error.
    store = S3Store("no-such-bucket-archiver", "p")
    with pytest.raises(StoreError, match="bucket no-such-bucket-archiver does not exist"):
        store.put_if_absent("chunks/x", b"x")


def test_s3_no_credentials(s3_server_url: str, monkeypatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError) as excinfo:
        open_store(s3_server_url)
    assert "no AWS credentials" in one_line_store_error(excinfo)


def test_checksum_when_required_option(aws_env, monkeypatch) -> None:
    default = build_client(S3Options())
    assert default.meta.config.request_checksum_calculation == "when_supported"
    client = build_client(S3Options(checksum_when_required=True))
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.config.response_checksum_validation == "when_required"
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 8}
    assert client.meta.config.max_pool_connections == 16
    from archiver.settings import Settings
    monkeypatch.setenv("ARCHIVER_S3_CHECKSUM", "when_required")
    from_env = S3Store("bucket", "p", Settings.resolve("s3://bucket/p").s3)  # the environment is read there
    assert from_env.client.meta.config.request_checksum_calculation == "when_required"


def test_checksum_when_required_sends_content_md5(s3_store_url: str) -> None:
    store = open_store(s3_store_url, create=True, s3_options=S3Options(checksum_when_required=True))
    assert isinstance(store, S3Store)
    puts = sent_headers(store, "PutObject")
    assert store.put_if_absent("chunks/md/md5", b"payload") is True
    headers = {k.lower(): v for k, v in puts[0].items()}
    assert headers["content-md5"] == base64.b64encode(hashlib.md5(b"payload").digest())
    assert headers["if-none-match"] == b"*"
    assert not any(h.startswith("x-amz-checksum") or h == "x-amz-trailer" for h in headers)
    assert store.get("chunks/md/md5") == b"payload"


# -- error mapping, with botocore's Stubber (no server) -------------------------------


def stubbed_store(aws_env) -> tuple[S3Store, Stubber]:
    client = build_client(S3Options(region="us-east-1"))
    stubber = Stubber(client)
    stubber.activate()
    return S3Store("bucket", "prefix", client=client), stubber


@pytest.mark.parametrize(
    "code, status, fragment",
    [
        ("AccessDenied", 403, "access denied writing s3://bucket/prefix/chunks/x"),
        ("NoSuchBucket", 404, "bucket bucket does not exist"),
        ("InvalidAccessKeyId", 403, "S3 rejected the credentials"),
        ("NotImplemented", 501, "does not implement"),
        ("SlowDown", 503, "S3 error writing s3://bucket/prefix/chunks/x: SlowDown"),
    ],
)
def test_s3_client_errors_become_one_line_store_errors(aws_env, code: str, status: int, fragment: str) -> None:
    store, stubber = stubbed_store(aws_env)
    stubber.add_client_error("put_object", service_error_code=code, service_message="multi\nline",
                             http_status_code=status)
    with pytest.raises(StoreError) as excinfo:
        store.put_if_absent("chunks/x", b"x")
    assert fragment in one_line_store_error(excinfo)


def test_s3_conditional_conflict_is_retried(aws_env) -> None:
    store, stubber = stubbed_store(aws_env)
    for _ in range(2):
        stubber.add_client_error("put_object", service_error_code="ConditionalRequestConflict",
                                 http_status_code=409)
    stubber.add_response("put_object", {})
    assert store.put_if_absent("chunks/x", b"x") is True
    stubber.assert_no_pending_responses()


def test_s3_precondition_failed_means_exists(aws_env) -> None:
    store, stubber = stubbed_store(aws_env)
    stubber.add_client_error("put_object", service_error_code="PreconditionFailed", http_status_code=412)
    assert store.put_if_absent("chunks/x", b"x") is False


def test_s3_errors_on_every_verb_are_archiver_errors(aws_env) -> None:
    store, stubber = stubbed_store(aws_env)
    stubber.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
    stubber.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    stubber.add_client_error("head_object", service_error_code="403", http_status_code=403)
    stubber.add_client_error("head_object", service_error_code="404", http_status_code=404)
    stubber.add_client_error("list_objects_v2", service_error_code="AccessDenied", http_status_code=403)
    with pytest.raises(StoreError):
        store.get("a")
    with pytest.raises(ObjectMissingError):
        store.get("a")
    with pytest.raises(StoreError, match="access denied"):
        store.stat("a")
    assert store.exists("a") is False
    with pytest.raises(StoreError, match="access denied listing"):
        list(store.list("chunks/"))


def test_errors_are_archiver_errors() -> None:
    assert issubclass(ObjectMissingError, StoreError) and issubclass(StoreError, ArchiverError)


def test_max_attempts_from_settings(aws_env) -> None:
    from archiver.settings import s3_options

    client = build_client(s3_options({"ARCHIVER_S3_MAX_ATTEMPTS": "20"}, max_attempts=5))
    assert client.meta.config.retries["total_max_attempts"] == 5  # explicit beats environment
    client = build_client(s3_options({"ARCHIVER_S3_MAX_ATTEMPTS": "20"}))
    assert client.meta.config.retries["total_max_attempts"] == 20
    with pytest.raises(UsageError):
        s3_options({"ARCHIVER_S3_MAX_ATTEMPTS": "zero"})


# -- hostile objects: bounded reads, regular files only (issue 14) ---------------------------------

@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging the suite) if the block blocks: SIGALRM interrupts a blocking open()."""
    def expire(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds}s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_get_max_size_every_backend(store: Store) -> None:
    data = os.urandom(1000)
    store.put_if_absent("chunks/mx/obj", data)
    store.put_if_absent("chunks/mx/empty", b"")
    assert store.get("chunks/mx/obj", max_size=1000) == data
    assert store.get("chunks/mx/obj", max_size=5000) == data
    assert store.get("chunks/mx/empty", max_size=0) == b""
    for limit in (999, 0):
        with pytest.raises(ObjectTooLargeError) as excinfo:
            store.get("chunks/mx/obj", max_size=limit)
        err = excinfo.value
        assert isinstance(err, IntegrityError) and (err.key, err.size, err.limit) == ("chunks/mx/obj", 1000, limit)
        assert "\n" not in str(err) and "chunks/mx/obj" in str(err) and "1000 bytes" in str(err)
    with pytest.raises(ObjectMissingError):
        store.get("chunks/mx/absent", max_size=10)


def test_s3_get_refuses_oversized_object_unread(s3_store_url: str, monkeypatch) -> None:
    """The size comes from the response headers: the body is closed, never read."""
    store = open_store(s3_store_url, create=True)
    assert isinstance(store, S3Store)
    store.put_if_absent("manifests/big.json", os.urandom(3 * MiB))
    real_get = store.client.get_object
    reads: list[int | None] = []
    closed: list[bool] = []

    class Spy:
        def __init__(self, body: StreamingBody) -> None:
            self._body = body

        def read(self, amt: int | None = None) -> bytes:
            reads.append(amt)
            return self._body.read(amt)

        def close(self) -> None:
            closed.append(True)
            self._body.close()

    calls: list[dict] = []

    def get_object(**kwargs):
        calls.append(kwargs)
        resp = real_get(**kwargs)
        resp["Body"] = Spy(resp["Body"])
        return resp

    monkeypatch.setattr(store.client, "get_object", get_object)
    with pytest.raises(ObjectTooLargeError) as excinfo:
        store.get("manifests/big.json", max_size=MiB)
    assert excinfo.value.size == 3 * MiB and store.url in str(excinfo.value)
    assert reads == [] and closed == [True] and len(calls) == 1


def _short_root() -> Path:
    """A store root with a short path: a unix socket path must fit in 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))


@pytest.fixture
def hostile_root(tmp_path):
    root = _short_root()
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _plant(root: Path, key: str, kind: str, outside: Path) -> None:
    """Put something that is not an object under `key` in a local store."""
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        os.symlink("/dev/zero", path)
    elif kind == "symlink-file":  # a valid-looking object, but outside the store
        target = outside / "elsewhere"
        target.write_bytes(b"not in the store")
        os.symlink(target, path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind, words", [("fifo", "a FIFO"), ("devzero", "a symlink"),
                                         ("symlink-file", "a symlink"), ("socket", "a socket")])
def test_local_store_refuses_non_regular_objects(hostile_root: Path, tmp_path, kind: str, words: str) -> None:
    store = LocalStore(hostile_root)
    _plant(hostile_root, "chunks/ab/bad", kind, tmp_path)
    store.put_if_absent("chunks/ab/good", b"good")
    with deadline(10):
        for max_size in (None, 100):
            with pytest.raises(NotAnObjectError) as excinfo:
                store.get("chunks/ab/bad", max_size=max_size)
            message = str(excinfo.value)
            assert isinstance(excinfo.value, IntegrityError) and excinfo.value.key == "chunks/ab/bad"
            assert words in message and "chunks/ab/bad" in message and "\n" not in message
        assert store.stat("chunks/ab/bad") is None and not store.exists("chunks/ab/bad")
        assert [i.key for i in store.list("chunks/")] == ["chunks/ab/good"]
        assert store.put_if_absent("chunks/ab/bad", b"x") is False  # never replaced
        assert store.get("chunks/ab/good") == b"good"


def test_local_store_refuses_symlinked_directories(hostile_root: Path, tmp_path) -> None:
    """A symlink anywhere below the root is refused, not only as the last component."""
    store = LocalStore(hostile_root)
    store.put_if_absent("chunks/ab/obj", b"data")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "cd").mkdir(parents=True)
    (elsewhere / "cd" / "obj").write_bytes(b"planted")
    os.symlink(elsewhere / "cd", hostile_root / "chunks" / "cd")
    with pytest.raises(NotAnObjectError, match="a symlink"):
        store.get("chunks/cd/obj")
    assert store.stat("chunks/cd/obj") is None
    os.symlink(elsewhere, hostile_root / "manifests")
    with pytest.raises(NotAnObjectError, match="a symlink"):
        store.get("manifests/cd/obj")
    # the root itself may be a symlink (a store on another disk)
    link = tmp_path / "root-link"
    os.symlink(hostile_root, link)
    assert LocalStore(link).get("chunks/ab/obj") == b"data"


def test_local_store_directories_and_files_as_parents_are_missing(hostile_root: Path) -> None:
    store = LocalStore(hostile_root)
    store.put_if_absent("chunks/ab/obj", b"data")
    (hostile_root / "chunks" / "dir").mkdir()
    for key in ("chunks/dir", "chunks/ab/obj/below", "chunks/none/x"):
        with pytest.raises(ObjectMissingError):
            store.get(key)
        assert store.stat(key) is None
    with pytest.raises(ObjectMissingError):
        LocalStore(hostile_root / "absent").get("store.json")


def test_local_store_huge_sparse_object_refused_unread(hostile_root: Path) -> None:
    store = LocalStore(hostile_root)
    path = hostile_root / "chunks" / "sp" / "huge"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB, no disk used
    assert store.stat("chunks/sp/huge") == ObjectInfo("chunks/sp/huge", 1 << 40)
    with deadline(10):
        with pytest.raises(ObjectTooLargeError) as excinfo:
            store.get("chunks/sp/huge", max_size=8 * MiB)
    assert excinfo.value.size == 1 << 40


def test_local_store_object_growing_after_fstat_is_still_bounded(hostile_root: Path, monkeypatch) -> None:
    """The read itself is capped at max_size + 1 bytes, whatever fstat said."""
    store = LocalStore(hostile_root)
    store.put_if_absent("chunks/gr/obj", b"g" * 100)
    real_fstat = os.fstat

    def shrunk(fd: int) -> os.stat_result:  # as if it were 10 bytes when checked, then grew
        st = list(real_fstat(fd))
        st[6] = 10  # st_size
        return os.stat_result(st)

    monkeypatch.setattr(os, "fstat", shrunk)
    with pytest.raises(ObjectTooLargeError) as excinfo:
        store.get("chunks/gr/obj", max_size=50)
    assert excinfo.value.size == 51  # read stopped one byte past the cap
    assert store.get("chunks/gr/obj", max_size=100) == b"g" * 100
    assert store.get("chunks/gr/obj") == b"g" * 100


def test_store_marker_is_capped(tmp_path) -> None:
    root = tmp_path / "store"
    open_store(str(root), create=True)
    (root / "store.json").chmod(0o644)
    with open(root / "store.json", "r+b") as f:
        f.truncate(MAX_MARKER_BYTES + 1)
    with pytest.raises(ObjectTooLargeError, match="store.json"):
        open_store(str(root))
    (root / "store.json").unlink()
    os.mkfifo(root / "store.json")
    with deadline(10):
        for create in (False, True):
            with pytest.raises(NotAnObjectError, match="store.json.*a FIFO"):
                open_store(str(root), create=create)


# -- ranged reads (packs): conformance on every backend ------------------------------------


def test_get_range_every_backend(store: Store) -> None:
    from archiver.stores.base import RangedStore, ShortObjectError
    assert isinstance(store, RangedStore) and store.supports_ranges
    data = os.urandom(3000)
    store.put_if_absent("packs/ab/pk", data)
    assert store.get_range("packs/ab/pk", 0, 3000) == data
    assert store.get_range("packs/ab/pk", 1000, 17) == data[1000:1017]
    assert store.get_range("packs/ab/pk", 2999, 1) == data[2999:]
    assert store.get_range("packs/ab/pk", 10, 0) == b""
    for start, length in ((2990, 20), (3000, 1), (5000, 10)):
        with pytest.raises(ShortObjectError) as excinfo:
            store.get_range("packs/ab/pk", start, length)
        assert isinstance(excinfo.value, IntegrityError) and "\n" not in str(excinfo.value)
        assert excinfo.value.end == start + length
    with pytest.raises(ObjectMissingError):
        store.get_range("packs/ab/absent", 0, 10)


def test_s3_get_range_is_one_ranged_request(s3_store_url: str) -> None:
    """A pack range costs one GET with the exact Range header, never the whole object."""
    store = open_store(s3_store_url, create=True)
    assert isinstance(store, S3Store)
    data = os.urandom(2 * MiB)
    store.put_if_absent("packs/cd/pk", data)
    calls = count_calls(store, "GetObject")
    assert store.get_range("packs/cd/pk", MiB, 4096) == data[MiB:MiB + 4096]
    assert len(calls) == 1 and calls[0].get("Range") == f"bytes={MiB}-{MiB + 4095}"


def test_local_put_parts_writes_the_joined_object_once(tmp_path: Path) -> None:
    """put_parts_if_absent (LocalStore): the object is the pieces in order, read-only, no
    temp file left, and like put_if_absent it never overwrites (False, object unchanged)."""
    store = open_store(str(tmp_path), create=True)
    big = os.urandom(300_000)
    parts = [b"head", memoryview(big)[1000:], b"", bytearray(b"tail")]
    assert store.put_parts_if_absent("chunks/ab/abcd", parts) is True
    want = b"head" + big[1000:] + b"tail"
    assert store.get("chunks/ab/abcd") == want
    assert (tmp_path / "chunks" / "ab" / "abcd").stat().st_mode & 0o777 == 0o444
    assert store.put_parts_if_absent("chunks/ab/abcd", [b"other"]) is False
    assert store.put_if_absent("chunks/ab/abcd", b"other") is False
    assert store.get("chunks/ab/abcd") == want
    assert not list(tmp_path.rglob(".tmp-*"))


def test_local_put_parts_write_error_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills after the first piece: one-line StoreError, no object, no temp file."""
    store = open_store(str(tmp_path), create=True)
    real_write = os.write
    calls: list[int] = []

    def failing_write(fd: int, data) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    key = "chunks/ab/abcdef0123"
    with monkeypatch.context() as m:
        m.setattr(os, "write", failing_write)
        with pytest.raises(StoreError) as excinfo:
            store.put_parts_if_absent(key, [b"first piece", os.urandom(10_000)])
    assert one_line_store_error(excinfo) == f"disk full writing {key} to {tmp_path}"
    assert not store.exists(key)
    assert not list(tmp_path.rglob(".tmp-*"))


def test_a_ctrl_c_right_after_a_directory_is_closed_is_an_interrupt_and_closes_nothing_twice(tmp_path, monkeypatch):
    """A local read walks down the key's directories, closing each once the next is open: a
    Ctrl-C landing just after that close must come out as KeyboardInterrupt, with no
    descriptor left open and none closed twice (EBADF from the cleanup, before)."""
    import archiver.stores.local as local_mod
    from tests.helpers import InterruptAfterClose, open_fds
    store = LocalStore(tmp_path)
    assert store.put_if_absent("a/b/c", b"data")
    before = open_fds()
    ctrl_c = InterruptAfterClose(lambda fd: True)  # the store root, closed once "a" is open
    monkeypatch.setattr(local_mod.os, "close", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        store.get("a/b/c")
    monkeypatch.undo()
    assert ctrl_c.fired and open_fds() <= before and store.get("a/b/c") == b"data"


def test_local_put_many_makes_names_appear_only_once_their_bytes_are_durable(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`put_many_if_absent`: every new object written, an existing one left as it is (False),
    no temp file left; the batch's bytes are synced together before any name appears, and
    the new names' directories synced together after they all appeared."""
    from archiver import fileio
    store = open_store(str(tmp_path), create=True)
    assert store.put_if_absent("trees/aa/old.json", b"kept")
    synced: list[tuple[list[str], list[str]]] = []  # (what the fds are, names present then)
    real_sync = fileio.sync_together

    def sync(fds, pool=None, *, within=None):  # type: ignore[no-untyped-def]
        names = sorted(p.name for p in (tmp_path / "trees").rglob("*.json"))
        synced.append(([os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1] for fd in fds], names))
        return real_sync(fds, pool, within=within)
    monkeypatch.setattr(fileio, "sync_together", sync)
    items = [(f"trees/{i % 3:02x}/t{i}.json", b"tree %d" % i) for i in range(20)] + [("trees/aa/old.json", b"new")]
    assert store.put_many_if_absent(items) == [True] * 20 + [False]
    assert [store.get(k) for k, _ in items[:20]] == [d for _, d in items[:20]]
    assert store.get("trees/aa/old.json") == b"kept"
    assert not list(tmp_path.rglob(".tmp-*"))
    (files, before), (dirs, after) = synced
    assert len(files) == 20 and all(f.startswith(".tmp-") for f in files) and before == ["old.json"]
    assert sorted(dirs) == ["00", "01", "02"] and len(after) == 21
    assert store.put_many_if_absent(items[:2]) == [False, False]


def test_local_put_many_write_error_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills in the middle of a batch: one-line StoreError naming the key, no
    object of the batch under its name (none was linked yet), no temp file."""
    store = open_store(str(tmp_path), create=True)
    real_write = os.write
    calls: list[int] = []

    def failing_write(fd: int, data) -> int:
        calls.append(fd)
        if len(calls) <= 2:
            return real_write(fd, data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    items = [(f"trees/ab/t{i}.json", b"tree %d" % i) for i in range(4)]
    with monkeypatch.context() as m:
        m.setattr(os, "write", failing_write)
        with pytest.raises(StoreError) as excinfo:
            store.put_many_if_absent(items)
    assert one_line_store_error(excinfo) == f"disk full writing trees/ab/t2.json to {tmp_path}"
    assert not any(store.exists(k) for k, _ in items)
    assert not list(tmp_path.rglob(".tmp-*"))
