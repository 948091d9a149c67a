"""Full history, page by page: keyset pagination on ``step``, never OFFSET.

One query per page: for each key, ``FINAL`` (deduplicated by version, so a
step never appears twice) ``ORDER BY step LIMIT page_size`` from ``lo``,
which reads the index in order and stops after ``page_size`` rows, so a page
costs the same at the start and at the end of a 10M-point run.
``lo`` is one past the previous page's last step (or ``min_step``). The page
ends at ``bound``, the smallest last step among keys that filled their
``page_size`` rows: below it every key's rows are complete, so consecutive
pages neither overlap nor leave a gap. Points written while a
scan runs appear on later pages if their step is past the cursor.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store import DATABASE, AsyncStore

from ._columns import Columns, pivot

_INT64_MAX = 2**63 - 1


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
    params: dict[str, object] = {"run": run, "stream": stream, "lo": lo, "hi": hi, "n": page_size}
    # One subquery per key: with the key fixed, "ORDER BY step LIMIT n" reads the
    # index in order and stops after n rows. (LIMIT n BY key over all keys at once
    # reads every remaining row: a page cost grew with the run, a scan quadratically.)
    subqueries = []
    for i, key in enumerate(keys):
        params[f"k{i}"] = key
        subqueries.append(
            f"SELECT key, step, value FROM {DATABASE}.points FINAL "
            f"WHERE run = {{run:String}} AND stream = {{stream:String}} AND key = {{k{i}:String}} "
            "AND step BETWEEN {lo:Int64} AND {hi:Int64} ORDER BY step LIMIT {n:UInt32}"
        )
    table = await store.query_arrow(
        f"SELECT key, step, value FROM ({' UNION ALL '.join(subqueries)}) ORDER BY key, step",
        params,
    )
    if table.num_rows == 0:
        return Columns.empty(), None
    key_codes = table.column("key").combine_chunks().dictionary_encode().indices.to_numpy()
    steps = table.column("step").to_numpy()
    # Rows come grouped by key, each group ascending: a full group bounds the page.
    ends = np.flatnonzero(np.r_[key_codes[1:] != key_codes[:-1], True])
    starts = np.r_[0, ends[:-1] + 1]
    counts = ends - starts + 1
    full = counts >= page_size
    if require_all and len(ends) < len(keys):
        return Columns.empty(), None  # some required key has no more points: done
    bound = int(steps[ends[full]].min()) if full.any() else hi
    more = bool(full.any()) and bound < hi
    if more:
        table = table.filter(pc.less_equal(table.column("step"), pa.scalar(bound, pa.int64())))
    cols = pivot(table, keys)
    if require_all and len(cols):
        cols = cols.take(np.flatnonzero(np.logical_and.reduce(list(cols.present.values()))))
    if len(cols) > page_size:  # the union of several keys' steps can exceed one key's page
        cols = cols.take(np.arange(page_size))
        return cols, int(cols.steps[-1]) + 1
    return cols, (bound + 1 if more else None)
