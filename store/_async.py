"""Run blocking store calls off the event loop, on the store's own threads."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from ._base import Params, Store


class AsyncStore:
    """A :class:`Store` for coroutines: each call runs on one of
    ``store.concurrency`` threads (one for chDB, which serialises calls)."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._executor = ThreadPoolExecutor(
            max_workers=store.concurrency, thread_name_prefix="stride-store"
        )

    @property
    def address(self) -> str:
        return self.sync.address

    async def insert_arrow(self, table: str, columns: tuple[str, ...], data: pa.Table) -> None:
        await self._call(self.sync.insert_arrow, table, columns, data)

    async def insert_select(
        self, table: str, columns: tuple[str, ...], select: str, data: pa.Table, structure: str
    ) -> None:
        await self._call(self.sync.insert_select, table, columns, select, data, structure)

    async def query_arrow(self, sql: str, params: Params | None = None) -> pa.Table:
        result: pa.Table = await self._call(self.sync.query_arrow, sql, params)
        return result

    async def command(self, sql: str, params: Params | None = None) -> None:
        await self._call(self.sync.command, sql, params)

    async def delete_rows(self, table: str, where: str, params: Params) -> None:
        await self._call(self.sync.delete_rows, table, where, params)

    async def ping(self) -> None:
        await self._call(self.sync.ping)

    async def close(self) -> None:
        await self._call(self.sync.close)
        self._executor.shutdown(wait=True)

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
