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

from .errors import StoreError
from .schema import prepare


class ChdbStore:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._session = chdb_session.Session(str(path))
        except Exception as exc:
            raise StoreError(f"cannot open the ClickHouse data directory {path}: {exc}") from exc
        prepare(self)

    def insert_arrow(self, table: str, columns: tuple[str, ...], data: pa.Table) -> None:
        names = ", ".join(columns)
        # chDB's Python() table function reads the local variable ``data`` by name.
        self._run(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM Python(data)", None, "CSV", data
        )

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        result = self._run(sql, params, "ArrowTable", None)
        assert isinstance(result, pa.Table)
        return result

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._run(sql, params, "CSV", None)

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def _run(self, sql: str, params: dict[str, Any] | None, fmt: str, data: pa.Table | None) -> Any:
        with self._lock:
            try:
                if params:
                    return self._session.query(sql, fmt, params=params)
                return self._session.query(sql, fmt)
            except Exception as exc:
                raise StoreError(f"{exc}".strip() or exc.__class__.__name__) from exc
