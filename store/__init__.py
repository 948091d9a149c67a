"""Storage shared by ingest and query: the ClickHouse schema and access to it."""

from stride._extras import require_server_extra

require_server_extra("stride.store", "pyarrow")


from ._async import AsyncStore
from ._base import Store
from .errors import StoreError
from .schema import DATABASE, MAX_VER


def open_store(url: str) -> Store:
    """Open a store from a URL: ``chdb:///path/to/dir`` (embedded ClickHouse)."""
    if url.startswith("chdb://"):
        from pathlib import Path

        from .chdb import ChdbStore

        return ChdbStore(Path(url.removeprefix("chdb://")))
    raise ValueError(f"unsupported store URL {url!r}: expected chdb:///path")


__all__ = ["DATABASE", "MAX_VER", "AsyncStore", "Store", "StoreError", "open_store"]
