"""The ingest worker: a member of one durable JetStream pull consumer.

Loop: fetch up to ``fetch_batch`` messages → decode (msgspec) → dead-letter the
invalid ones → have every handler prepare its rows → skip batches already in
the ledger → have every handler write (points and keys, run fields: see
:mod:`.handlers`) → record the batches in the ledger → ack. The loop knows no
record kind: a new one is a handler in the registry. A message is acked only
after its data is written; a crash at any point redelivers it, and storage is
idempotent (see :mod:`store.schema`), so a redelivered batch changes nothing.
On stop, the worker stops fetching and finishes the batch in hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from stride.store import AsyncStore, StoreError
from stride.store.schema import BATCHES_COLUMNS
from stride.wire import DLQ_SUBJECT, INGEST_SUBJECT, STREAM, Batch, WireError, decode_batch

from ._memory import release_freed_memory
from ._settings import IngestSettings
from ._tables import build_ledger
from .alerts import AlertEvaluator, AlertsHandler
from .handlers import Handler, check_registry, default_handlers
from .streams import DURABLE, consumer_config, ensure_streams, pull_durable

log = logging.getLogger("stride.ingest")

__all__ = ["IngestStats", "IngestWorker"]

#: After a failed write, the worker waits this long, doubling per failure up to the max.
MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


class IngestStats:
    """Counters a worker keeps (exposed by the service's /api/v1/status)."""

    def __init__(self) -> None:
        self.messages = 0
        self.batches_applied = 0
        self.batches_skipped = 0
        self.points = 0
        self.dead_lettered = 0
        self.write_errors = 0
        self.writes = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclasses.dataclass
class _Job:
    """A fetch decoded and prepared by every handler, waiting to be written."""

    decoded: list[tuple[Msg, Batch]]
    prepared: list[Any]  # per handler, in registry order, for every decoded batch
    ledger: pa.Table | None


def _delivered_late(sub: JetStreamContext.PullSubscription) -> list[Msg]:
    """Messages JetStream sent for a fetch that had already returned: nats-py queues
    them for the next fetch (they are the worker's until acked or ``ack_wait``).
    Read from nats-py's queue, a private attribute: if a version lacks it, they
    come back after ``ack_wait`` as before."""
    queue = getattr(getattr(sub, "_sub", None), "_pending_queue", None)
    late: list[Msg] = []
    while queue is not None and not queue.empty():
        msg = queue.get_nowait()
        if isinstance(msg, Msg) and msg.reply:  # not a status message
            late.append(msg)
    return late


def _bytes(msgs: Sequence[Msg]) -> int:
    return sum(len(m.data) for m in msgs)


def _rfc3339(text: str) -> float | None:
    """Seconds since the epoch of JetStream's RFC 3339 time (nanoseconds cut to micro)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        return None
    day, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(day + (fraction or "")[:7] + zone.replace("Z", "+00:00"))
    return None if stamp.year < 1970 else stamp.timestamp()


class _FetchSize:
    """How many messages to fetch next: ``fetch_bytes`` worth at the sizes seen lately,
    between 1 and ``fetch_batch`` (small batches are many to a fetch, large ones few)."""

    def __init__(self, most: int, target_bytes: int) -> None:
        self._most = most
        self._target = target_bytes
        self._mean = 0.0  # moving average of a message's size; 0 until one is seen

    def next(self) -> int:
        if not self._mean:
            return 1  # the first fetch learns the size
        return max(1, min(self._most, int(self._target / self._mean)))

    def saw(self, msgs: Sequence[Msg]) -> None:
        if msgs:
            size = sum(len(m.data) for m in msgs) / len(msgs)
            self._mean = size if not self._mean else 0.7 * self._mean + 0.3 * size


class _Carry:
    """Messages fetched beyond what one job should hold, kept alive until the next."""

    def __init__(self, keep_alive: Callable[[list[Msg]], Coroutine[Any, Any, None]]) -> None:
        self._keep_alive = keep_alive
        self._msgs: list[Msg] = []
        self._alive: asyncio.Task[None] | None = None

    def keep_past(self, msgs: list[Msg], limit: int) -> list[Msg]:
        """The first of ``msgs`` up to ``limit`` bytes (at least one); keeps the rest."""
        held = 0
        for i, msg in enumerate(msgs):
            held += len(msg.data)
            if held > limit and i > 0:
                self._msgs = msgs[i:]
                self._alive = asyncio.create_task(self._keep_alive(self._msgs))
                return msgs[:i]
        return msgs

    def take(self) -> list[Msg]:
        """What was kept (their job keeps them alive from now on)."""
        msgs, self._msgs = self._msgs, []
        if self._alive is not None:
            self._alive.cancel()
            self._alive = None
        return msgs


class IngestWorker:
    """Consumes batches and stores them through ``handlers`` (by default
    :func:`~.handlers.default_handlers`: metrics, events, run fields; then
    :class:`~.alerts.AlertsHandler`, which evaluates alerts)."""

    def __init__(
        self,
        nc: NatsClient,
        store: AsyncStore,
        settings: IngestSettings,
        *,
        handlers: Sequence[Handler[Any]] | None = None,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._store = store
        self._settings = settings
        if handlers is None:  # alerts last: they read what the others stored
            evaluator = AlertEvaluator(self._js, store, replicas=settings.replicas)
            handlers = [*default_handlers(), AlertsHandler(evaluator)]
        self._handlers = list(handlers)
        check_registry(self._handlers)
        self._stopping = asyncio.Event()
        self._backoff_s = 0.0
        self._fetch_size = _FetchSize(settings.fetch_batch, settings.fetch_bytes)
        self.subscribed = False  # ready: the durable consumer exists and is read
        self.stats = IngestStats()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        s = self._settings
        await ensure_streams(self._js, replicas=s.replicas, duplicate_window_s=s.duplicate_window_s)
        config = consumer_config(self._settings.ack_wait_s)
        return await pull_durable(self._js, INGEST_SUBJECT, STREAM, config)

    async def run(self) -> None:
        """Consume until :meth:`stop` is called."""
        sub = await self._subscribe()
        self.subscribed = True
        for handler in self._handlers:  # a handler with work of its own starts it
            start = getattr(handler, "start", None)
            if start is not None:
                start()
        # Two stages: while one fetch is written (chDB releases the GIL), the next is
        # fetched, decoded and turned into Arrow tables.
        writing: asyncio.Task[None] | None = None
        carry = _Carry(self._keep_alive)  # fetched past fetch_bytes: the next job's start
        trimmed_at = 0  # stats.writes when memory was last given back
        try:
            while not self._stopping.is_set():
                wanted = self._fetch_size.next()
                msgs = carry.take()
                try:
                    if not msgs:
                        msgs = await sub.fetch(wanted, timeout=self._settings.fetch_timeout_s)
                except (TimeoutError, NatsTimeoutError):
                    # Idle: nothing to fetch and nothing being written. Give back
                    # what the last burst freed (see ._memory), once per burst.
                    if self.stats.writes != trimmed_at and (writing is None or writing.done()):
                        trimmed_at = self.stats.writes
                        release_freed_memory()
                    continue
                except Exception as exc:  # stream or consumer gone, connection lost...
                    log.error("ingest: fetch failed (%s); subscribing again in 1 s", exc)
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(Exception):
                        sub = await self._subscribe()
                    continue
                if not msgs:  # nats-py can return an empty fetch
                    continue
                if len(msgs) < wanted:  # (_linger stops at fetch_bytes)
                    msgs += await self._linger(sub, msgs, wanted)
                # A fetch can bring more than asked (nats-py hands over every message
                # that arrived late for an earlier one): the excess waits its turn, so
                # no more than about fetch_bytes is prepared at once.
                msgs = carry.keep_past(msgs, self._settings.fetch_bytes)
                try:
                    job = await self._prepare(msgs)
                except Exception:
                    # Never die on one fetch: unacked messages come back after ack_wait.
                    log.exception(
                        "ingest: could not prepare %d messages; they will be redelivered", len(msgs)
                    )
                    continue
                # Held until written: tell JetStream the batches are still being
                # worked on, or a slow write would see them redelivered meanwhile.
                held = [m for m, _ in job.decoded]
                alive = asyncio.create_task(self._keep_alive(held))
                if writing is not None:
                    await writing
                writing = asyncio.create_task(self._commit_safely(job, alive))
                # Only the task holds the fetch now: once written, it is freed even if
                # no other fetch follows (a burst's last one held here stayed resident).
                del msgs, job, held
        finally:
            kept = carry.take()
            if writing is not None:
                await writing  # the batch in hand is written and acked before stopping
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            # Messages fetched but not written, handed back at once: a worker started
            # next (or another one) takes them now, not after ack_wait.
            for msg in kept + _delivered_late(sub):
                with contextlib.suppress(Exception):
                    await msg.nak()
            for handler in self._handlers:  # a handler with work of its own stops it
                close = getattr(handler, "close", None)
                if close is not None:
                    await close()

    async def _linger(
        self, sub: JetStreamContext.PullSubscription, msgs: list[Msg], wanted: int
    ) -> list[Msg]:
        """Up to ``wanted`` messages in all with ``msgs``, for up to ``fetch_linger_s``,
        and no more than about ``fetch_bytes``: sizes can jump (tiny batches, then a
        re-sync's 8 MiB ones) faster than the fetch size adapts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.fetch_linger_s
        more: list[Msg] = []
        held = _bytes(msgs)
        while len(msgs) + len(more) < wanted and held < self._settings.fetch_bytes:
            remaining = deadline - loop.time()
            if remaining < 0.005 or self._stopping.is_set():
                break
            mean = held / max(1, len(msgs) + len(more))
            room = max(1, int((self._settings.fetch_bytes - held) / max(mean, 1.0)))
            try:
                got = await sub.fetch(min(wanted - len(msgs) - len(more), room), timeout=remaining)
            except (TimeoutError, NatsTimeoutError):
                break
            except Exception:  # the next fetch in run() reports and recovers
                break
            more += got
            held += _bytes(got)
        return more

    async def lag(self) -> dict[str, int | float | None] | None:
        """How far behind ingest is (the shape of :class:`stride.api_types.IngestLag`),
        or ``None`` while NATS cannot say (away, electing a leader, no consumer yet).

        ``pending``: batches in the stream not yet given to a worker;
        ``ack_pending``: given, not yet acknowledged; ``oldest_s``: the age of the
        oldest batch still in the stream (a work queue keeps only unacknowledged
        ones), ``None`` when it is empty.
        """
        try:
            return await self._lag()
        except Exception as exc:
            log.debug("ingest lag unavailable: %s", exc)
            return None

    async def _lag(self) -> dict[str, int | float | None]:
        consumer = await self._js.consumer_info(STREAM, DURABLE)
        # The stream's info as JetStream sends it: it carries the first message's
        # time (``first_ts``), which nats-py's StreamState drops. Reading that
        # message instead would move up to a whole batch per status request.
        reply = await self._nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=5.0)
        state = orjson.loads(reply.data).get("state", {})
        oldest: float | None = None
        if state.get("messages"):
            stamp = _rfc3339(state.get("first_ts", ""))
            if stamp is not None:
                oldest = max(0.0, time.time() - stamp)
        return {
            "pending": consumer.num_pending or 0,
            "ack_pending": consumer.num_ack_pending or 0,
            "oldest_s": oldest,
        }

    def stop(self) -> None:
        self._stopping.set()

    async def _prepare(self, msgs: list[Msg]) -> _Job:
        self.stats.messages += len(msgs)
        self._fetch_size.saw(msgs)
        decoded: list[tuple[Msg, Batch]] = []
        for msg in msgs:
            try:
                decoded.append((msg, decode_batch(msg.data)))
            except WireError as exc:
                await self._dead_letter(msg, str(exc))
        batches = [b for _, b in decoded]
        if not batches:
            return _Job(decoded, [], None)
        try:
            prepared = self._prepare_all(batches)
        except Exception:
            # One bad batch must not hold back the others forever (nothing would ack
            # them): find it by preparing each alone, and dead-letter it.
            log.exception("ingest: could not prepare %d batches; trying each", len(batches))
            decoded = await self._preparable(decoded)
            batches = [b for _, b in decoded]
            if not batches:
                return _Job(decoded, [], None)
            prepared = self._prepare_all(batches)
        # Each payload is decoded, and its batch is what is written from here on (or
        # prepared again): the payload would only hold the fetch's bytes twice.
        for msg, _ in decoded:
            msg.data = b""
        return _Job(decoded, prepared, build_ledger(batches))

    async def _preparable(self, decoded: list[tuple[Msg, Batch]]) -> list[tuple[Msg, Batch]]:
        """``decoded`` without the batches that fail to prepare alone (dead-lettered)."""
        kept: list[tuple[Msg, Batch]] = []
        for msg, batch in decoded:
            try:
                self._prepare_all([batch])
            except Exception as exc:
                await self._dead_letter(msg, f"ingest could not prepare this batch: {exc!r}")
            else:
                kept.append((msg, batch))
        return kept

    def _prepare_all(self, batches: list[Batch]) -> list[Any]:
        return [handler.prepare(batches) for handler in self._handlers]

    async def _keep_alive(self, msgs: list[Msg]) -> None:
        """``in_progress`` for ``msgs`` every third of ``ack_wait`` until cancelled."""
        while True:
            await asyncio.sleep(self._settings.ack_wait_s / 3)
            for msg in msgs:
                with contextlib.suppress(Exception):  # gone or acked meanwhile
                    await msg.in_progress()

    async def _commit_safely(self, job: _Job, alive: asyncio.Task[None]) -> None:
        """Write and ack ``job`` (or nak it), then stop keeping its batches alive."""
        try:
            await self._commit(job)
        except Exception:
            self.stats.write_errors += 1
            log.exception(
                "ingest: could not apply %d batches; they will be redelivered", len(job.decoded)
            )
        finally:
            alive.cancel()

    async def _commit(self, job: _Job) -> None:
        decoded = job.decoded
        try:
            batches = [b for _, b in decoded]
            fresh = await self._not_yet_applied(batches)
            if fresh:
                # Prepared ahead for every batch; again only if the ledger skipped some.
                if len(fresh) == len(batches) and job.ledger is not None:
                    await self._write(job.prepared, job.ledger, len(fresh))
                else:
                    await self._write(self._prepare_all(fresh), build_ledger(fresh), len(fresh))
        except StoreError as exc:
            # Storage is failing: hand the batches back, and wait longer after each
            # failure (up to MAX_BACKOFF_S) before writing again, so an outage is not
            # hammered; the first success resets the wait.
            self.stats.write_errors += 1
            self._backoff_s = min(max(2 * self._backoff_s, MIN_BACKOFF_S), MAX_BACKOFF_S)
            log.error(
                "ingest: write failed, %d batches will be redelivered; retrying in %.1f s: %s",
                len(decoded),
                self._backoff_s,
                exc,
            )
            for msg, _ in decoded:
                await msg.nak(delay=self._backoff_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._backoff_s)
            return
        if self._backoff_s:
            log.info("ingest: storage answers again; writing")
            self._backoff_s = 0.0
        self.stats.batches_skipped += len(decoded) - len(fresh)
        for msg, _ in decoded:
            await msg.ack()

    async def _not_yet_applied(self, batches: list[Batch]) -> list[Batch]:
        if not batches:
            return []
        rows = await self._store.query_arrow(
            "SELECT run, writer, seq FROM batches "
            "WHERE run IN {runs:Array(String)} AND writer IN {writers:Array(String)} "
            "AND seq IN {seqs:Array(UInt64)}",
            {
                "runs": sorted({b.path for b in batches}),
                "writers": sorted({b.writer for b in batches}),
                "seqs": sorted({b.seq for b in batches}),
            },
        )
        applied = set(
            zip(
                rows.column("run").to_pylist(),
                rows.column("writer").to_pylist(),
                rows.column("seq").to_pylist(),
                strict=True,
            )
        )
        fresh: list[Batch] = []
        seen: set[tuple[str, str, int]] = set()
        for b in batches:
            ident = (b.path, b.writer, b.seq)
            if ident not in applied and ident not in seen:
                seen.add(ident)
                fresh.append(b)
        return fresh

    async def _write(self, prepared: list[Any], ledger: pa.Table, batches: int) -> None:
        points = 0
        for handler, rows in zip(self._handlers, prepared, strict=True):
            if rows is not None:
                points += await handler.write(self._store, rows)
        # The ledger is written last: if we die before it, the batch is redelivered
        # and re-applied, which the ReplacingMergeTree tables absorb.
        await self._store.insert_arrow("batches", BATCHES_COLUMNS, ledger)
        self.stats.batches_applied += batches
        self.stats.points += points
        self.stats.writes += 1

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        meta: Any = msg.metadata
        headers = {
            "Stride-Reason": reason[:1000],
            "Stride-Stream-Seq": str(meta.sequence.stream),
            "Nats-Msg-Id": f"dlq-{meta.sequence.stream}",
        }
        try:
            await self._js.publish(DLQ_SUBJECT, msg.data, headers=headers, timeout=10.0)
        except Exception as exc:  # keep the message: it is retried, never dropped
            log.error(
                "ingest: cannot dead-letter message %s (%s); retrying later",
                meta.sequence.stream,
                exc,
            )
            await msg.nak(delay=5.0)
            return
        await msg.ack()
        self.stats.dead_lettered += 1
        log.warning("ingest: message %s dead-lettered: %s", meta.sequence.stream, reason)
