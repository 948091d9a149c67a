"""Read-ahead for scans: read big chunks, serve them page by page, and read the
next chunk while the client reads this one.

Every storage query costs milliseconds whatever its size, and storage reads
rows several times faster in big chunks than in small ones, so small pages
(W&B's default is 1000 rows) would be slow read one by one. A scan that misses
this cache reads ``first_pages`` pages in one query, answers with one page and
keeps the rest under the cursor of the next page; at once it starts reading
the chunk after, four times larger (up to about ``chunk_values`` values, each
row holding its step, its two times and a value per key: the same memory for
a scan of one key or of many), so that by the time the client has used the
kept rows the next ones are ready. Each scan (run, stream, keys, range) thus
has at most two chunks here: the one being served and the one being read,
about 19 MB together at most, so about three scans in full flight fit in the
default ``max_bytes``; past it the oldest are forgotten.

Answers are exactly what they would be without the cache, except that a
point written late *inside* an already-read window is not seen by this scan,
as if it had read that window at once; points past it are. Kept rows expire
after ``ttl_s``; the oldest scans are forgotten past ``max_bytes`` (a scan
whose rows are gone reads them again: slower, never wrong).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from ._columns import Columns

log = logging.getLogger("stride.query")

#: (run, stream, keys, require_all, cursor, max_step)
Key = tuple[str, str, tuple[str, ...], bool, int, int | None]
#: Rows from a cursor, and the cursor after them (``None``: the scan is complete).
Chunk = tuple[Columns, int | None]
#: Reads ``rows`` rows of the scan from cursor ``lo``.
Fetch = Callable[[int, int], Coroutine[Any, Any, Chunk]]


@dataclasses.dataclass
class _Entry:
    """Rows kept for a cursor, or (``pending``) the read that will bring them."""

    at: float  # when it was kept (monotonic)
    nbytes: int  # what it holds: its rows' arrays, and the chunk being read
    rows: Columns = dataclasses.field(default_factory=Columns.empty)
    after: int | None = None
    following: asyncio.Task[Chunk] | None = None  # the chunk at ``after``, being read
    pending: asyncio.Task[Chunk] | None = None
    held: int = 0  # bytes of the arrays ``rows`` are a view of


class ReadAhead:
    def __init__(
        self,
        *,
        first_pages: int = 10,
        chunk_values: int = 1 << 20,
        ttl_s: float = 5.0,
        max_bytes: int = 64 << 20,
    ) -> None:
        self.first_pages = first_pages
        self.chunk_values = chunk_values
        self._ttl = ttl_s
        self._max_bytes = max_bytes
        self._bytes = 0
        self._closed = False
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()

    async def page(self, key: Key, page_size: int, fetch: Fetch) -> Chunk:
        """The page of ``page_size`` rows at ``key``'s cursor, and the next cursor."""
        lo, keys = key[4], key[2]
        # Capped by points instead (26k rows of 10 keys, not 80k), a 10-key scan's
        # service spent ~1.8 ms of CPU a page, against ~1.2: each chunk's queries
        # cost milliseconds whatever their size.
        chunk_rows = max(page_size, self.chunk_values // (len(keys) + 3))

        def read_after(chunk: Columns, after: int | None) -> asyncio.Task[Chunk] | None:
            # Chunks grow 4x up to chunk_rows: the next one is read while this one is
            # served, and a small first chunk keeps the first page quick.
            size = min(chunk_rows, max(page_size, 4 * len(chunk)))
            if after is None or self._closed:
                return None
            return asyncio.create_task(fetch(after, size))

        # What a chunk being read will hold, at most (for the bound on kept bytes).
        reading = chunk_rows * (len(keys) + 3) * 9
        if self._closed:  # shutting down: answer, but read nothing ahead
            return await fetch(lo, page_size)
        entry = self._take(key)
        if entry is None:
            rows, after = await fetch(lo, min(chunk_rows, page_size * self.first_pages))
            following = read_after(rows, after)
            held = _nbytes(rows)
        elif entry.pending is not None:
            rows, after = await _arrived(entry.pending, lo, chunk_rows, fetch)
            following = read_after(rows, after)
            held = _nbytes(rows)
        else:
            rows, after, following, held = entry.rows, entry.after, entry.following, entry.held
        while len(rows) < page_size and following is not None:  # fill the page from the next chunk
            assert after is not None
            more, after = await _arrived(following, after, chunk_rows, fetch)
            rows = rows.concat(more)
            following = read_after(more, after)
            held = _nbytes(rows)  # a copy: the rest is a view of it
        if len(rows) > page_size:
            page = rows.take_range(0, page_size)
            cursor = int(page.steps[-1]) + 1
            rest = rows.take_range(page_size, len(rows))  # a view: the whole chunk stays
            nbytes = held + (reading if following is not None else 0)
            entry = _Entry(time.monotonic(), nbytes, rest, after, following, held=held)
            self._put(_at(key, cursor), entry)
            return page, cursor
        if following is not None:  # this page uses up the chunk: the next starts on the one read
            assert after is not None
            self._put(_at(key, after), _Entry(time.monotonic(), reading, pending=following))
        return rows, after

    def close(self) -> None:
        """Forget every kept chunk, stop the reads in flight, and read nothing ahead
        from now on (requests still in flight are answered by direct reads)."""
        self._closed = True
        while self._entries:
            self._drop(next(iter(self._entries)))

    def _take(self, key: Key) -> _Entry | None:
        self._expire()
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
        return entry

    def _put(self, key: Key, entry: _Entry) -> None:
        """Keep ``entry`` (unless it alone is over ``max_bytes``); forget expired
        entries, then the oldest while over ``max_bytes``."""
        if key in self._entries:  # the same scan twice at once: the last one is kept
            self._drop(key)
        if entry.nbytes > self._max_bytes or self._closed:
            _cancel(entry.following)
            _cancel(entry.pending)
            return
        self._entries[key] = entry
        self._bytes += entry.nbytes
        self._expire()
        for old in list(self._entries):
            if self._bytes <= self._max_bytes:
                break
            if old != key:
                self._drop(old)

    def _expire(self) -> None:
        now = time.monotonic()
        for old in [k for k, e in self._entries.items() if now - e.at > self._ttl]:
            self._drop(old)

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.nbytes
        _cancel(entry.following)
        _cancel(entry.pending)


async def _arrived(read: asyncio.Task[Chunk], lo: int, rows: int, fetch: Fetch) -> Chunk:
    """The chunk ``read`` brought; if that read failed, read it again here (and fail
    this request with the error if it fails again)."""
    try:
        return await read
    except Exception as exc:
        log.debug("a scan's read-ahead failed (%s); reading again", exc)
        return await fetch(lo, rows)


def _at(key: Key, cursor: int) -> Key:
    run, stream, keys, require_all, _, max_step = key
    return (run, stream, keys, require_all, cursor, max_step)


def _nbytes(rows: Columns) -> int:
    arrays = [rows.steps, *rows.values.values(), *rows.present.values()]
    return sum(a.nbytes for a in arrays)


def _cancel(task: asyncio.Task[Chunk] | None) -> None:
    if task is None:
        return
    task.cancel()
    # A read that failed before it was cancelled must not be reported as never retrieved.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
