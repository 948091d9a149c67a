"""``create_app(settings)``: the query app owns its store through aiohttp's cleanup_ctx."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pyarrow as pa
import pytest
from aiohttp import web

from stride.query import QuerySettings, create_app
from stride.query.app import STORE
from stride.store import open_store
from stride.store.schema import FIELDS_COLUMNS


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_the_app_opens_its_store_at_start_and_closes_it_at_stop(tmp_path: Path) -> None:
    # A run stored beforehand, through the same store URL the app will open.
    store = open_store(f"chdb://{tmp_path / 'clickhouse'}")
    fields = pa.table(
        {"entity": ["e"], "project": ["p"], "run_id": ["r"], "field": ["name"],
         "value": ['"kept"'], "ver": pa.array([1], pa.uint64())}
    )  # fmt: skip
    store.insert_arrow("run_fields", FIELDS_COLUMNS, fields)
    store.close()

    app = create_app(QuerySettings(store_url=f"chdb://{tmp_path / 'clickhouse'}"))
    runner, url = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/readyz") as ready:
                assert ready.status == 200
            async with http.get(f"{url}/api/v1/runs/e/p/r") as run:
                assert (await run.json())["name"] == "kept"
    finally:
        await runner.cleanup()
    # Closed by the app at clean-up: its store takes no more queries ...
    with pytest.raises(RuntimeError, match="shutdown"):
        await app[STORE].query_arrow("SELECT 1")
    # ... and the data is there for the next process.
    again = open_store(f"chdb://{tmp_path / 'clickhouse'}")
    names = again.query_arrow("SELECT count() AS n FROM run_fields")
    assert names.column("n")[0].as_py() == 1
    again.close()


def test_an_app_without_a_store_says_what_it_needs() -> None:
    with pytest.raises(ValueError, match="store_url"):
        create_app(QuerySettings())
