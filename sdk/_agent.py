"""The delivery agent: reads logs, publishes batches to JetStream, trims what is acked.

One agent serves one process's log (the *own* log, whose writer is alive)
and any logs it adopts: logs left in the same spool directory by processes
that died (their lock is free). It runs in the helper process the SDK starts
(the default), in a thread of the training process (``delivery="thread"``),
or inside ``stride sync``. One asyncio loop, one NATS connection::

    every tick:  read new frames ──> builders ──seal──> publish_async ──ack──> trim segments
                 (when connected)     per run     (seq, ver, range     ≤ max_inflight
                                                   written first)      each with a deadline

Control messages from the training process arrive on a socket (4-byte
length + msgpack, see :mod:`stride._control`): ``["finish", slot, upto, timeout]``
asks for a report once everything of that run up to log position ``upto`` is
acknowledged (answered ``["report", batches_sent, points_sent, left, last_error,
files_sent, files_left, files_failed]``), and ``["close"]``
says the writer is done. End of file on the socket means the training
process is gone: the agent delivers what it left, marks runs it never
finished ``crashed``, and exits; if NATS stays unreachable it gives up after
``orphan_timeout_s`` and leaves the log for the next process or ``stride sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.js import JetStreamContext

from . import _control as protocol
from ._batches import SEAL_CANCELLED, SEAL_CRASHED
from ._reader import LogReader, Outgoing
from ._settings import Settings
from ._uploads import Uploader
from ._wal import LOG_FORMAT, read_meta, try_lock_exclusive
from .wire import INGEST_SUBJECT, LAST_STEP_SUBJECT, decode_last_step, message_id

log = logging.getLogger("stride")

_WHOLE_LOG = -1  # a waiter for everything in the own log
#: A log that could not be read is renamed with this suffix and left alone.
UNREADABLE_SUFFIX = ".unreadable"


@dataclasses.dataclass
class _Inflight:
    reader: LogReader
    item: Outgoing
    future: asyncio.Future[Any]
    deadline: float


@dataclasses.dataclass
class _Waiter:
    slot: int
    upto: int
    deadline: float
    request: int  # the id its reply carries


@dataclasses.dataclass
class AgentReport:
    """What an agent delivered (``stride sync`` prints it)."""

    batches: int = 0
    points: int = 0
    duplicates: int = 0  # already delivered earlier: JetStream recognised the message id
    logs_done: int = 0
    logs_left: list[Path] = dataclasses.field(default_factory=list)
    last_error: str | None = None
    files: int = 0


class Agent:
    def __init__(
        self,
        settings: Settings,
        *,
        own: LogReader | None = None,
        control: socket.socket | None = None,
        adopt: bool = True,
        include_offline: bool = False,
        give_up_s: float | None = None,
    ) -> None:
        self._s = settings
        self._own = own
        self._control = control
        self._adopt = adopt
        self._include_offline = include_offline
        self._give_up_s = settings.orphan_timeout_s if give_up_s is None else give_up_s
        self._readers: list[LogReader] = [own] if own is not None else []
        self._inflight: list[_Inflight] = []
        self._retry: list[tuple[LogReader, Outgoing]] = []
        self._retry_after = 0.0
        self._waiters: list[_Waiter] = []
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._warned: set[str] = set()
        self._writer_gone_at: float | None = None if own is not None else time.monotonic()
        self._next_adopt = 0.0
        self._progress_at = time.monotonic()  # the last acknowledgement
        self._writer: asyncio.StreamWriter | None = None
        self._end_kind = SEAL_CRASHED  # how the own log's unfinished runs end
        self._wakeup = asyncio.Event()
        self._connect_failures = 0
        self._answers: set[asyncio.Task[None]] = set()
        self.report = AgentReport()
        self._uploads = Uploader(
            settings.file_window, settings.ack_timeout_s, self._warn_once, self._wakeup.set
        )

    # ---- the loop -------------------------------------------------------------------------------

    async def run(self) -> AgentReport:
        s = self._s
        tick = pause = min(s.linger_s / 4, 0.02)
        connecting: asyncio.Task[None] | None = None
        next_connect = 0.0
        control_task = (
            asyncio.create_task(self._read_control()) if self._control is not None else None
        )
        try:
            while True:
                now = time.monotonic()
                if self._adopt and now >= self._next_adopt:
                    self._adopt_orphans()
                    self._next_adopt = now + 30.0
                idle = connecting is None or connecting.done()
                if self._js is None and idle and now >= next_connect:
                    connecting = asyncio.create_task(self._connect())
                    next_connect = now + s.connect_timeout_s + s.reconnect_interval_s
                busy = self._send_ready(now) if self._connected() else 0
                busy += self._reap()
                busy += self._uploads.step(
                    *((self._nc, self._js) if self._connected() else (None, None)),
                    [r.dir for r in self._readers],
                )
                self._progress_at = max(self._progress_at, self._uploads.progress_at)
                self._trim_and_forget()
                self._answer_waiters(now)
                if self._done(now):
                    break
                if self._waiters:  # finish() is waiting on this loop: answer it promptly
                    pause = 0.001
                elif busy or self._inflight:
                    pause = tick
                else:  # idle: wake less and less often, up to linger_s
                    pause = min(pause * 2, s.linger_s)
                with contextlib.suppress(TimeoutError):  # a control message wakes it early
                    await asyncio.wait_for(self._wakeup.wait(), pause)
                self._wakeup.clear()
        finally:
            if control_task is not None:
                control_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await control_task
            if connecting is not None and not connecting.done():
                connecting.cancel()
            for inflight in self._inflight:
                inflight.future.cancel()
            await self._uploads.close()
            self.report.files = self._uploads.files_sent
            for reader in self._readers:
                self.report.logs_left.append(reader.dir)
                reader.close()
            self._answer_waiters(float("inf"))
            if self._writer is not None:
                self._writer.close()
            elif self._control is not None:
                self._control.close()
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._nc.close(), timeout=2.0)
        return self.report

    def _done(self, now: float) -> bool:
        if self._writer_gone_at is None:
            return False  # the training process still writes
        if not self._readers:
            return True
        if now - max(self._writer_gone_at, self._progress_at) >= self._give_up_s:
            left = ", ".join(str(r.dir) for r in self._readers)
            log.warning(
                "stride: gave up delivering after %.1f s without progress (%s); "
                "the data is kept in %s: upload it with `stride sync`",
                self._give_up_s,
                self.report.last_error or "NATS unreachable",
                left,
            )
            return True
        return False

    def _send_ready(self, now: float) -> int:
        """Publish what is due; return how many batches went out."""
        s = self._s
        sent = len(self._inflight)
        for reader in list(self._readers):
            room = s.max_inflight - len(self._inflight) - len(self._retry)
            if room <= 0:
                break
            out: list[Outgoing] = []
            try:
                reader.read(now, s.max_batch_bytes, room, out)
                for slot in reader.due(now, s.linger_s, s.flush_rows, s.heartbeat_s):
                    out.append(reader.seal(slot))
                reader.end_orphans(out, self._end_kind if reader is self._own else SEAL_CRASHED)
            except Exception as exc:  # one bad log must not stop the others
                self._set_aside(reader, exc)
                continue
            for item in out:
                self._publish(reader, item)
        if self._retry and now >= self._retry_after:
            retry, self._retry = self._retry, []
            for reader, item in retry:
                self._publish(reader, item)
        return len(self._inflight) - sent

    def _publish(self, reader: LogReader, item: Outgoing) -> None:
        assert self._js is not None
        state = reader.slots[item.slot]
        msg_id = message_id(state.ref.path, reader.writer, item.seq)
        future = asyncio.ensure_future(
            self._js.publish(
                INGEST_SUBJECT,
                item.payload,
                headers={"Nats-Msg-Id": msg_id},
                timeout=self._s.ack_timeout_s,
            )
        )
        deadline = time.monotonic() + self._s.ack_timeout_s + 1.0
        self._inflight.append(_Inflight(reader, item, future, deadline))

    def _reap(self) -> int:
        """Settle finished and overdue publishes; return how many settled."""
        now = time.monotonic()
        keep: list[_Inflight] = []
        for inflight in self._inflight:
            future = inflight.future
            if not future.done():
                if now < inflight.deadline:
                    keep.append(inflight)
                    continue
                future.cancel()
                self._failed(inflight, "ack timeout")
            elif future.cancelled() or future.exception() is not None:
                exc = None if future.cancelled() else future.exception()
                self._failed(inflight, f"{exc.__class__.__name__}: {exc}" if exc else "cancelled")
            else:
                ack = future.result()
                self._progress_at = now
                inflight.reader.acked(inflight.item)
                if getattr(ack, "duplicate", False):
                    self.report.duplicates += 1
                else:
                    self.report.batches += 1
                    self.report.points += inflight.item.points
        settled = len(self._inflight) - len(keep)
        self._inflight = keep
        return settled

    def _failed(self, inflight: _Inflight, reason: str) -> None:
        """Publish again later, as the same batch: same message id, same payload."""
        self.report.last_error = reason
        self._retry.append((inflight.reader, inflight.item))
        self._retry_after = time.monotonic() + self._s.reconnect_interval_s
        self._warn_once(
            "refused",
            f"stride: NATS at {self._s.server} did not accept a batch ({reason}); "
            "retrying, the data is safe in the spool directory",
        )

    def _trim_and_forget(self) -> None:
        for reader in list(self._readers):
            try:
                reader.trim_delivered()
                if reader.finished() and not self._uploads.pending(reader.dir):
                    self._readers.remove(reader)
                    reader.remove()
                    self.report.logs_done += 1
            except Exception as exc:
                self._set_aside(reader, exc)

    def _set_aside(self, reader: LogReader, exc: Exception) -> None:
        """Stop delivering a log that cannot be read, say so, and keep it for inspection."""
        self._readers.remove(reader)
        self._retry = [(r, item) for r, item in self._retry if r is not reader]
        reader.close()
        self.report.logs_left.append(reader.dir)
        kept = reader.dir
        if reader is not self._own:  # renamed, so no agent adopts it again
            kept = reader.dir.with_name(reader.dir.name + UNREADABLE_SUFFIX)
            with contextlib.suppress(OSError):
                reader.dir.rename(kept)
        log.error(
            "stride: cannot deliver the log %s (%s: %s); it is kept as it is for "
            "inspection; please report this with the directory attached",
            kept,
            exc.__class__.__name__,
            exc,
        )

    # ---- connection -----------------------------------------------------------------------------

    def _connected(self) -> bool:
        return self._js is not None and self._nc is not None and self._nc.is_connected

    async def _connect(self) -> None:
        s = self._s

        async def _quiet(_: Exception) -> None:  # the agent reports problems itself
            return None

        try:
            # nats-py retries a first connection forever with max_reconnect_attempts=-1:
            # bound it, and keep its endless reconnects for once we are connected.
            nc = await asyncio.wait_for(
                nats.connect(
                    [server.strip() for server in s.server.split(",")],
                    connect_timeout=s.connect_timeout_s,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=s.reconnect_interval_s,
                    error_cb=_quiet,
                    name="stride-delivery",
                ),
                timeout=s.connect_timeout_s,
            )
            self._nc, self._js = nc, nc.jetstream()
        except Exception as exc:
            self._connect_failures += 1
            self.report.last_error = f"cannot reach NATS at {s.server}: {exc.__class__.__name__}"
            self._warn_once(
                "unreachable",
                f"stride: cannot reach NATS at {s.server} ({exc.__class__.__name__}); "
                f"logged data is kept in {s.spool_dir} and sent when it is back",
            )

    # ---- adopting logs left behind -------------------------------------------------------------

    def _adopt_orphans(self) -> None:
        root = self._s.spool_dir
        if not root.is_dir():
            return
        mine = {r.dir for r in self._readers}
        for directory in sorted(p for p in root.iterdir() if p.is_dir() and p not in mine):
            if directory.name.endswith(UNREADABLE_SUFFIX):
                continue
            meta = read_meta(directory)
            if meta is None or (meta.offline and not self._include_offline):
                continue
            if meta.format > LOG_FORMAT:
                self._warn_once(
                    f"format-{directory}",
                    f"stride: {directory} was written by a newer Stride (log format "
                    f"{meta.format}); upgrade to deliver it",
                )
                continue
            if not self._include_offline and meta.host != socket.gethostname():
                continue  # on a shared file system, another machine's logs are its own
            lock = try_lock_exclusive(directory)
            if lock is None:
                continue  # its writer or its agent is alive
            if read_meta(directory) is None:  # removed by its agent meanwhile
                lock.close()
                continue
            try:
                reader = LogReader(directory, meta, lock, writer_alive=False)
            except Exception as exc:
                lock.close()
                log.warning(
                    "stride: cannot read the spooled log %s (%s); left as it is", directory, exc
                )
                continue
            self._readers.append(reader)

    # ---- control --------------------------------------------------------------------------------

    async def _read_control(self) -> None:
        assert self._control is not None
        reader, self._writer = await asyncio.open_unix_connection(sock=self._control)
        try:
            while True:
                header = await reader.readexactly(protocol.LENGTH.size)
                body = await reader.readexactly(protocol.LENGTH.unpack(header)[0])
                request, message = protocol.decode(body)
                if self._own is not None:
                    self._own.catch_up()
                self._wakeup.set()
                self._uploads.invalidate()  # count every file saved before the message
                if message[0] == "finish":
                    _, slot, upto, timeout = message
                    self._waiters.append(_Waiter(slot, upto, time.monotonic() + timeout, request))
                elif message[0] == "last_step":
                    _, path, timeout = message
                    answer = asyncio.create_task(self._answer_last_step(path, timeout, request))
                    self._answers.add(answer)
                    answer.add_done_callback(self._answers.discard)
                elif message[0] == "close":
                    self._writer_gone()
                elif message[0] == "terminated":  # SIGTERM: the process ends after the reply
                    # Its runs end "cancelled" once it is gone (end of file, below);
                    # meanwhile other threads may still log: it is not gone yet.
                    _, timeout, upto = message
                    self._end_kind = SEAL_CANCELLED
                    self._waiters.append(
                        _Waiter(_WHOLE_LOG, upto, time.monotonic() + timeout, request)
                    )
        except (asyncio.IncompleteReadError, ConnectionError):
            self._writer_gone()  # the training process is gone

    async def _answer_last_step(self, path: str, timeout: float, request: int) -> None:
        """Ask the service for the run's largest stored step; reply ``["last_step",
        step or None, why it is unknown or None]``. Not connected yet: wait for the
        connection, or for the next attempt to fail."""
        deadline = time.monotonic() + timeout
        failures = self._connect_failures
        step: int | None = None
        error: str | None = None
        while not self._connected() and self._connect_failures == failures:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        if not self._connected() or self._nc is None:
            error = f"NATS at {self._s.server} does not answer"
        else:
            try:
                reply = await self._nc.request(
                    LAST_STEP_SUBJECT, path.encode(), timeout=max(0.1, deadline - time.monotonic())
                )
                step, error = decode_last_step(reply.data)
            except NoRespondersError:
                error = "no Stride service (stride up, stride ingest) answers on NATS"
            except Exception as exc:  # a timeout, a malformed reply
                error = f"{exc.__class__.__name__}: {exc}"
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(protocol.encode(["last_step", step, error], request))

    def hurry(self, seconds: float) -> None:
        """Stop waiting for the writer; give up ``seconds`` from now if NATS does not answer."""
        self._writer_gone()
        assert self._writer_gone_at is not None
        self._give_up_s = min(self._give_up_s, time.monotonic() - self._writer_gone_at + seconds)

    def _writer_gone(self) -> None:
        self._uploads.invalidate()  # a save made just before the end must be seen
        if self._writer_gone_at is None:
            self._writer_gone_at = time.monotonic()
            if self._own is not None:
                self._own.writer_alive = False

    def _answer_waiters(self, now: float) -> None:
        if not self._waiters:
            return
        own = self._own
        keep = []
        for waiter in self._waiters:
            slot = None if waiter.slot == _WHOLE_LOG else waiter.slot
            if own is None or own not in self._readers:
                left, files_left = (0, 0), 0
            else:
                left = own.pending(waiter.upto, slot)
                files_left = self._uploads.pending(own.dir, slot)
            if (left != (0, 0) or files_left) and now < waiter.deadline:
                keep.append(waiter)
                continue
            state = own.slots.get(waiter.slot) if own is not None else None
            sent = (state.batches_sent, state.points_sent) if state is not None else (0, 0)
            error = self.report.last_error or self._uploads.last_error
            left_count = left[0] + (1 if left[1] else 0)
            uploads, directory = self._uploads, own.dir if own is not None else None
            files_sent = uploads.sent(directory, waiter.slot) if directory else 0
            failed = uploads.failed(directory, waiter.slot) if directory else []
            reply = ["report", *sent, left_count, error, files_sent, files_left, failed]
            if self._writer is not None and not self._writer.is_closing():
                self._writer.write(protocol.encode(reply, waiter.request))
        self._waiters = keep

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)


def open_own_reader(directory: Path) -> LogReader:
    """The agent's view of its own process's log (the writer holds the lock shared)."""
    from ._wal import lock_shared

    meta = read_meta(directory)
    if meta is None:
        raise FileNotFoundError(f"no log at {directory}")
    return LogReader(directory, meta, lock_shared(directory), writer_alive=True)
