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
"""

from __future__ import annotations

DATABASE = "stride"

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
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.run_keys (
        run String,
        stream LowCardinality(String),
        key String
    ) ENGINE = ReplacingMergeTree
    ORDER BY (run, stream, key)""",
)

#: ``ver`` for first-write-wins fields: the earliest batch gets the largest version.
MAX_VER = 2**64 - 1
