"""What both object-store backends share: the interface, the key rules, the stream types."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from .errors import InvalidKeyError

MAX_KEY_BYTES = 1024
"""The longest key, in UTF-8 bytes (S3's limit)."""
MAX_SEGMENT_BYTES = 255
"""The longest ``/``-separated part of a key, in UTF-8 bytes (a file name's limit)."""
TMP_SUFFIX = ".stride-tmp"
"""Ends the names of the local backend's writes in progress; no key segment may end so."""
CHUNK_BYTES = 1 << 20
"""The size of the chunks a get yields and a file-like put is read in."""

PutData = bytes | bytearray | memoryview | BinaryIO | Iterable[bytes]
"""What ``put`` stores: bytes, a binary file object (read to its end), or an iterable of chunks."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What ``head`` (and ``put``) report about a stored object.

    ``etag`` is an opaque version tag: equal etags mean equal bytes, and a put of
    other bytes changes it (equal bytes may carry different tags). On S3 it is the
    server's ETag (the MD5 of the bytes for a single-part upload); locally it is
    made of the file's inode, modification time and size.
    """

    key: str
    size: int
    etag: str
    content_type: str
    last_modified: dt.datetime


class ObjectStream:
    """The bytes of an object, or of a range of it, as an iterator of chunks.

    ``length`` is the number of bytes it yields. It holds a file or an HTTP
    connection until closed: iterate it to the end, use it as a context
    manager, or call :meth:`read`, which reads the rest and closes it.
    """

    def __init__(self, chunks: Iterator[bytes], length: int, close: Callable[[], None]) -> None:
        self.length = length
        self._chunks = chunks
        self._close = close
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def read(self) -> bytes:
        """Every remaining byte, then close."""
        with self:
            return b"".join(self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> ObjectStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@runtime_checkable
class ObjectStore(Protocol):
    """Blocking access to file bytes by key; both backends behave alike.

    Every call blocks: from an event loop, run them on an executor thread, as
    :class:`stride.store.AsyncStore` does for ClickHouse.
    """

    def put(
        self,
        key: str,
        data: PutData,
        *,
        length: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> ObjectInfo:
        """Store ``data`` under ``key``, replacing any object there, all or nothing.

        ``length``, when given, must be the exact number of bytes (a mismatch
        raises ``ValueError`` and stores nothing); ``None`` means unknown. If
        ``data`` raises, the exception propagates and nothing is stored: a
        reader sees the old object or the new one, never a part.
        """
        ...

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> ObjectStream:
        """The bytes ``[start, end)`` of the object, like ``data[start:end]``.

        ``end`` is exclusive; ``None`` means the end of the object. A range
        reaching past the end is cut at the end, so a ``start`` at or past the
        end yields no bytes. Negative offsets, or ``end < start``, raise
        ``ValueError``. A missing key raises ``ObjectNotFoundError`` at once,
        before any iteration.
        """
        ...

    def head(self, key: str) -> ObjectInfo:
        """What is stored under ``key``; ``ObjectNotFoundError`` if nothing is."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...

    def move(self, source: str, target: str) -> ObjectInfo:
        """Give the object under ``source`` the key ``target`` (replacing any object
        there) and remove ``source``; ``ObjectNotFoundError`` if ``source`` is missing.

        A reader of ``target`` sees the old object or the moved one, never a part.
        Locally a rename; on S3 a copy made by the server (no bytes pass through
        the caller), then a delete.
        """
        ...

    def presigned_get(self, key: str, *, expires: dt.timedelta = dt.timedelta(hours=1)) -> str:
        """A URL that GETs the object's bytes without credentials until ``expires`` passes.

        It does not check that the object exists (fetching the URL does).
        """
        ...

    def sweep(self, abandoned: str, older_than: dt.timedelta) -> int:
        """Delete what interrupted writes left, not written to for ``older_than``:
        the objects under the key prefix ``abandoned`` (copies their writer meant
        to move or delete, such as a killed file worker's early copies) and, in a
        local directory, the temporary files of puts that never finished. Returns
        how many were deleted. Nothing a reader can name is touched otherwise.
        """
        ...

    def close(self) -> None:
        """Release connections. The store cannot be used afterwards."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it can name an object, else raise :class:`InvalidKeyError`.

    The rules, the same for every backend: a non-empty string of at most
    1024 UTF-8 bytes; no leading ``/``; its ``/``-separated segments are
    non-empty (no ``//``, no trailing ``/``), are not ``.`` or ``..``, are at
    most 255 bytes, and do not end in ``.stride-tmp``; no control characters.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(str(key), "a key is a non-empty string")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise InvalidKeyError(key, "it is not valid Unicode (a lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"it is {size} UTF-8 bytes; the limit is {MAX_KEY_BYTES}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidKeyError(key, "it contains a control character")
    if key.startswith("/"):
        raise InvalidKeyError(key, "it starts with '/'; keys are relative, like 'runs/a/b.bin'")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKeyError(key, "it has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise InvalidKeyError(key, f"it has a {segment!r} segment")
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise InvalidKeyError(key, f"a segment is longer than {MAX_SEGMENT_BYTES} bytes")
        if segment.endswith(TMP_SUFFIX):
            raise InvalidKeyError(key, f"a segment ends in {TMP_SUFFIX!r}, kept for writes")
    return key


def check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(
            f"invalid byte range start={start}, end={end}: "
            "need 0 <= start <= end (end exclusive, None for the end of the object)"
        )


def put_chunks(key: str, data: PutData, length: int | None) -> Iterator[bytes]:
    """The non-empty chunks of ``data``, checked against ``length``.

    The last chunk is held back until ``data`` is exhausted, so a length
    mismatch raises before a consumer has seen every byte: a backend that
    commits on the last byte commits nothing wrong.
    """
    if length is not None and length < 0:
        raise ValueError(f"put {key!r}: length={length}; give the byte count, or None")
    return _checked(key, _chunks(data), length)


def _checked(key: str, chunks: Iterator[bytes], length: int | None) -> Iterator[bytes]:
    total = 0
    held: bytes | None = None
    for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        if length is not None and total > length:
            raise ValueError(
                f"put {key!r}: length={length} was given but the data has more bytes; "
                "pass the exact length, or None when it is unknown"
            )
        if held is not None:
            yield held
        held = chunk
    if length is not None and total != length:
        raise ValueError(
            f"put {key!r}: length={length} was given but the data has {total} bytes; "
            "pass the exact length, or None when it is unknown"
        )
    if held is not None:
        yield held


def _chunks(data: PutData) -> Iterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    elif callable(read := getattr(data, "read", None)):
        while chunk := read(CHUNK_BYTES):
            yield bytes(chunk)
    else:
        for chunk in data:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"put: data yielded {type(chunk).__name__}, expected bytes")
            yield bytes(chunk)
