"""Full history, page by page: keyset pagination on ``step``, never OFFSET.

A page covers steps ``[lo, bound]``. ``lo`` is one past the previous page's
last step (or ``min_step``). ``bound`` is the smallest, over the requested
keys, of each key's ``page_size``-th step from ``lo`` (found with
``LIMIT n BY key``, reading at most ``page_size`` rows per key), so a page
never needs more than ``page_size`` rows of any key. Points are
deduplicated with ``argMax(value, ver)``, so a page never holds a step twice,
and consecutive pages neither overlap nor leave a gap. Points written while a
scan runs appear on later pages if their step is past the cursor.
"""

from __future__ import annotations

import numpy as np

from store import DATABASE, AsyncStore
from store.params import string_array

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
    params = {"run": run, "stream": stream, "keys": string_array(keys), "lo": lo, "hi": hi}
    where = (
        "run = {run:String} AND stream = {stream:String} AND key IN {keys:Array(String)} "
        "AND step BETWEEN {lo:Int64} AND {hi:Int64}"
    )
    bounds = await store.query_arrow(
        "SELECT key, max(step) AS last, count() AS n FROM ("
        f"SELECT key, step FROM {DATABASE}.points WHERE {where} "
        "ORDER BY key, step LIMIT {n:UInt32} BY key) GROUP BY key",
        {**params, "n": page_size},
    )
    counts = bounds.column("n").to_numpy()
    lasts = bounds.column("last").to_numpy()
    if not len(counts) or (require_all and len(counts) < len(keys)):
        return Columns.empty(), None  # some required key has no more points: done
    full = counts >= page_size
    bound = int(lasts[full].min()) if full.any() else hi
    more = bool(full.any()) and bound < hi
    table = await store.query_arrow(
        "SELECT step, key, argMax(value, ver) AS value "
        f"FROM {DATABASE}.points WHERE {where} GROUP BY step, key ORDER BY step",
        {**params, "hi": bound},
    )
    cols = pivot(table, keys)
    if require_all and len(cols):
        cols = cols.take(np.flatnonzero(np.logical_and.reduce(list(cols.present.values()))))
    if len(cols) > page_size:  # the union of several keys' steps can exceed one key's page
        cols = cols.take(np.arange(page_size))
        return cols, int(cols.steps[-1]) + 1
    return cols, (bound + 1 if more else None)
