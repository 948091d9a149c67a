"""HTTP to the query service, with the standard library (the SDK's base install
stays small): one kept-alive connection shared by calls, each retried on
connection errors; streamed answers on connections of their own; and scans,
which ask for their next page while the caller reads this one.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import msgspec
import orjson

from ._api_columns import NEXT_CURSOR_HEADER
from ._settings import DEFAULT_API
from .api_types import ColumnsPage, ErrorBody
from .errors import (
    ApiError,
    AuthError,
    BadRequestError,
    NotFoundError,
    ServiceUnavailableError,
    UsageError,
)

__all__ = ["COLUMNS", "QueryHttp"]

T = TypeVar("T")
#: A page of columns (history, scans), decoded.
COLUMNS = msgspec.json.Decoder(ColumnsPage)
_ERROR = msgspec.json.Decoder(ErrorBody)
_ERRORS = {404: NotFoundError, 400: BadRequestError, 401: AuthError, 403: AuthError}
#: Connections that scans read to their end leave for the next scans, at most.
_IDLE_CONNECTIONS = 2
_CONNECTION_ERRORS = (OSError, http.client.HTTPException)


class QueryHttp:
    """The query service at ``base_url`` (default ``$STRIDE_API``, else
    ``http://127.0.0.1:8080``), with ``token`` (default ``$STRIDE_API_TOKEN``)
    sent as a bearer token; a call is tried ``retries`` more times after a
    connection error, backing off."""

    def __init__(
        self, base_url: str | None, *, timeout: float, retries: int, token: str | None
    ) -> None:
        self.base_url = (base_url or os.environ.get("STRIDE_API") or DEFAULT_API).rstrip("/")
        parsed = urllib.parse.urlsplit(self.base_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise UsageError(f"base_url must look like http://host:port, got {self.base_url!r}")
        self._host, self._port = parsed.hostname, parsed.port or 80
        self._prefix = parsed.path.rstrip("/")
        self._timeout = timeout
        self._retries = retries
        token = token or os.environ.get("STRIDE_API_TOKEN")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn: http.client.HTTPConnection | None = None
        #: Connections of scans read to their end, for the next scans (see _pages).
        self._idle: list[_ScanConnection] = []
        self._lock = threading.Lock()

    def get(self, path: str, params: Sequence[tuple[str, Any]] = ()) -> Any:
        """GET ``path`` and return its JSON as plain dicts and lists (``None`` if empty).

        For endpoints without a method of their own, such as ``/api/v1/status``;
        the shapes are the Structs of :mod:`stride.api_types`.
        """
        body = self._get_body(path, params)
        return orjson.loads(body) if body else None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            for scan in self._idle:
                scan.close()
            self._conn, self._idle = None, []

    def __del__(self) -> None:  # dropped without close(): its sockets must not leak
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
        for scan in getattr(self, "_idle", []):
            scan.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- calls on the shared connection ----------------------------------------------------

    def _get_as(
        self, decoder: msgspec.json.Decoder[T], path: str, params: Sequence[tuple[str, Any]] = ()
    ) -> T:
        body = self._get_body(path, params)
        try:
            return decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise ApiError(200, f"unexpected answer to GET {path}: {exc}") from None

    def _post_as(self, decoder: msgspec.json.Decoder[T], path: str, body: bytes) -> T:
        return self._send_as(decoder, "POST", path, body)

    def _send_as(
        self, decoder: msgspec.json.Decoder[T], method: str, path: str, body: bytes | None
    ) -> T:
        answer = self._checked(*self._request(f"{self._prefix}{path}", body, method))
        try:
            return decoder.decode(answer)
        except msgspec.DecodeError as exc:
            raise ApiError(200, f"unexpected answer to {method} {path}: {exc}") from None

    def _get_body(self, path: str, params: Sequence[tuple[str, Any]]) -> bytes:
        return self._checked(*self._request(self._url(path, params)))

    def _url(self, path: str, params: Sequence[tuple[str, Any]]) -> str:
        query = urllib.parse.urlencode([(k, v) for k, v in params if v is not None])
        return f"{self._prefix}{path}" + (f"?{query}" if query else "")

    @staticmethod
    def _checked(status: int, body: bytes) -> bytes:
        """``body``, or the error the service answered with, raised."""
        if status >= 400:
            try:
                message = _ERROR.decode(body).error
            except msgspec.DecodeError:  # not the service's error body (a proxy's page...)
                message = body[:200].decode(errors="replace")
            raise _ERRORS.get(status, ApiError)(status, message)
        return body

    def _request(
        self, url: str, body: bytes | None = None, method: str = "GET"
    ) -> tuple[int, bytes]:
        """``method`` ``url`` with ``body`` (JSON) if given, retried on connection errors
        (every call is idempotent: reads, a search, setting fields, a delete)."""

        def attempt() -> tuple[int, bytes]:
            with self._lock:
                try:
                    if self._conn is None:
                        self._conn = http.client.HTTPConnection(
                            self._host, self._port, timeout=self._timeout
                        )
                    if body is None:
                        self._conn.request(method, url, headers=self._headers)
                    else:
                        headers = {**self._headers, "Content-Type": "application/json"}
                        self._conn.request(method, url, body, headers)
                    response = self._conn.getresponse()
                    return response.status, response.read()
                except _CONNECTION_ERRORS:
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    raise

        return self._retried(attempt)

    def _retried(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, made again after a connection error (which it cleaned up
        after), backing off, up to ``retries`` more times; then the error, as a
        :class:`ServiceUnavailableError`."""
        delay = 0.1
        for tries in range(self._retries + 1):
            try:
                return attempt()
            except _CONNECTION_ERRORS as exc:
                if tries == self._retries:
                    raise ServiceUnavailableError(
                        f"cannot reach the Stride query service at {self.base_url}: {exc}. "
                        "Is `stride up` running? Set STRIDE_API or Api(base_url=...)."
                    ) from exc
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    # ---- answers on connections of their own ------------------------------------------------

    @contextlib.contextmanager
    def _open(
        self, path: str, params: Sequence[tuple[str, Any]]
    ) -> Iterator[http.client.HTTPResponse]:
        """A GET whose answer is read as it arrives, on a connection of its own
        (the shared one stays free for other calls meanwhile)."""
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            try:
                conn.request("GET", self._url(path, params), headers=self._headers)
                response = conn.getresponse()
            except OSError as exc:
                raise ServiceUnavailableError(
                    f"cannot reach the Stride query service at {self.base_url}: {exc}"
                ) from exc
            if response.status >= 400:
                self._checked(response.status, response.read())
            yield response
        finally:
            conn.close()

    def _download(self, path: str, params: Sequence[tuple[str, Any]], dest: Path) -> Path:
        """Stream the answer to ``path`` into ``dest`` (through ``dest.part``)."""
        partial = dest.with_name(dest.name + ".part")
        try:
            with self._open(path, params) as response, partial.open("wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            partial.replace(dest)
        finally:
            partial.unlink(missing_ok=True)
        return dest

    def _pages(
        self, path: str, params: Callable[[int | None], list[tuple[str, Any]]]
    ) -> Iterator[ColumnsPage]:
        """The pages of a scan (``params(cursor)``: a page's query), on a connection
        of its own. As soon as a page has arrived, the next one is asked for (its
        cursor comes in a header, before the body is decoded), so the service
        prepares it while the caller reads this one's rows. A failed connection
        is opened again and the page asked for again (reads are idempotent), up
        to ``retries`` times. A scan read to its end leaves its connection for the
        next scan (a loop over many runs opens one, not one a run)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = _ScanConnection(self._host, self._port, self._timeout, self._headers)
        try:
            cursor: int | None = None
            while True:
                url = self._url(path, params(cursor))
                status, header, body = self._retried(functools.partial(conn.answer, url))
                asked = _cursor(header) if status < 400 else None
                if asked is not None:  # ask for the next page before decoding this one
                    with contextlib.suppress(*_CONNECTION_ERRORS):  # else asked again later
                        conn.ask(self._url(path, params(asked)))
                try:
                    page = COLUMNS.decode(self._checked(status, body))
                except msgspec.DecodeError as exc:
                    raise ApiError(200, f"unexpected answer to GET {path}: {exc}") from None
                if asked is not None and asked != page.next:
                    raise ApiError(200, f"GET {path}: the cursor header and body disagree")
                yield page
                if page.next is None:
                    break
                cursor = page.next
            with self._lock:  # read to the end: nothing is in flight on it
                if len(self._idle) < _IDLE_CONNECTIONS:
                    self._idle.append(conn)
                    conn = None
        finally:
            if conn is not None:
                conn.close()


class _ScanConnection:
    """A scan's kept-alive connection, opened when first needed and again after a
    failure; it knows whether a request on it still awaits its answer."""

    def __init__(self, host: str, port: int, timeout: float, headers: dict[str, str]) -> None:
        self._address = (host, port, timeout)
        self._headers = headers
        self._conn: http.client.HTTPConnection | None = None
        self._waiting = False

    def ask(self, url: str) -> None:
        """Send ``GET url`` (its answer is read by :meth:`answer`)."""
        try:
            if self._conn is None:
                host, port, timeout = self._address
                self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
            self._conn.request("GET", url, headers=self._headers)
            self._waiting = True
        except _CONNECTION_ERRORS:
            self.close()
            raise

    def answer(self, url: str) -> tuple[int, str | None, bytes]:
        """The answer to ``GET url``: to the request asked before, else asked now.
        Its status, next-cursor header and body."""
        if not self._waiting:
            self.ask(url)
        assert self._conn is not None
        try:
            response = self._conn.getresponse()
            body = response.read()
        except _CONNECTION_ERRORS:
            self.close()
            raise
        self._waiting = False
        return response.status, response.getheader(NEXT_CURSOR_HEADER), body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._waiting = None, False


def _cursor(header: str | None) -> int | None:
    """The next page's cursor from a scan page's header (``None``: the last page, or
    no usable header, as from a service older than this client)."""
    try:
        return int(header) if header else None
    except ValueError:
        return None
