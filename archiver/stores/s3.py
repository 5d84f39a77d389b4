"""A store in an S3 bucket (AWS or an S3-compatible server), under an optional prefix.

Writes are conditional (`If-None-Match: *`) so two writers never both win and an
object is never overwritten; bodies are always `bytes` so a botocore retry resends
exactly the same bytes; reads resume cut-off downloads with ranged GETs. Every botocore
failure becomes a one-line ArchiverError: nothing from botocore escapes this module."""
from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import math
import random
import time
from typing import Any, Iterator

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError as BotoConnectionError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    ResponseStreamingError,
)

from archiver.errors import ArchiverError, ObjectMissingError, StoreError, UsageError
from archiver.settings import CHECKSUM_ENV, S3Options
from archiver.stores.base import (ObjectColdError, ObjectInfo, ObjectState, ObjectTooLargeError, ObjectVersion,
                                  ShortObjectError)
from archiver.stores.local import validate_key

MiB = 1024 * 1024
MAX_PARTS = 10_000  # S3's limit per multipart upload
MAX_COPY = 5 * 1024 * MiB  # CopyObject's limit; larger damaged objects are replaced without a quarantine copy
TARGET_PARTS = 9_000  # headroom under MAX_PARTS
CONFLICT_RETRIES = 5  # 409 ConditionalRequestConflict: a concurrent conditional write
READ_CHUNK = 1 * MiB

# A download cut off mid-body raises one of these; the bytes received so far are kept
# and the rest is fetched with a ranged GET.
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    IncompleteReadError,
    ResponseStreamingError,
    ReadTimeoutError,
    ConnectionClosedError,
    HTTPClientError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.HTTPError,
    http.client.IncompleteRead,
    ConnectionError,
    TimeoutError,
)


def build_client(options: S3Options) -> Any:
    """One client per store: botocore clients are thread-safe, so worker threads share
    it and its connection pool (sized by max_pool)."""
    config_args: dict[str, Any] = {
        # total_max_attempts counts the first try (botocore's "max_attempts" key counts
        # only retries), so max_attempts=8 means 8 requests at most, like AWS_MAX_ATTEMPTS.
        "retries": {"mode": "standard", "total_max_attempts": options.max_attempts},
        "connect_timeout": options.connect_timeout,
        "read_timeout": options.read_timeout,
        "max_pool_connections": options.max_pool,
    }
    if options.checksum_when_required:
        config_args["request_checksum_calculation"] = "when_required"
        config_args["response_checksum_validation"] = "when_required"
    try:
        session = boto3.session.Session(profile_name=options.profile, region_name=options.region)
        return session.client("s3", endpoint_url=options.endpoint_url, config=Config(**config_args))
    except ProfileNotFound as exc:
        raise StoreError(f"AWS profile {options.profile!r} not found in the AWS config files") from exc
    except (BotoCoreError, ValueError) as exc:
        raise StoreError(f"cannot set up the S3 client: {_one_line(str(exc))}") from exc


def part_size_for(size: int, min_part_size: int = 8 * MiB) -> int:
    """Part size for a multipart upload of `size` bytes: at least `min_part_size`, and
    large enough (rounded up to 1 MiB) that even a multi-TB object needs < 10,000 parts."""
    needed = math.ceil(size / TARGET_PARTS)
    return max(min_part_size, math.ceil(needed / MiB) * MiB)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def _code_status(exc: ClientError) -> tuple[str, int | None]:
    error = exc.response.get("Error", {}) or {}
    status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
    return str(error.get("Code", "") or ""), status


def _is_precondition_failed(exc: ClientError) -> bool:
    code, status = _code_status(exc)
    return code == "PreconditionFailed" or status == 412


def _is_conflict(exc: ClientError) -> bool:
    code, status = _code_status(exc)
    return code == "ConditionalRequestConflict" or (status == 409 and code in ("", "409"))


def _is_missing_key(exc: ClientError) -> bool:
    code, status = _code_status(exc)
    if code == "NoSuchBucket":
        return False
    return code in ("NoSuchKey", "NotFound", "404") or status == 404


def _close_quietly(body: Any) -> None:
    try:
        body.close()
    except Exception:  # noqa: BLE001 - closing a broken stream may fail too
        pass


def _backoff(attempt: int) -> None:
    time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))


class S3Store:
    """Store at s3://bucket/prefix; keys are relative to the prefix."""

    can_replace_damaged = True
    supports_object_lock = True  # if the bucket was created with Object Lock: see object_lock_enabled
    supports_storage_classes = True
    supports_ranges = True  # get_range: GetObject with Range

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        options: S3Options = S3Options(),
        client: Any = None,
    ):
        if not bucket or "/" in bucket:
            raise UsageError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.options = options
        self.client = client if client is not None else build_client(options)
        self.endpoint = str(self.client.meta.endpoint_url)
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._root = f"{prefix}/" if prefix else ""
        config = self.client.meta.config
        self._when_required = getattr(config, "request_checksum_calculation", None) == "when_required"

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint!r})"

    @property
    def connections(self) -> int:
        """Requests at once that the client keeps connections for (its pool): more threads than
        this open and throw away connections ('Connection pool is full' warnings)."""
        return int(getattr(self.client.meta.config, "max_pool_connections", None) or self.options.max_pool)

    def _full(self, key: str) -> str:
        return self._root + validate_key(key)

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{self._root}{key}" if key is not None else self.url

    def _fail(self, exc: BaseException, action: str, key: str | None = None) -> ArchiverError:
        """Translate a botocore failure into a one-line error with a hint."""
        where = self._where(key)
        if isinstance(exc, ClientError):
            code, status = _code_status(exc)
            message = _one_line(str((exc.response.get("Error", {}) or {}).get("Message", "") or ""))
            if code == "NoSuchBucket":
                return StoreError(f"bucket {self.bucket} does not exist (S3 endpoint {self.endpoint})")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                        "InvalidToken", "TokenRefreshRequired"):
                return StoreError(
                    f"S3 rejected the credentials ({code}) {action} {where}: check AWS_PROFILE "
                    "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the region"
                )
            if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem", "403") or status == 403:
                return StoreError(
                    f"access denied {action} {where}: the credentials lack permission "
                    "(check the IAM policy / bucket policy for this prefix)"
                )
            if code in ("PermanentRedirect", "301") or status == 301 or (
                    code == "AuthorizationHeaderMalformed" and "region" in message.lower()):
                return StoreError(
                    f"bucket {self.bucket} is in another region: set AWS_DEFAULT_REGION or the region option"
                )
            if code == "NotImplemented" or status == 501:
                return StoreError(
                    f"S3 endpoint {self.endpoint} does not implement a feature needed {action} {where} "
                    f"(conditional writes If-None-Match, or checksums: try {CHECKSUM_ENV}=when_required): {message}"
                )
            if "checksum" in message.lower() or code in ("XAmzContentSHA256Mismatch", "BadDigest"):
                return StoreError(
                    f"S3 rejected the request {action} {where}: {code}: {message} "
                    f"(for S3-compatible servers try {CHECKSUM_ENV}=when_required)"
                )
            plain = f"S3 error {action} {where}: {code or status}: {message}".rstrip(": ")
            if status == 400 and not self._when_required and code in (
                    "InvalidArgument", "InvalidRequest", "BadRequest", "AuthorizationHeaderMalformed", "400", ""):
                # Servers without flexible checksums often answer just "Invalid Argument."
                return StoreError(f"{plain} (if this S3-compatible server does not support checksum "
                                  f"headers, try {CHECKSUM_ENV}=when_required)")
            return StoreError(plain)
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"no AWS credentials found for {self.url}: set AWS_PROFILE, or "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, ProfileNotFound):
            return StoreError(f"AWS profile not found: {_one_line(str(exc))}")
        if isinstance(exc, (BotoConnectionError, HTTPClientError)):
            return StoreError(f"cannot reach S3 endpoint {self.endpoint}: {_one_line(str(exc))}")
        return StoreError(f"S3 error {action} {where}: {_one_line(str(exc)) or type(exc).__name__}")

    # -- setup ---------------------------------------------------------------------

    def check_bucket(self) -> None:
        """Fail early, with a clear message, if the endpoint or bucket is unusable."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code, status = _code_status(exc)
            if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(
                    f"bucket {self.bucket} does not exist (S3 endpoint {self.endpoint})"
                ) from exc
            if status == 403:
                return  # may lack s3:ListBucket only; object requests will tell more
            raise self._fail(exc, "checking bucket") from exc
        except BotoCoreError as exc:
            raise self._fail(exc, "checking bucket") from exc

    # -- writes --------------------------------------------------------------------

    def put_if_absent(self, key: str, data: bytes, policy: Any = None) -> bool:
        """Conditional write (If-None-Match: *); False if the key already exists. With a
        `policy` (archiver.retention.WritePolicy) the object is written locked and/or in its
        storage class, always with an explicit checksum (Object Lock requires one)."""
        full = self._full(key)
        if not isinstance(data, bytes):
            data = bytes(data)  # never a stream: a retry must resend the same bytes
        try:
            if len(data) > self.options.multipart_threshold:
                return self._put_multipart(full, data, policy)
            return self._put_single(full, data, policy)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "writing", key) from exc

    @staticmethod
    def _policy_args(policy: Any) -> dict[str, Any]:
        """The PutObject / CreateMultipartUpload parameters of a write policy."""
        if policy is None:
            return {}
        args: dict[str, Any] = {}
        lock = policy.lock
        if lock.mode is not None:
            args["ObjectLockMode"] = lock.mode
            args["ObjectLockRetainUntilDate"] = lock.until
        if lock.legal_hold:
            args["ObjectLockLegalHoldStatus"] = "ON"
        if policy.storage_class:
            args["StorageClass"] = policy.storage_class
        return args

    def _put_single(self, full: str, data: bytes, policy: Any = None) -> bool:
        extra = {"ContentMD5": _md5_b64(data)} if self._when_required else {}
        if policy is not None:
            extra.update(self._policy_args(policy))
            if not self._when_required:
                extra["ChecksumAlgorithm"] = "CRC32"  # explicit: a locked PUT without a checksum is refused
        try:
            self._retry_conflicts(lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                                                 IfNoneMatch="*", **extra))
            return True
        except ClientError as exc:
            if _is_precondition_failed(exc):
                return False
            raise

    @staticmethod
    def _retry_conflicts(put: Any) -> None:
        """Run one conditional PUT, retrying 409 ConditionalRequestConflict (a concurrent
        conditional write) with backoff; every other answer is the caller's to judge."""
        attempt = 0
        while True:
            try:
                put()
                return
            except ClientError as exc:
                if _is_conflict(exc) and attempt < CONFLICT_RETRIES:
                    _backoff(attempt)
                    attempt += 1
                    continue
                raise

    def _put_multipart(self, full: str, data: bytes, policy: Any = None) -> bool:
        if self._head(full) is not None:
            return False  # don't upload gigabytes only to have the final commit refused
        part_size = part_size_for(len(data), self.options.min_part_size)
        checksum = {} if self._when_required else {"ChecksumAlgorithm": "CRC32"}
        upload_id = self._create_upload(full, {**checksum, **self._policy_args(policy)})
        finished = False
        try:
            parts: list[dict[str, Any]] = []
            for number, offset in enumerate(range(0, len(data), part_size), start=1):
                body = data[offset : offset + part_size]
                extra = {"ContentMD5": _md5_b64(body)} if self._when_required else checksum
                resp = self.client.upload_part(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=body, **extra
                )
                part = {"ETag": resp["ETag"], "PartNumber": number}
                if resp.get("ChecksumCRC32"):
                    part["ChecksumCRC32"] = resp["ChecksumCRC32"]
                parts.append(part)
            attempt = 0
            while True:
                try:
                    self.client.complete_multipart_upload(
                        Bucket=self.bucket, Key=full, UploadId=upload_id,
                        MultipartUpload={"Parts": parts}, IfNoneMatch="*",
                    )
                    finished = True
                    if policy is not None and policy.locked:
                        self._check_multipart_lock(full, policy)
                    return True
                except ClientError as exc:
                    if _is_precondition_failed(exc):
                        return False  # upload aborted below
                    if _is_conflict(exc) and attempt < CONFLICT_RETRIES:
                        _backoff(attempt)
                        attempt += 1
                        continue
                    raise
        finally:
            if not finished:
                self._abort(full, upload_id)

    def _check_multipart_lock(self, full: str, policy: Any) -> None:
        """The lock asked for at CreateMultipartUpload must be on the completed object; some
        servers (moto, some S3-compatible ones) drop it, so it is read back and, if missing
        or short, applied with PutObjectRetention / PutObjectLegalHold."""
        head = self._head(full) or {}
        until = head.get("ObjectLockRetainUntilDate")
        mode_ok = policy.lock.mode is None or (head.get("ObjectLockMode") and until is not None
                                               and until >= policy.lock.until)
        hold_ok = not policy.lock.legal_hold or head.get("ObjectLockLegalHoldStatus") == "ON"
        if not (mode_ok and hold_ok):
            self.apply_lock(full[len(self._root):], policy.lock)

    def _create_upload(self, full: str, checksum: dict[str, str]) -> str:
        started = time.monotonic()
        resp = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, **checksum)
        upload_id = resp["UploadId"]
        if (resp.get("ResponseMetadata") or {}).get("RetryAttempts"):
            self._abort_orphans(full, upload_id, time.monotonic() - started)
        return upload_id

    def _abort_orphans(self, full: str, upload_id: str, window: float) -> None:
        """botocore retried CreateMultipartUpload: an earlier attempt may have created an
        upload whose response was lost (a reset after the server acted), which nobody
        would ever complete or abort. Abort this key's other uploads that the server
        started during our call (its clock: at most `window` seconds before ours).
        Best effort, like _abort."""
        try:
            resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full)
        except (ClientError, BotoCoreError):
            return
        uploads = [u for u in resp.get("Uploads", []) or [] if u.get("Key") == full and u.get("UploadId")]
        ours = next((u for u in uploads if u["UploadId"] == upload_id), None)
        started = ours.get("Initiated") if ours else None
        if not isinstance(started, datetime.datetime):
            return
        earliest = started - datetime.timedelta(seconds=window + 1.0)
        for upload in uploads:
            initiated = upload.get("Initiated")
            if upload["UploadId"] != upload_id and isinstance(initiated, datetime.datetime) \
                    and earliest <= initiated <= started:
                self._abort(full, upload["UploadId"])

    def _abort(self, full: str, upload_id: str) -> None:
        """Best effort: parts of an unfinished upload are billed until aborted. The
        original failure is what the caller needs to see, so abort errors are dropped
        (a bucket lifecycle rule for incomplete uploads is the backstop)."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except (ClientError, BotoCoreError):
            pass

    # -- reads ---------------------------------------------------------------------

    def get(self, key: str, max_size: int | None = None) -> bytes:
        """Whole object, resuming a cut-off body with ranged GETs (up to max_attempts).
        With `max_size`, an object whose size (the response's Content-Length, read before
        the body) is larger is refused unread: the body is closed, not drained."""
        full = self._full(key)
        buf = bytearray()
        total: int | None = None
        etag: str | None = None
        resumes = 0
        last_error: BaseException | None = None
        while True:
            args: dict[str, Any] = {}
            if buf:
                args["Range"] = f"bytes={len(buf)}-"
                if etag:
                    args["IfMatch"] = etag  # the same object, not a replacement
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=full, **args)
            except ClientError as exc:
                if _is_missing_key(exc):
                    raise ObjectMissingError(key) from None
                self._raise_if_cold(exc, key)
                raise self._fail(exc, "reading", key) from exc
            except BotoCoreError as exc:
                raise self._fail(exc, "reading", key) from exc
            if total is None:
                total = int(resp.get("ContentLength", 0))
                etag = resp.get("ETag")
                if max_size is not None and total > max_size:
                    _close_quietly(resp["Body"])
                    raise ObjectTooLargeError(key, self.url, total, max_size)
            elif buf:
                if resp.get("ContentRange"):
                    self._check_range(resp, len(buf), total, key)
                else:
                    buf.clear()  # the server ignored Range and sent the whole object
            body = resp["Body"]
            try:
                self._drain(body, buf, total)
                last_error = None
            except FlexibleChecksumError as exc:
                buf.clear()  # corrupted in transit: fetch it all again
                last_error = exc
            except _STREAM_ERRORS as exc:
                last_error = exc
            finally:
                _close_quietly(body)
            if len(buf) == total:
                return bytes(buf)
            if len(buf) > total:
                raise StoreError(f"S3 returned more bytes than the size of {self._where(key)} ({len(buf)} > {total})")
            resumes += 1
            if resumes > self.options.max_attempts:
                detail = _one_line(str(last_error)) if last_error else "body ended early"
                raise StoreError(
                    f"download of {self._where(key)} kept being cut off "
                    f"({len(buf)} of {total} bytes, {resumes} resumed GETs): {detail}"
                )
            _backoff(min(resumes, 5))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes [start, start+length) with one ranged GET (a cut-off body resumes from where
        it stopped, pinned to the first response's ETag). The Content-Range must be exactly
        the range asked for; a shorter object raises ShortObjectError."""
        if start < 0 or length < 0:
            raise ValueError(f"invalid range {start}+{length}")
        if length == 0:
            info = self.stat(key)
            if info is None:
                raise ObjectMissingError(key)
            if info.size < start:
                raise ShortObjectError(key, self.url, info.size, start)
            return b""
        full = self._full(key)
        end = start + length
        buf = bytearray()
        etag: str | None = None
        resumes = 0
        last_error: BaseException | None = None
        while True:
            args: dict[str, Any] = {"Range": f"bytes={start + len(buf)}-{end - 1}"}
            if etag:
                args["IfMatch"] = etag
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=full, **args)
            except ClientError as exc:
                if _is_missing_key(exc):
                    raise ObjectMissingError(key) from None
                code, status = _code_status(exc)
                if code == "InvalidRange" or status == 416:
                    size = self.stat(key)
                    raise ShortObjectError(key, self.url, size.size if size else 0, end) from None
                self._raise_if_cold(exc, key)
                raise self._fail(exc, "reading", key) from exc
            except BotoCoreError as exc:
                raise self._fail(exc, "reading", key) from exc
            etag = etag or resp.get("ETag")
            body = resp["Body"]
            try:
                content_range = str(resp.get("ContentRange", ""))
                total = int(content_range.rsplit("/", 1)[-1]) if "/" in content_range else None
                expected = f"bytes {start + len(buf)}-{min(end, total or end) - 1}/{total}"
                if total is not None and total < end:
                    raise ShortObjectError(key, self.url, total, end)
                if content_range != expected:
                    raise StoreError(f"S3 answered a ranged read of {self._where(key)} with range "
                                     f"{content_range!r}, expected {expected!r}")
                want = length - len(buf)
                while want > 0:
                    piece = body.read(min(READ_CHUNK, want))
                    if not piece:
                        break
                    buf += piece
                    want -= len(piece)
                last_error = None
            except FlexibleChecksumError as exc:
                last_error = exc
            except _STREAM_ERRORS as exc:
                last_error = exc
            finally:
                _close_quietly(body)
            if len(buf) == length:
                return bytes(buf)
            resumes += 1
            if resumes > self.options.max_attempts:
                detail = _one_line(str(last_error)) if last_error else "body ended early"
                raise StoreError(f"ranged read of {self._where(key)} kept being cut off "
                                 f"({len(buf)} of {length} bytes): {detail}")
            _backoff(min(resumes, 5))

    def _check_range(self, resp: dict[str, Any], start: int, total: int, key: str) -> None:
        content_range = str(resp.get("ContentRange", ""))
        expected = f"bytes {start}-{total - 1}/{total}"
        if content_range and content_range != expected:
            raise StoreError(
                f"S3 answered a resumed download of {self._where(key)} with range "
                f"{content_range!r}, expected {expected!r}"
            )

    @staticmethod
    def _drain(body: Any, buf: bytearray, total: int) -> None:
        """Append the body to `buf` piece by piece so a cut keeps what arrived."""
        while True:
            piece = body.read(READ_CHUNK)
            if not piece:
                return
            buf += piece
            if len(buf) > total:
                return

    def _head(self, full: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _is_missing_key(exc):
                return None
            raise

    def stat(self, key: str) -> ObjectInfo | None:
        """Size via HEAD; None if absent."""
        full = self._full(key)
        try:
            resp = self._head(full)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "reading", key) from exc
        return None if resp is None else ObjectInfo(key=key, size=int(resp.get("ContentLength", 0)))

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """One ListObjectsV2 request per page (1000 keys), in S3's key order."""
        validate_key(prefix, prefix=True)  # now, not at the first next()
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self._root + prefix,
            PaginationConfig={"PageSize": self.options.list_page_size},
        )
        try:
            for page in pages:
                for obj in page.get("Contents", []) or []:
                    full = obj["Key"]
                    if not full.startswith(self._root) or full.endswith("/"):
                        continue  # "folder" markers made by consoles are not objects
                    sc = obj.get("StorageClass")
                    yield ObjectInfo(key=full[len(self._root):], size=int(obj.get("Size", 0)),
                                     storage_class=sc if sc and sc != "STANDARD" else None)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "listing", prefix) from exc

    # -- repair (the one exception to "never overwritten"; see RepairableStore) ------

    def get_versioned(self, key: str, max_size: int) -> tuple[bytes | None, ObjectVersion]:
        """The object and its ETag from the same response; a body cut off mid-way is
        resumed with ranged GETs pinned to that ETag (If-Match), so the bytes and the
        version always belong together. An object larger than `max_size` is not read:
        (None, version)."""
        full = self._full(key)
        buf = bytearray()
        version: ObjectVersion | None = None
        resumes = 0
        last_error: BaseException | None = None
        while True:
            if resumes > self.options.max_attempts:
                detail = _one_line(str(last_error)) if last_error else "body ended early or object kept changing"
                raise StoreError(f"download of {self._where(key)} kept being cut off: {detail}")
            args: dict[str, Any] = {}
            if version is not None:
                args = {"Range": f"bytes={len(buf)}-", "IfMatch": version.tag}
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=full, **args)
            except ClientError as exc:
                if _is_missing_key(exc):
                    raise ObjectMissingError(key) from None
                if version is not None and _is_precondition_failed(exc):
                    buf.clear()  # replaced while we read: start over on the new object
                    version = None
                    resumes += 1
                    continue
                self._raise_if_cold(exc, key)
                raise self._fail(exc, "reading", key) from exc
            except BotoCoreError as exc:
                raise self._fail(exc, "reading", key) from exc
            body = resp["Body"]
            try:
                if version is None:
                    version = ObjectVersion(size=int(resp.get("ContentLength", 0)), tag=str(resp.get("ETag", "")))
                    if version.size > max_size:
                        return None, version
                elif resp.get("ContentRange"):
                    self._check_range(resp, len(buf), version.size, key)
                else:
                    buf.clear()  # the server ignored Range and sent the whole object
                self._drain(body, buf, version.size)
                last_error = None
            except FlexibleChecksumError as exc:
                buf.clear()
                last_error = exc
            except _STREAM_ERRORS as exc:
                last_error = exc
            finally:
                try:
                    body.close()
                except Exception:  # noqa: BLE001 - closing a broken stream may fail too
                    pass
            if len(buf) == version.size:
                return bytes(buf), version
            if len(buf) > version.size:
                raise StoreError(f"S3 returned more bytes than the size of {self._where(key)}")
            resumes += 1
            _backoff(min(resumes, 5))

    def replace_damaged(self, key: str, data: bytes, expected: ObjectVersion, quarantine_key: str) -> bool:
        """Copy the damaged object to `quarantine_key` (server-side, CopySourceIfMatch),
        then overwrite it with `data` only if its ETag is still `expected.tag` (PutObject
        If-Match): a concurrent good write is never clobbered. False if the object changed
        or vanished. Objects over CopyObject's 5 GiB limit are replaced without the copy."""
        full = self._full(key)
        if not isinstance(data, bytes):
            data = bytes(data)
        try:
            if expected.size <= MAX_COPY:
                try:
                    self.client.copy_object(Bucket=self.bucket, Key=self._full(quarantine_key),
                                            CopySource={"Bucket": self.bucket, "Key": full},
                                            CopySourceIfMatch=expected.tag)
                except ClientError as exc:
                    if _is_precondition_failed(exc) or _is_missing_key(exc):
                        return False
                    raise
            return self._put_if_match(full, data, expected.tag)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "repairing", key) from exc

    def _holds(self, full: str, data: bytes) -> bool:
        """Whether the key now holds exactly `data` (a single-part object's ETag is the MD5
        of its bytes; with SSE-KMS it is not, and this answers False)."""
        head = self._head(full)
        return head is not None and str(head.get("ETag", "")).strip('"') == hashlib.md5(data).hexdigest()

    def _put_if_match(self, full: str, data: bytes, etag: str) -> bool:
        """PutObject with If-Match: True if written; False if the ETag changed (412) or the
        key is gone (404). Single PUT: chunk objects are far below S3's 5 GiB limit."""
        extra = {"ContentMD5": _md5_b64(data)} if self._when_required else {}
        try:
            self._retry_conflicts(lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                                                 IfMatch=etag, **extra))
            return True
        except ClientError as exc:
            if _is_precondition_failed(exc):
                # On a retry, an earlier attempt may have landed with its response lost: then
                # the key holds exactly our bytes. A first-attempt 412 is never ours.
                retried = ((exc.response.get("ResponseMetadata") or {}).get("RetryAttempts") or 0) > 0
                return retried and self._holds(full, data)
            if _is_missing_key(exc):
                return False
            raise

    # -- store check (what the bucket is configured to enforce) ----------------------

    def bucket_settings(self) -> dict[str, str]:
        """The bucket's versioning and Object Lock configuration, as reported by the server:
        'versioning': Enabled | Suspended | off | unknown (...); 'object_lock': off |
        enabled (MODE N days/years) | enabled (no default retention) | unknown (...)."""
        out: dict[str, str] = {}
        try:
            status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            out["versioning"] = status or "off"
        except (ClientError, BotoCoreError) as exc:
            out["versioning"] = f"unknown ({_one_line(str(exc))[:120]})"
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket).get("ObjectLockConfiguration", {})
            if conf.get("ObjectLockEnabled") != "Enabled":
                out["object_lock"] = "off"
            else:
                rule = (conf.get("Rule") or {}).get("DefaultRetention") or {}
                span = f"{rule.get('Days')} days" if rule.get("Days") else f"{rule.get('Years')} years"
                out["object_lock"] = f"enabled ({rule['Mode']} {span})" if rule.get("Mode") else \
                    "enabled (no default retention)"
        except ClientError as exc:
            code, _ = _code_status(exc)
            out["object_lock"] = "off" if code == "ObjectLockConfigurationNotFoundError" else \
                f"unknown ({_one_line(str(exc))[:120]})"
        except BotoCoreError as exc:
            out["object_lock"] = f"unknown ({_one_line(str(exc))[:120]})"
        return out

    # -- Object Lock, storage classes, thaw (see LockingStore) -------------------------

    def _raise_if_cold(self, exc: ClientError, key: str) -> None:
        """A GET of an archived (cold, not thawed) object: InvalidObjectState, 403."""
        code, _ = _code_status(exc)
        if code == "InvalidObjectState":
            sc = str((exc.response.get("Error", {}) or {}).get("StorageClass") or "an archive storage class")
            raise ObjectColdError(key, sc) from None

    def object_lock_enabled(self) -> bool:
        """Whether the bucket was created with Object Lock (GetObjectLockConfiguration)."""
        try:
            resp = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code, status = _code_status(exc)
            if code in ("ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound") or status == 404:
                return False
            raise self._fail(exc, "reading the Object Lock configuration of", None) from exc
        except BotoCoreError as exc:
            raise self._fail(exc, "reading the Object Lock configuration of", None) from exc
        return (resp.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"

    def object_state(self, key: str) -> ObjectState | None:
        """Storage class, lock and thaw state from one HEAD (it works on cold objects and
        reports the lock like GetObjectRetention would); None if absent."""
        full = self._full(key)
        try:
            head = self._head(full)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "reading", key) from exc
        if head is None:
            return None
        ongoing: bool | None = None
        expiry: str | None = None
        restore = head.get("Restore")
        if restore:
            ongoing = 'ongoing-request="true"' in restore
            if 'expiry-date="' in restore:
                expiry = restore.split('expiry-date="', 1)[1].split('"', 1)[0]
        until = head.get("ObjectLockRetainUntilDate")
        if until is not None:
            until = until.astimezone(datetime.timezone.utc).replace(microsecond=0)
        return ObjectState(size=int(head.get("ContentLength", 0)), storage_class=head.get("StorageClass") or "STANDARD",
                           lock_mode=head.get("ObjectLockMode"), retain_until=until,
                           legal_hold=head.get("ObjectLockLegalHoldStatus") == "ON",
                           restore_ongoing=ongoing, restore_expiry=expiry,
                           etag=str(head.get("ETag", "")).strip('"') or None)

    def apply_lock(self, key: str, lock: Any) -> None:
        """PutObjectRetention (and PutObjectLegalHold) on the current version of `key`. The
        caller merges with the existing lock first: this never asks for a shorter one."""
        full = self._full(key)
        checksum = {"ChecksumAlgorithm": "CRC32"} if not self._when_required else {}
        try:
            if lock.mode is not None and lock.until is not None:
                self.client.put_object_retention(Bucket=self.bucket, Key=full, **checksum,
                                                 Retention={"Mode": lock.mode, "RetainUntilDate": lock.until})
            if lock.legal_hold:
                self.client.put_object_legal_hold(Bucket=self.bucket, Key=full, LegalHold={"Status": "ON"}, **checksum)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "extending the retention of", key) from exc

    def request_thaw(self, key: str, days: int, tier: str) -> None:
        """RestoreObject: a temporary readable copy of a cold object for `days` days. A thaw
        already under way (409 RestoreAlreadyInProgress) is not an error."""
        full = self._full(key)
        try:
            self.client.restore_object(Bucket=self.bucket, Key=full,
                                       RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}})
        except ClientError as exc:
            code, _ = _code_status(exc)
            if code == "RestoreAlreadyInProgress":
                return
            raise self._fail(exc, "thawing", key) from exc
        except BotoCoreError as exc:
            raise self._fail(exc, "thawing", key) from exc
