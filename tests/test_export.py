"""Export: a run's metrics as CSV, Parquet and JSON, and a project's runs table,
each read back and compared with what the API serves, row for row."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

import stride
from stride import BadRequestError, NotFoundError

from .conftest import StrideUp, scan, wait_for, wait_rows

PROJECT = "exports"
STEPS = 120_000


@pytest.fixture(scope="module")
def long_run(stack: StrideUp, tmp_path_factory: pytest.TempPathFactory) -> str:
    spool = tmp_path_factory.mktemp("spool")
    with stride.init(project=PROJECT, id="long", settings=stack.settings(spool)) as run:
        for step in range(STEPS):
            row = {"loss": 1.0 / (step + 1)}
            if step % 2:
                row["acc"] = step / STEPS
            if step == 7:
                row["loss"] = math.nan
            if step == 8:
                row["loss"] = -math.inf
            run.log(row)
    wait_rows(stride.Api(stack.http_url), run.path, STEPS, keys=["loss"])
    return run.path


def _read_csv(path: Path) -> Any:
    """An empty cell is no value; ``nan``, ``inf`` and ``-inf`` are numbers (pyarrow
    reads ``nan`` as empty by default)."""
    options = pa_csv.ConvertOptions(null_values=[""], strings_can_be_null=True)
    return pa_csv.read_csv(path, convert_options=options)


def _expected(api: stride.Api, path: str) -> list[dict[str, Any]]:
    return scan(api, path, None)


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


def _check_rows(table: Any, expected: list[dict[str, Any]]) -> None:
    assert table.column_names == ["_step", "_runtime", "_timestamp", "acc", "loss"]
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    assert columns["_step"] == [r["_step"] for r in expected]
    for name in ("_runtime", "_timestamp", "acc", "loss"):
        bad = [
            (row["_step"], got, row.get(name))
            for got, row in zip(columns[name], expected, strict=True)
            if not _same(got, row.get(name))
        ]
        assert not bad, (name, bad[:5])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_run_exports_as_a_table_row_for_row(
    long_run: str, stack: StrideUp, tmp_path: Path, fmt: str
) -> None:
    api = stride.Api(stack.http_url)
    dest = api.run(long_run).export(tmp_path / f"run.{fmt}", format=fmt)
    assert dest == tmp_path / f"run.{fmt}" and not list(tmp_path.glob("*.part"))
    table = pq.read_table(dest) if fmt == "parquet" else _read_csv(dest)
    assert table.num_rows == STEPS
    _check_rows(table, _expected(api, long_run))


def test_a_run_exports_as_json_with_its_document(
    long_run: str, stack: StrideUp, tmp_path: Path
) -> None:
    api = stride.Api(stack.http_url)
    run = api.run(long_run)
    data = json.loads(run.export(tmp_path / "run.json", format="json").read_bytes())
    assert data["run"] == api.get(f"/api/v1/runs/{long_run}")
    rows = data["rows"]
    assert len(rows) == STEPS
    assert rows[7]["loss"] == "nan" and rows[8]["loss"] == "-inf"  # JSON has no NaN
    assert "acc" not in rows[0] and rows[1]["acc"] == 1 / STEPS
    restored = [{k: float(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
    expected = _expected(api, long_run)
    assert [r["_step"] for r in restored] == [r["_step"] for r in expected]
    assert all(
        set(got) == set(want) and all(_same(got[k], want[k]) for k in want)
        for got, want in zip(restored, expected, strict=True)
    )


def test_a_run_exports_only_the_keys_asked_for(
    long_run: str, stack: StrideUp, tmp_path: Path
) -> None:
    api = stride.Api(stack.http_url)
    table = pa_csv.read_csv(api.run(long_run).export(tmp_path / "acc.csv", keys=["acc"]))
    assert table.column_names == ["_step", "_runtime", "_timestamp", "acc"]
    assert table.column("_step").to_pylist() == list(range(1, STEPS, 2))


def test_bad_exports_are_refused_before_any_file_is_written(
    long_run: str, stack: StrideUp, tmp_path: Path
) -> None:
    api = stride.Api(stack.http_url)
    with pytest.raises(BadRequestError, match="format must be one of json, csv, parquet"):
        api.run(long_run).export(tmp_path / "x", format="xlsx")
    with pytest.raises(NotFoundError, match="no metric 'nope'"):
        api.run(long_run).export(tmp_path / "x", keys=["nope"])
    with pytest.raises(BadRequestError, match="format must be one of csv, parquet"):
        api.export_runs(PROJECT, tmp_path / "x", format="json")
    with pytest.raises(BadRequestError, match="unknown field 'colour'"):
        api.export_runs(PROJECT, tmp_path / "x", filters={"colour": "red"})
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def table_runs(stack: StrideUp, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    spool = tmp_path_factory.mktemp("spool")
    ids = []
    for i in range(5):
        config: dict[str, Any] = {"lr": 10.0**-i, "model": {"depth": 18 * (i + 1)}, "opt": "sgd"}
        if i == 2:
            config["opt"] = {"name": "adam"}  # another type: the column holds text
        with stride.init(
            project="runs-table", id=f"t{i}", name=f"table-{i}", tags=["x"] if i % 2 else None,
            config=config, settings=stack.settings(spool),
        ) as run:  # fmt: skip
            for step in range(3):
                run.log({"loss": i + step / 10})
            run.summary["flag"] = i % 2 == 0
        ids.append(run.id)
    api = stride.Api(stack.http_url)
    wait_for(lambda: len(list(api.runs("runs-table", {"summary.loss": {"$exists": True}}))) == 5)
    return ids


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_projects_runs_export_as_a_flat_table(
    table_runs: list[str], stack: StrideUp, tmp_path: Path, fmt: str
) -> None:
    api = stride.Api(stack.http_url)
    dest = api.export_runs("runs-table", tmp_path / f"runs.{fmt}", format=fmt)
    table = pq.read_table(dest) if fmt == "parquet" else _read_csv(dest)
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == table_runs  # oldest first
    names = table.column_names
    assert names[:4] == ["id", "name", "state", "user"]
    assert {"config.lr", "config.model.depth", "config.opt", "config.opt.name"} <= set(names)
    assert {"summary.loss", "summary.flag"} <= set(names) and "config.model" not in names
    docs = {r.id: r for r in api.runs("runs-table", per_page=10)}
    for row in rows:
        doc = docs[row["id"]]
        assert row["name"] == doc.name and row["state"] == doc.state == "finished"
        assert row["config.lr"] == doc.config["lr"]
        assert row["config.model.depth"] == doc.config["model"]["depth"]
        assert row["summary.loss"] == pytest.approx(doc.summary["loss"])
        assert row["summary.flag"] == doc.summary["flag"]
    assert rows[2]["config.opt"] == '{"name":"adam"}' and rows[2]["config.opt.name"] == "adam"
    assert rows[0]["config.opt"] == "sgd" and rows[0]["config.opt.name"] is None
    if fmt == "parquet":  # typed columns: numbers, booleans, text
        assert str(table.schema.field("config.lr").type) == "double"
        assert str(table.schema.field("summary.flag").type) == "bool"
        assert str(table.schema.field("config.opt").type) == "string"


def test_a_runs_export_takes_the_search_filters(
    table_runs: list[str], stack: StrideUp, tmp_path: Path
) -> None:
    api = stride.Api(stack.http_url)
    dest = api.export_runs("runs-table", tmp_path / "some.csv", filters={"tags": "x"})
    assert pa_csv.read_csv(dest).column("id").to_pylist() == ["t1", "t3"]


# ---- the streamed scan: Arrow IPC and NDJSON -------------------------------------------------


def test_the_arrow_stream_equals_the_json_scan_row_for_row(long_run: str, stack: StrideUp) -> None:
    api = stride.Api(stack.http_url)
    run = api.run(long_run)
    batches = list(run.scan_batches())
    assert sum(b.num_rows for b in batches) == STEPS  # paging: tests/test_store.py
    table = run.to_arrow()
    assert table.num_rows == STEPS and table.schema.field("_step").type == "int64"
    _check_rows(table, _expected(api, long_run))
    assert math.isnan(table.column("loss")[7].as_py())  # NaN stays NaN; null is no value
    assert table.column("acc")[0].as_py() is None
    frame = run.to_pandas()
    assert (
        len(frame) == STEPS and math.isnan(frame["acc"][0]) and frame["_step"].iloc[-1] == STEPS - 1
    )


def test_the_arrow_stream_takes_keys_and_a_range(long_run: str, stack: StrideUp) -> None:
    run = stride.Api(stack.http_url).run(long_run)
    only_acc = run.to_arrow(keys=["acc"], min_step=100, max_step=111)
    assert only_acc.column_names == ["_step", "_runtime", "_timestamp", "acc"]
    assert only_acc.column("_step").to_pylist() == [101, 103, 105, 107, 109, 111]  # rows with acc
    batches = list(run.scan_history(keys=["loss"], min_step=5, max_step=9, format="arrow"))
    assert [s for b in batches for s in b.column("_step").to_pylist()] == [5, 6, 7, 8, 9]
    empty = run.to_arrow(min_step=STEPS + 10)
    assert empty.num_rows == 0 and empty.column_names == [
        "_step", "_runtime", "_timestamp", "acc", "loss",
    ]  # fmt: skip
    with pytest.raises(NotFoundError, match="no metric 'nope'"):
        run.to_arrow(keys=["nope"])
    with pytest.raises(stride.UsageError, match="format must be 'rows' or 'arrow'"):
        next(run.scan_history(format="csv"))


def test_the_ndjson_stream_is_the_json_rows(long_run: str, stack: StrideUp) -> None:
    import http.client
    import urllib.parse

    parsed = urllib.parse.urlsplit(stack.http_url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port)
    conn.request("GET", f"/api/v1/runs/{long_run}/stream?format=ndjson&max_step=9")
    answer = conn.getresponse()
    assert answer.getheader("Content-Type") == "application/x-ndjson"
    lines = answer.read().decode().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["_step"] for r in rows] == list(range(10))
    assert rows[7]["loss"] == "nan" and rows[8]["loss"] == "-inf" and "acc" not in rows[0]
    conn.request("GET", f"/api/v1/runs/{long_run}/stream?format=xml")
    bad = conn.getresponse()
    assert (
        bad.status == 400
        and "format must be one of arrow, ndjson" in json.loads(bad.read())["error"]
    )
    conn.close()


def test_the_whole_ndjson_stream_is_the_json_scan_row_for_row(
    long_run: str, stack: StrideUp
) -> None:
    """Every row of the run (dense steps, absent keys, NaN and -inf) as the JSON
    scan gives it, non-finite values named as strings."""
    import http.client
    import urllib.parse

    parsed = urllib.parse.urlsplit(stack.http_url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port)
    cases = (  # every key; one key with NaN and -inf; one key, all finite (the dense path)
        (None, "", 0),
        (["loss"], "&keys=loss", 0),
        (["loss"], "&keys=loss&min_step=10", 10),
    )
    for keys, query, first in cases:
        conn.request("GET", f"/api/v1/runs/{long_run}/stream?format=ndjson{query}")
        rows = [json.loads(line) for line in conn.getresponse().read().splitlines()]
        expected = scan(stride.Api(stack.http_url), long_run, keys)[first:]
        assert len(rows) == len(expected) == STEPS - first
        named = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
        for got, want in zip(rows, expected, strict=True):
            assert set(got) == set(want), (got, want)
            for name, value in got.items():
                value = named.get(value, value) if isinstance(value, str) else value
                assert _same(value, want[name]), (name, got, want)
    conn.close()
