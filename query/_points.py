"""A run's points read back as rows: one per step, a column per key, and the
step's ``_runtime`` and ``_timestamp``.

Two reads instead of one: the values of every key, then the times of one key.
A step's keys are logged together, so reading every key's two time columns
(half the bytes of a wide read) would only be thrown away; the times of a step
come from its first key in sorted order, and only steps that key lacks are
looked up in the others.
"""

from __future__ import annotations

import numpy as np

from stride.store import AsyncStore, ParamValue

from ._columns import AS_DICTIONARY, TIME_COLUMNS, Columns, add_times, pivot

__all__ = ["ONE_THREAD", "RUN_KEYS", "RUN_STREAM", "read_rows"]

#: The points of one run's stream, in SQL with parameters ``run`` and ``stream``.
RUN_STREAM = "run = {run:String} AND stream = {stream:String}"
#: The same, of the keys in the parameter ``keys`` (an array).
RUN_KEYS = f"{RUN_STREAM} AND key IN {{keys:Array(String)}}"


#: The setting for reads of a bounded range of points (a read-ahead chunk of a
#: scan, a page of the stream, history's points): one thread reads them faster
#: than two, and leaves the other core to the service and its client (26k rows
#: of 10 keys: 18 -> 12 ms, in a quarter less CPU; one key's 10k rows: 7 -> 4
#: ms). ClickHouse's FINAL splits the ranges among threads and merges them.
ONE_THREAD = "max_threads = 1"


async def read_rows(
    store: AsyncStore,
    where: str,
    params: dict[str, ParamValue],
    keys: list[str],
    *,
    one_read: bool = False,
) -> Columns:
    """The rows of ``keys`` (also in ``params["keys"]``) among the points where
    ``where`` holds: a run's stream and a range of steps, in SQL with parameters.

    ``one_read``: read values and times together, in one query; cheaper for a
    few points, where a query's fixed cost outweighs the bytes (one key always is).
    """
    times_sql = "time AS _runtime, timestamp AS _timestamp"
    missing: np.ndarray
    if one_read or len(keys) == 1:
        table = await store.query_arrow(_read(where, "keys", f"value, {times_sql}"), params)
        cols = pivot(table, keys)
        missing = np.ones(len(cols), bool)
        add_times(cols, table, keys, missing)
    else:
        cols = pivot(await store.query_arrow(_read(where, "keys", "value"), params), keys)
        missing = np.ones(len(cols), bool)
        names = sorted(keys)
        for time_keys in (names[:1], names[1:]):
            if not missing.any():
                break
            sql = _read(where, "time_keys", times_sql)
            times = await store.query_arrow(sql, {**params, "time_keys": time_keys})
            add_times(cols, times, time_keys, missing)
    if len(cols):
        for name in TIME_COLUMNS:  # a step none of whose points was read again: no times
            cols.present[name] = ~missing
    return cols


def _read(where: str, keys: str, columns: str) -> str:
    return (
        f"SELECT key, step, {columns} FROM points FINAL WHERE {where} "
        f"AND key IN {{{keys}:Array(String)}} ORDER BY key, step{AS_DICTIONARY}, {ONE_THREAD}"
    )
