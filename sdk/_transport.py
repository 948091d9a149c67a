"""One delivery path per process, shared by every run in it.

A :class:`Transport` owns the process's write-ahead log (:mod:`stride._wal`)
and the delivery agent that empties it (:mod:`stride._agent`): a helper
process by default, or a thread with ``Settings(delivery="thread")``, or
nothing in offline mode (``stride sync`` delivers later). Runs open a slot
in the log and write frames to it; finishing a run asks the agent for a
report over a socket. The transport closes when its last run finishes; one is
kept per ``(server, spool directory, mode, delivery)``.

Process hygiene (the SDK is a guest in a training process):

* nothing is started at import; the first ``init`` starts the agent;
* the helper process runs in its own session, so Ctrl-C in the terminal
  does not reach it, and it notices the training process is gone when its
  control socket closes;
* after ``fork()`` the child's copies of the runs refuse to log (they would
  write into the parent's log): the child calls ``stride.init`` itself;
* SIGTERM: see :mod:`stride._signals`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _control as protocol
from ._names import random_id
from ._settings import Settings
from ._system import SamplerThread
from ._wal import CLOSE, LOG_FORMAT, OPEN, LogMeta, LogWriter

if TYPE_CHECKING:
    from ._run import Run

log = logging.getLogger("stride")


@dataclasses.dataclass
class DeliveryReport:
    """What ``finish()`` knows about a run's delivery when it returns."""

    batches_sent: int = 0
    points_sent: int = 0
    #: Batches (or not yet batched data) of this run not acknowledged by NATS when
    #: ``finish()`` returned. They are on disk in ``spool_dir`` and still being sent.
    spooled_left: int = 0
    spool_dir: Path | None = None
    last_error: str | None = None
    #: Times this process's undelivered log passed ``Settings.max_spool_bytes`` (each warned).
    spool_warnings: int = 0
    #: Files saved with this run and stored in NATS, and those not yet (still being sent).
    files_sent: int = 0
    files_left: int = 0
    #: Files saved with this run that could not be read when their turn came (deleted
    #: or made unreadable before a hard link was taken), each as ``"<name>: <why>"``:
    #: not uploaded, and never will be.
    files_failed: list[str] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Everything saved was delivered: nothing left to send and no file lost."""
        return self.spooled_left == 0 and self.files_left == 0 and not self.files_failed

    def __str__(self) -> str:
        text = f"{self.batches_sent} batches ({self.points_sent} points) delivered"
        if self.files_sent or self.files_left:
            text += f", {self.files_sent} file(s) sent"
            if self.files_left:
                text += f" and {self.files_left} still uploading"
        if self.files_failed:
            shown = "; ".join(self.files_failed[:3])
            more = len(self.files_failed) - 3
            text += (
                f"; {len(self.files_failed)} saved file(s) could not be read and were not "
                f"uploaded, save them again ({shown}{f'; and {more} more' if more > 0 else ''})"
            )
        if self.spooled_left or self.files_left:
            text += (
                f"; the rest is kept in {self.spool_dir} and delivered by the helper once NATS "
                f"answers, by the next run that uses that directory, or by `stride sync "
                f"{self.spool_dir}`"
            )
        if not self.complete and self.last_error:
            text += f" (last error: {self.last_error})"
        return text


def writer_id() -> str:
    """Unique per producing process: host, pid, rank and a random tag."""
    host = re.sub(r"[^A-Za-z0-9_.\-]", "_", socket.gethostname())[:48]
    if not host[:1].isalnum() or not host[:1].isascii():
        host = "h" + host  # a writer name starts with a letter or digit (stride.ids)
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"  # global, else node's
    rank = re.sub(r"[^0-9]", "", rank)[:6] or "0"
    return f"{host}-{os.getpid()}-r{rank}-{random_id(6)}"


_BOOT = (
    "import json, os, sys; a = json.loads(os.environ.pop('STRIDE_AGENT')); "
    "sys.path[:0] = a['path']; from stride._helper import main; main(a)"
)


class _Helper(subprocess.Popen[bytes]):
    """The delivery helper's process. This process never waits for it: it may
    outlive us, delivering what is left. So, unlike a plain ``Popen``, dropping
    it while it runs (at the latest when the interpreter exits) is not reported
    as a leak (``ResourceWarning: subprocess N is still running``); one that has
    exited is reaped, as ``Popen`` does."""

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at exit, modules may be half torn down
            self.poll()


class Transport:
    def __init__(self, settings: Settings, *, offline: bool) -> None:
        self.settings = settings
        self.offline = offline
        self.spool_dir = settings.spool_dir.resolve()
        self.writer = writer_id()
        meta = LogMeta(
            writer=self.writer,
            host=socket.gethostname(),
            pid=os.getpid(),
            segment_bytes=settings.segment_bytes,
            offline=offline,
            created=time.time(),
            format=LOG_FORMAT,
        )
        self.dir = self.spool_dir / self.writer
        self.log = LogWriter(self.dir, meta, settings.max_spool_bytes)
        self.runs: dict[int, Run] = {}
        self._pid = os.getpid()
        self._control: socket.socket | None = None
        self._control_lock = threading.Lock()
        self._system: SamplerThread | None = None
        if settings.system_interval_s > 0:
            self._system = SamplerThread(settings.system_interval_s, self._log_system)
            self._system.start()
        self._requests = 0  # the id of the last request sent to the agent
        self._helper: _Helper | None = None
        self.helper_log: Path | None = None
        self._thread: threading.Thread | None = None
        self.closed = False
        if not offline:
            self._start_agent()

    # ---- runs -----------------------------------------------------------------------------------

    def open_run(self, run: Run) -> int:
        slot = self.log.new_ref()
        self.log.write_frame(OPEN, slot, [run.entity, run.project, run.id])
        self.runs[slot] = run
        return slot

    def last_step(self, path: str, timeout: float) -> tuple[int | None, str | None]:
        """The run's largest stored step (``None``: it has none), asked of the service
        through the agent; or ``(None, why)`` when it cannot be known."""
        if self.offline:
            return None, "an offline run cannot ask the service"
        reply = self._request(["last_step", path, timeout], timeout + 5.0)
        if reply is None:
            return None, self._silence()
        _, step, error = reply
        return step, error

    def finish_run(self, slot: int, timeout: float) -> DeliveryReport:
        """Close the run's slot and wait (at most ``timeout``) until its data is acknowledged."""
        upto = self.log.write_frame(CLOSE, slot)
        report = DeliveryReport(
            spool_dir=self.spool_dir, spooled_left=1, spool_warnings=self.log.spool_warnings
        )
        if self.offline:
            report.last_error = "offline run: upload it with `stride sync`"
        else:
            reply = self._request(["finish", slot, upto, timeout], timeout + 5.0)
            if reply is None:
                report.last_error = self._silence()
            else:
                _, report.batches_sent, report.points_sent, report.spooled_left, *rest = reply
                report.last_error, report.files_sent, report.files_left, report.files_failed = rest
        with _registry_lock:
            self.runs.pop(slot, None)
            if not self.runs:
                self.close()
        return report

    # ---- the agent ------------------------------------------------------------------------------

    def _start_agent(self) -> None:
        ours, theirs = socket.socketpair()
        self._control = ours
        if self.settings.delivery == "thread":
            self._start_thread(theirs)
            return
        args = {
            "path": [p for p in sys.path if isinstance(p, str)],
            "fd": theirs.fileno(),
            "dir": str(self.dir),
            "settings": json.loads(self.settings.to_json()),
        }
        args["settings"]["spool_dir"] = str(self.spool_dir)
        # Its messages go to a file beside the log, not to this process's stdout and
        # stderr: a caller waiting for those to close (capture_output, $(...), CI)
        # must not wait for the helper. It removes the file if it stayed empty.
        self.helper_log = self.spool_dir / f"{self.writer}.helper.log"
        args["log"] = str(self.helper_log)
        try:
            with open(self.helper_log, "ab") as stderr:
                self._helper = _Helper(
                    [sys.executable, "-I", "-c", _BOOT],
                    env={**os.environ, "STRIDE_AGENT": json.dumps(args)},
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,  # Ctrl-C in the terminal is not for it
                )
        except OSError as exc:
            log.warning(
                "stride: cannot start the delivery helper (%s); delivering from a thread instead",
                exc,
            )
            self._start_thread(theirs)
            return
        theirs.close()
        # Kept, never waited for: it outlives this transport (and maybe this process).
        # A finished one is reaped when the next helper starts.
        _helpers[:] = [h for h in _helpers if h.poll() is None]
        _helpers.append(self._helper)

    def _silence(self) -> str:
        """Why the agent did not answer, for the report."""
        code = self._helper.poll() if self._helper is not None else None
        if code is None:
            where = f"; its messages: {self.helper_log}" if self.helper_log else ""
            return f"the delivery agent did not answer in time{where}"
        return (
            f"the delivery helper exited (status {code}; its messages: {self.helper_log}); "
            f"what was logged is kept in {self.spool_dir}: the next run there, or "
            f"`stride sync {self.spool_dir}`, delivers it"
        )

    def _start_thread(self, control: socket.socket) -> None:
        self._thread = threading.Thread(
            target=_run_agent_thread,
            args=(self.settings, self.dir, control),
            name="stride-delivery",
            daemon=True,
        )
        self._thread.start()

    def _request(
        self, message: list[Any], timeout: float, *, lock_timeout: float = -1
    ) -> list[Any] | None:
        control = self._control
        if control is None or not self._control_lock.acquire(timeout=lock_timeout):
            return None
        try:
            self._requests += 1
            deadline = time.monotonic() + timeout
            try:
                control.settimeout(timeout)
                control.sendall(protocol.encode(message, self._requests))
                while True:  # a late reply to an earlier request that timed out: dropped
                    control.settimeout(max(0.001, deadline - time.monotonic()))
                    (size,) = protocol.LENGTH.unpack(_recv_exactly(control, protocol.LENGTH.size))
                    request, reply = protocol.decode(_recv_exactly(control, size))
                    if request == self._requests:
                        return reply
            except (OSError, EOFError):
                return None
        finally:
            self._control_lock.release()

    def _log_system(self, row: dict[str, float]) -> None:
        """One sample for every run open in this process (the sampler's thread)."""
        for run in list(self.runs.values()):
            with contextlib.suppress(ValueError):  # the log closed meanwhile
                run._log_system(row)

    def close(self) -> None:
        """No more runs: let the agent deliver the rest and finish on its own."""
        with _registry_lock:
            if self.closed:
                return
            self.closed = True
            _forget(self)
        if self._system is not None:
            self._system.stop()
        # The log first (its page thread stops): once told "close", the agent may
        # deliver the rest and delete the directory at once.
        self.log.close()
        if self._control is not None:
            with contextlib.suppress(OSError), self._control_lock:
                self._control.sendall(protocol.encode(["close"]))
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._control is not None:
            self._control.close()
            self._control = None

    def terminated(self, timeout: float) -> None:
        """SIGTERM: the process is about to end; delivery marks its open runs cancelled.

        Nothing is written to the log here: the signal may have interrupted a
        ``log()`` of this very thread, which holds the log's lock.
        """
        if not self.offline and not self.closed:
            # The signal may have interrupted a finish() of this thread, which holds the
            # control lock while it waits: never wait for that lock here.
            self._request(["terminated", timeout, self.log.position], timeout, lock_timeout=0.2)

    def forked(self) -> None:
        """In a forked child: this log belongs to the parent; never write or signal it."""
        self.closed = True
        for run in self.runs.values():
            run._detach("this process is a fork of the one that started the run")
        # Close this process's copies of the control socket and the lock file: the
        # helper must see end of file when the parent dies, even while this child
        # lives, and an adopter must find the lock free. (The parent's copies, and
        # its shared flock, are not affected by closing these.)
        if self._control is not None:
            self._control.close()
            self._control = None
        self.log.forget_in_child()
        self.runs.clear()

    def at_exit(self) -> None:
        if os.getpid() != self._pid or self.closed:
            return
        # One deadline for all of them: exit waits finish_timeout_s at most, not per run.
        deadline = time.monotonic() + self.settings.finish_timeout_s
        for run in list(self.runs.values()):
            run._at_exit(max(0.0, deadline - time.monotonic()))
        self.close()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError("the delivery agent closed its socket")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _run_agent_thread(settings: Settings, directory: Path, control: socket.socket) -> None:
    from ._agent import Agent, open_own_reader

    own = open_own_reader(directory)
    agent = Agent(settings, own=own, control=control)
    try:
        asyncio.run(agent.run())
    except Exception:
        log.exception("stride: the delivery thread failed; the data is kept in %s", directory)


# ---- one transport per (server, spool dir, mode, delivery) --------------------------------------

_Key = tuple[str, Path, bool, str]
_transports: dict[_Key, Transport] = {}
_registry_lock = threading.RLock()  # close() runs with it held, and may be re-entered
_hooks_installed = False
_helpers: list[_Helper] = []


def open_run(run: Run, settings: Settings, *, offline: bool) -> tuple[Transport, int]:
    """The process's transport for these settings (started if needed), and a slot in it.

    Under the registry lock, as the close of a transport whose last run ends is:
    a run never lands in a transport that is closing.
    """
    key = (settings.server, settings.spool_dir.resolve(), offline, settings.delivery)
    with _registry_lock:
        transport = _transports.get(key)
        if transport is None or transport.closed:
            _install_process_hooks()
            transport = _transports[key] = Transport(settings, offline=offline)
        return transport, transport.open_run(run)


def open_transports() -> list[Transport]:
    return list(_transports.values())


def _forget(transport: Transport) -> None:
    """Drop a closed transport from the registry (called with ``_registry_lock`` held)."""
    for key, value in list(_transports.items()):
        if value is transport:
            del _transports[key]


def _install_process_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)
    from ._signals import install_sigterm_handler

    install_sigterm_handler()


def _at_exit() -> None:
    for transport in list(_transports.values()):
        transport.at_exit()


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.RLock()
    for transport in list(_transports.values()):
        transport.forked()
    _transports.clear()
