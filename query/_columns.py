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
from typing import cast

import msgspec
import numpy as np
import orjson
import pyarrow as pa

from stride.api_types import ColumnsPage, NonFinite

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


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


#: How a multi-key read names each row's key: its position in the sorted ``keys``
#: parameter. A number is much cheaper to move and to group than the name.
KEY_INDEX = "toUInt32(indexOf({keys:Array(String)}, key) - 1) AS key_index"


def pivot(table: pa.Table, keys: list[str], extra: tuple[str, ...] = ()) -> Columns:
    """Long rows ``(key_index, step, value, *extra)`` → one row per step, a column per key.

    ``key_index`` is :data:`KEY_INDEX` (a position in ``sorted(keys)``); with one
    key, the rows are that key's in step order and need no ``key_index``.

    ``extra`` columns (``_runtime``, ``_timestamp``) take the value of the step's
    first row in ``table`` (the keys of one step are logged together). Every row
    of ``table`` must be of one of ``keys``.
    """
    if table.num_rows == 0:
        return Columns.empty()
    steps_all = table.column("step").to_numpy()
    if len(keys) == 1:  # one key, already unique and sorted by step: no pivot
        every = np.ones(len(steps_all), bool)
        only = {keys[0]: table.column("value").to_numpy()}
        only |= {name: table.column(name).to_numpy() for name in extra}
        return Columns(steps_all, only, dict.fromkeys(only, every))
    key_index = {k: i for i, k in enumerate(sorted(keys))}
    codes = table.column("key_index").to_numpy()
    values_all = table.column("value").to_numpy()
    dense = _dense(codes, steps_all)
    if dense is not None:
        return _pivot_dense(table, keys, extra, key_index, *dense)

    steps, first = np.unique(steps_all, return_index=True)
    values: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for key in keys:
        col = np.full(len(steps), np.nan)
        has = np.zeros(len(steps), bool)
        code = key_index.get(key)
        if code is not None:
            mask = codes == code
            rows = np.searchsorted(steps, steps_all[mask])
            col[rows] = values_all[mask]
            has[rows] = True
        values[key] = col
        present[key] = has
    every = np.ones(len(steps), bool)  # each step has a row of some key
    for name in extra:
        values[name] = table.column(name).to_numpy()[first]
        present[name] = every
    return Columns(steps, values, present)


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
    table: pa.Table,
    keys: list[str],
    extra: tuple[str, ...],
    key_index: dict[str, int],
    block_codes: np.ndarray,
    grid: np.ndarray,
) -> Columns:
    """:func:`pivot` without searching: each key's block already lines up with the steps."""
    rows = grid.shape[1]
    values_all = table.column("value").to_numpy().reshape(grid.shape)
    block_of = {int(code): b for b, code in enumerate(block_codes)}
    values: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    every = np.ones(rows, bool)
    for key in keys:
        block = block_of.get(key_index.get(key, -1))
        if block is None:
            values[key] = np.full(rows, np.nan)
            present[key] = np.zeros(rows, bool)
        else:
            values[key] = values_all[block]
            present[key] = every
    for name in extra:  # the first row of each step is in the first block
        # Copies, not views: a view would keep the whole long column alive.
        values[name] = table.column(name).to_numpy()[:rows].copy()
        present[name] = every
    return Columns(grid[0].copy(), values, present)
