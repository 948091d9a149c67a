"""``Run``: what training code holds. ``log()`` writes one frame into shared memory."""

from __future__ import annotations

import functools
import getpass
import inspect
import logging
import os
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from time import time as _now
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import msgspec

from . import _alerts, _folders
from ._config import NestedDict
from ._events import Logs, OutputCapture, check_message, event_time
from ._fields import json_text as _json
from ._run_files import RunFiles
from ._settings import Settings
from ._signals import terminated
from ._summaries import SummaryBuffer
from ._transport import DeliveryReport, Transport, open_run
from ._wal import (
    EVENT,
    KEYSET,
    ROW,
    ROW_OVERHEAD,
    SET,
    SET_ONCE,
    LogWriter,
    frame_header,
    row_format,
)
from .api_types import AlertDefinition
from .errors import UsageError, check_identifier
from .wire import MAX_EVENT_BYTES, Event

log = logging.getLogger("stride")

_MODES = ("online", "offline", "disabled")
#: What ``set_status`` accepts, and the state each means (Simvue's names included).
_STATE_NAMES = {
    "running": "running",
    "finished": "finished",
    "completed": "finished",
    "failed": "failed",
    "cancelled": "cancelled",
    "terminated": "cancelled",
}
P = ParamSpec("P")
T = TypeVar("T")
_ONE_NUMBER = struct.Struct("<d")


def _user() -> str | None:
    """Who starts the run: ``$STRIDE_USER``, else the login name (``None`` if unknown)."""
    try:
        return os.environ.get("STRIDE_USER") or getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        return None


def _iso_now() -> str:
    return datetime.now(UTC).isoformat()


class Summary(NestedDict):
    """The run summary; setting a key sends it (``run.summary["best"] = 0.9``)."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self._send = send

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            raise UsageError(f"summary keys must be non-empty strings, got {key!r}")
        encoded = _json(value, f"summary[{key!r}]")
        super().__setitem__(key, value)
        self._send({f"summary.{key}": encoded})

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        for key, value in dict(other, **kwargs).items():
            self[key] = value


#: Per key set: the frame packer, its header, its size in bytes.
_Packer = tuple[Callable[..., None], int, int]


class Run(RunFiles):
    """One run being logged. Create it with :func:`stride.init`.

    Example::

        with stride.init(project="vision", config={"lr": 1e-3}) as run:
            for step in range(100):
                run.log({"loss": 1 / (step + 1)})
            run.summary["best_loss"] = 0.01
    """

    def __init__(
        self,
        *,
        entity: str,
        project: str,
        run_id: str,
        name: str,
        config: Mapping[str, Any],
        tags: list[str] | None,
        notes: str | None,
        folder: str | None,
        mode: str,
        settings: Settings,
        name_given: bool,
        running: bool = True,
        resume: bool = False,
        capture_output: bool = False,
    ) -> None:
        self.entity = entity
        self.project = project
        self.id = run_id
        self.name = name
        self.config = NestedDict(config)
        self.tags = list(tags or [])
        self.notes = notes
        self.folder = folder
        self.mode = mode
        self.settings = settings
        self.summary = Summary(self._send_fields)
        self._step = 0
        self._t0 = _now()
        self._packers: dict[tuple[str, ...], _Packer] = {}
        self._system_packers: dict[tuple[str, ...], _Packer] = {}
        self._system_step = 0
        self._buffered = SummaryBuffer()
        self._alerts: dict[str, AlertDefinition] = {}
        self.logs = Logs(self._emit)
        self._capture: OutputCapture | None = None
        self._report = DeliveryReport()
        #: The log ``log()`` writes to; ``None`` once finished (or disabled, or forked).
        self._wal: LogWriter | None = None
        self._closed_reason = "is finished; start a new run to log more"
        self._transport: Transport | None = None
        self._slot = 0
        #: False while the run is ``created`` (``init(running=False)``) and not started.
        self._started = running
        if mode == "disabled":
            self._closed_reason = ""
            return
        # Only what was given: a process joining an existing run by id must not
        # blank its tags, notes or config. Encoded first: a bad value starts nothing.
        init_fields = {"state": _json("running")} if running else {}
        if tags is not None:
            init_fields["tags"] = _json(self.tags, "tags")
        if config:
            init_fields["config"] = _json(dict(config), "config")
        if notes is not None:
            init_fields["notes"] = _json(notes, "notes")
        if folder is not None:
            init_fields["folder"] = _json(_folders.check_folder(folder), "folder")
        name_field = {"name": _json(name, "name")}
        self._transport, self._slot = open_run(self, settings, offline=mode == "offline")
        self._wal = self._transport.log
        if resume and mode == "online":
            self._resume_steps()
        if capture_output:
            self._capture = OutputCapture(self._emit_captured, settings.max_captured_bytes)
            self._capture.install()
        self._write_fields({"created_at": _json(_iso_now()), "user": _json(_user())}, once=True)
        self._write_fields(name_field, once=not name_given)
        if not running:  # first write wins: a run that already has a state keeps it
            self._write_fields({"state": _json("created")}, once=True)
        self._write_fields(init_fields)

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.id}"

    @property
    def step(self) -> int:
        """The step the next ``log()`` without ``step=`` will use."""
        return self._step

    def log(
        self,
        data: Mapping[str, float],
        step: int | None = None,
        *,
        time: float | None = None,
        timestamp: float | None = None,
    ) -> None:
        """Record one row of metrics. Does no I/O; returns in microseconds.

        ``step`` defaults to one more than the last step; ``time`` (seconds since
        the run started) and ``timestamp`` (Unix seconds) default to now. Values
        must be numbers (int, float, bool or anything with ``__float__``).

        The row goes straight into a memory-mapped log file: once ``log()``
        returns, the row survives the process being killed (SIGKILL, the OOM
        killer) and is delivered by the helper, the next process or ``stride sync``.
        """
        w = self._wal
        if w is None:
            return self._not_logging()
        ts = _now() if timestamp is None else float(timestamp)
        if step is None:
            step = self._step
        elif type(step) is not int:
            step = self._check_step(step)
        self._step = step + 1
        keys = tuple(data)
        packer = self._packers.get(keys)
        if packer is None:
            packer = self._new_keyset(keys)
        pack, header, size = packer
        t = ts - self._t0 if time is None else float(time)
        with w.lock:
            pos = w.pos
            if pos + size > w.segment_bytes:
                pos = w.reserve(size)
            try:
                # Packing checks, in C, that every value is a number.
                pack(w.mm, pos, header, step, t, ts, *data.values())
            except struct.error:
                raise self._value_error(data) from None
            w.commit(pos + size)

    def buffer(self, data: Mapping[str, float] | None = None, /, **values: float) -> None:
        """Keep values in memory for :meth:`log_summary`; nothing is logged or sent.

        ``run.buffer({"loss": x})`` or ``run.buffer(loss=x)``, typically once per
        batch, then ``run.log_summary(...)`` once per epoch.
        """
        self._buffered.add({**(data or {}), **values})

    def log_summary(self, *aggregations: str, step: int | None = None) -> dict[str, float]:
        """Log aggregates of the buffered values as metrics, then empty the buffer.

        ``aggregations`` are ``mean`` (the default), ``std``, ``min``, ``max``,
        ``count``, ``sum`` and percentiles ``p50``, ``p90``, ``p95``, ``p99`` (any
        ``p0``-``p100``); each buffered key ``loss`` gives ``loss.mean``, … in one
        ``log()`` row at ``step`` (default: the step the next ``log()`` would use).
        Returns that row (empty, and nothing logged, if nothing was buffered).
        """
        row = self._buffered.aggregates(aggregations)
        if row:
            self.log(row, step=step)
        self._buffered.clear()  # after the log: a refused row keeps the values
        return row

    def _log_system(self, row: Mapping[str, float]) -> None:
        """One row of system metrics (``stride._system``) into the ``system`` stream,
        with its own steps; from the sampler's thread."""
        w = self._wal
        if w is None:
            return
        keys = tuple(row)
        packer = self._system_packers.get(keys) or self._new_keyset(keys, "system")
        pack, header, size = packer
        ts = _now()
        with w.lock:
            pos = w.pos
            if pos + size > w.segment_bytes:
                pos = w.reserve(size)
            pack(w.mm, pos, header, self._system_step, ts - self._t0, ts, *row.values())
            w.commit(pos + size)
        self._system_step += 1

    def add_alert(
        self,
        name: str,
        source: str = "metrics",
        frequency: float = 60.0,
        window: float | None = 300.0,
        rule: str | None = None,
        metric: str | None = None,
        threshold: float | None = None,
        range_low: float | None = None,
        range_high: float | None = None,
        notification: str = "none",
        pattern: str | None = None,
        *,
        stream: str = "default",
        webhook: str | None = None,
        email: str | list[str] | None = None,
        description: str | None = None,
    ) -> str:
        """Define an alert and attach it to this run (Simvue's ``add_alert``); no I/O.

        Ingest evaluates it every ``frequency`` seconds of the run's time, as data
        arrives: a metrics alert averages ``metric`` over the last ``window``
        seconds and is ``critical`` while the mean ``rule`` (``"is above"``/``"is
        below"`` ``threshold``, ``"is outside range"``/``"is inside range"``
        ``range_low``..``range_high``); an events alert is ``critical`` while an
        event or log line holding ``pattern`` was recorded in the last ``window``
        seconds (default ``frequency``). Each change of state is recorded and,
        with ``notification="webhook"`` (``webhook=URL``) or ``"email"``
        (``email=``, else the service's ``--alert-email-to``), sent. A name
        already defined in the project attaches that alert as it was first
        defined. Returns the name.
        """
        definition = _alerts.define_alert(
            name,
            source=source,
            frequency=frequency,
            window=window,
            rule=rule,
            metric=metric,
            stream=stream,
            threshold=threshold,
            range_low=range_low,
            range_high=range_high,
            pattern=pattern,
            notification=notification,
            webhook=webhook,
            email=email,
            description=description,
        )
        if self._alerts.setdefault(name, definition) != definition:
            log.warning(
                "alert %r is already defined for this run; the first definition is used", name
            )
            return name
        self._send_fields(
            {_alerts.ALERT_FIELD_PREFIX + name: _json(msgspec.to_builtins(definition))}
        )
        return name

    def set_folder_details(
        self,
        path: str,
        metadata: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        description: str | None = None,
    ) -> None:
        """Set a folder's metadata, tags and description (Simvue's); no I/O. A detail
        left ``None`` stays as it was; each set replaces the one before (the last
        write wins, from any run). ``path`` is a folder as runs name it
        (``stride.init(folder=...)``); list folders with ``stride.Api().folders()``."""
        self._send_fields(_folders.folder_fields(path, metadata, tags, description))

    # ---- events and logs ------------------------------------------------------------------------

    def log_event(self, message: str, timestamp: float | str | datetime | None = None) -> None:
        """Record an event (Simvue's ``log_event``, level ``info``); no I/O.

        ``timestamp``: Unix seconds, a datetime or ISO 8601 text; now by default.
        Leveled lines with metadata: ``run.logs.info(message, **metadata)``.
        """
        self._emit("info", message, None, timestamp)

    def _emit(
        self,
        level: str,
        message: str,
        metadata: Mapping[str, Any] | None,
        timestamp: float | str | datetime | None,
    ) -> None:
        w = self._wal
        if w is None:
            return self._not_logging()
        check_message(message)
        meta = _json(dict(metadata), "event metadata") if metadata else "{}"
        if len(meta) > MAX_EVENT_BYTES:
            raise UsageError(
                f"event metadata is {len(meta)} characters as JSON; the limit is {MAX_EVENT_BYTES}"
            )
        event = Event(event_time(timestamp, _now()), level, message, meta)
        w.write_frame(EVENT, self._slot, event)

    def _emit_captured(
        self, level: str, message: str, metadata: Mapping[str, Any], timestamp: float, wait: bool
    ) -> bool:
        """Record a captured line; unless ``wait``, not if the log is busy (then False:
        it stays queued). Busy may mean held by this thread, in a signal handler that
        prints while ``log()`` writes: waiting would never end."""
        w = self._wal
        if w is None:
            return True  # closed: nothing more is recorded
        if not wait:
            if not w.lock.acquire(blocking=False):
                return False
            w.lock.release()
        self._emit(level, message, metadata, timestamp)
        return True

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Mark a run made with ``init(running=False)`` ``running`` (nothing if it is)."""
        if self._wal is None:
            return self._not_logging()
        if not self._started:
            self._started = True
            self._write_fields({"state": _json("running")})

    def complete(self) -> DeliveryReport:
        """End the run as ``finished`` (ML-Dash's ``complete``)."""
        return self.finish(0, state="finished")

    def fail(self) -> DeliveryReport:
        """End the run as ``failed``."""
        return self.finish(1, state="failed")

    def cancel(self) -> DeliveryReport:
        """End the run as ``cancelled``."""
        return self.finish(1, state="cancelled")

    def set_status(self, status: str) -> DeliveryReport | None:
        """Set the run's state (Simvue's ``set_status``).

        ``running`` starts it (:meth:`start`); ``finished``, ``failed`` and
        ``cancelled`` end it as :meth:`finish` does, with that state (Simvue's
        ``completed`` and ``terminated`` mean ``finished`` and ``cancelled``).
        ``created`` cannot be set again, and ``crashed`` is the service's to say.
        """
        state = _STATE_NAMES.get(status) if isinstance(status, str) else None
        if state is None:
            raise UsageError(
                f"unknown run status {status!r}: one of running, finished, failed, cancelled "
                "(or Simvue's completed, terminated)"
            )
        if state == "running":
            self.start()
            return None
        return self.finish(0 if state == "finished" else 1, state=state)

    def __call__(self, fn: Callable[Concatenate[Run, P], T]) -> Callable[P, T]:
        """Use the run as a decorator: calling ``fn`` starts the run, passes it as the
        first argument, and ends it as a ``with`` block would (``finished``, or
        ``failed``/``cancelled`` by the exception that leaves ``fn``)."""

        if (
            inspect.iscoroutinefunction(fn)
            or inspect.isgeneratorfunction(fn)
            or (inspect.isasyncgenfunction(fn))
        ):
            raise UsageError(
                f"@run cannot wrap {fn.__name__!r}: it is async or a generator, so the run "
                "would end before its body runs; use `with run:` inside it instead"
            )

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            self.start()
            with self:
                return fn(self, *args, **kwargs)

        return call

    def finish(
        self, exit_code: int = 0, *, state: str | None = None, timeout: float | None = None
    ) -> DeliveryReport:
        """End the run: wait at most ``timeout`` seconds for its data to be acknowledged.

        Whatever is not acknowledged by then is safe on disk in the spool
        directory and still being delivered (by the helper after this process
        exits, by the next run using that directory, or by ``stride sync``);
        the report and a warning say so.
        """
        if self._wal is None or self._transport is None:
            return self._report
        state = state or ("finished" if exit_code == 0 else "failed")
        fields = {"state": state, "exit_code": exit_code, "finished_at": _iso_now()}
        self._write_fields({k: _json(v) for k, v in fields.items()})
        return self._close(timeout)

    def _close(self, timeout: float | None) -> DeliveryReport:
        """Stop writing to the run and wait for its data (its state as last written)."""
        assert self._transport is not None
        if self._capture is not None:
            self._capture.uninstall()
            self._capture = None
        transport, self._transport = self._transport, None
        self._wal = None
        timeout = self.settings.finish_timeout_s if timeout is None else timeout
        self._report = transport.finish_run(self._slot, timeout)
        if not self._report.complete and self.mode != "offline":
            log.warning("stride: run %s finished: %s", self.path, self._report)
        return self._report

    def _leave_created(self, timeout: float | None = None) -> None:
        """The process or ``with`` block ends a run it never started: it stays
        ``created`` (with what was logged), for ``stride.reconnect`` to start."""
        self._closed_reason = (
            f"was left created; stride.reconnect({self.id!r}, project={self.project!r}) starts it"
        )
        self._close(timeout)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._started and self._transport is not None and exc_type is None:
            self._leave_created()
        elif exc_type is None:
            self.finish(0)
        elif issubclass(exc_type, KeyboardInterrupt) or terminated.is_set():
            self.finish(130 if exc_type is KeyboardInterrupt else 143, state="cancelled")
        elif isinstance(exc, SystemExit) and exc.code in (0, None):
            self.finish(0)
        else:
            self.finish(1, state="failed")

    def __repr__(self) -> str:
        return f"<Run {self.path} name={self.name!r} mode={self.mode}>"

    # ---- slow paths, kept out of log() ---------------------------------------------------------

    def _resume_steps(self) -> None:
        """A run joined by id goes on after its largest stored step."""
        assert self._transport is not None
        last, why = self._transport.last_step(self.path, self.settings.resume_timeout_s)
        if why is not None:
            log.warning(
                "stride: cannot learn the last stored step of run %s (%s); log() without "
                "step= starts at 0 (pass step= to continue a run's steps)",
                self.path,
                why,
            )
        elif last is not None:
            self._step = last + 1

    def _not_logging(self) -> None:
        if self._closed_reason:
            raise UsageError(f"run {self.path} {self._closed_reason}")

    def _write_fields(self, fields: dict[str, str], *, once: bool = False) -> None:
        assert self._wal is not None
        self._wal.write_frame(SET_ONCE if once else SET, self._slot, fields)

    def _send_fields(self, fields: dict[str, str]) -> None:
        if self._wal is not None:
            self._write_fields(fields)
        elif self._closed_reason:
            raise UsageError(f"run {self.path} {self._closed_reason}; its summary cannot change")

    def _check_step(self, step: Any) -> int:
        if isinstance(step, bool) or not isinstance(step, int):
            try:
                import operator

                return operator.index(step)  # numpy integers
            except TypeError:
                raise UsageError(f"step must be an integer, got {step!r}") from None
        return int(step)

    def _new_keyset(self, keys: tuple[str, ...], stream: str = "default") -> _Packer:
        for key in keys:
            if not isinstance(key, str) or not key:
                raise UsageError(f"metric names must be non-empty strings, got {key!r}")
            if key.startswith("_"):
                raise UsageError(f"metric name {key!r} is reserved: names starting with '_' are")
            check_identifier("key", key)
        size = ROW_OVERHEAD + 8 * len(keys)
        limit = min(self.settings.max_batch_bytes // 2, self.settings.segment_bytes // 2)
        if size + sum(len(k) for k in keys) > limit:
            raise UsageError(
                f"one log() call with {len(keys)} metrics is {size // 1024} KiB; the limit "
                f"is {limit // 1024} KiB (half a batch). "
                "Split it over several calls with the same step."
            )
        assert self._wal is not None
        ref = self._wal.new_ref()
        self._wal.write_frame(KEYSET, ref, [self._slot, stream, list(keys)])
        packers = self._packers if stream == "default" else self._system_packers
        packer = packers[keys] = (
            row_format(len(keys)).pack_into,
            frame_header(size, ROW, ref),
            size,
        )
        return packer

    def _value_error(self, data: Mapping[str, Any]) -> UsageError:
        for key, value in data.items():
            try:
                _ONE_NUMBER.pack(value)  # the same rule as the row packer
            except struct.error:
                return UsageError(
                    f"metric {key!r} has value {value!r} of type {type(value).__name__}; "
                    "log() records numbers only"
                )
        return UsageError("log() records numbers only")

    def _detach(self, reason: str) -> None:
        """Stop logging without writing anything (this process must not touch the log)."""
        self._wal = None  # first: what the capture still holds is dropped, not written
        if self._capture is not None:  # the streams back; a tee left in place only passes on
            self._capture.uninstall()
            self._capture = None
        self._transport = None
        self._closed_reason = f"cannot log: {reason}; call stride.init in this process"

    def _at_exit(self, timeout: float) -> None:
        """The interpreter exits with the run open: end it as the program ended."""
        if self._wal is None:
            return
        last = getattr(sys, "last_type", None)  # set when an exception ends the program
        if not self._started:
            self._leave_created(timeout)
        elif terminated.is_set():
            self.finish(143, state="cancelled", timeout=timeout)
        elif last is not None and issubclass(last, KeyboardInterrupt):
            self.finish(130, state="cancelled", timeout=timeout)
        elif last is not None and not issubclass(last, SystemExit):
            self.finish(1, state="failed", timeout=timeout)
        else:
            self.finish(0, timeout=timeout)
