"""Storage shared by ingest and query: the ClickHouse schema and access to it.

:func:`open_store` opens the backend that the storage URL names (see
:mod:`._url` for its forms): chDB embedded in the process, or a ClickHouse
server over HTTP(S), alone or as a cluster.
"""

from stride._extras import require_server_extra

require_server_extra("stride.store", "pyarrow")


from ._async import AsyncStore
from ._base import Params, ParamValue, Store
from ._url import ChdbConfig, ClickHouseConfig, parse_store_url, redact
from .errors import CredentialsRefusedError, StoreError, StoreUnavailableError
from .schema import MAX_VER


def open_store(url: str) -> Store:
    """Open (and create or upgrade the schema of) the store that ``url`` names.

    Raises ``ValueError`` for a malformed URL, :class:`StoreUnavailableError`
    when the server cannot be reached, :class:`CredentialsRefusedError` when it
    refuses the user or password.
    """
    config = parse_store_url(url)
    if isinstance(config, ChdbConfig):
        from .chdb import ChdbStore

        return ChdbStore(config)
    require_server_extra("stride.store", "clickhouse_connect")
    from .clickhouse import ClickHouseStore

    return ClickHouseStore(config)


__all__ = [
    "MAX_VER",
    "AsyncStore",
    "ChdbConfig",
    "ClickHouseConfig",
    "CredentialsRefusedError",
    "ParamValue",
    "Params",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "open_store",
    "parse_store_url",
    "redact",
]
