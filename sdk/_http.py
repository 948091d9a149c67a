"""HTTP for the query client: one kept-alive connection, retried on connection
errors, and a scan's pages fetched one ahead on a connection of their own.

Standard library only (``http.client``), so the SDK's base install stays small.
"""

from __future__ import annotations

import contextlib
import http.client
import queue
import threading
import time
from collections.abc import Callable, Iterator

from .api_types import NEXT_CURSOR_HEADER
from .errors import ServiceUnavailableError

#: (status, body, the next page's cursor header if any)
Answer = tuple[int, bytes, str | None]


class Connection:
    """A kept-alive connection to the query service; every request is retried on
    connection errors (all of the client's calls are idempotent)."""

    def __init__(
        self,
        base_url: str,
        host: str,
        port: int,
        *,
        timeout: float,
        retries: int,
        headers: dict[str, str],
    ) -> None:
        self.base_url, self._host, self._port = base_url, host, port
        self._timeout, self._retries, self._headers = timeout, retries, headers
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def request(self, url: str, body: bytes | None = None, method: str = "GET") -> Answer:
        """``method`` ``url`` with ``body`` (JSON) if given."""
        delay = 0.1
        for attempt in range(self._retries + 1):
            with self._lock:
                try:
                    return self._once(url, body, method)
                except (OSError, http.client.HTTPException) as exc:
                    self._close()
                    if attempt == self._retries:
                        raise ServiceUnavailableError(
                            f"cannot reach the Stride query service at {self.base_url}: {exc}. "
                            "Is `stride up` running? Set STRIDE_API or Api(base_url=...)."
                        ) from exc
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def open(self) -> http.client.HTTPConnection:
        """A new connection of its own, for an answer read as it arrives."""
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def copy(self) -> Connection:
        return Connection(
            self.base_url, self._host, self._port,
            timeout=self._timeout, retries=self._retries, headers=self._headers,
        )  # fmt: skip

    @property
    def headers(self) -> dict[str, str]:
        return self._headers

    def close(self) -> None:
        with self._lock:
            self._close()

    def _once(self, url: str, body: bytes | None, method: str) -> Answer:
        if self._conn is None:
            self._conn = self.open()
        if body is None:
            self._conn.request(method, url, headers=self._headers)
        else:
            headers = {**self._headers, "Content-Type": "application/json"}
            self._conn.request(method, url, body, headers)
        response = self._conn.getresponse()
        return response.status, response.read(), response.getheader(NEXT_CURSOR_HEADER)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:  # dropped without close(): do not leak the socket
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()


def pages_ahead(
    conn: Connection, url_for: Callable[[int | None], str], first: int | None, depth: int = 2
) -> Iterator[Answer]:
    """The answers of a paged GET, each page asked for as soon as the one before has
    arrived (its cursor is in a header), while the caller is still reading it.

    ``url_for(cursor)`` is the URL of the page at ``cursor``, starting at ``first``.
    A thread fetches up to ``depth`` pages ahead on ``conn`` (a connection of its
    own) and stops at the last page, at an error (answered in order, then no
    more), or when the caller stops iterating.
    """
    answers: queue.Queue[Answer | BaseException | None] = queue.Queue(depth)
    stop = threading.Event()

    def fetch() -> None:
        cursor = first
        try:
            while not stop.is_set():
                answer = conn.request(url_for(cursor))
                answers.put(answer)
                status, _, sent = answer
                if status >= 400 or sent is None:
                    break
                cursor = int(sent)
            answers.put(None)
        except BaseException as exc:  # handed to the caller, raised there
            answers.put(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=fetch, name="stride-scan-pages", daemon=True)
    thread.start()
    try:
        while (answer := answers.get()) is not None:
            if isinstance(answer, BaseException):
                raise answer
            yield answer
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put() on a full queue, then let it finish
            with contextlib.suppress(queue.Empty):
                answers.get(timeout=0.05)
