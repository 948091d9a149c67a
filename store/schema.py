"""ClickHouse schema: the same DDL for chDB (embedded) and a ClickHouse server.

Idempotent storage, which makes at-least-once delivery exactly-once in effect:

* ``points`` is a ``ReplacingMergeTree(ver)`` keyed by ``(run, stream, key,
  step)``: a point logged again replaces the older one (the batch version
  ``ver`` decides, not arrival order), and a batch applied twice collapses
  into the same rows. Readers deduplicate with ``FINAL`` or ``argMax(.., ver)``
  so they never see a row twice, even before background merges. ``run`` is
  ``LowCardinality(String)``, as ingest builds it (dictionary-encoded): a part
  holds the points of few runs, and with a plain ``String`` chDB turned every
  point's run into its own string to sort, compare and store; end to end,
  ``stride up`` used about a fifth less CPU per point with it (see
  ``benchmarks/RESULTS.md``). Stores made before keep ``String``; readers work
  with either (``deploy/README.md``, "Upgrades", has the ``ALTER``).
  ``step``, ``time`` and ``timestamp`` rise within a series, so they are stored
  as differences (``CODEC(Delta, LZ4)``, lossless): a point took about 7.5
  bytes on disk instead of 16.8, that much less for every insert and merge to
  write (``benchmarks/RESULTS.md``). Stores made before keep plain LZ4.
* ``run_fields`` holds each run field (``config``, ``state``,
  ``summary.<key>``...) as JSON text, last write wins by ``ver``. First-write-
  wins fields (``created_at``, a generated name) are stored as ``~<field>``
  with ``ver = 2^64-1 - batch ver``; readers prefer a plain field over it.
* ``batches`` is the ledger of applied batches ``(run, writer, seq)``: ingest
  skips a batch it has already applied (a re-sync after JetStream's duplicate
  window). It is written last, so a write that fails part-way is redone whole:
  the idempotent tables absorb that, and the rollup's point counts ``n``
  count those points twice (``n`` only decides whether a range is sampled).
* ``run_keys`` lists the metric keys of each run and stream.
* ``series_stats`` holds, per series, the aggregates of every value logged
  (count, NaN-free count and sum, first and last step, min, max, and the
  values at the first and last step), folded by ingest from the same
  partials as the rollup: ``stats()`` and the like read one row per key.
* ``points_rollup`` is written by ingest beside ``points``: it folds each
  fetch into partials (one row per series, bucket and batch:
  :data:`ROLLUP_PARTIALS`) that the database turns into aggregate states
  (:data:`ROLLUP_FROM_PARTIALS`). This used to be a materialized view on
  ``points``; computing the partials in ingest (numpy, on rows it already
  holds) cut ingest's CPU per point by about a sixth in a micro run on chDB
  (460-493 ns with the view, 386-446 ns without), and in a cluster it moves
  that work off the ClickHouse servers onto the stateless ingest processes.
  Per ``ROLLUP_STEPS``-step bucket of each series, the point count, the first
  and last step, the min and max value (NaN ignored), and the value, time and
  timestamp of the first and last point (``argMin``/``argMax`` ranked by step,
  then version, as one Int128 so comparisons stay native). Sampled history
  over millions of points reads this, not the raw points. Its aggregates are
  invariant under merges, so answers are deterministic; a point re-logged
  with a new value still counts its old value in ``vmin``/``vmax`` (the
  envelope may be wider, never narrower).

:func:`ddl` writes this schema for one server or, given a cluster name, as
replicated tables behind ``Distributed`` ones; the SQL that reads and writes
it is the same either way.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._base import Store

#: Steps per rollup bucket.
ROLLUP_STEPS = 256
#: The bucket of a step (floor division, also for negative steps).
BUCKET_SQL = f"intDiv(step + if(step < 0, {1 - ROLLUP_STEPS}, 0), {ROLLUP_STEPS})"
#: Steps per bucket of ``points_rollup_wide``, the second level: 16 rollup buckets.
#: History over ~100M steps reads ~25k of these instead of ~400k rollup rows.
WIDE_STEPS = 16 * ROLLUP_STEPS
_WIDE = WIDE_STEPS // ROLLUP_STEPS


#: Rank of a point for "first" (smallest step, then newest version) and "last"
#: (largest step, then newest version), as one Int128 so comparisons stay native.
def _first_rank(step: str, ver: str) -> str:
    return f"(bitShiftLeft(toInt128({step}), 64) + toInt128(18446744073709551615 - {ver}))"


def _last_rank(step: str, ver: str) -> str:
    return f"(bitShiftLeft(toInt128({step}), 64) + toInt128({ver}))"


FIRST_KEY = _first_rank("step", "ver")
LAST_KEY = _last_rank("step", "ver")
#: Envelope of the values, NaN ignored (+inf/-inf when a bucket holds only NaN).
VMIN_SQL = "min(if(isNaN(value), inf, value))"
VMAX_SQL = "max(if(isNaN(value), -inf, value))"
#: (column, aggregate over points) kept per rollup bucket; ``{F}`` is the
#: aggregate combinator: "State" in the view, "" when summarising raw points.
_ROLLUP_AGGREGATES = (
    ("n", "count()"),
    ("smin", "min(step)"),
    ("smax", "max(step)"),
    ("vmin", VMIN_SQL),
    ("vmax", VMAX_SQL),
    ("fv", f"argMin{{F}}(value, {FIRST_KEY})"),
    ("ft", f"argMin{{F}}(time, {FIRST_KEY})"),
    ("fs", f"argMin{{F}}(timestamp, {FIRST_KEY})"),
    ("lv", f"argMax{{F}}(value, {LAST_KEY})"),
    ("lt", f"argMax{{F}}(time, {LAST_KEY})"),
    ("ls", f"argMax{{F}}(timestamp, {LAST_KEY})"),
)


def rollup_aggregates(combinator: str = "") -> str:
    """``count() AS n, min(step) AS smin, ...`` over points ("State" for the view)."""
    return ", ".join(
        f"{expr.format(F=combinator) if '{F}' in expr else expr} AS {name}"
        for name, expr in _ROLLUP_AGGREGATES
    )


#: What ingest computes per series, bucket and batch before the database folds
#: it into ``points_rollup`` (:data:`ROLLUP_FROM_PARTIALS`): count, first and
#: last step, NaN-free min and max, the first and last point's value, time and
#: timestamp, and the batch version that ranks them. Names and ClickHouse types.
ROLLUP_PARTIALS = (
    ("run", "String"),
    ("stream", "String"),
    ("key", "String"),
    ("bucket", "Int64"),
    ("n", "UInt64"),
    ("smin", "Int64"),
    ("smax", "Int64"),
    ("vmin", "Float64"),
    ("vmax", "Float64"),
    ("fv", "Float64"),
    ("ft", "Float64"),
    ("fs", "Float64"),
    ("lv", "Float64"),
    ("lt", "Float64"),
    ("ls", "Float64"),
    ("nv", "UInt64"),  # values that are not NaN (for series_stats' mean)
    ("vsum", "Float64"),  # their sum
    ("ver", "UInt64"),
)
#: The rollup's columns: the partials' but the ones only series_stats and ranking use.
ROLLUP_COLUMNS = tuple(name for name, _ in ROLLUP_PARTIALS if name not in ("nv", "vsum", "ver"))
# assumeNotNull: chDB reads Arrow columns as Nullable, and an aggregate's state
# type follows its arguments' (a no-op where the types are declared).
_PARTIAL_FIRST = _first_rank("assumeNotNull(smin)", "assumeNotNull(ver)")
_PARTIAL_LAST = _last_rank("assumeNotNull(smax)", "assumeNotNull(ver)")
#: Partials (from ``{source}``) to ``points_rollup`` rows, in ROLLUP_COLUMNS order,
#: one row each (``initializeAggregation``: no GROUP BY at insert). Merged, they
#: give the same aggregates as :func:`rollup_aggregates` over the raw points: the
#: first point of a bucket is the first of its partials ranked by (step, newest
#: version), the last likewise, and counts, minima and maxima fold.
ROLLUP_FROM_PARTIALS = (
    "SELECT run, stream, key, bucket, n, smin, smax, vmin, vmax, "
    + ", ".join(
        f"initializeAggregation('{fn}State', assumeNotNull({col}), {rank})"
        for fn, col, rank in (
            ("argMin", "fv", _PARTIAL_FIRST),
            ("argMin", "ft", _PARTIAL_FIRST),
            ("argMin", "fs", _PARTIAL_FIRST),
            ("argMax", "lv", _PARTIAL_LAST),
            ("argMax", "lt", _PARTIAL_LAST),
            ("argMax", "ls", _PARTIAL_LAST),
        )
    )
    + " FROM {source}"
)
ROLLUP_PARTIALS_STRUCTURE = ", ".join(f"{name} {kind}" for name, kind in ROLLUP_PARTIALS)

#: The same partials folded per series and wide bucket into ``points_rollup_wide``
#: (one row per series, wide bucket and fetch), in ROLLUP_COLUMNS order.
WIDE_FROM_PARTIALS = (
    "SELECT run, stream, key, "
    f"intDiv(assumeNotNull(bucket) + if(assumeNotNull(bucket) < 0, {1 - _WIDE}, 0), {_WIDE}) "
    "AS wide, "
    "sum(assumeNotNull(n)), min(assumeNotNull(smin)), max(assumeNotNull(smax)), "
    "min(assumeNotNull(vmin)), max(assumeNotNull(vmax)), "
    + ", ".join(
        f"{fn}State(assumeNotNull({col}), {rank})"
        for fn, col, rank in (
            ("argMin", "fv", _PARTIAL_FIRST),
            ("argMin", "ft", _PARTIAL_FIRST),
            ("argMin", "fs", _PARTIAL_FIRST),
            ("argMax", "lv", _PARTIAL_LAST),
            ("argMax", "lt", _PARTIAL_LAST),
            ("argMax", "ls", _PARTIAL_LAST),
        )
    )
    + " FROM {source} GROUP BY run, stream, key, wide"
)

#: The same partials folded per series into ``series_stats`` (one row per
#: series and fetch), in SERIES_STATS_COLUMNS order.
SERIES_STATS_FROM_PARTIALS = (
    "SELECT run, stream, key, sum(assumeNotNull(n)), sum(assumeNotNull(nv)), "
    "sum(assumeNotNull(vsum)), min(assumeNotNull(smin)), max(assumeNotNull(smax)), "
    "min(assumeNotNull(vmin)), max(assumeNotNull(vmax)), "
    f"argMinState(assumeNotNull(fv), {_PARTIAL_FIRST}), "
    f"argMaxState(assumeNotNull(lv), {_PARTIAL_LAST}) "
    "FROM {source} GROUP BY run, stream, key"
)
SERIES_STATS_COLUMNS = (
    *("run", "stream", "key", "n", "nv", "vsum"),
    *("smin", "smax", "vmin", "vmax", "fv", "lv"),
)
#: Merged per series: what ``stats()`` and the run summary read.
SERIES_STATS_MERGE = (
    "sum(n) AS count, sum(nv) AS nv, sum(vsum) AS vsum, min(smin) AS first_step, "
    "max(smax) AS last_step, min(vmin) AS min, max(vmax) AS max, "
    "argMinMerge(fv) AS first, argMaxMerge(lv) AS last"
)

#: The same columns merged over rollup rows.
ROLLUP_MERGE = (
    "sum(n) AS n, min(smin) AS smin, max(smax) AS smax, min(vmin) AS vmin, max(vmax) AS vmax, "
    "argMinMerge(fv) AS fv, argMinMerge(ft) AS ft, argMinMerge(fs) AS fs, "
    "argMaxMerge(lv) AS lv, argMaxMerge(lt) AS lt, argMaxMerge(ls) AS ls"
)

POINTS_COLUMNS = ("run", "stream", "key", "step", "time", "timestamp", "value", "ver")
FIELDS_COLUMNS = ("entity", "project", "run_id", "field", "value", "ver")
BATCHES_COLUMNS = ("run", "writer", "seq", "ver", "points")
KEYS_COLUMNS = ("run", "stream", "key")
EVENTS_COLUMNS = ("run", "ts", "writer", "seq", "idx", "level", "message", "metadata")
ALERTS_COLUMNS = ("entity", "project", "name", "definition", "ver")
FOLDER_FIELDS_COLUMNS = ("entity", "project", "path", "field", "value", "ver")
ALERT_STATUS_COLUMNS = ("run", "alert", "at", "state", "value", "ver")
ALERT_TRANSITIONS_COLUMNS = ("run", "alert", "at", "state", "previous", "value")
FILES_COLUMNS = (
    *("run", "name", "ver", "upload", "writer", "category", "size", "sha256", "mime"),
    *("description", "tags", "metadata", "deleted", "updated"),
)


ARTIFACT_EVENTS_COLUMNS = (
    *("entity", "project", "name", "ver", "event", "kind", "run", "type", "digest"),
    *("aliases", "manifest", "size", "files", "description", "metadata", "ref", "use_as"),
)


def blob_key(sha256: str) -> str:
    """The object-store key of the bytes whose sha256 is ``sha256`` (hex): stored once
    however many files, versions or runs hold them."""
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


#: The keys of early copies (:func:`upload_key`): one older than a moment was left
#: by a killed worker, and the file workers' sweep deletes it.
UPLOADS_PREFIX = "uploads/"


def upload_key(upload: str) -> str:
    """Where ingest copies a large file while its chunks arrive, before its record
    says which blob it is (see ``stride.ingest._early``); never listed."""
    return f"{UPLOADS_PREFIX}{upload}"


#: Where a run's rows are, for deleting it: (table, condition). Its fields first, so
#: it leaves listings at once. The ledger keeps its batches: a late re-send of
#: one (a spool synced afterwards) is skipped, not stored again.
_BY_ID = "entity = {entity:String} AND project = {project:String} AND run_id = {run_id:String}"
RUN_ROWS = (
    ("run_search", _BY_ID),
    ("run_fields", _BY_ID),
    ("points", "run = {path:String}"),
    ("points_rollup", "run = {path:String}"),
    ("points_rollup_wide", "run = {path:String}"),
    ("series_stats", "run = {path:String}"),
    ("run_keys", "run = {path:String}"),
    ("files", "run = {path:String}"),
    ("events", "run = {path:String}"),
    ("alert_status", "run = {path:String}"),
    ("alert_transitions", "run = {path:String}"),
)


#: How long the ledger remembers an applied batch. JetStream's duplicate window
#: (10 minutes) stops quick re-sends; the ledger stops later ones, such as a spool
#: synced days after. A batch re-sent after this is applied again: its points and
#: fields are idempotent, but the rollup counts its points twice (``n``, which
#: only decides whether a range is sampled). Tables made before this existed keep
#: no TTL until ``ALTER TABLE batches MODIFY TTL ...`` is run by hand.
LEDGER_TTL = "toDateTime(applied_at) + INTERVAL 90 DAY"


#: One table: its columns, engine (without "Replicated"), engine arguments and
#: sorting key, and (in cluster mode) the sharding key of its Distributed table.
@dataclasses.dataclass(frozen=True)
class _Table:
    name: str
    columns: str
    engine: str
    engine_args: str
    order_by: str
    shard_by: str
    ttl: str = ""
    settings: str = ""


#: For tables read a few rows at a time (a page of runs' fields, their summaries):
#: granules of 256 rows instead of 8192, so 50 runs read ~50 small granules, not
#: ~50 of 8192 rows. 50 run documents of 100k took 20 -> 12 ms (fields) and
#: 17 -> 11 ms (summaries) in ``benchmarks/bench_runs.py``'s data.
_POINT_READS = "index_granularity = 256"

_TABLES = (
    _Table(
        "points",
        """run LowCardinality(String),
        stream LowCardinality(String),
        key LowCardinality(String),
        step Int64 CODEC(Delta, LZ4),
        time Float64 CODEC(Delta, LZ4),
        timestamp Float64 CODEC(Delta, LZ4),
        value Float64,
        ver UInt64""",
        "ReplacingMergeTree",
        "ver",
        "run, stream, key, step",
        "cityHash64(run)",
    ),
    _Table(
        "run_fields",
        """entity String,
        project String,
        run_id String,
        field String,
        value String,
        ver UInt64""",
        "ReplacingMergeTree",
        "ver",
        "entity, project, run_id, field",
        "cityHash64(entity, project, run_id)",
        settings=_POINT_READS,
    ),
    _Table(
        "batches",
        """run String,
        writer String,
        seq UInt64,
        ver UInt64,
        points UInt64,
        applied_at DateTime64(3) DEFAULT now64(3)""",
        "ReplacingMergeTree",
        "",
        "run, writer, seq",
        "cityHash64(run)",
        LEDGER_TTL,
    ),
    _Table(
        "points_rollup",
        """run String,
        stream LowCardinality(String),
        key LowCardinality(String),
        bucket Int64,
        n SimpleAggregateFunction(sum, UInt64),
        smin SimpleAggregateFunction(min, Int64),
        smax SimpleAggregateFunction(max, Int64),
        vmin SimpleAggregateFunction(min, Float64),
        vmax SimpleAggregateFunction(max, Float64),
        fv AggregateFunction(argMin, Float64, Int128),
        ft AggregateFunction(argMin, Float64, Int128),
        fs AggregateFunction(argMin, Float64, Int128),
        lv AggregateFunction(argMax, Float64, Int128),
        lt AggregateFunction(argMax, Float64, Int128),
        ls AggregateFunction(argMax, Float64, Int128)""",
        "AggregatingMergeTree",
        "",
        "run, stream, key, bucket",
        "cityHash64(run)",
    ),
    _Table(
        "points_rollup_wide",
        """run String,
        stream LowCardinality(String),
        key LowCardinality(String),
        bucket Int64,
        n SimpleAggregateFunction(sum, UInt64),
        smin SimpleAggregateFunction(min, Int64),
        smax SimpleAggregateFunction(max, Int64),
        vmin SimpleAggregateFunction(min, Float64),
        vmax SimpleAggregateFunction(max, Float64),
        fv AggregateFunction(argMin, Float64, Int128),
        ft AggregateFunction(argMin, Float64, Int128),
        fs AggregateFunction(argMin, Float64, Int128),
        lv AggregateFunction(argMax, Float64, Int128),
        lt AggregateFunction(argMax, Float64, Int128),
        ls AggregateFunction(argMax, Float64, Int128)""",
        "AggregatingMergeTree",
        "",
        "run, stream, key, bucket",
        "cityHash64(run)",
    ),
    _Table(
        "series_stats",
        """run String,
        stream LowCardinality(String),
        key LowCardinality(String),
        n SimpleAggregateFunction(sum, UInt64),
        nv SimpleAggregateFunction(sum, UInt64),
        vsum SimpleAggregateFunction(sum, Float64),
        smin SimpleAggregateFunction(min, Int64),
        smax SimpleAggregateFunction(max, Int64),
        vmin SimpleAggregateFunction(min, Float64),
        vmax SimpleAggregateFunction(max, Float64),
        fv AggregateFunction(argMin, Float64, Int128),
        lv AggregateFunction(argMax, Float64, Int128)""",
        "AggregatingMergeTree",
        "",
        "run, stream, key",
        "cityHash64(run)",
        settings=_POINT_READS,
    ),
    _Table(
        # Run fields flattened for search (see run_search.py); rows are current
        # by their field's marker, so replacing old versions is only housekeeping.
        "run_search",
        """entity LowCardinality(String),
        project LowCardinality(String),
        run_id String,
        key LowCardinality(String),
        field LowCardinality(String),
        pos UInt32,
        kind UInt8,
        num Float64,
        str String,
        ver UInt64""",
        "ReplacingMergeTree",
        "ver",
        "entity, project, key, run_id, field, pos",
        "cityHash64(entity, project, run_id)",
    ),
    _Table(
        # Saved files: one row per version (``ver``: when it was saved, in ns);
        # the bytes are the object ``blobs/sha256/<hh>/<sha256>``
        # (:func:`blob_key`). Edits and soft deletes add a row with a larger
        # ``updated``; readers take the newest (``FINAL``).
        "files",
        """run String,
        name String,
        ver UInt64,
        upload String,
        writer String,
        category LowCardinality(String),
        size UInt64,
        sha256 String,
        mime LowCardinality(String),
        description String,
        tags Array(String),
        metadata String,
        deleted UInt8,
        updated UInt64""",
        "ReplacingMergeTree",
        "updated",
        "run, name, ver, upload",
        "cityHash64(run)",
        settings=_POINT_READS,
    ),
    _Table(
        # Artifacts: one row per record (a run logged or used one). A version is a
        # distinct ``digest`` (of the manifest); see :mod:`stride.store.artifacts`.
        "artifact_events",
        """entity LowCardinality(String),
        project LowCardinality(String),
        name String,
        ver UInt64,
        event String,
        kind LowCardinality(String),
        run String,
        type LowCardinality(String),
        digest String,
        aliases Array(String),
        manifest String,
        size UInt64,
        files UInt32,
        description String,
        metadata String,
        ref String,
        use_as String""",
        "ReplacingMergeTree",
        "",
        "entity, project, name, ver, event",
        "cityHash64(entity, project)",
        settings=_POINT_READS,
    ),
    _Table(
        "run_keys",
        """run String,
        stream LowCardinality(String),
        key String""",
        "ReplacingMergeTree",
        "",
        "run, stream, key",
        "cityHash64(run)",
    ),
    _Table(
        # Events and log lines, read in time order. A batch stored twice (a crash
        # between its insert and the ledger's) repeats the same key: replaced.
        "events",
        """run String,
        ts Int64,
        writer String,
        seq UInt64,
        idx UInt32,
        level LowCardinality(String),
        message String,
        metadata String""",
        "ReplacingMergeTree",
        "",
        "run, ts, writer, seq, idx",
        "cityHash64(run)",
        settings=_POINT_READS,
    ),
    _Table(
        # Folders' details (metadata, tags, description: JSON text), last write wins
        # per detail, as run fields; a folder's runs are those whose ``folder`` is it.
        "folder_fields",
        """entity String,
        project String,
        path String,
        field String,
        value String,
        ver UInt64""",
        "ReplacingMergeTree",
        "ver",
        "entity, project, path, field",
        "cityHash64(entity, project)",
    ),
    _Table(
        # Alert definitions, one per name in a project: the first one wins
        # (``ver = 2^64-1 - batch ver``, as set-once run fields); readers take
        # ``argMax(definition, ver)``. A run attaches one by its field ``alerts.<name>``.
        "alerts",
        """entity String,
        project String,
        name String,
        definition String,
        ver UInt64""",
        "ReplacingMergeTree",
        "ver",
        "entity, project, name",
        "cityHash64(entity, project)",
    ),
    _Table(
        # Each alert's last evaluation on a run (``at``: the evaluation instant,
        # Unix seconds; ``ver``: the same in ns, so the latest wins).
        "alert_status",
        """run String,
        alert String,
        at Float64,
        state LowCardinality(String),
        value Float64,
        ver UInt64""",
        "ReplacingMergeTree",
        "ver",
        "run, alert",
        "cityHash64(run)",
    ),
    _Table(
        # Every change of an alert's state on a run, at its evaluation instant;
        # evaluated twice (two workers, a redelivery), it is the same row.
        "alert_transitions",
        """run String,
        alert String,
        at Float64,
        state LowCardinality(String),
        previous LowCardinality(String),
        value Float64""",
        "ReplacingMergeTree",
        "",
        "run, alert, at",
        "cityHash64(run)",
    ),
)

#: Session settings both backends apply. ``optimize_on_insert=0``: a
#: ReplacingMergeTree would otherwise sort and deduplicate every inserted block
#: by its key (about a quarter of ingest's insert CPU); readers deduplicate
#: anyway (``FINAL``, ``argMax``), as they must for rows from separate inserts.
SESSION_SETTINGS = {"optimize_on_insert": "0"}

#: In cluster mode, the suffix of the replicated table behind each Distributed one.
LOCAL_SUFFIX = "_local"
#: Where replicas of a cluster-mode table meet in ClickHouse Keeper; ``{shard}``
#: and ``{replica}`` are the server's macros (set in each server's config).
REPLICA_PATH = "/clickhouse/tables/{{shard}}/{database}/{table}"


def ddl(database: str, cluster: str | None = None) -> list[str]:
    """Every statement that creates the schema in ``database`` (idempotent).

    Without ``cluster``: plain MergeTree tables. With it, on every server of
    the cluster (``ON CLUSTER``): a ``Replicated*MergeTree`` table ``<name>_local``
    per table, a ``Distributed`` table ``<name>`` in front of it, sharded so a run's
    rows stay on one shard (``FINAL`` and ``argMax`` then work per shard). Ingest
    writes the rollup like any table (no view). Ingest and query use the names
    without the suffix in both modes; inserts go through the Distributed tables
    synchronously (see :class:`~.clickhouse.ClickHouseStore`).
    """
    on = f" ON CLUSTER {cluster}" if cluster else ""
    statements = [f"CREATE DATABASE IF NOT EXISTS {database}{on}"]
    for t in _TABLES:
        ttl = f"\n    TTL {t.ttl}" if t.ttl else ""
        ttl += f"\n    SETTINGS {t.settings}" if t.settings else ""
        if not cluster:
            args = f"({t.engine_args})" if t.engine_args else ""
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {database}.{t.name} (\n        {t.columns}\n    )"
                f" ENGINE = {t.engine}{args}\n    ORDER BY ({t.order_by}){ttl}"
            )
            continue
        local = t.name + LOCAL_SUFFIX
        path = REPLICA_PATH.format(database=database, table=local)
        args = ", ".join(a for a in (f"'{path}'", "'{replica}'", t.engine_args) if a)
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {database}.{local}{on} (\n        {t.columns}\n    )"
            f" ENGINE = Replicated{t.engine}({args})\n    ORDER BY ({t.order_by}){ttl}"
        )
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {database}.{t.name}{on} AS {database}.{local}"
            f" ENGINE = Distributed({cluster}, {database}, {local}, {t.shard_by})"
        )
    # Earlier versions kept the rollup with a materialized view on points; ingest
    # now writes it (see ROLLUP_FROM_PARTIALS), and the view would count twice.
    statements.append(f"DROP VIEW IF EXISTS {database}.points_rollup_mv{on}")
    return statements


#: Fill the aggregates from points written before they existed (see :func:`backfill`).
BACKFILL_ROLLUP = f"""INSERT INTO points_rollup
    SELECT run, stream, key, {BUCKET_SQL} AS bucket, {rollup_aggregates("State")}
    FROM points GROUP BY run, stream, key, bucket"""
BACKFILL_WIDE = f"""INSERT INTO points_rollup_wide
    SELECT run, stream, key, intDiv(bucket + if(bucket < 0, {1 - _WIDE}, 0), {_WIDE}) AS wide,
        sum(n), min(smin), max(smax), min(vmin), max(vmax),
        argMinMergeState(fv), argMinMergeState(ft), argMinMergeState(fs),
        argMaxMergeState(lv), argMaxMergeState(lt), argMaxMergeState(ls)
    FROM points_rollup GROUP BY run, stream, key, wide"""
BACKFILL_SERIES_STATS = f"""INSERT INTO series_stats
    SELECT run, stream, key, count(), countIf(NOT isNaN(value)),
        sumIf(value, NOT isNaN(value)), min(step), max(step), {VMIN_SQL}, {VMAX_SQL},
        argMinState(value, {FIRST_KEY}), argMaxState(value, {LAST_KEY})
    FROM points GROUP BY run, stream, key"""

#: First-write-wins fields are stored as ``~name``: a last-write-wins ``name``
#: (an explicit run name) beats a first-write-wins one (a generated name).
ONCE_PREFIX = "~"

#: Each writer's last state, as the field ``writers.<writer>``: ingest writes it
#: beside every ``state`` a batch sets, so a run written by several processes is
#: running while any of them is (see :func:`stride.query.runs` and the search).
WRITER_PREFIX = "writers."

#: Run fields that carry a folder's details, ``folder:<detail>:<path>``: stored in
#: ``folder_fields``, not as fields of the run that sent them.
FOLDER_FIELD_PREFIX = "folder:"
#: The details a folder has.
FOLDER_DETAILS = frozenset({"metadata", "tags", "description"})

#: ``ver`` for first-write-wins fields: the earliest batch gets the largest version.
MAX_VER = 2**64 - 1


def create_schema(store: Store, database: str, cluster: str | None = None) -> None:
    """Create the database and everything in it, unless it is all there already.

    The check matters in a cluster: ``ON CLUSTER`` DDL waits for every server,
    even ``IF NOT EXISTS``, so running it at every start would keep a service
    from starting while any ClickHouse server is down.
    """
    present = store.query_arrow(
        "SELECT name FROM system.tables WHERE database = {db:String}", {"db": database}
    )
    names = set(present.column("name").to_pylist())
    wanted = {t.name for t in _TABLES}
    if cluster:
        wanted |= {t.name + LOCAL_SUFFIX for t in _TABLES}
    if wanted <= names and "points_rollup_mv" not in names:
        return
    for statement in ddl(database, cluster):
        store.command(statement)


def backfill(store: Store) -> None:
    """Fill the tables derived from others where one is empty while its sources are not.

    This serves stores from before they existed (the rollup, then
    ``series_stats``, then ``run_search``). On a big store the first start after
    an upgrade reads every point once to fill the first two.
    """

    def has_rows(table: str) -> bool:
        found = store.query_arrow(f"SELECT count() AS n FROM (SELECT 1 FROM {table} LIMIT 1)")
        return bool(found.column("n")[0].as_py())

    if has_rows("points"):
        for table, statement in (
            ("points_rollup", BACKFILL_ROLLUP),
            ("points_rollup_wide", BACKFILL_WIDE),  # after the rollup: folded from it
            ("series_stats", BACKFILL_SERIES_STATS),
        ):
            if not has_rows(table):
                store.command(statement)
    if has_rows("run_fields") and not has_rows("run_search"):
        from .run_search import backfill_run_search

        backfill_run_search(store)
