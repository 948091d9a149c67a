"""Events and log lines from training code, and the capture of stdout and stderr.

``run.log_event(message)`` (Simvue) and ``run.logs.info(message, **metadata)``
(ML-Dash's leveled logs) each write one EVENT frame into the run's log, as
``log()`` writes a row: a memory write, no I/O. The frames travel in the
run's batches (:attr:`stride.wire.Batch.events`), exactly once, and ingest
stores them in the ``events`` table; ``ApiRun.events`` reads them back in
order, with filters.

``stride.init(..., capture_output=True)`` also records what the process
prints through ``sys.stdout`` (level ``info``) and ``sys.stderr`` (level
``error``), a line per event, up to ``Settings.max_captured_bytes`` per run;
the first line past that stops the capture, and one ``warn`` event says so. Output written to the
file descriptors directly (C extensions, subprocesses) is not seen.
"""

from __future__ import annotations

import collections
import io
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TextIO

from .errors import UsageError
from .wire import LEVELS, MAX_EVENT_BYTES, MAX_EVENT_SECONDS

__all__ = ["LEVELS", "Logs", "OutputCapture", "TryEmit", "check_message", "event_time"]

Emit = Callable[[str, str, Mapping[str, Any] | None, float | None], None]


class Logs:
    """``run.logs``: leveled log lines with structured metadata.

    ``run.logs.info("epoch done", epoch=3)``, or ``run.logs("oom", level="error",
    metadata={"gpu": 2})``; levels ``debug``, ``info``, ``warn``, ``error``, ``fatal``.
    """

    def __init__(self, emit: Emit) -> None:
        self._emit = emit

    def __call__(
        self,
        message: str,
        level: str = "info",
        metadata: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if level not in LEVELS:
            raise UsageError(f"unknown log level {level!r}: one of {', '.join(LEVELS)}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise UsageError(f"log metadata must be a mapping, got {type(metadata).__name__}")
        self._emit(level, message, {**(metadata or {}), **kwargs}, None)

    def debug(self, message: str, **metadata: Any) -> None:
        self._emit("debug", message, metadata, None)

    def info(self, message: str, **metadata: Any) -> None:
        self._emit("info", message, metadata, None)

    def warn(self, message: str, **metadata: Any) -> None:
        self._emit("warn", message, metadata, None)

    warning = warn

    def error(self, message: str, **metadata: Any) -> None:
        self._emit("error", message, metadata, None)

    def fatal(self, message: str, **metadata: Any) -> None:
        self._emit("fatal", message, metadata, None)


def check_message(message: object) -> str:
    if not isinstance(message, str):
        raise UsageError(f"an event message must be text, got {type(message).__name__}")
    if len(message) > MAX_EVENT_BYTES:
        raise UsageError(
            f"an event message is {len(message)} characters; the limit is {MAX_EVENT_BYTES}. "
            "Save long text as a file (run.save_data)."
        )
    return message


def event_time(timestamp: float | str | datetime | None, now: float) -> float:
    """Seconds since the epoch from a number, an ISO 8601 text or a datetime (naive
    ones are taken as local time, as Python does); ``now`` when ``None``."""
    if timestamp is None:
        return now
    if isinstance(timestamp, datetime):
        return timestamp.timestamp()
    if isinstance(timestamp, str):
        try:
            return datetime.fromisoformat(timestamp).timestamp()
        except ValueError:
            raise UsageError(
                f"event timestamp {timestamp!r}: give Unix seconds, a datetime or ISO 8601 text"
            ) from None
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise UsageError(f"event timestamp must be a number of seconds, got {timestamp!r}")
    if not -MAX_EVENT_SECONDS < timestamp < MAX_EVENT_SECONDS:
        raise UsageError(
            f"event timestamp {timestamp!r} is not Unix seconds (milliseconds by mistake?)"
        )
    return float(timestamp)


#: Records one captured line; unless told to ``wait``, False when it cannot at once
#: (the log is busy, perhaps held by this very thread: a signal handler that prints
#: during ``log()``).
TryEmit = Callable[[str, str, Mapping[str, Any], float, bool], bool]


class OutputCapture:
    """Tees ``sys.stdout`` and ``sys.stderr`` into one run's events while installed.

    Printing must never fail or block because of it: a line that cannot be
    recorded at once waits in a queue for the next write (or the end); an error
    while recording stops the capture; once uninstalled, a tee left in place
    (someone else replaced ``sys.stdout`` meanwhile) only passes text through.
    """

    def __init__(self, emit: TryEmit, max_bytes: int) -> None:
        self._emit = emit
        self._left = max_bytes
        self._max = max_bytes
        self._stopped = False
        self._lock = threading.Lock()
        self._pending: collections.deque[tuple[str, str, dict[str, str], float]] = (
            collections.deque()
        )
        self._streams: list[_Tee] = []

    def install(self) -> None:
        self._streams = [
            _Tee(sys.stdout, "stdout", "info", self._line),
            _Tee(sys.stderr, "stderr", "error", self._line),
        ]
        sys.stdout, sys.stderr = self._streams

    def uninstall(self) -> None:
        """Record what was left without a newline, put the original streams back
        (unless someone replaced ours meanwhile), and record nothing more."""
        for tee in self._streams:
            tee.flush_partial()
        self._drain(wait=True)
        with self._lock:
            self._stopped = True
            self._pending.clear()
        for tee, name in zip(self._streams, ("stdout", "stderr"), strict=True):
            if getattr(sys, name) is tee:
                setattr(sys, name, tee.original)
        self._streams = []

    def _line(self, stream: str, level: str, line: str) -> None:
        """Queue ``line`` while the bound allows (the first that does not fit stops
        the capture, said by one ``warn`` event), then record what is queued."""
        size = len(line.encode("utf-8", "replace"))
        meta = {"stream": stream}
        with self._lock:
            if self._stopped:
                return
            if size <= self._left:
                self._left -= size
                self._pending.append((level, line, meta, time.time()))
            else:
                self._stopped = True
                self._pending.append(("warn", self._stop_message(), meta, time.time()))
        self._drain()

    def _drain(self, *, wait: bool = False) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                level, line, meta, ts = self._pending[0]
            try:
                recorded = self._emit(level, line, meta, ts, wait)
            except Exception:  # printing goes on; the capture does not
                with self._lock:
                    self._stopped = True
                    self._pending.clear()
                return
            if not recorded:
                return  # the next write, or uninstall, tries again
            with self._lock:
                if self._pending and self._pending[0][3] == ts:
                    self._pending.popleft()

    def _stop_message(self) -> str:
        return (
            f"output capture stopped at {self._max} bytes (Settings.max_captured_bytes): "
            "this line and the rest are printed but not recorded"
        )


class _Tee(io.TextIOBase):
    """A text stream that writes through to ``original`` and hands complete lines on."""

    def __init__(
        self, original: TextIO, name: str, level: str, line: Callable[[str, str, str], None]
    ) -> None:
        super().__init__()
        self.original = original
        self._name = name
        self._level = level
        self._line = line
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        written = self.original.write(text)
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            while len(self._partial) > MAX_EVENT_BYTES:  # a line with no end yet
                lines.append(self._partial[:MAX_EVENT_BYTES])
                self._partial = self._partial[MAX_EVENT_BYTES:]
        for line in lines:
            for start in range(0, max(len(line), 1), MAX_EVENT_BYTES):  # long: in pieces
                self._line(self._name, self._level, line[start : start + MAX_EVENT_BYTES])
        return written

    def flush_partial(self) -> None:
        with self._lock:
            rest, self._partial = self._partial, ""
        if rest:
            self._line(self._name, self._level, rest)

    def flush(self) -> None:
        self.original.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.original.isatty()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.original.encoding

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)
