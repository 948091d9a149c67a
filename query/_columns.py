"""Rows of metrics as columns, and their JSON form.

The HTTP answer for history and scan is :class:`stride.api_types.ColumnsPage`::

    {"columns": {"_step": [0, 1, 2], "loss": [0.9, null, 0.7]},
     "nonfinite": {"loss": [[5, "nan"]]},
     "next": 2}

``null`` marks a key with no value at that step. JSON has no NaN or
infinity, so real non-finite values are listed in ``nonfinite`` as
``[row, "nan" | "inf" | "-inf"]`` and the client puts them back.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, cast

import msgspec
import numpy as np
import orjson
import pyarrow as pa

from stride.api_types import ColumnsPage, NonFinite

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
#: The time columns every row of history and scan carries, beside ``_step``.
TIME_COLUMNS = ("_runtime", "_timestamp")


@dataclasses.dataclass
class Columns:
    steps: np.ndarray  # int64, ascending
    values: dict[str, np.ndarray]  # float64 per column; NaN where absent unless in nonfinite
    present: dict[str, np.ndarray]  # bool per column: the key has a value at that row

    @classmethod
    def empty(cls) -> Columns:
        return cls(np.empty(0, np.int64), {}, {})

    def __len__(self) -> int:
        return len(self.steps)

    def take_range(self, start: int, stop: int) -> Columns:
        """Rows ``start:stop`` (views, no copy)."""
        return Columns(
            self.steps[start:stop],
            {k: v[start:stop] for k, v in self.values.items()},
            {k: p[start:stop] for k, p in self.present.items()},
        )

    def concat(self, other: Columns) -> Columns:
        """These rows, then ``other``'s (the same columns, later steps)."""
        if not len(self):
            return other
        if not len(other):
            return self
        return Columns(
            np.concatenate((self.steps, other.steps)),
            {k: np.concatenate((v, other.values[k])) for k, v in self.values.items()},
            {k: np.concatenate((p, other.present[k])) for k, p in self.present.items()},
        )

    def take(self, rows: np.ndarray) -> Columns:
        return Columns(
            self.steps[rows],
            {k: v[rows] for k, v in self.values.items()},
            {k: p[rows] for k, p in self.present.items()},
        )

    def to_json(self, next_cursor: int | None = None) -> bytes:
        """The :class:`ColumnsPage` for these rows, as JSON.

        Encoded by orjson straight from the numpy arrays (NaN becomes ``null``),
        several times faster than converting them to lists for msgspec, and
        byte for byte what msgspec writes for the same Struct.
        """
        columns: dict[str, np.ndarray] = {"_step": self.steps}
        nonfinite: dict[str, list[tuple[int, NonFinite]]] = {}
        for key, values in self.values.items():
            columns[key] = values
            bad = np.flatnonzero(~np.isfinite(values) & self.present[key])
            if len(bad):
                nonfinite[key] = [(int(i), _name(values[i])) for i in bad]
        # The arrays stand in for the Struct's lists: orjson writes them as JSON arrays.
        page = ColumnsPage(cast(_Lists, columns), nonfinite, next_cursor)
        return orjson.dumps(msgspec.structs.asdict(page), option=_NUMPY)


_Lists = dict[str, list[float | int | None]]


def _name(value: float) -> NonFinite:
    if np.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def one_key_rows(table: pa.Table, key: str) -> Columns:
    """Rows ``(step, value, _runtime, _timestamp)`` of one key, in step order."""
    values = {key: table.column("value").to_numpy()}
    values |= {name: table.column(name).to_numpy() for name in TIME_COLUMNS}
    every = np.ones(table.num_rows, bool)
    return Columns(table.column("step").to_numpy(), values, dict.fromkeys(values, every))


def _positions(keys: list[str]) -> dict[str, int]:
    """Each key's position in ``sorted(keys)``: the code :func:`key_codes` gives it."""
    return {k: i for i, k in enumerate(sorted(keys))}


def key_codes(column: pa.ChunkedArray[Any], keys: list[str]) -> np.ndarray:
    """Each row's key (a string or dictionary column) as its position in ``sorted(keys)``.

    Reads ask for keys as a dictionary (see :data:`AS_DICTIONARY`): moving a small
    index per row is much cheaper than the name, or than computing a position in SQL.
    """
    position = _positions(keys)
    parts = [np.empty(0, np.int64)]
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):  # a backend that ignored the setting
            chunk = chunk.dictionary_encode()
        assert isinstance(chunk, pa.DictionaryArray)
        # ClickHouse's dictionaries can hold entries no row uses (its default, ""): -1.
        lookup = np.array(
            [position.get(str(k), -1) for k in chunk.dictionary.to_pylist()], np.int64
        )
        parts.append(lookup[chunk.indices.to_numpy()] if len(lookup) else parts[0])
    return np.concatenate(parts)


#: Appended to a read of ``key``: LowCardinality columns come back as Arrow
#: dictionaries (ClickHouse's default writes every row's string).
AS_DICTIONARY = " SETTINGS output_format_arrow_low_cardinality_as_dictionary = 1"


def pivot(table: pa.Table, keys: list[str]) -> Columns:
    """Long rows ``(key, step, value)``, ordered by key then step → one row per
    step, a column per key. Every row of ``table`` must be of one of ``keys``."""
    if table.num_rows == 0:
        return Columns.empty()
    steps_all = table.column("step").to_numpy()
    codes = key_codes(table.column("key"), keys)
    dense = _dense(codes, steps_all)
    if dense is not None:
        return _pivot_dense(table, keys, *dense)

    steps = np.unique(steps_all)
    values_all = table.column("value").to_numpy()
    values: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    position = _positions(keys)
    for key in keys:
        code = position[key]
        col = np.full(len(steps), np.nan)
        has = np.zeros(len(steps), bool)
        mask = codes == code
        rows = np.searchsorted(steps, steps_all[mask])
        col[rows] = values_all[mask]
        has[rows] = True
        values[key] = col
        present[key] = has
    return Columns(steps, values, present)


def add_times(cols: Columns, table: pa.Table, keys: list[str], missing: np.ndarray) -> None:
    """Fill ``_runtime`` and ``_timestamp`` of the rows still ``missing`` (updated in
    place) from ``table``: rows ``(key, step, _runtime, _timestamp)`` ordered by key
    then step. A step takes the times of its first key in that order; steps that
    ``cols`` does not have are ignored. ``keys``: those ``table`` may hold."""
    for name in TIME_COLUMNS:
        if name not in cols.values:
            cols.values[name] = np.full(len(cols), np.nan)
    if table.num_rows == 0:
        return
    steps_all = table.column("step").to_numpy()
    times = {name: table.column(name).to_numpy() for name in TIME_COLUMNS}
    if len(steps_all) == len(cols) and missing.all() and np.array_equal(steps_all, cols.steps):
        for name in TIME_COLUMNS:  # one key at every step: the common case
            cols.values[name] = times[name].copy()
        missing[:] = False
        return
    codes = key_codes(table.column("key"), keys)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(codes)) + 1, [len(codes)]))
    last = len(cols) - 1
    for begin, end in itertools.pairwise(starts.tolist()):
        steps = steps_all[begin:end]
        rows = np.searchsorted(cols.steps, steps).clip(max=last)
        take = (cols.steps[rows] == steps) & missing[rows]
        for name in TIME_COLUMNS:
            cols.values[name][rows[take]] = times[name][begin:end][take]
        missing[rows[take]] = False


def _dense(codes: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For rows in blocks by key that all have the same steps (every key logged at
    every step, the common case): each block's code, and the steps as a 2-D array."""
    starts = np.concatenate(([0], np.flatnonzero(np.diff(codes)) + 1))
    blocks = len(starts)
    if len(steps) % blocks:
        return None
    grid = steps.reshape(blocks, len(steps) // blocks)
    if np.any(starts != np.arange(blocks) * grid.shape[1]) or np.any(grid != grid[0]):
        return None
    if len(np.unique(codes[starts])) != blocks or np.any(np.diff(grid[0]) <= 0):
        return None
    return codes[starts], grid


def _pivot_dense(
    table: pa.Table, keys: list[str], block_codes: np.ndarray, grid: np.ndarray
) -> Columns:
    """:func:`pivot` without searching: each key's block already lines up with the steps."""
    rows = grid.shape[1]
    values_all = table.column("value").to_numpy().reshape(grid.shape)
    block_of = {int(code): b for b, code in enumerate(block_codes)}
    values: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    every = np.ones(rows, bool)
    position = _positions(keys)
    for key in keys:
        block = block_of.get(position[key])
        if block is None:
            values[key] = np.full(rows, np.nan)
            present[key] = np.zeros(rows, bool)
        else:
            values[key] = values_all[block]
            present[key] = every
    return Columns(grid[0].copy(), values, present)
