"""Alert notifications: published to STRIDE_NOTIFY, delivered by Notifiers.

Real servers throughout: nats-server (JetStream) from the ``nats_server``
fixture, an aiohttp web server playing the webhook receiver, and aiosmtpd
standing in for the real SMTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from nats.aio.client import Client as NatsClient

from stride.ingest import notify
from stride.ingest.notify import (
    NOTIFY_DURABLE,
    NOTIFY_STREAM,
    Notification,
    Notifier,
    NotifySettings,
    notification_id,
    publish_notification,
)
from stride.ingest.streams import stream_configs

from .conftest import free_port

#: Small numbers so that retries and giving up take a fraction of a second.
FAST = NotifySettings(
    backoff_s=0.05, max_backoff_s=0.2, max_attempts=3, webhook_timeout_s=2.0, smtp_timeout_s=2.0
)


def note(**overrides: Any) -> Notification:
    fields: dict[str, Any] = {
        "alert": "loss-high",
        "run": "team/mnist/r1",
        "state": "critical",
        "previous": "ok",
        "at": 1_700_000_000.25,
        "value": 1.7,
        "channel": "webhook",
        "target": None,
        "summary": "loss averaged 1.7 over 300 s: is above 1.0",
        "description": "the loss should fall",
    }
    return Notification(**{**fields, **overrides})


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


class Hook:
    """A webhook receiver: records every request, answers ``statuses`` in turn, then 200."""

    def __init__(self) -> None:
        self.url = ""
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: list[int] = []
        self.always: int | None = None
        #: Seconds to hold the answer to the next request of an alert (a slow receiver).
        self.delays: dict[str, float] = {}
        #: ("in" | "out", alert) per request arriving and being answered, in time order.
        self.events: list[tuple[str, str]] = []

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        self.events.append(("in", body["alert"]))
        await asyncio.sleep(self.delays.pop(body["alert"], 0.0))
        status = self.always or (self.statuses.pop(0) if self.statuses else 200)
        self.events.append(("out", body["alert"]))
        return web.Response(status=status, text="boom" if status >= 300 else "ok")


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/hook", receiver.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/hook"
    yield receiver
    await runner.cleanup()


class Inbox:
    """aiosmtpd handler: keeps what it was given (it runs on aiosmtpd's own thread)."""

    def __init__(self) -> None:
        self.mail: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        self.mail.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, str]]:
    """aiosmtpd standing in for the real SMTP server; yields it and its smtp:// URL."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, f"smtp://127.0.0.1:{port}"
    controller.stop()


@contextlib.asynccontextmanager
async def running(
    nc: NatsClient, settings: NotifySettings, count: int = 1
) -> AsyncIterator[list[Notifier]]:
    notifiers = [Notifier(nc, settings) for _ in range(count)]
    tasks = [asyncio.create_task(n.run()) for n in notifiers]
    try:
        await until(lambda: all(n.subscribed for n in notifiers))
        yield notifiers
    finally:
        for n in notifiers:
            n.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10.0)


async def settled(nc: NatsClient) -> None:
    """Wait until the consumer has nothing pending or unacked (acked or terminated)."""

    async def idle() -> bool:
        info = await nc.jetstream().consumer_info(NOTIFY_STREAM, NOTIFY_DURABLE)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    deadline = time.monotonic() + 10.0
    while not await idle():
        assert time.monotonic() < deadline, "the consumer still holds messages"
        await asyncio.sleep(0.05)


async def test_a_notification_reaches_the_webhook_once_with_its_fields(
    nc: NatsClient, hook: Hook
) -> None:
    n = note(target=hook.url)
    async with running(nc, FAST) as [notifier]:
        await publish_notification(nc.jetstream(), n)
        await until(lambda: notifier.stats.sent == 1)
        await settled(nc)
        await asyncio.sleep(0.2)  # nothing more arrives
    assert hook.bodies == [
        {
            "alert": "loss-high",
            "run": "team/mnist/r1",
            "state": "critical",
            "previous": "ok",
            "at": "2023-11-14T22:13:20.250Z",
            "value": 1.7,
            "summary": "loss averaged 1.7 over 300 s: is above 1.0",
            "description": "the loss should fall",
            "text": "[stride] loss-high is critical on team/mnist/r1 (was ok): "
            "loss averaged 1.7 over 300 s: is above 1.0",
        }
    ]
    assert hook.headers[0]["Content-Type"] == "application/json"
    assert hook.headers[0]["Idempotency-Key"] == notification_id(n)
    assert notifier.stats.as_dict() == {"sent": 1, "failed_attempts": 0, "given_up": 0}


async def test_a_failing_webhook_is_retried_with_backoff_until_it_answers_2xx(
    nc: NatsClient, hook: Hook
) -> None:
    hook.statuses = [500, 500]
    async with running(nc, FAST) as [notifier]:
        started = time.monotonic()
        await publish_notification(nc.jetstream(), note(target=hook.url))
        await until(lambda: notifier.stats.sent == 1)
        elapsed = time.monotonic() - started
        await settled(nc)
    assert len(hook.bodies) == 3
    assert hook.bodies[0] == hook.bodies[2]
    assert notifier.stats.as_dict() == {"sent": 1, "failed_attempts": 2, "given_up": 0}
    assert elapsed >= 0.05 + 0.1  # the nak delays: backoff_s, then twice that


async def test_the_same_notification_published_twice_is_delivered_once(
    nc: NatsClient, hook: Hook
) -> None:
    n = note(target=hook.url)
    js = nc.jetstream()
    await publish_notification(js, n)
    await publish_notification(js, Notification(**msgspec.structs.asdict(n)))
    assert (await js.stream_info(NOTIFY_STREAM)).state.messages == 1
    async with running(nc, FAST) as [notifier]:
        await until(lambda: notifier.stats.sent == 1)
        await settled(nc)
        await asyncio.sleep(0.2)
    assert len(hook.bodies) == 1
    # A later evaluation is another notification.
    assert notification_id(note(target=hook.url, at=n.at + 1)) != notification_id(n)


async def test_email_reaches_the_smtp_server_with_the_default_recipients_if_none_named(
    nc: NatsClient, smtp: tuple[Inbox, str]
) -> None:
    inbox, url = smtp
    settings = NotifySettings(
        smtp_url=url, smtp_from="alerts@stride.test", email_to=("ops@example.com",)
    )
    js = nc.jetstream()
    named = note(channel="email", target="a@example.com, b@example.com")
    async with running(nc, settings) as [notifier]:
        await publish_notification(js, named)
        await publish_notification(js, note(channel="email", target=None, state="ok", at=2e9))
        await until(lambda: notifier.stats.sent == 2)
    by_state = {m["Subject"].split()[3]: (to, m) for to, m in inbox.mail}
    to, mail = by_state["critical"]
    assert to == ["a@example.com", "b@example.com"]
    assert mail["Subject"] == "[stride] loss-high is critical on team/mnist/r1"
    assert mail["From"] == "alerts@stride.test"
    assert mail["Message-ID"] == f"<{notification_id(named)[:32]}@stride>"
    body = mail.get_content()
    assert "loss averaged 1.7 over 300 s: is above 1.0" in body
    assert "the loss should fall" in body
    assert "was ok" in body
    assert "2023-11-14T22:13:20.250Z" in body
    assert "team/mnist/r1" in body
    to, mail = by_state["ok"]
    assert to == ["ops@example.com"]
    assert mail["To"] == "ops@example.com"


async def test_a_webhook_that_always_fails_is_given_up_logged_and_not_redelivered(
    nc: NatsClient, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    hook.always = 500
    caplog.set_level(logging.WARNING, logger="stride.ingest")
    async with running(nc, FAST) as [notifier]:
        await publish_notification(nc.jetstream(), note(target=hook.url))
        await until(lambda: notifier.stats.given_up == 1)
        await settled(nc)
        await asyncio.sleep(0.5)  # longer than any backoff: a redelivery would show
    assert len(hook.bodies) == FAST.max_attempts
    assert notifier.stats.as_dict() == {"sent": 0, "failed_attempts": 3, "given_up": 1}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    for part in ("loss-high", "team/mnist/r1", "webhook", hook.url, "HTTP 500", "3 attempt"):
        assert part in errors[0]


async def test_email_without_a_server_or_recipients_says_which_options_to_set(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stride.ingest")
    settings = NotifySettings(max_attempts=2, backoff_s=0.05)
    async with running(nc, settings) as [notifier]:
        await publish_notification(nc.jetstream(), note(channel="email"))
        await until(lambda: notifier.stats.given_up == 1)
    assert notifier.stats.failed_attempts == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "--smtp-url" in errors[0] and "--alert-email-to" in errors[0]


async def test_two_notifiers_sharing_the_consumer_deliver_each_notification_once(
    nc: NatsClient, hook: Hook
) -> None:
    count = 40
    js = nc.jetstream()
    async with running(nc, FAST, count=2) as notifiers:
        await asyncio.gather(
            *(publish_notification(js, note(target=hook.url, alert=f"a{i}")) for i in range(count))
        )
        await until(lambda: sum(n.stats.sent for n in notifiers) == count)
        await settled(nc)
        await asyncio.sleep(0.2)
    assert sorted(b["alert"] for b in hook.bodies) == sorted(f"a{i}" for i in range(count))
    assert sum(n.stats.failed_attempts for n in notifiers) == 0


async def test_notifications_of_one_alert_arrive_in_order_others_meanwhile(
    nc: NatsClient, hook: Hook
) -> None:
    """Ingest catching up publishes an alert's `critical` and `ok` together: the `ok`
    must not reach the receiver while the `critical` is still being delivered."""
    js = nc.jetstream()
    first = note(target=hook.url, alert="oom", state="critical", previous="ok")
    then = note(target=hook.url, alert="oom", state="ok", previous="critical", at=first.at + 1)
    other = note(target=hook.url, alert="disk")
    for n in (first, then, other):
        await publish_notification(js, n)
    hook.delays = {"oom": 0.5}  # the receiver is slow to answer the first `oom`
    async with running(nc, FAST) as [notifier]:
        await until(lambda: notifier.stats.sent == 3)
        await settled(nc)
    assert [b["state"] for b in hook.bodies if b["alert"] == "oom"] == ["critical", "ok"]
    oom = [event for event in hook.events if event[1] == "oom"]
    assert oom == [("in", "oom"), ("out", "oom"), ("in", "oom"), ("out", "oom")]
    # Another alert is not held back by the slow one.
    assert hook.events.index(("out", "disk")) < hook.events.index(("out", "oom"))


async def test_the_stream_is_created_with_the_others(nc: NatsClient) -> None:
    info = await nc.jetstream().stream_info(NOTIFY_STREAM)  # by ensure_streams
    assert info.config.subjects == [notify.NOTIFY_SUBJECT]
    config = next(c for c in stream_configs(3, 120.0) if c.name == NOTIFY_STREAM)
    assert config.subjects == [notify.NOTIFY_SUBJECT]
    assert config.num_replicas == 3 and config.duplicate_window == 120.0
    assert config.max_age == 7 * 24 * 3600.0


def test_a_bad_smtp_url_is_refused_when_the_notifier_is_made() -> None:
    with pytest.raises(ValueError, match="smtp://"):
        Notifier(NatsClient(), NotifySettings(smtp_url="http://mail.example.com"))
