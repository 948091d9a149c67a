"""``run.buffer`` / ``run.log_summary`` (ML-Dash's buffered summaries)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest

import stride
from stride import Settings, UsageError
from stride._wal import log_dirs

from .conftest import StrideUp, read_log, wait_rows


def _offline(tmp_path: Path) -> stride.Run:
    return stride.init(project="p", mode="offline", settings=Settings(spool_dir=tmp_path / "s"))


def _logged(tmp_path: Path) -> list[dict[str, float]]:
    """Every row logged (in the spool), as ``{key: value, "_step": step}``."""
    [directory] = log_dirs(tmp_path / "s")
    rows: list[dict[str, float]] = []
    for batch in read_log(directory):
        for block in batch.metrics:
            steps = memoryview(block.steps).cast("q")
            values = [memoryview(v).cast("d") for v in block.values]
            for i, step in enumerate(steps):
                row = {key: column[i] for key, column in zip(block.keys, values, strict=True)}
                rows.append({**row, "_step": step})
    return rows


def test_aggregates_match_numpy_and_log_one_row_at_the_current_step(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    losses = rng.normal(2.0, 0.5, 1001)
    accuracy = rng.uniform(0, 1, 500)
    run = _offline(tmp_path)
    run.log({"lr": 0.1})  # step 0
    for i, loss in enumerate(losses):
        run.buffer({"loss": loss})
        if i < len(accuracy):
            run.buffer(acc=float(accuracy[i]))
    names = ("mean", "std", "min", "max", "count", "sum", "p50", "p90", "p95", "p99", "p99.9")
    row = run.log_summary(*names)
    expected: dict[str, float] = {}
    for key, values in (("loss", losses), ("acc", accuracy)):
        expected |= {
            f"{key}.mean": np.mean(values),
            f"{key}.std": np.std(values),  # population (ddof=0)
            f"{key}.min": np.min(values),
            f"{key}.max": np.max(values),
            f"{key}.count": len(values),
            f"{key}.sum": np.sum(values),
            **{f"{key}.p{q}": np.percentile(values, float(q)) for q in (50, 90, 95, 99, "99.9")},
        }
    assert row.keys() == expected.keys()
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-12), key
    assert run.step == 2
    assert run.log_summary() == {}  # emptied: nothing more to log
    run.finish()
    logged = _logged(tmp_path)
    assert len(logged) == 2
    assert logged[1] == {**row, "_step": 1}


def test_the_standard_deviation_of_large_close_values_is_exact(tmp_path: Path) -> None:
    """Sum of squares minus the square of the sum loses every digit here; two passes
    with exactly rounded sums do not."""
    values = [1e9 + x for x in (4.0, 7.0, 13.0, 16.0)] * 10_000
    run = _offline(tmp_path)
    for value in values:
        run.buffer(x=value)
    row = run.log_summary("mean", "std")
    assert row["x.mean"] == 1e9 + 10.0
    assert row["x.std"] == pytest.approx(statistics.pstdev(values), rel=1e-12)
    assert row["x.std"] == pytest.approx(math.sqrt(22.5), rel=1e-12)
    run.finish()


def test_the_default_is_the_mean_and_step_can_be_given(tmp_path: Path) -> None:
    run = _offline(tmp_path)
    run.buffer({"a": 1, "b": 2.0}, c=True)
    run.buffer(a=3)
    assert run.log_summary(step=10) == {"a.mean": 2.0, "b.mean": 2.0, "c.mean": 1.0}
    assert run.step == 11
    run.finish()
    assert _logged(tmp_path) == [{"a.mean": 2.0, "b.mean": 2.0, "c.mean": 1.0, "_step": 10}]


def test_a_nan_makes_its_key_nan_and_leaves_the_others(tmp_path: Path) -> None:
    run = _offline(tmp_path)
    for value in (1.0, math.nan, 3.0):
        run.buffer(loss=value, ok=1.0)
    row = run.log_summary("mean", "max", "p50", "count")
    assert all(math.isnan(row[f"loss.{n}"]) for n in ("mean", "max", "p50"))
    assert row["loss.count"] == 3.0
    assert (row["ok.mean"], row["ok.max"], row["ok.p50"]) == (1.0, 1.0, 1.0)
    run.finish()


def test_bad_input_is_refused_and_a_refused_summary_keeps_the_buffer(tmp_path: Path) -> None:
    run = _offline(tmp_path)
    with pytest.raises(UsageError, match=r"buffer\('loss'=...\) needs a number, got str"):
        run.buffer(loss="high")
    with pytest.raises(UsageError, match="non-empty strings"):
        run.buffer({"": 1.0})
    with pytest.raises(UsageError, match=r"needs a number, got str '1\.5'"):
        run.buffer(loss="1.5")  # text, as log() refuses it
    with pytest.raises(UsageError, match="reserved"):
        run.buffer(_step=1.0)
    with pytest.raises(UsageError, match="needs a number"):
        run.buffer({"good": 1.0, "bad": None})  # all or nothing: "good" is not kept
    assert run.log_summary("count") == {}
    run.buffer(loss=1.0)
    for bad in ("median", "p101", "p", "p-1", "avg"):
        with pytest.raises(UsageError, match=f"unknown aggregation '{bad}'"):
            run.log_summary("mean", bad)
    assert run.log_summary("max") == {"loss.max": 1.0}  # still buffered after the refusals
    run.finish()
    run.buffer(loss=2.0)  # in memory only: allowed after finish, like any local value
    with pytest.raises(UsageError, match="is finished"):
        run.log_summary()


def test_summaries_reach_the_history(stack: StrideUp, tmp_path: Path) -> None:
    with stride.init(project="summaries", settings=stack.settings(tmp_path)) as run:
        for epoch in range(3):
            for batch in range(10):
                run.buffer(loss=epoch * 10 + batch)
            run.log_summary("mean", "max")
    api = stride.Api(stack.http_url)
    wait_rows(api, run.path, 3)
    rows = list(api.run(run.path).scan_history())
    assert [(r["_step"], r["loss.mean"], r["loss.max"]) for r in rows] == [
        (0, 4.5, 9.0),
        (1, 14.5, 19.0),
        (2, 24.5, 29.0),
    ]
