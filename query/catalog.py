"""Run existence and metric keys, cached so a page costs one storage query.

A run once found is taken to exist for ``exists_ttl`` seconds: a run deleted
through this process is forgotten at once, one deleted through another query
process is answered as an empty run (not a 404) until then. Keys only grow: a
cached key list is used while it is younger than ``ttl`` and contains every
key asked for; otherwise it is fetched again, so a key logged a moment ago is
never refused.
"""

from __future__ import annotations

import time

from stride.store import AsyncStore

from . import runs as runs_q
from ._points import RUN_STREAM

_MAX_ENTRIES = 10_000


class Catalog:
    def __init__(self, store: AsyncStore, ttl: float = 1.0, exists_ttl: float = 30.0) -> None:
        self._store = store
        self._ttl = ttl
        self._exists_ttl = exists_ttl
        self._runs: dict[tuple[str, str, str], float] = {}
        self._keys: dict[tuple[str, str], tuple[float, list[str]]] = {}

    async def run_exists(self, entity: str, project: str, run_id: str) -> bool:
        ident = (entity, project, run_id)
        found_at = self._runs.get(ident)
        if found_at is not None and time.monotonic() - found_at < self._exists_ttl:
            return True
        if not await runs_q.run_exists(self._store, entity, project, run_id):
            return False
        if len(self._runs) >= _MAX_ENTRIES:
            self._runs.clear()
        self._runs[ident] = time.monotonic()
        return True

    def forget(self, path: str) -> None:
        """Drop what is cached of the run ``entity/project/run_id`` (it was deleted)."""
        entity, project, run_id = path.split("/")
        self._runs.pop((entity, project, run_id), None)
        for cached in [k for k in self._keys if k[0] == path]:
            del self._keys[cached]

    async def keys(self, run: str, stream: str, wanted: list[str] | None = None) -> list[str]:
        cached = self._keys.get((run, stream))
        if cached is not None:
            fetched_at, keys = cached
            fresh = time.monotonic() - fetched_at < self._ttl
            if fresh and (wanted is None or set(wanted) <= set(keys)):
                return keys
        rows = await self._store.query_arrow(
            f"SELECT DISTINCT key FROM run_keys WHERE {RUN_STREAM} ORDER BY key",
            {"run": run, "stream": stream},
        )
        keys = [str(k) for k in rows.column("key").to_pylist()]
        if len(self._keys) >= _MAX_ENTRIES:
            self._keys.clear()
        self._keys[(run, stream)] = (time.monotonic(), keys)
        return keys
