"""Per-metric statistics of a run (count, first, last, min, max, mean), read from
``series_stats``: one aggregate row per series and fetch that ingest writes
(see :mod:`stride.store.schema`), so the cost does not grow with the series."""

from __future__ import annotations

import math

from stride.api_types import SeriesStats
from stride.store import AsyncStore
from stride.store.schema import SERIES_STATS_MERGE

from ._points import RUN_KEYS

__all__ = ["series_stats"]


async def series_stats(
    store: AsyncStore, run: str, stream: str, keys: list[str]
) -> dict[str, SeriesStats]:
    """The stats of ``keys`` of ``run`` in ``stream`` (keys without points are left out)."""
    rows = await store.query_arrow(
        f"SELECT key, {SERIES_STATS_MERGE} FROM series_stats WHERE {RUN_KEYS} "
        "GROUP BY key ORDER BY key",
        {"run": run, "stream": stream, "keys": sorted(keys)},
    )
    stats: dict[str, SeriesStats] = {}
    for row in rows.to_pylist():
        valid = int(row["nv"])
        stats[str(row["key"])] = SeriesStats(
            count=int(row["count"]),
            first=finite(row["first"]),
            last=finite(row["last"]),
            min=finite(row["min"]),
            max=finite(row["max"]),
            mean=finite(row["vsum"] / valid) if valid else None,
            first_step=int(row["first_step"]),
            last_step=int(row["last_step"]),
        )
    return stats


def finite(value: float | None) -> float | None:
    """``value``, or ``None`` if it is missing, NaN or infinite (JSON has none of these)."""
    return value if value is not None and math.isfinite(value) else None
