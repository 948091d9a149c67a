"""The client's side of a scan: it asks for the next page as soon as this one has
arrived (its cursor comes in a header), and still reads every page from a
service that sends no such header (one older than the client).

The service is a stand-in here (``http.server``): what is under test is when the
client sends each request, which the real service does not report; the scans
of ``test_query.py`` run the client against the real service.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

import stride
from stride import ApiRun
from stride.api_types import RunDoc

PAGES = 3
ROWS = 4  # a page


class Scan:
    """Serves a run's scan, ``PAGES`` pages of ``ROWS`` rows (page ``k`` at cursor
    ``k``), and notes when each page is asked for."""

    def __init__(self, *, cursor_header: bool, drop_once: int | None = None) -> None:
        self.asked = [threading.Event() for _ in range(PAGES)]
        asked = self.asked
        drops = [drop_once]  # the page whose first request gets its connection closed

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real service

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                page = int(query.get("cursor", ["0"])[0])
                asked[page].set()
                if drops[0] == page:
                    drops[0] = None
                    self.close_connection = True  # no answer: the connection just ends
                    return
                steps = list(range(page * ROWS, (page + 1) * ROWS))
                after = page + 1 if page + 1 < PAGES else None
                body = json.dumps(
                    {"columns": {"_step": steps, "x": [s / 2 for s in steps]},
                     "nonfinite": {}, "next": after}
                ).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if cursor_header:
                    self.send_header("Stride-Next-Cursor", "" if after is None else str(after))
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
    *, cursor_header: bool, drop_once: int | None = None, retries: int = 0
) -> Iterator[tuple[Scan, ApiRun]]:
    scan = Scan(cursor_header=cursor_header, drop_once=drop_once)
    api = stride.Api(scan.url, retries=retries)
    try:
        yield scan, ApiRun(api, RunDoc(entity="e", project="p", id="r", path="e/p/r"))
    finally:
        api.close()
        scan.close()


@pytest.fixture
def with_header() -> Iterator[tuple[Scan, ApiRun]]:
    with serving(cursor_header=True) as served:
        yield served


@pytest.fixture
def without_header() -> Iterator[tuple[Scan, ApiRun]]:
    with serving(cursor_header=False) as served:
        yield served


def test_the_next_page_is_asked_for_before_this_ones_rows_are_read(
    with_header: tuple[Scan, ApiRun],
) -> None:
    scan, run = with_header
    rows = run.scan_history()
    assert next(rows)["_step"] == 0  # one row of the first page read
    assert scan.asked[1].wait(5.0)  # the second page is already asked for
    assert not scan.asked[2].is_set()  # one page ahead, no more
    assert [r["_step"] for r in rows] == list(range(1, PAGES * ROWS))


def test_a_service_without_the_header_is_read_page_after_page(
    without_header: tuple[Scan, ApiRun],
) -> None:
    scan, run = without_header
    rows = run.scan_history()
    assert next(rows) == {"_step": 0, "x": 0.0}
    assert not scan.asked[1].wait(0.2)  # asked for only once this page is read
    assert [r["_step"] for r in rows] == list(range(1, PAGES * ROWS))


def test_a_page_whose_connection_fails_is_asked_for_again() -> None:
    """The service drops the connection instead of answering the second page (a
    restart, a proxy): the client opens another and asks again."""
    with serving(cursor_header=True, drop_once=1, retries=2) as (scan, run):
        assert [r["_step"] for r in run.scan_history()] == list(range(PAGES * ROWS))
        assert all(asked.is_set() for asked in scan.asked)


def test_a_scan_fails_clearly_when_the_service_stays_away() -> None:
    with serving(cursor_header=True, drop_once=1, retries=0) as (_, run):
        rows = run.scan_history()
        assert next(rows)["_step"] == 0
        with pytest.raises(stride.ServiceUnavailableError, match="cannot reach"):
            list(rows)
