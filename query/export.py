"""Export: a run's metrics as JSON, CSV or Parquet, and a project's runs table.

Both stream: rows are read from storage a page at a time (keyset pages, as
``scan`` reads them) and written to the response as they come, so memory
stays bounded by a page however long the run or large the project.

* A run (``/api/v1/runs/{entity}/{project}/{run_id}/export``): one row per
  step with ``_step``, ``_runtime``, ``_timestamp`` and a column per key (empty
  where a key has no value at that step). JSON is ``{"run": <RunDoc>, "rows":
  [...]}`` where a row leaves out the keys it lacks and writes a non-finite
  value as the string ``"nan"``, ``"inf"`` or ``"-inf"`` (JSON has none).
* A project's runs (``/api/v1/export/runs/{entity}/{project}``, with the
  filters of a search): one row per run, its fields and then ``config.*`` and
  ``summary.*`` flattened to dotted columns. The columns come from the
  project's search rows before the first run is written; a column holds
  numbers or booleans when every value of that key is one, else text (JSON
  for lists and objects).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import msgspec
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from stride.api_types import RunDoc
from stride.store import AsyncStore
from stride.store.run_search import BOOL, METRIC_PREFIX, NULL, NUMBER, OBJECT

from .errors import BadRequest
from .runs import get_run, list_runs
from .stream import Chunks, arrow_table, json_rows, row_pages, row_schema

__all__ = ["ExportFormat", "export_run", "export_runs"]

#: Runs per page read for the runs table.
RUNS_PAGE = 500
#: The runs table's first columns, from the run document.
_RUN_COLUMNS = (
    *("id", "name", "state", "user", "tags", "notes", "folder"),
    *("created_at", "heartbeat_at", "finished_at", "exit_code"),
)


class ExportFormat(enum.Enum):
    JSON = "json"
    CSV = "csv"
    PARQUET = "parquet"

    @classmethod
    def parse(cls, text: str, allowed: Iterable[ExportFormat]) -> ExportFormat:
        names = [f.value for f in allowed]
        if text not in names:
            raise BadRequest(f"format must be one of {', '.join(names)}, got {text!r}")
        return cls(text)

    @property
    def content_type(self) -> str:
        return {
            ExportFormat.JSON: "application/json",
            ExportFormat.CSV: "text/csv; charset=utf-8",
            ExportFormat.PARQUET: "application/vnd.apache.parquet",
        }[self]


class _TableWriter:
    """Tables of one schema in, CSV or Parquet bytes out, chunk by chunk."""

    def __init__(self, fmt: ExportFormat, schema: pa.Schema) -> None:
        self._sink = Chunks()
        out = pa.PythonFile(self._sink, mode="w")
        self._writer: pa_csv.CSVWriter | pq.ParquetWriter
        if fmt is ExportFormat.CSV:
            self._writer = pa_csv.CSVWriter(out, schema)  # type: ignore[arg-type]  # stubs: IO only
        else:
            self._writer = pq.ParquetWriter(out, schema, compression="zstd")

    def write(self, table: pa.Table) -> bytes:
        self._writer.write_table(table)
        return self._sink.take()

    def close(self) -> bytes:
        self._writer.close()
        return self._sink.take()


# ---- a run -----------------------------------------------------------------------------------


async def export_run(
    store: AsyncStore,
    entity: str,
    project: str,
    run_id: str,
    keys: list[str],
    stream: str,
    fmt: ExportFormat,
    lost_after_s: float,
) -> AsyncIterator[bytes]:
    """The run's rows of ``keys`` in ``stream``, as ``fmt``, chunk by chunk."""
    path = f"{entity}/{project}/{run_id}"
    pages = row_pages(store, path, stream, keys)
    if fmt is ExportFormat.JSON:
        doc = await get_run(store, entity, project, run_id, lost_after_s)
        yield b'{"run":' + msgspec.json.encode(doc) + b',"rows":['
        first = True
        async for cols in pages:
            body = json_rows(cols, keys, b",")
            if body:
                yield (b"" if first else b",") + body
                first = False
        yield b"]}"
        return
    schema = row_schema(keys)
    writer = _TableWriter(fmt, schema)
    async for cols in pages:
        yield writer.write(arrow_table(cols, schema))
    yield writer.close()


# ---- a project's runs ----------------------------------------------------------------------------


async def export_runs(
    store: AsyncStore,
    entity: str,
    project: str,
    filters: dict[str, Any] | None,
    fmt: ExportFormat,
    lost_after_s: float,
) -> AsyncIterator[bytes]:
    """The runs that match ``filters`` as a table, oldest first, chunk by chunk."""
    schema = await _runs_schema(store, entity, project)
    writer = _TableWriter(fmt, schema)
    cells = [_cell(field.type) for field in schema]
    after: str | None = None
    while True:
        runs, after = await list_runs(
            store, entity, project, filters=filters, per_page=RUNS_PAGE,
            order="+created_at", after=after, lost_after_s=lost_after_s,
        )  # fmt: skip
        if runs:
            rows = [_flat(run) for run in runs]
            arrays = [
                pa.array([convert(row.get(name)) for row in rows], field.type)
                for name, field, convert in zip(schema.names, schema, cells, strict=True)
            ]
            yield writer.write(pa.Table.from_arrays(arrays, schema=schema))
        if after is None:
            break
    yield writer.close()


async def _runs_schema(store: AsyncStore, entity: str, project: str) -> pa.Schema:
    """The runs table's columns: the run's own, then every config and summary key
    of the project's runs (a key whose every value is an object is not a column:
    its members are)."""
    found = await store.query_arrow(
        "SELECT key, groupUniqArray(kind) AS kinds FROM run_search "
        "WHERE entity = {e:String} AND project = {p:String} AND pos = 0 "
        "AND (startsWith(key, 'config.') OR startsWith(key, 'summary.') "
        "OR startsWith(key, {metric:String})) GROUP BY key",
        {"e": entity, "p": project, "metric": METRIC_PREFIX + "summary."},
    )
    kinds: dict[str, set[int]] = {}
    for row in found.to_pylist():
        name = str(row["key"]).removeprefix(METRIC_PREFIX)
        kinds.setdefault(name, set()).update(row["kinds"])
    fields: list[pa.Field[Any]] = [
        pa.field(n, pa.int64() if n == "exit_code" else pa.string()) for n in _RUN_COLUMNS
    ]
    for name in sorted(kinds, key=lambda k: (not k.startswith("config."), k)):
        seen = kinds[name] - {NULL}
        if seen == {OBJECT}:
            continue
        kind: pa.DataType = (
            pa.float64() if seen <= {NUMBER} else pa.bool_() if seen == {BOOL} else pa.string()
        )
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


def _flat(run: RunDoc) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(run, name) for name in _RUN_COLUMNS}
    row["id"] = run.id
    _walk("config", run.config, row)
    summary = {k: v for k, v in run.summary.items() if k not in ("_min", "_max")}
    _walk("summary", summary, row)
    return row


def _walk(prefix: str, node: dict[str, Any], out: dict[str, Any]) -> None:
    for key, value in node.items():
        name = f"{prefix}.{key}"
        out[name] = value
        if isinstance(value, dict):
            _walk(name, value, out)


def _cell(kind: pa.DataType) -> Callable[[Any], Any]:
    """How a value becomes a cell of a column of type ``kind``."""
    if pa.types.is_string(kind):
        return lambda v: v if v is None or isinstance(v, str) else orjson.dumps(v).decode()
    if pa.types.is_floating(kind):
        return lambda v: (
            float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
        )
    if pa.types.is_boolean(kind):
        return lambda v: v if isinstance(v, bool) else None
    return lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None
