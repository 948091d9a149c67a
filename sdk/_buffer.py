"""The in-memory buffer between ``log()`` and the flusher: columnar from the start.

Rows logged with the same key set go to one :class:`_Group`: arrays of steps,
times and timestamps, and one flat ``float64`` array of values (row-major).
``log()`` does four C-level appends under a lock that is only ever held for
an append or a swap, never for I/O. The flusher takes every group at once
(:meth:`MetricBuffer.take`) and cuts them into :class:`~sdk.wire.MetricBlock`
objects with C-level slicing only (:func:`to_blocks`), so it holds the GIL
for microseconds and the training thread is not kept waiting. Arrays are not
tracked by the cyclic GC, so a full buffer adds nothing to GC pauses.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Iterator

from .wire import MetricBlock

#: Bytes a row adds to a batch besides its values: step, time, timestamp.
_ROW_OVERHEAD = 24


class _Group:
    __slots__ = ("stamps", "steps", "times", "values")

    def __init__(self) -> None:
        self.steps = array("q")
        self.times = array("d")
        self.stamps = array("d")
        self.values = array("d")


Groups = dict[tuple[str, ...], _Group]


class MetricBuffer:
    """Thread-safe columnar buffer with a soft bound on rows.

    ``append`` returns the number of buffered rows so the caller can decide to
    wait (bounded) when the buffer is full; it never refuses a row.
    """

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._groups: Groups = {}
        self._rows = 0
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self.oldest_at = 0.0  # monotonic time of the first row since the last take

    def append(self, step: int, t: float, ts: float, keys: tuple[str, ...], values: bytes) -> int:
        with self._lock:
            group = self._groups.get(keys)
            if group is None:
                group = self._groups[keys] = _Group()
            group.steps.append(step)
            group.times.append(t)
            group.stamps.append(ts)
            group.values.frombytes(values)
            self._rows += 1
            if self._rows == 1:
                self.oldest_at = time.monotonic()
            return self._rows

    def __len__(self) -> int:
        return self._rows

    def take(self) -> Groups:
        with self._lock:
            groups, self._groups, self._rows = self._groups, {}, 0
            self._drained.notify_all()
            return groups

    def wait_for_room(self, timeout: float) -> bool:
        """Block until the buffer is below its bound or ``timeout`` passes."""
        with self._lock:
            return self._drained.wait_for(lambda: self._rows < self.max_rows, timeout)


def to_blocks(groups: Groups, stream: str, max_bytes: int) -> Iterator[list[MetricBlock]]:
    """Yield lists of blocks, each list at most ``max_bytes`` of payload.

    Row order inside a key set is kept; a step logged twice stays twice (the
    later row wins at ingest), so nothing is lost.
    """
    chunk: list[MetricBlock] = []
    size = 0
    for keys, group in groups.items():
        width = len(keys)
        per_row = _ROW_OVERHEAD + 8 * width
        rows_per_block = max(1, (max_bytes - 1024) // per_row)
        for start in range(0, len(group.steps), rows_per_block):
            stop = min(start + rows_per_block, len(group.steps))
            block_size = per_row * (stop - start)
            if chunk and size + block_size > max_bytes:
                yield chunk
                chunk, size = [], 0
            chunk.append(_block(stream, keys, group, start, stop))
            size += block_size
    if chunk:
        yield chunk


def _block(stream: str, keys: tuple[str, ...], g: _Group, start: int, stop: int) -> MetricBlock:
    width = len(keys)
    flat = g.values[start * width : stop * width]
    return MetricBlock(
        stream=stream,
        keys=list(keys),
        steps=g.steps[start:stop].tobytes(),
        times=g.times[start:stop].tobytes(),
        timestamps=g.stamps[start:stop].tobytes(),
        values=[flat[j::width].tobytes() for j in range(width)],
    )
