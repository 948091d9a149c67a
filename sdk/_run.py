"""``Run``: what training code holds. ``log()`` only appends to memory."""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from time import time as _now
from types import FrameType, TracebackType
from typing import Any

import orjson

from ._buffer import MetricBuffer, record_format
from ._config import NestedDict
from ._flusher import DeliveryReport, Flusher, RunIdentity
from ._names import random_id
from ._settings import Settings
from .errors import UsageError

log = logging.getLogger("stride")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_MODES = ("online", "offline", "disabled")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_ONE_NUMBER = struct.Struct("<d")


def check_identifier(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise UsageError(
            f"invalid {kind} {value!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return value


#: Largest JSON text of one run field (config, tags, a summary value...). A batch
#: must fit in one NATS message; refusing here beats a batch that never sends.
MAX_FIELD_BYTES = 256 * 1024


def _json(value: Any, what: str = "value") -> str:
    try:
        text = orjson.dumps(value, option=_JSON_OPTIONS).decode()
    except TypeError as exc:
        raise UsageError(f"{what} {value!r:.80} cannot be stored as JSON: {exc}") from None
    if len(text) > MAX_FIELD_BYTES:
        raise UsageError(
            f"{what} is {len(text) // 1024} KiB as JSON; the limit is "
            f"{MAX_FIELD_BYTES // 1024} KiB. Store large objects as files instead."
        )
    return text


def _iso_now() -> str:
    return datetime.now(UTC).isoformat()


def _writer_id() -> str:
    """Unique per producing process and run: host, pid, rank and a random tag."""
    host = re.sub(r"[^A-Za-z0-9_.\-]", "_", socket.gethostname())[:48] or "host"
    rank = os.environ.get("RANK", "0")
    return f"{host}-{os.getpid()}-r{rank}-{random_id(6)}"


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


class Run:
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
        self._packers: dict[tuple[str, ...], Callable[..., bytes]] = {}
        self._finished = False
        self._report = DeliveryReport()
        self._buffer = MetricBuffer(settings.max_buffer_rows)
        self._flusher: Flusher | None = None
        if mode == "disabled":
            return
        # Only what was given: a process joining an existing run by id must not
        # blank its tags, notes or config. Encoded first: a bad value starts nothing.
        init_fields = {"state": _json("running")}
        if tags is not None:
            init_fields["tags"] = _json(self.tags, "tags")
        if config:
            init_fields["config"] = _json(dict(config), "config")
        if notes is not None:
            init_fields["notes"] = _json(notes, "notes")
        if folder is not None:
            init_fields["folder"] = _json(folder, "folder")
        name_field = {"name": _json(name, "name")}
        identity = RunIdentity(entity, project, run_id, _writer_id())
        self._flusher = Flusher(settings, identity, self._buffer, offline=mode == "offline")
        self._flusher.set_fields({"created_at": _json(_iso_now())}, once=True)
        self._flusher.set_fields(name_field, once=not name_given)
        self._flusher.set_fields(init_fields)
        self._flusher.start()
        atexit.register(self._at_exit)
        _install_sigterm_handler()

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
        """
        if self._flusher is None:
            if self.mode == "disabled":
                return
            raise UsageError(f"run {self.path} is finished; start a new run to log more")
        ts = _now() if timestamp is None else float(timestamp)
        if step is None:
            step = self._step
        elif type(step) is not int:
            step = self._check_step(step)
        self._step = step + 1
        keys = tuple(data)
        pack = self._packers.get(keys)
        if pack is None:
            pack = self._new_packer(keys)
        try:
            # Packing checks, in C, that every value is a number.
            t = ts - self._t0 if time is None else float(time)
            record = pack(step, t, ts, *data.values())
        except struct.error:
            raise self._value_error(data) from None
        if self._buffer.append(keys, record) >= self._buffer.max_rows:
            self._buffer_full()

    def finish(
        self, exit_code: int = 0, *, state: str | None = None, timeout: float | None = None
    ) -> DeliveryReport:
        """End the run: flush within ``timeout`` seconds and report what was delivered.

        Whatever could not be delivered in time stays in the spool directory,
        named in the report and in a warning; ``stride sync`` uploads it later.
        """
        if self._finished or self._flusher is None:
            self._finished = True
            return self._report
        self._finished = True
        state = state or ("finished" if exit_code == 0 else "failed")
        self._flusher.set_fields(
            {"state": _json(state), "exit_code": _json(exit_code), "finished_at": _json(_iso_now())}
        )
        flusher, self._flusher = self._flusher, None
        self._report = flusher.close(self.settings.finish_timeout_s if timeout is None else timeout)
        atexit.unregister(self._at_exit)
        if not self._report.complete:
            log.warning("stride: run %s finished: %s", self.path, self._report)
        return self._report

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish(0)
        elif issubclass(exc_type, KeyboardInterrupt) or _terminated.is_set():
            self.finish(130 if exc_type is KeyboardInterrupt else 143, state="cancelled")
        elif isinstance(exc, SystemExit) and exc.code in (0, None):
            self.finish(0)
        else:
            self.finish(1, state="failed")

    def __repr__(self) -> str:
        return f"<Run {self.path} name={self.name!r} mode={self.mode}>"

    # ---- slow paths, kept out of log() ---------------------------------------------------------

    def _send_fields(self, fields: dict[str, str]) -> None:
        if self._flusher is not None:
            self._flusher.set_fields(fields)
        elif self.mode != "disabled":
            raise UsageError(f"run {self.path} is finished; its summary can no longer change")

    def _check_step(self, step: Any) -> int:
        if isinstance(step, bool) or not isinstance(step, int):
            try:
                import operator

                return operator.index(step)  # numpy integers
            except TypeError:
                raise UsageError(f"step must be an integer, got {step!r}") from None
        return int(step)

    def _new_packer(self, keys: tuple[str, ...]) -> Callable[..., bytes]:
        for key in keys:
            if not isinstance(key, str) or not key:
                raise UsageError(f"metric names must be non-empty strings, got {key!r}")
            if key.startswith("_"):
                raise UsageError(f"metric name {key!r} is reserved: names starting with '_' are")
            if len(key) > 256:
                raise UsageError(f"metric name {key[:40]!r}... is longer than 256 characters")
        row_bytes = record_format(len(keys)).size + sum(len(k) for k in keys)
        if row_bytes > self.settings.max_batch_bytes // 2:
            raise UsageError(
                f"one log() call with {len(keys)} metrics is {row_bytes // 1024} KiB; the limit "
                f"is {self.settings.max_batch_bytes // 2 // 1024} KiB (half a batch). "
                "Split it over several calls with the same step."
            )
        pack = self._packers[keys] = record_format(len(keys)).pack
        return pack

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

    def _buffer_full(self) -> None:
        """The flusher is behind: wait a bounded time, then keep the row anyway."""
        if not self._buffer.wait_for_room(self.settings.max_block_s):
            log.warning(
                "stride: %d rows are waiting to be sent (limit %d); memory grows until the "
                "flusher catches up. Nothing is dropped.",
                len(self._buffer),
                self._buffer.max_rows,
            )
            self._buffer.max_rows *= 2  # wait and warn again only if it doubles

    def _at_exit(self) -> None:
        if not self._finished:
            if _terminated.is_set():
                self.finish(143, state="cancelled")
            else:
                self.finish(0)


_terminated = threading.Event()
_sigterm_lock = threading.Lock()
_sigterm_installed = False


def _install_sigterm_handler() -> None:
    """Turn SIGTERM into SystemExit so ``with`` blocks and atexit flush the run."""
    global _sigterm_installed
    with _sigterm_lock:
        if _sigterm_installed or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the program has its own handler; respect it
        _sigterm_installed = True

        def _on_sigterm(signum: int, frame: FrameType | None) -> None:
            _terminated.set()
            raise SystemExit(143)

        signal.signal(signal.SIGTERM, _on_sigterm)
