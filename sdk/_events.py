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
import queue
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

    Printing must never fail, block or deadlock because of it, even from a signal
    handler that prints in the middle of another print or of ``log()``:

    * a write only appends its text to a queue that is safe to re-enter
      (:class:`queue.SimpleQueue`), then tries to process the queue;
    * one caller at a time processes it (a lock taken without waiting): it splits
      the text into lines, applies the bound, and records each line unless the
      log is busy (then the line waits for the next write, or the end);
    * an error while recording stops the capture; once uninstalled, a tee left in
      place (someone replaced ``sys.stdout`` meanwhile, or after a fork) only
      passes text through.
    """

    def __init__(self, emit: TryEmit, max_bytes: int) -> None:
        self._emit = emit
        self._left = max_bytes
        self._max = max_bytes
        self._stopped = False
        self._written: queue.SimpleQueue[tuple[str, str, str, float]] = queue.SimpleQueue()
        self._busy = threading.Lock()  # held by whoever processes the queue
        self._partial = {"stdout": "", "stderr": ""}
        self._lines: collections.deque[tuple[str, str, dict[str, str], float]] = collections.deque()
        self._streams: list[_Tee] = []

    def install(self) -> None:
        self._streams = [
            _Tee(sys.stdout, "stdout", "info", self._written_to),
            _Tee(sys.stderr, "stderr", "error", self._written_to),
        ]
        sys.stdout, sys.stderr = self._streams

    def uninstall(self) -> None:
        """Record what is left (lines without a newline included), put the original
        streams back (unless someone replaced ours meanwhile), record nothing more."""
        if self._busy.acquire(timeout=1.0):  # not forever: this thread may hold it
            try:
                self._split()
                for stream, level in (("stdout", "info"), ("stderr", "error")):
                    rest, self._partial[stream] = self._partial[stream], ""
                    if rest:
                        self._keep(stream, level, rest, time.time())
                self._record(wait=True)
            finally:
                self._stopped = True
                self._lines.clear()
                self._busy.release()
        self._stopped = True
        for tee, name in zip(self._streams, ("stdout", "stderr"), strict=True):
            if getattr(sys, name) is tee:
                setattr(sys, name, tee.original)
        self._streams = []

    def _written_to(self, stream: str, level: str, text: str) -> None:
        if self._stopped:
            return
        self._written.put((stream, level, text, time.time()))  # safe to re-enter
        if not self._busy.acquire(blocking=False):
            return  # processed by whoever holds it (perhaps the print this one interrupts)
        try:
            self._split()
            self._record(wait=False)
        finally:
            self._busy.release()

    def _split(self) -> None:
        """Move written text into lines to record (the caller holds ``_busy``)."""
        while True:
            try:
                stream, level, text, ts = self._written.get_nowait()
            except queue.Empty:
                return
            lines = (self._partial[stream] + text).split("\n")
            self._partial[stream] = lines.pop()
            while len(self._partial[stream]) > MAX_EVENT_BYTES:  # no end yet: in pieces
                lines.append(self._partial[stream][:MAX_EVENT_BYTES])
                self._partial[stream] = self._partial[stream][MAX_EVENT_BYTES:]
            for line in lines:
                for start in range(0, max(len(line), 1), MAX_EVENT_BYTES):  # long: pieces
                    self._keep(stream, level, line[start : start + MAX_EVENT_BYTES], ts)

    def _keep(self, stream: str, level: str, line: str, ts: float) -> None:
        """Queue ``line`` while the bound allows; the first that does not fit stops
        the capture, said by one ``warn`` event."""
        if self._stopped:
            return
        size = len(line.encode("utf-8", "replace"))
        meta = {"stream": stream}
        if size <= self._left:
            self._left -= size
            self._lines.append((level, line, meta, ts))
        else:
            self._stopped = True
            self._lines.append(("warn", self._stop_message(), meta, ts))

    def _record(self, *, wait: bool) -> None:
        while self._lines:
            level, line, meta, ts = self._lines[0]
            try:
                recorded = self._emit(level, line, meta, ts, wait)
            except Exception:  # printing goes on; the capture does not
                self._stopped = True
                self._lines.clear()
                return
            if not recorded:
                return  # the log is busy: the next write, or uninstall, tries again
            self._lines.popleft()

    def _stop_message(self) -> str:
        return (
            f"output capture stopped at {self._max} bytes (Settings.max_captured_bytes): "
            "this line and the rest are printed but not recorded"
        )


class _Tee(io.TextIOBase):
    """A text stream that writes through to ``original`` and hands the text on."""

    def __init__(
        self, original: TextIO, name: str, level: str, written: Callable[[str, str, str], None]
    ) -> None:
        super().__init__()
        self.original = original
        self._name = name
        self._level = level
        self._written = written

    def write(self, text: str) -> int:
        count = self.original.write(text)
        self._written(self._name, self._level, text)
        return count

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
