"""Full history, page by page: keyset pagination on ``step``, never OFFSET.

Reads are always deduplicated by version (``FINAL``), so a step never
appears twice, and always bounded, so a page costs the same at the start and
at the end of a 10M-point run. ``lo`` is one past the previous page's last
step (or ``min_step``); the page ends at ``bound``, and every key's rows up
to ``bound`` are in the page, so consecutive pages neither overlap nor leave
a gap:

* one key: ``ORDER BY step LIMIT page_size`` from ``lo`` reads the index in
  order and stops; ``bound`` is the last step read;
* several keys: ``bound`` comes from the point counts in ``points_rollup``
  (:func:`_page_bound`), then one range read covers every key up to it.

Rows carry ``_runtime`` and ``_timestamp`` beside ``_step`` and the keys.
Pages can hold fewer than ``page_size`` rows, even none, before the end;
``next`` is ``None`` only when the scan is complete. Points written while a
scan runs appear on later pages if their step is past the cursor.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from stride.store import AsyncStore, ParamValue
from stride.store.schema import ROLLUP_STEPS

from ._columns import Columns, one_key_rows
from ._points import ONE_THREAD, RUN_KEYS, RUN_STREAM, read_rows

_INT64_MAX = 2**63 - 1
#: One key: its name is known, and leaving the column out reads ~10% faster.
_ONE_KEY_COLUMNS = "step, value, time AS _runtime, timestamp AS _timestamp"
_ONE_KEY = f"{RUN_STREAM} AND key = {{key:String}}"


async def scan_page(
    store: AsyncStore,
    run: str,
    stream: str,
    keys: list[str],
    *,
    require_all: bool,
    page_size: int,
    lo: int,
    max_step: int | None,
) -> tuple[Columns, int | None]:
    """One page and the cursor for the next (``None`` when the scan is complete).

    With ``require_all`` only rows that have every key are returned (the W&B
    meaning of ``scan_history(keys=...)``); otherwise rows carry whatever keys
    were logged at that step.
    """
    hi = _INT64_MAX if max_step is None else max_step
    params: dict[str, ParamValue] = {
        "run": run,
        "stream": stream,
        "lo": lo,
        "hi": hi,
        "n": page_size,
    }
    if len(keys) == 1:
        # With the key fixed, ORDER BY step LIMIT n reads the index in order and stops.
        params["key"] = keys[0]
        table = await store.query_arrow(
            f"SELECT {_ONE_KEY_COLUMNS} FROM points FINAL WHERE {_ONE_KEY} "
            "AND step BETWEEN {lo:Int64} AND {hi:Int64} ORDER BY step LIMIT {n:UInt32} "
            f"SETTINGS {ONE_THREAD}",
            params,
        )
        if table.num_rows == 0:
            return Columns.empty(), None
        full = table.num_rows >= page_size
        bound = int(table.column("step")[-1].as_py()) if full else hi
        cols = one_key_rows(table, keys[0])
    else:
        params["keys"] = sorted(keys)
        found = await _page_bound(store, params, keys, page_size, lo, hi, require_all)
        if found is None:
            return Columns.empty(), None
        bound = found
        where = f"{RUN_STREAM} AND step BETWEEN {{lo:Int64}} AND {{bound:Int64}}"
        cols = await read_rows(store, where, {**params, "bound": bound}, keys)
    more = bound < hi
    if require_all and len(cols):
        cols = cols.take(np.flatnonzero(np.logical_and.reduce([cols.present[k] for k in keys])))
    if len(cols) > page_size:  # the union of several keys' steps can exceed one key's page
        cols = cols.take(np.arange(page_size))
        return cols, int(cols.steps[-1]) + 1
    return cols, (bound + 1 if more else None)


async def _page_bound(
    store: AsyncStore,
    params: dict[str, ParamValue],
    keys: list[str],
    page_size: int,
    lo: int,
    hi: int,
    require_all: bool,
) -> int | None:
    """Where a multi-key page ends, from the rollup's point counts (``None``: done).

    Looks at the next ``page_size`` rollup buckets only, so the cost is bounded
    wherever the scan is: the page ends where the first key reaches
    ``page_size`` points (counts include re-logged duplicates, which can only
    make a page shorter), or at the end of that window. A key logged at every
    step reaches them within the first ``page_size / 256 + 1`` buckets: those
    are counted first, and the whole window only when no key does (a read-ahead
    chunk of 80k rows of a 2M-step run: 27 -> 7 ms).
    """
    first = lo // ROLLUP_STEPS
    dense = -(-page_size // ROLLUP_STEPS) + 1
    if dense < page_size:
        counts = await _counts(store, params, first, first + dense - 1)
        codes = _key_codes(counts)
        reach = _reach(counts, codes, page_size)
        if reach is not None and (not require_all or len(np.unique(codes)) == len(keys)):
            return max(lo, min(reach, hi))
    window = {"b_lo": first, "b_hi": first + page_size - 1}
    counts = await _counts(store, params, window["b_lo"], window["b_hi"])
    if counts.num_rows == 0:  # a gap in the steps: jump to the next bucket with data
        nxt = await store.query_arrow(
            f"SELECT min(bucket) AS b, count() AS c FROM points_rollup WHERE {RUN_KEYS} "
            "AND bucket > {b_hi:Int64}",
            {**params, **window},
        )
        if not nxt.column("c")[0].as_py():
            return None
        window["b_lo"] = int(nxt.column("b")[0].as_py())
        window["b_hi"] = window["b_lo"] + page_size - 1
        counts = await _counts(store, params, window["b_lo"], window["b_hi"])
    codes = _key_codes(counts)
    if require_all and len(np.unique(codes)) < len(keys):
        # A required key has no points in the window: no row can have them all.
        # Skip the window, unless the key has no points left at all.
        rest = await store.query_arrow(
            f"SELECT uniqExact(key) AS k FROM points_rollup WHERE {RUN_KEYS} "
            "AND bucket >= {b_lo:Int64}",
            {**params, **window},
        )
        if rest.column("k")[0].as_py() < len(keys):
            return None
    bound = (window["b_hi"] + 1) * ROLLUP_STEPS - 1
    reach = _reach(counts, codes, page_size)
    if reach is not None:
        bound = min(bound, reach)
    return max(lo, min(bound, hi))


async def _counts(
    store: AsyncStore, params: dict[str, ParamValue], b_lo: int, b_hi: int
) -> pa.Table:
    """Each key's point count per rollup bucket from ``b_lo`` to ``b_hi``, by key then bucket."""
    return await store.query_arrow(
        f"SELECT key, bucket, sum(n) AS n FROM points_rollup WHERE {RUN_KEYS} "
        "AND bucket BETWEEN {b_lo:Int64} AND {b_hi:Int64} "
        "GROUP BY key, bucket ORDER BY key, bucket",
        {**params, "b_lo": b_lo, "b_hi": b_hi},
    )


def _key_codes(counts: pa.Table) -> np.ndarray:
    return counts.column("key").combine_chunks().dictionary_encode().indices.to_numpy()


def _reach(counts: pa.Table, codes: np.ndarray, page_size: int) -> int | None:
    """The last step of the bucket where the first key reaches ``page_size``
    points in ``counts`` (``None``: no key does)."""
    buckets = counts.column("bucket").to_numpy()
    n = counts.column("n").to_numpy()
    reach: int | None = None
    for group in np.split(np.arange(len(codes)), np.flatnonzero(np.diff(codes)) + 1):
        reached = np.flatnonzero(np.cumsum(n[group]) >= page_size)
        if len(reached):
            end = (int(buckets[group][reached[0]]) + 1) * ROLLUP_STEPS - 1
            reach = end if reach is None else min(reach, end)
    return reach
