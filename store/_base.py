"""The storage interface ingest and query are written against.

Both backends run the same SQL. Tables are named without a database (the
backend's connection is in the configured one); parameters use ClickHouse's
``{name:Type}`` syntax, with values given as plain Python values (``str``,
``int``, ``float``, or a list or set of them for an ``Array(...)``): each
backend sends them its own way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

import pyarrow as pa

#: A query parameter's value.
ParamValue = str | int | float | Collection[str] | Collection[int]
Params = Mapping[str, ParamValue]


class Store(Protocol):
    """Blocking access to ClickHouse. Use :class:`store.AsyncStore` from a loop."""

    #: What the store is, without credentials (for messages and logs).
    address: str
    #: How many calls may usefully run at once (chDB serialises them: 1).
    concurrency: int

    def insert_arrow(self, table: str, columns: tuple[str, ...], data: pa.Table) -> None: ...

    def insert_select(
        self, table: str, columns: tuple[str, ...], select: str, data: pa.Table, structure: str
    ) -> None:
        """Insert into ``columns`` of ``table`` what ``select`` computes over ``data``.

        ``select`` names the data ``{source}``; ``structure`` gives its columns'
        ClickHouse types (``"run String, n UInt64"``), for backends that send it.
        """
        ...

    def query_arrow(self, sql: str, params: Params | None = None) -> pa.Table: ...

    def command(self, sql: str, params: Params | None = None) -> None: ...

    def delete_rows(self, table: str, where: str, params: Params) -> None:
        """Delete the rows of ``table`` that ``where`` selects, before returning
        (a lightweight delete: later reads no longer see them; merges drop them)."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailableError` unless the store answers now."""
        ...

    def close(self) -> None: ...
