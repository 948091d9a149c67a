"""The SDK without a server: validation, modes, config, and the public surface."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import stride
from stride import Settings, UsageError
from stride._spool import spooled_files
from stride.wire import decode_batch


def test_exported_names_are_the_public_api() -> None:
    assert set(stride.__all__) == {
        "Api", "ApiError", "ApiRun", "BadRequestError", "DeliveryReport", "NestedDict",
        "NotFoundError", "Run", "Runs", "ServiceUnavailableError", "Settings", "StrideError",
        "UsageError", "init",
    }  # fmt: skip
    for name in stride.__all__:
        assert getattr(stride, name) is not None


def test_importing_the_sdk_starts_no_thread() -> None:
    import importlib

    before = threading.active_count()
    importlib.reload(stride)
    assert threading.active_count() == before


def test_disabled_mode_does_nothing(tmp_path: Path) -> None:
    before = threading.active_count()
    settings = Settings(spool_dir=tmp_path / "spool")
    with stride.init(project="p", mode="disabled", settings=settings) as run:
        for i in range(1000):
            run.log({"loss": i})
        run.summary["x"] = 1
    assert threading.active_count() == before
    assert not (tmp_path / "spool").exists()


def test_offline_mode_spools_everything_in_order(tmp_path: Path) -> None:
    settings = Settings(spool_dir=tmp_path / "spool", flush_rows=100)
    run = stride.init(project="p", mode="offline", settings=settings, config={"a": {"b": 1}})
    for i in range(1000):
        run.log({"loss": 1.0 / (i + 1)})
    report = run.finish()
    files = list(spooled_files(tmp_path / "spool"))
    batches = [decode_batch(f.read_bytes()) for f in files]
    assert [b.seq for b in batches] == list(range(len(batches)))
    assert sum(b.points for b in batches) == 1000
    states = [b.set["state"] for b in batches if "state" in b.set]
    assert states[-1] == '"finished"'
    assert report.spooled_left == len(files)
    assert report.batches_sent == 0


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
    from stride._api import _rows

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


def test_a_full_buffer_blocks_log_briefly_warns_and_drops_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing drains the buffer while the first connection attempt (to a dead
    # address) is pending, so it fills.
    settings = Settings(
        server="nats://127.0.0.1:9",
        spool_dir=tmp_path,
        max_buffer_rows=100,
        max_block_s=0.05,
        connect_timeout_s=1.0,
    )
    run = stride.init(project="p", settings=settings)
    for i in range(1000):
        run.log({"a": float(i)})
    assert any("rows are waiting to be sent" in r.message for r in caplog.records)
    report = run.finish(timeout=5)
    batches = [decode_batch(f.read_bytes()) for f in spooled_files(tmp_path)]
    steps = sorted(s for b in batches for blk in b.metrics for s in memoryview(blk.steps).cast("q"))
    assert steps == list(range(1000))
    assert not report.complete
