"""``stride up``: NATS (child process) + ingest + query in one process and one loop.

Start-up order: lock the data directory, check the HTTP port, start
nats-server, open chDB, connect, start ingest, serve HTTP, print the
addresses. Ctrl-C or SIGTERM stops fetching, finishes and acks the batch in
hand, closes HTTP, NATS and chDB, and stops the child nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import socket
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient

from stride.ingest import IngestSettings, IngestWorker
from stride.ingest.artifacts import ArtifactWorker
from stride.ingest.files import FileWorker
from stride.ingest.last_step import answer_last_steps
from stride.ingest.notify import Notifier, NotifySettings
from stride.ingest.streams import ensure_streams
from stride.query import READY, STATUS, QuerySettings, create_app
from stride.store import AsyncStore, redact
from stride.store.chdb import ChdbStore
from stride.store.objects import ObjectStore, open_objects

from ._lock import DataDirLock
from ._nats_server import NatsServer
from ._service import connect_nats, finish, load_lazy_imports, serve_http, wait_for_stop
from .errors import CliError


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpSettings:
    data_dir: Path = Path(".stride")
    host: str = "127.0.0.1"
    nats_port: int = 4222
    http_port: int = 8080
    #: Use this NATS instead of starting one (e.g. a cluster, or a test's server).
    nats_url: str | None = None
    #: Where saved files' bytes go: ``<data_dir>/objects`` unless an object store URL
    #: (``file:///dir``, ``s3://...``) is given.
    objects_url: str | None = None
    ingest: IngestSettings = dataclasses.field(default_factory=IngestSettings)
    query: QuerySettings = dataclasses.field(default_factory=QuerySettings)
    #: How alert notifications are sent (the SMTP server for emails).
    notify: NotifySettings = dataclasses.field(default_factory=NotifySettings)


def _check_port_free(host: str, port: int, what: str, flag: str) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(
                    f"{what} port {port} on {host} is already in use; "
                    f"pass {flag} N (0 picks a free port)"
                ) from None
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


async def serve(settings: UpSettings) -> None:
    """Run until SIGINT/SIGTERM (or until the task is cancelled)."""
    load_lazy_imports()
    data_dir = settings.data_dir.resolve()
    lock = DataDirLock(data_dir)
    lock.acquire()
    nats_server: NatsServer | None = None
    try:
        _check_port_free(settings.host, settings.http_port, "HTTP", "--http-port")
        if settings.nats_url is None:
            _check_port_free(settings.host, settings.nats_port, "NATS", "--nats-port")
            nats_server = NatsServer(data_dir / "nats", settings.host, settings.nats_port)
            # From this (the main) thread: the child's parent-death signal is tied to
            # the thread that starts it, and this one lives as long as the process.
            nats_server.start()
            nats_url = nats_server.url
        else:
            nats_url = settings.nats_url
        await _serve(settings, data_dir, nats_url)
    finally:
        if nats_server is not None:
            await asyncio.to_thread(nats_server.stop)
        lock.release()


async def _serve(settings: UpSettings, data_dir: Path, nats_url: str) -> None:
    objects_url = settings.objects_url or (data_dir / "objects").as_uri()
    objects = await asyncio.to_thread(open_objects, objects_url)
    store = AsyncStore(await asyncio.to_thread(ChdbStore, data_dir / "clickhouse"))
    try:
        nc = await connect_nats(nats_url, "stride-up", 10.0)
    except BaseException:
        await store.close()
        objects.close()
        raise
    try:
        await _run(settings, data_dir, nats_url, store, nc, objects)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 5.0)
        await store.close()
        objects.close()


async def _run(
    settings: UpSettings,
    data_dir: Path,
    nats_url: str,
    store: AsyncStore,
    nc: NatsClient,
    objects: ObjectStore,
) -> None:
    # Streams exist before the addresses are printed: a writer may publish at once.
    await ensure_streams(
        nc.jetstream(),
        replicas=settings.ingest.replicas,
        duplicate_window_s=settings.ingest.duplicate_window_s,
    )
    worker = IngestWorker(nc, store, settings.ingest)
    files = FileWorker(nc, store, objects, settings.ingest)
    artifacts = ArtifactWorker(nc, store, objects, settings.ingest)
    notifier = Notifier(nc, settings.notify)
    app = create_app(settings.query, store=store, objects=objects)

    async def status() -> dict[str, Any]:
        return {
            "ingest": worker.stats.as_dict(),
            "lag": await worker.lag(),
            "files": files.stats.as_dict(),
            "notifications": notifier.stats.as_dict(),
        }

    async def ready() -> str | None:
        if not nc.is_connected:
            return f"not connected to NATS at {redact(nats_url)}"
        if not all(w.subscribed for w in (worker, files, artifacts, notifier)):
            return "the ingest workers have not subscribed yet"
        return None

    app[STATUS] = status
    app[READY] = ready
    runner, http_port = await serve_http(app, settings.host, settings.http_port, 5.0)
    last_steps = await answer_last_steps(nc, store)
    worker_task = asyncio.create_task(worker.run(), name="ingest")
    files_task = asyncio.create_task(files.run(), name="files")
    artifacts_task = asyncio.create_task(artifacts.run(), name="artifacts")
    notifier_task = asyncio.create_task(notifier.run(), name="notifier")
    print(f"stride: NATS  {redact(nats_url)}", flush=True)
    print(f"stride: HTTP  http://{settings.host}:{http_port}", flush=True)
    print(f"stride: data  {data_dir}", flush=True)
    try:
        failure = await wait_for_stop(worker_task, files_task, artifacts_task, notifier_task)
        print("stride: stopping (draining ingest)...", flush=True)
    finally:  # also when cancelled: the workers stop before NATS and the store close
        worker.stop()
        files.stop()
        artifacts.stop()
        notifier.stop()
        tasks = [worker_task, files_task, artifacts_task, notifier_task]
        await finish(tasks, settings.ingest.drain_timeout_s)
        with contextlib.suppress(Exception):
            await last_steps.unsubscribe()
        await runner.cleanup()
    if failure is not None:
        raise CliError(f"ingest stopped unexpectedly: {failure!r}; restart `stride up`")
    print("stride: stopped", flush=True)
