"""Objects in an S3-compatible bucket (MinIO in production) through the ``minio`` client.

A put of unknown length, or longer than ``part_size``, is a multipart upload:
the parts are buffered (``part_size`` each, up to three in flight) and the
object appears only when the upload completes; a put that fails is aborted,
so no partial object becomes visible. A get streams the HTTP response and
releases the connection when the stream is closed or read to its end.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import HTTPError, MaxRetryError, SSLError

from ._objects_base import (
    CHUNK_BYTES,
    ObjectInfo,
    ObjectStream,
    PutData,
    check_range,
    put_chunks,
    validate_key,
)
from .errors import (
    CredentialsRefusedError,
    ObjectNotFoundError,
    StoreError,
    StoreUnavailableError,
)

MIB = 1 << 20
#: The largest object S3 copies in one request.
_MAX_COPY_BYTES = 5 << 30
_REFUSED = {
    "AccessDenied",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
}
_BUSY = {"InternalError", "RequestTimeout", "ServiceUnavailable", "SlowDown"}


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    """Where the bucket is and how to reach it.

    ``endpoint`` is ``host:port`` (no scheme: ``secure`` picks HTTPS or HTTP).
    ``part_size`` is the multipart part size (S3 needs at least 5 MiB); a put
    holds up to three parts in memory. The timeouts bound each HTTP request;
    ``retries`` is how often a request that failed to connect or got a 5xx is
    retried (with backoff) before the call raises ``StoreUnavailableError``.
    """

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    region: str | None = None
    secure: bool = True
    part_size: int = 16 * MIB
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    retries: int = 3

    def __post_init__(self) -> None:
        if "://" in self.endpoint or "/" in self.endpoint or not self.endpoint:
            raise ValueError(
                f"S3 endpoint {self.endpoint!r}: give host:port only; secure= picks https"
            )
        if not 5 * MIB <= self.part_size <= 5 * 1024 * MIB:
            raise ValueError(f"part_size={self.part_size}: S3 allows 5 MiB to 5 GiB")
        if self.retries < 0 or self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("retries must be >= 0 and timeouts > 0")


class S3Objects:
    """Objects in one S3 bucket, created if missing when the store opens.

    Opening checks the credentials: a wrong key or secret raises
    :class:`CredentialsRefusedError` here, not at the first write.

    Example::

        objects = S3Objects(S3Settings(
            endpoint="minio:9000", access_key="stride", secret_key="...",
            bucket="stride", secure=False,
        ))
        info = objects.put("runs/a/model.bin", open("model.bin", "rb"))
        url = objects.presigned_get("runs/a/model.bin", expires=dt.timedelta(minutes=10))
    """

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        scheme = "https" if settings.secure else "http"
        self._where = f"bucket {settings.bucket!r} at {scheme}://{settings.endpoint}"
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(
                connect=settings.connect_timeout_s, read=settings.read_timeout_s
            ),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(
                total=settings.retries,
                backoff_factor=0.2,
                status_forcelist=[500, 502, 503, 504],
                # POSTs too: starting a multipart upload again only leaves an unused
                # upload id; completing it again after a lost answer fails, and the
                # caller's retry of the whole put then stores the same bytes.
                allowed_methods=None,
            ),
        )
        self._client = Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=self._http,
        )
        try:
            with self._call(None):
                if not self._client.bucket_exists(settings.bucket):
                    self._make_bucket()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"S3Objects({self._where})"

    def put(
        self,
        key: str,
        data: PutData,
        *,
        length: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> ObjectInfo:
        validate_key(key)
        reader = _Reader(put_chunks(key, data, length))
        try:
            result = self._client.put_object(
                self.settings.bucket,
                key,
                reader,  # type: ignore[arg-type]  # minio needs only read(n)
                -1 if length is None else length,
                content_type=content_type,
                part_size=self.settings.part_size,
            )
        except Exception as exc:
            # What the caller's data raised (a length mismatch included) passes on as is.
            mapped = None if exc is reader.error else self._mapped(exc, key)
            if mapped is None:
                raise
            raise mapped from exc
        modified = result.last_modified or dt.datetime.now(dt.UTC)
        return ObjectInfo(key, reader.total, result.etag or "", content_type, modified)

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> ObjectStream:
        check_range(start, end)
        validate_key(key)
        if end == start:  # S3 cannot ask for zero bytes; still refuse a missing key
            self.head(key)
            return _empty()
        with self._call(key):
            try:
                response = self._client.get_object(
                    self.settings.bucket,
                    key,
                    offset=start,
                    length=0 if end is None else end - start,
                )
            except S3Error as exc:
                if exc.code == "InvalidRange":  # the object exists; start is past its end
                    return _empty()
                raise

        def close() -> None:
            response.close()
            response.release_conn()

        length = int(response.headers.get("Content-Length", "0"))
        return ObjectStream(self._stream(response, key), length, close)

    def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        with self._call(key):
            stat = self._client.stat_object(self.settings.bucket, key)
        return ObjectInfo(
            key,
            stat.size or 0,
            stat.etag or "",
            stat.content_type or "application/octet-stream",
            stat.last_modified or dt.datetime.now(dt.UTC),
        )

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            with self._call(key):
                self._client.remove_object(self.settings.bucket, key)
        except ObjectNotFoundError:
            pass

    def move(self, source: str, target: str) -> ObjectInfo:
        validate_key(source)
        validate_key(target)
        bucket = self.settings.bucket
        with self._call(source):
            stat = self._client.stat_object(bucket, source)
            if (stat.size or 0) <= _MAX_COPY_BYTES:
                self._client.copy_object(bucket, target, CopySource(bucket, source))
            else:  # S3 copies at most 5 GiB at once: copy the parts, assembled by the server
                content_type = stat.content_type or "application/octet-stream"
                self._client.compose_object(
                    bucket,
                    target,
                    [ComposeSource(bucket, source)],
                    metadata={"Content-Type": content_type},  # not carried by part copies
                )
        self.delete(source)
        return self.head(target)

    def presigned_get(self, key: str, *, expires: dt.timedelta = dt.timedelta(hours=1)) -> str:
        """A signed URL, valid for ``expires`` (1 second to 7 days), for any HTTP client."""
        validate_key(key)
        if not dt.timedelta(seconds=1) <= expires <= dt.timedelta(days=7):
            raise ValueError(f"expires={expires}: S3 allows 1 second to 7 days")
        with self._call(key):
            return self._client.presigned_get_object(self.settings.bucket, key, expires=expires)

    def sweep(self, abandoned: str, older_than: dt.timedelta) -> int:
        """Objects under ``abandoned`` older than ``older_than``. Parts of multipart
        uploads that never completed are not listed here: a bucket lifecycle rule
        (``AbortIncompleteMultipartUpload``) expires them (``deploy/README.md``)."""
        cutoff = dt.datetime.now(dt.UTC) - older_than
        deleted = 0
        with self._call(None):
            found = self._client.list_objects(
                self.settings.bucket, prefix=abandoned, recursive=True
            )
            for item in found:
                if item.object_name and item.last_modified and item.last_modified < cutoff:
                    self.delete(item.object_name)
                    deleted += 1
        return deleted

    def close(self) -> None:
        self._http.clear()

    def _make_bucket(self) -> None:
        try:
            self._client.make_bucket(self.settings.bucket)
        except S3Error as exc:  # another process created it meanwhile
            if exc.code != "BucketAlreadyOwnedByYou":
                raise

    def _stream(self, response: urllib3.BaseHTTPResponse, key: str) -> Iterator[bytes]:
        with self._call(key):
            yield from response.stream(CHUNK_BYTES, decode_content=False)

    @contextmanager
    def _call(self, key: str | None) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            mapped = self._mapped(exc, key)
            if mapped is None:
                raise
            raise mapped from exc

    def _mapped(self, exc: Exception, key: str | None) -> StoreError | None:
        """The store error for what minio or urllib3 raised; ``None`` for anything else."""
        if isinstance(exc, S3Error):
            code, status = exc.code or "", exc.response.status
            if code in ("NoSuchKey", "NoSuchObject") and key is not None:
                return ObjectNotFoundError(key, self._where)
            if code in _REFUSED:
                return CredentialsRefusedError(
                    f"{self._where} refused the credentials of access key "
                    f"{self.settings.access_key!r} ({code}: {exc.message}): check the access "
                    "key and secret key (the s3:// URL's user and password, or S3Settings) "
                    "and that this identity may read and write the bucket"
                )
            if code == "NoSuchBucket":
                return StoreError(
                    f"{self._where}: the bucket does not exist (it did when the store was "
                    "opened): re-open the store to create it, or find out who deleted it",
                    retriable=False,
                )
            if code in _BUSY or status >= 500:
                return self._unavailable(f"{code}: {exc.message}")
            return StoreError(f"{self._where}: {code}: {exc.message}", retriable=False)
        if isinstance(exc, ServerError | InvalidResponseError):
            # InvalidResponseError keeps its HTTP status in a private attribute only.
            answered = getattr(exc, "status_code", None) or getattr(exc, "_code", 0)
            if isinstance(answered, int) and 400 <= answered < 500:
                return StoreError(
                    f"{self._where} answered HTTP {answered} without an S3 error ({exc}): "
                    "check that the endpoint is an S3 server",
                    retriable=False,
                )
            return self._unavailable(str(exc))
        if isinstance(exc, HTTPError):
            reason = exc.reason if isinstance(exc, MaxRetryError) else exc
            if isinstance(reason, SSLError):
                return StoreError(
                    f"{self._where}: TLS failed ({reason}): check secure= (true for https, "
                    "false for http) and the server's certificate",
                    retriable=False,
                )
            return self._unavailable(str(reason))
        return None

    def _unavailable(self, detail: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"{self._where} is unavailable ({detail}): check that it runs and that this "
            "machine reaches it (endpoint, port, secure=); the call may be retried"
        )


class _Reader:
    """A ``read(n)`` over chunks, for minio; remembers what the chunks raised."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = b""
        self.total = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        parts = [self._rest] if self._rest else []
        have = len(self._rest)
        while size < 0 or have < size:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                break
            except BaseException as exc:
                self.error = exc
                raise
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if 0 <= size < len(data):
            data, self._rest = data[:size], data[size:]
        else:
            self._rest = b""
        self.total += len(data)
        return data


def _empty() -> ObjectStream:
    return ObjectStream(iter(()), 0, lambda: None)
