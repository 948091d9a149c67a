"""``stride ingest`` and ``stride query`` as separate processes, any number of each.

They run as a user starts them, against a real nats-server and the ClickHouse
engine behind its HTTP interface (``tests/chdb_http.py``), configured through
environment variables as containers are. Writers are separate processes.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import stride
from stride.cli._nats_server import NatsServer

from .conftest import (
    ChdbHttpServer,
    StrideService,
    free_port,
    run_python,
    scan,
    wait_for,
    wait_rows,
)

WRITER = textwrap.dedent(
    """
    import stride
    with stride.init(project="svc", id={run_id!r}) as run:
        for step in range({first}, {first} + {rows}):
            run.log({{"loss": step / 10, "acc": -step}}, step=step)
    """
)


def write(nats_url: str, spool: Path, run_id: str, first: int, rows: int) -> None:
    """Log ``rows`` steps from ``first`` into ``svc/run_id`` from a separate process."""
    env = {"STRIDE_SERVER": nats_url, "STRIDE_SPOOL_DIR": str(spool)}
    run_python(WRITER.format(run_id=run_id, first=first, rows=rows), env=env)


def service_env(nats: NatsServer, store_url: str, **extra: str) -> dict[str, str]:
    return {"STRIDE_NATS_URL": nats.url, "STRIDE_STORE": store_url, **extra}


@pytest.fixture
def services(
    nats_server: NatsServer, clickhouse_http: ChdbHttpServer, tmp_path: Path
) -> Iterator[tuple[StrideService, list[StrideService]]]:
    """One ``stride ingest`` with two workers and two ``stride query`` processes."""
    database = f"svc_{os.getpid()}_{tmp_path.name[-8:].replace('-', '_')}"
    env = service_env(nats_server, clickhouse_http.url(database))
    env["STRIDE_OBJECTS"] = f"file://{tmp_path / 'objects'}"
    ingest = StrideService("ingest", "--workers", "2", env=env).start()
    queries = [StrideService("query", env=env).start() for _ in range(2)]
    yield ingest, queries
    for proc in (ingest, *queries):
        code = proc.stop()
        if code not in (0, None):
            print(f"{proc.command} exited {code}:\n" + "\n".join(proc.output[-30:]))


def test_points_written_from_several_processes_arrive_once_and_both_query_services_agree(
    services: tuple[StrideService, list[StrideService]], nats_server: NatsServer, tmp_path: Path
) -> None:
    ingest, queries = services
    for i, first in enumerate((0, 3000, 6000)):
        write(nats_server.url, tmp_path / f"spool{i}", "shared", first, 3000)
    write(nats_server.url, tmp_path / "spool-solo", "solo", 0, 500)
    status = stride.Api(ingest.http_url)
    wait_for(lambda: status.get("/api/v1/status")["ingest"]["points"] >= 2 * 9500)
    apis = [stride.Api(q.http_url) for q in queries]
    rows = wait_for(
        lambda: (
            len(scan(apis[0], "default/svc/shared")) == 9000 and scan(apis[0], "default/svc/shared")
        )
    )
    assert [r["_step"] for r in rows] == list(range(9000))
    assert all(r["loss"] == r["_step"] / 10 and r["acc"] == -r["_step"] for r in rows)
    assert scan(apis[1], "default/svc/shared") == rows
    for path in ("default/svc/shared", "default/svc/solo"):
        answers = [api.run(path).history(samples=100, pandas=False) for api in apis]
        assert answers[0] == answers[1]
        assert [api.run(path).state for api in apis] == ["finished", "finished"]
    # Applied exactly once: each batch once, each point once (rows x keys).
    counters = status.get("/api/v1/status")["ingest"]
    assert counters["points"] == 2 * 9500
    assert counters["batches_skipped"] == 0
    assert status.get("/api/v1/status")["lag"]["pending"] == 0
    for url in (ingest.http_url, *(q.http_url for q in queries)):
        assert stride.Api(url).get("/readyz")["ok"] is True


def test_sigterm_drains_and_exits_cleanly(
    services: tuple[StrideService, list[StrideService]], nats_server: NatsServer, tmp_path: Path
) -> None:
    ingest, queries = services
    write(nats_server.url, tmp_path / "spool", "drain", 0, 2000)
    api = stride.Api(queries[0].http_url)
    assert len(wait_rows(api, "default/svc/drain", 2000)) == 2000
    for proc in (ingest, *queries):
        assert proc.stop(signal.SIGTERM) == 0
        assert "stride: stopped" in proc.output


def test_a_service_without_storage_says_so(nats_server: NatsServer, tmp_path: Path) -> None:
    env = service_env(nats_server, "http://u:secret@127.0.0.1:1/stride", STRIDE_CONNECT_TIMEOUT="1")
    proc = StrideService("query", env=env)
    with pytest.raises(AssertionError, match="did not start"):
        proc.start(timeout=30)
    text = "\n".join(proc.output)
    assert "cannot connect to storage at http://u:***@127.0.0.1:1/stride within 1 s" in text
    assert "secret" not in text


def test_a_refused_password_fails_at_once(
    nats_server: NatsServer, clickhouse_http: ChdbHttpServer
) -> None:
    url = clickhouse_http.url().replace(clickhouse_http.password, "wrong")
    proc = StrideService("ingest", env=service_env(nats_server, url))
    with pytest.raises(AssertionError, match="did not start"):
        proc.start(timeout=30)
    assert any("refused user 'stride'" in line for line in proc.output)
    assert not any("retrying" in line for line in proc.output)


@pytest.mark.slow
def test_storage_away_for_a_while_loses_nothing_and_the_backlog_drains(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """ClickHouse stops mid-run: workers stop acking, back off, and catch up once it is back."""
    clickhouse = ChdbHttpServer(tmp_path / "clickhouse").start()
    env = service_env(nats_server, clickhouse.url())
    ingest = StrideService("ingest", env=env).start()
    query = StrideService("query", env=env).start()
    try:
        status, api = stride.Api(ingest.http_url, retries=0), stride.Api(query.http_url)
        write(nats_server.url, tmp_path / "spool-a", "outage", 0, 2000)
        assert len(wait_rows(api, "default/svc/outage", 2000)) == 2000

        clickhouse.stop()
        write(nats_server.url, tmp_path / "spool-b", "outage", 2000, 3000)
        wait_for(lambda: status.get("/api/v1/status")["ingest"]["write_errors"] >= 2)
        with pytest.raises(stride.ApiError, match="503: storage does not answer"):
            status.get("/readyz")
        waiting = status.get("/api/v1/status")["lag"]
        assert waiting["pending"] + waiting["ack_pending"] > 0

        clickhouse.start()  # the same port and data
        rows = wait_rows(api, "default/svc/outage", 5000)
        assert [r["_step"] for r in rows] == list(range(5000))
        assert all(r["loss"] == r["_step"] / 10 for r in rows)
        wait_for(lambda: status.get("/api/v1/status")["lag"]["pending"] == 0)
        assert status.get("/readyz")["ok"] is True
    finally:
        ingest.stop()
        query.stop()
        clickhouse.stop()


def test_unreachable_nats_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    env = {
        "STRIDE_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "STRIDE_STORE": f"chdb://{tmp_path / 'clickhouse'}",
        "STRIDE_CONNECT_TIMEOUT": "2",
    }
    proc = StrideService("ingest", env=env)
    started = time.monotonic()
    with pytest.raises(AssertionError, match="did not start"):
        proc.start(timeout=60)
    assert time.monotonic() - started < 30  # nats-py alone would retry for minutes
    assert any("cannot connect to NATS" in line and "within 2 s" in line for line in proc.output)
