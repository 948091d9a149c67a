"""The storage interface ingest and query are written against."""

from __future__ import annotations

from typing import Any, Protocol

import pyarrow as pa


class Store(Protocol):
    """Blocking access to ClickHouse. Use :class:`store.AsyncStore` from a loop."""

    def insert_arrow(self, table: str, columns: tuple[str, ...], data: pa.Table) -> None: ...

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table: ...

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None: ...

    def close(self) -> None: ...
