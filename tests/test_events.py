"""Events and log lines: written by the SDK without I/O, delivered exactly once, read
back in order with filters, and stdout/stderr captured line by line."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import stride
from stride import Settings, UsageError
from stride._events import OutputCapture
from stride._wal import log_dirs
from stride.api_types import EventDoc
from stride.wire import MAX_EVENT_BYTES

from .conftest import StrideUp, read_log, run_python, wait_for, wait_run


def _events(api: stride.Api, path: str, n: int, **filters: Any) -> list[EventDoc]:
    """The run's events once there are ``n`` (exactly: a duplicate would show)."""

    def ready() -> list[Any] | None:
        try:
            events = list(api.run(path).events(**filters))
        except stride.NotFoundError:
            return None
        return events if len(events) >= n else None

    events: list[Any] = wait_for(ready)
    assert len(events) == n
    return events


def test_events_and_logs_read_back_in_order_with_filters(stack: StrideUp, tmp_path: Path) -> None:
    t0 = time.time()
    with stride.init(project="events", id="filters", settings=stack.settings(tmp_path)) as run:
        run.log_event("training started", timestamp=t0)
        run.logs.debug("batch 0 loaded", batch=0)
        run.logs.info("epoch 1 done", epoch=1, loss=0.5)
        run.logs.warn("Learning rate is HIGH", lr=3.0)
        run.logs("CUDA out of memory", level="error", metadata={"gpu": 2}, step=7)
        run.logs.fatal("giving up")
        run.log_event(
            "from an ISO time", timestamp=dt.datetime.fromtimestamp(t0 + 100, dt.UTC).isoformat()
        )
    api = stride.Api(stack.http_url)
    everything = _events(api, run.path, 7)
    assert [e.message for e in everything] == [
        "training started", "batch 0 loaded", "epoch 1 done", "Learning rate is HIGH",
        "CUDA out of memory", "giving up", "from an ISO time",
    ]  # fmt: skip
    assert [e.level for e in everything] == [
        "info", "debug", "info", "warn", "error", "fatal", "info",
    ]  # fmt: skip
    assert everything[0].timestamp == pytest.approx(t0, abs=1e-6)
    assert everything[-1].timestamp == pytest.approx(t0 + 100, abs=1e-6)
    assert everything[2].metadata == {"epoch": 1, "loss": 0.5}
    assert everything[4].metadata == {"gpu": 2, "step": 7}
    assert {e.writer for e in everything} == {everything[0].writer} and everything[0].writer

    ApiRun = api.run(run.path)
    assert [e.message for e in ApiRun.events("error")] == ["CUDA out of memory"]
    assert [e.level for e in ApiRun.events(["debug", "fatal"])] == ["debug", "fatal"]
    assert [e.level for e in ApiRun.events(min_level="error")] == ["error", "fatal"]
    assert [e.message for e in ApiRun.events(contains="high")] == ["Learning rate is HIGH"]
    later = [e.message for e in ApiRun.events(since=t0 + 50)]
    assert later == ["from an ISO time"]
    assert len(list(ApiRun.events(until=t0 + 50))) == 6
    paged = list(ApiRun.events(per_page=2))  # four pages: none repeated, none skipped
    assert [(e.timestamp, e.message) for e in paged] == [
        (e.timestamp, e.message) for e in everything
    ]


def _get(url: str, path: str) -> tuple[int, dict[str, Any]]:
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_bad_filters_are_refused_with_the_reason(stack: StrideUp, tmp_path: Path) -> None:
    with stride.init(project="events", id="bad-filters", settings=stack.settings(tmp_path)) as run:
        run.log_event("one")
    api = stride.Api(stack.http_url)
    _events(api, run.path, 1)
    base = "/api/v1/runs/default/events/bad-filters/events"
    for query, says in (
        ("level=verbose", "unknown level 'verbose'"),
        ("min_level=loud", "unknown min_level 'loud'"),
        ("since=yesterday", "since must be Unix seconds"),
        ("until=nan", "until must be a finite number"),
        ("since=1e30", "since must be a finite number"),
        ("after=garbage", "invalid cursor 'after'"),
        ("per_page=0", "per_page must be between 1 and 10000"),
    ):
        status, body = _get(stack.http_url, f"{base}?{query}")
        assert status == 400, query
        assert says in body["error"], (query, body)
    status, _ = _get(stack.http_url, "/api/v1/runs/default/events/no-such-run/events")
    assert status == 404


def test_bad_events_are_refused_at_the_call(tmp_path: Path) -> None:
    run = stride.init(project="p", mode="offline", settings=Settings(spool_dir=tmp_path))
    with pytest.raises(UsageError, match="unknown log level 'verbose'"):
        run.logs("x", level="verbose")
    with pytest.raises(UsageError, match="an event message must be text, got int"):
        run.log_event(42)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="the limit is 65536"):
        run.log_event("x" * 65537)
    with pytest.raises(UsageError, match="cannot be stored as JSON"):
        run.logs.info("x", thing=object())
    with pytest.raises(UsageError, match="ISO 8601"):
        run.log_event("x", timestamp="last tuesday")
    with pytest.raises(UsageError, match="milliseconds by mistake"):
        run.log_event("x", timestamp=time.time() * 1000)
    with pytest.raises(UsageError, match="log metadata must be a mapping"):
        run.logs("x", metadata=[1, 2])  # type: ignore[arg-type]
    run.finish()
    with pytest.raises(UsageError, match="is finished"):
        run.log_event("too late")


KILLED = """
import os, signal, stride
run = stride.init(project="events", id="killed", server={server!r})
for i in range(500):
    run.logs.info(f"line {{i}}", i=i)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_events_of_a_killed_process_arrive_exactly_once(stack: StrideUp, tmp_path: Path) -> None:
    """SIGKILL right after logging: the helper delivers every event, once, in order."""
    env = {"STRIDE_SPOOL_DIR": str(tmp_path / "spool")}
    with pytest.raises(AssertionError):  # the process dies by SIGKILL: run_python fails
        run_python(KILLED.format(server=stack.nats_url), env=env)
    events = _events(stride.Api(stack.http_url), "default/events/killed", 500)
    assert [e.metadata["i"] for e in events] == list(range(500))
    wait_for(
        lambda: wait_run(stride.Api(stack.http_url), "default/events/killed").state == "crashed"
    )


CAPTURED = """
import sys, stride
run = stride.init(project="events", id="captured", server={server!r}, capture_output=True)
print("hello from stdout")
print("two", "parts")
sys.stderr.write("an error line\\nand a partial")
run.finish()
print("after finish")
"""


def test_stdout_and_stderr_are_captured_line_by_line(stack: StrideUp, tmp_path: Path) -> None:
    env = {"STRIDE_SPOOL_DIR": str(tmp_path / "spool")}
    out = run_python(CAPTURED.format(server=stack.nats_url), env=env)
    assert out.splitlines() == ["hello from stdout", "two parts", "after finish"]  # passed on
    events = _events(stride.Api(stack.http_url), "default/events/captured", 4)
    assert [(e.level, e.message, e.metadata["stream"]) for e in events] == [
        ("info", "hello from stdout", "stdout"),
        ("info", "two parts", "stdout"),
        ("error", "an error line", "stderr"),
        ("error", "and a partial", "stderr"),  # no newline: written out at finish
    ]


def test_capture_stops_at_its_bound_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """The capture alone, its events collected in a list (no run needed to count bytes)."""
    got: list[tuple[str, str]] = []
    capture = OutputCapture(lambda level, message, meta, ts, wait: _add(got, (level, message)), 30)
    capture.install()
    try:
        print("a" * 10)
        print("é" * 5)  # 10 bytes in UTF-8: 20 recorded so far
        print("b" * 11)  # would make 31: the capture stops here
        print("c")
        long_line = "z" * (MAX_EVENT_BYTES + 5)
        sys.stdout.write(long_line)  # printed all the same
    finally:
        capture.uninstall()
    assert [level for level, _ in got] == ["info", "info", "warn"]
    assert got[:2] == [("info", "a" * 10), ("info", "é" * 5)]
    assert "output capture stopped at 30 bytes" in got[2][1]
    assert (
        capsys.readouterr().out == "a" * 10 + "\n" + "é" * 5 + "\n" + "b" * 11 + "\nc\n" + long_line
    )


def test_a_line_longer_than_an_event_is_recorded_in_pieces() -> None:
    got: list[str] = []
    capture = OutputCapture(lambda level, message, meta, ts, wait: _add(got, message), 1 << 20)
    capture.install()
    try:
        sys.stdout.write("y" * (MAX_EVENT_BYTES * 2 + 3) + "\n")
    finally:
        capture.uninstall()
    assert [len(m) for m in got] == [MAX_EVENT_BYTES, MAX_EVENT_BYTES, 3]


def _add(into: list[Any], item: Any) -> bool:
    into.append(item)
    return True


ROBUST = """
import itertools, os, signal, sys, time, stride
settings = stride.Settings(spool_dir={spool!r})
a = stride.init(project="p", mode="offline", settings=settings, capture_output=True)
b = stride.init(project="p", mode="offline", settings=settings, capture_output=True)
a.finish()                    # finished first, though its tee is under b's
print("after a")
b.finish()
print("after b")              # a's tee, buried, only passes text on

c = stride.init(project="p", mode="offline", settings=settings, capture_output=True, id="ticks")
ticks = []
numbers = itertools.count(1)  # next() is one C call: no handler runs inside it
def tick(signum, frame):      # prints while log() holds the log, or print the tee
    n = next(numbers)
    ticks.append(n)
    sys.stdout.write(f"tick {{n}}\\n")  # one write: a line of its own
    if n % 7 == 0:
        print("in", "parts")      # several writes, interrupted by the next tick maybe
signal.signal(signal.SIGALRM, tick)
signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
deadline = time.monotonic() + 1.0
i = 0
while time.monotonic() < deadline:
    c.log({{"x": float(i)}})
    if i % 50 == 0:
        print("from the loop", i)
    i += 1
signal.setitimer(signal.ITIMER_REAL, 0, 0)
pid = os.fork()
if pid == 0:                  # a forked child prints: no error, no write to the log
    try:
        print("in the child")
        os._exit(0)
    except BaseException:
        os._exit(3)
_, status = os.waitpid(pid, 0)
c.finish()
print("ticks", len(ticks), "child", os.waitstatus_to_exitcode(status))
"""


def test_printing_never_fails_or_hangs_because_of_the_capture(tmp_path: Path) -> None:
    """Runs finished out of order, a signal handler that prints while ``log()`` holds
    the log, a forked child that prints: every print works, every tick is recorded."""
    out = run_python(ROBUST.format(spool=str(tmp_path / "s")), timeout=60)
    lines = out.splitlines()
    assert lines[:2] == ["after a", "after b"]
    assert "in the child" in lines
    ticks, child = lines[-1].split()[1::2]
    assert int(ticks) > 10 and child == "0"
    [directory] = [d for d in log_dirs(tmp_path / "s") if any(_ticks(d))]
    recorded = list(_ticks(directory))
    # Each once, in the order they reached stdout (a tick interrupting another's
    # handler may print before it: that order, not the numbers', is the truth).
    assert recorded == re.findall(r"tick \d+", out)
    assert sorted(recorded, key=lambda t: int(t.split()[1])) == [
        f"tick {i}" for i in range(1, int(ticks) + 1)
    ]


def _ticks(directory: Path) -> Any:
    for batch in read_log(directory):
        for event in batch.events:
            yield from re.findall(r"tick \d+", event.message)  # a line another joined
