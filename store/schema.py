"""ClickHouse schema: the same DDL for chDB (embedded) and a ClickHouse server.

Idempotent storage, which makes at-least-once delivery exactly-once in effect:

* ``points`` is a ``ReplacingMergeTree(ver)`` keyed by ``(run, stream, key,
  step)``: a point logged again replaces the older one (the batch version
  ``ver`` decides, not arrival order), and a batch applied twice collapses
  into the same rows. Readers deduplicate with ``FINAL`` or ``argMax(.., ver)``
  so they never see a row twice, even before background merges.
* ``run_fields`` holds each run field (``config``, ``state``,
  ``summary.<key>``...) as JSON text, last write wins by ``ver``. First-write-
  wins fields (``created_at``) are stored with ``ver = 2^64-1 - batch ver``.
* ``batches`` is the ledger of applied batches ``(run, writer, seq)``: ingest
  skips a batch it has already applied (a re-sync after JetStream's duplicate
  window), so derived tables are not fed twice.
* ``run_keys`` lists the metric keys of each run and stream.
* ``points_rollup`` is kept by a materialized view on ``points``: per
  ``ROLLUP_STEPS``-step bucket of each series, the point count, the min and
  max value (NaN ignored) and the first and last point (ties on a step go to
  the newest version). Sampled history over millions of points reads this,
  not the raw points. Its aggregates are invariant under merges, so answers
  are deterministic; a point re-logged with a new value still counts its old
  value in ``vmin``/``vmax`` (the envelope may be wider, never narrower).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._base import Store

DATABASE = "stride"

#: Steps per rollup bucket.
ROLLUP_STEPS = 256
#: The bucket of a step (floor division, also for negative steps).
BUCKET_SQL = f"intDiv(step + if(step < 0, {1 - ROLLUP_STEPS}, 0), {ROLLUP_STEPS})"
#: A point as (step, value, time, timestamp), and its rank for first/last.
POINT_SQL = "(step, value, time, timestamp)"
FIRST_SQL = f"argMin({POINT_SQL}, (step, -toInt64(ver)))"
LAST_SQL = f"argMax({POINT_SQL}, (step, ver))"
#: Envelope of the values, NaN ignored (+inf/-inf when a bucket holds only NaN).
VMIN_SQL = "min(if(isNaN(value), inf, value))"
VMAX_SQL = "max(if(isNaN(value), -inf, value))"
_POINT_TYPE = "Tuple(Int64, Float64, Float64, Float64)"

POINTS_COLUMNS = ("run", "stream", "key", "step", "time", "timestamp", "value", "ver")
FIELDS_COLUMNS = ("entity", "project", "run_id", "field", "value", "ver")
BATCHES_COLUMNS = ("run", "writer", "seq", "ver", "points")
KEYS_COLUMNS = ("run", "stream", "key")

DDL = (
    f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.points (
        run String,
        stream LowCardinality(String),
        key LowCardinality(String),
        step Int64,
        time Float64,
        timestamp Float64,
        value Float64,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(ver)
    ORDER BY (run, stream, key, step)""",
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.run_fields (
        entity String,
        project String,
        run_id String,
        field String,
        value String,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(ver)
    ORDER BY (entity, project, run_id, field)""",
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.batches (
        run String,
        writer String,
        seq UInt64,
        ver UInt64,
        points UInt64,
        applied_at DateTime64(3) DEFAULT now64(3)
    ) ENGINE = ReplacingMergeTree
    ORDER BY (run, writer, seq)""",
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.points_rollup (
        run String,
        stream LowCardinality(String),
        key LowCardinality(String),
        bucket Int64,
        n SimpleAggregateFunction(sum, UInt64),
        vmin SimpleAggregateFunction(min, Float64),
        vmax SimpleAggregateFunction(max, Float64),
        first AggregateFunction(argMin, {_POINT_TYPE}, Tuple(Int64, Int64)),
        last AggregateFunction(argMax, {_POINT_TYPE}, Tuple(Int64, UInt64))
    ) ENGINE = AggregatingMergeTree
    ORDER BY (run, stream, key, bucket)""",
    f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {DATABASE}.points_rollup_mv
    TO {DATABASE}.points_rollup AS
    SELECT run, stream, key, {BUCKET_SQL} AS bucket,
        count() AS n,
        {VMIN_SQL} AS vmin,
        {VMAX_SQL} AS vmax,
        argMinState({POINT_SQL}, (step, -toInt64(ver))) AS first,
        argMaxState({POINT_SQL}, (step, ver)) AS last
    FROM {DATABASE}.points
    GROUP BY run, stream, key, bucket""",
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.run_keys (
        run String,
        stream LowCardinality(String),
        key String
    ) ENGINE = ReplacingMergeTree
    ORDER BY (run, stream, key)""",
)

#: Run after DDL: fill the rollup from points written before it existed.
BACKFILL_ROLLUP = f"""INSERT INTO {DATABASE}.points_rollup
    SELECT run, stream, key, {BUCKET_SQL} AS bucket, count(), {VMIN_SQL}, {VMAX_SQL},
        argMinState({POINT_SQL}, (step, -toInt64(ver))), argMaxState({POINT_SQL}, (step, ver))
    FROM {DATABASE}.points GROUP BY run, stream, key, bucket"""

#: ``ver`` for first-write-wins fields: the earliest batch gets the largest version.
MAX_VER = 2**64 - 1


def prepare(store: Store) -> None:
    """Create everything (idempotent) and backfill the rollup if it is new."""
    for statement in DDL:
        store.command(statement)
    has_points = store.query_arrow(
        f"SELECT count() AS n FROM (SELECT 1 FROM {DATABASE}.points LIMIT 1)"
    )
    has_rollup = store.query_arrow(
        f"SELECT count() AS n FROM (SELECT 1 FROM {DATABASE}.points_rollup LIMIT 1)"
    )
    if has_points.column("n")[0].as_py() and not has_rollup.column("n")[0].as_py():
        store.command(BACKFILL_ROLLUP)
