"""The client's side of a scan: it asks for the next page as soon as this one has
arrived (its cursor comes in a header), still reads every page from a service
that sends no such header (one older than the client), and leaves its
connection to the next scan.

The service is a stand-in here (``http.server``): what is under test is when the
client sends each request and on which connection, which the real service does
not report; the scans of ``test_query.py`` run the client against the real
service.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import stride
from stride import ApiRun
from stride.api_types import RunDoc

PAGES = 3
ROWS = 4  # a page

#: The header a page is sent with, from its next cursor (``None``: send none).
Header = Callable[[int | None], str | None]


def _cursor_header(after: int | None) -> str | None:
    return "" if after is None else str(after)


class Scan:
    """Serves a run's scan, ``PAGES`` pages of ``ROWS`` rows (page ``k`` at cursor
    ``k``); notes when each page is asked for, and from which client port."""

    def __init__(
        self, header: Header, *, drop_once: int | None = None, not_found: int | None = None
    ) -> None:
        self.asked = [threading.Event() for _ in range(PAGES)]
        self.ports: list[int] = []  # the client's port of each request
        asked, ports = self.asked, self.ports
        drops = [drop_once]  # the page whose first request gets its connection closed

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real service

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                page = int(query.get("cursor", ["0"])[0])
                asked[page].set()
                ports.append(self.client_address[1])
                if drops[0] == page:
                    drops[0] = None
                    self.close_connection = True  # no answer: the connection just ends
                    return
                if page == not_found:
                    self._answer(404, {"error": "run e/p/r not found", "status": 404}, None)
                    return
                steps = list(range(page * ROWS, (page + 1) * ROWS))
                after = page + 1 if page + 1 < PAGES else None
                columns = {"_step": steps, "x": [s / 2 for s in steps]}
                self._answer(200, {"columns": columns, "nonfinite": {}, "next": after}, after)

            def _answer(self, status: int, doc: dict[str, Any], after: int | None) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                value = header(after) if status == 200 else None
                if value is not None:
                    self.send_header("Stride-Next-Cursor", value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def serving(
    header: Header = _cursor_header, *, retries: int = 0, **scan: Any
) -> Iterator[tuple[Scan, ApiRun]]:
    served = Scan(header, **scan)
    api = stride.Api(served.url, retries=retries)
    try:
        yield served, ApiRun(api, RunDoc(entity="e", project="p", id="r", path="e/p/r"))
    finally:
        api.close()
        served.close()


EVERY_STEP = list(range(PAGES * ROWS))


def test_the_next_page_is_asked_for_before_this_ones_rows_are_read() -> None:
    with serving() as (scan, run):
        rows = run.scan_history()
        assert next(rows)["_step"] == 0  # one row of the first page read
        assert scan.asked[1].wait(5.0)  # the second page is already asked for
        assert not scan.asked[2].is_set()  # one page ahead, no more
        assert [r["_step"] for r in rows] == EVERY_STEP[1:]


@pytest.mark.parametrize("header", [lambda after: None, lambda after: "soon"])
def test_without_a_usable_header_pages_are_read_one_after_the_other(header: Header) -> None:
    """A service older than the client sends no header; a header that is not a
    cursor is ignored the same way."""
    with serving(header) as (scan, run):
        rows = run.scan_history()
        assert next(rows) == {"_step": 0, "x": 0.0}
        assert not scan.asked[1].wait(0.2)  # asked for only once this page is read
        assert [r["_step"] for r in rows] == EVERY_STEP[1:]


def test_a_header_that_contradicts_the_body_is_an_error() -> None:
    contradicting = serving(lambda after: "7" if after is not None else "")
    disagree = pytest.raises(stride.ApiError, match="cursor header and body disagree")
    with contradicting as (_, run), disagree:
        list(run.scan_history())


def test_an_error_answer_to_a_page_asked_for_ahead_is_raised_as_itself() -> None:
    with serving(not_found=1) as (_, run):
        rows = run.scan_history()
        assert next(rows)["_step"] == 0
        with pytest.raises(stride.NotFoundError, match="run e/p/r not found"):
            list(rows)


def test_a_page_whose_connection_fails_is_asked_for_again() -> None:
    """The service drops the connection instead of answering the second page (a
    restart, a proxy): the client opens another and asks again."""
    with serving(drop_once=1, retries=2) as (scan, run):
        assert [r["_step"] for r in run.scan_history()] == EVERY_STEP
        assert all(asked.is_set() for asked in scan.asked)


def test_a_scan_fails_clearly_when_the_service_stays_away() -> None:
    with serving(drop_once=1) as (_, run):
        rows = run.scan_history()
        assert next(rows)["_step"] == 0
        with pytest.raises(stride.ServiceUnavailableError, match="cannot reach"):
            list(rows)


def test_a_refused_connection_says_so() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # nothing listens there once closed
    api = stride.Api(f"http://127.0.0.1:{port}", retries=0)
    run = ApiRun(api, RunDoc(entity="e", project="p", id="r", path="e/p/r"))
    with pytest.raises(stride.ServiceUnavailableError, match=r"[Rr]efused"):
        list(run.scan_history())


def test_scans_read_to_their_end_share_one_connection() -> None:
    """A loop over many runs' scans must not open a connection (and leave a
    socket waiting to close) per run."""
    with serving() as (scan, run):
        for _ in range(3):
            assert [r["_step"] for r in run.scan_history()] == EVERY_STEP
        assert len(scan.ports) == 3 * PAGES
        assert len(set(scan.ports)) == 1
