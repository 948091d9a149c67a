"""History along time (``x_axis="_runtime"`` or ``"_timestamp"``): buckets of equal
time, checked against the same sampling computed here; and the bound on rows that
every sampling keeps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import stride

from .conftest import StrideUp, wait_rows

#: Steps per rollup row, and per wide rollup row (``stride.store.schema``); rows
#: read again point by point at most (``stride.query.history._MAX_REREAD``).
ROLLUP, WIDE, MAX_REREAD = 256, 4096, 64


def _rows(steps: list[int], lo: int | None, hi: int | None, width: int) -> list[list[int]]:
    """How the service groups ``steps`` (sorted) on the time axis: one by one where
    the sampling is fine (under ``ROLLUP`` steps per sample); else in the rollup
    rows of whole buckets of the range (wide ones once a sample spans 8 of them, and
    the rollup rows beside them), and the points of the cut buckets one by one."""
    if width < ROLLUP:
        return [[s] for s in steps]
    sizes = (WIDE, ROLLUP) if width >= 8 * WIDE else (ROLLUP,)

    def whole(size: int, b: int) -> bool:
        return (lo is None or b * size >= lo) and (hi is None or (b + 1) * size - 1 <= hi)

    groups: dict[tuple[int, int], list[int]] = {}
    for s in steps:
        size = next((z for z in sizes if whole(z, s // z)), 0)
        groups.setdefault((size, s // size) if size else (0, s), []).append(s)
    return list(groups.values())


def _units(
    points: dict[str, dict[int, tuple[float, float]]],
    lo: int | None,
    hi: int | None,
    width: int,
) -> dict[str, list[list[int]]]:
    """What the service places on the time axis, per key: rows (see :func:`_rows`)
    whose first and last points have a finite time, each placed by its first
    point; the points with a finite time of the other rows, each by its own
    (and every point so, once more than ``MAX_REREAD`` rows would be read again)."""
    finite = {key: [s for s in sorted(series) if math.isfinite(series[s][0])]
              for key, series in points.items()}  # fmt: skip
    units: dict[str, list[list[int]]] = {key: [] for key in points}
    again = 0
    for key, series in points.items():
        for row in _rows(sorted(series), lo, hi, width):
            if math.isfinite(series[row[0]][0]) and math.isfinite(series[row[-1]][0]):
                units[key].append(row)
            elif len(row) > 1:
                again += 1
                units[key] += [[s] for s in row if math.isfinite(series[s][0])]
    if again > MAX_REREAD:
        return {key: [[s] for s in steps] for key, steps in finite.items()}
    return units


def _time_sampled(
    points: dict[str, dict[int, tuple[float, float]]],
    samples: int,
    lo: int | None = None,
    hi: int | None = None,
) -> tuple[list[int], dict[str, set[int]], dict[str, dict[int, tuple[float, float]]]]:
    """History along a time axis, computed here: ``points`` is key -> step -> (axis
    value, metric value) within the step range ``lo``..``hi``. Returns the row
    steps, the steps where each key has a value, and each key's (min, max) per
    kept step (the envelope). Each unit (a point, or a rollup row: see
    :func:`_units`) is placed by the time of its first point; the answer ends at
    the last step placed."""
    first = min(step for series in points.values() for step in series)
    end = max(step for series in points.values() for step in series)
    width = math.ceil((end - first + 1) / max(1, samples - 1))
    placed = {
        key: [(points[key][u[0]][0], u) for u in us]
        for key, us in _units(points, lo, hi, width).items()
    }
    if not any(placed.values()):
        return [], {}, {}
    last = max(u[-1] for us in placed.values() for _, u in us)
    times = [t for us in placed.values() for t, _ in us]
    t0, t1 = min(times), max(times)
    k = samples - 1

    def bucket(t: float) -> int:
        return 0 if t1 == t0 else math.floor((t / 2 - t0 / 2) / ((t1 / 2 - t0 / 2) / k))

    for shift in range(64):
        groups: dict[str, dict[int, list[int]]] = {}
        for key, us in placed.items():
            for t, members in us:
                groups.setdefault(key, {}).setdefault(bucket(t) >> shift, []).extend(members)
        kept = {key: {min(s): s for s in g.values()} for key, g in groups.items()}
        rows = sorted(set().union(*kept.values(), {last}))
        if len(rows) <= samples:
            break
    has = {
        key: set(firsts) | ({last} if any(u[-1] == last for _, u in placed[key]) else set())
        for key, firsts in kept.items()
    }
    envelope = {
        key: {first: (min(v), max(v)) for first, members in firsts.items()
              if (v := [points[key][s][1] for s in members])}
        for key, firsts in kept.items()
    }  # fmt: skip
    return rows, has, envelope


def test_history_along_time_samples_equal_spans_of_time(stack: StrideUp, spool: Path) -> None:
    """A run that pauses for 100 s after step 2000: sampled along ``_runtime`` or
    ``_timestamp``, each bucket spans the same time, so the pause gets no rows and
    the rest gets rows in proportion to its time, not its steps. Checked against
    the same sampling computed here from the logged points, with and without a
    step range, with the envelope."""
    logged: dict[str, dict[int, tuple[float, float, float]]] = {"v": {}, "w": {}}
    with stride.init(project="timeaxis", settings=stack.settings(spool)) as run:
        for step in range(3000):
            t = step * 0.01 + (100.0 if step >= 2000 else 0.0) + (step % 5) * 1e-4
            data = {"v": math.sin(step / 40)} | ({"w": step * 0.5} if step % 7 == 3 else {})
            run.log(data, step=step, time=t, timestamp=1.7e9 + 3 * t)
            for key, value in data.items():
                logged[key][step] = (t, 1.7e9 + 3 * t, value)
    api = stride.Api(stack.http_url)
    wait_rows(api, run.path, 3000, keys=["v"])
    wait_rows(api, run.path, 429, keys=["w"])
    ends = {"v": 2999, "w": 2995}
    for axis, which in (("_runtime", 0), ("_timestamp", 1)):
        for samples, lo, hi in [
            (40, None, None),
            (300, None, None),
            (25, 500, 2500),
            (3, None, None),  # 256-step rollup rows placed by their first point's time
            (6, 300, 2900),  # and the points of the buckets the range cuts, each by its own
        ]:
            points = {
                key: {s: (p[which], p[2]) for s, p in series.items()
                      if (lo is None or s >= lo) and (hi is None or s <= hi)}
                for key, series in logged.items()
            }  # fmt: skip
            steps, has, envelope = _time_sampled(points, samples, lo, hi)
            got = api.run(run.path).history(
                samples=samples, keys=["v", "w"], x_axis=axis, min_step=lo, max_step=hi,
                envelope=True, pandas=False,
            )  # fmt: skip
            assert [r["_step"] for r in got] == steps, (axis, samples, lo, hi)
            for row in got:
                step = row["_step"]
                assert row["_runtime"] == logged["v"][step][0]
                for key in ("v", "w"):
                    assert (key in row) == (step in has[key]), (axis, samples, step, key)
                    if key in row:
                        assert row[key] == logged[key][step][2]
                    if step in envelope[key]:
                        assert (row[f"min({key})"], row[f"max({key})"]) == envelope[key][step]
            if lo is None and samples >= 40:
                # Equal time: the 20 s before the pause get 2/3 of the rows of the 30 s of
                # logging, however many steps they hold; the pause gets none.
                before = sum(1 for r in got if r["_step"] < 2000)
                after = len(got) - before
                assert abs(before / max(1, after) - 2.0) < 0.5, (before, after)
            assert got[-1]["_step"] == (hi if hi is not None else ends["v"])


def test_history_along_time_over_wide_rollup_rows_matches_the_same_placing(
    stack: StrideUp, spool: Path
) -> None:
    """100,000 steps sampled coarsely: 4,096-step rows (and the 256-step rows and
    points beside them when a range cuts them) placed by the time of their first
    point, including rows whose time runs backwards (steps 20,000-24,999, logged
    with times 10 s earlier) and a pause. Checked against the same placing here;
    the envelope holds the spikes of the rows beside the wide ones."""
    logged: dict[int, tuple[float, float]] = {}
    with stride.init(project="timeaxis", id="wide", settings=stack.settings(spool)) as run:
        for step in range(100_000):
            t = step * 0.001 - (10.0 if 20_000 <= step < 25_000 else 0.0)
            t += 50.0 if step >= 60_000 else 0.0
            # Spikes in the 256-step rows beside the wide ones when the range is cut.
            v = {2000: 5.0, 98_500: -5.0}.get(step, math.cos(step / 300))
            run.log({"v": v}, step=step, time=t)
            logged[step] = (t, v)
    api = stride.Api(stack.http_url)
    wait_rows(api, run.path, 100_000, keys=["v"])
    for samples, lo, hi in [(3, None, None), (4, None, None), (3, 1000, 99_000), (4, 1000, 99_000)]:
        points = {"v": {s: p for s, p in logged.items() if (lo or 0) <= s <= (hi or 10**9)}}
        steps, has, envelope = _time_sampled(points, samples, lo, hi)
        got = api.run(run.path).history(
            samples=samples, x_axis="_runtime", min_step=lo, max_step=hi, envelope=True,
            pandas=False,
        )  # fmt: skip
        assert [r["_step"] for r in got] == steps, (samples, lo, hi)
        for row in got:
            assert row["_step"] in has["v"]
            assert row["_runtime"] == logged[row["_step"]][0]
            assert row["v"] == logged[row["_step"]][1]
            if row["_step"] in envelope["v"]:
                assert (row["min(v)"], row["max(v)"]) == envelope["v"][row["_step"]]


def test_history_along_time_leaves_out_points_without_a_finite_time(
    stack: StrideUp, spool: Path
) -> None:
    """NaN or infinite times have no place on a time axis (they made the bucket
    query fail: a 500); times as far apart as doubles go must not overflow."""
    bad = {50: math.nan, 120: math.inf, 299: math.nan}
    with stride.init(project="badtimes", id="nonfinite", settings=stack.settings(spool)) as run:
        for step in range(300):
            run.log({"v": float(step)}, step=step, time=bad.get(step, step * 0.1))
    with stride.init(project="badtimes", id="extreme", settings=stack.settings(spool)) as far:
        for step in range(300):
            t = -1e308 if step == 0 else 1e308 if step == 299 else float(step)
            far.log({"v": float(step)}, step=step, time=t)
    api = stride.Api(stack.http_url)
    wait_rows(api, run.path, 300)
    wait_rows(api, far.path, 300)
    finite = [s for s in range(300) if s not in bad]
    every = api.run(run.path).history(samples=1000, x_axis="_runtime", pandas=False)
    assert [r["_step"] for r in every] == finite
    sampled = api.run(run.path).history(samples=20, x_axis="_runtime", pandas=False)
    steps = [r["_step"] for r in sampled]
    assert steps[0] == 0 and steps[-1] == 298 and len(steps) <= 20
    assert not set(steps) & set(bad) and all(r["v"] == r["_step"] for r in sampled)
    by_step = api.run(run.path).history(samples=1000, pandas=False)
    assert len(by_step) == 300  # along steps, every point has its place
    spread = api.run(far.path).history(samples=20, x_axis="_runtime", pandas=False)
    assert spread[0]["_step"] == 0 and spread[-1]["_step"] == 299
    assert len(spread) <= 20


def test_history_along_time_over_rollup_rows_leaves_out_times_that_are_not_finite(
    stack: StrideUp, spool: Path
) -> None:
    """Coarse samplings (256-step rows placed by their first point's time) with
    times that are NaN or infinite: a row whose first or last point has one is
    placed point by point, without that point; a point inside a row only counts
    in its envelope; the answer ends at the last point placed, never on a row
    without values. With every time NaN the answer is empty, whatever ``samples``;
    with more rows to read again than the service reads so, every point is placed
    by its own time."""
    # Rows 512-767 (both ends), 1024-1279 (last), 2816-3071 (first, and the last point).
    odd = {512: math.nan, 767: -math.inf, 1000: math.inf, 1279: math.nan, 2816: math.nan}
    odd[2999] = math.nan
    cases: dict[str, tuple[int, dict[int, float]]] = {
        "some": (3000, odd),
        "all": (3000, {s: math.nan for s in range(3000)}),
        # 71 rows to read again: every point placed by its own time, so the rows of
        # 0-2047 that a bucket's edge cuts (samples=20) are not placed whole.
        "many": (20_000, {s: math.nan for s in range(2048, 20_000, ROLLUP)}),
    }
    api = stride.Api(stack.http_url)
    for name, (count, times) in cases.items():
        logged: dict[int, tuple[float, float]] = {}
        with stride.init(project="timeaxis", id=name, settings=stack.settings(spool)) as run:
            for step in range(count):
                spike = 9.0 if step in (1000, 1279) else 0.0  # an inner point, a row's last
                t, v = times.get(step, step * 0.01), math.sin(step / 50) + spike
                run.log({"v": v}, step=step, time=t)
                logged[step] = (t, v)
        wait_rows(api, run.path, count)
        for samples, lo, hi in [
            (3, None, None),
            (4, 10, count - 10),
            (5, None, None),
            (20, None, None),
        ]:
            points = {"v": {s: p for s, p in logged.items() if (lo or 0) <= s <= (hi or count)}}
            steps, has, envelope = _time_sampled(points, samples, lo, hi)
            got = api.run(run.path).history(
                samples=samples, x_axis="_runtime", min_step=lo, max_step=hi, envelope=True,
                pandas=False,
            )  # fmt: skip
            assert [r["_step"] for r in got] == steps, (name, samples, lo, hi)
            for row in got:
                assert math.isfinite(row["_runtime"]) and row["_step"] in has["v"]
                assert (row["min(v)"], row["max(v)"]) == envelope["v"][row["_step"]]
        if name == "all":
            assert steps == []


@pytest.mark.parametrize("x_axis", ["_step", "_runtime"])
def test_history_never_returns_more_than_samples_rows(
    stack: StrideUp, spool: Path, x_axis: str
) -> None:
    """Two keys whose first points differ, and samples=2: the first point of all and
    the last, not one row per key plus the last (three rows)."""
    with stride.init(project="fewrows", settings=stack.settings(spool)) as run:
        for step in range(100):
            run.log({"a": 1.0} if step % 2 else {"b": 2.0}, step=step, time=step * 0.5)
    api = stride.Api(stack.http_url)
    wait_rows(api, run.path, 50, keys=["a"])
    wait_rows(api, run.path, 50, keys=["b"])
    rows = api.run(run.path).history(samples=2, keys=["a", "b"], x_axis=x_axis, pandas=False)
    assert [r["_step"] for r in rows] == [0, 99]
    assert rows[0]["b"] == 2.0 and rows[1]["a"] == 1.0
