"""Read-ahead for scans: fetch several pages at once, serve them one by one.

Every storage query costs ~10 ms whatever its size, so small pages (W&B's
default is 1000 rows) would be slow. A scan that misses this cache fetches up
to ``factor`` pages in one query, answers with ``page_size`` rows, and keeps
the rest for a few seconds under the cursor of the next page. The next
request of the same scan (same run, stream, keys and range) takes it from
here. Responses are exactly what they would be without the cache, except
that a point written late *inside* an already-read window is not seen by
this scan, as if it had read that window at once. Points past it are.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from ._columns import Columns

#: (run, stream, keys, require_all, next cursor, max_step)
Key = tuple[str, str, tuple[str, ...], bool, int, int | None]


class ReadAhead:
    def __init__(self, *, factor: int = 10, ttl_s: float = 5.0, max_entries: int = 64) -> None:
        self.factor = factor
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: OrderedDict[Key, tuple[float, Columns, int | None]] = OrderedDict()

    def take(self, key: Key) -> tuple[Columns, int | None] | None:
        """The rows kept for this cursor, and the cursor after them; removed when taken."""
        entry = self._entries.pop(key, None)
        if entry is None or time.monotonic() - entry[0] > self._ttl:
            return None
        return entry[1], entry[2]

    def serve(
        self, key: Key, rows: Columns, after: int | None, page_size: int
    ) -> tuple[Columns, int | None]:
        """Answer ``page_size`` of ``rows``; keep the rest for the next cursor.

        ``after`` is where the scan goes on once ``rows`` are used up (``None``: done).
        """
        if len(rows) <= page_size:
            return rows, after
        page = rows.take_range(0, page_size)
        cursor = int(page.steps[-1]) + 1
        run, stream, keys, require_all, _, max_step = key
        rest = rows.take_range(page_size, len(rows))
        self._put((run, stream, keys, require_all, cursor, max_step), rest, after)
        return page, cursor

    def _put(self, key: Key, rows: Columns, after: int | None) -> None:
        self._entries[key] = (time.monotonic(), rows, after)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
