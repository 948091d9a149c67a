"""Alerts (Simvue's ``add_alert``): defined by a run, evaluated by ingest as data
arrives, states and transitions recorded and read back, notifications sent by
webhook and email; correct when two ingest workers share the stream."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from aiosmtpd.controller import Controller
from nats.aio.client import Client as NatsClient

import stride
from stride import UsageError
from stride._alerts import define_alert
from stride.api_types import AlertDoc
from stride.ingest import IngestSettings, IngestWorker
from stride.query.alerts import run_alerts
from stride.store import AsyncStore
from stride.store.chdb import ChdbStore
from stride.wire import INGEST_SUBJECT, Batch, MetricBlock, encode_batch, message_id

from .conftest import StrideUp, free_port, wait_for

# ---- a webhook receiver and an SMTP server, both real servers on loopback -----------------------


class Webhook:
    """An HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd's handler API: keeps every message delivered (the SMTP server is
    aiosmtpd, standing in for a real one)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.content.decode()))
        return "250 OK"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


@pytest.fixture(scope="module")
def alert_stack(
    tmp_path_factory: pytest.TempPathFactory, mailbox: tuple[Mailbox, int]
) -> Iterator[StrideUp]:
    """``stride up`` sending alert emails through the test's SMTP server."""
    up = StrideUp(
        tmp_path_factory.mktemp("stride"),
        *("--smtp-url", f"smtp://127.0.0.1:{mailbox[1]}"),
        *("--alert-email-to", "oncall@example.com", "--smtp-from", "stride@example.com"),
    ).start()
    yield up
    up.stop()


def alerts_when(api: stride.Api, path: str, done: Any, timeout: float = 30.0) -> list[AlertDoc]:
    """The run's alerts once ``done(alerts)`` holds."""

    def ready() -> list[AlertDoc] | None:
        try:
            alerts = api.run(path).alerts()
        except stride.NotFoundError:
            return None
        return alerts if done(alerts) else None

    found: list[AlertDoc] = wait_for(ready, timeout=timeout)
    return found


def transitions(alert: AlertDoc) -> list[tuple[str, str]]:
    return [(t.previous, t.state) for t in alert.transitions]


# ---- end to end, against `stride up` -------------------------------------------------------------


def test_a_metric_alert_fires_and_resolves_and_its_webhook_hears_both(
    alert_stack: StrideUp, webhook: Webhook, tmp_path: Path
) -> None:
    with stride.init(project="alerts", settings=alert_stack.settings(tmp_path)) as run:
        name = run.add_alert(
            "loss too high",
            metric="loss",
            rule="is above",
            threshold=1.0,
            frequency=1,
            window=1,
            notification="webhook",
            webhook=webhook.url,
            description="the loss diverged",
        )
        assert name == "loss too high"
        for loss in [5.0] * 25 + [0.1] * 30:  # ~2.5 s above, then ~3 s below
            run.log({"loss": loss})
            time.sleep(0.1)
    api = stride.Api(alert_stack.http_url)
    [alert] = alerts_when(api, run.path, lambda a: a and len(a[0].transitions) >= 2)
    assert alert.name == "loss too high"
    assert alert.definition.threshold == 1.0 and alert.definition.rule == "is above"
    assert transitions(alert) == [("ok", "critical"), ("critical", "ok")]
    assert alert.state == "ok"
    assert alert.transitions[0].value is not None and alert.transitions[0].value > 1.0
    assert alert.transitions[1].value is not None and alert.transitions[1].value <= 1.0
    assert alert.transitions[0].at < alert.transitions[1].at
    assert alert.evaluated_at is not None and alert.evaluated_at >= alert.transitions[1].at
    # The webhook heard each change once, in order.
    wait_for(lambda: len(webhook.bodies) >= 2)
    time.sleep(0.5)  # a duplicate would arrive by now
    assert [(b["previous"], b["state"]) for b in webhook.bodies] == transitions(alert)
    assert {b["alert"] for b in webhook.bodies} == {"loss too high"}
    assert {b["run"] for b in webhook.bodies} == {run.path}
    assert webhook.bodies[0]["description"] == "the loss diverged"
    assert "loss" in webhook.bodies[0]["summary"] and "is above" in webhook.bodies[0]["summary"]


def test_an_event_alert_fires_on_its_pattern_resolves_and_emails(
    alert_stack: StrideUp, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> None:
    box, _ = mailbox
    sent_before = len(box.messages)
    with stride.init(project="alerts", settings=alert_stack.settings(tmp_path)) as run:
        run.add_alert(
            "oom", source="events", pattern="out of memory", frequency=1, window=1,
            notification="email",
        )  # fmt: skip
        for i in range(40):  # metrics keep the run's clock moving
            run.log({"x": i})
            if i == 10:
                run.logs.error("CUDA out of memory", gpu=0)
            elif i % 5 == 0:
                run.logs.info("all good")  # holds no pattern
            time.sleep(0.1)
    api = stride.Api(alert_stack.http_url)
    [alert] = alerts_when(api, run.path, lambda a: a and len(a[0].transitions) >= 2)
    assert transitions(alert) == [("ok", "critical"), ("critical", "ok")]
    assert alert.transitions[0].value == 1.0  # one matching line in the window
    assert alert.definition.source == "events" and alert.definition.pattern == "out of memory"
    # Two emails (critical, then ok) to the service's default recipient.
    wait_for(lambda: len(box.messages) >= sent_before + 2)
    mails = box.messages[sent_before:]
    assert [to for to, _ in mails] == [["oncall@example.com"]] * 2
    assert f"Subject: [stride] oom is critical on {run.path}" in mails[0][1]
    assert f"Subject: [stride] oom is ok on {run.path}" in mails[1][1]
    assert "From: stride@example.com" in mails[0][1]


def test_defining_an_alert_again_attaches_the_existing_one(
    alert_stack: StrideUp, tmp_path: Path
) -> None:
    settings = alert_stack.settings(tmp_path)
    with stride.init(project="shared-alerts", settings=settings) as first:
        first.add_alert("high", metric="m", rule="is above", threshold=100.0, frequency=1)
        first.log({"m": 1.0})
    api = stride.Api(alert_stack.http_url)
    alerts_when(api, first.path, lambda a: len(a) == 1)
    with stride.init(project="shared-alerts", settings=settings) as second:
        # The same name with another threshold: the project's alert (100) is attached.
        second.add_alert("high", metric="m", rule="is above", threshold=1.0, frequency=1, window=1)
        for _ in range(25):
            second.log({"m": 50.0})  # above 1, not above 100
            time.sleep(0.1)
    [alert] = alerts_when(api, second.path, lambda a: a and a[0].evaluated_at is not None)
    assert alert.definition.threshold == 100.0
    time.sleep(1.0)
    [alert] = api.run(second.path).alerts()
    assert alert.state == "ok" and alert.transitions == []


def test_alert_definitions_are_checked_when_added(tmp_path: Path) -> None:
    def define(**kw: Any) -> Any:
        args: dict[str, Any] = {
            "source": "metrics", "frequency": 60.0, "window": 300.0, "rule": "is above",
            "metric": "loss", "stream": "default", "threshold": 1.0, "range_low": None,
            "range_high": None, "pattern": None, "notification": "none", "webhook": None,
            "email": None, "description": None,
        }  # fmt: skip
        return define_alert("a", **(args | kw))

    assert define().threshold == 1.0
    assert define(window=None, frequency=5).window == 5.0
    inside = define(rule="is inside range", threshold=None, range_low=0, range_high=1)
    assert (inside.range_low, inside.range_high) == (0.0, 1.0)
    assert inside.breached(0.5) and not inside.breached(1.5)
    outside = define(rule="is outside range", threshold=None, range_low=0, range_high=1)
    assert outside.breached(-0.1) and not outside.breached(1.0)
    assert define(rule="is below").breached(0.5) and not define().breached(1.0)
    for bad, message in [
        ({"source": "logs"}, "source must be one of"),
        ({"rule": "is near"}, "rule must be one of"),
        ({"metric": None}, "needs metric="),
        ({"threshold": None}, "needs threshold="),
        ({"threshold": float("nan")}, "needs threshold="),
        ({"rule": "is inside range", "range_low": 2, "range_high": 1}, "range_low"),
        ({"frequency": 0}, "frequency must be a positive"),
        ({"window": -1}, "window must be a positive"),
        ({"source": "events"}, "needs pattern="),
        ({"notification": "sms"}, "notification must be one of"),
        ({"notification": "webhook"}, "needs webhook="),
        ({"notification": "webhook", "webhook": "ftp://x"}, "needs webhook="),
        ({"notification": "email", "email": "not-an-address"}, "not an email address"),
    ]:
        with pytest.raises(UsageError, match=message):
            define(**bad)
    with (
        stride.init(project="p", mode="offline", settings=stride.Settings(spool_dir=tmp_path)) as r,
        pytest.raises(UsageError, match="alert name"),
    ):
        r.add_alert("", metric="m", rule="is above", threshold=1)


# ---- two ingest workers share the stream ---------------------------------------------------------


def _batch(seq: int, start: float, value: float, fields: dict[str, str]) -> Batch:
    """Five points of ``loss`` 0.1 s apart from ``start`` (Unix seconds), sealed at
    the last one's time."""
    times = np.round(start + np.arange(5) * 0.1, 6)
    steps = np.arange(seq * 5, seq * 5 + 5, dtype=np.int64)
    block = MetricBlock(
        stream="default",
        keys=["loss"],
        steps=steps.tobytes(),
        times=(times - 1000.0).tobytes(),
        timestamps=times.tobytes(),
        values=[np.full(5, value).tobytes()],
    )
    return Batch(
        v=1, entity="e", project="p", run_id="r", writer="w", seq=seq,
        ver=round(times[-1] * 1e9), set=fields, metrics=[block],
    )  # fmt: skip


async def test_two_workers_sharing_the_stream_record_each_transition_once(
    nc: NatsClient, tmp_path: Path
) -> None:
    chdb = ChdbStore(tmp_path / "clickhouse")
    store = AsyncStore(chdb)
    settings = IngestSettings(fetch_batch=2, fetch_linger_s=0.0)
    workers = [IngestWorker(nc, store, settings) for _ in range(2)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    js = nc.jetstream()

    async def send(batch: Batch) -> None:
        msg_id = message_id(batch.path, batch.writer, batch.seq)
        await js.publish(INGEST_SUBJECT, encode_batch(batch), headers={"Nats-Msg-Id": msg_id})

    async def until(what: Any) -> list[AlertDoc]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alerts = await run_alerts(store, "e/p/r")
            if what(alerts):
                return alerts
            await asyncio.sleep(0.05)
        raise AssertionError(f"not within 30 s: {await run_alerts(store, 'e/p/r')}")

    try:
        definition = define_alert(
            "high", source="metrics", frequency=1.0, window=1.0, rule="is above",
            metric="loss", stream="default", threshold=1.0, range_low=None, range_high=None,
            pattern=None, notification="none", webhook=None, email=None, description=None,
        )  # fmt: skip
        field = {"alerts.high": msgspec.json.encode(definition).decode()}
        # Batches of 0.5 s from t = 1000: loss 10 until 1005.5, then 0.
        await send(_batch(0, 1000.0, 10.0, field))
        await until(lambda a: a and a[0].evaluated_at is not None)
        for seq in range(1, 20):
            start = 1000.0 + seq * 0.5
            await send(_batch(seq, start, 10.0 if start < 1005.5 else 0.0, {}))
        [alert] = await until(lambda a: a and a[0].evaluated_at == "1970-01-01T00:16:49+00:00")
    finally:
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        chdb.close()
    assert all(w.stats.batches_applied > 0 for w in workers), "both workers took batches"
    assert transitions(alert) == [("ok", "critical"), ("critical", "ok")]
    # Critical from the first instant (1000); ok at the first instant whose window
    # (T-1, T] holds only zeros for sure (1007) or, if the zeros of 1005.5-1006.0
    # were all stored before T=1006 was evaluated, 1006.
    assert alert.transitions[0].at == "1970-01-01T00:16:40+00:00"
    assert alert.transitions[1].at in ("1970-01-01T00:16:46+00:00", "1970-01-01T00:16:47+00:00")
    assert alert.transitions[0].value == 10.0 and alert.transitions[1].value == 0.0
