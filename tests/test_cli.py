"""The ``stride`` command: lifecycle of ``stride up`` and clear errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import nats
import pytest

import stride
from stride._wal import log_dirs
from stride.cli._nats_server import NatsServer

from .conftest import STRIDE, StrideUp, free_port, state_of, stride_up, wait_for, wait_rows


def _stride(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STRIDE, *args], capture_output=True, text=True, timeout=timeout)


def _nats_children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=,comm=", "--ppid", str(pid)], capture_output=True, text=True
    )
    return [int(line.split()[0]) for line in out.stdout.splitlines() if "nats-server" in line]


def test_restart_keeps_data_and_sigterm_stops_everything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = StrideUp(data).start()
    assert up.nats_url.startswith("nats://127.0.0.1:") and up.http_url.startswith(
        "http://127.0.0.1:"
    )
    assert up.proc is not None
    children = _nats_children(up.proc.pid)
    assert len(children) == 1
    with stride.init(project="restart", id="keep", settings=up.settings(tmp_path / "spool")) as run:
        for step in range(1000):
            run.log({"x": float(step)})
    wait_rows(stride.Api(up.http_url), run.path, 1000)

    assert up.stop(signal.SIGTERM) == 0
    assert "stride: stopped" in up.output
    with pytest.raises(ProcessLookupError):
        os.kill(children[0], 0)  # the child nats-server is gone too

    with stride_up(data) as again:
        rows = wait_rows(stride.Api(again.http_url), "default/restart/keep", 1000)
        assert [r["x"] for r in rows] == [float(i) for i in range(1000)]
        api = stride.Api(again.http_url)
        wait_for(lambda: state_of(api, "default/restart/keep") == "finished")


def test_killing_stride_up_also_stops_its_nats_server(tmp_path: Path) -> None:
    up = StrideUp(tmp_path / "data").start()
    assert up.proc is not None
    [child] = _nats_children(up.proc.pid)
    up.kill()
    wait_for(lambda: not _alive(child), timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text().split()
    return stat[2] != "Z"  # a zombie has exited


def test_second_stride_up_on_the_same_data_dir_fails_clearly(tmp_path: Path) -> None:
    with stride_up(tmp_path / "data"):
        result = _stride(
            "up", "--data-dir", str(tmp_path / "data"), "--nats-port", "0", "--http-port", "0"
        )
    assert result.returncode == 1
    assert "already used by `stride up`" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--http-port", "--nats-port"])
def test_port_in_use_is_a_clear_error(tmp_path: Path, flag: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = "--nats-port" if flag == "--http-port" else "--http-port"
        result = _stride("up", "--data-dir", str(tmp_path), flag, str(port), other, "0")
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert flag in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    result = _stride("up", "--http-port", "99999")
    assert result.returncode == 2
    assert "port must be 0-65535" in result.stderr
    result = _stride("frobnicate")
    assert result.returncode == 2


def test_sync_errors_are_clear(tmp_path: Path) -> None:
    missing = _stride("sync", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert "no spool directory" in missing.stderr

    with stride.init(
        project="p", mode="offline", settings=stride.Settings(spool_dir=tmp_path / "s")
    ) as run:
        run.log({"a": 1.0})
    down = _stride("sync", str(tmp_path / "s"), "--server", f"nats://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert "cannot reach NATS" in down.stderr
    assert "Traceback" not in down.stderr
    assert log_dirs(tmp_path / "s")  # nothing was removed


def test_ctrl_c_in_a_terminal_drains_before_nats_server_stops(tmp_path: Path) -> None:
    """Ctrl-C sends SIGINT to the whole foreground process group: nats-server must not
    get it, or it dies while `stride up` is still draining (`nats: unexpected EOF`)."""
    up = StrideUp(tmp_path / "data")
    up.start(new_session=True)  # its own group, as a terminal's foreground job has
    assert up.proc is not None
    [child] = _nats_children(up.proc.pid)
    with stride.init(project="ctrl-c", settings=up.settings(tmp_path / "spool")) as run:
        run.log({"x": 1.0})
    wait_rows(stride.Api(up.http_url), run.path, 1)
    os.killpg(up.proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    up.read_until("stride: stopping")
    os.killpg(up.proc.pid, signal.SIGINT)  # an impatient second Ctrl-C, during the drain
    assert up.stop(timeout=30) == 0  # not 130: no KeyboardInterrupt in the middle of it
    assert "stride: stopped" in up.output
    assert "stride: SIGINT: already stopping" in " ".join(up.output), up.output
    assert not [line for line in up.output if "NATS:" in line or "EOF" in line], up.output
    wait_for(lambda: not _alive(child), timeout=10)  # stopped by stride up, after the drain


def test_readyz_says_why_stride_up_is_not_ready(tmp_path: Path, nats_server: NatsServer) -> None:
    with stride_up(tmp_path / "data", "--nats-url", nats_server.url) as up:
        api = stride.Api(up.http_url, retries=0)

        def readiness() -> str:
            try:
                api.get("/readyz")
            except stride.ApiError as exc:
                assert exc.status == 503
                return exc.message
            return "ready"

        wait_for(lambda: readiness() == "ready")  # once the worker has subscribed
        nats_server.stop()  # NATS goes away: still alive, no longer ready
        assert "not connected to NATS" in wait_for(lambda: (r := readiness()) != "ready" and r)
        assert api.get("/healthz")["ok"] is True


def test_log_format_json_writes_one_object_per_line(tmp_path: Path) -> None:
    with stride_up(tmp_path / "data", "--log-format", "json") as up:

        async def garbage() -> None:
            nc = await nats.connect(up.nats_url)
            await nc.jetstream().publish(
                "stride.ingest.v1", b"\x00garbage", headers={"Nats-Msg-Id": "json-log"}
            )
            await nc.close()

        asyncio.run(garbage())
        api = stride.Api(up.http_url)
        wait_for(lambda: api.get("/api/v1/status")["ingest"]["dead_lettered"] == 1)
    logged = [json.loads(line) for line in up.output if line.startswith("{")]
    warning = next(e for e in logged if "dead-lettered" in e["message"])
    assert warning["level"] == "warning" and warning["logger"] == "stride.ingest"
    assert warning["ts"].endswith("+00:00")


def test_lost_after_says_when_a_silent_running_run_is_crashed(tmp_path: Path) -> None:
    """``stride up --lost-after``: a run left "running" whose heartbeats stopped."""
    from stride.wire import INGEST_SUBJECT, WIRE_VERSION, Batch, encode_batch, message_id

    silent = Batch(
        v=WIRE_VERSION,
        entity="default",
        project="lost",
        run_id="silent",
        writer="w",
        seq=0,
        ver=time.time_ns(),  # its heartbeat: now
        set={"state": '"running"'},
    )

    async def publish(url: str) -> None:
        nc = await nats.connect(url)
        ident = message_id(silent.path, silent.writer, silent.seq)
        await nc.jetstream().publish(
            INGEST_SUBJECT, encode_batch(silent), headers={"Nats-Msg-Id": ident}
        )
        await nc.close()

    with stride_up(tmp_path / "data", "--lost-after", "1") as up:
        asyncio.run(publish(up.nats_url))
        api = stride.Api(up.http_url)
        wait_for(lambda: state_of(api, "default/lost/silent") is not None)
        # Silent for more than a second: crashed (the default, 300 s, would say running).
        wait_for(lambda: state_of(api, "default/lost/silent") == "crashed", timeout=10)


@pytest.mark.parametrize("command", [["up"], ["ingest", "--store", "chdb:///tmp/x"]])
def test_the_fetch_size_reaches_ingest_from_the_flag_or_the_environment(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--fetch-mib`` / ``STRIDE_FETCH_MIB`` trade ingest speed for memory. The
    services themselves are replaced by a recorder: this checks the wiring only."""
    import stride.cli.services
    import stride.cli.up
    from stride.cli._main import main

    seen: list[int] = []

    async def record(settings: object) -> None:
        seen.append(settings.ingest.fetch_bytes)  # type: ignore[attr-defined]

    monkeypatch.setattr(stride.cli.up, "serve", record)
    monkeypatch.setattr(stride.cli.services, "serve_ingest", record)
    assert main(command) == 0
    assert main([*command, "--fetch-mib", "2.5"]) == 0
    monkeypatch.setenv("STRIDE_FETCH_MIB", "4")
    assert main(command) == 0
    assert seen == [16 << 20, int(2.5 * (1 << 20)), 4 << 20]
    for bad in ("0", "-1", "lots"):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--fetch-mib", bad])
        assert exit_.value.code == 2


@pytest.mark.parametrize("command", [["up"], ["query", "--store", "chdb:///tmp/x"]])
def test_the_read_ahead_bound_reaches_the_query_app_from_the_flag_or_the_environment(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--read-ahead-mib`` / ``STRIDE_READ_AHEAD_MIB`` bound what scans keep read
    ahead. The services are replaced by a recorder: this checks the wiring, up to
    the app's read-ahead."""
    import stride.cli.services
    import stride.cli.up
    from stride.cli._main import main
    from stride.query import create_app
    from stride.query.app import READ_AHEAD

    seen: list[int] = []

    async def record(settings: object) -> None:
        query = settings.query  # type: ignore[attr-defined]
        app = create_app(dataclasses.replace(query, store_url="chdb:///unused"))
        seen.append(app[READ_AHEAD]._max_bytes)

    monkeypatch.setattr(stride.cli.up, "serve", record)
    monkeypatch.setattr(stride.cli.services, "serve_query", record)
    assert main(command) == 0
    assert main([*command, "--read-ahead-mib", "256"]) == 0
    monkeypatch.setenv("STRIDE_READ_AHEAD_MIB", "8")
    assert main(command) == 0
    assert seen == [64 << 20, 256 << 20, 8 << 20]
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--read-ahead-mib", "0"])
    assert exit_.value.code == 2


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
def test_stride_up_loads_at_start_what_the_first_request_would_wait_for(tmp_path: Path) -> None:
    """pyarrow imports pandas (when installed) the first time it converts Python
    objects, ~200 ms: ``stride up`` starts that import itself, so the first read
    after a start (with nothing ingested yet) does not wait for it."""
    pytest.importorskip("pandas")

    def pandas_loaded(pid: int) -> bool:
        return "/pandas/" in Path(f"/proc/{pid}/maps").read_text()

    with stride_up(tmp_path / "data") as up:
        assert up.proc is not None
        wait_for(lambda: pandas_loaded(up.proc.pid), timeout=10.0)
