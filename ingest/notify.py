"""Alert notifications: published to JetStream by ingest, delivered by a :class:`Notifier`.

When ingest sees an alert change state on a run (``ok`` → ``critical`` or back),
it publishes a :class:`Notification` to ``STRIDE_NOTIFY``
(:func:`publish_notification`) and goes on: a slow or broken webhook or mail
server never holds back ingest. Delivering is the notifier's job::

    alert handler ──publish──> STRIDE_NOTIFY ──durable pull consumer "stride-notify"──┐
    (Nats-Msg-Id = notification_id)        (any number of ingest processes share it) │
                                                  Notifier: webhook POST / SMTP mail <┘

Exactly once in effect, as far as a webhook or a mail server allows:

* the message id is a hash of what the notification is about
  (:func:`notification_id`), so a re-publish (a batch redelivered to ingest
  and evaluated again) within the stream's duplicate window is dropped by
  JetStream;
* every notifier is a member of one durable consumer: each message goes to one
  of them at a time, and is acked only after the webhook answered 2xx or the
  mail server accepted the message;
* a failed delivery is nak'ed with a delay that doubles per attempt
  (``backoff_s * 2**(attempt-1)``, at most ``max_backoff_s``; the attempt is
  JetStream's delivery count, so it survives a notifier's restart); after
  ``max_attempts`` the message is logged as an error (alert, run, channel,
  target, last error) and terminated. A message that cannot be decoded is
  logged and terminated at once. Nothing is dropped silently;
* a notifier that dies mid-delivery leaves its message unacked, and JetStream
  hands it to another after ``ack_wait_s`` (a delivery in progress tells
  JetStream so every third of that). Such a message, and one whose ack was
  lost, can arrive twice: webhook requests carry the notification id as
  ``Idempotency-Key`` and mails as their ``Message-ID`` so receivers can tell.

Up to ``_PARALLEL`` messages are delivered at once by each notifier, so one
slow webhook does not hold back the others. Notifications of the same alert on
the same run are the exception: a notifier delivers those in the order they
were published (a ``critical`` waits for the ``ok`` before it), which matters
when ingest catches up on a backlog and both are in hand at once. A delivery
that fails is retried after its backoff, so it may then arrive after a later
notification of its alert; each carries its evaluation instant (``at``). Two
notifiers each holding one of such a pair do not know of each other: with
several notifiers, order holds per notifier. Failures are a private exception
with a ``retriable`` flag: a webhook with no URL or an unknown channel can never
succeed and is given up at its first attempt; everything else (HTTP status,
connection errors, timeouts, SMTP errors, missing recipients or server) is
retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import smtplib
import ssl
from collections.abc import Awaitable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate

import aiohttp
import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from ._smtp import parse_smtp_url, send
from .streams import NOTIFY_STREAM, NOTIFY_SUBJECT, notify_stream_config, pull_durable

log = logging.getLogger("stride.ingest")

__all__ = [
    "NOTIFY_DURABLE",
    "NOTIFY_STREAM",
    "NOTIFY_SUBJECT",
    "Notification",
    "Notifier",
    "NotifySettings",
    "NotifyStats",
    "notification_id",
    "notify_stream_config",
    "parse_smtp_url",
    "publish_notification",
]

NOTIFY_DURABLE = "stride-notify"
#: Deliveries in flight at once, per notifier.
_PARALLEL = 8
#: How long one fetch waits for messages before checking for stop().
_FETCH_TIMEOUT_S = 0.25
#: After a fetch or subscribe failed (NATS away, stream not created yet).
_RETRY_S = 1.0


class Notification(msgspec.Struct, frozen=True):
    """An alert changed state on a run; the message on ``stride.notify.v1`` (JSON)."""

    alert: str  # the alert's name
    run: str  # entity/project/run_id
    state: str  # "ok" or "critical"
    previous: str
    at: float  # Unix seconds of the evaluation instant
    value: float | None  # the windowed mean (metric alerts) or matching-event count
    channel: str  # "webhook" or "email"
    target: str | None  # the URL, or comma-separated recipients (None: the defaults)
    summary: str  # "loss averaged 1.7 over 300 s: is above 1.0"
    description: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Notification)


def notification_id(n: Notification) -> str:
    """The notification's ``Nats-Msg-Id``: the same alert, run, instant, state and
    destination give the same id, so JetStream drops a re-publish."""
    key = _encoder.encode([n.alert, n.run, n.at, n.state, n.channel, n.target])
    return hashlib.sha256(key).hexdigest()


async def publish_notification(js: JetStreamContext, n: Notification) -> None:
    """Publish ``n`` for a :class:`Notifier` to deliver; returns once JetStream has it.

    >>> await publish_notification(nc.jetstream(), Notification(  # doctest: +SKIP
    ...     alert="loss-high", run="me/mnist/r1", state="critical", previous="ok",
    ...     at=time.time(), value=1.7, channel="webhook", target="https://hooks/x",
    ...     summary="loss averaged 1.7 over 300 s: is above 1.0"))
    """
    await js.publish(
        NOTIFY_SUBJECT,
        _encoder.encode(n),
        stream=NOTIFY_STREAM,
        headers={"Nats-Msg-Id": notification_id(n)},
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class NotifySettings:
    #: ``smtp://[user:password@]host[:port]`` (STARTTLS when offered, port 25),
    #: ``smtp+starttls://`` (STARTTLS required, port 587), ``smtps://`` (TLS, 465).
    smtp_url: str | None = None
    smtp_from: str = "stride@localhost"
    #: Recipients of email alerts that name none.
    email_to: tuple[str, ...] = ()
    webhook_timeout_s: float = 10.0
    #: For each SMTP operation (connect, each command).
    smtp_timeout_s: float = 10.0
    #: Deliveries tried before a notification is given up (logged, terminated).
    max_attempts: int = 8
    #: The pause after the first failed attempt, doubling per attempt up to the max.
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    #: JetStream hands a message to another notifier if not acked within this.
    ack_wait_s: float = 60.0
    #: On stop, deliveries in hand get this long (well inside the services' drain).
    stop_wait_s: float = 5.0


@dataclasses.dataclass
class NotifyStats:
    """What a notifier did (undecodable messages count as given up)."""

    sent: int = 0
    failed_attempts: int = 0
    given_up: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class _Failed(Exception):
    """One delivery attempt failed; ``retriable`` False: no later attempt can succeed."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line(n: Notification) -> str:
    """One line for chat (Slack's ``text``) and logs."""
    return f"[stride] {n.alert} is {n.state} on {n.run} (was {n.previous}): {n.summary}"


def _webhook_body(n: Notification) -> bytes:
    return _encoder.encode(
        {
            "alert": n.alert,
            "run": n.run,
            "state": n.state,
            "previous": n.previous,
            "at": _iso(n.at),
            "value": n.value,
            "summary": n.summary,
            "description": n.description,
            "text": _line(n),
        }
    )


def _email(n: Notification, sender: str, recipients: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"[stride] {n.alert} is {n.state} on {n.run}"
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(n.at, usegmt=True)
    # The same notification delivered twice carries the same id (see the docstring).
    # (Shortened so that the header fits on one line: 128 bits are still unique.)
    msg["Message-ID"] = f"<{notification_id(n)[:32]}@stride>"
    lines = [n.summary, ""]
    if n.description:
        lines += [n.description, ""]
    lines += [
        f"alert:    {n.alert}",
        f"state:    {n.state} (was {n.previous})",
        f"value:    {'-' if n.value is None else n.value}",
        f"at:       {_iso(n.at)}",
        f"run:      {n.run}",
    ]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def _target(n: Notification) -> str:
    return n.target if n.target is not None else "the default recipients"


class Notifier:
    """Delivers notifications from ``STRIDE_NOTIFY``: one member of the durable
    consumer ``stride-notify``; run as many as you like.

    >>> notifier = Notifier(nc, NotifySettings(smtp_url="smtp://mail:25"))  # doctest: +SKIP
    >>> task = asyncio.create_task(notifier.run())  # doctest: +SKIP
    >>> notifier.stop(); await task  # doctest: +SKIP
    """

    def __init__(self, nc: NatsClient, settings: NotifySettings) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._settings = settings
        # A malformed URL fails here, at start-up, not at the first alert.
        self._smtp = parse_smtp_url(settings.smtp_url) if settings.smtp_url else None
        self._tls: ssl.SSLContext | None = None
        self._http: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        # The last delivery started per (alert, run): the next one of the pair waits for it.
        self._latest: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.subscribed = False  # ready: the durable consumer exists and is read
        self.stats = NotifyStats()

    def stop(self) -> None:
        """Stop fetching; :meth:`run` returns once the deliveries in hand are done."""
        self._stopping.set()

    async def run(self) -> None:
        """Deliver until :meth:`stop` is called."""
        s = self._settings
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=s.webhook_timeout_s))
        sub = None
        try:
            sub = await self._subscribe()
            while sub is not None and not self._stopping.is_set():
                free = _PARALLEL - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(free, timeout=_FETCH_TIMEOUT_S)
                except (TimeoutError, NatsTimeoutError):
                    continue
                except Exception as exc:  # stream or consumer gone, connection lost...
                    log.error("notify: fetch failed (%s); subscribing again", exc)
                    self.subscribed = False
                    await self._pause(_RETRY_S)
                    sub = await self._subscribe()
                    continue
                for msg in msgs:
                    self._start(msg)
        finally:
            # Deliveries in hand get ``stop_wait_s`` to finish; those still running are
            # cut short, and JetStream redelivers them (an email whose send already
            # began in its thread may then go twice: its Message-ID is the same).
            try:
                if self._inflight:
                    await asyncio.wait(self._inflight, timeout=s.stop_wait_s)
            finally:  # also when run() itself is cancelled meanwhile
                left = list(self._inflight)
                for task in left:
                    task.cancel()
                await asyncio.gather(*left, return_exceptions=True)
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                await self._http.close()
                self.subscribed = False

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _subscribe(self) -> JetStreamContext.PullSubscription | None:
        """The pull subscription, retried until it works or stop(); the services create
        the stream (:func:`.streams.ensure_streams`), which may come later than us."""
        config = ConsumerConfig(
            durable_name=NOTIFY_DURABLE,
            ack_wait=self._settings.ack_wait_s,
            max_deliver=-1,  # the notifier counts attempts, to log what it gives up
            filter_subject=NOTIFY_SUBJECT,
        )
        while not self._stopping.is_set():
            try:
                sub = await pull_durable(self._js, NOTIFY_SUBJECT, NOTIFY_STREAM, config)
            except Exception as exc:
                log.error("notify: cannot read %s (%s); retrying", NOTIFY_STREAM, exc)
                await self._pause(_RETRY_S)
                continue
            self.subscribed = True
            return sub
        return None

    def _start(self, msg: Msg) -> None:
        """Deliver ``msg`` in a task of its own, after the one before it of its alert."""
        try:
            n: Notification | None = _decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.error("notify: message %s cannot be decoded (%s); dropped", _seq(msg), exc)
            n = None
        key = (n.alert, n.run) if n is not None else None
        before = self._latest.get(key) if key is not None else None
        task = asyncio.create_task(self._handle(msg, n, before))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        if key is not None:
            self._latest[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))

    def _forget(self, key: tuple[str, str], done: asyncio.Task[None]) -> None:
        if self._latest.get(key) is done:
            del self._latest[key]

    async def _handle(
        self, msg: Msg, n: Notification | None, before: asyncio.Task[None] | None
    ) -> None:
        s = self._settings
        if n is None:
            self.stats.given_up += 1
            await _settle(msg.term())
            return
        attempt = msg.metadata.num_delivered
        alive = asyncio.create_task(self._keep_alive(msg))
        try:
            if before is not None:
                await asyncio.wait([before])  # however it ended: ours goes next
            await self._deliver(n)
        except Exception as exc:
            self.stats.failed_attempts += 1
            retriable = exc.retriable if isinstance(exc, _Failed) else True
            if attempt >= s.max_attempts or not retriable:
                self.stats.given_up += 1
                log.error(
                    "notify: gave up on alert %r of run %s (%s to %s) after %d attempt(s): %s",
                    n.alert,
                    n.run,
                    n.channel,
                    _target(n),
                    attempt,
                    exc,
                )
                await _settle(msg.term())
                return
            delay = min(s.max_backoff_s, s.backoff_s * 2 ** (attempt - 1))
            log.warning(
                "notify: alert %r of run %s (%s to %s), attempt %d of %d failed: %s; "
                "retrying in %.1f s",
                n.alert,
                n.run,
                n.channel,
                _target(n),
                attempt,
                s.max_attempts,
                exc,
                delay,
            )
            await _settle(msg.nak(delay=delay))
        else:
            self.stats.sent += 1
            log.info("notify: alert %r of run %s: %s sent (%s)", n.alert, n.run, n.state, n.channel)
            await _settle(msg.ack())
        finally:
            alive.cancel()

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._settings.ack_wait_s / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _deliver(self, n: Notification) -> None:
        if n.channel == "webhook":
            await self._post(n)
        elif n.channel == "email":
            await self._mail(n)
        else:
            raise _Failed(f"unknown channel {n.channel!r}", retriable=False)

    async def _post(self, n: Notification) -> None:
        if not n.target:
            raise _Failed("the webhook alert has no URL", retriable=False)
        assert self._http is not None  # run() made it
        headers = {"Content-Type": "application/json", "Idempotency-Key": notification_id(n)}
        try:
            async with self._http.post(n.target, data=_webhook_body(n), headers=headers) as resp:
                if not 200 <= resp.status < 300:
                    text = (await resp.text(errors="replace"))[:200]
                    raise _Failed(f"webhook {n.target} answered HTTP {resp.status}: {text!r}")
        except TimeoutError:
            raise _Failed(
                f"webhook {n.target}: no answer within {self._settings.webhook_timeout_s} s"
            ) from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise _Failed(f"webhook {n.target}: {exc.__class__.__name__}: {exc}") from exc

    async def _mail(self, n: Notification) -> None:
        s = self._settings
        if n.target:
            recipients = [r.strip() for r in n.target.split(",") if r.strip()]
        else:
            recipients = list(s.email_to)
        missing = []
        if self._smtp is None:
            missing.append("no SMTP server is configured (set --smtp-url)")
        if not recipients:
            missing.append(
                "the alert names no recipients and there are no defaults (set --alert-email-to)"
            )
        if missing:
            raise _Failed("cannot send email: " + "; ".join(missing))
        assert self._smtp is not None
        server = self._smtp
        if self._tls is None:
            self._tls = ssl.create_default_context()
        message = _email(n, s.smtp_from, recipients)
        try:
            refused = await asyncio.to_thread(send, server, self._tls, s.smtp_timeout_s, message)
        except (smtplib.SMTPException, OSError) as exc:
            raise _Failed(
                f"email to {', '.join(recipients)} via {server.host}:{server.port}: "
                f"{exc.__class__.__name__}: {exc}"
            ) from exc
        if refused:  # some accepted: sending again would repeat it to them
            log.warning("notify: alert %r: recipients refused: %s", n.alert, refused)


async def _settle(reply: Awaitable[None]) -> None:
    """Ack, nak or term; if NATS is away the message comes back after ack_wait."""
    with contextlib.suppress(Exception):
        await reply


def _seq(msg: Msg) -> str:
    with contextlib.suppress(Exception):
        return str(msg.metadata.sequence.stream)
    return "?"
