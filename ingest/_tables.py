"""Turn decoded batches into the Arrow tables that are inserted into ClickHouse.

One builder per table: the handlers in :mod:`.handlers` call the ones they own,
the worker calls :func:`build_ledger`. All of it is pure CPU, run in the prepare
stage while the previous fetch is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow as pa

from stride.store import MAX_VER
from stride.store.schema import ONCE_PREFIX, POINTS_COLUMNS
from stride.wire import Batch


@dataclasses.dataclass
class Points:
    """The ``points`` rows of some batches, and the series they touch."""

    table: pa.Table
    keys: set[tuple[str, str, str]]  # (run, stream, key)
    count: int


def build_points(batches: Sequence[Batch]) -> Points | None:
    """The points of ``batches`` over their decoded buffers, or ``None`` if they hold none."""
    points = _Points()
    keys: set[tuple[str, str, str]] = set()
    for b in batches:
        points.add(b, keys)
    table = points.table()
    return None if table is None else Points(table, keys, points.count)


def build_fields(batches: Sequence[Batch]) -> pa.Table:
    """The ``run_fields`` rows: each set field, each set-once field as ``~name`` with
    the reversed version (first write wins), and ``heartbeat_at`` for every batch."""
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
            field(b, name, value, b.ver)
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


def build_tables(batches: Sequence[Batch]) -> tuple[Points | None, pa.Table, pa.Table]:
    """Every table the default handlers and the ledger build for one fetch: the CPU
    side of ingest, as ``benchmarks/bench_micro.py`` times it."""
    return build_points(batches), build_fields(batches), build_ledger(batches)


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

    def table(self) -> pa.Table | None:
        """All points as one record batch (see the class docstring for why)."""
        if not self.series:
            return None
        run_idx, stream_idx, key_idx, ver, rows = (
            np.array(c) for c in zip(*self.series, strict=True)
        )
        runs, streams, keys = (pa.array(list(d)) for d in (self.runs, self.streams, self.keys))

        def repeated(per_series: np.ndarray, dtype: type) -> np.ndarray:
            return np.repeat(per_series.astype(dtype), rows)

        def joined(parts: list[np.ndarray]) -> np.ndarray:
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        steps, times, stamps, values = (joined(c) for c in self.columns)
        batch = pa.RecordBatch.from_arrays(
            [
                pa.DictionaryArray.from_arrays(repeated(run_idx, np.int32), runs),
                pa.DictionaryArray.from_arrays(repeated(stream_idx, np.int32), streams),
                pa.DictionaryArray.from_arrays(repeated(key_idx, np.int32), keys),
                pa.array(steps),
                pa.array(times),
                pa.array(stamps),
                pa.array(values),
                pa.array(repeated(ver, np.uint64)),
            ],
            names=list(POINTS_COLUMNS),
        )
        return pa.Table.from_batches([batch])


def _last_per_step(*cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keep the last row logged for each step (within one batch all rows share a version)."""
    steps = cols[0]
    reversed_steps = steps[::-1]
    _, first_in_reversed = np.unique(reversed_steps, return_index=True)
    keep = len(steps) - 1 - first_in_reversed  # ascending by step
    return tuple(c[keep] for c in cols)
