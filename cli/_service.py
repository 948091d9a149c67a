"""What every long-running ``stride`` command does the same way.

Connect to its servers (retrying while they come up, as they do under a
compose file or in a Kubernetes rollout), serve HTTP, wait for SIGINT or
SIGTERM, and stop in order within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from aiohttp import web
from nats.aio.client import Client as NatsClient

from stride.store import AsyncStore, StoreError, open_store, redact

from .errors import CliError

log = logging.getLogger("stride.service")

T = TypeVar("T")


def load_lazy_imports() -> None:
    """Start loading, in a thread, what the first request would otherwise wait for.

    pyarrow imports pandas (when installed) the first time it converts Python
    objects: ~200 ms here, which the first read after a start, or the first
    batch ingested, used to pay (a 10-key scan's first page took 264 ms, the
    next ones' 21). A request that needs the module meanwhile waits for this
    import rather than starting its own.
    """
    threading.Thread(target=_convert_once, name="stride-imports", daemon=True).start()


def _convert_once() -> None:
    import pyarrow as pa

    pa.array([0.0])


async def retry_until(what: str, attempt: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    """``await attempt()`` until it succeeds, backing off up to 5 s, for ``timeout_s``.

    A ``ValueError`` (a malformed URL) or a :class:`StoreError` that is not
    ``retriable`` (a refused password) ends at once: waiting would not change it.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if isinstance(exc, ValueError) or (isinstance(exc, StoreError) and not exc.retriable):
                raise CliError(f"cannot connect to {what}: {exc}") from None
            if time.monotonic() + delay > deadline:
                raise CliError(
                    f"cannot connect to {what} within {timeout_s:g} s: {exc}; "
                    "check that it runs and the address is right"
                ) from None
            log.warning("%s is not reachable yet (%s); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def open_async_store(url: str, timeout_s: float) -> AsyncStore:
    """Open the storage URL (creating the schema), retrying while the server starts."""

    async def attempt() -> AsyncStore:
        return AsyncStore(await asyncio.to_thread(open_store, url))

    return await retry_until(f"storage at {redact(url)}", attempt, timeout_s)


async def connect_nats(url: str, name: str, timeout_s: float) -> NatsClient:
    """Connect (retrying while NATS starts); afterwards the client reconnects forever."""

    async def error_cb(exc: Exception) -> None:
        log.warning("NATS: %s", exc or exc.__class__.__name__)

    async def attempt() -> NatsClient:
        # nats-py's first connect keeps trying for max_reconnect_attempts x
        # reconnect_time_wait (unbounded at -1): it tries each server about twice
        # here (retry_until does the waiting), and reconnects are made unlimited
        # once connected.
        nc = await nats.connect(
            [server.strip() for server in url.split(",")],
            name=name,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            connect_timeout=min(5.0, timeout_s),
            error_cb=error_cb,
        )
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 2.0
        return nc

    return await retry_until(f"NATS at {redact(url)}", attempt, timeout_s)


async def serve_http(
    app: web.Application, host: str, port: int, shutdown_timeout_s: float
) -> tuple[web.AppRunner, int]:
    """Start serving ``app``; return the runner and the port it listens on."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CliError(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}") from None
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def wait_for_stop(*tasks: asyncio.Task[None]) -> BaseException | None:
    """Wait for SIGINT or SIGTERM, or for one of ``tasks`` to end; return its failure.

    The signals stay handled after this returns, until the event loop closes:
    another Ctrl-C during the drain (or one already queued) only says the drain
    is under way. Giving SIGINT back to Python here would let it raise
    ``KeyboardInterrupt`` in the middle of the drain.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for task in done:
            if task is not stopping and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _already_stopping, sig)


def _already_stopping(sig: signal.Signals) -> None:
    log.warning(
        "%s: already stopping; the drain ends by itself within its timeout "
        "(SIGKILL stops at once: unacknowledged messages are delivered again)",
        sig.name,
    )


async def finish(tasks: list[asyncio.Task[None]], timeout_s: float) -> bool:
    """Let ``tasks`` end by themselves within ``timeout_s``; cancel the rest.

    Returns False if any had to be cancelled (its unacknowledged messages are
    redelivered to another worker: nothing is lost).
    """
    if not tasks:
        return True
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for task in late:
        task.cancel()
    for task in late:
        with contextlib.suppress(BaseException):
            await task
    return not late
