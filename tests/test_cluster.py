"""A real cluster in a test, and the faults it must survive.

Three nats-server processes form a JetStream cluster on loopback, the stream
at three replicas; two ``stride ingest`` and two ``stride query`` processes
share one ClickHouse (the engine over HTTP, ``tests/chdb_http.py``) and an
object store directory; writers log from several processes, each through a
different NATS node. Every test asserts that each point is stored exactly
once, in order, and that both query services give the same answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

import stride
from stride.ingest.streams import DURABLE
from stride.wire import STREAM

from .conftest import (
    ChdbHttpServer,
    NatsCluster,
    StrideService,
    scan,
    wait_for,
    wait_rows,
)

WRITER = textwrap.dedent(
    """
    import sys, stride
    run_id, first, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with stride.init(project="cluster", id=run_id) as run:
        for step in range(first, first + rows):
            run.log({"loss": step / 10, "acc": -step}, step=step)
    """
)
KEYS = 2


class Cluster:
    """The whole deployment of one test."""

    def __init__(self, nats: NatsCluster, clickhouse: ChdbHttpServer, tmp: Path) -> None:
        self.nats = nats
        self.tmp = tmp
        database = f"cluster_{os.getpid()}_{tmp.name[-12:].replace('-', '_')}"
        self.env = {
            "STRIDE_NATS_URL": nats.url,
            "STRIDE_STORE": clickhouse.url(database),
            "STRIDE_OBJECTS": f"file://{tmp / 'objects'}",
            "STRIDE_STREAM_REPLICAS": "3",
            "STRIDE_ACK_WAIT": "3",
        }
        self.ingest = [StrideService("ingest", env=self.env) for _ in range(2)]
        self.query = [StrideService("query", env=self.env) for _ in range(2)]
        self.writers: list[subprocess.Popen[bytes]] = []

    def start(self) -> Cluster:
        for service in (*self.ingest, *self.query):
            service.start()
        return self

    def write(self, node: int, run_id: str, first: int, rows: int) -> None:
        """Start a writer process that publishes through NATS node ``node``."""
        env = {
            **os.environ,
            "STRIDE_SERVER": self.nats.urls[node],
            "STRIDE_SPOOL_DIR": str(self.tmp / f"spool-{len(self.writers)}"),
        }
        args = [sys.executable, "-c", WRITER, run_id, str(first), str(rows)]
        self.writers.append(subprocess.Popen(args, env=env))

    def wait_writers(self) -> None:
        for proc in self.writers:
            assert proc.wait(120) == 0

    def points_applied(self) -> int:
        """Points the ingest services applied, over both (those still running)."""
        total = 0
        for service in self.ingest:
            if service.proc is not None:
                total += stride.Api(service.http_url).get("/api/v1/status")["ingest"]["points"]
        return total

    def assert_exactly_once(self, run_id: str, steps: int) -> None:
        apis = [stride.Api(q.http_url) for q in self.query]
        path = f"default/cluster/{run_id}"
        rows = wait_rows(apis[0], path, steps)
        assert [r["_step"] for r in rows] == list(range(steps))
        assert all(r["loss"] == r["_step"] / 10 and r["acc"] == -r["_step"] for r in rows)
        assert scan(apis[1], path) == rows
        answers = [api.run(path).history(samples=200, pandas=False) for api in apis]
        assert answers[0] == answers[1]
        wait_for(lambda: [api.run(path).state for api in apis] == ["finished", "finished"])

    def stop(self) -> None:
        for proc in self.writers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for service in (*self.ingest, *self.query):
            service.stop()


@pytest.fixture
def cluster(
    nats_cluster: NatsCluster, clickhouse_http: ChdbHttpServer, tmp_path: Path
) -> Iterator[Cluster]:
    deployment = Cluster(nats_cluster, clickhouse_http, tmp_path).start()
    yield deployment
    deployment.stop()


async def _stream_state(url: str) -> tuple[int, str | None, int]:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(STREAM)
        assert info.cluster is not None
        return info.config.num_replicas or 1, info.cluster.leader, info.state.messages
    finally:
        await nc.close()


def test_every_point_arrives_once_through_a_three_node_cluster(cluster: Cluster) -> None:
    for node, first in enumerate((0, 4000, 8000)):
        cluster.write(node, "fleet", first, 4000)
    cluster.write(1, "side", 0, 1000)
    cluster.wait_writers()
    cluster.assert_exactly_once("fleet", 12000)
    cluster.assert_exactly_once("side", 1000)
    replicas, leader, waiting = asyncio.run(_stream_state(cluster.nats.urls[0]))
    assert replicas == 3 and leader is not None
    assert waiting == 0  # a work queue: everything applied was acknowledged
    # Both ingest services shared the work, and nothing was applied twice.
    wait_for(lambda: cluster.points_applied() == 13000 * KEYS)
    shares = [
        stride.Api(s.http_url).get("/api/v1/status")["ingest"]["batches_applied"]
        for s in cluster.ingest
    ]
    assert sum(shares) > 0 and all(share >= 0 for share in shares)


@pytest.mark.slow
def test_a_nats_node_killed_while_writers_and_workers_run_loses_nothing(
    cluster: Cluster,
) -> None:
    _, leader, _ = asyncio.run(_stream_state(cluster.nats.urls[0]))
    victim = int(str(leader).removeprefix("n"))  # the stream's leader: the hardest case
    for node, first in enumerate((0, 20000, 40000)):
        cluster.write(node, "failover", first, 20000)
    api = stride.Api(cluster.query[0].http_url)
    wait_for(lambda: _stored(api, "default/cluster/failover") > 0, timeout=60)
    cluster.nats.kill(victim)
    cluster.wait_writers()
    cluster.assert_exactly_once("failover", 60000)
    survivor = cluster.nats.urls[(victim + 1) % 3]
    _, new_leader, waiting = wait_for(lambda: _try_stream_state(survivor))
    assert new_leader != leader and waiting == 0
    assert cluster.points_applied() == 60000 * KEYS


@pytest.mark.slow
def test_an_ingest_process_killed_mid_batch_loses_nothing(cluster: Cluster) -> None:
    victim, heir = cluster.ingest
    assert heir.stop() == 0  # the victim works alone until it dies
    for node, first in enumerate((0, 20000, 40000)):
        cluster.write(node, "worker-killed", first, 20000)
    assert victim.proc is not None
    pid = victim.proc.pid

    def frozen_holding_batches() -> bool:
        """Freeze the victim; keep it frozen if it holds fetched, unacknowledged batches."""
        os.kill(pid, signal.SIGSTOP)
        if asyncio.run(_held(cluster.nats.urls[0])) > 0:
            return True
        os.kill(pid, signal.SIGCONT)
        return False

    # Nobody else reads, so what NATS counts as held is in the victim's hands.
    wait_for(frozen_holding_batches, timeout=60, interval=0.05)
    victim.kill()  # SIGKILL, mid-batch
    heir.start()  # gets them after the ack wait (3 s here)
    cluster.wait_writers()
    cluster.assert_exactly_once("worker-killed", 60000)
    _, _, waiting = asyncio.run(_stream_state(cluster.nats.urls[0]))
    assert waiting == 0


async def _held(url: str) -> int:
    """Batches given to a worker and not yet acknowledged."""
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(STREAM, DURABLE)
        return info.num_ack_pending or 0
    finally:
        await nc.close()


def _try_stream_state(url: str) -> tuple[int, str | None, int] | None:
    """The stream's state, or None while it elects a new leader."""
    try:
        return asyncio.run(_stream_state(url))
    except nats.errors.Error:
        return None


def _stored(api: stride.Api, path: str) -> int:
    try:
        return len(scan(api, path))
    except stride.NotFoundError:
        return 0
