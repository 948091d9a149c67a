"""Sampled history: deterministic, bounded, first and last point always kept.

Within ``[min_step, max_step]`` the steps span ``[lo, hi]``. When the range
holds at most ``samples`` points, every row is returned. Otherwise the range
is cut into equal buckets; each key keeps its first point in each bucket and
its point at ``hi``, and buckets merge in pairs until the rows fit in
``samples``. With ``envelope`` every kept point also carries the min and max
of its key over its bucket, so a spike between samples still shows. The same
data always gives the same buckets, so the same answer.

Where the data comes from, so that a 10M-point series answers in
milliseconds:

* the count and ``lo``/``hi`` come from ``points_rollup`` (per 256-step
  bucket aggregates kept by a materialized view);
* buckets at least as wide as a rollup bucket are built from rollup rows,
  with the grid aligned to rollup buckets; only the partial rollup buckets at
  the edges of an explicit step range are read from raw points;
* narrower buckets, and unsampled answers, read raw points.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from store import DATABASE, AsyncStore
from store.params import string_array
from store.schema import BUCKET_SQL, FIRST_SQL, LAST_SQL, ROLLUP_STEPS, VMAX_SQL, VMIN_SQL

from ._columns import Columns, pivot

_EXTRA = ("_runtime", "_timestamp")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SERIES = "run = {run:String} AND stream = {stream:String} AND key IN {keys:Array(String)}"
_RANGE = "step BETWEEN {lo:Int64} AND {hi:Int64}"


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
    lo = _INT64_MIN if min_step is None else min_step
    hi = _INT64_MAX if max_step is None else max_step
    params: dict[str, Any] = {"run": run, "stream": stream, "keys": string_array(keys)}
    per_bucket = _per_rollup_bucket(lo, hi, params)
    stats = await store.query_arrow(
        f"SELECT min(f.1) AS lo, max(l.1) AS hi, sum(n) AS n FROM ({per_bucket})", params
    )
    n = stats.column("n")[0].as_py()
    if not n:
        return Columns.empty()
    lo, hi = stats.column("lo")[0].as_py(), stats.column("hi")[0].as_py()
    params.update(lo=lo, hi=hi)

    if n <= samples:
        cols = pivot(await _all_points(store, params), keys, _EXTRA)
        if envelope:
            _envelope_of_single_points(cols, keys)
        return cols

    width = max(1, math.ceil((hi - lo + 1) / max(1, samples - 1)))
    if width < ROLLUP_STEPS:
        source = (
            f"SELECT key, intDiv(step - {{lo:Int64}}, {width}) AS sb, count() AS n, "
            f"{VMIN_SQL} AS vmin, {VMAX_SQL} AS vmax, {FIRST_SQL} AS f, {LAST_SQL} AS l "
            f"FROM {DATABASE}.points WHERE {_SERIES} AND {_RANGE} GROUP BY key, sb"
        )
    else:
        span = math.ceil(width / ROLLUP_STEPS)  # rollup buckets per sample bucket
        first_bucket = lo // ROLLUP_STEPS
        source = (
            f"SELECT key, intDiv(bucket - {first_bucket}, {span}) AS sb, sum(n) AS n, "
            "min(vmin) AS vmin, max(vmax) AS vmax, argMin(f, f.1) AS f, argMax(l, l.1) AS l "
            f"FROM ({_per_rollup_bucket(lo, hi, params)}) GROUP BY key, sb"
        )
    buckets = await store.query_arrow(
        "SELECT key, sb, vmin, vmax, f.1 AS f_step, f.2 AS f_value, f.3 AS f_time, "
        "f.4 AS f_ts, l.1 AS l_step, l.2 AS l_value, l.3 AS l_time, l.4 AS l_ts "
        f"FROM ({source})",
        params,
    )
    return _sample(buckets, keys, samples, hi, envelope)


def _per_rollup_bucket(lo: int, hi: int, params: dict[str, Any]) -> str:
    """SQL: one summary row per (key, rollup bucket) of the points in ``[lo, hi]``.

    Buckets entirely inside the range come from ``points_rollup``; the (at most
    two) buckets the range cuts are summarised from raw points.
    """
    first_full = -(-lo // ROLLUP_STEPS)  # ceil: the first bucket starting at or after lo
    last_full = (hi + 1) // ROLLUP_STEPS - 1  # the last bucket ending at or before hi
    params.update(
        edge_lo=lo,
        edge_hi=hi,
        full_lo=first_full,
        full_hi=last_full,
        inner_lo=max(_INT64_MIN, first_full * ROLLUP_STEPS),
        inner_hi=min(_INT64_MAX, (last_full + 1) * ROLLUP_STEPS - 1),
    )
    return (
        "SELECT key, bucket, sum(n) AS n, min(vmin) AS vmin, max(vmax) AS vmax, "
        "argMinMerge(first) AS f, argMaxMerge(last) AS l "
        f"FROM {DATABASE}.points_rollup WHERE {_SERIES} "
        "AND bucket BETWEEN {full_lo:Int64} AND {full_hi:Int64} GROUP BY key, bucket "
        "UNION ALL "
        f"SELECT key, {BUCKET_SQL} AS bucket, count() AS n, {VMIN_SQL} AS vmin, "
        f"{VMAX_SQL} AS vmax, {FIRST_SQL} AS f, {LAST_SQL} AS l "
        f"FROM {DATABASE}.points WHERE {_SERIES} "
        "AND step BETWEEN {edge_lo:Int64} AND {edge_hi:Int64} "
        "AND (step < {inner_lo:Int64} OR step > {inner_hi:Int64}) GROUP BY key, bucket"
    )


async def _all_points(store: AsyncStore, params: dict[str, Any]) -> pa.Table:
    return await store.query_arrow(
        "SELECT key, step, value, time AS _runtime, timestamp AS _timestamp "
        f"FROM {DATABASE}.points FINAL WHERE {_SERIES} AND {_RANGE} ORDER BY key, step",
        params,
    )


def _sample(buckets: pa.Table, keys: list[str], samples: int, hi: int, envelope: bool) -> Columns:
    """Per key, the first point of each bucket plus the point at ``hi``; merge
    neighbouring buckets until the union of steps fits in ``samples``."""
    cols = {name: buckets.column(name).to_numpy() for name in buckets.column_names if name != "key"}
    key_all = np.array(buckets.column("key").to_pylist(), dtype=object)
    per_key = {}
    for key in keys:
        mask = key_all == key
        order = np.argsort(cols["sb"][mask], kind="stable")
        per_key[key] = {name: col[mask][order] for name, col in cols.items()}
    shift = 0
    while True:
        chosen = {key: _coarsen(series, shift) for key, series in per_key.items()}
        steps = np.unique(np.concatenate([c["step"] for c in chosen.values()] + [[hi]]))
        if len(steps) <= samples or shift > 62:
            break
        shift += 1
    return _to_columns(chosen, per_key, keys, steps, hi, envelope)


def _coarsen(series: dict[str, np.ndarray], shift: int) -> dict[str, np.ndarray]:
    """Merge buckets ``sb >> shift``: keep each merged bucket's first point."""
    sb = series["sb"] >> shift
    if not len(sb):
        return {"step": np.empty(0, np.int64), **{k: np.empty(0) for k in _POINT_FIELDS}}
    starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
    # Within a merged bucket the first point is the one with the smallest step.
    first_rows = [s + int(np.argmin(series["f_step"][s:e])) for s, e in _spans(starts, len(sb))]
    picked = {name: series[f"f_{name}"][first_rows] for name in _POINT_FIELDS}
    return {
        "step": series["f_step"][first_rows],
        **picked,
        "vmin": np.minimum.reduceat(series["vmin"], starts),
        "vmax": np.maximum.reduceat(series["vmax"], starts),
    }


_POINT_FIELDS = ("value", "time", "ts")


def _spans(starts: np.ndarray, length: int) -> list[tuple[int, int]]:
    ends = [*starts[1:].tolist(), length]
    return list(zip(starts.tolist(), ends, strict=True))


def _to_columns(
    chosen: dict[str, dict[str, np.ndarray]],
    per_key: dict[str, dict[str, np.ndarray]],
    keys: list[str],
    steps: np.ndarray,
    hi: int,
    envelope: bool,
) -> Columns:
    n = len(steps)
    out = Columns(steps, {}, {})
    runtime, stamp, have_time = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool)
    for key in keys:
        picked, series = chosen[key], per_key[key]
        values, present = np.full(n, np.nan), np.zeros(n, bool)
        rows = np.searchsorted(steps, picked["step"])
        values[rows], present[rows] = picked["value"], True
        fill = rows[~have_time[rows]]
        runtime[fill] = picked["time"][~have_time[rows]]
        stamp[fill] = picked["ts"][~have_time[rows]]
        have_time[fill] = True
        if len(series["l_step"]) and series["l_step"][-1] == hi:  # this key has the last point
            last = n - 1
            values[last], present[last] = series["l_value"][-1], True
            if not have_time[last]:
                runtime[last], stamp[last] = series["l_time"][-1], series["l_ts"][-1]
                have_time[last] = True
        out.values[key], out.present[key] = values, present
        if envelope:
            low, high = np.full(n, np.nan), np.full(n, np.nan)
            finite = picked["vmin"] <= picked["vmax"]  # false when a bucket held only NaN
            low[rows[finite]], high[rows[finite]] = picked["vmin"][finite], picked["vmax"][finite]
            has = np.zeros(n, bool)
            has[rows[finite]] = True
            out.values[f"min({key})"], out.values[f"max({key})"] = low, high
            out.present[f"min({key})"] = out.present[f"max({key})"] = has
    out.values["_runtime"], out.values["_timestamp"] = runtime, stamp
    out.present["_runtime"] = out.present["_timestamp"] = have_time
    return out


def _envelope_of_single_points(cols: Columns, keys: list[str]) -> None:
    """Unsampled rows: each point is its own bucket, so min = max = value."""
    for key in keys:
        cols.values[f"min({key})"] = cols.values[key]
        cols.values[f"max({key})"] = cols.values[key]
        cols.present[f"min({key})"] = cols.present[f"max({key})"] = cols.present[key]
