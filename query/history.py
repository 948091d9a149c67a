"""Sampled history: deterministic, bounded, first and last point always kept.

Within ``[min_step, max_step]`` the steps span ``[lo, hi]``. When the range
holds at most ``samples`` points, every row is returned. Otherwise the range
is cut into buckets; each key keeps its first point in each bucket and its
point at ``hi``, and neighbouring buckets merge in pairs until the rows fit in
``samples``. With ``envelope`` every kept point also carries the min and max
of its key over its bucket, so a spike between samples still shows. The same
data always gives the same buckets, so the same answer.

Where the data comes from, so that a 10M-point series answers in
milliseconds:

* the count and ``lo``/``hi`` come from the rollups: ``points_rollup_wide``
  (4096-step buckets) for the wide buckets the range holds whole,
  ``points_rollup`` (256-step buckets) for the whole buckets beside them, and
  raw points in the partial buckets an explicit range cuts;
* wide sample buckets are unions of whole rollup buckets, so their first
  point, last point and envelope are a ``min``/``max`` over rollup rows: over
  wide rollup rows when a sample bucket spans at least 8 of them (the grid
  then snaps to them: a bucket at most 1/8 wider), else over 256-step rows.
  The parts of an explicit range that no whole bucket of the level covers are
  buckets of their own at each end (read from the finer rollup, then raw);
* narrow sample buckets (under a rollup bucket wide) and unsampled answers
  read raw points.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from stride.store import AsyncStore
from stride.store.schema import ROLLUP_MERGE, ROLLUP_STEPS, WIDE_STEPS, rollup_aggregates

from ._columns import Columns
from ._points import RUN_KEYS, RUN_STREAM, read_rows

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_RANGE = "step BETWEEN {lo:Int64} AND {hi:Int64}"
_EDGES = f"{_RANGE} AND (step < {{in_lo:Int64}} OR step > {{in_hi:Int64}})"
_INTERIOR = "bucket BETWEEN {b_lo:Int64} AND {b_hi:Int64}"
_WIDE_INTERIOR = "bucket BETWEEN {w_lo:Int64} AND {w_hi:Int64}"
#: The whole rollup buckets beside the whole wide ones (below, above).
_BESIDE_WIDE = (
    "(bucket BETWEEN {b_lo:Int64} AND {r_lo:Int64} OR bucket BETWEEN {r_hi:Int64} AND {b_hi:Int64})"
)
#: Sample buckets of at least this many wide buckets are read from the wide level.
_WIDE_SPAN = 8


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
    params, edges = _range(run, stream, keys, min_step, max_step)
    extent = await _extent(store, params, edges)
    if extent is None:
        return Columns.empty()
    lo, hi, n = extent
    if n <= samples:  # within the steps counted: points written since cannot add rows
        return await _every_point(store, {**params, "lo": lo, "hi": hi}, keys, envelope)

    # The sample grid starts at the first point; the requested range still decides
    # which rollup buckets are whole and which edges are read raw.
    width = max(1, math.ceil((hi - lo + 1) / max(1, samples - 1)))
    params.update(origin=lo, origin_bucket=lo // ROLLUP_STEPS, origin_wide=lo // WIDE_STEPS)
    if width < ROLLUP_STEPS:
        series = _by_key(await _raw_buckets(store, params, width), keys, edge=False)
    elif width >= _WIDE_SPAN * WIDE_STEPS:
        series = await _wide_buckets(store, params, keys, width, edges or _beside_wide(params))
    else:
        series = await _rollup_buckets(store, params, keys, width, edges)
    return _sampled(series, keys, samples, hi, envelope)


#: The column of each time axis: ``time`` is the run time the SDK logs as ``_runtime``.
TIME_AXIS_COLUMNS = {"_runtime": "time", "_timestamp": "timestamp"}


async def history_over_time(
    store: AsyncStore,
    run: str,
    stream: str,
    keys: list[str],
    *,
    axis: str,
    samples: int,
    min_step: int | None,
    max_step: int | None,
    envelope: bool,
) -> Columns:
    """History sampled along ``_runtime`` or ``_timestamp``: buckets of equal time
    instead of equal steps, so a pause, or a stretch logged faster or slower, gets
    its share of the rows by time. The same rules otherwise: within the step range,
    each key keeps its first point (smallest step) in each bucket and its last point;
    neighbouring buckets merge in pairs until the rows fit in ``samples``.

    Bucket ``floor((t - t0) / ((t1 - t0) / (samples - 1)))``, with ``t0``/``t1`` the
    least and greatest time placed on the axis. Where the answer is sampled finely
    (under a rollup bucket, 256 steps, of steps per sample on average), every
    point is placed by its own time; points whose time is NaN or infinite are left
    out. Over longer ranges, the same rollup rows as step history are placed
    instead (of 256 steps, or 4,096 where a sample spans 8 of those), each by the
    time of its first point, and the raw points of the range's cut buckets each by
    its own: the answer then costs about what step history does, not a read of
    every point. A rollup row whose first or last point has no finite time is
    read point by point instead (more than :data:`_MAX_REREAD` such rows: the
    whole range is); points without a finite time inside a row still count in its
    envelope. As in step history, re-logged points count twice in deciding whether
    a range holds more points than ``samples``.
    """
    column = TIME_AXIS_COLUMNS[axis]
    params, edges = _range(run, stream, keys, min_step, max_step)
    extent = await _extent(store, params, edges)
    if extent is None:
        return Columns.empty()
    lo, hi, n = extent
    width = math.ceil((hi - lo + 1) / max(1, samples - 1))
    if n > samples and width >= ROLLUP_STEPS:
        wide = width >= _WIDE_SPAN * WIDE_STEPS
        rows = await _rows_over_time(store, params, column, wide, edges)
        if rows is not None:  # else too many rows with a time that is not finite: below
            return _sampled_over_time(rows, keys, column, samples, envelope)
    # A point whose time is not finite has no place on the axis: left out.
    where = f"{RUN_KEYS} AND {_RANGE} AND isFinite({column})"
    stats = await store.query_arrow(
        f"SELECT count() AS n, max(step) AS hi, min({column}) AS t0, max({column}) AS t1 "
        f"FROM points FINAL WHERE {where}",
        params,
    )
    n = stats.column("n")[0].as_py()
    if not n:
        return Columns.empty()
    # Points written from now on are past the range read (no row without values).
    params["hi"] = hi = stats.column("hi")[0].as_py()
    if n <= samples:
        return await _every_point(store, params, keys, envelope, f"isFinite({column})")
    params.update(t0=stats.column("t0")[0].as_py(), t1=stats.column("t1")[0].as_py(), k=samples - 1)
    # Halves, so that t1 - t0 cannot overflow (the same buckets: halving is exact).
    half = f"({column} / 2 - {{t0:Float64}} / 2)"
    span = "(({t1:Float64} / 2 - {t0:Float64} / 2) / {k:UInt32})"
    bucket = f"if({{t1:Float64}} = {{t0:Float64}}, 0, toInt64(floor({half} / {span})))"
    table = await store.query_arrow(
        f"SELECT key, {bucket} AS sb, {rollup_aggregates()} "
        f"FROM points FINAL WHERE {where} GROUP BY key, sb",
        params,
    )
    return _sampled(_by_key(table, keys, edge=False), keys, samples, hi, envelope)


#: A raw point as a one-point rollup row (the columns of :data:`ROLLUP_MERGE`).
_POINT_AS_ROW = (
    "toUInt64(1) AS n, step AS smin, step AS smax, if(isNaN(value), inf, value) AS vmin, "
    "if(isNaN(value), -inf, value) AS vmax, value AS fv, time AS ft, timestamp AS fs, "
    "value AS lv, time AS lt, timestamp AS ls"
)
#: Each time axis's value at a rollup row's first and last point.
_TIME_AT = {"time": ("ft", "lt"), "timestamp": ("fs", "ls")}
#: Rollup rows read again point by point, at most, when an end point's time is not
#: finite; with more, the whole range is read point by point.
_MAX_REREAD = 64
#: The columns of a row over time.
_ROW_FIELDS = ("n", "smin", "smax", "vmin", "vmax", "fv", "ft", "fs", "lv", "lt", "ls")
#: Rows to place on the time axis: their ``key`` and the columns of :data:`_ROW_FIELDS`.
_Rows = dict[str, np.ndarray]


async def _rows_over_time(
    store: AsyncStore, params: dict[str, Any], column: str, wide: bool, edges: bool
) -> _Rows | None:
    """The rows to place on the time axis: rollup rows (wide ones with ``wide``,
    and the rollup rows beside them) and the raw points of the range's cut
    buckets. A row whose first or last point has no finite time is read again
    point by point (its points with a finite time each become a row); ``None``
    if there are more than :data:`_MAX_REREAD` of them."""

    def rows(table: str, where: str) -> str:
        return (
            f"SELECT key, {ROLLUP_MERGE} FROM {table} WHERE {RUN_KEYS} AND {where} "
            "GROUP BY key, bucket"
        )

    if wide:
        parts = [rows("points_rollup_wide", _WIDE_INTERIOR)]
        if _beside_wide(params):
            parts.append(rows("points_rollup", _BESIDE_WIDE))
    else:
        parts = [rows("points_rollup", _INTERIOR)]
    if edges:
        parts.append(f"SELECT key, {_POINT_AS_ROW} FROM points FINAL WHERE {RUN_KEYS} AND {_EDGES}")
    found = _row_columns(await store.query_arrow(" UNION ALL ".join(parts), params))
    first, last = (found[name] for name in _TIME_AT[column])
    placed = np.isfinite(first) & np.isfinite(last)
    # A single point without a finite time has no place; a row of several is read again.
    again = np.flatnonzero(~placed & (found["smin"] != found["smax"]))
    if len(again) > _MAX_REREAD:
        return None
    kept = {name: col[placed] for name, col in found.items()}
    if not len(again):
        return kept
    ranges, more = [], dict(params)
    for i, row in enumerate(again):
        more.update({f"k{i}": str(found["key"][row]), f"a{i}": int(found["smin"][row])})
        more[f"b{i}"] = int(found["smax"][row])
        ranges.append(f"(key = {{k{i}:String}} AND step BETWEEN {{a{i}:Int64}} AND {{b{i}:Int64}})")
    points = await store.query_arrow(
        f"SELECT key, {_POINT_AS_ROW} FROM points FINAL WHERE {RUN_STREAM} "
        f"AND ({' OR '.join(ranges)}) AND isFinite({column})",
        more,
    )
    reread = _row_columns(points)
    return {name: np.concatenate([col, reread[name]]) for name, col in kept.items()}


def _row_columns(table: pa.Table) -> _Rows:
    names = np.array(table.column("key").to_pylist(), dtype=object)
    return {"key": names} | {name: table.column(name).to_numpy() for name in _ROW_FIELDS}


def _sampled_over_time(
    rows: _Rows, keys: list[str], column: str, samples: int, envelope: bool
) -> Columns:
    """``rows`` in buckets of equal time, each by its first point's time, sampled;
    the answer ends at the last step placed."""
    if not len(rows["key"]):
        return Columns.empty()
    at = rows[_TIME_AT[column][0]]
    t0, t1 = float(at.min()), float(at.max())
    if t1 == t0:
        bucket = np.zeros(len(at), np.int64)
    else:  # as the SQL of the point-by-point path computes it (halves: no overflow)
        with np.errstate(invalid="ignore", divide="ignore"):
            bucket = np.floor((at / 2 - t0 / 2) / ((t1 / 2 - t0 / 2) / (samples - 1)))
            bucket = np.nan_to_num(bucket, nan=0.0, posinf=0.0, neginf=0.0).astype(np.int64)
    series = {key: _fold(rows, bucket, rows["key"] == key) for key in keys}
    return _sampled(series, keys, samples, int(rows["smax"].max()), envelope)


#: The bucket columns of a key without rows.
_EMPTY_SB = {"sb": np.zeros(0, np.int64), "edge": np.zeros(0, bool)}


def _fold(cols: dict[str, np.ndarray], bucket: np.ndarray, mine: np.ndarray) -> Series:
    """One key's rows folded per time bucket: its first row's first point, its last
    row's last point, the count and the envelope. A key's rows hold disjoint steps,
    so by ``smin`` within a bucket the first row is first and the last is last."""
    sb = bucket[mine]
    order = np.lexsort((cols["smin"][mine], sb))
    sb = sb[order]
    got = {name: cols[name][mine][order] for name in _ROW_FIELDS}
    if not len(sb):
        return {name: col[:0] for name, col in (got | _EMPTY_SB).items()}
    starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
    ends = np.r_[starts[1:], len(sb)] - 1
    return {
        "sb": sb[starts],
        "edge": np.zeros(len(starts), bool),
        "n": np.add.reduceat(got["n"], starts),
        "vmin": np.minimum.reduceat(got["vmin"], starts),
        "vmax": np.maximum.reduceat(got["vmax"], starts),
        **{name: got[name][starts] for name in ("smin", "fv", "ft", "fs")},
        **{name: got[name][ends] for name in ("smax", "lv", "lt", "ls")},
    }


def _sampled(
    series: dict[str, Series], keys: list[str], samples: int, hi: int, envelope: bool
) -> Columns:
    """The rows of bucketed ``series``: each key's kept first points and its point at
    ``hi``, the last step the range was counted to. Points written since may be in
    the buckets: the answer then ends at the newest point they hold (else a row at
    the old end would have no value)."""
    hi = max([hi, *(int(s["smax"].max()) for s in series.values() if len(s["smax"]))])
    picked = _pick(series, samples, hi)
    last = {key: _last(s, hi) for key, s in series.items()}
    return _columns(picked, last, keys, hi, envelope)


async def history_along(
    store: AsyncStore,
    run: str,
    stream: str,
    x_axis: str,
    keys: list[str],
    *,
    samples: int,
    min_step: int | None,
    max_step: int | None,
) -> Columns:
    """History with a logged key as the x axis (W&B's ``history(x_axis=...)``): the
    rows are sampled from the steps where ``x_axis`` was logged (its first and last
    point always among them, at most ``samples``), and each row carries the other
    ``keys`` as logged at that same step. So every row has an x value, and a key
    logged less often than the others still gets ``samples`` rows."""
    along = await history(
        store, run, stream, [x_axis], samples=samples, min_step=min_step, max_step=max_step,
        envelope=False,
    )  # fmt: skip
    others = [k for k in keys if k != x_axis]
    if not len(along) or not others:
        return along
    table = await store.query_arrow(
        "SELECT key, step, value FROM points FINAL WHERE run = {run:String} "
        "AND stream = {stream:String} AND key IN {keys:Array(String)} "
        "AND step IN {steps:Array(Int64)}",
        {"run": run, "stream": stream, "keys": sorted(others), "steps": along.steps.tolist()},
    )
    key_column = np.array(table.column("key").to_pylist(), dtype=object)
    steps, values = table.column("step").to_numpy(), table.column("value").to_numpy()
    for key in others:
        mask = key_column == key
        rows = np.searchsorted(along.steps, steps[mask])
        column, present = np.full(len(along), np.nan), np.zeros(len(along), bool)
        column[rows], present[rows] = values[mask], True
        along.values[key], along.present[key] = column, present
    return along


def _range(
    run: str, stream: str, keys: list[str], min_step: int | None, max_step: int | None
) -> tuple[dict[str, Any], bool]:
    """The parameters of a history's reads, and whether its range cuts rollup buckets."""
    params: dict[str, Any] = {"run": run, "stream": stream, "keys": sorted(keys)}
    edges = _set_range(
        params,
        _INT64_MIN if min_step is None else min_step,
        _INT64_MAX if max_step is None else max_step,
    )
    return params, edges


async def _extent(
    store: AsyncStore, params: dict[str, Any], edges: bool
) -> tuple[int, int, int] | None:
    """The first and last step and the point count in the range (``None``: no
    points), from the rollups (the wide level where it covers whole buckets) and
    the raw edges."""
    edge_stats = (
        f" UNION ALL SELECT step, step, 1 FROM points WHERE {RUN_KEYS} AND {_EDGES}"
        if edges
        else ""
    )
    beside = (
        f" UNION ALL SELECT smin, smax, n FROM points_rollup WHERE {RUN_KEYS} AND {_BESIDE_WIDE}"
        if _beside_wide(params)
        else ""
    )
    stats = await store.query_arrow(
        "SELECT min(smin) AS lo, max(smax) AS hi, sum(n) AS n FROM ("
        f"SELECT smin, smax, n FROM points_rollup_wide "
        f"WHERE {RUN_KEYS} AND {_WIDE_INTERIOR}{beside}{edge_stats})",
        params,
    )
    n = stats.column("n")[0].as_py()
    if not n:
        return None
    return stats.column("lo")[0].as_py(), stats.column("hi")[0].as_py(), n


def _beside_wide(params: dict[str, Any]) -> bool:
    """Whether the range has whole rollup buckets outside its whole wide ones."""
    return bool(params["r_lo"] >= params["b_lo"] or params["r_hi"] <= params["b_hi"])


def _set_range(params: dict[str, Any], lo: int, hi: int) -> bool:
    """``[lo, hi]``, the whole rollup buckets inside it, and where the raw edges start.

    Returns whether the range cuts a rollup bucket (so there are edges to read raw).
    """
    b_lo = -(-lo // ROLLUP_STEPS)  # the first bucket starting at or after lo
    b_hi = (hi + 1) // ROLLUP_STEPS - 1  # the last bucket ending at or before hi
    w_lo, w_hi = -(-lo // WIDE_STEPS), (hi + 1) // WIDE_STEPS - 1  # the same, wide
    per_wide = WIDE_STEPS // ROLLUP_STEPS
    if w_lo > w_hi:  # no whole wide bucket: the rollup buckets alone
        r_lo, r_hi = b_hi, b_hi + 1
    else:  # the rollup buckets below and above the wide ones
        r_lo, r_hi = w_lo * per_wide - 1, (w_hi + 1) * per_wide
    params.update(
        lo=lo,
        hi=hi,
        b_lo=b_lo,
        b_hi=b_hi,
        w_lo=w_lo,
        w_hi=w_hi,
        r_lo=r_lo,
        r_hi=r_hi,
        in_lo=max(_INT64_MIN, b_lo * ROLLUP_STEPS),
        in_hi=min(_INT64_MAX, (b_hi + 1) * ROLLUP_STEPS - 1),
    )
    return bool(params["in_lo"] > lo or params["in_hi"] < hi)


async def _every_point(
    store: AsyncStore, params: dict[str, Any], keys: list[str], envelope: bool, where: str = "1"
) -> Columns:
    # At most ``samples`` points: one query costs less than two smaller ones.
    cols = await read_rows(
        store, f"{RUN_STREAM} AND {_RANGE} AND {where}", params, keys, one_read=True
    )
    if envelope:  # each point is its own bucket: min = max = value
        for key in keys:
            for name in (f"min({key})", f"max({key})"):
                cols.values[name], cols.present[name] = cols.values[key], cols.present[key]
    return cols


async def _raw_buckets(store: AsyncStore, params: dict[str, Any], width: int) -> pa.Table:
    return await store.query_arrow(
        f"SELECT key, intDiv(step - {{origin:Int64}}, {width}) AS sb, {rollup_aggregates()} "
        f"FROM points WHERE {RUN_KEYS} AND {_RANGE} GROUP BY key, sb",
        params,
    )


async def _rollup_buckets(
    store: AsyncStore, params: dict[str, Any], keys: list[str], width: int, edges: bool
) -> dict[str, Series]:
    span = math.ceil(width / ROLLUP_STEPS)  # rollup buckets per sample bucket
    interior = await store.query_arrow(
        f"SELECT key, intDiv(bucket - {{origin_bucket:Int64}}, {span}) AS sb, {ROLLUP_MERGE} "
        f"FROM points_rollup WHERE {RUN_KEYS} AND {_INTERIOR} GROUP BY key, sb",
        params,
    )
    series = _by_key(interior, keys, edge=False)
    if not edges:
        return series
    edge_rows = await store.query_arrow(
        f"SELECT key, if(step < {{in_lo:Int64}}, -1, {_INT64_MAX}) AS sb, {rollup_aggregates()} "
        f"FROM points WHERE {RUN_KEYS} AND {_EDGES} GROUP BY key, sb",
        params,
    )
    return _concat(series, _by_key(edge_rows, keys, edge=True))


async def _wide_buckets(
    store: AsyncStore, params: dict[str, Any], keys: list[str], width: int, edges: bool
) -> dict[str, Series]:
    """Sample buckets of whole wide rollup buckets; what the range holds beside them
    (rollup buckets, then raw points) is one bucket at each end."""
    span = math.ceil(width / WIDE_STEPS)
    interior = await store.query_arrow(
        f"SELECT key, intDiv(bucket - {{origin_wide:Int64}}, {span}) AS sb, {ROLLUP_MERGE} "
        f"FROM points_rollup_wide WHERE {RUN_KEYS} AND {_WIDE_INTERIOR} GROUP BY key, sb",
        params,
    )
    series = _by_key(interior, keys, edge=False)
    if not edges:
        return series
    below = "{r_lo:Int64}"
    edge_rows = await store.query_arrow(
        f"SELECT key, if(bucket <= {below}, -1, {_INT64_MAX}) AS sb, {ROLLUP_MERGE} "
        f"FROM points_rollup WHERE {RUN_KEYS} AND {_BESIDE_WIDE} GROUP BY key, sb "
        f"UNION ALL SELECT key, if(step < {{in_lo:Int64}}, -1, {_INT64_MAX}) AS sb, "
        f"{rollup_aggregates()} FROM points WHERE {RUN_KEYS} AND {_EDGES} GROUP BY key, sb",
        params,
    )
    return _concat(series, _by_key(edge_rows, keys, edge=True))


#: Columns of a bucket summary: its envelope, and its first point (step ``smin``,
#: value ``fv``, time ``ft``, timestamp ``fs``) and last point (``smax``, ``lv``...).
_FIELDS = ("sb", "edge", "vmin", "vmax", "smin", "fv", "ft", "fs", "smax", "lv", "lt", "ls")
Series = dict[str, np.ndarray]


def _by_key(table: pa.Table, keys: list[str], *, edge: bool) -> dict[str, Series]:
    full = {name: table.column(name).to_numpy() for name in table.column_names if name != "key"}
    full["edge"] = np.full(table.num_rows, edge)
    key_all = np.array(table.column("key").to_pylist(), dtype=object)
    out = {}
    for key in keys:
        mask = key_all == key
        order = np.argsort(full["sb"][mask], kind="stable")
        out[key] = {name: col[mask][order] for name, col in full.items()}
    return out


def _concat(a: dict[str, Series], b: dict[str, Series]) -> dict[str, Series]:
    out = {}
    for key in a:
        merged = {name: np.concatenate([a[key][name], b[key][name]]) for name in _FIELDS}
        order = np.argsort(merged["sb"], kind="stable")
        out[key] = {name: col[order] for name, col in merged.items()}
    return out


def _pick(series: dict[str, Series], samples: int, hi: int) -> dict[str, Series]:
    """Merge neighbouring buckets until the union of first steps and ``hi`` fits."""
    for shift in range(64):
        picked = {key: _coarsen(s, shift) for key, s in series.items()}
        if len(_row_steps(picked, hi)) <= samples:
            return picked
    # Still too many (tiny samples, edge buckets): one bucket per key, edges included;
    # and with more keys than samples allow, only the first of those buckets (with
    # ``hi``, at most two rows): never more than ``samples`` rows.
    whole = {key: _coarsen(s, None) for key, s in series.items()}
    if len(_row_steps(whole, hi)) <= samples:
        return whole
    first = min(int(p["smin"][0]) for p in whole.values() if len(p["smin"]))
    return {
        key: p if len(p["smin"]) and p["smin"][0] == first else {n: c[:0] for n, c in p.items()}
        for key, p in whole.items()
    }


def _row_steps(picked: dict[str, Series], hi: int) -> np.ndarray:
    """The steps of the answer's rows: every kept first point, and ``hi``."""
    return np.unique(np.concatenate([p["smin"] for p in picked.values()] + [[hi]]))


def _coarsen(s: Series, shift: int | None) -> Series:
    """Merge interior buckets ``sb >> shift``, keeping each one's first point;
    edge buckets stay as they are. ``shift=None`` merges everything."""
    if not len(s["sb"]):
        return s
    if shift is None:
        sb = np.zeros(len(s["sb"]), np.int64)
    else:
        sb = np.where(s["edge"], s["sb"], s["sb"] >> shift)
    starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
    ends = np.r_[starts[1:], len(sb)]
    first = [a + int(np.argmin(s["smin"][a:b])) for a, b in zip(starts, ends, strict=True)]
    out = {name: col[first].copy() for name, col in s.items()}
    out["vmin"] = np.minimum.reduceat(s["vmin"], starts)
    out["vmax"] = np.maximum.reduceat(s["vmax"], starts)
    return out


def _last(s: Series, hi: int) -> Series | None:
    """The key's bucket holding its point at ``hi``, if it has one (an end bucket may
    come in parts: the rollup's buckets beside the wide ones, and raw points)."""
    if not len(s["sb"]):
        return None
    i = int(np.argmax(s["smax"]))
    if s["smax"][i] != hi:
        return None
    return {name: col[i : i + 1].copy() for name, col in s.items()}


def _columns(
    picked: dict[str, Series],
    last: dict[str, Series | None],
    keys: list[str],
    hi: int,
    envelope: bool,
) -> Columns:
    steps = _row_steps(picked, hi)
    n = len(steps)
    out = Columns(steps, {}, {})
    runtime, stamp, timed = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool)

    def put(
        key_values: np.ndarray, key_present: np.ndarray, rows: np.ndarray, s: Series, p: str
    ) -> None:
        key_values[rows], key_present[rows] = s[f"{p}v"], True  # p: "f" first, "l" last
        fresh = rows[~timed[rows]]
        runtime[fresh] = s[f"{p}t"][~timed[rows]]
        stamp[fresh] = s[f"{p}s"][~timed[rows]]
        timed[fresh] = True

    for key in keys:
        p = picked[key]
        values, present = np.full(n, np.nan), np.zeros(n, bool)
        rows = np.searchsorted(steps, p["smin"]).astype(np.int64)
        put(values, present, rows, p, "f")
        tail = last[key]
        if tail is not None:
            put(values, present, np.array([n - 1]), tail, "l")
        out.values[key], out.present[key] = values, present
        if envelope:
            finite = p["vmin"] <= p["vmax"]  # false for a bucket holding only NaN
            low, high, has = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool)
            low[rows[finite]], high[rows[finite]], has[rows[finite]] = (
                p["vmin"][finite],
                p["vmax"][finite],
                True,
            )
            out.values[f"min({key})"], out.values[f"max({key})"] = low, high
            out.present[f"min({key})"] = out.present[f"max({key})"] = has
    out.values["_runtime"], out.values["_timestamp"] = runtime, stamp
    out.present["_runtime"] = out.present["_timestamp"] = timed
    return out
