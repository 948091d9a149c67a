"""Ingest throughput: one or two workers, one NATS node or a 3-node JetStream cluster.

For each configuration: start NATS (one ``nats-server``, or three forming a
cluster with the stream at 3 replicas), publish ``--batches`` batches of
``--rows`` rows x 10 keys to the stream with nobody consuming (timed: the
publish rate shows what replication costs a writer), then start
``stride ingest --workers N`` on a fresh embedded store (chDB) and time how
long it takes to apply the backlog (from when its workers read the stream:
start-up excluded). CPU seconds of ingest and of the NATS servers are
reported. Ingest's own counter must end at exactly batches x rows x keys.

Usage: python benchmarks/bench_ingest.py [--batches 300] [--rows 2000]
       [--configs single:1,single:2,cluster:1,cluster:2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nats
import numpy as np
from _machine import print_machine
from _server import DIE_WITH_PARENT, ROOT, Http, cpu_seconds, fmt_rate, ingested_points

sys.path.insert(0, str(ROOT))

from stride.ingest.streams import ensure_streams
from stride.wire import (
    INGEST_SUBJECT,
    WIRE_VERSION,
    Batch,
    MetricBlock,
    encode_batch,
    message_id,
)
from tests.conftest import NatsCluster, free_port

KEYS = tuple(f"metric_{j}" for j in range(10))


def payloads(batches: int, rows: int) -> list[tuple[bytes, str]]:
    """Encoded batches of one run (steps follow on), with their message ids."""
    rng = np.random.default_rng(0)
    out = []
    for seq in range(batches):
        steps = np.arange(seq * rows, (seq + 1) * rows, dtype="<i8")
        batch = Batch(
            v=WIRE_VERSION,
            entity="bench",
            project="ingest",
            run_id="backlog",
            writer="w0",
            seq=seq,
            ver=1_700_000_000_000_000_000 + seq,
            metrics=[
                MetricBlock(
                    stream="default",
                    steps=steps.tobytes(),
                    times=(steps * 0.01).astype("<f8").tobytes(),
                    timestamps=(1.7e9 + steps * 0.01).astype("<f8").tobytes(),
                    keys=list(KEYS),
                    values=[rng.standard_normal(rows).astype("<f8").tobytes() for _ in KEYS],
                )
            ],
        )
        out.append((encode_batch(batch), message_id(batch.path, batch.writer, seq)))
    return out


class Nats:
    """One nats-server or a 3-node cluster, with the pids whose CPU counts."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.cluster: NatsCluster | None = None
        self.single: subprocess.Popen[bytes] | None = None
        if kind == "cluster":
            self.cluster = NatsCluster(directory).start()
            self.url = self.cluster.url
        else:
            from stride.cli._nats_server import nats_server_binary

            port = free_port()
            self.single = subprocess.Popen(
                [nats_server_binary(), "-js", "-sd", str(directory), "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=DIE_WITH_PARENT,
            )
            self.url = f"nats://127.0.0.1:{port}"
            time.sleep(1.0)

    @property
    def replicas(self) -> int:
        return 3 if self.cluster else 1

    def pids(self) -> list[int]:
        if self.cluster:
            return [p.pid for p in self.cluster.procs if p is not None]
        assert self.single is not None
        return [self.single.pid]

    def stop(self) -> None:
        if self.cluster:
            self.cluster.stop()
        if self.single:
            self.single.terminate()
            self.single.wait()


async def publish(url: str, replicas: int, items: list[tuple[bytes, str]]) -> float:
    """Publish every batch (acknowledged by JetStream, 64 in flight); return seconds."""
    nc = await nats.connect(url.split(","))
    js = nc.jetstream()
    await ensure_streams(js, replicas=replicas)
    started = time.perf_counter()
    window = 64
    for i in range(0, len(items), window):
        await asyncio.gather(
            *(
                js.publish(INGEST_SUBJECT, data, headers={"Nats-Msg-Id": ident}, timeout=30)
                for data, ident in items[i : i + window]
            )
        )
    elapsed = time.perf_counter() - started
    await nc.close()
    return elapsed


def run_config(kind: str, workers: int, items: list[tuple[bytes, str]], points: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        server = Nats(kind, Path(tmp) / "nats")
        try:
            nats_cpu0 = sum(cpu_seconds(p) for p in server.pids())
            publish_s = asyncio.run(publish(server.url, server.replicas, items))
            nats_cpu1 = sum(cpu_seconds(p) for p in server.pids())
            port = free_port()
            env = {
                **os.environ,
                "STRIDE_NATS_URL": server.url,
                "STRIDE_STORE": f"chdb://{tmp}/clickhouse",
                "STRIDE_STREAM_REPLICAS": str(server.replicas),
                "STRIDE_HOST": "127.0.0.1",
                "STRIDE_HTTP_PORT": str(port),
                "STRIDE_INGEST_WORKERS": str(workers),
            }
            ingest = subprocess.Popen(
                [sys.executable, "-m", "stride.cli", "ingest"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=DIE_WITH_PARENT,
            )
            try:
                # The clock starts once the workers read the stream (/readyz), so
                # start-up (imports, opening chDB) is not counted.
                _wait_until_serving(f"http://127.0.0.1:{port}/readyz")
                first, cpu_at_first = time.perf_counter(), cpu_seconds(ingest.pid)
                http = Http(f"http://127.0.0.1:{port}")
                last = None
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    done = ingested_points(http)
                    now = time.perf_counter()
                    if done >= points:
                        last = now
                        break
                    time.sleep(0.01)
                assert last is not None, "ingest did not finish"
                assert ingested_points(http) == points, "ingest applied a batch twice"
                ingest_cpu = cpu_seconds(ingest.pid) - cpu_at_first
                rss_mib = _rss_mib(ingest.pid)
                nats_cpu2 = sum(cpu_seconds(p) for p in server.pids())
            finally:
                ingest.terminate()
                ingest.wait()
        finally:
            server.stop()
    return {
        "config": f"{kind} NATS (R{server.replicas}), {workers} worker(s)",
        "publish": points / publish_s,
        "publish_nats_cpu": nats_cpu1 - nats_cpu0,
        "ingest": points / (last - first),
        "ingest_s": last - first,
        "ingest_cpu": ingest_cpu,
        "ingest_nats_cpu": nats_cpu2 - nats_cpu1,
        "rss": rss_mib,
    }


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_until_serving(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--configs", default="single:1,single:2,cluster:1,cluster:2")
    args = parser.parse_args()
    print_machine("ingest throughput: 1 vs 2 workers, 1 NATS node vs a 3-node cluster")
    items = payloads(args.batches, args.rows)
    points = args.batches * args.rows * len(KEYS)
    print(f"backlog: {args.batches} batches x {args.rows} rows x {len(KEYS)} keys = {points:,}")
    print(
        f"{'configuration':<34} {'publish pts/s':>13} {'NATS CPU':>9} "
        f"{'ingest pts/s':>13} {'ingest CPU':>11} {'NATS CPU':>9} {'ingest RSS':>11}"
    )
    for config in args.configs.split(","):
        kind, workers = config.split(":")
        r = run_config(kind, int(workers), items, points)
        print(
            f"{r['config']:<34} {fmt_rate(r['publish']):>13} {r['publish_nats_cpu']:>8.2f}s "
            f"{fmt_rate(r['ingest']):>13} {r['ingest_cpu']:>10.2f}s {r['ingest_nats_cpu']:>8.2f}s "
            f"{r['rss']:>7.0f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
