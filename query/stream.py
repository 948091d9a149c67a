"""A whole range of a run's rows in one answer: Arrow IPC or NDJSON, streamed.

``scan`` answers a page per request, so reading a long run costs a round trip
per page. This endpoint reads the same keyset pages from storage (see
:mod:`.scan`) but writes them into one chunked answer as they come: an Arrow
IPC stream (a schema, then a record batch per page) or NDJSON (a JSON object
per row). Memory stays bounded by a page or two on both sides; the client reads
batches as they arrive (``ApiRun.scan_batches``, ``to_arrow``, ``to_pandas``).

Rows are the scan's: ``_step``, ``_runtime``, ``_timestamp``, and a column per
key, null where the key has no value at that step (in NDJSON the key is left
out, and a non-finite value is the string ``"nan"``, ``"inf"`` or ``"-inf"``).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from stride._rows import rows
from stride.store import AsyncStore

from ._columns import Columns
from .scan import scan_page

__all__ = ["Chunks", "arrow_table", "json_rows", "row_pages", "row_schema", "stream_rows"]

#: Points per page read from storage (a page's steps: this over the keys): large
#: pages, few queries, memory bounded (~20 MB of columns). A storage query for one
#: key read 3.6M points/s in pages of 100k and 5.4M in pages of 500k (FINAL).
STREAM_POINTS = 500_000
_INT64 = (-(2**63), 2**63 - 1)
_NONFINITE = {np.inf: "inf", -np.inf: "-inf"}
#: The end of an Arrow IPC stream: a continuation marker and a zero length.
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"


class Chunks(io.RawIOBase):
    """A write-only file that keeps what is written until :meth:`take` hands it on:
    the sink pyarrow's writers write a stream into."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


async def row_pages(
    store: AsyncStore,
    run: str,
    stream: str,
    keys: list[str],
    *,
    require_all: bool = False,
    min_step: int | None = None,
    max_step: int | None = None,
    page_size: int | None = None,
) -> AsyncIterator[Columns]:
    """The run's rows of ``keys`` from ``min_step`` to ``max_step``, page by page
    (``page_size`` steps; default :data:`STREAM_POINTS` over the keys). The next
    page is read while the caller handles this one."""
    if not keys:
        return
    size = page_size or max(1_000, STREAM_POINTS // len(keys))

    def read(lo: int) -> asyncio.Task[tuple[Columns, int | None]]:
        page = scan_page(
            store, run, stream, keys, require_all=require_all, page_size=size, lo=lo,
            max_step=max_step,
        )  # fmt: skip
        return asyncio.ensure_future(page)

    start = _INT64[0] if min_step is None else min_step
    if max_step is not None and start > max_step:
        return
    pending = read(start)
    try:
        while True:
            cols, lo = await pending
            more = lo is not None and (max_step is None or lo <= max_step)
            if more:
                assert lo is not None
                pending = read(lo)
            if len(cols):
                yield cols
            if not more:
                return
    finally:
        pending.cancel()


def row_schema(keys: list[str]) -> pa.Schema:
    return pa.schema(
        [pa.field("_step", pa.int64())]
        + [pa.field(name, pa.float64()) for name in ("_runtime", "_timestamp", *keys)]
    )


def arrow_table(cols: Columns, schema: pa.Schema) -> pa.Table:
    """``cols`` as a table of ``schema`` (:func:`row_schema`): null where no value."""
    arrays: list[pa.Array[Any]] = [pa.array(cols.steps, pa.int64())]
    for name in schema.names[1:]:
        values, present = cols.values.get(name), cols.present.get(name)
        if values is None or present is None:
            arrays.append(pa.nulls(len(cols), pa.float64()))
        elif present.all():
            arrays.append(pa.array(values, pa.float64()))
        else:
            arrays.append(pa.array(values, pa.float64(), mask=~present))
    return pa.Table.from_arrays(arrays, schema=schema)


def json_rows(cols: Columns, keys: list[str], separator: bytes) -> bytes:
    """Rows as JSON objects joined by ``separator``: absent keys left out,
    non-finite values as strings."""
    columns: dict[str, list[Any]] = {"_step": cols.steps.tolist()}
    for name in ("_runtime", "_timestamp", *keys):
        values, present = cols.values[name], cols.present[name]
        column = values.tolist()
        for i in np.flatnonzero(present & ~np.isfinite(values)):
            column[i] = _NONFINITE.get(column[i], "nan")
        for i in np.flatnonzero(~present):
            column[i] = None  # left out of the row
        columns[name] = column
    return separator.join(map(orjson.dumps, rows(columns)))


async def stream_rows(
    store: AsyncStore,
    run: str,
    stream: str,
    keys: list[str],
    *,
    require_all: bool,
    min_step: int | None,
    max_step: int | None,
    ndjson: bool,
) -> AsyncIterator[bytes | memoryview]:
    """The rows as an Arrow IPC stream (or NDJSON), chunk by chunk. The Arrow
    stream starts with its schema, so an empty range is still a valid stream."""
    pages = row_pages(
        store, run, stream, keys, require_all=require_all, min_step=min_step, max_step=max_step
    )
    if ndjson:
        async for cols in pages:
            yield json_rows(cols, keys, b"\n") + b"\n"
        return
    # An IPC stream is its schema's message, a message per batch and an end marker;
    # serialized by Arrow straight into buffers (no Python file in between).
    schema = row_schema(keys)
    yield schema.serialize().to_pybytes()
    async for cols in pages:
        for batch in arrow_table(cols, schema).to_batches():
            yield memoryview(batch.serialize())
    yield _END_OF_STREAM
