"""Alerts (Simvue's ``add_alert``): defined by a run, evaluated by ingest as data
arrives, states and transitions recorded and read back, notifications sent by
webhook and email; correct when two ingest workers share the stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import http.server
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from aiosmtpd.controller import Controller
from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError

import stride
from stride import UsageError
from stride._alerts import define_alert
from stride.api_types import AlertDoc
from stride.ingest import IngestSettings, IngestWorker, default_handlers
from stride.ingest.alerts import ALERTS_BUCKET, AlertEvaluator, AlertsHandler, _window_sums
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


def _batch(
    seq: int, start: float, value: float, fields: dict[str, str], *, run: str = "r", ver: int = 0
) -> Batch:
    """Five points of ``loss`` 0.1 s apart from ``start`` (Unix seconds), sealed at
    the last one's time (or at ``ver``, as a run synced later is)."""
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
        v=1, entity="e", project="p", run_id=run, writer="w", seq=seq,
        ver=ver or round(times[-1] * 1e9), set=fields, metrics=[block],
    )  # fmt: skip


#: The field of a writer's last batch: the run's end.
ENDED = {"state": '"finished"'}


def _definition(frequency: float = 1.0, threshold: float = 1.0) -> dict[str, str]:
    """The run field that attaches the alert ``high``: loss above ``threshold``."""
    definition = define_alert(
        "high", source="metrics", frequency=frequency, window=1.0, rule="is above",
        metric="loss", stream="default", threshold=threshold, range_low=None,
        range_high=None, pattern=None, notification="none", webhook=None, email=None,
        description=None,
    )  # fmt: skip
    return {"alerts.high": msgspec.json.encode(definition).decode()}


class Ingest:
    """``workers`` ingest workers in this process sharing the stream, into one chDB."""

    def __init__(self, nc: NatsClient, store: AsyncStore, workers: int) -> None:
        settings = IngestSettings(fetch_batch=2, fetch_linger_s=0.0)
        self.nc, self.store = nc, store
        self.workers = [IngestWorker(nc, store, settings) for _ in range(workers)]
        self.tasks = [asyncio.create_task(w.run()) for w in self.workers]

    async def send(self, *batches: Batch) -> None:
        js = self.nc.jetstream()
        for b in batches:
            msg_id = message_id(b.path, b.writer, b.seq)
            await js.publish(INGEST_SUBJECT, encode_batch(b), headers={"Nats-Msg-Id": msg_id})

    async def until(self, what: Any, run: str = "e/p/r") -> list[AlertDoc]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alerts = await run_alerts(self.store, run)
            if what(alerts):
                return alerts
            await asyncio.sleep(0.05)
        raise AssertionError(f"not within 30 s: {await run_alerts(self.store, run)}")

    async def stop(self) -> None:
        for w in self.workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 30)


@pytest.fixture
async def chdb_store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    chdb = ChdbStore(tmp_path / "clickhouse")
    yield AsyncStore(chdb)
    chdb.close()


def _seconds(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()


async def test_two_workers_sharing_the_stream_record_each_transition_once(
    nc: NatsClient, chdb_store: AsyncStore
) -> None:
    ingest = Ingest(nc, chdb_store, workers=2)
    try:
        # Batches of 0.5 s from t = 1000: loss 10 until 1005.5, then 0; the last ends
        # the run (so its last stretch is evaluated without waiting for more data).
        await ingest.send(_batch(0, 1000.0, 10.0, _definition()))
        await ingest.until(lambda a: len(a) == 1)
        await ingest.send(
            *(_batch(i, 1000 + i / 2, 10.0 if i < 11 else 0.0, {}) for i in range(1, 19)),
            _batch(19, 1009.5, 0.0, ENDED),
        )
        [alert] = await ingest.until(lambda a: a and a[0].evaluated_at == _seconds(1010))
    finally:
        await ingest.stop()
    assert all(w.stats.batches_applied > 0 for w in ingest.workers), "both workers took batches"
    assert transitions(alert) == [("ok", "critical"), ("critical", "ok")]
    # Critical from the first instant (1000); ok at the first instant whose window
    # (T-1, T] holds only zeros for sure (1007) or, if the zeros of 1005.5-1006.0
    # were all stored before T=1006 was evaluated, 1006.
    assert alert.transitions[0].at == _seconds(1000)
    assert alert.transitions[1].at in (_seconds(1006), _seconds(1007))
    assert alert.transitions[0].value == 10.0 and alert.transitions[1].value == 0.0


async def test_a_run_synced_later_is_evaluated_on_its_points_times(
    nc: NatsClient, chdb_store: AsyncStore
) -> None:
    """Offline or after an outage, batches are sealed when sent: the points' own
    times drive the evaluation, not when they arrive."""
    ingest = Ingest(nc, chdb_store, workers=1)
    now = time.time_ns()
    try:
        batches = [
            _batch(i, 1000 + i / 2, 10.0 if i < 6 else 0.0, {}, ver=now + i) for i in range(10)
        ]
        batches[0].set.update(_definition())
        batches[-1].set.update(ENDED)
        await ingest.send(*batches)
        [alert] = await ingest.until(lambda a: a and a[0].evaluated_at == _seconds(1005))
    finally:
        await ingest.stop()
    assert transitions(alert) == [("ok", "critical"), ("critical", "ok")]
    assert [t.at for t in alert.transitions] == [_seconds(1000), _seconds(1004)]


async def test_the_first_definition_to_arrive_is_the_alert(
    nc: NatsClient, chdb_store: AsyncStore
) -> None:
    """A later definition of the same name, even one sealed earlier (a writer whose
    clock is behind), attaches the first one."""
    ingest = Ingest(nc, chdb_store, workers=1)
    try:
        await ingest.send(_batch(0, 2000.0, 10.0, _definition(frequency=1.0), run="first"))
        await ingest.until(lambda a: len(a) == 1, run="e/p/first")
        late = _batch(0, 1000.0, 10.0, _definition(frequency=60.0, threshold=50.0), run="second")
        more = [_batch(i, 1000 + i / 2, 10.0, {}, run="second") for i in (1, 2)]
        await ingest.send(late, *more, _batch(3, 1001.5, 10.0, ENDED, run="second"))
        [alert] = await ingest.until(
            lambda a: a and a[0].evaluated_at == _seconds(1002), "e/p/second"
        )
        [first] = await run_alerts(chdb_store, "e/p/first")
    finally:
        await ingest.stop()
    assert alert.definition.frequency == 1.0 and alert.definition.threshold == 1.0
    assert first.definition == alert.definition
    assert transitions(alert) == [("ok", "critical")]


async def test_a_change_whose_worker_died_before_storing_it_is_stored_by_the_next(
    nc: NatsClient, chdb_store: AsyncStore
) -> None:
    """A worker that updated the key-value entry and died before writing its changes
    (its outbox) leaves them to the next evaluation of that alert."""
    ingest = Ingest(nc, chdb_store, workers=1)
    try:
        await ingest.send(_batch(0, 1000.0, 10.0, _definition() | ENDED))
        [alert] = await ingest.until(lambda a: a and a[0].evaluated_at == _seconds(1001))
        assert transitions(alert) == [("ok", "critical")]
        # As left by a worker that died: the entry says critical -> ok at 1001, not stored.
        kv = await nc.jetstream().key_value(ALERTS_BUCKET)
        key = "run." + hashlib.sha1(b"e/p/r\0high").hexdigest()
        entry = msgspec.json.decode((await kv.get(key)).value or b"")
        entry |= {"index": 1001, "state": "ok", "at": 1001.0, "value": 0.0}
        entry |= {"changes": [[1001.0, "ok", "critical", 0.0]], "flushed": False}
        await kv.put(key, msgspec.json.encode(entry))
        await ingest.send(_batch(1, 1002.0, 0.0, ENDED))
        [alert] = await ingest.until(lambda a: a and a[0].evaluated_at == _seconds(1003))
        stored = msgspec.json.decode((await kv.get(key)).value or b"")
    finally:
        await ingest.stop()
    assert transitions(alert) == [("ok", "critical"), ("critical", "ok")]
    assert alert.transitions[1].at == _seconds(1001)
    assert stored["flushed"] is True and stored["state"] == "ok"


async def test_a_runs_end_left_by_a_worker_that_died_is_evaluated_by_the_next(
    nc: NatsClient, chdb_store: AsyncStore
) -> None:
    """A worker that stored a run's last batch (its fetch acknowledged) and died
    before evaluating it leaves the run's end in the key-value bucket: the next
    worker to start evaluates it, though the run sends nothing more."""
    ingest = Ingest(nc, chdb_store, workers=1)
    try:
        await ingest.send(_batch(0, 1000.0, 10.0, _definition()))
        await ingest.until(lambda a: len(a) == 1)  # defined; 1000 not due yet (2 s grace)
    finally:
        await ingest.stop()
    # What the dying worker did with the run's last batch: stored it, kept its end.
    last = _batch(1, 1001.0, 0.0, ENDED)  # loss 0 over 1001.0-1001.4
    for handler in default_handlers():
        prepared = handler.prepare([last])
        if prepared is not None:
            await handler.write(chdb_store, prepared)
    evaluator = AlertEvaluator(nc.jetstream(), chdb_store)
    plain = _batch(0, 1000.0, 10.0, ENDED, run="plain")  # a run without alerts: nothing due
    for handler in default_handlers():
        prepared = handler.prepare([plain])
        if prepared is not None:
            await handler.write(chdb_store, prepared)
    await evaluator.keep_due(AlertsHandler(evaluator).prepare([last, plain]).spans)
    kv = await nc.jetstream().key_value(ALERTS_BUCKET)
    due = {run: "due." + hashlib.sha1(run.encode()).hexdigest() for run in ("e/p/r", "e/p/plain")}
    assert (await kv.get(due["e/p/r"])).value
    with pytest.raises(KeyNotFoundError):
        await kv.get(due["e/p/plain"])
    assert (await run_alerts(chdb_store, "e/p/r"))[0].evaluated_at is None

    ingest = Ingest(nc, chdb_store, workers=1)
    try:
        [alert] = await ingest.until(lambda a: a and a[0].evaluated_at == _seconds(1002))
    finally:
        await ingest.stop()
    assert transitions(alert) == [("ok", "critical"), ("critical", "ok")]
    assert [t.at for t in alert.transitions] == [_seconds(1000), _seconds(1002)]
    with pytest.raises(KeyNotFoundError):  # evaluated: no longer due
        await kv.get(due["e/p/r"])


async def test_an_end_kept_again_meanwhile_stays_due(
    nc: NatsClient, chdb_store: AsyncStore
) -> None:
    """Evaluating a run's end deletes its ``due`` entry only at the revision it
    evaluated: a newer end another worker kept meanwhile stays, for its own
    evaluation (and the next sweep, should that worker die)."""
    ingest = Ingest(nc, chdb_store, workers=1)
    try:
        for run in ("r", "a"):
            await ingest.send(_batch(0, 1000.0, 10.0, _definition(), run=run))
            await ingest.until(lambda alerts: len(alerts) == 1, run=f"e/p/{run}")
    finally:
        await ingest.stop()
    evaluator = AlertEvaluator(nc.jetstream(), chdb_store)
    ends = AlertsHandler(evaluator).prepare(
        [_batch(1, 1001.0, 0.0, ENDED, run="r"), _batch(1, 1001.0, 0.0, ENDED, run="a")]
    )
    await evaluator.keep_due(ends.spans)
    kv = await nc.jetstream().key_value(ALERTS_BUCKET)
    due = {run: "due." + hashlib.sha1(run.encode()).hexdigest() for run in ("e/p/r", "e/p/a")}
    newer = b'{"run": "e/p/r", "lo": 1001.0, "hi": 1003.0}'  # another worker's, later
    await kv.put(due["e/p/r"], newer)
    # Queued, then evaluated in the last round of close() (the task never ran, so no
    # sweep saw the newer end).
    evaluator.submit(ends.spans, {})
    await evaluator.close()
    with pytest.raises(KeyNotFoundError):
        await kv.get(due["e/p/a"])
    assert (await kv.get(due["e/p/r"])).value == newer


async def test_an_unreadable_entry_is_started_again_from_the_runs_first_data(
    nc: NatsClient, chdb_store: AsyncStore
) -> None:
    """An entry no worker can read (damaged, or from an incompatible version) is
    replaced, even when the run's first data is not due for evaluation yet."""
    kv = await nc.jetstream().create_key_value(bucket=ALERTS_BUCKET, history=1)
    key = "run." + hashlib.sha1(b"e/p/r\0high").hexdigest()
    await kv.put(key, b"not an entry")
    ingest = Ingest(nc, chdb_store, workers=1)
    try:
        await ingest.send(_batch(0, time.time(), 10.0, _definition()))  # due in 2 s
        deadline = time.monotonic() + 30
        while (await kv.get(key)).value == b"not an entry":
            assert time.monotonic() < deadline, "the unreadable entry was never replaced"
            await asyncio.sleep(0.05)
    finally:
        await ingest.stop()
    entry = msgspec.json.decode((await kv.get(key)).value or b"")
    assert entry["state"] == "ok" and entry["flushed"] is True


def test_window_sums_survive_huge_values_before_them() -> None:
    """Each window is summed on its own: a huge value (an exploding loss) spoils only
    the windows that hold it, not every later one (a running sum's inf - inf)."""
    times = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    values = np.array([1e308, 1e308, 0.001, 0.001, 0.001])
    sums = _window_sums(times, values, np.array([2.0, 5.0, 9.0]), 2.0)
    assert sums[0] == math.inf  # (0, 2]: overflows, as its mean would
    assert sums[1] == pytest.approx(0.002)  # (3, 5]
    assert sums[2] == 0.0  # (7, 9]: empty
