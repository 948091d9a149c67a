"""The query service and client: runs, sampled history, scans, and errors."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import orjson
import pandas as pd
import pytest

import stride
from stride import BadRequestError, NotFoundError
from stride.api_types import (
    ColumnsPage,
    ErrorBody,
    IngestCounters,
    MetricKeys,
    MetricStats,
    RunDoc,
    RunsPage,
    Status,
)
from stride.wire import WIRE_VERSION, Batch

from .conftest import StrideUp, publish, wait_for, wait_rows

T = TypeVar("T")


def _log_run(stack: StrideUp, spool: Path, project: str, rows: int, **init: Any) -> str:
    with stride.init(project=project, settings=stack.settings(spool), **init) as run:
        for step in range(rows):
            # A spike at step 777 that sampling could miss; NaN and inf must survive JSON.
            loss = 100.0 if step == 777 else 1.0 / (step + 1)
            extra = {"odd": float(step)} if step % 2 else {}
            run.log({"loss": loss, "acc": step / rows, **extra})
        run.log({"weird": math.nan, "loss": math.inf}, step=rows)
        run.summary["best_acc"] = 0.91
    return run.path


@pytest.fixture(scope="module")
def logged(stack: StrideUp, tmp_path_factory: pytest.TempPathFactory) -> tuple[stride.Api, str]:
    spool = tmp_path_factory.mktemp("spool")
    path = _log_run(
        stack,
        spool,
        "queries",
        20_000,
        name="resnet-a",
        config={"lr": 1e-3, "model": {"depth": 50}},
        tags=["baseline"],
        notes="first try",
        folder="sweeps/a",
    )
    api = stride.Api(stack.http_url)
    wait_rows(api, path, 20_001, keys=["loss"])
    # Key lists are cached for up to a second (query/catalog.py): wait for the last one.
    wait_for(lambda: "weird" in api.run(path).history_keys)
    wait_for(lambda: api.run(path).state == "finished")  # written after the points
    return api, path


def test_run_attributes_round_trip(logged: tuple[stride.Api, str]) -> None:
    api, path = logged
    run = api.run(path)
    assert run.path == path and run.id == path.split("/")[-1]
    assert run.name == "resnet-a"
    assert run.state == "finished"
    assert run.config == {"lr": 1e-3, "model": {"depth": 50}}
    assert run.config["model.depth"] == 50
    assert run.summary == {
        "best_acc": 0.91,  # set by the user
        # Each metric's last value (non-finite ones are None), as W&B's summary...
        **{"acc": 19_999 / 20_000, "loss": None, "odd": 19_999.0, "weird": None},
        # ...and, under documented keys, their min and max and the last step.
        "_min": {"acc": 0.0, "loss": 1 / 20_000, "odd": 1.0, "weird": None},
        "_max": {"acc": 19_999 / 20_000, "loss": None, "odd": 19_999.0, "weird": None},
        "_step": 20_000,
    }
    assert run.tags == ["baseline"]
    assert run.notes == "first try"
    assert run.folder == "sweeps/a"
    assert run.created_at and run.heartbeat_at and run.created_at <= run.heartbeat_at
    assert run.exit_code == 0
    assert run.history_keys == ["acc", "loss", "odd", "weird"]


def test_history_is_bounded_deterministic_and_keeps_the_ends(
    logged: tuple[stride.Api, str],
) -> None:
    api, path = logged
    run = api.run(path)
    first = run.history(samples=500, keys=["loss", "acc"], pandas=False)
    again = run.history(samples=500, keys=["loss", "acc"], pandas=False)
    assert first == again
    assert len(first) <= 500
    steps = [r["_step"] for r in first]
    assert steps[0] == 0 and steps[-1] == 20_000
    assert steps == sorted(set(steps))
    assert first[-1]["loss"] == math.inf
    assert {"_step", "_runtime", "_timestamp", "loss"} <= set(first[0])


def test_keys_come_in_pages_with_a_cursor(logged: tuple[stride.Api, str]) -> None:
    api, path = logged
    every = api.run(path).history_keys
    assert every == ["acc", "loss", "odd", "weird"]
    pages, after = [], None
    while True:
        page = api.get(f"/api/v1/runs/{path}/keys", [("per_page", 3), ("after", after)])
        pages.append(page["keys"])
        if (after := page["next"]) is None:
            break
    assert pages == [["acc", "loss", "odd"], ["weird"]]
    tail = api.get(f"/api/v1/runs/{path}/keys", [("after", "loss")])
    assert tail == {"keys": ["odd", "weird"], "next": None}


def test_history_small_range_returns_every_row(logged: tuple[stride.Api, str]) -> None:
    api, path = logged
    rows = api.run(path).history(
        samples=500, keys=["loss"], min_step=100, max_step=199, pandas=False
    )
    assert [r["_step"] for r in rows] == list(range(100, 200))
    assert rows[0]["loss"] == pytest.approx(1 / 101)


def test_history_filters_to_the_range_before_sampling(logged: tuple[stride.Api, str]) -> None:
    api, path = logged
    rows = api.run(path).history(
        samples=50, keys=["acc"], min_step=1000, max_step=9000, pandas=False
    )
    steps = [r["_step"] for r in rows]
    assert len(rows) <= 50
    assert steps[0] == 1000 and steps[-1] == 9000


def test_history_envelope_keeps_a_spike_between_samples(logged: tuple[stride.Api, str]) -> None:
    api, path = logged
    rows = api.run(path).history(
        samples=20, keys=["loss"], max_step=19_999, envelope=True, pandas=False
    )
    assert 777 not in [r["_step"] for r in rows]
    assert max(r.get("max(loss)", 0.0) for r in rows) == 100.0


def test_history_pandas_and_sparse_keys(logged: tuple[stride.Api, str]) -> None:
    api, path = logged
    frame = api.run(path).history(samples=100_000, keys=["odd", "weird"])
    assert isinstance(frame, pd.DataFrame)
    assert len(frame) == 10_001  # odd steps, plus the final step that has "weird"
    assert frame["weird"].isna().all()  # absent at odd steps, a real NaN at the last
    rows = api.run(path).history(samples=100_000, keys=["odd", "weird"], pandas=False)
    assert ["weird" in r for r in rows].count(True) == 1  # only the last row has the key
    assert math.isnan(rows[-1]["weird"])


def _logged_loss(step: int) -> float:
    """What ``_log_run`` logged as ``loss`` at ``step`` (for the 20,000-row run)."""
    return math.inf if step == 20_000 else 100.0 if step == 777 else 1.0 / (step + 1)


def test_history_x_axis_metric_returns_the_rows_where_that_metric_was_logged(
    logged: tuple[stride.Api, str],
) -> None:
    """``x_axis="odd"``: exactly the steps where ``odd`` was logged (odd steps), each
    with the ``odd`` and ``loss`` values logged there."""
    api, path = logged
    rows = api.run(path).history(samples=100_000, keys=["loss"], x_axis="odd", pandas=False)
    assert [r["_step"] for r in rows] == list(range(1, 20_000, 2))
    assert [r["odd"] for r in rows] == [float(s) for s in range(1, 20_000, 2)]
    assert [r["loss"] for r in rows] == [_logged_loss(s) for s in range(1, 20_000, 2)]
    frame = api.run(path).history(samples=100_000, keys=["loss"], x_axis="odd")
    assert frame["_step"].tolist() == list(range(1, 20_000, 2))
    assert frame["loss"].tolist() == [_logged_loss(s) for s in range(1, 20_000, 2)]


def test_history_x_axis_metric_when_sampled(logged: tuple[stride.Api, str]) -> None:
    """Sampled along ``odd`` (logged at every other step): up to ``samples`` rows,
    every one with ``odd`` and the ``loss`` logged at that step, ``odd``'s first
    and last point kept; computed here from the scanned points."""
    api, path = logged
    run = api.run(path)
    truth = {r["_step"]: r for r in run.scan_history(page_size=50_000)}
    odd_steps = sorted(s for s, r in truth.items() if "odd" in r)
    for samples, lo, hi in [(100, None, None), (7, 5000, 9000), (2, None, None)]:
        rows = run.history(
            samples=samples, keys=["loss"], x_axis="odd", min_step=lo, max_step=hi, pandas=False
        )
        want = [s for s in odd_steps if (lo is None or s >= lo) and (hi is None or s <= hi)]
        steps = [r["_step"] for r in rows]
        assert samples // 2 <= len(rows) <= samples and steps == sorted(set(steps))
        assert steps[0] == want[0] and steps[-1] == want[-1]  # the axis's ends
        for row in rows:
            logged_row = truth[row["_step"]]
            assert row["odd"] == logged_row["odd"] == float(row["_step"])
            assert row["loss"] == logged_row["loss"]
            assert row["_runtime"] == logged_row["_runtime"]
    # Along a time axis (test_history_along_time_samples_equal_spans_of_time has the
    # rules): the series' ends kept, rows in step order, every one with its times.
    by_time = run.history(samples=50, keys=["loss"], x_axis="_timestamp", pandas=False)
    steps = [r["_step"] for r in by_time]
    assert 2 <= len(by_time) <= 50 and steps == sorted(set(steps))
    assert steps[0] == 0 and steps[-1] == 20_000
    assert all(r["_timestamp"] == truth[r["_step"]]["_timestamp"] for r in by_time)
    with pytest.raises(NotFoundError, match="no metric 'nope' \\(the x_axis\\)"):
        run.history(keys=["loss"], x_axis="nope")
    with pytest.raises(BadRequestError, match="envelope needs x_axis"):
        run.history(keys=["loss"], x_axis="odd", envelope=True)


@pytest.mark.parametrize("page_size", [1, 999, 20_000])
def test_scan_returns_every_row_once_in_order(
    logged: tuple[stride.Api, str], page_size: int
) -> None:
    api, path = logged
    max_step = 800 if page_size == 1 else None
    rows = list(api.run(path).scan_history(keys=["loss"], page_size=page_size, max_step=max_step))
    expected = 801 if page_size == 1 else 20_001
    assert [r["_step"] for r in rows] == list(range(expected))
    assert rows[5]["loss"] == pytest.approx(1 / 6)


def test_scan_with_keys_yields_only_rows_that_have_all_of_them(
    logged: tuple[stride.Api, str],
) -> None:
    api, path = logged
    rows = list(api.run(path).scan_history(keys=["loss", "odd"], page_size=777))
    assert [r["_step"] for r in rows] == list(range(1, 20_000, 2))
    assert set(rows[0]) == {"_step", "_runtime", "_timestamp", "loss", "odd"}


@pytest.mark.parametrize("keys", [["v"], ["v", "w"], None])
def test_scan_rows_carry_the_logged_runtime_and_timestamp(
    stack: StrideUp, spool: Path, keys: list[str] | None
) -> None:
    """As W&B's do: each row's ``_runtime`` and ``_timestamp`` are the ones logged
    with it, on the one-key path, the several-keys path and every key."""
    with stride.init(project="times", settings=stack.settings(spool)) as run:
        for step in range(3000):
            data = {"v": float(step)} | ({"w": -1.0} if step % 3 == 0 else {})
            run.log(data, step=step, time=step * 0.5, timestamp=1.7e9 + step)
    api = stride.Api(stack.http_url)
    wait_rows(api, run.path, 3000, keys=["v"])
    rows = list(api.run(run.path).scan_history(keys=keys, page_size=700))
    expected = range(0, 3000, 3) if keys == ["v", "w"] else range(3000)
    assert [r["_step"] for r in rows] == list(expected)
    assert all(r["_runtime"] == r["_step"] * 0.5 for r in rows)
    assert all(r["_timestamp"] == 1.7e9 + r["_step"] for r in rows)
    # History (sampled, and keeping rows with any of the keys) agrees where both have a row.
    scanned = {r["_step"]: (r["_runtime"], r["_timestamp"]) for r in rows}
    history = api.run(run.path).history(samples=500, keys=keys, pandas=False)
    both = [r for r in history if r["_step"] in scanned]
    assert len(both) > 100
    assert all((r["_runtime"], r["_timestamp"]) == scanned[r["_step"]] for r in both)


def test_scan_without_keys_carries_what_each_step_has(logged: tuple[stride.Api, str]) -> None:
    api, path = logged
    rows = list(api.run(path).scan_history(page_size=3_000, min_step=10, max_step=13))
    times = ["_runtime", "_step", "_timestamp"]
    assert [sorted(r) for r in rows] == [
        [*times, "acc", "loss"],
        [*times, "acc", "loss", "odd"],
        [*times, "acc", "loss"],
        [*times, "acc", "loss", "odd"],
    ]


def test_a_scan_page_carries_its_next_cursor_in_a_header_too(
    stack: StrideUp, logged: tuple[stride.Api, str]
) -> None:
    """So a client can ask for the next page before it decodes this one: the
    header holds the body's ``next``, and is empty on the last page."""
    _, path = logged
    parsed = urllib.parse.urlsplit(stack.http_url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port)
    headers, cursor = [], None
    while True:
        params = {"page_size": 7000} | ({} if cursor is None else {"cursor": cursor})
        conn.request("GET", f"/api/v1/runs/{path}/scan?{urllib.parse.urlencode(params)}")
        response = conn.getresponse()
        cursor = json.loads(response.read())["next"]
        headers.append(response.getheader("Stride-Next-Cursor"))
        if cursor is None:
            break
    conn.close()
    assert headers[:-1] == ["7000", "14000"] and headers[-1] == ""


def test_scan_while_the_run_is_being_written(stack: StrideUp, spool: Path) -> None:
    api = stride.Api(stack.http_url)
    run = stride.init(project="live", settings=stack.settings(spool, linger_s=0.02, flush_rows=200))
    total = 30_000
    done = threading.Event()

    def write() -> None:
        for step in range(total):
            run.log({"v": float(step)})
            if step % 1000 == 0:
                time.sleep(0.01)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    wait_for(lambda: _exists(api, run.path))
    scans = 0
    while not done.is_set() or scans < 2:
        rows = list(api.run(run.path).scan_history(page_size=700))
        steps = [r["_step"] for r in rows]
        # Whatever has arrived so far is a gap-free, duplicate-free prefix.
        assert steps == list(range(len(steps)))
        scans += 1
    writer.join()
    run.finish()
    wait_for(lambda: len(list(api.run(run.path).scan_history(page_size=5000))) == total)
    assert scans >= 2


def _exists(api: stride.Api, path: str) -> bool:
    try:
        api.run(path)
    except NotFoundError:
        return False
    return True


def test_runs_are_listed_newest_first_across_pages(stack: StrideUp, spool: Path) -> None:
    paths = []
    for i in range(5):
        with stride.init(project="listing", name=f"run-{i}", settings=stack.settings(spool)) as run:
            run.log({"x": 1.0})
        paths.append(run.path)
    api = stride.Api(stack.http_url)
    wait_for(lambda: len(list(api.runs("default/listing"))) == 5)
    listed = [r.path for r in api.runs("default/listing", per_page=2)]
    assert listed == paths[::-1]
    oldest_first = [r.path for r in api.runs("listing", per_page=3, order="+created_at")]
    assert oldest_first == paths


def _get(stack: StrideUp, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
    parsed = urllib.parse.urlsplit(stack.http_url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port)
    conn.request("GET", path + "?" + urllib.parse.urlencode(params, doseq=True))
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return response.status, body


@pytest.mark.parametrize(
    ("suffix", "params", "status", "message"),
    [
        ("/nope", {}, 404, "not found"),
        ("/nope/history", {}, 404, "not found"),
        ("/{id}/history", {"keys": "missing"}, 404, "has no metric 'missing'"),
        ("/{id}/history", {"samples": 0}, 400, "samples must be between"),
        ("/{id}/history", {"samples": "many"}, 400, "samples must be an integer"),
        ("/{id}/history", {"min_step": 5, "max_step": 1}, 400, "greater than max_step"),
        ("/{id}/scan", {"page_size": 0}, 400, "page_size must be between"),
        ("/{id}/scan", {"page_size": 10**9}, 400, "page_size must be between"),
        ("/{id}/scan", {"cursor": "x"}, 400, "cursor must be an integer"),
        ("/{id}/scan", {"stream": "no/slash"}, 400, "invalid stream"),
    ],
)
def test_bad_requests_get_a_json_4xx_with_the_reason(
    logged: tuple[stride.Api, str],
    stack: StrideUp,
    suffix: str,
    params: dict[str, Any],
    status: int,
    message: str,
) -> None:
    _, path = logged
    entity, project, run_id = path.split("/")
    url = f"/api/v1/runs/{entity}/{project}" + suffix.format(id=run_id)
    got_status, body = _get(stack, url, **params)
    assert got_status == status
    assert message in body["error"]


def test_client_raises_typed_errors(logged: tuple[stride.Api, str]) -> None:
    api, path = logged
    with pytest.raises(NotFoundError, match="not found"):
        api.run("default/queries/does-not-exist")
    with pytest.raises(BadRequestError, match="samples"):
        api.run(path).history(samples=-1)
    with pytest.raises(NotFoundError, match="no metric"):
        list(api.run(path).scan_history(keys=["nope"]))
    with pytest.raises(BadRequestError, match="unknown field 'nonsense'"):
        list(api.runs("default/queries", order="-nonsense"))
    with pytest.raises(stride.ServiceUnavailableError, match="cannot reach"):
        stride.Api("http://127.0.0.1:9", retries=0).run(path)


def _fields_batch(run_id: str, ver: int, **fields: Any) -> Batch:
    """A batch of run fields only; ``ver`` (ns since the epoch) becomes ``heartbeat_at``."""
    return Batch(
        v=WIRE_VERSION, entity="default", project="liveness", run_id=run_id, writer="w",
        seq=0, ver=ver, set={k: json.dumps(v) for k, v in fields.items()},
        set_once={"created_at": json.dumps(_now_iso())},
    )  # fmt: skip


def test_a_running_run_without_heartbeats_is_reported_crashed(stack: StrideUp) -> None:
    """The service's lost_after_s is 300 s: a running run last heard from 10 minutes
    ago is crashed; one heard from now is running; a finished one stays finished."""
    now = time.time_ns()
    ten_minutes_ago = now - 600 * 10**9
    publish(
        stack,
        [
            _fields_batch("silent", ten_minutes_ago, state="running"),
            _fields_batch("alive", now, state="running"),
            _fields_batch("done", ten_minutes_ago, state="finished", exit_code=0),
        ],
    )
    api = stride.Api(stack.http_url)
    states = wait_for(
        lambda: (
            all(_exists(api, f"default/liveness/{r}") for r in ("silent", "alive", "done"))
            and {r: api.run(f"default/liveness/{r}").state for r in ("silent", "alive", "done")}
        )
    )
    assert states == {"silent": "crashed", "alive": "running", "done": "finished"}
    assert api.run("default/liveness/silent").heartbeat_at == _iso(ten_minutes_ago)


def _iso(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def test_run_fields_of_the_wrong_type_or_unknown_are_left_out(stack: StrideUp) -> None:
    """The wire carries any JSON for a run field; the run document stays decodable."""
    batch = _fields_batch(
        "odd-fields", time.time_ns(), state="running", tags="not-a-list", exit_code="zero",
        name="kept", from_the_future={"x": 1},
    )  # fmt: skip
    publish(stack, [batch])
    api = stride.Api(stack.http_url)
    wait_for(lambda: _exists(api, batch.path))
    run = api.run(batch.path)
    assert (run.name, run.state, run.tags, run.exit_code) == ("kept", "running", [], None)
    status, body = _get_raw(stack, f"/api/v1/runs/{batch.path}")
    assert status == 200 and b"from_the_future" not in body
    _exact(body, RunDoc)


# ---- every answer is exactly its api_types Struct ---------------------------------------------


def _get_raw(stack: StrideUp, path: str, **params: Any) -> tuple[int, bytes]:
    parsed = urllib.parse.urlsplit(stack.http_url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port)
    conn.request("GET", path + "?" + urllib.parse.urlencode(params, doseq=True))
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def _exact(body: bytes, cls: type[T]) -> T:
    """Decode ``body`` as ``cls`` in strict mode, and check that it is exactly that shape:
    nothing in the body was ignored (an unknown field) and nothing defaulted (a missing one)."""
    value = msgspec.json.decode(body, type=cls, strict=True)
    assert orjson.loads(msgspec.json.encode(value)) == orjson.loads(body)
    return value


def test_the_service_answers_exactly_the_api_types(
    logged: tuple[stride.Api, str], stack: StrideUp
) -> None:
    _, path = logged
    entity, project, _ = path.split("/")
    base = f"/api/v1/runs/{path}"

    def get(cls: type[T], url: str, expect: int = 200, **params: Any) -> T:
        status, body = _get_raw(stack, url, **params)
        assert status == expect, body
        return _exact(body, cls)

    status = get(Status, "/api/v1/status")
    assert status.ok and status.ingest is not None and status.ingest.points > 0
    page = get(RunsPage, f"/api/v1/runs/{entity}/{project}", per_page=1)
    assert [r.path for r in page.runs] == [path] and page.next is not None
    run = get(RunDoc, base)
    assert run.state == "finished" and run.config == {"lr": 1e-3, "model": {"depth": 50}}
    assert get(MetricKeys, f"{base}/keys").keys == ["acc", "loss", "odd", "weird"]
    history = get(ColumnsPage, f"{base}/history", samples=50, envelope="true")
    assert next(iter(history.columns)) == "_step" and history.next is None
    assert history.nonfinite["loss"] == [(len(history.columns["_step"]) - 1, "inf")]
    assert history.nonfinite["weird"] == [(len(history.columns["_step"]) - 1, "nan")]
    scan = get(ColumnsPage, f"{base}/scan", page_size=10, keys=["odd"])
    assert list(scan.columns) == ["_step", "odd", "_runtime", "_timestamp"]
    assert scan.columns["_step"] == list(range(1, 21, 2))
    assert scan.columns["odd"] == [float(s) for s in range(1, 21, 2)]
    assert scan.columns["_runtime"] == sorted(scan.columns["_runtime"])  # logged in order
    assert scan.next == 20 and scan.nonfinite == {}
    stats = get(MetricStats, f"{base}/stats", keys=["odd"])
    assert list(stats.stats) == ["odd"] and stats.stats["odd"].count == 10_000
    empty = get(ColumnsPage, f"{base}/scan", min_step=5, cursor=10, max_step=6)
    assert empty.columns == {"_step": []} and empty.next is None
    missing = get(ErrorBody, f"{base}-nope", 404)
    assert missing.status == 404 and "not found" in missing.error
    bad = get(ErrorBody, f"{base}/scan", 400, stream="no/slash")
    assert bad.status == 400 and "invalid stream 'no/slash'" in bad.error
    unrouted = get(ErrorBody, "/api/v1/nowhere", 404)
    assert unrouted.status == 404


def test_api_types_exports_every_body_and_nothing_else() -> None:
    import stride.api_types as api_types

    assert set(api_types.__all__) == {
        "Access", "AlertDefinition", "AlertDoc", "AlertTransition", "AlertsPage",
        "ArtifactDoc", "ArtifactFile", "ArtifactsPage", "ColumnsPage", "ErrorBody",
        "EventDoc", "EventsPage", "FileCounters", "FileDoc", "FileUpdate", "FilesPage",
        "FolderDoc", "FoldersPage",
        "IngestCounters", "IngestLag", "MetricKeys", "MetricStats", "NonFinite", "ProjectDoc",
        "ProjectsPage", "RunDoc", "RunSearch", "RunUpdate", "RunsPage", "SeriesStats", "Status",
    }  # fmt: skip
    assert all(hasattr(api_types, name) for name in api_types.__all__)


def test_ingest_counters_are_the_workers_counters() -> None:
    from stride.ingest.worker import IngestStats

    assert list(IngestStats().as_dict()) == list(IngestCounters.__struct_fields__)


@pytest.mark.parametrize(
    ("samples", "min_step", "max_step"),
    [
        (500, None, None),  # raw buckets
        (20, None, None),  # rollup buckets
        (7, 1000, 19_000),  # rollup, with partial edge buckets read raw
        (50, 333, 17_777),
        (3, None, 999),
        (1000, 5, 5),  # a single point
        (2, 0, 20_000),
    ],
)
def test_history_points_are_real_and_the_envelope_covers_the_range(
    logged: tuple[stride.Api, str], samples: int, min_step: int | None, max_step: int | None
) -> None:
    api, path = logged
    run = api.run(path)
    truth = {
        r["_step"]: r["loss"]
        for r in run.scan_history(
            keys=["loss"], page_size=50_000, min_step=min_step, max_step=max_step
        )
    }
    rows = run.history(
        samples=samples,
        keys=["loss"],
        min_step=min_step,
        max_step=max_step,
        envelope=True,
        pandas=False,
    )
    steps = [r["_step"] for r in rows]
    assert 1 <= len(rows) <= samples
    assert steps == sorted(set(steps))
    assert steps[0] == min(truth) and steps[-1] == max(truth)
    for row in rows:
        assert row["loss"] == truth[row["_step"]]
    finite = [v for v in truth.values() if not math.isnan(v)]
    assert max(r.get("max(loss)", -math.inf) for r in rows) >= max(finite) or len(rows) == len(
        truth
    )
    assert min(r.get("min(loss)", math.inf) for r in rows) <= min(finite) or len(rows) == len(truth)


def test_relogged_steps_keep_the_last_value(stack: StrideUp, spool: Path) -> None:
    settings = stack.settings(spool, flush_rows=10)
    with stride.init(project="relog", settings=settings) as run:
        for step in range(1000):
            run.log({"v": 1.0}, step=step)
        for step in range(0, 1000, 10):
            run.log({"v": 2.0}, step=step)  # a later batch replaces these
        run.log({"v": 3.0}, step=5)
        run.log({"v": 4.0}, step=5)  # same batch, logged twice: the later one wins
    api = stride.Api(stack.http_url)
    rows = wait_rows(api, run.path, 1000)
    assert len(rows) == 1000
    assert rows[5]["v"] == 4.0
    assert [r["v"] for r in rows[::10]] == [2.0] * 100
    sampled = api.run(run.path).history(samples=20, pandas=False)
    assert all(
        r["v"] == (4.0 if r["_step"] == 5 else 2.0 if r["_step"] % 10 == 0 else 1.0)
        for r in sampled
    )


def test_scans_cross_huge_step_gaps_in_few_pages(stack: StrideUp, spool: Path) -> None:
    far = 10**12
    with stride.init(project="gaps", settings=stack.settings(spool)) as run:
        for step in [*range(500), *range(far, far + 500)]:
            run.log({"x": float(step), "y": -1.0} if step >= far else {"x": float(step)}, step=step)
    api = stride.Api(stack.http_url)
    wait_rows(api, run.path, 1000, keys=["x"])
    entity, project, run_id = run.path.split("/")
    pages, rows, cursor = 0, [], None
    while True:  # every key (no keys=): the multi-key path
        params = {"page_size": 100} | ({} if cursor is None else {"cursor": cursor})
        status, body = _get(stack, f"/api/v1/runs/{entity}/{project}/{run_id}/scan", **params)
        assert status == 200
        pages += 1
        rows += body["columns"]["_step"]
        cursor = body["next"]
        if cursor is None:
            break
    assert rows == [*range(500), *range(far, far + 500)]
    assert pages <= 15  # the gap is jumped, not walked
    both = list(api.run(run.path).scan_history(keys=["x", "y"], page_size=100))
    assert [r["_step"] for r in both] == list(range(far, far + 500))
    assert all(r["y"] == -1.0 for r in both)


@pytest.mark.parametrize(
    ("error", "state", "exit_code"),
    [(ValueError, "failed", 1), (KeyboardInterrupt, "cancelled", 130)],
)
def test_leaving_the_block_by_an_exception_sets_the_state(
    stack: StrideUp, spool: Path, error: type[BaseException], state: str, exit_code: int
) -> None:
    with pytest.raises(error), stride.init(project="states", settings=stack.settings(spool)) as run:
        run.log({"a": 1.0})
        raise error()
    api = stride.Api(stack.http_url)
    wait_for(lambda: _exists(api, run.path) and api.run(run.path).state == state)
    assert api.run(run.path).exit_code == exit_code


def test_health_readiness_and_lag_over_http(stack: StrideUp) -> None:
    api = stride.Api(stack.http_url)
    assert api.get("/healthz") == {"ok": True, "ingest": None, "lag": None, "files": None}
    assert api.get("/readyz")["ok"] is True
    # Settled: nothing waiting and nothing in hand (a batch another test's run sent
    # late can be in hand for a moment, acked a few milliseconds later).
    settled = wait_for(
        lambda: (
            (s := api.get("/api/v1/status")["lag"])
            and s["pending"] == 0
            and s["ack_pending"] == 0
            and s
        )
    )
    assert settled["oldest_s"] is None


def test_a_runs_url_serves_its_document(
    logged: tuple[stride.Api, str],
) -> None:
    import urllib.request

    api, path = logged
    run = api.run(path)
    assert run.url == f"{api.base_url}/api/v1/runs/{path}"
    with urllib.request.urlopen(run.url, timeout=10) as answer:
        assert json.loads(answer.read())["path"] == path


def test_stats_match_the_logged_values_computed_in_python(logged: tuple[stride.Api, str]) -> None:
    api, path = logged
    run = api.run(path)
    rows = list(run.scan_history(page_size=50_000))
    stats = run.stats()
    assert sorted(stats) == ["acc", "loss", "odd", "weird"]
    for key in ("acc", "odd"):
        steps = [r["_step"] for r in rows if key in r]
        values = [r[key] for r in rows if key in r]
        assert stats[key] == {
            "count": len(values),
            "first": values[0],
            "last": values[-1],
            "min": min(values),
            "max": max(values),
            "mean": pytest.approx(sum(values) / len(values)),
            "first_step": steps[0],
            "last_step": steps[-1],
        }
    loss = stats["loss"]  # 1/(step+1), a spike of 100 at 777, inf at the last step
    assert loss["count"] == 20_001 and loss["first"] == 1.0 and loss["min"] == 1 / 20_000
    assert loss["last"] is None and loss["max"] is None and loss["mean"] is None  # inf
    assert stats["weird"] == {  # one NaN
        **{"count": 1, "first": None, "last": None, "min": None, "max": None, "mean": None},
        **{"first_step": 20_000, "last_step": 20_000},
    }
    assert run.stats(keys=["odd"]) == {"odd": stats["odd"]}
    with pytest.raises(NotFoundError, match="no metric 'nope'"):
        run.stats(keys=["nope"])


def test_the_system_stream_is_read_apart_from_the_default_one(stack: StrideUp) -> None:
    """Machine metrics travel in the ``system`` stream (nothing in the SDK logs them
    yet, so a writer's batch is built here by hand): history, scan, keys and stats
    take ``stream="system"`` and never mix the two streams."""
    import numpy as np

    from stride.wire import MetricBlock

    def block(stream: str, keys: list[str], steps: range, scale: float) -> MetricBlock:
        arr = np.array(steps, "<i8")
        values = [(arr * scale + i).astype("<f8").tobytes() for i in range(len(keys))]
        times = (arr * 1.0).astype("<f8").tobytes()
        stamps = (1.7e9 + arr).astype("<f8").tobytes()
        return MetricBlock(stream, keys, arr.tobytes(), times, stamps, values)

    batch = _fields_batch("two-streams", time.time_ns(), state="running")
    batch.metrics = [
        block("default", ["loss"], range(100), 1.0),
        block("system", ["gpu.0.util", "cpu"], range(0, 50), 2.0),
    ]
    publish(stack, [batch])
    api = stride.Api(stack.http_url)
    path = "default/liveness/two-streams"
    wait_for(lambda: _exists(api, path))
    run = api.run(path)
    wait_for(lambda: len(list(run.scan_history(stream="system"))) == 50)
    assert run.history_keys == ["loss"]
    keys = api.get(f"/api/v1/runs/{path}/keys", [("stream", "system")])["keys"]
    assert keys == ["cpu", "gpu.0.util"]
    system = run.history(samples=1000, stream="system", pandas=False)
    assert [r["_step"] for r in system] == list(range(50))
    assert all(r["gpu.0.util"] == r["_step"] * 2.0 and "loss" not in r for r in system)
    assert run.stats(stream="system")["cpu"]["count"] == 50
    assert set(run.stats()) == {"loss"} and run.stats()["loss"]["count"] == 100
    # W&B's system_metrics: each system metric's last value; none in the summary.
    run.load()
    assert run.system_metrics == {"gpu.0.util": 49 * 2.0, "cpu": 49 * 2.0 + 1}
    assert "cpu" not in run.summary and run.summary["loss"] == 99.0


@pytest.fixture(scope="module")
def sparse(stack: StrideUp, tmp_path_factory: pytest.TempPathFactory) -> tuple[stride.Api, str]:
    """100k points spread over 3.7M steps: few samples make sample buckets of many
    wide (4096-step) rollup buckets, the second rollup level."""
    settings = stack.settings(tmp_path_factory.mktemp("spool"))
    with stride.init(project="wide", settings=settings) as run:
        for i in range(100_000):
            step = i * 37
            run.log({"v": 1000.0 if i == 54_321 else math.sin(i / 500)}, step=step)
    api = stride.Api(stack.http_url)
    wait_rows(api, run.path, 100_000)
    return api, run.path


@pytest.mark.parametrize(
    ("samples", "min_step", "max_step"),
    [(20, None, None), (30, 1234, 3_000_001), (5, 50_000, 2_000_000), (3, None, 3_699_962)],
)
def test_history_from_the_wide_rollup_is_the_points(
    sparse: tuple[stride.Api, str], samples: int, min_step: int | None, max_step: int | None
) -> None:
    api, path = sparse
    run = api.run(path)
    truth = {
        r["_step"]: r["v"]
        for r in run.scan_history(page_size=100_000, min_step=min_step, max_step=max_step)
    }
    span = max(truth) - min(truth) + 1
    assert span / (samples - 1) >= 8 * 4096  # sample buckets of 8 wide buckets or more
    rows = run.history(
        samples=samples, min_step=min_step, max_step=max_step, envelope=True, pandas=False
    )
    steps = [r["_step"] for r in rows]
    assert 2 <= len(rows) <= samples and steps == sorted(set(steps))
    assert steps[0] == min(truth) and steps[-1] == max(truth)
    assert all(r["v"] == truth[r["_step"]] for r in rows)
    assert all(r["_runtime"] is not None and r["_timestamp"] is not None for r in rows)
    assert max(r.get("max(v)", -math.inf) for r in rows) == max(truth.values())  # the spike
    assert min(r.get("min(v)", math.inf) for r in rows) == min(truth.values())
    again = run.history(
        samples=samples, min_step=min_step, max_step=max_step, envelope=True, pandas=False
    )
    assert again == rows
