"""What the file and artifact workers share: one durable consumer of records on
``STRIDE_FILES``, fetched a batch at a time, kept alive while worked on,
dead-lettered with a reason when they cannot succeed, handed back with a
growing pause when storage fails."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError

from stride.store import AsyncStore
from stride.store.objects import ObjectStore
from stride.wire import DLQ_SUBJECT, FILES_STREAM

from ._settings import IngestSettings
from .streams import ensure_streams, pull_durable
from .worker import MAX_BACKOFF_S, MIN_BACKOFF_S

log = logging.getLogger("stride.ingest")

__all__ = ["RecordWorker"]

#: Records fetched at once.
_FETCH_RECORDS = 64


class RecordWorker:
    """Subclasses set ``durable``, ``subject`` and ``what`` and implement :meth:`_handle`;
    ``stats`` needs ``dead_lettered`` and ``errors`` counters."""

    durable: str
    subject: str
    what: str  # "files", "artifacts": names the worker in logs

    def __init__(
        self, nc: NatsClient, store: AsyncStore, objects: ObjectStore, settings: IngestSettings
    ) -> None:
        self._nc = nc
        self._objects = objects
        self._js = nc.jetstream()
        self._store = store
        self._settings = settings
        self._stopping = asyncio.Event()
        self._backoff_s = 0.0
        self.subscribed = False
        self.dead_lettered = 0
        self.errors = 0

    def stop(self) -> None:
        self._stopping.set()

    async def _handle(self, msgs: list[Msg]) -> None:
        raise NotImplementedError

    async def _closing(self) -> None:
        """Called once the loop has ended."""

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        s = self._settings
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_wait=s.file_ack_wait_s,
            max_deliver=-1,
            filter_subject=self.subject,
        )
        try:
            return await pull_durable(self._js, self.subject, FILES_STREAM, config)
        except NotFoundError:  # the stream is gone (deleted by hand): make it again
            await ensure_streams(
                self._js, replicas=s.replicas, duplicate_window_s=s.duplicate_window_s
            )
            return await pull_durable(self._js, self.subject, FILES_STREAM, config)

    async def run(self) -> None:
        s = self._settings
        sub = await self._subscribe()
        self.subscribed = True
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(_FETCH_RECORDS, timeout=s.fetch_timeout_s)
                except (TimeoutError, NatsTimeoutError):
                    continue
                except Exception as exc:  # stream or consumer gone, connection lost...
                    log.error("%s: fetch failed (%s); subscribing again in 1 s", self.what, exc)
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(Exception):
                        sub = await self._subscribe()
                    continue
                alive = asyncio.create_task(self._keep_alive(msgs))
                try:
                    await self._handle(msgs)
                except Exception:  # never die on one fetch: unacked records come back
                    log.exception("%s: could not handle %d records", self.what, len(msgs))
                finally:
                    alive.cancel()
                if self._backoff_s:  # something was handed back: do not hammer storage
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self._backoff_s)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            await self._closing()

    def _succeeded(self) -> None:
        self._backoff_s = 0.0

    async def _hand_back(self, msg: Msg, exc: Exception, delay: float | None = None) -> None:
        """Storage failed: nak for redelivery after a pause that doubles per failure
        (or after ``delay``, for a record waiting on something else)."""
        if delay is None:
            self.errors += 1
            self._backoff_s = min(max(2 * self._backoff_s, MIN_BACKOFF_S), MAX_BACKOFF_S)
            log.error(
                "%s: could not store a record (%s: %s); retrying in %.1f s",
                self.what,
                exc.__class__.__name__,
                exc,
                self._backoff_s,
            )
        with contextlib.suppress(Exception):
            await msg.nak(delay=self._backoff_s if delay is None else delay)

    async def _keep_alive(self, msgs: list[Msg]) -> None:
        while True:
            await asyncio.sleep(self._settings.file_ack_wait_s / 3)
            for msg in msgs:
                with contextlib.suppress(Exception):  # acked meanwhile
                    await msg.in_progress()

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        meta = msg.metadata
        headers = {
            "Stride-Reason": reason[:1000],
            "Stride-Stream": FILES_STREAM,
            "Nats-Msg-Id": f"dlq-files-{meta.sequence.stream}",
        }
        try:
            await self._js.publish(DLQ_SUBJECT, msg.data, headers=headers, timeout=10.0)
        except Exception as exc:
            log.error("%s: cannot dead-letter a record (%s); retrying later", self.what, exc)
            await msg.nak(delay=5.0)
            return
        await msg.ack()
        self.dead_lettered += 1
        log.warning("%s: record %s dead-lettered: %s", self.what, meta.sequence.stream, reason)
