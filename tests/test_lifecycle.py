"""A run's lifecycle from the SDK: created, started, ended by hand, by status or by a
decorator, reconnected from another process, and resumed by id after its last step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import stride
from stride import Settings, UsageError
from stride._wal import log_dirs
from stride.cli._nats_server import NatsServer

from .conftest import StrideUp, free_port, read_log, run_python, wait_for, wait_rows


def _offline(tmp_path: Path, **kwargs: object) -> stride.Run:
    settings = Settings(spool_dir=tmp_path / "s")
    return stride.init(project="p", mode="offline", settings=settings, **kwargs)  # type: ignore[arg-type]


def _states(tmp_path: Path) -> tuple[str | None, str | None]:
    """The state the run wrote first-write-wins (``created``), and the last it wrote
    (the fields of one batch are merged, so states in between do not show here)."""
    [directory] = log_dirs(tmp_path / "s")
    once: str | None = None
    last: str | None = None
    for batch in read_log(directory):
        once = batch.set_once.get("state", once)
        last = batch.set.get("state", last)
    return (once and once.strip('"')), (last and last.strip('"'))


def test_a_run_made_not_running_stays_created_until_started(tmp_path: Path) -> None:
    with _offline(tmp_path, running=False) as run:
        run.log({"x": 1.0})  # data may come before the start
    assert _states(tmp_path) == ("created", None)  # left created: no end state
    with pytest.raises(UsageError, match=r"was left created; stride\.reconnect\("):
        run.log({"x": 2.0})


def test_start_then_complete_fail_or_cancel(tmp_path: Path) -> None:
    for i, (end, state) in enumerate(
        (("complete", "finished"), ("fail", "failed"), ("cancel", "cancelled"))
    ):
        path = tmp_path / str(i)
        run = _offline(path, running=False)
        run.start()
        run.start()  # already running: harmless
        getattr(run, end)()
        assert _states(path) == ("created", state), end


@pytest.mark.parametrize(
    ("status", "state"),
    [("completed", "finished"), ("finished", "finished"), ("failed", "failed"),
     ("terminated", "cancelled"), ("cancelled", "cancelled")],
)  # fmt: skip
def test_set_status_ends_the_run_with_that_state(tmp_path: Path, status: str, state: str) -> None:
    run = _offline(tmp_path)
    run.set_status(status)
    assert _states(tmp_path) == (None, state)
    with pytest.raises(UsageError, match="is finished"):
        run.log({"x": 1.0})


def test_set_status_running_starts_and_bad_statuses_are_refused(tmp_path: Path) -> None:
    run = _offline(tmp_path, running=False)
    for bad in ("crashed", "created", "done", None):
        with pytest.raises(UsageError, match="unknown run status"):
            run.set_status(bad)  # type: ignore[arg-type]
    run.set_status("running")
    run.finish()
    assert _states(tmp_path) == ("created", "finished")


def test_the_run_as_a_decorator_starts_passes_itself_and_ends(tmp_path: Path) -> None:
    ok = _offline(tmp_path / "ok", running=False)

    @ok
    def train(run: stride.Run, epochs: int, *, lr: float) -> float:
        assert run is ok
        for epoch in range(epochs):
            run.log({"loss": lr / (epoch + 1)})
        return lr * epochs

    assert train(3, lr=0.5) == 1.5
    assert _states(tmp_path / "ok") == ("created", "finished")

    bad = _offline(tmp_path / "bad", running=False)

    @bad
    def broken(run: stride.Run) -> None:
        raise ValueError("diverged")

    with pytest.raises(ValueError, match="diverged"):
        broken()
    assert _states(tmp_path / "bad") == ("created", "failed")


def test_a_created_run_left_by_an_exception_is_failed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad config"), _offline(tmp_path, running=False):
        raise ValueError("bad config")
    assert _states(tmp_path) == ("created", "failed")


def test_async_and_generator_functions_are_refused_as_decorated(tmp_path: Path) -> None:
    run = _offline(tmp_path, running=False)

    async def train_async(run: stride.Run) -> None:
        pass

    def train_lazily(run: stride.Run) -> Any:
        yield 1

    for fn in (train_async, train_lazily):
        with pytest.raises(UsageError, match="async or a generator"):
            run(fn)
    run.finish()


CREATE = """
import stride
run = stride.init(project="life", id="later", name="made-early", config={{"lr": 0.1}},
                  running=False, server={server!r})
run.log({{"x": 1.0}})
"""  # the process exits without starting or finishing the run


def test_a_created_run_is_reconnected_from_another_process(stack: StrideUp, tmp_path: Path) -> None:
    env = {"STRIDE_SPOOL_DIR": str(tmp_path / "spool")}
    run_python(CREATE.format(server=stack.nats_url), env=env)
    api = stride.Api(stack.http_url)
    # The first process's fields may arrive over several batches: wait for all of them.
    created = wait_for(lambda: (r := _loaded(api, "default/life/later")) and r.config and r)
    assert (created.state, created.name, created.config) == ("created", "made-early", {"lr": 0.1})

    run = stride.reconnect("later", project="life", settings=stack.settings(tmp_path / "s2"))
    wait_for(lambda: api.run("default/life/later").state == "running")
    assert run.step == 1  # after the step the first process stored
    run.log({"x": 2.0})
    run.finish()
    done = wait_for(lambda: _loaded(api, "default/life/later", "finished"))
    assert (done.name, done.config) == ("made-early", {"lr": 0.1})  # kept, not replaced
    assert [r["x"] for r in done.scan_history()] == [1.0, 2.0]


def test_start_and_complete_show_in_the_service(stack: StrideUp, tmp_path: Path) -> None:
    api = stride.Api(stack.http_url)
    settings = stack.settings(tmp_path / "spool")
    run = stride.init(project="life", id="started", running=False, settings=settings)
    run.log({"x": 1.0})
    wait_for(lambda: _loaded(api, "default/life/started", "created"))
    run.start()
    wait_for(lambda: _loaded(api, "default/life/started", "running"))
    run.complete()
    done = wait_for(lambda: _loaded(api, "default/life/started", "finished"))
    assert done.exit_code == 0


def test_a_run_resumed_by_id_goes_on_after_its_largest_stored_step(
    stack: StrideUp, tmp_path: Path
) -> None:
    api = stride.Api(stack.http_url)
    with stride.init(project="life", id="resumed", settings=stack.settings(tmp_path / "a")) as run:
        run.log({"x": 0.0})
        run.log({"x": 7.0}, step=7)  # the largest: not the last logged, not the count
        run.log({"x": 3.0}, step=3)
    wait_rows(api, run.path, 3)
    settings = stack.settings(tmp_path / "b")
    with stride.init(project="life", id="resumed", settings=settings) as again:
        assert again.step == 8
        again.log({"x": 8.0})
    rows = wait_rows(api, run.path, 4)
    assert [(r["_step"], r["x"]) for r in rows] == [(0, 0.0), (3, 3.0), (7, 7.0), (8, 8.0)]
    fresh = stride.init(project="life", id="never-seen", settings=stack.settings(tmp_path / "c"))
    assert fresh.step == 0
    fresh.finish()


def test_without_an_answer_a_resumed_run_starts_at_zero_and_says_why(
    tmp_path: Path, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    for server, why in (
        (f"nats://127.0.0.1:{free_port()}", "does not answer"),
        (nats_server.url, "no Stride service"),  # NATS, but no ingest answering
    ):
        caplog.clear()
        settings = Settings(server=server, spool_dir=tmp_path / "s", delivery="thread")
        run = stride.init(project="life", id="alone", settings=settings)
        assert run.step == 0
        (record,) = [r for r in caplog.records if "last stored step" in r.getMessage()]
        assert why in record.getMessage() and "pass step=" in record.getMessage()
        run.finish(timeout=0.1)


def _loaded(api: stride.Api, path: str, state: str | None = None) -> stride.ApiRun | None:
    try:
        run = api.run(path)
    except stride.NotFoundError:
        return None
    return run if state is None or run.state == state else None
