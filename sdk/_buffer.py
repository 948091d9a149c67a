"""The in-memory buffer between ``log()`` and the flusher: columnar from the start.

``log()`` packs a row into one record (``struct``: int64 step, float64 time,
timestamp and values; packing also checks every value is a number) and
appends it to the ``bytearray`` of its key set, under a lock that is only
ever held for an append or a swap, never for I/O. The flusher takes every
group at once (:meth:`MetricBuffer.take`) and cuts them into
:class:`~sdk.wire.MetricBlock` columns with strided ``memoryview`` slices (C
only), so it holds the GIL for microseconds. Byte buffers are not tracked by
the cyclic GC, so a full buffer adds nothing to GC pauses.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator

from .wire import MetricBlock

#: Bytes a row adds to a batch besides its values: step, time, timestamp.
_ROW_OVERHEAD = 24


#: Per key set, packed rows in chunks of at most ``_CHUNK`` bytes: appending to a
#: small bytearray never copies more than one chunk when it grows, where one big
#: bytearray would copy all its megabytes inside log() each time it is reallocated.
Groups = dict[tuple[str, ...], list[bytearray]]
_CHUNK = 64 * 1024


def record_format(width: int) -> struct.Struct:
    """One row of a key set with ``width`` keys: step, time, timestamp, then the values."""
    return struct.Struct(f"<qdd{width}d")


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

    def append(self, keys: tuple[str, ...], record: bytes) -> int:
        """Add one packed row (see :func:`record_format`) of the key set ``keys``."""
        with self._lock:
            chunks = self._groups.get(keys)
            if chunks is None:
                self._groups[keys] = [bytearray(record)]
            else:
                last = chunks[-1]
                if len(last) < _CHUNK:
                    last += record
                else:
                    chunks.append(bytearray(record))
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
    for keys, chunks in groups.items():
        stride = 3 + len(keys)
        per_row = 8 * stride
        rows_per_block = max(1, (max_bytes - 1024) // per_row)
        with memoryview(b"".join(chunks)).cast("d") as cells:
            rows = len(cells) // stride
            for start in range(0, rows, rows_per_block):
                stop = min(start + rows_per_block, rows)
                if chunk and size + per_row * (stop - start) > max_bytes:
                    yield chunk
                    chunk, size = [], 0
                part = cells[start * stride : stop * stride]
                # Strided slices copy raw bytes: the int64 steps come through bit for bit.
                chunk.append(
                    MetricBlock(
                        stream=stream,
                        keys=list(keys),
                        steps=part[0::stride].tobytes(),
                        times=part[1::stride].tobytes(),
                        timestamps=part[2::stride].tobytes(),
                        values=[part[3 + j :: stride].tobytes() for j in range(len(keys))],
                    )
                )
                size += per_row * (stop - start)
    if chunk:
        yield chunk
