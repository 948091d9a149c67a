"""The flusher: one background thread running one asyncio loop.

It wakes every ``tick`` and, when the buffer holds ``flush_rows`` rows or its
oldest row is ``linger_s`` old (or run fields changed, or a heartbeat is due),
turns the rows into batches and publishes them to JetStream with pipelined
acks: at most ``max_inflight`` publishes wait for their ack at once, and each
has a deadline (nats-py can leave a publish future unresolved, so nothing here
awaits one without a bound).

A batch goes to the disk spool instead when NATS is unreachable, when its
publish fails or its ack is late, and always in offline mode. Whenever the
connection is up, spooled batches are replayed oldest first and their files
removed once acknowledged. Replays can arrive after newer batches: ingest
orders writes by the batch version, not by arrival, so that is harmless.

Drawn on a napkin::

    log() ──append──> MetricBuffer ──take()──> to_blocks ──> Batch ──┬─> publish_async ─ack─> done
                                                                    └─> Spool ──replay──┘
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from ._buffer import MetricBuffer, to_blocks
from ._settings import Settings
from ._spool import Spool, remove
from .wire import (
    INGEST_SUBJECT,
    WIRE_VERSION,
    Batch,
    MetricBlock,
    decode_batch,
    encode_batch,
    message_id,
)

log = logging.getLogger("stride")


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    entity: str
    project: str
    run_id: str
    writer: str

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"


@dataclasses.dataclass
class DeliveryReport:
    """What a run delivered, and what it left in the spool (returned by ``finish``)."""

    batches_sent: int = 0
    points_sent: int = 0
    batches_spooled: int = 0
    spooled_left: int = 0
    spool_dir: Path | None = None
    last_error: str | None = None

    @property
    def complete(self) -> bool:
        return self.spooled_left == 0

    def __str__(self) -> str:
        text = f"{self.batches_sent} batches ({self.points_sent} points) delivered"
        if self.spooled_left:
            text += (
                f"; {self.spooled_left} batches not yet delivered are kept in {self.spool_dir}"
                f" — upload them with `stride sync {self.spool_dir}`"
            )
        return text


@dataclasses.dataclass
class _Inflight:
    future: asyncio.Future[Any]
    deadline: float
    seq: int
    points: int
    payload: bytes
    spool_path: Path | None  # set when this publish is a replay of a spooled file


class Flusher:
    """Owns the delivery of one run's data; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        identity: RunIdentity,
        buffer: MetricBuffer,
        *,
        offline: bool,
        stream: str = "default",
    ) -> None:
        self._settings = settings
        self._id = identity
        self._buffer = buffer
        self._offline = offline
        self._stream = stream
        self._spool = Spool(settings.spool_dir, identity.writer)
        self._fields_lock = threading.Lock()
        self._set: dict[str, str] = {}
        self._set_once: dict[str, str] = {}
        self._seq = 0
        self._last_ver = 0
        self._inflight: list[_Inflight] = []
        self._replaying: set[Path] = set()
        self._replay_after = 0.0  # a failed replay waits reconnect_interval_s before the next
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._closing = threading.Event()
        self._close_deadline = float("inf")
        self._warned: set[str] = set()
        self.report = DeliveryReport(spool_dir=settings.spool_dir)
        self._thread = threading.Thread(
            target=self._thread_main, name="stride-flusher", daemon=True
        )

    # ---- called from the user's thread -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def set_fields(self, fields: dict[str, str], *, once: bool = False) -> None:
        with self._fields_lock:
            (self._set_once if once else self._set).update(fields)

    def close(self, timeout: float) -> DeliveryReport:
        """Flush, deliver what can be delivered within ``timeout``, spool the rest."""
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        self._thread.join(timeout + 5.0)
        if self._thread.is_alive():  # only if the loop itself is wedged: never hang the user
            self.report.last_error = "flusher did not stop in time"
        self.report.spooled_left = len(self._spool.pending())
        return self.report

    # ---- the flusher thread ------------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except Exception as exc:  # never die silently: everything left goes to disk
            log.exception("stride: the flusher failed; spooling what is left")
            self.report.last_error = repr(exc)
            self._spool_everything_left()
        finally:
            loop.close()

    async def _main(self) -> None:
        s = self._settings
        tick = min(s.linger_s / 4, 0.02)
        last_sent = time.monotonic()
        next_connect = 0.0
        connecting: asyncio.Task[None] | None = None
        first_attempt = True  # hold data (in memory) until the first connect settles
        while True:
            now = time.monotonic()
            if self._needs_connection(connecting) and now >= next_connect:
                # In the background: the loop keeps spooling while NATS is unreachable.
                connecting = asyncio.create_task(self._connect())
                next_connect = now + s.connect_timeout_s + s.reconnect_interval_s
            closing = self._closing.is_set()
            if first_attempt and connecting is not None and connecting.done():
                first_attempt = False
            buffered = len(self._buffer)
            due = (not first_attempt or self._offline) and (
                closing
                or buffered >= s.flush_rows
                or (buffered and now - self._buffer.oldest_at >= s.linger_s)
                or bool(self._set or self._set_once)
                or now - last_sent >= s.heartbeat_s
            )
            if due:
                await self._flush(heartbeat=now - last_sent >= s.heartbeat_s)
                last_sent = time.monotonic()
            self._reap()
            if self._connected() and self._spool.has_pending and now >= self._replay_after:
                await self._replay_spool(limit=32)
            if closing and due and not len(self._buffer) and not (self._set or self._set_once):
                break
            await asyncio.sleep(tick)
        if connecting is not None and not connecting.done():
            await asyncio.wait({connecting}, timeout=self._remaining())
        if self._needs_connection(None) and self._remaining() > 0:
            await self._connect()  # one last bounded try before leaving data in the spool
        if connecting is not None and not connecting.done():
            connecting.cancel()
        await self._drain()

    def _remaining(self) -> float:
        return max(0.0, self._close_deadline - time.monotonic())

    def _needs_connection(self, connecting: asyncio.Task[None] | None) -> bool:
        if self._offline or (connecting is not None and not connecting.done()):
            return False
        return self._js is None

    async def _connect(self) -> None:
        s = self._settings

        async def _quiet(_: Exception) -> None:  # the flusher reports problems itself
            return None

        try:
            # nats-py retries a first connection forever with max_reconnect_attempts=-1:
            # bound it, and keep its endless reconnects for once we are connected.
            nc = await asyncio.wait_for(
                nats.connect(
                    s.server,
                    connect_timeout=s.connect_timeout_s,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=s.reconnect_interval_s,
                    error_cb=_quiet,
                    name=f"stride-writer {self._id.writer}",
                ),
                timeout=s.connect_timeout_s,
            )
            self._nc, self._js = nc, nc.jetstream()
        except Exception as exc:
            self._warn_once(
                "unreachable",
                f"stride: cannot reach NATS at {s.server} ({exc.__class__.__name__}); "
                f"batches are kept in {s.spool_dir} and sent when it is back",
            )

    def _connected(self) -> bool:
        return self._js is not None and self._nc is not None and self._nc.is_connected

    async def _flush(self, *, heartbeat: bool) -> None:
        for batch in self._take_batches(heartbeat=heartbeat):
            await self._send(batch)
            time.sleep(0)  # hand the GIL back to the training thread between batches

    def _take_batches(self, *, heartbeat: bool) -> Iterator[Batch]:
        """Everything buffered and every pending field, as batches (fields ride the first)."""
        groups = self._buffer.take()
        with self._fields_lock:
            set_, self._set = self._set, {}
            set_once, self._set_once = self._set_once, {}
        sent_any = False
        for blocks in to_blocks(groups, self._stream, self._settings.max_batch_bytes):
            yield self._batch(set_, set_once, blocks)
            set_, set_once, sent_any = {}, {}, True
        if set_ or set_once or (heartbeat and not sent_any):
            yield self._batch(set_, set_once, [])

    def _batch(
        self, set_: dict[str, str], set_once: dict[str, str], blocks: list[MetricBlock]
    ) -> Batch:
        ver = max(time.time_ns(), self._last_ver + 1)
        self._last_ver = ver
        seq = self._seq
        self._seq += 1
        i = self._id
        return Batch(
            v=WIRE_VERSION,
            entity=i.entity,
            project=i.project,
            run_id=i.run_id,
            writer=i.writer,
            seq=seq,
            ver=ver,
            set=set_,
            set_once=set_once,
            metrics=blocks,
        )

    async def _send(self, batch: Batch) -> None:
        payload = encode_batch(batch)
        if not self._connected():
            self._spool_batch(batch.seq, payload)
            return
        if len(self._inflight) >= self._settings.max_inflight:
            await self._wait_for_acks()
        await self._publish(batch.seq, batch.points, payload, None)

    async def _publish(
        self, seq: int, points: int, payload: bytes, spool_path: Path | None
    ) -> None:
        assert self._js is not None
        msg_id = message_id(self._id.path, self._id.writer, seq)
        try:
            future = await self._js.publish_async(
                INGEST_SUBJECT,
                payload,
                headers={"Nats-Msg-Id": msg_id},
                wait_stall=self._settings.ack_timeout_s,
            )
        except Exception as exc:
            self.report.last_error = repr(exc)
            if spool_path is None:
                self._spool_batch(seq, payload)
            return
        deadline = time.monotonic() + self._settings.ack_timeout_s
        self._inflight.append(_Inflight(future, deadline, seq, points, payload, spool_path))

    async def _wait_for_acks(self) -> None:
        """Wait (bounded) until at least one in-flight publish completes."""
        pending = [i.future for i in self._inflight if not i.future.done()]
        if pending:
            timeout = max(0.0, min(i.deadline for i in self._inflight) - time.monotonic())
            await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        self._reap()

    def _reap(self) -> None:
        """Settle finished and overdue publishes: count the acked, spool the failed."""
        now = time.monotonic()
        keep: list[_Inflight] = []
        for item in self._inflight:
            if not item.future.done():
                if now < item.deadline:
                    keep.append(item)
                    continue
                item.future.cancel()
                self.report.last_error = "ack timeout"
                self._failed(item)
            elif item.future.cancelled() or item.future.exception() is not None:
                if not item.future.cancelled():
                    self.report.last_error = repr(item.future.exception())
                self._failed(item)
            else:
                self.report.batches_sent += 1
                self.report.points_sent += item.points
                if item.spool_path is not None:
                    remove(item.spool_path)
                    self._replaying.discard(item.spool_path)
        self._inflight = keep

    def _failed(self, item: _Inflight) -> None:
        if item.spool_path is None:
            self._spool_batch(item.seq, item.payload)
        else:
            self._replaying.discard(item.spool_path)  # stays on disk, retried later
            self._replay_after = time.monotonic() + self._settings.reconnect_interval_s

    async def _replay_spool(self, limit: int) -> None:
        started = 0
        for path in self._spool.pending():
            if started >= limit or len(self._inflight) >= self._settings.max_inflight:
                return
            if path in self._replaying:
                continue
            payload = path.read_bytes()
            batch = decode_batch(payload)
            self._replaying.add(path)
            await self._publish(batch.seq, batch.points, payload, path)
            started += 1

    def _spool_batch(self, seq: int, payload: bytes) -> None:
        self._spool.write(seq, payload)
        self.report.batches_spooled += 1
        if not self._offline:
            self._warn_once(
                "spooling",
                f"stride: could not deliver to NATS at {self._settings.server}; "
                f"keeping batches in {self._spool.dir} until it is reachable",
            )

    async def _drain(self) -> None:
        """On close: wait for acks and replay the spool until the close deadline."""
        while (self._inflight or (self._connected() and self._spool.pending())) and (
            time.monotonic() < self._close_deadline
        ):
            if self._connected() and time.monotonic() >= self._replay_after:
                await self._replay_spool(limit=self._settings.max_inflight)
            if self._inflight:
                await self._wait_for_acks()
            else:
                await asyncio.sleep(0.01)
        for item in self._inflight:  # out of time: whatever is unacked stays on disk
            item.future.cancel()
            self._failed(item)
        self._inflight = []
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), timeout=2.0)

    def _spool_everything_left(self) -> None:
        for batch in self._take_batches(heartbeat=False):
            self._spool_batch(batch.seq, encode_batch(batch))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)
