"""The storage protocol against both backends, the engine's settings, and the DDL
(the storage URL: ``test_store_url.py``).

Every behaviour test runs twice: on chDB embedded in the test process, and on
a ClickHouse server reached over HTTP with clickhouse-connect. The server is
``tests/chdb_http.py``: the real ClickHouse engine (chDB) behind ClickHouse's
HTTP interface, since no current ClickHouse server can be installed here.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import numpy as np
import pyarrow as pa
import pytest

from stride.ingest._tables import build_points
from stride.store import (
    CredentialsRefusedError,
    Params,
    Store,
    StoreError,
    StoreUnavailableError,
    open_store,
)
from stride.store.chdb import ChdbStore
from stride.store.schema import (
    BUCKET_SQL,
    FIRST_KEY,
    LAST_KEY,
    POINTS_COLUMNS,
    ROLLUP_COLUMNS,
    ROLLUP_FROM_PARTIALS,
    ROLLUP_MERGE,
    ROLLUP_PARTIALS_STRUCTURE,
    SERIES_STATS_COLUMNS,
    SERIES_STATS_FROM_PARTIALS,
    SERIES_STATS_MERGE,
    VMAX_SQL,
    VMIN_SQL,
    create_schema,
    ddl,
    rollup_aggregates,
)
from stride.wire import WIRE_VERSION, Batch, MetricBlock

from .conftest import ChdbHttpServer, free_port, run_python


def points(run: str, steps: list[int], values: list[float], ver: int = 1) -> pa.Table:
    n = len(steps)
    return pa.table(
        {
            "run": [run] * n,
            "stream": ["default"] * n,
            "key": ["loss"] * n,
            "step": pa.array(steps, pa.int64()),
            "time": [0.5] * n,
            "timestamp": [1.7e9] * n,
            "value": pa.array(values, pa.float64()),
            "ver": pa.array([ver] * n, pa.uint64()),
        }
    )


@pytest.fixture(scope="module")
def chdb_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    store = ChdbStore(tmp_path_factory.mktemp("chdb"))
    yield store
    store.close()


@pytest.fixture(params=["chdb", "http"])
def store(
    request: pytest.FixtureRequest, chdb_store: ChdbStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    if request.param == "chdb":
        yield chdb_store
        return
    server: ChdbHttpServer = request.getfixturevalue("clickhouse_http")
    http = open_store(server.url())
    yield http
    http.close()


def test_delete_rows_deletes_what_it_selects_and_nothing_else(store: Store) -> None:
    """Both backends (the HTTP one is what a ClickHouse server, or a cluster's
    replicated tables, run) delete with the same call, before it returns."""
    runs = [f"e/p/delete-{store.concurrency}-{n}" for n in ("gone", "kept")]
    for run in runs:
        store.insert_arrow("points", POINTS_COLUMNS, points(run, [1, 2, 3], [1.0, 2.0, 3.0]))
    store.delete_rows("points", "run = {path:String}", {"path": runs[0], "unused": "x"})
    rows = store.query_arrow(
        "SELECT run, count() AS n FROM points WHERE run IN {runs:Array(String)} GROUP BY run",
        {"runs": runs},
    )
    assert rows.to_pylist() == [{"run": runs[1], "n": 3}]


async def test_streamed_pages_cover_the_range_once_in_order(store: Store) -> None:
    """The stream reads page n+1 while page n is sent: every step of the range
    arrives once, in order, whatever the page size, with the keys' gaps kept."""
    from stride.query.stream import row_pages
    from stride.store import AsyncStore

    run_id = f"pages-{store.concurrency}"
    run = f"e/rollup/{run_id}"
    steps = list(range(-5, 2500))
    odd = [s for s in steps if s % 2]
    built = build_points(
        [
            _batch(run_id, 0, 1, steps, a=[float(s) for s in steps]),
            _batch(run_id, 1, 1, odd, b=[-1.0] * len(odd)),
        ]
    )
    assert built is not None
    store.insert_arrow("points", POINTS_COLUMNS, built.table)
    store.insert_select(
        "points_rollup", ROLLUP_COLUMNS, ROLLUP_FROM_PARTIALS, built.rollup,
        ROLLUP_PARTIALS_STRUCTURE,
    )  # fmt: skip
    shared = AsyncStore(store)
    for size, lo, hi in [(100, None, None), (999, 10, 2400), (5000, None, 7)]:
        pages = [
            c async for c in row_pages(
                shared, run, "default", ["a", "b"], min_step=lo, max_step=hi, page_size=size
            )
        ]  # fmt: skip
        want = [s for s in steps if (lo is None or s >= lo) and (hi is None or s <= hi)]
        got = [int(s) for c in pages for s in c.steps]
        assert got == want, (size, lo, hi)
        assert all(len(c) <= size for c in pages) and len(pages) >= len(want) // size
        b_steps = [
            int(s) for c in pages for s, has in zip(c.steps, c.present["b"], strict=True) if has
        ]
        assert b_steps == [s for s in want if s % 2]


def test_points_round_trip_with_every_parameter_kind(store: Store) -> None:
    run = f"e/p/round-trip-{store.concurrency}"
    store.insert_arrow(
        "points", POINTS_COLUMNS, points(run, [1, 2, 3, 4], [0.1, -2.5, math.inf, 4])
    )
    rows = store.query_arrow(
        "SELECT step, value FROM points FINAL WHERE run = {run:String} "
        "AND key IN {keys:Array(String)} AND step IN {steps:Array(Int64)} "
        "AND value > {floor:Float64} ORDER BY step",
        {"run": run, "keys": {"loss", "it's \\ odd"}, "steps": [1, 2, 3], "floor": -1.0},
    )
    assert rows.column("step").to_pylist() == [1, 3]
    assert rows.column("value").to_pylist() == [0.1, math.inf]


@pytest.mark.parametrize(
    "text", ["plain", "new\nline", "tab\there", "back\\slash", "quote's", "\\n"]
)
def test_string_parameters_arrive_exactly_as_given(store: Store, text: str) -> None:
    rows = store.query_arrow(
        "SELECT {s:String} AS s, {a:Array(String)} AS a", {"s": text, "a": [text, "x"]}
    )
    assert rows.column("s").to_pylist() == [text]
    assert rows.column("a").to_pylist() == [[text, "x"]]


def test_a_point_logged_again_replaces_the_older_version(store: Store) -> None:
    run = f"e/p/replace-{store.concurrency}"
    store.insert_arrow("points", POINTS_COLUMNS, points(run, [7], [1.0], ver=5))
    store.insert_arrow("points", POINTS_COLUMNS, points(run, [7], [2.0], ver=9))
    store.insert_arrow("points", POINTS_COLUMNS, points(run, [7], [3.0], ver=6))
    rows = store.query_arrow(
        "SELECT value FROM points FINAL WHERE run = {run:String}", {"run": run}
    )
    assert rows.column("value").to_pylist() == [2.0]


def test_a_step_twice_in_one_insert_reads_back_once_with_the_newer_value(store: Store) -> None:
    """Inserts skip merging on insert (optimize_on_insert=0): reads deduplicate."""
    run = f"e/p/one-insert-{store.concurrency}"
    older, newer = points(run, [3, 4], [1.0, 1.0], ver=7), points(run, [3], [9.0], ver=8)
    both = pa.concat_tables([older, newer])
    store.insert_arrow("points", POINTS_COLUMNS, both)
    rows = store.query_arrow(
        "SELECT step, value FROM points FINAL WHERE run = {run:String} ORDER BY step", {"run": run}
    )
    assert rows.to_pylist() == [{"step": 3, "value": 9.0}, {"step": 4, "value": 1.0}]
    setting = store.query_arrow("SELECT getSetting('optimize_on_insert') AS v")
    assert setting.column("v")[0].as_py() in (0, False)


def _batch(run_id: str, seq: int, ver: int, steps: list[int], **keys: list[float]) -> Batch:
    arr = np.array(steps, "<i8")
    return Batch(
        v=WIRE_VERSION,
        entity="e",
        project="rollup",
        run_id=run_id,
        writer="w",
        seq=seq,
        ver=ver,
        metrics=[
            MetricBlock(
                stream="default",
                keys=list(keys),
                steps=arr.tobytes(),
                times=(arr * 0.5).astype("<f8").tobytes(),
                timestamps=(1.7e9 + arr).astype("<f8").tobytes(),
                values=[np.array(v, "<f8").tobytes() for v in keys.values()],
            )
        ],
    )


def test_a_fetch_of_many_keys_and_batches_is_stored_exactly(store: Store) -> None:
    """Ingest sends run, stream, key and version as dictionaries with the narrowest
    indices that fit: 300 keys and 200 batch versions need 16-bit ones, which must
    reach the database as the right names and versions."""
    run_id = f"wide-{store.concurrency}"
    keys = {f"k{j:03d}": [float(j)] for j in range(300)}
    fetch = [_batch(run_id, i, 1_000 + i, [i], **keys) for i in range(200)]
    built = build_points(fetch)
    assert built is not None
    assert built.table.column("key").type.index_type == pa.int16()
    assert built.table.column("ver").type.index_type == pa.int16()
    assert built.table.column("run").type.index_type == pa.int8()
    store.insert_arrow("points", POINTS_COLUMNS, built.table)
    rows = store.query_arrow(
        "SELECT key, step, ver, value FROM points WHERE run = {run:String} ORDER BY step, key",
        {"run": f"e/rollup/{run_id}"},
    ).to_pylist()
    assert rows == [
        {"key": f"k{j:03d}", "step": i, "ver": 1_000 + i, "value": float(j)}
        for i in range(200)
        for j in range(300)
    ]


def test_ingests_rollup_equals_the_rollup_of_the_raw_points(store: Store) -> None:
    """Ingest folds each fetch into rollup partials: merged, they must say exactly what
    aggregating the stored points says, with NaN, negative steps, out-of-order steps,
    steps re-logged by later batches (in one fetch and across fetches), several
    buckets per batch and buckets spread over batches."""
    run = f"mixed-{store.concurrency}"
    rng = np.random.default_rng(7)
    steps = list(range(-300, 900, 3))
    values = rng.standard_normal(len(steps))
    values[::17] = np.nan
    fetches = [
        [
            _batch(run, 0, 100, steps[:150], loss=list(values[:150]), acc=list(-values[:150])),
            _batch(run, 1, 101, [5, 1, 3, 1], loss=[1.0, 2.0, 3.0, 4.0], acc=[0.0] * 4),
        ],
        [
            _batch(run, 2, 90, steps[100:], loss=list(values[100:]), acc=list(values[100:] * 2)),
            _batch(run, 3, 102, [0, 256, 257], loss=[np.nan, np.nan, 9.0], acc=[1.0] * 3),
        ],
    ]
    # What was inserted, kept whole (a ReplacingMergeTree drops older versions as it
    # merges, while the rollup, like the view it replaces, counts every point logged).
    store.command("CREATE DATABASE IF NOT EXISTS scratch")
    store.command(
        "CREATE TABLE IF NOT EXISTS scratch.inserted_points AS points "
        "ENGINE = MergeTree ORDER BY tuple()"
    )
    for fetch in fetches:
        built = build_points(fetch)
        assert built is not None
        store.insert_arrow("points", POINTS_COLUMNS, built.table)
        store.insert_arrow("scratch.inserted_points", POINTS_COLUMNS, built.table)
        for table, columns, select in (
            ("points_rollup", ROLLUP_COLUMNS, ROLLUP_FROM_PARTIALS),
            ("series_stats", SERIES_STATS_COLUMNS, SERIES_STATS_FROM_PARTIALS),
        ):
            store.insert_select(table, columns, select, built.rollup, ROLLUP_PARTIALS_STRUCTURE)
    where = "WHERE run = {run:String}"
    order = "GROUP BY key, bucket ORDER BY key, bucket"
    rolled = store.query_arrow(
        f"SELECT key, bucket, {ROLLUP_MERGE} FROM points_rollup {where} {order}",
        {"run": f"e/rollup/{run}"},
    )
    raw = store.query_arrow(
        f"SELECT key, {BUCKET_SQL} AS bucket, {rollup_aggregates()} "
        f"FROM scratch.inserted_points {where} {order}",
        {"run": f"e/rollup/{run}"},
    )
    assert rolled.num_rows == raw.num_rows > 8
    assert _nan_safe(rolled.to_pylist()) == _nan_safe(raw.to_pylist())
    assert any(math.isnan(row["fv"]) for row in rolled.to_pylist())  # NaN points were there

    # The series stats, likewise: every value logged, NaN left out of sum, min and max.
    stats = store.query_arrow(
        f"SELECT key, {SERIES_STATS_MERGE} FROM series_stats {where} GROUP BY key ORDER BY key",
        {"run": f"e/rollup/{run}"},
    ).to_pylist()
    raw_stats = store.query_arrow(
        "SELECT key, count() AS count, countIf(NOT isNaN(value)) AS nv, "
        "sumIf(value, NOT isNaN(value)) AS vsum, min(step) AS first_step, "
        f"max(step) AS last_step, {VMIN_SQL} AS min, {VMAX_SQL} AS max, "
        f"argMin(value, {FIRST_KEY}) AS first, argMax(value, {LAST_KEY}) AS last "
        f"FROM scratch.inserted_points {where} GROUP BY key ORDER BY key",
        {"run": f"e/rollup/{run}"},
    ).to_pylist()
    sums = [
        (row.pop("vsum"), other.pop("vsum")) for row, other in zip(stats, raw_stats, strict=True)
    ]
    assert _nan_safe(stats) == _nan_safe(raw_stats) and len(stats) == 2
    assert all(a == pytest.approx(b) for a, b in sums)
    loss = stats[1]
    # Every point logged counts, also re-logged ones; a step twice in one batch is one.
    assert loss["key"] == "loss" and loss["count"] == 150 + 3 + (len(steps) - 100) + 3
    assert loss["first_step"] == -300 and loss["last_step"] == 897
    assert loss["last"] == values[-1]  # step 897, logged once


def test_a_store_from_before_the_series_stats_gets_them_filled_when_opened(
    tmp_path: Path,
) -> None:
    """Points ingested before ``series_stats`` existed count once the store opens.
    (In a fresh interpreter: chDB opens one data directory per process.)"""
    out = run_python(
        textwrap.dedent(
            f"""
            import json
            from pathlib import Path
            from stride.ingest._tables import build_points
            from stride.store.chdb import ChdbStore
            from stride.store.schema import POINTS_COLUMNS, SERIES_STATS_MERGE
            from tests.test_store import _batch

            values = [0.5, float("nan"), -2.0, 7.0, 1.0]
            built = build_points([_batch("old", 0, 100, [0, 1, 2, 3, 4], loss=values)])
            store = ChdbStore(Path({str(tmp_path)!r}))
            store.insert_arrow("points", POINTS_COLUMNS, built.table)  # as before the stats
            store.close()
            store = ChdbStore(Path({str(tmp_path)!r}))  # opening fills what is empty
            stats = store.query_arrow(
                f"SELECT key, {{SERIES_STATS_MERGE}} FROM series_stats GROUP BY key"
            )
            rollup = store.query_arrow(
                "SELECT sum(n) AS n FROM points_rollup UNION ALL "
                "SELECT sum(n) AS n FROM points_rollup_wide"
            )
            print(json.dumps([stats.to_pylist(), rollup.column("n").to_pylist()]))
            """
        )
    )
    stats, rollup = json.loads(out)
    assert stats == [
        {
            "key": "loss",
            **{"count": 5, "nv": 4, "vsum": 6.5, "first_step": 0, "last_step": 4},
            **{"min": -2.0, "max": 7.0, "first": 0.5, "last": 1.0},
        }
    ]
    assert rollup == [5, 5]  # the rollup, and its wide level folded from it


def test_a_store_from_before_run_search_gets_it_filled_when_opened(tmp_path: Path) -> None:
    """Runs stored before ``run_search`` existed are found by search once the store
    opens: their current fields, not an older config's keys, and their metrics'
    last values. (In a fresh interpreter: chDB opens one data directory per process.)"""
    out = run_python(
        textwrap.dedent(
            f"""
            import asyncio, json
            from pathlib import Path
            import msgspec
            from stride.ingest._tables import build_fields, build_points
            from stride.store import AsyncStore
            from stride.store.chdb import ChdbStore
            from stride.store.schema import (
                FIELDS_COLUMNS, POINTS_COLUMNS, SERIES_STATS_COLUMNS, SERIES_STATS_FROM_PARTIALS,
                ROLLUP_PARTIALS_STRUCTURE,
            )
            from stride.query.search import search_run_ids
            from tests.test_store import _batch

            old = msgspec.structs.replace(
                _batch("old", 0, 100, [0, 1, 2], loss=[3.0, 2.0, 1.5]),
                set={{"config": json.dumps({{"lr": 0.1, "gone": 1}})}},
                set_once={{"created_at": json.dumps("2026-01-01T00:00:00+00:00")}},
            )
            newer = msgspec.structs.replace(
                _batch("old", 1, 200, [0], loss=[9.0]), set={{"config": json.dumps({{"lr": 0.1}})}}
            )
            store = ChdbStore(Path({str(tmp_path)!r}))  # as before run_search: no rows there
            store.insert_arrow("run_fields", FIELDS_COLUMNS, build_fields([old, newer]))
            points = build_points([old])
            store.insert_arrow("points", POINTS_COLUMNS, points.table)
            store.insert_select(
                "series_stats", SERIES_STATS_COLUMNS, SERIES_STATS_FROM_PARTIALS, points.rollup,
                ROLLUP_PARTIALS_STRUCTURE,
            )
            store.command("TRUNCATE TABLE run_search")
            store.close()
            store = AsyncStore(ChdbStore(Path({str(tmp_path)!r})))  # opening fills it

            async def found(spec):
                ids, _ = await search_run_ids(
                    store, "e", "rollup", filters=spec, order="-created_at", per_page=10,
                    after=None, lost_after_s=60.0,
                )
                return ids

            specs = [{{"config.lr": 0.1}}, {{"config.gone": 1}}, {{"summary.loss": 1.5}}]
            print(json.dumps([asyncio.run(found(s)) for s in specs]))
            """
        )
    )
    assert json.loads(out) == [["old"], [], ["old"]]


def _nan_safe(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """NaN compares unequal to itself; spell it out so equal rows compare equal."""
    return [
        {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in rows
    ]


def test_the_ledger_forgets_batches_after_its_ttl(store: Store) -> None:
    """The ledger would otherwise grow by a row per batch forever (see LEDGER_TTL)."""
    run = f"e/p/ledger-{store.concurrency}"
    store.command(
        "INSERT INTO batches (run, writer, seq, ver, points, applied_at) VALUES "
        "({run:String}, 'w', 1, 1, 1, now64(3) - INTERVAL 91 DAY), "
        "({run:String}, 'w', 2, 2, 1, now64(3) - INTERVAL 89 DAY)",
        {"run": run},
    )
    store.command("OPTIMIZE TABLE batches FINAL")
    left = store.query_arrow("SELECT seq FROM batches WHERE run = {run:String}", {"run": run})
    assert left.column("seq").to_pylist() == [2]


def test_an_existing_schema_is_not_created_again(store: Store) -> None:
    """In a cluster, ON CLUSTER DDL waits for every server: a complete schema skips it."""

    class Recording:  # the real store, with its commands recorded
        def __init__(self) -> None:
            self.commands: list[str] = []

        def query_arrow(self, sql: str, params: Params | None = None) -> pa.Table:
            return store.query_arrow(sql, params)

        def command(self, sql: str, params: Params | None = None) -> None:
            self.commands.append(sql)
            store.command(sql, params)

    recording = Recording()
    create_schema(recording, "stride")  # type: ignore[arg-type]
    assert recording.commands == []
    create_schema(recording, "fresh_db")  # type: ignore[arg-type]
    assert recording.commands == ddl("fresh_db")


def test_opening_an_old_store_drops_the_rollup_view(tmp_path: Path) -> None:
    """Stores made before ingest wrote the rollup kept it with a materialized view;
    left in place it would count every point twice. (In a fresh interpreter: chDB
    opens one data directory per process.)"""
    out = run_python(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from stride.store.chdb import ChdbStore
            from stride.store.schema import BUCKET_SQL, rollup_aggregates
            old = ChdbStore(Path({str(tmp_path / "old")!r}))
            old.command(
                "CREATE MATERIALIZED VIEW points_rollup_mv TO points_rollup AS "
                f"SELECT run, stream, key, {{BUCKET_SQL}} AS bucket, "
                f"{{rollup_aggregates('State')}} FROM points GROUP BY run, stream, key, bucket"
            )
            old.close()
            again = ChdbStore(Path({str(tmp_path / "old")!r}))
            views = again.query_arrow(
                "SELECT name FROM system.tables WHERE database = 'stride' "
                "AND engine = 'MaterializedView'"
            )
            print(views.column("name").to_pylist())
            """
        )
    )
    assert out.strip() == "[]"


def test_strings_come_back_as_strings_and_results_are_identical(
    chdb_store: ChdbStore, clickhouse_http: ChdbHttpServer
) -> None:
    """Both backends give the same Arrow types, so query code never branches."""
    http = open_store(clickhouse_http.url())
    try:
        sql = "SELECT toString(number) AS s, number AS n FROM numbers(3)"
        assert http.query_arrow(sql).equals(chdb_store.query_arrow(sql))
        assert http.query_arrow(sql).schema.field("s").type == pa.string()
    finally:
        http.close()


def test_an_engine_error_keeps_clickhouses_code_and_message(store: Store) -> None:
    with pytest.raises(StoreError, match=r"Code: 60\..*nope"):
        store.query_arrow("SELECT * FROM nope")
    with pytest.raises(StoreError, match=r"Code: 62\..*SYNTAX_ERROR"):
        store.command("SELEC 1")


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", "none"])
def test_every_compression_the_client_offers_round_trips(
    clickhouse_http: ChdbHttpServer, compress: str
) -> None:
    http = open_store(clickhouse_http.url(compress=compress))
    try:
        run = f"e/p/compress-{compress}"
        steps = list(range(5000))
        http.insert_arrow("points", POINTS_COLUMNS, points(run, steps, [s / 7 for s in steps]))
        rows = http.query_arrow(
            "SELECT step, value FROM points FINAL WHERE run = {run:String} ORDER BY step",
            {"run": run},
        )
        assert rows.column("step").to_pylist() == steps
        assert rows.column("value").to_pylist() == [s / 7 for s in steps]
    finally:
        http.close()


def test_native_inserts_and_results_work_through_the_same_server(
    clickhouse_http: ChdbHttpServer,
) -> None:
    """clickhouse-connect's default path (Native blocks, compressed) on the helper."""
    client = clickhouse_connect.get_client(
        host="127.0.0.1",
        port=clickhouse_http.port,
        username=clickhouse_http.user,
        password=clickhouse_http.password,
        database="stride",
        compress="lz4",
    )
    try:
        client.command(
            "CREATE TABLE IF NOT EXISTS native_rows (a Int64, s String) "
            "ENGINE = MergeTree ORDER BY a"
        )
        client.insert("native_rows", [[1, "x"], [2, "y"]], column_names=["a", "s"])
        result = client.query("SELECT a, s FROM native_rows WHERE a >= {lo:Int64}", {"lo": 2})
        assert result.result_rows == [(2, "y")]
    finally:
        client.close()


def test_a_wrong_password_is_refused_clearly(clickhouse_http: ChdbHttpServer) -> None:
    url = clickhouse_http.url().replace(clickhouse_http.password, "wrong")
    with pytest.raises(CredentialsRefusedError, match="refused user 'stride'") as info:
        open_store(url)
    assert "wrong" not in str(info.value)  # the password is never echoed


def test_an_unreachable_server_is_reported_as_unavailable() -> None:
    port = free_port()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}.*unavailable") as info:
        open_store(f"http://u:secret@127.0.0.1:{port}/stride?connect_timeout=2")
    assert info.value.retriable
    assert "secret" not in str(info.value)


def test_the_database_in_the_url_is_created_and_used(clickhouse_http: ChdbHttpServer) -> None:
    http = open_store(clickhouse_http.url("other_db"))
    try:
        http.insert_arrow("points", POINTS_COLUMNS, points("e/p/other", [1], [1.0]))
        assert (
            http.query_arrow("SELECT currentDatabase() AS d").column("d")[0].as_py() == "other_db"
        )
        in_other = http.query_arrow("SELECT count() AS n FROM other_db.points")
        assert in_other.column("n")[0].as_py() == 1
    finally:
        http.close()


def test_the_embedded_engine_runs_with_its_settings(chdb_store: ChdbStore) -> None:
    """A server's defaults (a 5 GiB mark cache...) would not suit a process beside training."""
    rows = chdb_store.query_arrow(
        "SELECT name, value FROM system.server_settings WHERE name IN {names:Array(String)}",
        {"names": ["mark_cache_size", "primary_index_cache_size", "uncompressed_cache_size"]},
    )
    assert dict(zip(*(rows.column(c).to_pylist() for c in ("name", "value")), strict=True)) == {
        "mark_cache_size": str(64 << 20),
        "primary_index_cache_size": str(64 << 20),
        "uncompressed_cache_size": "0",
    }


# --- the DDL -----------------------------------------------------------------


def _formatted(store: ChdbStore, statement: str) -> str:
    """ClickHouse's own parser reads the statement (a syntax error raises)."""
    result = store.query_arrow("SELECT formatQuery({q:String}) AS f", {"q": statement})
    return str(result.column("f")[0].as_py())


def test_single_server_ddl_is_what_the_embedded_store_runs(chdb_store: ChdbStore) -> None:
    statements = ddl("stride")
    assert all("ON CLUSTER" not in s and "Replicated" not in s for s in statements)
    assert not any("Distributed" in s for s in statements)
    tables = chdb_store.query_arrow(
        "SELECT name, engine FROM system.tables WHERE database = 'stride' ORDER BY name"
    )
    engines = dict(zip(*(tables.column(c).to_pylist() for c in ("name", "engine")), strict=True))
    assert engines == {
        "alert_status": "ReplacingMergeTree",
        "alert_transitions": "ReplacingMergeTree",
        "alerts": "ReplacingMergeTree",
        "artifact_events": "ReplacingMergeTree",
        "batches": "ReplacingMergeTree",
        "events": "ReplacingMergeTree",
        "files": "ReplacingMergeTree",
        "folder_fields": "ReplacingMergeTree",
        "points": "ReplacingMergeTree",
        "points_rollup": "AggregatingMergeTree",
        "points_rollup_wide": "AggregatingMergeTree",
        "run_fields": "ReplacingMergeTree",
        "run_keys": "ReplacingMergeTree",
        "run_search": "ReplacingMergeTree",
        "series_stats": "AggregatingMergeTree",
    }


def test_cluster_ddl_replicates_shards_by_run_and_parses(chdb_store: ChdbStore) -> None:
    statements = ddl("metrics", "main")
    assert all(" ON CLUSTER main" in s for s in statements)
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS metrics ON CLUSTER main"
    formatted = [_formatted(chdb_store, s) for s in statements]
    by_name = {s.split()[5]: s for s in formatted[1:]}  # CREATE TABLE IF NOT EXISTS <name>
    path = "'/clickhouse/tables/{shard}/metrics/%s_local', '{replica}'"
    for table, engine in [
        ("points", f"ReplicatedReplacingMergeTree({path % 'points'}, ver)"),
        ("batches", f"ReplicatedReplacingMergeTree({path % 'batches'})"),
        ("points_rollup", f"ReplicatedAggregatingMergeTree({path % 'points_rollup'})"),
        ("points_rollup_wide", f"ReplicatedAggregatingMergeTree({path % 'points_rollup_wide'})"),
        ("series_stats", f"ReplicatedAggregatingMergeTree({path % 'series_stats'})"),
        ("files", f"ReplicatedReplacingMergeTree({path % 'files'}, updated)"),
    ]:
        assert f"ENGINE = {engine}" in by_name[f"metrics.{table}_local"]
        front = by_name[f"metrics.{table}"]
        assert f"AS metrics.{table}_local" in front
        assert f"ENGINE = Distributed(main, metrics, {table}_local, cityHash64(run))" in front
    for table in ("run_fields", "run_search"):  # a run's fields on one shard
        assert (
            f"Distributed(main, metrics, {table}_local, cityHash64(entity, project, run_id))"
            in by_name[f"metrics.{table}"]
        )
    for table in ("alerts", "folder_fields"):  # a project's alerts and folders on one shard
        assert (
            f"Distributed(main, metrics, {table}_local, cityHash64(entity, project))"
            in by_name[f"metrics.{table}"]
        )
    for table in ("alert_status", "alert_transitions"):  # with the run's points
        assert f"{table}_local, cityHash64(run))" in by_name[f"metrics.{table}"]
    # Ingest writes the rollup; a view from older versions is dropped everywhere.
    assert formatted[-1] == "DROP VIEW IF EXISTS metrics.points_rollup_mv ON CLUSTER main"
    # Every table has its replicated local table and a Distributed one in front.
    assert len(statements) == 1 + 2 * 15 + 1


async def test_history_while_points_arrive_has_no_row_without_values(
    chdb_store: ChdbStore,
) -> None:
    """A point written between history's first query (the range, from the rollup)
    and the next (the buckets) must not leave a row at the old last step with no
    values, nor lose the series' last point: the answer ends at the newest point
    the buckets saw. The second query is delayed by inserting a point first."""
    from stride.query.history import history
    from stride.store import AsyncStore

    run = "race/history/live"
    _load_with_rollups(chdb_store, run, 2000)

    class PointArrives(AsyncStore):
        calls = 0
        run = "race/history/live"

        async def query_arrow(self, sql: str, params: Any = None) -> pa.Table:
            self.calls += 1
            if self.calls == 2:  # after the range was read: a point arrives
                late = points(self.run, [2000], [7.0], 2)
                chdb_store.insert_arrow("points", POINTS_COLUMNS, late)
            return await super().query_arrow(sql, params)

    store = PointArrives(chdb_store)
    cols = await history(
        store, run, "default", ["loss"], samples=100, min_step=None, max_step=None,
        envelope=False,
    )  # fmt: skip
    assert store.calls >= 2 and len(cols) <= 100
    assert bool(cols.present["loss"].all()), cols.steps[~cols.present["loss"]]
    assert int(cols.steps[0]) == 0 and int(cols.steps[-1]) == 2000
    assert cols.values["loss"][-1] == 7.0
    # All the points counted fit in samples: they are answered, not the one more
    # that arrives meanwhile (samples=2000 would get 2001 rows).
    run = "race/history/fits"
    _load_with_rollups(chdb_store, run, 2000)
    store = PointArrives(chdb_store)
    store.run = run
    cols = await history(
        store, run, "default", ["loss"], samples=2000, min_step=None, max_step=None,
        envelope=False,
    )  # fmt: skip
    assert len(cols) == 2000 and int(cols.steps[-1]) == 1999


def _load_with_rollups(store: ChdbStore, run: str, n: int) -> None:
    """``n`` points of ``loss`` at steps 0..n-1, and both rollup levels of them."""
    from stride.store.schema import BACKFILL_WIDE, BUCKET_SQL, rollup_aggregates

    store.insert_arrow("points", POINTS_COLUMNS, points(run, list(range(n)), [1.0] * n))
    store.command(
        f"INSERT INTO points_rollup SELECT run, stream, key, {BUCKET_SQL} AS bucket, "
        f"{rollup_aggregates('State')} FROM points WHERE run = '{run}' "
        "GROUP BY run, stream, key, bucket"
    )
    only_run = f"FROM points_rollup WHERE run = '{run}' GROUP BY"
    store.command(BACKFILL_WIDE.replace("FROM points_rollup GROUP BY", only_run))
