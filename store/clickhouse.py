"""A ClickHouse server over HTTP(S), through clickhouse-connect.

The same SQL as the embedded backend. Inserts go as Arrow blocks (one
request per table per ingest write, never row by row); results come back as
Arrow. clickhouse-connect's synchronous client is thread-safe when it uses
no HTTP session, so :class:`AsyncStore` runs up to :attr:`concurrency` calls
at once on its threads (``benchmarks/bench_backends.py`` compares this with
clickhouse-connect's asyncio client).

In cluster mode (``?cluster=NAME`` in the URL) the tables ingest and query
name are ``Distributed`` tables (see :func:`.schema.ddl`), and inserts wait
until every shard has its rows (``insert_distributed_sync``), so a batch is
acknowledged only once it is stored.
"""

from __future__ import annotations

from typing import Any

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, Error, OperationalError

from ._base import Params, ParamValue
from ._url import ClickHouseConfig
from .errors import CredentialsRefusedError, StoreError, StoreUnavailableError
from .schema import LOCAL_SUFFIX, SESSION_SETTINGS, backfill, create_schema

__all__ = ["ClickHouseStore"]

#: ClickHouse's AUTHENTICATION_FAILED and REQUIRED_PASSWORD error codes.
_AUTH_CODES = {516, 194}


class ClickHouseStore:
    #: Calls run at once (the client's HTTP connection pool holds as many).
    concurrency = 8

    def __init__(self, config: ClickHouseConfig) -> None:
        self.config = config
        self.address = config.address
        settings: dict[str, Any] = dict(SESSION_SETTINGS)
        if config.cluster:
            settings["insert_distributed_sync"] = 1
        self._client: Client = _call(
            config,
            lambda: clickhouse_connect.get_client(
                host=config.host,
                port=config.port,
                interface="https" if config.secure else "http",
                username=config.user,
                password=config.password,
                connect_timeout=config.connect_timeout_s,
                send_receive_timeout=config.send_receive_timeout_s,
                compress=config.compress or False,
                verify=config.verify,
                ca_cert=config.ca_cert,
                autogenerate_session_id=False,
                settings=settings,
                query_retries=0,
            ),
        )
        # Connected without a database (it may not exist yet): the DDL names it.
        create_schema(self, config.database, config.cluster)
        self._client.database = config.database
        if not config.cluster:
            backfill(self)

    def insert_arrow(self, table: str, columns: tuple[str, ...], data: pa.Table) -> None:
        _call(self.config, lambda: self._client.insert_arrow(table, data.select(list(columns))))

    def insert_select(
        self, table: str, columns: tuple[str, ...], select: str, data: pa.Table, structure: str
    ) -> None:
        # The server transforms the rows as they arrive: input() is the request's body.
        sql = select.replace("{source}", f"input('{structure}')")
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, data.schema) as writer:
            writer.write_table(data)
        body = sink.getvalue().to_pybytes()
        statement = f"INSERT INTO {table} ({', '.join(columns)}) {sql} FORMAT Arrow"
        _call(self.config, lambda: self._client.command(statement, data=body))

    def query_arrow(self, sql: str, params: Params | None = None) -> pa.Table:
        bound = _bind(params)
        result = _call(
            self.config, lambda: self._client.query_arrow(sql, parameters=bound, use_strings=True)
        )
        assert isinstance(result, pa.Table)
        return result

    def command(self, sql: str, params: Params | None = None) -> None:
        bound = _bind(params)
        _call(self.config, lambda: self._client.command(sql, parameters=bound))

    def delete_rows(self, table: str, where: str, params: Params) -> None:
        # A Distributed table takes no DELETE: each shard's replicated table does.
        cluster = self.config.cluster
        target = f"{table}{LOCAL_SUFFIX} ON CLUSTER {cluster}" if cluster else table
        self.command(f"DELETE FROM {target} WHERE {where}", params)

    def ping(self) -> None:
        if not self._client.ping():
            raise StoreUnavailableError(f"ClickHouse at {self.address} does not answer")

    def close(self) -> None:
        self._client.close()


def _bind(params: Params | None) -> dict[str, Any] | None:
    if not params:
        return None
    return {name: _value(value) for name, value in params.items()}


def _value(value: ParamValue) -> Any:
    # Sets are not sequences to clickhouse-connect's binder; it formats lists.
    if isinstance(value, str | int | float):
        return value
    return list(value)


def _call(config: ClickHouseConfig, fn: Any) -> Any:
    """Run one client call, turning its errors into the :mod:`.errors` tree."""
    try:
        return fn()
    except OperationalError as exc:
        # Connection refused or reset, timeouts, 503s: the server is not there now.
        raise StoreUnavailableError(
            f"ClickHouse at {config.address} is unavailable: {_short(exc)}"
        ) from exc
    except DatabaseError as exc:
        if exc.code in _AUTH_CODES:
            raise CredentialsRefusedError(
                f"ClickHouse at {config.address} refused user {config.user!r}: "
                "check the user and password in the storage URL"
            ) from exc
        raise StoreError(f"ClickHouse at {config.address}: {_short(exc)}") from exc
    except Error as exc:
        raise StoreError(f"ClickHouse at {config.address}: {_short(exc)}") from exc


def _short(exc: Exception) -> str:
    """The server's message without clickhouse-connect's wrapping and the URL."""
    text = str(exc).split("server response: ", 1)[-1]
    return text.split(" (for url ", 1)[0].strip()
