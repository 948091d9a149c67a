"""A training process killed by SIGKILL (or the OOM killer) loses nothing it logged.

Each test runs a real writer process that logs as fast as it can and prints,
every 20,000 rows, how many ``log()`` calls have returned; the test then
SIGKILLs it. Every row up to the last printed count must be stored, in order,
exactly once: the scan shows each step once, and ingest's own point counter
(which counts what was applied, after the ledger) equals the rows times the
keys, so no batch was applied twice under another identity.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import stride
from stride._wal import ROW, log_dirs
from stride._wal import scan as scan_frames

from .conftest import STRIDE, free_port, scan, state_of, stride_up, wait_for, wait_rows

KILLED_WRITER = textwrap.dedent(
    """
    import sys, stride
    delivery, run_id, report_every = sys.argv[1], sys.argv[2], int(sys.argv[3])
    settings = stride.Settings.from_env(
        delivery=delivery, connect_timeout_s=0.3, reconnect_interval_s=0.3
    )
    run = stride.init(project="crash", id=run_id, settings=settings)
    i = 0
    while True:
        run.log({"a": float(i), "b": -float(i)}, step=i)
        i += 1
        if i % report_every == 0:
            print(i, flush=True)  # every row below i has returned from log()
    """
)


def _log_then_kill(server: str, spool: Path, delivery: str, run_id: str, rows: int) -> int:
    """Start a writer, SIGKILL it once ``rows`` rows were logged; return how many were."""
    env = {**os.environ, "STRIDE_SERVER": server, "STRIDE_SPOOL_DIR": str(spool)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, delivery, run_id, "20000"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    logged = 0
    while logged < rows:
        line = proc.stdout.readline()
        assert line, "the writer died before it was killed"
        logged = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    return logged


def _assert_exactly_once(api: stride.Api, path: str, logged: int) -> None:
    rows = wait_rows(api, path, logged)
    assert len(rows) >= logged
    assert [r["_step"] for r in rows] == list(range(len(rows)))  # a prefix: no gap, no repeat
    assert all(r["a"] == r["_step"] and r["b"] == -r["_step"] for r in rows)
    wait_for(lambda: api.get("/api/v1/status")["ingest"]["points"] == 2 * len(rows))
    wait_for(lambda: state_of(api, path) == "crashed")  # its helper or recoverer says so


def test_sigkill_with_nats_up_loses_nothing(tmp_path: Path) -> None:
    with stride_up(tmp_path / "data") as up:
        logged = _log_then_kill(up.nats_url, tmp_path / "spool", "process", "up", 100_000)
        # The helper outlives the writer and delivers what it left.
        _assert_exactly_once(stride.Api(up.http_url), "default/crash/up", logged)
        wait_for(lambda: not log_dirs(tmp_path / "spool"))


@pytest.mark.slow
def test_sigkill_with_nats_down_is_delivered_when_nats_returns(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    logged = _log_then_kill(f"nats://127.0.0.1:{port}", spool, "process", "down", 200_000)
    assert log_dirs(spool)  # nothing could be sent: it is all on disk
    # NATS comes back while the orphaned helper is still retrying: it delivers.
    with stride_up(tmp_path / "data", "--nats-port", str(port)) as up:
        _assert_exactly_once(stride.Api(up.http_url), "default/crash/down", logged)
        wait_for(lambda: not log_dirs(spool))


@pytest.mark.slow
def test_oom_kill_with_a_large_backlog_then_recovery_twice(tmp_path: Path) -> None:
    """The measured failure: 200,000 rows logged while NATS was unreachable, then SIGKILL
    of the whole process (a thread delivers here: nothing outlives the kill). The rows
    are recovered by `stride sync`, and a second recovery of a copy duplicates nothing."""
    port = free_port()
    spool, copy = tmp_path / "spool", tmp_path / "copy"
    logged = _log_then_kill(f"nats://127.0.0.1:{port}", spool, "thread", "oom", 200_000)
    shutil.copytree(spool, copy)
    with stride_up(tmp_path / "data", "--nats-port", str(port)) as up:
        api = stride.Api(up.http_url)
        for directory in (spool, copy):
            done = subprocess.run(
                [*STRIDE, "sync", str(directory), "--server", up.nats_url],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            assert not log_dirs(directory)
        assert "already delivered" in done.stdout  # the copy: JetStream knew every batch
        _assert_exactly_once(api, "default/crash/oom", logged)


def test_the_next_process_on_the_same_spool_delivers_a_killed_writers_log(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    with stride_up(tmp_path / "data") as up:
        logged = _log_then_kill(up.nats_url, spool, "thread", "adopted", 60_000)
        settings = up.settings(spool, delivery="thread")
        with stride.init(project="crash", id="next", settings=settings) as run:
            run.log({"a": 1.0})
        api = stride.Api(up.http_url)
        _assert_exactly_once_across(api, logged)
        wait_for(lambda: not log_dirs(spool))


def _assert_exactly_once_across(api: stride.Api, logged: int) -> None:
    rows = wait_rows(api, "default/crash/adopted", logged)
    assert [r["_step"] for r in rows] == list(range(len(rows)))
    assert len(rows) >= logged
    # 2 points per killed row, plus the new run's one point.
    wait_for(lambda: api.get("/api/v1/status")["ingest"]["points"] == 2 * len(rows) + 1)
    assert len(scan(api, "default/crash/next")) == 1


def test_os_exit_delivers_everything_and_marks_the_run_crashed(tmp_path: Path) -> None:
    """os._exit skips atexit: nothing finishes the run, yet nothing logged is lost."""
    spool = tmp_path / "spool"
    with stride_up(tmp_path / "data") as up:
        code = (
            "import os, stride\n"
            f"s = stride.Settings(server={up.nats_url!r}, spool_dir={str(spool)!r})\n"
            "run = stride.init(project='crash', id='os-exit', settings=s)\n"
            "for i in range(30000):\n"
            "    run.log({'a': float(i), 'b': -float(i)}, step=i)\n"
            "os._exit(3)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], timeout=60)
        assert done.returncode == 3
        _assert_exactly_once(stride.Api(up.http_url), "default/crash/os-exit", 30_000)


def test_a_torn_log_is_delivered_up_to_the_tear_and_others_in_full(tmp_path: Path) -> None:
    """Two logs left on disk; one's tail is garbage (an OS crash before writeback).
    `stride sync` delivers the good one whole and the torn one up to the tear."""
    spool = tmp_path / "spool"
    code = (
        "import stride, sys\n"
        f"s = stride.Settings(spool_dir={str(spool)!r})\n"
        "run = stride.init(project='tears', id=sys.argv[1], mode='offline', settings=s)\n"
        "for i in range(1000):\n"
        "    run.log({'a': float(i)}, step=i)\n"
        "run.finish()\n"
    )
    for run_id in ("whole", "torn"):
        subprocess.run([sys.executable, "-c", code, run_id], check=True, timeout=60)
    segment = next(
        d / "seg-000000.log"
        for d in log_dirs(spool)
        if b"torn" in (d / "seg-000000.log").read_bytes()[:4096]
    )
    # Zeros from the 600th row on, as if the pages had never been written back.
    # (A tear inside a row would leave one wrong row: frames carry no checksum yet.)
    data = segment.read_bytes()
    commit = int.from_bytes(data[16:24], "little")  # the segment header's commit offset
    rows = [pos for kind, _, pos, _, _ in scan_frames(memoryview(data), 64, commit, 1)
            if kind == ROW]  # fmt: skip
    with open(segment, "r+b") as f:
        f.seek(rows[600])
        f.write(bytes(len(data) - rows[600]))
    with stride_up(tmp_path / "data") as up:
        done = subprocess.run(
            [*STRIDE, "sync", str(spool), "--server", up.nats_url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "ends early" in done.stderr
        api = stride.Api(up.http_url)
        assert len(wait_rows(api, "default/tears/whole", 1000)) == 1000
        rows = wait_rows(api, "default/tears/torn", 600)
        assert [r["_step"] for r in rows] == list(range(len(rows)))
        assert len(rows) == 600
        wait_for(lambda: state_of(api, "default/tears/torn") == "crashed")
        assert not log_dirs(spool)
