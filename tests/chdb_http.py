"""Tests only: chDB served through ClickHouse's HTTP interface.

No ClickHouse server newer than 18.16 can be installed on the machines that
run these tests, so this serves the real ClickHouse engine (chDB) behind the
HTTP protocol that clickhouse-connect speaks, enough for its HTTP client to
work unchanged for everything Stride does with it:

* ``/ping``; queries in the body or the ``query`` parameter, POST or GET;
  ``database``; ``param_<name>`` bound parameters; every other parameter
  that names a ClickHouse setting is applied to that request only;
* results in whatever format the query asks for (Arrow, Native, JSON,
  TabSeparated...), compressed when the client sends
  ``enable_http_compression=1`` and an ``Accept-Encoding`` it lists;
* inserts of any input format (``INSERT ... FORMAT Arrow`` or ``Native``
  followed by the data, in the body or after a ``query`` parameter), with
  the body compressed as its ``Content-Encoding`` says, and
  ``INSERT ... SELECT ... FROM input('structure') FORMAT Arrow``;
* users by HTTP basic auth, ``X-ClickHouse-User``/``-Key`` headers or
  ``user``/``password`` parameters: a wrong password gets ClickHouse's
  error 516 (AUTHENTICATION_FAILED);
* errors as ClickHouse sends them: the engine's own ``Code: N. DB::Exception:``
  text, an ``X-ClickHouse-Exception-Code`` header, and its HTTP status.

What it is not: a cluster, sessions, progress headers, query cancellation,
quotas, or concurrent queries (one engine session serves them one by one).

Run it: ``python tests/chdb_http.py DATA_DIR [--port N] [--password P]``;
it prints ``listening on PORT`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import os
import re
import sys
import tempfile
import threading
import uuid
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
from aiohttp import web
from chdb import session as chdb_session

#: Parameters that are part of the HTTP protocol, not settings.
_PROTOCOL = {
    "query",
    "database",
    "default_format",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "client_protocol_version",
    "compress",
    "decompress",
    "user",
    "password",
    "quota_key",
    "buffer_size",
    "wait_end_of_query",
}
_INSERT = re.compile(
    rb"\s*(INSERT\s+INTO\s+(?P<table>[^\s(]+)\s*(?P<cols>\([^)]*\))?[^\n]*?)"
    rb"\s+FORMAT\s+(?P<fmt>\w+)[ \t]*\r?\n?",
    re.IGNORECASE | re.DOTALL,
)
_CODE = re.compile(r"Code: (\d+)\.")
_INPUT = re.compile(r"input\('[^']*'\)")
_STATUS = {62: 400, 60: 404, 81: 404, 516: 401, 194: 401, 47: 400, 36: 400, 53: 400, 27: 400}
_CONTENT_TYPES = {
    "JSON": "application/json; charset=UTF-8",
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8",
}


class ChdbHttp:
    """The engine and what each request may change in it."""

    def __init__(self, data_dir: Path, user: str, password: str) -> None:
        self._session = chdb_session.Session(str(data_dir))
        self._lock = threading.Lock()
        self._user, self._password = user, password
        self._spill = Path(tempfile.mkdtemp(prefix="insert-", dir=data_dir))
        self.version = self._run("SELECT version()", "TabSeparated").bytes().decode().strip()
        names = self._run("SELECT name FROM system.settings", "TabSeparated").bytes()
        self._settings = set(names.decode().split())

    def authorized(self, request: web.Request) -> bool:
        user, password = self._user, ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        elif "X-ClickHouse-User" in request.headers:
            user = request.headers["X-ClickHouse-User"]
            password = request.headers.get("X-ClickHouse-Key", "")
        elif "user" in request.query:
            user, password = request.query["user"], request.query.get("password", "")
        return user == self._user and password == self._password

    def execute(self, params: Mapping[str, str], body: bytes) -> tuple[bytes, str, dict[str, Any]]:
        """Run one request; return the result bytes, its format and its summary."""
        query = params.get("query", "").encode()
        if query and body:
            # ClickHouse appends the body to the query: text, or an INSERT's data.
            query = query + (b"\n" if _INSERT.match(query) else b" ") + body
        elif body:
            query = body
        settings = {
            name: value
            for name, value in params.items()
            if name in self._settings and name not in _PROTOCOL
        }
        bound = {k.removeprefix("param_"): v for k, v in params.items() if k.startswith("param_")}
        fmt = params.get("default_format", "TabSeparated")
        with self._lock:
            self._run(f"USE {_identifier(params.get('database', 'default'))}", "TabSeparated")
            for name, value in settings.items():
                self._run(f"SET {name} = {_quote(value)}", "TabSeparated")
            try:
                insert = _INSERT.match(query)
                if insert is not None:
                    self._insert(insert, query[insert.end() :], bound)
                    return b"", fmt, {"written_rows": "0"}
                text = query.decode()
                found = re.search(r"\bFORMAT\s+(\w+)\s*;?\s*$", text, re.IGNORECASE)
                if found:
                    fmt = found.group(1)
                result = self._run(text, fmt, bound)
                summary = {
                    "read_rows": str(result.rows_read()),
                    "read_bytes": str(result.bytes_read()),
                }
                return result.bytes(), fmt, summary
            finally:
                for name in settings:
                    self._run(f"SET {name} = DEFAULT", "TabSeparated")

    def _insert(self, match: re.Match[bytes], data: bytes, bound: dict[str, str]) -> None:
        table = match.group("table").decode()
        cols = (match.group("cols") or b"").decode()
        fmt = match.group("fmt").decode()
        statement = match.group(1).decode()
        if fmt in ("Arrow", "ArrowStream"):
            reader = pa.ipc.open_file if fmt == "Arrow" else pa.ipc.open_stream
            rows = reader(pa.py_buffer(data)).read_all()  # noqa: F841 (chDB reads it by name)
            # Called here: chDB's Python() finds ``rows`` in the calling frame.
            if _INPUT.search(statement):  # INSERT ... SELECT ... FROM input('...')
                self._session.query(_INPUT.sub("Python(rows)", statement), "TSV")
            else:
                sql = f"INSERT INTO {table} {cols} SELECT * FROM Python(rows)"
                self._session.query(sql, "TSV")
            return
        if _INPUT.search(statement):
            raise ValueError(
                "Code: 48. DB::Exception: this test helper reads input() from Arrow only. "
                "(NOT_IMPLEMENTED)"
            )
        path = self._spill / f"{uuid.uuid4().hex}.{fmt}"
        path.write_bytes(data)
        try:
            self._run(
                f"INSERT INTO {table} {cols} SELECT * FROM file('{path}', '{fmt}')", "TSV", bound
            )
        finally:
            path.unlink()

    def _run(self, sql: str, fmt: str, params: dict[str, str] | None = None) -> Any:
        if params:
            return self._session.query(sql, fmt, params=params)
        return self._session.query(sql, fmt)


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(
            f"Code: 81. DB::Exception: Database {name} does not exist. (UNKNOWN_DATABASE)"
        )
    return name


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "zstd":
        from backports import zstd

        return bytes(zstd.decompress(body))
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    raise ValueError(
        f"Code: 36. DB::Exception: Unknown Content-Encoding {encoding}. (BAD_ARGUMENTS)"
    )


def _compress(body: bytes, accepted: str) -> tuple[bytes, str | None]:
    for encoding in (e.strip() for e in accepted.split(",")):
        if encoding == "gzip":
            return gzip.compress(body, 1), encoding
        if encoding == "deflate":
            return zlib.compress(body, 1), encoding
        if encoding == "zstd":
            from backports import zstd

            return bytes(zstd.compress(body)), encoding
        if encoding == "lz4":
            import lz4.frame

            return bytes(lz4.frame.compress(body)), encoding
    return body, None


def _error(engine: ChdbHttp, message: str) -> web.Response:
    found = _CODE.search(message)
    code = int(found.group(1)) if found else 1002
    text = message.strip()
    if not text.startswith("Code:"):
        text = f"Code: {code}. DB::Exception: {text}."
    return web.Response(
        status=_STATUS.get(code, 500),
        body=f"{text} (version {engine.version})\n".encode(),
        headers={"X-ClickHouse-Exception-Code": str(code)},
        content_type="text/plain",
    )


def make_app(engine: ChdbHttp) -> web.Application:
    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    async def handle(request: web.Request) -> web.Response:
        if request.method == "GET" and not request.query.get("query"):
            return web.Response(text="Ok.\n")
        if not engine.authorized(request):
            return _error(
                engine,
                "Code: 516. DB::Exception: Authentication failed: password is incorrect, "
                "or there is no user with such name. (AUTHENTICATION_FAILED)",
            )
        try:
            body = _decompress(await request.read(), request.headers.get("Content-Encoding", ""))
            data, fmt, summary = await asyncio.to_thread(engine.execute, request.query, body)
        except Exception as exc:
            return _error(engine, str(exc))
        headers = {
            "X-ClickHouse-Query-Id": request.query.get("query_id") or str(uuid.uuid4()),
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Server-Display-Name": "chdb-http",
            "X-ClickHouse-Summary": json.dumps(summary),
        }
        if request.query.get("enable_http_compression") == "1":
            data, encoding = _compress(data, request.headers.get("Accept-Encoding", ""))
            if encoding:
                headers["Content-Encoding"] = encoding
        headers["Content-Type"] = _CONTENT_TYPES.get(fmt, "application/octet-stream")
        return web.Response(body=data, headers=headers)

    app = web.Application(client_max_size=1 << 31)
    app.router.add_get("/ping", ping)
    app.router.add_route("*", "/", handle)
    return app


async def _serve(args: argparse.Namespace) -> None:
    engine = ChdbHttp(args.data_dir, args.user, args.password)
    runner = web.AppRunner(make_app(engine), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on {port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="default")
    parser.add_argument("--password", default="")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(args.data_dir)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
