"""The SDK without a server: validation, modes, config, and the public surface."""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path

import pytest

import stride
from stride import Settings, UsageError
from stride._wal import log_dirs

from .conftest import read_log, run_python, wait_for


def test_exported_names_are_the_public_api() -> None:
    expected = {
        "Api", "ApiArtifact", "ApiError", "ApiFile", "ApiFolder", "ApiRun", "Artifact", "AuthError",
        "BadRequestError", "DeliveryReport", "NestedDict",
        "NotFoundError", "Run", "Runs", "ServiceUnavailableError", "Settings", "StrideError",
        "UsageError", "init", "reconnect",
    }  # fmt: skip
    assert set(stride.__all__) == expected
    # Nothing else public leaks out of the package (submodules aside).
    public = {
        name
        for name, value in vars(stride).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == expected


IMPORT_CHECK = """
import os, signal, sys, threading
handlers = {s: signal.getsignal(s) for s in signal.valid_signals() if s not in (9, 19)}
import stride
assert threading.active_count() == 1, threading.enumerate()
def target(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # the descriptor listdir itself used
        return ""
sockets = [t for t in map(target, os.listdir("/proc/self/fd")) if t.startswith("socket:")]
assert not sockets, sockets
changed = [s for s, h in handlers.items() if signal.getsignal(s) != h]
assert not changed, changed
assert "nats" not in sys.modules  # the NATS client loads with the first online run
print(sorted(stride.__all__)[0])
"""


def test_importing_stride_starts_nothing() -> None:
    """In a fresh interpreter: no thread, no socket, no signal handler changed."""
    out = run_python(IMPORT_CHECK)
    assert out.strip() == "Api"


def test_disabled_mode_does_nothing(tmp_path: Path) -> None:
    before = threading.active_count()
    settings = Settings(spool_dir=tmp_path / "spool")
    with stride.init(project="p", mode="disabled", settings=settings) as run:
        for i in range(1000):
            run.log({"loss": i})
        run.summary["x"] = 1
    assert threading.active_count() == before
    assert not (tmp_path / "spool").exists()


def test_offline_mode_keeps_everything_in_the_log_in_order(tmp_path: Path) -> None:
    settings = Settings(spool_dir=tmp_path / "spool", flush_rows=100)
    run = stride.init(project="p", mode="offline", settings=settings, config={"a": {"b": 1}})
    for i in range(1000):
        run.log({"loss": 1.0 / (i + 1)})
    report = run.finish()
    assert not report.complete and report.batches_sent == 0
    [directory] = log_dirs(tmp_path / "spool")
    batches = read_log(directory, max_batch_bytes=8_000)  # small batches: several of them
    assert len(batches) > 2
    assert [b.seq for b in batches] == list(range(len(batches)))
    assert {b.path for b in batches} == {run.path}
    steps = [s for b in batches for blk in b.metrics for s in memoryview(blk.steps).cast("q")]
    assert steps == list(range(1000))
    states = [b.set["state"] for b in batches if "state" in b.set]
    assert states == ['"running"', '"finished"']
    assert batches[0].set["config"] == '{"a":{"b":1}}'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"loss": "high"}, "'loss' has value 'high' of type str"),
        ({"loss": None}, "of type NoneType"),
        ({"_step": 1.0}, "reserved"),
        ({"": 1.0}, "non-empty strings"),
        ({3: 1.0}, "non-empty strings"),
    ],
)
def test_log_rejects_bad_input_with_a_clear_error(tmp_path: Path, data: dict, message: str) -> None:  # type: ignore[type-arg]
    run = stride.init(project="p", mode="offline", settings=Settings(spool_dir=tmp_path))
    with pytest.raises(UsageError, match=message):
        run.log(data)
    run.log({"ok": 1.0})  # the run is unharmed
    run.finish()


def test_step_auto_increments_and_can_be_set(tmp_path: Path) -> None:
    run = stride.init(project="p", mode="offline", settings=Settings(spool_dir=tmp_path))
    run.log({"a": 1})
    run.log({"a": 1}, step=10)
    run.log({"a": 1})
    assert run.step == 12
    with pytest.raises(UsageError, match="step must be an integer"):
        run.log({"a": 1}, step="x")  # type: ignore[arg-type]
    run.finish()
    with pytest.raises(UsageError, match="finished"):
        run.log({"a": 1})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"project": "a/b"}, "invalid project"),
        ({"project": "p", "id": "has space"}, "invalid run id"),
        ({"project": "p", "mode": "sometimes"}, "mode must be one of"),
        ({"project": "p", "tags": [""]}, "tags must be"),
        ({"project": "p", "config": [1, 2]}, "config must be a mapping"),
    ],
)
def test_init_rejects_bad_arguments(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(UsageError, match=message):
        stride.init(**kwargs)


def test_config_is_nested_and_addressable_by_dotted_key(tmp_path: Path) -> None:
    run = stride.init(
        project="p",
        mode="offline",
        settings=Settings(spool_dir=tmp_path),
        config={"lr": 1e-3, "model": {"depth": 50, "head": {"dim": 8}}},
    )
    assert run.config["model"]["depth"] == 50
    assert run.config["model.depth"] == 50
    assert run.config["model.head.dim"] == 8
    assert "model.head" in run.config
    assert run.config.get("model.missing") is None
    assert run.config.flat() == {"lr": 1e-3, "model.depth": 50, "model.head.dim": 8}
    run.finish()


def test_entity_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIDE_ENTITY", "team-a")
    run = stride.init(project="p", mode="offline", settings=Settings(spool_dir=tmp_path))
    assert run.path.startswith("team-a/p/")
    assert "-" in run.name  # a generated <adjective>-<noun>
    run.finish()


def test_settings_accept_a_string_spool_dir(tmp_path: Path) -> None:
    assert Settings(spool_dir=str(tmp_path)).spool_dir == tmp_path  # type: ignore[arg-type]


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="linger_s must be positive"):
        Settings(linger_s=0)


def test_rows_are_built_safely_for_any_metric_name() -> None:
    from stride._rows import rows as _rows

    hostile = 'it\'s "quoted"\n} ]; import os #'
    rows = list(_rows({"_step": [1, 2], hostile: [0.5, 0.25], "ünï": [1.0, 2.0]}))
    assert rows == [{"_step": 1, hostile: 0.5, "ünï": 1.0}, {"_step": 2, hostile: 0.25, "ünï": 2.0}]
    sparse = list(_rows({"_step": [1, 2], "a": [None, 3.0]}))
    assert sparse == [{"_step": 1}, {"_step": 2, "a": 3.0}]


def test_values_too_large_to_send_are_refused_with_the_limit(tmp_path: Path) -> None:
    settings = Settings(spool_dir=tmp_path)
    before = threading.active_count()
    with pytest.raises(UsageError, match=r"config is \d+ KiB as JSON; the limit is 256 KiB"):
        stride.init(project="p", mode="offline", settings=settings, config={"blob": "x" * 300_000})
    assert threading.active_count() == before  # nothing was started
    run = stride.init(project="p", mode="offline", settings=settings)
    with pytest.raises(UsageError, match=r"summary\['big'\] is \d+ KiB"):
        run.summary["big"] = list(range(100_000))
    with pytest.raises(UsageError, match="Split it over several calls"):
        run.log({f"m{i}": 1.0 for i in range(60_000)})
    run.log({"fine": 1.0})
    run.finish()


def test_a_backlog_over_the_spool_limit_warns_and_drops_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """NATS is unreachable: the log grows past max_spool_bytes, log() warns and keeps
    every row (on disk), and never blocks."""
    settings = Settings(
        server="nats://127.0.0.1:9",
        spool_dir=tmp_path,
        segment_bytes=64 * 1024,
        max_spool_bytes=256 * 1024,
        connect_timeout_s=0.2,
        orphan_timeout_s=0.5,
        delivery="thread",
    )
    run = stride.init(project="p", settings=settings)
    rows = 20_000  # 48 bytes a row: about 15 segments of 64 KiB
    for i in range(rows):
        run.log({"a": float(i)})

    def warnings() -> list[str]:  # the page thread checks the backlog as segments fill
        return [r.getMessage() for r in caplog.records if "not delivered yet" in r.getMessage()]

    wait_for(lambda: len(warnings()) == 2)  # past 256 KiB, then again past 512 KiB
    time.sleep(0.3)
    assert len(warnings()) == 2
    assert "(limit 256.0 KiB)" in warnings()[0] and "nothing is dropped" in warnings()[0]
    report = run.finish(timeout=0.5)
    assert not report.complete
    assert report.spool_warnings == 2
    [directory] = log_dirs(tmp_path)
    wait_for(lambda: not (directory / "lock").exists() or _free(directory))
    steps = [
        s for b in read_log(directory) for blk in b.metrics for s in memoryview(blk.steps).cast("q")
    ]
    assert steps == list(range(rows))


def _free(directory: Path) -> bool:
    from stride._wal import try_lock_exclusive

    lock = try_lock_exclusive(directory)
    if lock is None:
        return False
    lock.close()
    return True
