"""Turn decoded batches into the Arrow tables that are inserted into ClickHouse.

One builder per table: the handlers in :mod:`.handlers` call the ones they own,
the worker calls :func:`build_ledger`. All of it is pure CPU, run in the prepare
stage while the previous fetch is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from stride.store import MAX_VER
from stride.store.run_search import search_rows
from stride.store.schema import (
    FOLDER_DETAILS,
    FOLDER_FIELD_PREFIX,
    FOLDER_FIELDS_COLUMNS,
    ONCE_PREFIX,
    POINTS_COLUMNS,
    ROLLUP_PARTIALS,
    ROLLUP_STEPS,
    WRITER_PREFIX,
)
from stride.wire import Batch


@dataclasses.dataclass
class Points:
    """The ``points`` rows of some batches, their rollup partials (one row per
    series, bucket and batch: :data:`stride.store.schema.ROLLUP_PARTIALS`; the
    rollup and ``series_stats`` are both written from them), and the series they
    touch."""

    table: pa.Table
    rollup: pa.Table
    keys: set[tuple[str, str, str]]  # (run, stream, key)
    count: int


def build_points(batches: Sequence[Batch]) -> Points | None:
    """The points of ``batches`` over their decoded buffers, or ``None`` if they hold none."""
    points = _Points()
    keys: set[tuple[str, str, str]] = set()
    for b in batches:
        points.add(b, keys)
    tables = points.tables()
    return None if tables is None else Points(*tables, keys, points.count)


def build_events(batches: Sequence[Batch]) -> pa.Table | None:
    """One row per event of ``batches``; ``None`` when they hold none."""
    rows = [(b, i, e) for b in batches for i, e in enumerate(b.events)]
    if not rows:
        return None
    return pa.table(
        {
            "run": [b.path for b, _, _ in rows],
            "ts": pa.array([round(e.timestamp * 1e9) for _, _, e in rows], pa.int64()),
            "writer": [b.writer for b, _, _ in rows],
            "seq": pa.array([b.seq for b, _, _ in rows], pa.uint64()),
            "idx": pa.array([i for _, i, _ in rows], pa.uint32()),
            "level": [e.level for _, _, e in rows],
            "message": [e.message for _, _, e in rows],
            "metadata": [e.metadata for _, _, e in rows],
        }
    )


def build_fields(batches: Sequence[Batch]) -> pa.Table:
    """The ``run_fields`` rows: each set field, each set-once field as ``~name`` with
    the reversed version (first write wins), the writer's own ``writers.<writer>``
    beside a ``state`` it sets, and ``heartbeat_at`` for every batch."""
    f_entity: list[str] = []
    f_project: list[str] = []
    f_run: list[str] = []
    f_field: list[str] = []
    f_value: list[str] = []
    f_ver: list[int] = []

    def field(b: Batch, name: str, value: str, ver: int) -> None:
        f_entity.append(b.entity)
        f_project.append(b.project)
        f_run.append(b.run_id)
        f_field.append(name)
        f_value.append(value)
        f_ver.append(ver)

    for b in batches:
        for name, value in b.set.items():
            if not name.startswith(FOLDER_FIELD_PREFIX):  # the folder's (FoldersHandler)
                field(b, name, value, b.ver)
        if "state" in b.set:
            field(b, WRITER_PREFIX + b.writer, b.set["state"], b.ver)
        for name, value in b.set_once.items():
            # Stored beside any last-write-wins value of the same name, which wins.
            field(b, ONCE_PREFIX + name, value, MAX_VER - b.ver)
        heartbeat = datetime.fromtimestamp(b.ver / 1e9, UTC).isoformat()
        field(b, "heartbeat_at", orjson.dumps(heartbeat).decode(), b.ver)

    return pa.table(
        {
            "entity": f_entity,
            "project": f_project,
            "run_id": f_run,
            "field": f_field,
            "value": f_value,
            "ver": pa.array(f_ver, pa.uint64()),
        }
    )


def build_folder_fields(batches: Sequence[Batch]) -> pa.Table | None:
    """The ``folder_fields`` rows of the folder details the batches set (or ``None``)."""
    rows: dict[str, list[Any]] = {c: [] for c in FOLDER_FIELDS_COLUMNS}
    for b in batches:
        for name, value in b.set.items():
            if name.startswith(FOLDER_FIELD_PREFIX):
                detail, _, path = name.removeprefix(FOLDER_FIELD_PREFIX).partition(":")
                if detail not in FOLDER_DETAILS or not path:
                    continue  # not one this service knows: a newer SDK's, or a bad writer's
                for column, cell in zip(
                    FOLDER_FIELDS_COLUMNS,
                    (b.entity, b.project, path, detail, value, b.ver),
                    strict=True,
                ):
                    rows[column].append(cell)
    if not rows["path"]:
        return None
    return pa.table({**rows, "ver": pa.array(rows["ver"], pa.uint64())})


def build_ledger(batches: Sequence[Batch]) -> pa.Table:
    """The ``batches`` rows (the ledger) that record ``batches`` as applied."""
    return pa.table(
        {
            "run": [b.path for b in batches],
            "writer": [b.writer for b in batches],
            "seq": pa.array([b.seq for b in batches], pa.uint64()),
            "ver": pa.array([b.ver for b in batches], pa.uint64()),
            "points": pa.array([b.points for b in batches], pa.uint64()),
        }
    )


def build_tables(
    batches: Sequence[Batch],
) -> tuple[Points | None, pa.Table, pa.Table, pa.Table]:
    """Every table the default handlers and the ledger build for one fetch: the CPU
    side of ingest, as ``benchmarks/bench_micro.py`` times it."""
    fields = build_fields(batches)
    return build_points(batches), fields, search_rows(fields), build_ledger(batches)


class _Points:
    """Collects point columns as numpy segments (one per series of each batch);
    run, stream and key dictionary-encoded.

    :meth:`table` joins the segments into one Arrow record batch. Keeping a
    record batch per segment would avoid a copy, but a fetch of small batches
    then becomes thousands of chunks, and inserting (and building) those costs
    far more than the copy: 128 one-row batches of 100 keys took 2.1 s to insert
    as 12,800 chunks against 38 ms as one (``deploy/capacity.py prepare``).
    """

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.streams: dict[str, int] = {}
        self.keys: dict[str, int] = {}
        #: steps, times, timestamps, values: one array per series of each batch.
        self.columns: tuple[list[np.ndarray], ...] = ([], [], [], [])
        self.series: list[tuple[int, int, int, int, int]] = []  # run, stream, key, ver, rows
        self.count = 0

    def add(self, b: Batch, keys: set[tuple[str, str, str]]) -> None:
        if not b.metrics:
            return
        run_idx = self.runs.setdefault(b.path, len(self.runs))
        per_key: dict[tuple[str, str], list[tuple[np.ndarray, ...]]] = {}
        for block in b.metrics:
            steps = np.frombuffer(block.steps, "<i8")
            times = np.frombuffer(block.times, "<f8")
            stamps = np.frombuffer(block.timestamps, "<f8")
            for key, raw in zip(block.keys, block.values, strict=True):
                values = np.frombuffer(raw, "<f8")
                per_key.setdefault((block.stream, key), []).append((steps, times, stamps, values))
        for (stream, key), parts in per_key.items():
            if not any(len(part[0]) for part in parts):
                continue  # a block without rows: nothing to store
            keys.add((b.path, stream, key))
            if len(parts) == 1:
                cols = parts[0]
            else:
                cols = tuple(np.concatenate(c) for c in zip(*parts, strict=True))
            if len(parts) > 1 or (len(cols[0]) > 1 and not bool(np.all(np.diff(cols[0]) > 0))):
                cols = _last_per_step(*cols)
            for column, part in zip(self.columns, cols, strict=True):
                column.append(part)
            stream_idx = self.streams.setdefault(stream, len(self.streams))
            key_idx = self.keys.setdefault(key, len(self.keys))
            self.series.append((run_idx, stream_idx, key_idx, b.ver, len(cols[0])))
            self.count += len(cols[0])

    def tables(self) -> tuple[pa.Table, pa.Table] | None:
        """All points as one record batch (see the class docstring for why), and
        their rollup partials; ``None`` without points.

        Per point the record batch holds the four 8-byte columns and four
        dictionary indices (run, stream, key and version) in the smallest integer
        type that fits, built without a wider array in between: a fetch in hand
        is most of ingest's memory (about 35 bytes a point, against 57 with int32
        indices and a ``ver`` per point).
        """
        if not self.count:
            return None
        run_idx, stream_idx, key_idx, ver, rows = (
            np.array(c) for c in zip(*self.series, strict=True)
        )
        versions, ver_idx = np.unique(ver, return_inverse=True)
        dictionaries: list[pa.Array[Any]] = [
            pa.array(list(self.runs)),
            pa.array(list(self.streams)),
            pa.array(list(self.keys)),
            pa.array(versions.astype(np.uint64)),
        ]
        per_series = [run_idx, stream_idx, key_idx, ver_idx]
        # Each series' indices, narrowed first, then repeated over its points.
        narrow = [
            i.astype(_index_type(len(d))) for i, d in zip(per_series, dictionaries, strict=True)
        ]

        def named(indices: list[np.ndarray]) -> list[pa.DictionaryArray[Any, Any]]:
            """Dictionary arrays of the first ``len(indices)`` of run, stream, key, ver."""
            return [
                pa.DictionaryArray.from_arrays(i, d)
                for i, d in zip(indices, dictionaries[: len(indices)], strict=True)
            ]

        steps, times, stamps, values = (_joined(c) for c in self.columns)
        run, stream, key, version = named([np.repeat(i, rows) for i in narrow])
        points = pa.RecordBatch.from_arrays(
            [run, stream, key, pa.array(steps), pa.array(times), pa.array(stamps),
             pa.array(values), version],
            names=list(POINTS_COLUMNS),
        )  # fmt: skip
        # Rollup partials: steps ascend within each series, so a (series, bucket)
        # group is a run of consecutive points.
        first_of_series = np.cumsum(rows) - rows
        bucket = np.floor_divide(steps, ROLLUP_STEPS)
        boundary = np.empty(len(steps), dtype=bool)
        boundary[0] = True
        np.not_equal(bucket[1:], bucket[:-1], out=boundary[1:])
        boundary[first_of_series] = True
        starts = np.flatnonzero(boundary)
        del boundary
        ends = np.append(starts[1:], len(steps)) - 1
        group = np.searchsorted(first_of_series, starts, side="right") - 1
        nan = np.isnan(values)
        partials = pa.RecordBatch.from_arrays(
            [
                *named([i[group] for i in narrow[:3]]),
                pa.array(bucket[starts]),
                pa.array((ends - starts + 1).astype(np.uint64)),
                pa.array(steps[starts]),
                pa.array(steps[ends]),
                pa.array(np.minimum.reduceat(np.where(nan, np.inf, values), starts)),
                pa.array(np.maximum.reduceat(np.where(nan, -np.inf, values), starts)),
                pa.array(values[starts]),
                pa.array(times[starts]),
                pa.array(stamps[starts]),
                pa.array(values[ends]),
                pa.array(times[ends]),
                pa.array(stamps[ends]),
                pa.array(np.add.reduceat(~nan, starts).astype(np.uint64)),
                pa.array(np.add.reduceat(np.where(nan, 0.0, values), starts)),
                pa.array(ver.astype(np.uint64)[group]),
            ],
            names=[name for name, _ in ROLLUP_PARTIALS],
        )
        return pa.Table.from_batches([points]), pa.Table.from_batches([partials])


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _index_type(size: int) -> type[np.signedinteger[Any]]:
    """The smallest signed integer type (Arrow dictionary indices are signed) that
    indexes a dictionary of ``size`` entries."""
    for kind in (np.int8, np.int16, np.int32):
        if size <= np.iinfo(kind).max + 1:
            return kind
    return np.int64


def _last_per_step(*cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keep the last row logged for each step (within one batch all rows share a version)."""
    steps = cols[0]
    reversed_steps = steps[::-1]
    _, first_in_reversed = np.unique(reversed_steps, return_index=True)
    keep = len(steps) - 1 - first_in_reversed  # ascending by step
    return tuple(c[keep] for c in cols)
