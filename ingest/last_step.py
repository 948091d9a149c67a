"""Answers "what is the largest stored step of this run?" on NATS.

A process that resumes a run by id (``stride.init(id=...)``,
``stride.reconnect``) asks on :data:`~stride.wire.LAST_STEP_SUBJECT` so that
its ``log()`` without ``step=`` goes on after the steps already stored. Every
ingest process answers, as one queue group, from ``series_stats`` (one row per
series and fetch: the cost does not grow with the run). Steps still on their
way (a lagging ingest, a spool not synced yet) are not counted.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from stride.ids import InvalidIdentifier, check
from stride.store import AsyncStore
from stride.wire import LAST_STEP_SUBJECT, encode_last_step

log = logging.getLogger("stride.ingest")

__all__ = ["QUEUE", "answer_last_steps"]

QUEUE = "stride-last-step"


async def answer_last_steps(nc: NatsClient, store: AsyncStore) -> Subscription:
    """Subscribe the answerer; unsubscribe the result to stop it."""

    async def answer(msg: Msg) -> None:
        try:
            path = _run_path(msg.data)
        except ValueError as exc:
            await msg.respond(encode_last_step(None, str(exc)))
            return
        try:
            last = await last_step(store, path)
        except Exception as exc:  # the asker starts at 0 and says why
            log.warning("cannot read the last step of %s: %s", path, exc)
            await msg.respond(encode_last_step(None, f"storage did not answer ({exc})"))
            return
        await msg.respond(encode_last_step(last))

    return await nc.subscribe(LAST_STEP_SUBJECT, queue=QUEUE, cb=answer)


async def last_step(store: AsyncStore, path: str) -> int | None:
    """The largest step stored in the run's ``default`` stream; ``None`` if it has none."""
    table = await store.query_arrow(
        "SELECT count() AS n, max(smax) AS last FROM series_stats "
        "WHERE run = {run:String} AND stream = 'default'",
        {"run": path},
    )
    row = table.to_pylist()[0]
    return int(row["last"]) if row["n"] else None


def _run_path(data: bytes) -> str:
    parts = data.decode("utf-8", "replace").split("/")
    if len(parts) != 3:
        raise ValueError(f"not a run path (entity/project/run_id): {data[:200]!r}")
    entity, project, run_id = parts
    try:
        return "/".join(
            (check("entity", entity), check("project", project), check("run id", run_id))
        )
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None
