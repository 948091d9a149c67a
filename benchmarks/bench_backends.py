"""Store backends compared: chDB embedded two ways, and two ClickHouse HTTP clients.

1. **Embedded.** ``ChdbStore`` (chDB's ``Session`` used directly: results as
   ``ArrowTable``, inserts through the ``Python(data)`` table function over the
   Arrow table) against clickhouse-connect's chDB backend
   (``get_client(interface="chdb", path=DIR)``: results as Arrow IPC bytes it
   reads back, inserts written as an Arrow IPC file to a temporary file and
   loaded with ``INSERT ... FROM INFILE ... FORMAT Arrow``). Each runs in a
   process of its own on a fresh data directory (chDB hosts one data directory
   a process), with the same schema (``schema.ddl("stride")``, rollup view
   included) and the same work:

   * inserts of the points tables ingest builds (``build_points`` over
     decoded batches: by default 16 fetches of 128 batches x 100 rows x 10
     keys = 2,048,000 points, one insert a fetch, after one untimed warm-up
     insert into a copy of ``points``), as points/s and process CPU (chDB runs
     in the process, so its insert and view work is counted);
   * after ``OPTIMIZE TABLE ... FINAL`` (so both see the same parts), queries
     copied from ``query/scan.py`` and ``query/history.py``, each returning an
     Arrow table, timed ``--reps`` times after one warm-up: median and p90
     wall time, median CPU.

2. **HTTP.** clickhouse-connect's synchronous client on a thread pool (our
   ``AsyncStore(ClickHouseStore)``, 8 threads) against its asyncio client
   (``get_async_client``: aiohttp for the requests, Arrow encoding and decoding
   in executor threads), both with lz4 and query retries off, each against a
   fresh ``tests/chdb_http.py`` server and in a process of its own:

   * ``--queries`` small queries (the one-key scan, ``LIMIT 1000``), at most
     ``--concurrency`` in flight from as many coroutines;
   * inserts of the same points tables, one at a time as ingest sends them
     (after the same warm-up insert).

   Reported: requests/s, latency, and the client process's CPU per request.
   ``tests/chdb_http.py`` is a Python test helper (aiohttp in front of one chDB
   session, one query at a time), not a ClickHouse server: its throughput is
   not a server's, and it is the same for both clients. Only the client-side
   figures (CPU per request above all) compare the clients.

Usage: python benchmarks/bench_backends.py [--rounds 3] [--fetches 16] [--reps 30]
       [--queries 200] [--concurrency 8] [--only embedded|http]

The script runs itself once per backend and round (``--backend NAME``; that
process prints its figures as one JSON line), alternating which side goes
first. This VM's speed drifts between processes (each prints its ``speed``),
so a ratio from one round is noise-prone: the summary gives every round's
ratio and their median. About 25 s a round here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from _machine import calibrate, print_machine
from _server import DIE_WITH_PARENT, ROOT, cpu_seconds, handle_sigterm, percentile

#: Embedded backends, then HTTP clients: (name for --backend, label in the tables).
EMBEDDED = (("chdb", "ChdbStore (chdb Session)"), ("cc-chdb", "clickhouse-connect chdb"))
HTTP = (("http-threads", "sync client, 8 threads"), ("http-asyncio", "asyncio client"))
#: The credentials tests/conftest.py's ChdbHttpServer starts the helper with.
USER, PASSWORD = "stride", "s3cret"
RESULT = "RESULT "  # prefix of the JSON line a backend process prints

_ONE_KEY = "run = {run:String} AND stream = {stream:String} AND key = {key:String}"
_KEYS = "run = {run:String} AND stream = {stream:String} AND key IN {keys:Array(String)}"
#: query/scan.py, one key: ``ORDER BY step LIMIT n`` reads the index in order.
SCAN_ONE = (
    f"SELECT key, step, value FROM points FINAL WHERE {_ONE_KEY} "
    "AND step BETWEEN {lo:Int64} AND {hi:Int64} ORDER BY step LIMIT {n:UInt32}"
)
#: query/scan.py, several keys: every key's rows up to the page bound.
SCAN_KEYS = (
    f"SELECT key, step, value FROM points FINAL WHERE {_KEYS} "
    "AND step BETWEEN {lo:Int64} AND {bound:Int64} ORDER BY key, step"
)
#: First-call costs are paid by one insert into a copy of ``points`` (no view on it).
WARMUP_TABLE = "CREATE TABLE IF NOT EXISTS points_warmup AS points"


#: The rollup as a view on points, as the schema kept it until ingest wrote it
#: itself (after c10e5d2): both backends do the same insert work, view included,
#: as in the recorded runs.
def rollup_view() -> str:
    from stride.store.schema import BUCKET_SQL, rollup_aggregates

    return (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS stride.points_rollup_mv TO stride.points_rollup "
        f"AS SELECT run, stream, key, {BUCKET_SQL} AS bucket, {rollup_aggregates('State')} "
        "FROM stride.points GROUP BY run, stream, key, bucket"
    )


#: Rollup buckets per sample bucket in the history query (256 steps each).
SPAN = 4


def rollup_sql() -> str:
    """query/history.py ``_rollup_buckets``: sample buckets merged from rollup rows."""
    from stride.store.schema import ROLLUP_MERGE

    return (
        f"SELECT key, intDiv(bucket - {{origin_bucket:Int64}}, {SPAN}) AS sb, {ROLLUP_MERGE} "
        f"FROM points_rollup WHERE {_KEYS} AND bucket BETWEEN {{b_lo:Int64}} AND {{b_hi:Int64}} "
        "GROUP BY key, sb ORDER BY key, sb"
    )


# ---- the data: what ingest inserts ------------------------------------------


class Workload:
    """The points tables (one per fetch) and the series they hold."""

    def __init__(self, args: argparse.Namespace) -> None:
        sys.path.insert(0, str(ROOT))
        from deploy.capacity import KEYS, batch
        from stride.ingest._tables import build_points
        from stride.wire import decode_batch, encode_batch

        self.keys = KEYS[: args.keys]
        rng = np.random.default_rng(0)
        self.tables: list[pa.Table] = []
        seq = 0
        for _ in range(args.fetches):
            fetch = []
            for _ in range(args.batches):
                fetch.append(decode_batch(encode_batch(batch(args.rows, self.keys, seq, rng))))
                seq += 1
            built = build_points(fetch)
            assert built is not None
            self.tables.append(built.table)
        self.run = fetch[0].path
        self.stream = "default"
        self.steps = seq * args.rows  # steps 0 .. steps-1 for every key
        self.points = sum(t.num_rows for t in self.tables)

    def scan_one(self, n: int, count: int, seed: int = 1) -> list[dict[str, Any]]:
        """Parameters of ``count`` one-key scans of ``n`` rows: keys in turn, random starts."""
        rng = np.random.default_rng(seed)
        return [
            {
                "run": self.run,
                "stream": self.stream,
                "key": self.keys[i % len(self.keys)],
                "lo": int(rng.integers(0, self.steps - n + 1)),
                "hi": self.steps - 1,
                "n": n,
            }
            for i in range(count)
        ]

    def queries(self, count: int) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        """name: (SQL, parameters of each of ``count`` calls); the same for every backend."""
        from stride.store.schema import ROLLUP_STEPS

        rng = np.random.default_rng(2)
        keys = sorted(self.keys)
        big, width = min(100_000, self.steps), min(10_000, self.steps)
        starts = (int(rng.integers(0, self.steps - width + 1)) for _ in range(count))
        scan_keys = [
            {
                "run": self.run,
                "stream": self.stream,
                "keys": keys,
                "lo": lo,
                "bound": lo + width - 1,
            }
            for lo in starts
        ]
        rollup = {
            "run": self.run,
            "stream": self.stream,
            "keys": keys,
            "origin_bucket": 0,
            "b_lo": 0,
            "b_hi": self.steps // ROLLUP_STEPS - 1,
        }
        return {
            "scan 1 key, LIMIT 1,000": (SCAN_ONE, self.scan_one(1000, count)),
            f"scan 1 key, LIMIT {big:,}": (SCAN_ONE, self.scan_one(big, count, seed=3)),
            f"scan {len(keys)} keys x {width:,} steps": (SCAN_KEYS, scan_keys),
            f"history rollup, {len(keys)} keys": (rollup_sql(), [rollup] * count),
        }


# ---- embedded backends (one process each) -----------------------------------


class Embedded(Protocol):
    def insert(self, name: str, table: pa.Table) -> None: ...
    def query(self, sql: str, params: dict[str, Any]) -> pa.Table: ...
    def command(self, sql: str) -> None: ...
    def close(self) -> None: ...


class OurChdb:
    """``stride.store.chdb.ChdbStore``, as ``open_store("chdb:///DIR")`` opens it."""

    def __init__(self, path: Path) -> None:
        from stride.store.chdb import ChdbStore
        from stride.store.schema import POINTS_COLUMNS

        self.columns = POINTS_COLUMNS
        self.store = ChdbStore(path)  # creates the schema (ddl("stride")) and USEs it
        self.store.command(rollup_view())

    def insert(self, name: str, table: pa.Table) -> None:
        self.store.insert_arrow(name, self.columns, table)

    def query(self, sql: str, params: dict[str, Any]) -> pa.Table:
        return self.store.query_arrow(sql, params)

    def command(self, sql: str) -> None:
        self.store.command(sql)

    def close(self) -> None:
        self.store.close()


class ConnectChdb:
    """clickhouse-connect's in-process chDB client, used as ``ClickHouseStore`` uses
    its HTTP client (``insert_arrow`` of the selected columns, ``query_arrow``)."""

    def __init__(self, path: Path) -> None:
        import clickhouse_connect

        from stride.store.schema import POINTS_COLUMNS, ddl

        self.columns = list(POINTS_COLUMNS)
        self.client = clickhouse_connect.get_client(interface="chdb", path=str(path))
        for statement in ddl("stride"):
            self.client.command(statement)
        self.client.command(rollup_view())
        self.client.database = "stride"

    def insert(self, name: str, table: pa.Table) -> None:
        self.client.insert_arrow(name, table.select(self.columns))

    def query(self, sql: str, params: dict[str, Any]) -> pa.Table:
        result = self.client.query_arrow(sql, parameters=params, use_strings=True)
        assert isinstance(result, pa.Table)
        return result

    def command(self, sql: str) -> None:
        self.client.command(sql)

    def close(self) -> None:
        self.client.close()


def summary(wall_ms: list[float], cpu_ms: list[float]) -> dict[str, float]:
    s = sorted(wall_ms)
    return {
        "median_ms": percentile(s, 50),
        "p90_ms": percentile(s, 90),
        "cpu_ms": statistics.median(cpu_ms),
    }


def run_embedded(args: argparse.Namespace) -> dict[str, Any]:
    work = Workload(args)
    out: dict[str, Any] = {"points": work.points, "inserts": len(work.tables)}
    with tempfile.TemporaryDirectory(prefix="stride-bench-backends-") as tmp:
        t0 = time.perf_counter()
        store: Embedded = (OurChdb if args.backend == "chdb" else ConnectChdb)(Path(tmp) / "ch")
        out["open_s"] = time.perf_counter() - t0

        store.command(WARMUP_TABLE)
        store.insert("points_warmup", work.tables[0])

        wall, cpu = [], []
        c0, t0 = time.process_time(), time.perf_counter()
        for table in work.tables:
            c1, t1 = time.process_time(), time.perf_counter()
            store.insert("points", table)
            wall.append((time.perf_counter() - t1) * 1e3)
            cpu.append((time.process_time() - c1) * 1e3)
        out["insert_s"], out["insert_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        out["insert"] = summary(wall, cpu)

        t0 = time.perf_counter()
        for name in ("points", "points_rollup"):
            store.command(f"OPTIMIZE TABLE {name} FINAL")
        out["optimize_s"] = time.perf_counter() - t0
        base = {"run": work.run, "stream": work.stream}
        stored = store.query(
            f"SELECT count() AS n FROM points FINAL WHERE {_KEYS}",
            {**base, "keys": work.keys},
        )
        out["stored"] = int(stored.column("n")[0].as_py())
        rolled = store.query("SELECT sum(n) AS n FROM points_rollup", {})
        out["rolled_up"] = int(rolled.column("n")[0].as_py())

        out["queries"] = {}
        for name, (sql, calls) in work.queries(args.reps + 1).items():
            first = store.query(sql, calls[0])  # warm-up
            wall, cpu = [], []
            for params in calls[1:]:
                c1, t1 = time.process_time(), time.perf_counter()
                result = store.query(sql, params)
                wall.append((time.perf_counter() - t1) * 1e3)
                cpu.append((time.process_time() - c1) * 1e3)
                assert result.num_rows == first.num_rows, (name, result.num_rows)
            out["queries"][name] = {
                "rows": first.num_rows,
                "types": str([str(f.type) for f in first.schema][:3]),
                **summary(wall, cpu),
            }
        store.close()
    return out


# ---- HTTP clients (one process each, against tests/chdb_http.py) ------------


class HttpClient(Protocol):
    async def insert(self, name: str, table: pa.Table) -> None: ...
    async def query(self, sql: str, params: dict[str, Any]) -> pa.Table: ...
    async def command(self, sql: str) -> None: ...
    async def close(self) -> None: ...


class ThreadedClient:
    """``AsyncStore(ClickHouseStore)``: the sync client on ``concurrency`` threads."""

    def __init__(self, port: int) -> None:
        from stride.store import AsyncStore, ClickHouseConfig
        from stride.store.clickhouse import ClickHouseStore
        from stride.store.schema import POINTS_COLUMNS

        config = ClickHouseConfig(
            host="127.0.0.1", port=port, secure=False, user=USER, password=PASSWORD
        )
        self.columns = POINTS_COLUMNS
        self.store = AsyncStore(ClickHouseStore(config))  # creates the schema

    async def insert(self, name: str, table: pa.Table) -> None:
        await self.store.insert_arrow(name, self.columns, table)

    async def query(self, sql: str, params: dict[str, Any]) -> pa.Table:
        return await self.store.query_arrow(sql, params)

    async def command(self, sql: str) -> None:
        await asyncio.to_thread(self.store.sync.command, sql)

    async def close(self) -> None:
        await self.store.close()


class AsyncioClient:
    """clickhouse-connect's ``AsyncClient``, configured as ``ClickHouseStore`` is."""

    def __init__(self, client: Any) -> None:
        from stride.store.schema import POINTS_COLUMNS

        self.client = client
        self.columns = list(POINTS_COLUMNS)

    @classmethod
    async def open(cls, port: int) -> AsyncioClient:
        import clickhouse_connect

        from stride.store.schema import ddl

        client = await clickhouse_connect.get_async_client(
            host="127.0.0.1",
            port=port,
            interface="http",
            username=USER,
            password=PASSWORD,
            connect_timeout=10,
            send_receive_timeout=300,
            compress="lz4",
            autogenerate_session_id=False,
            query_retries=0,
        )
        for statement in ddl("stride"):
            await client.command(statement)
        client.database = "stride"
        return cls(client)

    async def insert(self, name: str, table: pa.Table) -> None:
        await self.client.insert_arrow(name, table.select(self.columns))

    async def query(self, sql: str, params: dict[str, Any]) -> pa.Table:
        result = await self.client.query_arrow(sql, parameters=params, use_strings=True)
        assert isinstance(result, pa.Table)
        return result

    async def command(self, sql: str) -> None:
        await self.client.command(sql)

    async def close(self) -> None:
        await self.client.close()


async def timed_requests(
    call: Callable[[dict[str, Any]], Awaitable[int]],
    jobs: list[dict[str, Any]],
    concurrency: int,
    server_pid: int,
) -> dict[str, Any]:
    """Run ``call`` over ``jobs`` from ``concurrency`` coroutines: wall, client and
    server CPU, per-request latency, rows returned."""
    pending = list(reversed(jobs))
    latencies: list[float] = []
    rows: list[int] = []

    async def worker() -> None:
        while pending:
            params = pending.pop()
            t0 = time.perf_counter()
            rows.append(await call(params))
            latencies.append((time.perf_counter() - t0) * 1e3)

    s0, c0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    server = cpu_seconds(server_pid) - s0
    s = sorted(latencies)
    return {
        "requests": len(jobs),
        "wall_s": wall,
        "per_s": len(jobs) / wall,
        "cpu_ms": cpu / len(jobs) * 1e3,
        "server_cpu_ms": server / len(jobs) * 1e3,
        "median_ms": percentile(s, 50),
        "p90_ms": percentile(s, 90),
        "rows": sorted(set(rows)),
    }


async def run_http(args: argparse.Namespace) -> dict[str, Any]:
    work = Workload(args)
    if args.backend == "http-threads":
        client: HttpClient = ThreadedClient(args.port)
    else:
        client = await AsyncioClient.open(args.port)
    out: dict[str, Any] = {"points": work.points}
    try:
        await client.command(WARMUP_TABLE)
        await client.insert("points_warmup", work.tables[0])
        tables = iter(work.tables)

        async def insert(_: dict[str, Any]) -> int:
            table = next(tables)
            await client.insert("points", table)
            return int(table.num_rows)

        out["insert"] = await timed_requests(insert, [{} for _ in work.tables], 1, args.server_pid)
        for name in ("points", "points_rollup"):
            await client.command(f"OPTIMIZE TABLE {name} FINAL")

        warmup = 2 * args.concurrency
        calls = work.scan_one(1000, warmup + args.queries)

        async def query(params: dict[str, Any]) -> int:
            return int((await client.query(SCAN_ONE, params)).num_rows)

        # Warm-up: every connection of the pool opened, first-call costs paid.
        await timed_requests(query, calls[:warmup], args.concurrency, args.server_pid)
        out["query"] = await timed_requests(
            query, calls[warmup:], args.concurrency, args.server_pid
        )
    finally:
        await client.close()
    return out


# ---- the parent: start each backend's process, print the tables -------------


@contextmanager
def chdb_http_server() -> Iterator[tuple[int, int]]:
    """``tests/chdb_http.py`` on a fresh data directory: (port, pid)."""
    from tests.conftest import ChdbHttpServer

    tmp = Path(tempfile.mkdtemp(prefix="stride-bench-chdb-http-"))
    server = ChdbHttpServer(tmp / "data").start()
    try:
        assert server.proc is not None
        yield server.port, server.proc.pid
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def spawn(args: argparse.Namespace, backend: str, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--backend", backend, *extra]
    cmd += ["--fetches", str(args.fetches), "--batches", str(args.batches)]
    cmd += ["--rows", str(args.rows), "--keys", str(args.keys), "--reps", str(args.reps)]
    cmd += ["--queries", str(args.queries), "--concurrency", str(args.concurrency)]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, text=True, timeout=600, preexec_fn=DIE_WITH_PARENT
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not lines:
        raise SystemExit(f"{backend}: exit status {proc.returncode}\n{proc.stdout[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT) :])
    print(f"  {backend:<13} done in {time.perf_counter() - t0:5.1f} s", flush=True)
    return result


def ratio(ours: float, theirs: float) -> str:
    return f"{theirs / ours:5.2f}x" if ours else "  n/a"


def print_embedded(res: dict[str, dict[str, Any]]) -> None:
    a, b = (res[name] for name, _ in EMBEDDED)
    la, lb = (label for _, label in EMBEDDED)
    w = 30
    print(
        f"\nEmbedded: {a['points']:,} points in {a['inserts']} inserts (one a fetch), "
        "then OPTIMIZE FINAL and queries"
    )
    print(f"  {'':<40} {la:>{w}} {lb:>{w}}   cc / ours")
    rows: list[tuple[str, float, float, str]] = [
        ("speed, calibration ns (lower = faster)", a["speed_ns"], b["speed_ns"], ".1f"),
        ("insert: points/s", a["points"] / a["insert_s"], b["points"] / b["insert_s"], ",.0f"),
        ("insert: wall s, all fetches", a["insert_s"], b["insert_s"], ".2f"),
        ("insert: CPU s, all fetches", a["insert_cpu_s"], b["insert_cpu_s"], ".2f"),
        (
            "insert: CPU us/point",
            a["insert_cpu_s"] / a["points"] * 1e6,
            b["insert_cpu_s"] / b["points"] * 1e6,
            ".3f",
        ),
        ("insert: ms a fetch, median", a["insert"]["median_ms"], b["insert"]["median_ms"], ".1f"),
        ("insert: ms a fetch, p90", a["insert"]["p90_ms"], b["insert"]["p90_ms"], ".1f"),
    ]
    for label, x, y, spec in rows:
        print(f"  {label:<40} {x:>{w}{spec}} {y:>{w}{spec}}   {ratio(x, y)}")
    cells = [
        ("rows stored (FINAL) / rolled up", "{stored:,} / {rolled_up:,}"),
        ("open + schema s; OPTIMIZE FINAL s", "{open_s:.2f}; {optimize_s:.2f}"),
    ]
    for label, template in cells:
        print(f"  {label:<40} {template.format(**a):>{w}} {template.format(**b):>{w}}")
    print(f"  queries (ms: median / p90 wall, median CPU; {len(a['queries'])} kinds):")
    for name, qa in a["queries"].items():
        qb = b["queries"][name]
        cell_a = f"{qa['median_ms']:.2f} / {qa['p90_ms']:.2f} / {qa['cpu_ms']:.2f}"
        cell_b = f"{qb['median_ms']:.2f} / {qb['p90_ms']:.2f} / {qb['cpu_ms']:.2f}"
        label = f"{name} ({qa['rows']:,} rows)"
        if qa["rows"] != qb["rows"]:
            label += f" [rows differ: {qb['rows']:,}]"
        print(
            f"  {label:<40} {cell_a:>{w}} {cell_b:>{w}}   {ratio(qa['median_ms'], qb['median_ms'])}"
        )
    for name, label in EMBEDDED:
        types = next(iter(res[name]["queries"].values()))["types"]
        print(f"  result types (key, step, value), {label}: {types}")


def print_http(res: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    a, b = (res[name] for name, _ in HTTP)
    la, lb = (label for _, label in HTTP)
    w = 24
    print(
        "\nHTTP against tests/chdb_http.py: a Python TEST HELPER (aiohttp + one chDB session, "
        "one query at a time),\nnot a ClickHouse server. Its throughput is not a server's; "
        "compare the clients by their CPU."
    )
    print(f"  {'':<44} {la:>{w}} {lb:>{w}}   asyncio / threads")
    speed = "speed, calibration ns (lower = faster)"
    print(f"  {speed:<44} {a['speed_ns']:>{w}.1f} {b['speed_ns']:>{w}.1f}")
    for part, title in (
        ("query", f"{args.queries} x one-key scan LIMIT 1000, {args.concurrency} in flight"),
        (
            "insert",
            f"{a['insert']['requests']} inserts of {a['points'] // a['insert']['requests']:,}"
            " points, one at a time",
        ),
    ):
        pa_, pb = a[part], b[part]
        print(f"  {title}")
        for label, key, spec in (
            ("requests/s", "per_s", ",.1f"),
            ("client CPU ms/request", "cpu_ms", ".2f"),
            ("latency ms, median", "median_ms", ".1f"),
            ("latency ms, p90", "p90_ms", ".1f"),
            ("server CPU ms/request (same server)", "server_cpu_ms", ".2f"),
        ):
            print(
                f"    {label:<42} {pa_[key]:>{w}{spec}} {pb[key]:>{w}{spec}}   "
                f"{ratio(pa_[key], pb[key])}"
            )
        print(f"    {'rows a request':<42} {pa_['rows']!s:>{w}} {pb['rows']!s:>{w}}")


#: Summary rows: (label, figure of one backend's result). Higher or lower is better
#: as the label says; the ratio is always the other side's figure over ours.
Figure = Callable[[dict[str, Any]], float]
EMBEDDED_FIGURES: list[tuple[str, Figure]] = [
    ("insert points/s (higher = better)", lambda r: r["points"] / r["insert_s"]),
    ("insert CPU us/point", lambda r: r["insert_cpu_s"] / r["points"] * 1e6),
    ("insert ms a fetch, median", lambda r: r["insert"]["median_ms"]),
]
HTTP_FIGURES: list[tuple[str, Figure]] = [
    ("queries/s (higher = better)", lambda r: r["query"]["per_s"]),
    ("query: client CPU ms/request", lambda r: r["query"]["cpu_ms"]),
    ("query: latency ms, median", lambda r: r["query"]["median_ms"]),
    ("inserts/s (higher = better)", lambda r: r["insert"]["per_s"]),
    ("insert: client CPU ms/request", lambda r: r["insert"]["cpu_ms"]),
    ("insert: latency ms, median", lambda r: r["insert"]["median_ms"]),
    ("server CPU ms/query (same server)", lambda r: r["query"]["server_cpu_ms"]),
]


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.2f}"


def query_figure(name: str, field: str) -> Figure:
    return lambda r: float(r["queries"][name][field])


def print_summary(rounds: list[dict[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    print(
        f"\n--- summary over {len(rounds)} rounds: median of each side's figure, "
        "the ratio (other / ours) in each round, and its median ---"
    )
    sections: list[tuple[str, tuple[tuple[str, str], ...], list[tuple[str, Figure]]]] = []
    if args.only in (None, "embedded"):
        first = rounds[0][EMBEDDED[0][0]]
        figures = list(EMBEDDED_FIGURES)
        for name in first["queries"]:
            figures.append((f"{name}: median ms", query_figure(name, "median_ms")))
            figures.append((f"{name}: CPU ms", query_figure(name, "cpu_ms")))
        sections.append(("Embedded", EMBEDDED, figures))
    if args.only in (None, "http"):
        sections.append(("HTTP (tests/chdb_http.py, a test helper)", HTTP, HTTP_FIGURES))
    for title, (ours, theirs), figures in sections:
        print(f"{title}: ours = {ours[1]}, other = {theirs[1]}")
        print(f"  {'':<44} {'ours':>11} {'other':>11}   other / ours by round   median")
        for label, figure in figures:
            a = [figure(res[ours[0]]) for res in rounds]
            b = [figure(res[theirs[0]]) for res in rounds]
            ratios = [y / x for x, y in zip(a, b, strict=True)]
            by_round = " ".join(f"{q:.2f}" for q in ratios)
            ma, mb, mr = (statistics.median(v) for v in (a, b, ratios))
            print(f"  {label:<44} {number(ma):>11} {number(mb):>11}   {by_round:<21} {mr:>6.2f}x")


def versions() -> str:
    names = ("chdb", "chdb-core", "clickhouse-connect", "aiohttp", "pyarrow")
    found = []
    for name in names:
        with suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fetches", type=int, default=16, help="inserts (one per fetch)")
    ap.add_argument("--batches", type=int, default=128, help="batches a fetch")
    ap.add_argument("--rows", type=int, default=100, help="rows (steps) a batch")
    ap.add_argument("--keys", type=int, default=10, help="keys a batch")
    ap.add_argument("--reps", type=int, default=30, help="timed calls of each embedded query")
    ap.add_argument("--queries", type=int, default=200, help="HTTP queries timed")
    ap.add_argument("--concurrency", type=int, default=8, help="HTTP queries in flight")
    ap.add_argument(
        "--rounds", type=int, default=3, help="runs of every backend, order alternating"
    )
    ap.add_argument("--only", choices=("embedded", "http"), default=None)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.backend in dict(EMBEDDED) or args.backend in dict(HTTP):
        speed = calibrate()  # this process's CPU speed: the VM's drifts between processes
        run = run_embedded(args) if args.backend in dict(EMBEDDED) else asyncio.run(run_http(args))
        print(RESULT + json.dumps({**run, "speed_ns": speed}), flush=True)
        return

    handle_sigterm()
    print_machine("bench_backends: chDB embedded two ways; threaded vs asyncio HTTP client")
    print(f"  {versions()}")
    points = args.fetches * args.batches * args.rows * args.keys
    print(
        f"  workload: {args.fetches} fetches x {args.batches} batches x {args.rows} rows x "
        f"{args.keys} keys = {points:,} points; {args.reps} reps a query; "
        f"HTTP {args.queries} queries, {args.concurrency} in flight\n"
    )
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(args.rounds):
        # Alternate the order, so neither side always runs first (the VM's speed drifts).
        embedded, http = (EMBEDDED, HTTP) if r % 2 == 0 else (EMBEDDED[::-1], HTTP[::-1])
        print(f"round {r + 1} of {args.rounds}:", flush=True)
        results: dict[str, dict[str, Any]] = {}
        if args.only in (None, "embedded"):
            for name, _ in embedded:
                results[name] = spawn(args, name)
        if args.only in (None, "http"):
            for name, _ in http:
                with chdb_http_server() as (port, pid):
                    results[name] = spawn(args, name, "--port", str(port), "--server-pid", str(pid))
        rounds.append(results)
    for r, results in enumerate(rounds):
        print(f"\n--- round {r + 1} of {args.rounds} ---")
        if args.only in (None, "embedded"):
            print_embedded(results)
        if args.only in (None, "http"):
            print_http(results, args)
    if args.rounds > 1:
        print_summary(rounds, args)


if __name__ == "__main__":
    main()
