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
from typing import Any, cast

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


def pivot(table: pa.Table, keys: list[str], extra: tuple[str, ...] = ()) -> Columns:
    """Long rows ``(step, key, value, *extra)`` → one row per step, a column per key.

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
    keys_column = table.column("key").combine_chunks()
    encoded: pa.DictionaryArray[Any, Any] = (
        keys_column
        if isinstance(keys_column, pa.DictionaryArray)
        else keys_column.dictionary_encode()
    )
    key_index = {k: i for i, k in enumerate(encoded.dictionary.to_pylist())}
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    values_all = table.column("value").to_numpy()

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
