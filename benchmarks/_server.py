"""Shared benchmark plumbing: a ``stride up`` subprocess, an HTTP getter, percentiles."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _die_with_parent() -> None:  # runs in the child, before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


#: ``preexec_fn`` for benchmark children: SIGTERM them if the benchmark dies (even SIGKILL).
DIE_WITH_PARENT = _die_with_parent if sys.platform == "linux" else None


def handle_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``with``/ExitStack cleanup stops ``stride up``."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


class StrideUp:
    """``stride up --data-dir DIR --nats-port 0 --http-port 0`` as a subprocess.

    Use as a context manager: the process gets SIGTERM (and is waited for, then
    killed if it does not stop) on exit, errors included.
    """

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        start_timeout: float = 60.0,
        cpus: set[int] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.extra = extra  # more `stride up` flags
        self.start_timeout = start_timeout
        self.cpus = cpus  # pin stride up (and nats-server) to these CPUs
        self.proc: subprocess.Popen[str] | None = None
        self.nats_url = ""
        self.http_url = ""
        self.output: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> StrideUp:
        args = [sys.executable, "-m", "stride.cli", "up", "--data-dir", str(self.data_dir)]
        args += ["--nats-port", "0", "--http-port", "0", *self.extra]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            cwd=ROOT,
            preexec_fn=self._preexec,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line.rstrip())
            if line.startswith("stride: NATS"):
                self.nats_url = line.split()[-1]
            elif line.startswith("stride: HTTP"):
                self.http_url = line.split()[-1]
            if self.nats_url and self.http_url:
                # keep draining the pipe so the server never blocks on a full stdout
                self._reader = threading.Thread(target=self._drain, daemon=True)
                self._reader.start()
                self._wait_for_stream(deadline)
                return self
        self.stop()
        raise RuntimeError("stride up did not start:\n" + "\n".join(self.output[-20:]))

    def _preexec(self) -> None:  # in the child, before exec
        if DIE_WITH_PARENT is not None:
            DIE_WITH_PARENT()
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def _wait_for_stream(self, deadline: float) -> None:
        """``stride up`` prints its addresses before ingest has created the JetStream
        stream; a publish in that window fails and is spooled. Wait for the stream so
        the benchmarks do not measure that start-up race."""
        import asyncio

        import nats

        from stride.wire import STREAM

        async def check() -> bool:
            nc = await nats.connect(self.nats_url)
            try:
                while time.monotonic() < deadline:
                    try:
                        await nc.jetstream().stream_info(STREAM)
                        return True
                    except Exception:
                        await asyncio.sleep(0.05)
                return False
            finally:
                await nc.close()

        if not asyncio.run(check()):
            raise RuntimeError(f"stream {STREAM} never appeared on {self.nats_url}")

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip())
            del self.output[:-200]

    def stop(self, timeout: float = 60.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(5.0)
        return proc.returncode

    def __enter__(self) -> StrideUp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Http:
    """A kept-alive HTTP/1.1 GET client (the same transport the SDK's ``Api`` uses)."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        assert parsed.hostname is not None
        self._conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)

    def get_raw(self, path: str, params: Sequence[tuple[str, Any]] = ()) -> bytes:
        query = urllib.parse.urlencode([(k, v) for k, v in params if v is not None])
        self._conn.request("GET", path + (f"?{query}" if query else ""))
        response = self._conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} -> {response.status}: {body[:300]!r}")
        return body

    def get(self, path: str, params: Sequence[tuple[str, Any]] = ()) -> Any:
        return orjson.loads(self.get_raw(path, params))

    def close(self) -> None:
        self._conn.close()


def ingested_points(http: Http) -> int:
    return int(http.get("/api/v1/status")["ingest"]["points"])


def wait_for_points(http: Http, expected: int, timeout: float, poll_s: float = 0.05) -> float:
    """Poll /api/v1/status until ``expected`` points were ingested; the monotonic time then."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if ingested_points(http) >= expected:
            return now
        if now > deadline:
            raise TimeoutError(
                f"only {ingested_points(http)} of {expected} points ingested after {timeout}s"
            )
        time.sleep(poll_s)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


def fmt_rate(per_s: float) -> str:
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f} k/s"
    return f"{per_s:.1f} /s"


def verdict(ok: bool) -> str:
    return "MEETS target" if ok else "MISSES target"


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds used so far by ``pid`` (Linux /proc), children excluded."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``, whichever of its threads started them."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in children.read_text().split()]
    return sorted(found)


class Profiler:
    """``py-spy record`` of ``pid`` while the ``with`` block runs (if ``output`` is set).

    The format follows the suffix: ``.svg`` flame graph, ``.txt`` collapsed
    stacks, ``.json`` speedscope. Sampling is non-blocking (the target is not
    paused), but py-spy itself takes CPU: a profiled run is not a measurement.
    """

    def __init__(self, pid: int, output: Path | None, rate: int = 100) -> None:
        self.pid, self.output, self.rate = pid, output, rate
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.output is None:
            return self
        fmt = {".txt": "raw", ".json": "speedscope"}.get(self.output.suffix, "flamegraph")
        py_spy = Path(sys.executable).parent / "py-spy"
        self.proc = subprocess.Popen(
            [
                *(str(py_spy), "record", "--pid", str(self.pid), "--output", str(self.output)),
                *("--rate", str(self.rate), "--nonblocking", "--threads", "--format", fmt),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"py-spy profile of pid {self.pid}: {self.output}")
