"""Sampled history: deterministic, bounded, first and last point always kept.

Within ``[min_step, max_step]`` the steps span ``[lo, hi]``. When there are at
most ``samples`` points, every row is returned. Otherwise the range is cut into
buckets of equal width ``w`` (``bucket = (step - lo) // w``); each key keeps
its first point in each bucket, the row at ``hi`` is added, and ``w`` doubles
(merging pairs of buckets, no new query) until the rows fit in ``samples``.
The same data always gives the same buckets, so the same answer. With
``envelope`` every kept point also carries the min and max of its key over
its bucket, so a spike between samples still shows.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from store import DATABASE, AsyncStore
from store.params import int_array, string_array

from ._columns import Columns, pivot

_EXTRA = ("_runtime", "_timestamp")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_WHERE = (
    "run = {run:String} AND stream = {stream:String} AND key IN {keys:Array(String)} "
    "AND step BETWEEN {lo:Int64} AND {hi:Int64}"
)


async def history(
    store: AsyncStore,
    run: str,
    stream: str,
    keys: list[str],
    *,
    samples: int,
    min_step: int | None,
    max_step: int | None,
    envelope: bool,
) -> Columns:
    params = {
        "run": run,
        "stream": stream,
        "keys": string_array(keys),
        "lo": _INT64_MIN if min_step is None else min_step,
        "hi": _INT64_MAX if max_step is None else max_step,
    }
    stats = await store.query_arrow(
        f"SELECT min(step) AS lo, max(step) AS hi, count() AS n FROM {DATABASE}.points "
        f"WHERE {_WHERE}",
        params,
    )
    n = stats.column("n")[0].as_py()
    if not n:
        return Columns.empty()
    lo, hi = stats.column("lo")[0].as_py(), stats.column("hi")[0].as_py()
    params.update(lo=lo, hi=hi)
    if n <= samples:
        cols = pivot(await _points(store, params, None), keys, _EXTRA)
        if envelope:
            _add_envelope_from_values(cols, keys)
        return cols

    width = max(1, math.ceil((hi - lo + 1) / max(1, samples - 1)))
    buckets = await store.query_arrow(
        "SELECT intDiv(step - {lo:Int64}, {w:Int64}) AS b, key, min(step) AS first, "
        "min(value) AS low, max(value) AS high "
        f"FROM {DATABASE}.points FINAL WHERE {_WHERE} GROUP BY b, key",
        {**params, "w": width},
    )
    chosen = _choose(buckets, keys, samples, hi)
    cols = pivot(await _points(store, params, chosen.steps), keys, _EXTRA)
    if envelope:
        for key in keys:
            low = np.full(len(cols), np.nan)
            high = np.full(len(cols), np.nan)
            rows = np.searchsorted(cols.steps, chosen.first[key])
            low[rows], high[rows] = chosen.low[key], chosen.high[key]
            cols.values[f"min({key})"], cols.values[f"max({key})"] = low, high
            has = np.zeros(len(cols), bool)
            has[rows] = True
            cols.present[f"min({key})"] = cols.present[f"max({key})"] = has
    return cols


class _Chosen:
    def __init__(self) -> None:
        self.steps = np.empty(0, np.int64)
        self.first: dict[str, np.ndarray] = {}
        self.low: dict[str, np.ndarray] = {}
        self.high: dict[str, np.ndarray] = {}


def _choose(buckets: pa.Table, keys: list[str], samples: int, hi: int) -> _Chosen:
    """Per key, the first step of each bucket; coarsen until the union fits."""
    b_all = buckets.column("b").to_numpy()
    key_all = np.array(buckets.column("key").to_pylist(), dtype=object)
    first_all = buckets.column("first").to_numpy()
    low_all = buckets.column("low").to_numpy()
    high_all = buckets.column("high").to_numpy()
    shift = 0
    while True:
        chosen = _Chosen()
        for key in keys:
            mask = key_all == key
            b = b_all[mask] >> shift
            order = np.lexsort((first_all[mask], b))
            b, first = b[order], first_all[mask][order]
            low, high = low_all[mask][order], high_all[mask][order]
            starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]]) if len(b) else np.empty(0, int)
            chosen.first[key] = first[starts]
            chosen.low[key] = np.minimum.reduceat(low, starts) if len(b) else low
            chosen.high[key] = np.maximum.reduceat(high, starts) if len(b) else high
        steps = np.unique(np.concatenate([*chosen.first.values(), np.array([hi], np.int64)]))
        if len(steps) <= samples or shift > 62:
            chosen.steps = steps
            return chosen
        shift += 1


async def _points(
    store: AsyncStore, params: dict[str, object], steps: np.ndarray | None
) -> pa.Table:
    only = "" if steps is None else " AND step IN {steps:Array(Int64)}"
    extra = {} if steps is None else {"steps": int_array(steps.tolist())}
    return await store.query_arrow(
        "SELECT step, key, argMax(value, ver) AS value, argMax(time, ver) AS _runtime, "
        "argMax(timestamp, ver) AS _timestamp "
        f"FROM {DATABASE}.points WHERE {_WHERE}{only} GROUP BY step, key ORDER BY step",
        {**params, **extra},
    )


def _add_envelope_from_values(cols: Columns, keys: list[str]) -> None:
    """Unsampled rows: each point is its own bucket, so min = max = value."""
    for key in keys:
        cols.values[f"min({key})"] = cols.values[key]
        cols.values[f"max({key})"] = cols.values[key]
        cols.present[f"min({key})"] = cols.present[f"max({key})"] = cols.present[key]
