"""``stride ingest`` and ``stride query``: the services, run any number of each.

Each runs against the configured NATS, storage and object store, serves
``/healthz``, ``/readyz`` and ``/api/v1/status`` over HTTP, logs as text or
JSON, and on SIGTERM (or Ctrl-C) drains within ``drain_timeout_s``:

* ingest stops fetching and finishes, writes and acknowledges the batches in
  hand; what is still unacknowledged at the bound is redelivered to another
  worker, so stopping loses nothing;
* query stops accepting connections and lets requests in flight finish.

``stride up`` (:mod:`.up`) is the one-process embedded default instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from nats.aio.client import Client as NatsClient

from stride.ingest import IngestSettings, IngestWorker
from stride.ingest.app import create_ingest_app
from stride.ingest.artifacts import ArtifactWorker
from stride.ingest.files import FileWorker
from stride.ingest.last_step import answer_last_steps
from stride.ingest.notify import Notifier, NotifySettings
from stride.ingest.streams import ensure_streams
from stride.query import QuerySettings, create_app
from stride.store import AsyncStore, redact
from stride.store.objects import ObjectStore, open_objects

from ._service import (
    connect_nats,
    finish,
    load_lazy_imports,
    open_async_store,
    retry_until,
    serve_http,
    wait_for_stop,
)
from .errors import CliError

log = logging.getLogger("stride.service")

__all__ = ["IngestServiceSettings", "QueryServiceSettings", "serve_ingest", "serve_query"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class IngestServiceSettings:
    nats_url: str
    store_url: str
    #: The object store (``file:///dir`` or ``s3://...``), opened and checked at start.
    objects_url: str | None = None
    #: Workers in this process, all members of the one durable consumer.
    workers: int = 1
    host: str = "0.0.0.0"
    http_port: int = 8081
    #: How long to keep retrying NATS and storage at start-up.
    connect_timeout_s: float = 60.0
    ingest: IngestSettings = dataclasses.field(default_factory=IngestSettings)
    #: How alert notifications are sent (the SMTP server for emails).
    notify: NotifySettings = dataclasses.field(default_factory=NotifySettings)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QueryServiceSettings:
    store_url: str
    objects_url: str | None = None
    host: str = "0.0.0.0"
    http_port: int = 8080
    connect_timeout_s: float = 60.0
    #: On SIGTERM, requests in flight get this long to finish.
    drain_timeout_s: float = 30.0
    query: QuerySettings = dataclasses.field(default_factory=QuerySettings)


async def _open_objects(url: str | None, timeout_s: float) -> ObjectStore | None:
    """Open the object store (creating the bucket), retrying while it comes up: a
    wrong URL fails at start."""
    if url is None:
        return None
    opened: list[ObjectStore] = []

    async def attempt() -> None:
        opened.append(await asyncio.to_thread(open_objects, url))

    await retry_until(f"the object store at {redact(url)}", attempt, timeout_s)
    return opened[-1]


async def serve_ingest(settings: IngestServiceSettings) -> None:
    """Run ``settings.workers`` ingest workers until SIGINT or SIGTERM."""
    if settings.workers < 1:
        raise CliError("--workers must be at least 1")
    load_lazy_imports()
    async with contextlib.AsyncExitStack() as stack:
        objects, store = await _open_storage(stack, settings)
        nc = await connect_nats(settings.nats_url, "stride-ingest", settings.connect_timeout_s)
        try:
            await _run_ingest(settings, store, nc, objects)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5.0)


async def _open_storage(
    stack: contextlib.AsyncExitStack, settings: IngestServiceSettings | QueryServiceSettings
) -> tuple[ObjectStore | None, AsyncStore]:
    """The object store (if configured) and ClickHouse, each retried while it comes up,
    closed by ``stack``."""
    objects = await _open_objects(settings.objects_url, settings.connect_timeout_s)
    if objects is not None:
        stack.callback(objects.close)
    store = await open_async_store(settings.store_url, settings.connect_timeout_s)
    stack.push_async_callback(store.close)
    return objects, store


async def _run_ingest(
    settings: IngestServiceSettings,
    store: AsyncStore,
    nc: NatsClient,
    objects: ObjectStore | None,
) -> None:
    s = settings.ingest

    async def streams() -> None:
        # A cluster still electing its JetStream leader answers with errors: wait.
        await ensure_streams(
            nc.jetstream(), replicas=s.replicas, duplicate_window_s=s.duplicate_window_s
        )

    await retry_until("JetStream (creating the streams)", streams, settings.connect_timeout_s)
    workers = [IngestWorker(nc, store, s) for _ in range(settings.workers)]
    # One file worker per process: copies are I/O-bound, and any number of
    # processes share the consumer.
    files = FileWorker(nc, store, objects, s) if objects is not None else None
    artifacts = ArtifactWorker(nc, store, objects, s) if objects is not None else None
    notifier = Notifier(nc, settings.notify)  # one per process; all share the consumer
    if files is None:
        log.warning(
            "ingest: no --objects: saved files wait in NATS until an ingest with an "
            "object store runs"
        )

    async def ready() -> str | None:
        if not nc.is_connected:
            return f"not connected to NATS at {redact(settings.nats_url)}"
        record_workers = [w for w in (files, artifacts, notifier) if w is not None]
        if not all(w.subscribed for w in [*workers, *record_workers]):
            return "the ingest workers have not subscribed yet"
        try:
            await store.ping()
        except Exception as exc:  # the probe needs no token: details to the log only
            log.warning("not ready: storage does not answer: %s", exc)
            return f"storage does not answer ({type(exc).__name__}); the log has the details"
        return None

    runner, port = await serve_http(
        create_ingest_app(workers, ready, files), settings.host, settings.http_port, 5.0
    )
    last_steps = await answer_last_steps(nc, store)
    tasks = [asyncio.create_task(w.run(), name=f"ingest-{i}") for i, w in enumerate(workers)]
    tasks.append(asyncio.create_task(notifier.run(), name="notifier"))
    if files is not None and artifacts is not None:
        tasks.append(asyncio.create_task(files.run(), name="files"))
        tasks.append(asyncio.create_task(artifacts.run(), name="artifacts"))
    log.info(
        "ingest: %d worker(s), NATS %s, storage %s, HTTP %s:%d",
        len(workers),
        redact(settings.nats_url),
        store.address,
        settings.host,
        port,
    )
    print(f"stride: ingest HTTP http://{settings.host}:{port}", flush=True)
    try:
        failure = await wait_for_stop(*tasks)
        log.info("ingest: stopping; draining for up to %g s", s.drain_timeout_s)
        for worker in workers:
            worker.stop()
        notifier.stop()
        if files is not None and artifacts is not None:
            files.stop()
            artifacts.stop()
        if not await finish(tasks, s.drain_timeout_s):
            log.warning(
                "ingest: batches still in hand after %g s; NATS redelivers them",
                s.drain_timeout_s,
            )
    finally:
        with contextlib.suppress(Exception):
            await last_steps.unsubscribe()
        await runner.cleanup()
    if failure is not None:
        raise CliError(f"an ingest worker stopped unexpectedly: {failure!r}")
    print("stride: stopped", flush=True)


async def serve_query(settings: QueryServiceSettings) -> None:
    """Serve the query API until SIGINT or SIGTERM."""
    load_lazy_imports()
    async with contextlib.AsyncExitStack() as stack:
        # Opened here (not by the app) so start-up retries while storage comes up.
        objects, store = await _open_storage(stack, settings)
        app = create_app(settings.query, store=store, objects=objects)
        runner, port = await serve_http(
            app, settings.host, settings.http_port, settings.drain_timeout_s
        )
        log.info("query: storage %s, HTTP %s:%d", store.address, settings.host, port)
        print(f"stride: query HTTP http://{settings.host}:{port}", flush=True)
        try:
            await wait_for_stop()
            log.info("query: stopping; requests in flight get %g s", settings.drain_timeout_s)
        finally:
            await runner.cleanup()
    print("stride: stopped", flush=True)
