"""ClickHouse embedded in the process (chDB), for the single-process default.

A chDB data directory can be opened by one process at a time, and one session
serves every caller here: calls are serialised by a lock.

Memory: embedded ClickHouse runs beside training, so besides bounding its
caches (:data:`~._url.EMBEDDED_DEFAULTS`) the store

* has chDB's allocator (jemalloc) return freed memory to the system after one
  second instead of ClickHouse's five (:data:`ALLOCATOR_CONF`; an insert
  briefly needs a few hundred bytes per point, and keeping that for five
  seconds after every burst showed as resident memory at rest);
* hands back the pages of chDB's library code that only its start-up ran
  (:func:`_release_startup_code`): importing chDB runs the registration code
  of every function, format and engine, which then stays resident though it
  never runs again. With it, 159 MiB of the library was resident in
  ``stride up`` after 10M points, against ~250 MiB without. Right after
  ``pip install`` the library's pages are still dirty in the page cache, and the
  kernel reclaims none of those: the library file is flushed first (once, a
  no-op when it is already on disk): started straight after ``make``, ``stride
  up`` was at 466 MiB at rest after 10M points without it, 375 MiB with it.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa

from ._base import Params, ParamValue
from ._url import ChdbConfig
from .errors import StoreError
from .schema import SESSION_SETTINGS, backfill, create_schema

#: jemalloc options for chDB, read once when its library loads (so set before the
#: import below), unless the environment already sets them. ``dirty_decay_ms:0``
#: was also tried: it returns memory at once but made inserts ~60% costlier.
ALLOCATOR_CONF = "dirty_decay_ms:1000"
os.environ.setdefault("JE_MALLOC_CONF", ALLOCATOR_CONF)

from chdb import session as chdb_session  # noqa: E402 (after the allocator options)

__all__ = ["ChdbStore"]


#: Results come back in this process's memory: compressing them (ClickHouse's
#: Arrow output defaults to lz4) only costs CPU on both sides. Without it, a
#: scan chunk of 262k points reads in ~15-25% less CPU (measured in-process).
_IN_PROCESS_SETTINGS = {"output_format_arrow_compression_method": "'none'"}


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
            for name, value in (SESSION_SETTINGS | _IN_PROCESS_SETTINGS).items():
                self.command(f"SET {name} = {value}")
            create_schema(self, config.database)
            self.command(f"USE {config.database}")
            backfill(self)
        except BaseException:
            self._session.close()  # a process may open only this directory: free it
            raise
        _release_startup_code()

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
        data = self._run(sql, params, "Arrow", None)
        if not data:  # no rows: chDB writes nothing, not even a schema
            return pa.table({})
        return pa.ipc.open_file(pa.py_buffer(data)).read_all()

    def command(self, sql: str, params: Params | None = None) -> None:
        self._run(sql, params, "CSV", None)

    def delete_rows(self, table: str, where: str, params: Params) -> None:
        self.command(f"DELETE FROM {table} WHERE {where}", params)

    def ping(self) -> None:
        self.command("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def _run(self, sql: str, params: Params | None, fmt: str, data: pa.Table | None) -> Any:
        """The result of ``sql``; for ``fmt="Arrow"``, its bytes.

        Arrow results are copied out while the lock is held: the result's memory is
        chDB's, and neither the next query nor the result's release may change it
        under a table read from it (chDB's own "ArrowTable" reads it in place)."""
        with self._lock:
            try:
                if params:
                    text = {name: _literal(value) for name, value in params.items()}
                    result = self._session.query(sql, fmt, params=text)
                else:
                    result = self._session.query(sql, fmt)
                return result.bytes() if fmt == "Arrow" else result
            except Exception as exc:
                raise StoreError(f"{exc}".strip() or exc.__class__.__name__) from exc


#: ``madvise`` advice (Linux 5.4+): reclaim these pages now. Clean file pages
#: are dropped and read again from the file if they are ever run again.
_MADV_PAGEOUT = 21


def _release_startup_code() -> None:
    """Reclaim the resident pages of chDB's library code and read-only data.

    Best effort, Linux only: elsewhere, or on an older kernel, nothing happens.
    Only read-only mappings of the library are advised (its code and constants;
    never data it writes), so the cost of a mistake is a page read again from
    disk, never lost state. Code that keeps running simply comes back.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        maps = Path("/proc/self/maps").read_text().splitlines()
    except (OSError, AttributeError):
        return
    spans: list[tuple[str, str]] = []  # (address range, file) of chDB's read-only mappings
    for line in maps:
        fields = line.split()
        if len(fields) < 6 or "w" in fields[1] or not fields[5].endswith(".so"):
            continue
        if Path(fields[5]).name.startswith("_chdb"):
            spans.append((fields[0], fields[5]))
    for path in {path for _, path in spans}:
        _flush(path)
    for span, _ in spans:
        start, end = (int(edge, 16) for edge in span.split("-"))
        libc.madvise(start, end - start, _MADV_PAGEOUT)


def _flush(path: str) -> None:
    """Write the file's dirty pages to disk (the kernel pages out only clean ones)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fdatasync(fd)
    except OSError:
        pass  # a file system that cannot: the pages stay until the kernel writes them
    finally:
        os.close(fd)


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
