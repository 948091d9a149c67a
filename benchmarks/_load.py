"""Load a long metric series straight into chDB, bypassing the SDK and ingest.

Writes exactly what ingest would write for a run with one key: points,
``run_fields`` (``created_at``, ``state``, ``name``) and ``run_keys``. Run this
before ``stride up`` opens the same data directory (chDB allows one process).
"""

from __future__ import annotations

import time
from pathlib import Path

import _server  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
import pyarrow as pa

from stride.store.chdb import ChdbStore
from stride.store.schema import FIELDS_COLUMNS, KEYS_COLUMNS, POINTS_COLUMNS

CHUNK = 1_000_000


def _points_chunk(run: str, key: str, start: int, n: int) -> pa.Table:
    steps = np.arange(start, start + n, dtype=np.int64)
    rng = np.random.default_rng(start)
    values = 1.0 / (1.0 + steps * 1e-4) + rng.normal(0.0, 0.01, n)
    times = steps * 0.01
    return pa.table(
        {
            "run": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([run])),
            "stream": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, np.int32)), pa.array(["default"])
            ),
            "key": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([key])),
            "step": pa.array(steps),
            "time": pa.array(times),
            "timestamp": pa.array(1_767_225_600.0 + times),
            "value": pa.array(values),
            "ver": pa.array(np.ones(n, np.uint64)),
        }
    )


def load_series(
    data_dir: Path,
    runs: dict[str, int],
    key: str = "loss",
    optimize: bool = False,
    extra_keys: int = 0,
) -> dict[str, float]:
    """Insert ``n`` points of ``key`` (and of ``extra_keys`` more keys, ``key_1``...)
    for each ``run path -> n``; return timings and parts."""
    keys = [key, *(f"{key}_{i}" for i in range(1, extra_keys + 1))]
    t0 = time.perf_counter()
    store = ChdbStore(data_dir / "clickhouse")
    try:
        for path, n in runs.items():
            entity, project, run_id = path.split("/")
            for name in keys:
                for start in range(0, n, CHUNK):
                    table = _points_chunk(path, name, start, min(CHUNK, n - start))
                    store.insert_arrow("points", POINTS_COLUMNS, table)
            fields = pa.table(
                {
                    "entity": [entity] * 3,
                    "project": [project] * 3,
                    "run_id": [run_id] * 3,
                    "field": ["~created_at", "state", "name"],
                    "value": ['"2026-01-01T00:00:00+00:00"', '"finished"', f'"{run_id}"'],
                    "ver": pa.array([1, 1, 1], pa.uint64()),
                }
            )
            store.insert_arrow("run_fields", FIELDS_COLUMNS, fields)
            names = pa.table(
                {"run": [path] * len(keys), "stream": ["default"] * len(keys), "key": keys}
            )
            store.insert_arrow("run_keys", KEYS_COLUMNS, names)
        load_s = time.perf_counter() - t0
        if optimize:
            store.command("OPTIMIZE TABLE points FINAL")
        parts = store.query_arrow(
            "SELECT count() AS n FROM system.parts "
            "WHERE database = currentDatabase() AND table = 'points' AND active"
        )
        total = store.query_arrow("SELECT count() AS n FROM points")
    finally:
        store.close()
    return {
        "load_s": load_s,
        "total_s": time.perf_counter() - t0,
        "active_parts": float(parts.column("n")[0].as_py()),
        "rows": float(total.column("n")[0].as_py()),
    }
