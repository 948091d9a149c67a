"""The query HTTP service (aiohttp). Endpoints are listed in docs/http-api.md.

Every response body is a Struct of :mod:`stride.api_types`, the module the
client decodes with.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from stride._api_columns import NEXT_CURSOR_HEADER
from stride.api_types import (
    Access,
    AlertsPage,
    ArtifactsPage,
    ErrorBody,
    EventsPage,
    FilesPage,
    FileUpdate,
    FoldersPage,
    MetricKeys,
    MetricStats,
    ProjectsPage,
    RunSearch,
    RunsPage,
    RunUpdate,
    Status,
)
from stride.ids import InvalidIdentifier, Kind, check, check_file_name
from stride.store import AsyncStore, open_store
from stride.store.objects import ObjectStore
from stride.wire import MAX_EVENT_SECONDS

from . import runs as runs_q
from ._columns import Columns
from ._settings import QuerySettings
from .alerts import run_alerts
from .artifacts import (
    artifact_file,
    artifact_version,
    artifact_versions,
    list_artifacts,
    run_artifacts,
)
from .auth import GRANT, Tokens, middleware
from .catalog import Catalog
from .edit import delete_run, update_run
from .errors import BadRequest, NotFound, QueryError, Unavailable
from .events import list_events, parse_levels
from .export import ExportFormat, export_run, export_runs
from .files import (
    delete_file,
    file_versions,
    list_files,
    pick_version,
    send_file,
    update_file,
)
from .folders import list_folders
from .history import TIME_AXIS_COLUMNS, history, history_along, history_over_time
from .openapi import openapi_document
from .readahead import ReadAhead
from .scan import scan_page
from .search import count_runs
from .stats import series_stats
from .stream import stream_rows

STORE = web.AppKey("store", AsyncStore)
CATALOG = web.AppKey("catalog", Catalog)
READ_AHEAD = web.AppKey("read_ahead", ReadAhead)
SETTINGS = web.AppKey("settings", QuerySettings)
#: Optional: the object store holding saved files' bytes (without it, their
#: listings work and downloads answer 503).
OBJECTS: web.AppKey[ObjectStore] = web.AppKey("objects")
#: Optional: returns extra status (the ingest counters and lag, in ``stride up``).
StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
STATUS: web.AppKey[StatusProvider] = web.AppKey("status")
#: Optional: returns why the service is not ready to serve yet, or ``None`` when it is
#: (in ``stride up``: NATS connected and the ingest worker reading).
ReadinessProbe = Callable[[], Awaitable[str | None]]
READY: web.AppKey[ReadinessProbe] = web.AppKey("ready")

log = logging.getLogger("stride.query")

_INT64 = (-(2**63), 2**63 - 1)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    settings: QuerySettings | None = None,
    *,
    store: AsyncStore | None = None,
    objects: ObjectStore | None = None,
) -> web.Application:
    """Build the app.

    With ``store``, the caller owns it and closes it (``stride up`` shares one
    with ingest); likewise ``objects``, the object store files are read from.
    Without, the app opens ``settings.store_url`` when it starts
    and closes it when it stops (aiohttp's ``cleanup_ctx``).

    Example::

        app = create_app(QuerySettings(store_url="chdb:///var/lib/stride/clickhouse"))
        web.run_app(app, port=8080)
    """
    settings = settings or QuerySettings()
    app = web.Application(middlewares=[_errors])
    if settings.tokens_file is not None:
        app.middlewares.append(middleware(Tokens(settings.tokens_file)))
    app[READ_AHEAD] = ReadAhead(max_bytes=settings.read_ahead_bytes)
    app.on_shutdown.append(_stop_read_ahead)
    app[SETTINGS] = settings
    if objects is not None:
        app[OBJECTS] = objects
    if store is not None:
        _attach(app, store)
    elif settings.store_url:
        app.cleanup_ctx.append(_own_store)
    else:
        raise ValueError("create_app needs a store: pass store=, or QuerySettings(store_url=...)")
    base = "/api/v1"
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get(f"{base}/status", _status)
    app.router.add_get(f"{base}/openapi.json", _openapi)
    app.router.add_get(f"{base}/projects/{{entity}}", _list_projects)
    app.router.add_get(f"{base}/access/{{entity}}", _access)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}", _list_runs)
    app.router.add_post(f"{base}/runs/{{entity}}/{{project}}", _list_runs)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}", _get_run)
    app.router.add_patch(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}", _update_run)
    app.router.add_delete(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}", _delete_run)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/keys", _keys)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/history", _history)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/scan", _scan)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/stats", _stats)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/export", _export_run)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/stream", _stream_rows)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/events", _events)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/alerts", _alerts)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/files", _list_files)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/file", _file)
    app.router.add_patch(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/file", _update_file)
    app.router.add_delete(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/file", _delete_file)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/file/content", _content)
    app.router.add_get(f"{base}/runs/{{entity}}/{{project}}/{{run_id}}/artifacts", _run_artifacts)
    app.router.add_get(f"{base}/artifacts/{{entity}}/{{project}}", _list_artifacts)
    app.router.add_get(f"{base}/artifacts/{{entity}}/{{project}}/{{name}}", _artifact)
    app.router.add_get(f"{base}/artifacts/{{entity}}/{{project}}/{{name}}/versions", _versions)
    app.router.add_get(f"{base}/artifacts/{{entity}}/{{project}}/{{name}}/file", _artifact_file)
    app.router.add_get(f"{base}/export/runs/{{entity}}/{{project}}", _export_runs)
    app.router.add_get(f"{base}/folders/{{entity}}/{{project}}", _folders)
    return app


_encoder = msgspec.json.Encoder()


def _attach(app: web.Application, store: AsyncStore) -> None:
    app[STORE] = store
    app[CATALOG] = Catalog(store)


async def _stop_read_ahead(app: web.Application) -> None:
    app[READ_AHEAD].close()  # before the store closes: no scan reads ahead any more


async def _own_store(app: web.Application) -> AsyncIterator[None]:
    """The app's own store: opened at start-up, closed at clean-up."""
    url = app[SETTINGS].store_url
    assert url is not None
    store = AsyncStore(await asyncio.to_thread(open_store, url))
    _attach(app, store)
    try:
        yield
    finally:
        await store.close()


def _json(body: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except QueryError as exc:
        answer = _json(ErrorBody(exc.message, exc.status), exc.status)
        if exc.status == 401:
            answer.headers["WWW-Authenticate"] = 'Bearer realm="stride"'
        return answer
    except web.HTTPException as exc:
        return _json(ErrorBody(exc.reason, exc.status), exc.status)
    except Exception:
        log.exception("query: %s %s failed", request.method, request.path_qs)
        return _json(ErrorBody("internal error; the service log has the details", 500), 500)


# ---- parameters ---------------------------------------------------------------------------------


def _int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _ident(kind: Kind, value: str) -> str:
    """``value`` if it is a valid ``kind`` by :mod:`stride.ids`, the rules writers obey."""
    try:
        return check(kind, value)
    except InvalidIdentifier as exc:
        raise BadRequest(str(exc)) from None


def _run_path(request: web.Request) -> tuple[str, str, str]:
    info = request.match_info
    run_id = info.get("run_id", "")
    return (
        _ident("entity", info["entity"]),
        _ident("project", info["project"]),
        run_id and _ident("run id", run_id),
    )


def _stream(request: web.Request) -> str:
    return _ident("stream", request.query.get("stream", "default"))


async def _existing_run(request: web.Request) -> tuple[str, str, str]:
    entity, project, run_id = _run_path(request)
    if not await request.app[CATALOG].run_exists(entity, project, run_id):
        raise NotFound(f"run {entity}/{project}/{run_id} not found")
    return entity, project, run_id


async def _requested_keys(request: web.Request, run: str, stream: str) -> tuple[list[str], bool]:
    """The keys asked for (all of the run's when none), and whether any were asked for."""
    asked = [_ident("key", k) for k in request.query.getall("keys", [])]
    known = await request.app[CATALOG].keys(run, stream, asked or None)
    if not asked:
        return known, False
    unknown = [k for k in asked if k not in set(known)]
    if unknown:
        listed = ", ".join(known[:20]) or "none"
        raise NotFound(
            f"run {run} has no metric {unknown[0]!r} in stream {stream!r} (has: {listed})"
        )
    return list(dict.fromkeys(asked)), True


# ---- handlers -----------------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP."""
    return _json(Status())


async def _readyz(request: web.Request) -> web.Response:
    """Readiness: storage answers a query, and whatever runs beside the service is up."""
    try:
        await request.app[STORE].ping()
    except Exception as exc:
        # The probe answers without a token: the details (addresses, users) go to the log.
        log.warning("not ready: storage does not answer: %s", exc)
        raise Unavailable(
            f"storage does not answer ({type(exc).__name__}); the service log has the details"
        ) from None
    probe = request.app.get(READY)
    reason = await probe() if probe is not None else None
    if reason is not None:
        raise Unavailable(reason)
    return _json(Status())


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=_OPENAPI, content_type="application/json")


_OPENAPI = msgspec.json.encode(openapi_document())


async def _status(request: web.Request) -> web.Response:
    status = request.app.get(STATUS)
    extra = await status() if status is not None else {}
    return _json(msgspec.convert({"ok": True, **extra}, Status))


async def _access(request: web.Request) -> web.Response:
    """What the caller's token allows for the entity (everything, without auth)."""
    entity = _ident("entity", request.match_info["entity"])
    grant = request.get(GRANT)
    auth = request.app[SETTINGS].tokens_file is not None
    return _json(Access(entity, auth, grant.write if grant is not None else True))


async def _list_projects(request: web.Request) -> web.Response:
    entity = _ident("entity", request.match_info["entity"])
    per_page = _int(request, "per_page", 200, 1, request.app[SETTINGS].max_runs_per_page)
    assert per_page is not None
    after = request.query.get("after")
    projects, cursor = await runs_q.list_projects(
        request.app[STORE], entity, per_page=per_page, after=after and _ident("project", after)
    )
    return _json(ProjectsPage(projects, cursor))


async def _list_runs(request: web.Request) -> web.Response:
    """A page of a project's runs; ``filters`` (JSON), ``order``, ``per_page`` and
    ``after`` come from the query string (GET) or a JSON body (POST, for filters
    too long for a URL)."""
    entity, project, _ = _run_path(request)
    settings = request.app[SETTINGS]
    if request.method == "POST":
        try:
            body = msgspec.json.decode(await request.read(), type=RunSearch)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"the body must be a JSON run search: {exc}") from None
        filters, order, per_page, after = body.filters, body.order, body.per_page, body.after
        count = body.count
        if not 1 <= per_page <= settings.max_runs_per_page:
            raise BadRequest(
                f"per_page must be between 1 and {settings.max_runs_per_page}, got {per_page}"
            )
    else:
        filters = _json_param(request, "filters")
        order = request.query.get("order", "-created_at")
        after = request.query.get("after")
        per_page = _int(request, "per_page", 50, 1, settings.max_runs_per_page) or 50
        count = request.query.get("count", "false").lower() in ("1", "true", "yes")
    runs, cursor = await runs_q.list_runs(
        request.app[STORE],
        entity,
        project,
        filters=filters,
        per_page=per_page,
        order=order,
        after=after,
        lost_after_s=settings.lost_after_s,
    )
    total = None
    if count:
        total = await count_runs(
            request.app[STORE], entity, project, filters=filters,
            lost_after_s=settings.lost_after_s,
        )  # fmt: skip
    return _json(RunsPage(runs, cursor, total))


def _json_param(request: web.Request, name: str) -> Any:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"{name} must be JSON: {exc}") from None


async def _get_run(request: web.Request) -> web.Response:
    entity, project, run_id = _run_path(request)
    settings = request.app[SETTINGS]
    doc = await runs_q.get_run(request.app[STORE], entity, project, run_id, settings.lost_after_s)
    return _json(doc)


async def _update_run(request: web.Request) -> web.Response:
    """Change a run's name, notes, tags, config or summary; answer the run as stored."""
    entity, project, run_id = await _existing_run(request)
    try:
        update = msgspec.json.decode(await request.read(), type=RunUpdate)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body must be a JSON run update: {exc}") from None
    store, settings = request.app[STORE], request.app[SETTINGS]
    await update_run(store, entity, project, run_id, update)
    return _json(await runs_q.get_run(store, entity, project, run_id, settings.lost_after_s))


async def _delete_run(request: web.Request) -> web.Response:
    """Delete a run and everything stored of it; with ``delete_artifacts=true`` also the
    artifact versions it logged (those no other run logged)."""
    entity, project, run_id = await _existing_run(request)
    delete_artifacts = _flag(request, "delete_artifacts")
    await delete_run(request.app[STORE], entity, project, run_id, delete_artifacts=delete_artifacts)
    request.app[CATALOG].forget(f"{entity}/{project}/{run_id}")
    return _json(Status())


async def _keys(request: web.Request) -> web.Response:
    """A run's keys in order, ``per_page`` at a time after the key ``after``."""
    entity, project, run_id = await _existing_run(request)
    keys = await request.app[CATALOG].keys(f"{entity}/{project}/{run_id}", _stream(request))
    per_page = _int(request, "per_page", _KEYS_PAGE, 1, _KEYS_PAGE) or _KEYS_PAGE
    start = bisect.bisect_right(keys, request.query["after"]) if "after" in request.query else 0
    page = keys[start : start + per_page]
    more = start + per_page < len(keys)
    return _json(MetricKeys(page, page[-1] if more and page else None))


#: Keys per page of ``/keys`` at most (and by default).
_KEYS_PAGE = 10_000


async def _series_request(request: web.Request) -> tuple[str, str, int | None, int | None]:
    """The run path and stream of a history or scan request, and its step range."""
    entity, project, run_id = await _existing_run(request)
    min_step = _int(request, "min_step", None, *_INT64)
    max_step = _int(request, "max_step", None, *_INT64)
    if min_step is not None and max_step is not None and min_step > max_step:
        raise BadRequest(f"min_step {min_step} is greater than max_step {max_step}")
    return f"{entity}/{project}/{run_id}", _stream(request), min_step, max_step


async def _stats(request: web.Request) -> web.Response:
    entity, project, run_id = await _existing_run(request)
    run, stream = f"{entity}/{project}/{run_id}", _stream(request)
    keys, _ = await _requested_keys(request, run, stream)
    return _json(MetricStats(await series_stats(request.app[STORE], run, stream, keys)))


async def _stream_rows(request: web.Request) -> web.StreamResponse:
    """A whole range of a run's rows in one streamed answer: Arrow IPC or NDJSON."""
    run, stream, min_step, max_step = await _series_request(request)
    fmt = request.query.get("format", "arrow")
    if fmt not in _STREAM_TYPES:
        raise BadRequest(f"format must be one of {', '.join(_STREAM_TYPES)}, got {fmt!r}")
    keys, asked = await _requested_keys(request, run, stream)
    chunks = stream_rows(
        request.app[STORE], run, stream, keys, require_all=asked, min_step=min_step,
        max_step=max_step, ndjson=fmt == "ndjson",
    )  # fmt: skip
    response = web.StreamResponse(headers={"Content-Type": _STREAM_TYPES[fmt]})
    await response.prepare(request)
    async for chunk in chunks:
        if chunk:
            await response.write(chunk)
    await response.write_eof()
    return response


_STREAM_TYPES = {"arrow": "application/vnd.apache.arrow.stream", "ndjson": "application/x-ndjson"}


async def _export_run(request: web.Request) -> web.StreamResponse:
    """A run's metrics of one stream (``keys``: default all) as JSON, CSV or Parquet."""
    entity, project, run_id = await _existing_run(request)
    stream = _stream(request)
    fmt = ExportFormat.parse(request.query.get("format", "csv"), ExportFormat)
    keys, _ = await _requested_keys(request, f"{entity}/{project}/{run_id}", stream)
    chunks = export_run(
        request.app[STORE], entity, project, run_id, keys, stream, fmt,
        request.app[SETTINGS].lost_after_s,
    )  # fmt: skip
    return await _stream_out(request, fmt, f"{run_id}.{fmt.value}", chunks)


async def _export_runs(request: web.Request) -> web.StreamResponse:
    """A project's runs that match ``filters``, one row each, as CSV or Parquet."""
    entity, project, _ = _run_path(request)
    fmt = ExportFormat.parse(
        request.query.get("format", "csv"), (ExportFormat.CSV, ExportFormat.PARQUET)
    )
    chunks = export_runs(
        request.app[STORE], entity, project, _json_param(request, "filters"), fmt,
        request.app[SETTINGS].lost_after_s,
    )  # fmt: skip
    return await _stream_out(request, fmt, f"{project}-runs.{fmt.value}", chunks)


async def _stream_out(
    request: web.Request, fmt: ExportFormat, filename: str, chunks: AsyncIterator[bytes]
) -> web.StreamResponse:
    """Send ``chunks`` as they come. The first is awaited before the answer starts,
    so a bad request (an invalid filter) is still a 400, not a broken stream."""
    first = await anext(chunks, b"")
    response = web.StreamResponse(
        headers={
            "Content-Type": fmt.content_type,
            "Content-Disposition": f'attachment; filename="{filename}"',
        }
    )
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        if chunk:
            await response.write(chunk)
    await response.write_eof()
    return response


def _columns(cols: Columns, next_cursor: int | None = None) -> web.Response:
    return web.Response(body=cols.to_json(next_cursor), content_type="application/json")


async def _history(request: web.Request) -> web.Response:
    run, stream, min_step, max_step = await _series_request(request)
    samples = _int(request, "samples", 500, 2, request.app[SETTINGS].max_samples)
    assert samples is not None
    envelope = request.query.get("envelope", "false").lower() in ("1", "true", "yes")
    x_axis = request.query.get("x_axis", "_step")
    keys, _ = await _requested_keys(request, run, stream)
    if x_axis not in _TIME_AXES:
        x_axis = _ident("key", x_axis)
        if envelope:
            raise BadRequest("envelope needs x_axis _step, _runtime or _timestamp")
        known = await request.app[CATALOG].keys(run, stream, [x_axis])
        if x_axis not in known:
            raise NotFound(f"run {run} has no metric {x_axis!r} (the x_axis) in stream {stream!r}")
        cols = await history_along(
            request.app[STORE], run, stream, x_axis, [x_axis, *keys], samples=samples,
            min_step=min_step, max_step=max_step,
        )  # fmt: skip
        return _columns(cols)
    if not keys:
        return _columns(Columns.empty())
    sample = history if x_axis == "_step" else functools.partial(history_over_time, axis=x_axis)
    cols = await sample(
        request.app[STORE],
        run,
        stream,
        keys,
        samples=samples,
        min_step=min_step,
        max_step=max_step,
        envelope=envelope,
    )
    return _columns(cols)


#: Axes every row has: history samples by step or by time, and the rows carry all three.
_TIME_AXES = ("_step", *TIME_AXIS_COLUMNS)


async def _scan(request: web.Request) -> web.Response:
    cols, next_cursor = await _scan_page(request)
    response = _columns(cols, next_cursor)
    response.headers[NEXT_CURSOR_HEADER] = "" if next_cursor is None else str(next_cursor)
    return response


async def _scan_page(request: web.Request) -> tuple[Columns, int | None]:
    run, stream, min_step, max_step = await _series_request(request)
    page_size = _int(request, "page_size", 1000, 1, request.app[SETTINGS].max_page_size)
    assert page_size is not None
    cursor = _int(request, "cursor", None, *_INT64)
    lo = max(v for v in (cursor, min_step, _INT64[0]) if v is not None)
    keys, asked = await _requested_keys(request, run, stream)
    if not keys or (max_step is not None and lo > max_step):
        return Columns.empty(), None
    store = request.app[STORE]

    async def fetch(lo: int, rows: int) -> tuple[Columns, int | None]:
        return await scan_page(
            store, run, stream, keys, require_all=asked, page_size=rows, lo=lo, max_step=max_step
        )

    scan = (run, stream, tuple(keys), asked, lo, max_step)
    return await request.app[READ_AHEAD].page(scan, page_size, fetch)


# ---- files --------------------------------------------------------------------------------------


async def _events(request: web.Request) -> web.Response:
    """A page of the run's events in time order, filtered by ``level`` (a list),
    ``min_level``, ``since``/``until`` (Unix seconds) and ``q`` (text in the message)."""
    entity, project, run_id = await _existing_run(request)
    events, cursor = await list_events(
        request.app[STORE],
        f"{entity}/{project}/{run_id}",
        levels=parse_levels(request.query.get("level"), request.query.get("min_level")),
        since=_seconds(request, "since"),
        until=_seconds(request, "until"),
        contains=_text(request, "q"),
        after=request.query.get("after"),
        limit=_int(request, "per_page", 1000, 1, 10_000) or 1000,
    )
    return _json(EventsPage(events, cursor))


async def _folders(request: web.Request) -> web.Response:
    """The project's folders (``prefix``: those whose path starts with it), by path."""
    entity, project, _ = _run_path(request)
    prefix = _text(request, "prefix") or ""
    return _json(FoldersPage(await list_folders(request.app[STORE], entity, project, prefix)))


async def _alerts(request: web.Request) -> web.Response:
    """The run's alerts: definition, state, last evaluation, transitions (oldest first)."""
    entity, project, run_id = await _existing_run(request)
    return _json(AlertsPage(await run_alerts(request.app[STORE], f"{entity}/{project}/{run_id}")))


def _seconds(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be Unix seconds, got {raw!r}") from None
    if not -MAX_EVENT_SECONDS < value < MAX_EVENT_SECONDS:  # NaN too
        raise BadRequest(f"{name} must be a finite number of Unix seconds, got {raw!r}")
    return value


async def _list_files(request: web.Request) -> web.Response:
    """A page of the run's files by name (latest versions), filtered by ``prefix``,
    ``category`` and ``tag``; ``after`` is the previous page's ``next``."""
    entity, project, run_id = await _existing_run(request)
    prefix, category, tag, after = (
        _text(request, name) for name in ("prefix", "category", "tag", "after")
    )
    files, cursor = await list_files(
        request.app[STORE],
        f"{entity}/{project}/{run_id}",
        prefix=prefix,
        category=category,
        tag=tag,
        after=after,
        limit=_int(request, "per_page", 100, 1, 1000) or 100,
        deleted=_flag(request, "deleted"),
    )
    return _json(FilesPage(files, cursor))


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false")
    if value not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false, got {value!r}")
    return value == "true"


async def _update_file(request: web.Request) -> web.Response:
    """Change a file version's description, tags or metadata, or restore a deleted
    file (``{"deleted": false}``); answer the version as stored."""
    run, name = await _file_name(request)
    try:
        update = msgspec.json.decode(await request.read(), type=FileUpdate)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body must be a JSON file update: {exc}") from None
    if update.deleted is True:
        raise BadRequest("to delete a file, send DELETE .../file?name=...")
    version = _int(request, "version", None, 0, 2**31)
    await update_file(request.app[STORE], run, name, version, update)
    versions = await file_versions(request.app[STORE], run, name)
    return _json(pick_version(versions, version))


async def _delete_file(request: web.Request) -> web.Response:
    """Soft-delete a file (every version; restorable), or with ``purge=true`` remove it
    for good, with the bytes no other file holds."""
    run, name = await _file_name(request)
    purge = _flag(request, "purge")
    await delete_file(request.app[STORE], request.app.get(OBJECTS), run, name, purge=purge)
    return _json(Status())


def _text(request: web.Request, name: str) -> str | None:
    """A free-text query parameter (a prefix, a tag), without control characters."""
    value = request.query.get(name)
    if value is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise BadRequest(f"{name} must not contain control characters")
    return value


async def _file_name(request: web.Request) -> tuple[str, str]:
    """The run path and the (checked) ``name`` of a file request."""
    entity, project, run_id = await _existing_run(request)
    name = request.query.get("name")
    if not name:
        raise BadRequest("name is required: the file's name, as listed by .../files")
    try:
        check_file_name(name)
    except InvalidIdentifier as exc:
        raise BadRequest(str(exc)) from None
    return f"{entity}/{project}/{run_id}", name


async def _file_doc(request: web.Request) -> Any:
    run, name = await _file_name(request)
    versions = await file_versions(request.app[STORE], run, name)
    return pick_version(versions, _int(request, "version", None, 0, 2**31))


async def _file(request: web.Request) -> web.Response:
    """One version of a file (the latest unless ``version`` is given)."""
    return _json(await _file_doc(request))


async def _content(request: web.Request) -> web.StreamResponse:
    """The bytes of one version of a file, streamed; a ``Range`` header gets a part (206)."""
    doc = await _file_doc(request)
    objects = request.app.get(OBJECTS)
    if objects is None:
        raise Unavailable("this query service has no object store configured (--objects)")
    return await send_file(request, objects, doc)


# ---- artifacts ----------------------------------------------------------------------------------


async def _run_artifacts(request: web.Request) -> web.Response:
    """The artifacts the run logged (``direction=logged``, the default) or used."""
    entity, project, run_id = await _existing_run(request)
    direction = request.query.get("direction", "logged")
    if direction not in ("logged", "used"):
        raise BadRequest(f"direction must be logged or used, got {direction!r}")
    docs = await run_artifacts(
        request.app[STORE], f"{entity}/{project}/{run_id}", used=direction == "used"
    )
    return _json(ArtifactsPage(docs))


async def _list_artifacts(request: web.Request) -> web.Response:
    """A page of the project's artifacts by name, each at its latest version."""
    entity, project, _ = _run_path(request)
    kind = request.query.get("type")
    after = request.query.get("after")
    docs, cursor = await list_artifacts(
        request.app[STORE],
        entity,
        project,
        type=kind and _ident("artifact type", kind),
        after=after and _ident("artifact", after),
        limit=_int(request, "per_page", 50, 1, 200) or 50,
    )
    return _json(ArtifactsPage(docs, cursor))


def _artifact_name(request: web.Request) -> tuple[str, str, str]:
    entity, project, _ = _run_path(request)
    return entity, project, _ident("artifact", request.match_info["name"])


async def _artifact_doc(request: web.Request) -> Any:
    entity, project, name = _artifact_name(request)
    ref = _ident("alias", request.query.get("version", "latest"))
    return await artifact_version(request.app[STORE], entity, project, name, ref)


async def _artifact(request: web.Request) -> web.Response:
    """One version (``version``: ``vN``, ``latest``, the default, or an alias), with
    its files."""
    return _json(await _artifact_doc(request))


async def _versions(request: web.Request) -> web.Response:
    """Every version of an artifact, ``v0`` first."""
    entity, project, name = _artifact_name(request)
    return _json(ArtifactsPage(await artifact_versions(request.app[STORE], entity, project, name)))


async def _artifact_file(request: web.Request) -> web.StreamResponse:
    """The bytes of one file (``path``) of a version, streamed; ranges as for files."""
    path = request.query.get("path")
    if not path:
        raise BadRequest("path is required: the file's path in the artifact")
    doc = artifact_file(await _artifact_doc(request), path)
    objects = request.app.get(OBJECTS)
    if objects is None:
        raise Unavailable("this query service has no object store configured (--objects)")
    return await send_file(request, objects, doc)
