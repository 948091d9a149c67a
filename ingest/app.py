"""The ingest service's HTTP face: health, readiness and lag.

``stride ingest`` runs workers, not queries; orchestrators still need to ask
it whether it lives, whether it is ready, and how far behind it is. The
answers use the same :class:`stride.api_types.Status` as the query service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import msgspec
from aiohttp import web

from stride.api_types import ErrorBody, FileCounters, IngestCounters, IngestLag, Status

from .files import FileWorker
from .worker import IngestWorker

__all__ = ["create_ingest_app"]

#: Returns why the service is not ready, or ``None`` when it is.
ReadinessProbe = Callable[[], Awaitable[str | None]]

_WORKERS: web.AppKey[Sequence[IngestWorker]] = web.AppKey("workers")
_READY: web.AppKey[ReadinessProbe] = web.AppKey("ready")
_FILES: web.AppKey[FileWorker] = web.AppKey("files")
_encoder = msgspec.json.Encoder()


def create_ingest_app(
    workers: Sequence[IngestWorker], ready: ReadinessProbe, files: FileWorker | None = None
) -> web.Application:
    """``/healthz`` (the process answers), ``/readyz`` (``ready()`` says so: 503
    with the reason otherwise) and ``/api/v1/status`` (counters summed over
    ``workers``, the consumer's lag, ``null`` while NATS cannot say, and the
    file worker's counters if it has one)."""
    app = web.Application()
    app[_WORKERS] = workers
    if files is not None:
        app[_FILES] = files
    app[_READY] = ready
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/api/v1/status", _status)
    return app


def _json(body: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


async def _healthz(request: web.Request) -> web.Response:
    return _json(Status())


async def _readyz(request: web.Request) -> web.Response:
    reason = await request.app[_READY]()
    if reason is not None:
        return _json(ErrorBody(reason, 503), 503)
    return _json(Status())


async def _status(request: web.Request) -> web.Response:
    workers = request.app[_WORKERS]
    totals: dict[str, int] = {}
    for worker in workers:
        for name, value in worker.stats.as_dict().items():
            totals[name] = totals.get(name, 0) + value
    lag = await workers[0].lag() if workers else None
    files = request.app.get(_FILES)
    return _json(
        Status(
            ingest=msgspec.convert(totals, IngestCounters),
            lag=None if lag is None else msgspec.convert(lag, IngestLag),
            files=None if files is None else msgspec.convert(files.stats.as_dict(), FileCounters),
        )
    )
