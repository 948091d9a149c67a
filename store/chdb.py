"""ClickHouse embedded in the process (chDB), for the single-process default.

A chDB data directory can be opened by one process at a time, and one session
serves every caller here: calls are serialised by a lock.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
from chdb import session as chdb_session

from ._base import Params, ParamValue
from ._url import ChdbConfig
from .errors import StoreError
from .schema import SESSION_SETTINGS, backfill_rollup, create_schema

__all__ = ["ChdbStore"]


class ChdbStore:
    concurrency = 1

    def __init__(self, config: ChdbConfig | Path) -> None:
        if isinstance(config, Path):
            config = ChdbConfig(path=config)
        path = config.path
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.address = f"chdb://{path}"
        self._lock = threading.Lock()
        # Engine settings travel in the connection string; chDB reads them at start.
        options = "&".join(f"{name}={value}" for name, value in config.engine.items())
        try:
            self._session = chdb_session.Session(f"{path}?{options}" if options else str(path))
        except Exception as exc:
            raise StoreError(f"cannot open the ClickHouse data directory {path}: {exc}") from exc
        try:
            for name, value in SESSION_SETTINGS.items():
                self.command(f"SET {name} = {value}")
            create_schema(self, config.database)
            self.command(f"USE {config.database}")
            backfill_rollup(self)
        except BaseException:
            self._session.close()  # a process may open only this directory: free it
            raise

    def insert_arrow(self, table: str, columns: tuple[str, ...], data: pa.Table) -> None:
        names = ", ".join(columns)
        # chDB's Python() table function reads the local variable ``data`` by name.
        self._run(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM Python(data)", None, "CSV", data
        )

    def insert_select(
        self, table: str, columns: tuple[str, ...], select: str, data: pa.Table, structure: str
    ) -> None:
        sql = select.replace("{source}", "Python(data)")
        self._run(f"INSERT INTO {table} ({', '.join(columns)}) {sql}", None, "CSV", data)

    def query_arrow(self, sql: str, params: Params | None = None) -> pa.Table:
        result = self._run(sql, params, "ArrowTable", None)
        assert isinstance(result, pa.Table)
        return result

    def command(self, sql: str, params: Params | None = None) -> None:
        self._run(sql, params, "CSV", None)

    def ping(self) -> None:
        self.command("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def _run(self, sql: str, params: Params | None, fmt: str, data: pa.Table | None) -> Any:
        with self._lock:
            try:
                if params:
                    text = {name: _literal(value) for name, value in params.items()}
                    return self._session.query(sql, fmt, params=text)
                return self._session.query(sql, fmt)
            except Exception as exc:
                raise StoreError(f"{exc}".strip() or exc.__class__.__name__) from exc


_ESCAPED = str.maketrans({"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"})


def _literal(value: ParamValue) -> str:
    """A parameter as the text ClickHouse parses for its type (as over HTTP)."""
    if isinstance(value, str):
        # Parameter values are read in ClickHouse's escaped text form.
        return value.translate(_ESCAPED)
    if isinstance(value, int | float):
        return repr(value)
    return "[" + ", ".join(_element(v) for v in value) + "]"


def _element(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.translate(_ESCAPED).replace("'", "\\'") + "'"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    raise TypeError(f"unsupported array parameter element {value!r}")
