"""The in-memory buffer between ``log()`` and the flusher, and its columnar encoding.

``log()`` appends one row tuple under a lock that is only ever held for an
append or a list swap, never for I/O. The flusher takes everything at once
(:meth:`MetricBuffer.take`) and turns rows into columnar
:class:`~sdk.wire.MetricBlock` objects (:func:`to_blocks`), grouping rows that
share a key set so values of one key become one contiguous ``float64`` array.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Iterator

from .wire import MetricBlock

#: One logged row: (step, time, timestamp, keys, values as float64 array).
Row = tuple[int, float, float, tuple[str, ...], "array[float]"]

#: Bytes a row adds to a batch besides its values: step, time, timestamp.
_ROW_OVERHEAD = 24


class MetricBuffer:
    """Thread-safe list of rows with a soft bound.

    ``append`` returns the number of buffered rows so the caller can decide to
    wait (bounded) when the buffer is full; it never refuses a row.
    """

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._rows: list[Row] = []
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self.oldest_at = 0.0  # monotonic time of the first row since the last take

    def append(self, row: Row) -> int:
        with self._lock:
            rows = self._rows
            if not rows:
                self.oldest_at = time.monotonic()
            rows.append(row)
            return len(rows)

    def __len__(self) -> int:
        return len(self._rows)

    def take(self) -> list[Row]:
        with self._lock:
            rows, self._rows = self._rows, []
            self._drained.notify_all()
            return rows

    def wait_for_room(self, timeout: float) -> bool:
        """Block until the buffer is below its bound or ``timeout`` passes."""
        with self._lock:
            return self._drained.wait_for(lambda: len(self._rows) < self.max_rows, timeout)


def to_blocks(rows: list[Row], stream: str, max_bytes: int) -> Iterator[list[MetricBlock]]:
    """Yield lists of blocks, each list at most ``max_bytes`` of payload.

    Row order inside a key set is kept; a step logged twice stays twice (the
    later row wins at ingest), so nothing is lost in the grouping.
    """
    chunk: list[MetricBlock] = []
    size = 0
    for keys, group in _group_by_keys(rows).items():
        per_row = _ROW_OVERHEAD + 8 * len(keys)
        rows_per_block = max(1, (max_bytes - 1024) // per_row)
        for start in range(0, len(group), rows_per_block):
            part = group[start : start + rows_per_block]
            block_size = per_row * len(part)
            if chunk and size + block_size > max_bytes:
                yield chunk
                chunk, size = [], 0
            chunk.append(_block(stream, keys, part))
            size += block_size
    if chunk:
        yield chunk


def _group_by_keys(rows: list[Row]) -> dict[tuple[str, ...], list[Row]]:
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        group = groups.get(row[3])
        if group is None:
            groups[row[3]] = [row]
        else:
            group.append(row)
    return groups


def _block(stream: str, keys: tuple[str, ...], rows: list[Row]) -> MetricBlock:
    flat = array("d")
    for row in rows:
        flat.extend(row[4])
    width = len(keys)
    return MetricBlock(
        stream=stream,
        keys=list(keys),
        steps=array("q", [r[0] for r in rows]).tobytes(),
        times=array("d", [r[1] for r in rows]).tobytes(),
        timestamps=array("d", [r[2] for r in rows]).tobytes(),
        values=[flat[j::width].tobytes() for j in range(width)],
    )
