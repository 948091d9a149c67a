"""Delivery: exactly-once into storage, spooling, sync, and the dead-letter stream.

All against a real ``stride up`` (nats-server + chDB) in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import msgspec
import nats
import pytest

import stride
from stride import Settings
from stride._wal import log_dirs
from stride.cli._nats_server import NatsServer
from stride.wire import DLQ_STREAM, INGEST_SUBJECT, WIRE_VERSION

from .conftest import (
    STRIDE,
    StrideUp,
    free_port,
    run_python,
    scan,
    state_of,
    stride_up,
    wait_for,
    wait_rows,
)

WRITER = textwrap.dedent(
    """
    import sys, stride
    from stride import Settings
    first, count, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    settings = Settings.from_env(flush_rows=500)
    # Writer "a" names the run; "b" joins with nothing and must not overwrite it.
    given = dict(name="explicit", tags=["t1"], config={"lr": 0.1}) if tag == "a" else {}
    run = stride.init(project="delivery", id="shared-run", settings=settings, **given)
    for step in range(first, first + count):
        run.log({"loss": step * 1.0, f"only_{tag}": 1.0}, step=step)
    report = run.finish()
    assert report.complete, report
    print(report.points_sent)
    """
)


def test_two_writer_processes_into_one_run_exactly_once(stack: StrideUp, spool: Path) -> None:
    env = {"STRIDE_SERVER": stack.nats_url, "STRIDE_SPOOL_DIR": str(spool)}
    # Two processes share steps 5000..9999 for "loss": each step must exist exactly once.
    procs = [
        subprocess.Popen(
            [*STRIDE[:1], "-c", WRITER, str(first), "10000", tag],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            text=True,
        )
        for first, tag in ((0, "a"), (5000, "b"))
    ]
    sent = [int(p.communicate(timeout=120)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sent == [20000, 20000]

    api = stride.Api(stack.http_url)
    rows = wait_rows(api, "default/delivery/shared-run", 15000, keys=["loss"])
    steps = [r["_step"] for r in rows]
    assert steps == list(range(15000))  # ordered, no gaps, no duplicates
    assert all(r["loss"] == r["_step"] for r in rows)
    a_rows = scan(api, "default/delivery/shared-run", ["only_a"])
    b_rows = scan(api, "default/delivery/shared-run", ["only_b"])
    assert [r["_step"] for r in a_rows] == list(range(10000))
    assert [r["_step"] for r in b_rows] == list(range(5000, 15000))
    stored = api.run("default/delivery/shared-run")
    assert (stored.name, stored.tags, stored.config) == ("explicit", ["t1"], {"lr": 0.1})


def test_a_healthy_online_run_never_touches_the_spool(
    stack: StrideUp, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with stride.init(project="healthy", settings=stack.settings(spool)) as run:
        run.log({"a": 1.0})  # logged before the connection is up
        for step in range(1, 5000):
            run.log({"a": float(step)})
    assert run.finish().complete
    wait_for(lambda: not log_dirs(spool))  # delivered, so the log is gone
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(wait_rows(stride.Api(stack.http_url), run.path, 5000)) == 5000


def test_writer_started_while_nats_is_down_spools_then_delivers(
    tmp_path: Path, spool: Path
) -> None:
    port = free_port()
    settings = Settings(
        server=f"nats://127.0.0.1:{port}",
        spool_dir=spool,
        connect_timeout_s=0.2,
        reconnect_interval_s=0.2,
        flush_rows=1000,
    )
    run = stride.init(project="outage", settings=settings)
    for step in range(20000):
        run.log({"x": float(step)})
    assert log_dirs(spool)  # the data is on disk, in the log

    # NATS comes back on the port the writer knows: the same process delivers the spool.
    with stride_up(tmp_path / "data", "--nats-port", str(port)) as up:
        up.nats_url = f"nats://127.0.0.1:{port}"
        for step in range(20000, 30000):
            run.log({"x": float(step)})
        report = run.finish(timeout=60)
        assert report.complete, report
        wait_for(lambda: not log_dirs(spool))
        rows = wait_rows(stride.Api(up.http_url), run.path, 30000)
        assert [r["_step"] for r in rows] == list(range(30000))
        # The state is written after the points it closes: it may trail them by a batch.
        wait_for(lambda: state_of(stride.Api(up.http_url), run.path) == "finished")


@pytest.mark.slow
def test_nats_away_at_start_and_again_mid_run_loses_nothing(tmp_path: Path, spool: Path) -> None:
    """NATS is down when the writer starts, comes up, goes away mid-run, and returns."""
    port = free_port()
    settings = Settings(
        server=f"nats://127.0.0.1:{port}",
        spool_dir=spool,
        connect_timeout_s=0.2,
        reconnect_interval_s=0.2,
    )
    run = stride.init(project="outage", id="away-twice", settings=settings)
    steps = iter(range(40000))

    def log(rows: int) -> None:
        for _ in range(rows):
            step = next(steps)
            run.log({"x": float(step)}, step=step)

    log(10000)  # NATS down
    with stride_up(tmp_path / "data", "--nats-port", str(port)) as up:
        log(10000)
        assert len(wait_rows(stride.Api(up.http_url), run.path, 20000)) == 20000
    log(10000)  # NATS (and ingest) gone again, mid-run
    with stride_up(tmp_path / "data", "--nats-port", str(port)) as up:
        log(10000)
        report = run.finish(timeout=60)
        assert report.complete, report
        rows = wait_rows(stride.Api(up.http_url), run.path, 40000)
        assert [r["_step"] for r in rows] == list(range(40000))
        assert [r["x"] for r in rows] == [float(i) for i in range(40000)]
        wait_for(lambda: state_of(stride.Api(up.http_url), run.path) == "finished")


def test_writer_started_before_ingest_exists_delivers_once_it_does(
    tmp_path: Path, spool: Path, nats_server: NatsServer
) -> None:
    """NATS is up but no stream exists yet (training started before ingest)."""
    settings = Settings(server=nats_server.url, spool_dir=spool, reconnect_interval_s=0.2)
    run = stride.init(project="early", settings=settings)
    for step in range(5000):
        run.log({"x": float(step)})
    assert log_dirs(spool)  # refused for now, so kept on disk
    with stride_up(tmp_path / "data", "--nats-url", nats_server.url) as up:
        report = run.finish(timeout=60)
        assert report.complete, report
        rows = wait_rows(stride.Api(up.http_url), run.path, 5000)
        assert [r["_step"] for r in rows] == list(range(5000))


def test_finish_reports_what_was_not_delivered(spool: Path) -> None:
    settings = Settings(
        server=f"nats://127.0.0.1:{free_port()}",
        spool_dir=spool,
        connect_timeout_s=0.2,
        orphan_timeout_s=1.0,  # the helper gives up soon after: this test leaves nothing behind
    )
    run = stride.init(project="outage", settings=settings)
    run.log({"x": 1.0})
    report = run.finish(timeout=1)
    assert not report.complete
    assert report.spooled_left >= 1
    assert report.spool_dir == spool
    assert "stride sync" in str(report)
    # The helper keeps trying for orphan_timeout_s after the run is done, then leaves
    # everything on disk for the next process or `stride sync`.
    from stride._transport import _helpers

    _helpers[-1].wait(timeout=30)
    assert log_dirs(spool)


def test_offline_run_then_sync_twice_never_duplicates(
    stack: StrideUp, spool: Path, tmp_path: Path
) -> None:
    settings = Settings(spool_dir=spool, flush_rows=300)
    with stride.init(project="offline", mode="offline", settings=settings, tags=["off"]) as run:
        for step in range(5000):
            run.log({"a": float(step), "b": -float(step)})
        run.summary["final"] = 42
    backup = tmp_path / "copy"
    shutil.copytree(spool, backup)

    def sync(directory: Path) -> subprocess.CompletedProcess[str]:
        cmd = [*STRIDE, "sync", str(directory), "--server", stack.nats_url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    first = sync(spool)
    assert first.returncode == 0, first.stderr
    assert "synced" in first.stdout and "10000 points" in first.stdout
    assert not log_dirs(spool)
    # The same batches again (a copy taken before the first sync): recognised, not re-applied.
    second = sync(backup)
    assert second.returncode == 0, second.stderr
    api = stride.Api(stack.http_url)
    rows = wait_rows(api, run.path, 5000)
    wait_for(lambda: state_of(api, run.path) == "finished")
    rows = scan(api, run.path)
    assert len(rows) == 5000
    assert [r["_step"] for r in rows] == list(range(5000))
    stored = api.run(run.path)
    assert stored.summary["final"] == 42 and stored.summary["a"] == 4999.0
    assert stored.tags == ["off"]
    # Applied once: the stats count every value logged, and would count a repeat.
    assert {k: s["count"] for k, s in stored.stats().items()} == {"a": 5000, "b": 5000}


def test_sync_after_the_duplicate_window_is_absorbed_by_the_ledger(tmp_path: Path) -> None:
    """The same offline log synced again once JetStream's duplicate window has passed:
    JetStream accepts the batches as new, and only the ingest ledger stops them."""
    spool, copy = tmp_path / "spool", tmp_path / "copy"
    settings = Settings(spool_dir=spool)
    with stride.init(project="ledger", id="late", mode="offline", settings=settings) as run:
        for step in range(2000):
            run.log({"k": float(step)})
    shutil.copytree(spool, copy)
    with stride_up(tmp_path / "data", "--duplicate-window", "1") as up:
        api = stride.Api(up.http_url)

        def sync(directory: Path) -> str:
            cmd = [*STRIDE, "sync", str(directory), "--server", up.nats_url]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        first = sync(spool)
        assert "2000 points" in first
        wait_for(lambda: state_of(api, run.path) == "finished")
        skipped = api.get("/api/v1/status")["ingest"]["batches_skipped"]
        time.sleep(2.5)  # past the 1 s duplicate window (JetStream checks it about every second)
        second = sync(copy)
        # JetStream no longer recognises the message ids: the batches are sent again ...
        assert "already delivered" not in second and "2000 points" in second
        sent = int(second.split("synced ")[1].split()[0])
        # ... and the ledger skips every one of them.
        wait_for(lambda: api.get("/api/v1/status")["ingest"]["batches_skipped"] - skipped == sent)
        rows = scan(api, run.path)
        assert [r["k"] for r in rows] == [float(i) for i in range(2000)]


def test_malformed_and_unknown_version_messages_are_dead_lettered(
    stack: StrideUp, spool: Path
) -> None:
    future_batch = msgspec.msgpack.encode([WIRE_VERSION + 1, "e", "p", "r", "w", 0, 1])

    async def go() -> list[str]:
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        await js.publish(INGEST_SUBJECT, b"\x00garbage", headers={"Nats-Msg-Id": "bad-1"})
        await js.publish(INGEST_SUBJECT, future_batch, headers={"Nats-Msg-Id": "bad-2"})
        sub = await js.pull_subscribe(">", durable="test-dlq-reader", stream=DLQ_STREAM)
        reasons: list[str] = []
        for _ in range(100):
            try:
                msgs = await sub.fetch(10, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                reasons.append((m.headers or {}).get("Stride-Reason", ""))
                await m.ack()
            if len(reasons) >= 2:
                break
        await nc.close()
        return reasons

    reasons = asyncio.run(go())
    assert any("not a stride batch" in r for r in reasons), reasons
    assert any("unknown wire version" in r for r in reasons), reasons
    # The worker carries on: a valid run logged afterwards is ingested.
    run_python(
        "import stride; r = stride.init(project='after-dlq', id='ok'); r.log({'a': 1}); "
        "assert r.finish().complete",
        env={"STRIDE_SERVER": stack.nats_url, "STRIDE_SPOOL_DIR": str(spool)},
    )
    rows = wait_rows(stride.Api(stack.http_url), "default/after-dlq/ok", 1)
    assert [{k: r[k] for k in ("_step", "a")} for r in rows] == [{"_step": 0, "a": 1.0}]
    assert set(rows[0]) == {"_step", "_runtime", "_timestamp", "a"}


@pytest.mark.slow
def test_ingest_killed_mid_stream_loses_and_duplicates_nothing(tmp_path: Path, nats_server) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "data"
    up = StrideUp(data_dir, "--nats-url", nats_server.url).start()
    settings = Settings(server=nats_server.url, spool_dir=tmp_path / "spool", flush_rows=2000)
    total = 200_000
    with stride.init(project="kill", id="victim", settings=settings) as run:
        for step in range(total):
            run.log({"a": float(step), "b": 1.0, "c": 2.0})
            if step == total // 4:
                wait_for(
                    lambda: stride.Api(up.http_url).get("/api/v1/status")["ingest"]["points"] > 0
                )
                up.kill()  # SIGKILL while batches are in flight
    assert run.finish().complete  # JetStream holds everything while ingest is down
    with stride_up(data_dir, "--nats-url", nats_server.url) as restarted:
        api = stride.Api(restarted.http_url)
        rows = wait_rows(api, "default/kill/victim", total)
        assert len(rows) == total
        assert [r["_step"] for r in rows] == list(range(total))
        assert all(r["a"] == r["_step"] and r["b"] == 1.0 for r in rows)


@pytest.mark.slow
def test_ingest_survives_an_unavailable_dead_letter_stream(tmp_path: Path) -> None:
    """A message that cannot be dead-lettered yet is kept (retried), not dropped,
    and the worker goes on ingesting good data meanwhile."""
    from stride.ingest.streams import ensure_streams

    with stride_up(tmp_path / "data") as up:
        settings = up.settings(tmp_path / "spool")
        api = stride.Api(up.http_url)
        # First let the worker subscribe (and ensure its streams), or it could
        # re-create the stream this test deletes.
        with stride.init(project="dlq-down", id="warm", settings=settings) as run:
            run.log({"a": 1.0})
        wait_rows(api, "default/dlq-down/warm", 1)

        async def break_dlq_then_publish_garbage() -> None:
            nc = await nats.connect(up.nats_url)
            js = nc.jetstream()
            await js.delete_stream(DLQ_STREAM)
            await js.publish(INGEST_SUBJECT, b"\x00garbage", headers={"Nats-Msg-Id": "bad-x"})
            await nc.close()

        asyncio.run(break_dlq_then_publish_garbage())
        with stride.init(project="dlq-down", id="good", settings=settings) as run:
            for step in range(100):
                run.log({"a": float(step)})
        assert len(wait_rows(api, "default/dlq-down/good", 100)) == 100
        assert api.get("/api/v1/status")["ingest"]["dead_lettered"] == 0

        async def restore_dlq() -> None:
            nc = await nats.connect(up.nats_url)
            await ensure_streams(nc.jetstream())
            await nc.close()

        asyncio.run(restore_dlq())
        wait_for(lambda: api.get("/api/v1/status")["ingest"]["dead_lettered"] == 1, timeout=30)


def test_normal_exit_without_finish_delivers_everything(stack: StrideUp, spool: Path) -> None:
    out = run_python(
        "import stride\n"
        "run = stride.init(project='exits', id='no-finish')\n"
        "for i in range(3000):\n"
        "    run.log({'a': float(i)})\n"
        "print('done')\n",  # no finish(): the interpreter's exit must flush
        env={"STRIDE_SERVER": stack.nats_url, "STRIDE_SPOOL_DIR": str(spool)},
    )
    assert out.strip() == "done"
    api = stride.Api(stack.http_url)
    rows = wait_rows(api, "default/exits/no-finish", 3000)
    assert [r["_step"] for r in rows] == list(range(3000))
    wait_for(lambda: state_of(api, "default/exits/no-finish") == "finished")


def test_sigterm_flushes_what_was_logged_and_marks_the_run_cancelled(
    stack: StrideUp, spool: Path
) -> None:
    code = (
        "import stride, sys\n"
        "run = stride.init(project='exits', id='terminated')\n"
        "i = 0\n"
        "while True:\n"
        "    run.log({'a': float(i)})\n"
        "    i += 1\n"
        "    if i == 5000:\n"
        "        print('ready', flush=True)\n"
    )
    env = {**os.environ, "STRIDE_SERVER": stack.nats_url, "STRIDE_SPOOL_DIR": str(spool)}
    proc = subprocess.Popen([*STRIDE[:1], "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM  # the default action, as without Stride
    proc.stdout.close()
    api = stride.Api(stack.http_url)
    wait_for(lambda: state_of(api, "default/exits/terminated") == "cancelled")
    rows = scan(api, "default/exits/terminated")
    assert len(rows) >= 5000
    assert [r["_step"] for r in rows] == list(range(len(rows)))  # a prefix, nothing missing
    wait_for(lambda: not log_dirs(spool))


def test_every_name_the_sdk_accepts_can_be_read_back(stack: StrideUp, spool: Path) -> None:
    """One set of identifier rules: the longest and oddest names that can be written are
    served by the query API, in run paths and in metric keys."""
    run_id = "A" + "b.c-d_e" * 18 + "z"  # 128 characters
    keys = ["loss/train", "acc (top-1) ü", "x" * 256]
    with stride.init(project="p.q-r_s", id=run_id, settings=stack.settings(spool)) as run:
        for step in range(10):
            run.log(dict.fromkeys(keys, float(step)))
    api = stride.Api(stack.http_url)
    rows = wait_rows(api, f"default/p.q-r_s/{run_id}", 10)
    assert [r[keys[1]] for r in rows] == [float(s) for s in range(10)]
    stored = api.run(f"default/p.q-r_s/{run_id}")
    assert sorted(stored.history_keys) == sorted(keys)
    history = stored.history(keys=keys, pandas=False)
    assert [r[keys[2]] for r in history] == [float(s) for s in range(10)]
    with pytest.raises(stride.UsageError, match="invalid run id"):
        stride.init(project="p", id=run_id + "x", settings=stack.settings(spool))


def test_an_uncaught_exception_at_exit_marks_the_run_failed(stack: StrideUp, spool: Path) -> None:
    code = (
        "import stride\n"
        "run = stride.init(project='exits', id='uncaught')\n"
        "for i in range(100):\n"
        "    run.log({'a': float(i)})\n"
        "raise RuntimeError('boom')\n"  # no with block, no finish(): atexit ends the run
    )
    env = {**os.environ, "STRIDE_SERVER": stack.nats_url, "STRIDE_SPOOL_DIR": str(spool)}
    done = subprocess.run([*STRIDE[:1], "-c", code], env=env, capture_output=True, timeout=60)
    assert done.returncode == 1 and b"boom" in done.stderr
    api = stride.Api(stack.http_url)
    wait_for(lambda: state_of(api, "default/exits/uncaught") == "failed")
    assert len(wait_rows(api, "default/exits/uncaught", 100)) == 100
