"""A run's events and log lines, in order, filtered, a page at a time.

Order is (time, writer, batch, place in batch): the order one writer wrote
them in, and a stable interleaving of several writers. The cursor is the last
row's position in that order, so a page never repeats or skips a row, even
while more arrive.
"""

from __future__ import annotations

from typing import Any

import orjson

from stride.api_types import EventDoc
from stride.store import AsyncStore
from stride.wire import LEVELS

from .errors import BadRequest

__all__ = ["list_events", "parse_levels"]


async def list_events(
    store: AsyncStore,
    run: str,
    *,
    levels: tuple[str, ...] | None,
    since: float | None,
    until: float | None,
    contains: str | None,
    after: str | None,
    limit: int,
) -> tuple[list[EventDoc], str | None]:
    """A page of the run's events and the cursor of the next (``None`` at the end).

    ``levels`` keeps those levels; ``since``/``until`` (Unix seconds) keep
    ``since <= time < until``; ``contains`` keeps messages holding that text
    (any case).
    """
    where = ["run = {run:String}"]
    params: dict[str, Any] = {"run": run, "limit": limit + 1}
    if levels is not None:
        where.append("level IN {levels:Array(String)}")
        params["levels"] = list(levels)
    if since is not None:
        where.append("ts >= {since:Int64}")
        params["since"] = round(since * 1e9)
    if until is not None:
        where.append("ts < {until:Int64}")
        params["until"] = round(until * 1e9)
    if contains:
        where.append("positionCaseInsensitiveUTF8(message, {contains:String}) > 0")
        params["contains"] = contains
    if after is not None:
        ts, writer, seq, idx = _cursor(after)
        where.append(
            "(ts, writer, seq, idx) > ({ts:Int64}, {writer:String}, {seq:UInt64}, {idx:UInt32})"
        )
        params |= {"ts": ts, "writer": writer, "seq": seq, "idx": idx}
    table = await store.query_arrow(
        "SELECT ts, writer, seq, idx, level, message, metadata FROM events FINAL "
        f"WHERE {' AND '.join(where)} ORDER BY ts, writer, seq, idx LIMIT {{limit:UInt32}}",
        params,
    )
    rows = table.to_pylist()
    more = len(rows) > limit
    rows = rows[:limit]
    events = [
        EventDoc(
            timestamp=row["ts"] / 1e9,
            level=row["level"],
            message=row["message"],
            metadata=orjson.loads(row["metadata"]),
            writer=row["writer"],
        )
        for row in rows
    ]
    if not more:
        return events, None
    last = rows[-1]
    return events, orjson.dumps([last["ts"], last["writer"], last["seq"], last["idx"]]).decode()


def parse_levels(level: str | None, min_level: str | None) -> tuple[str, ...] | None:
    """The levels asked for: ``level`` lists some (``warn,error``); ``min_level``
    keeps that one and the more severe; ``None`` means all."""
    chosen: tuple[str, ...] | None = None
    if level:
        chosen = tuple(part.strip() for part in level.split(","))
        unknown = [part for part in chosen if part not in LEVELS]
        if unknown:
            raise BadRequest(f"unknown level {unknown[0]!r}: use {', '.join(LEVELS)}")
    if min_level:
        if min_level not in LEVELS:
            raise BadRequest(f"unknown min_level {min_level!r}: use {', '.join(LEVELS)}")
        severe = LEVELS[LEVELS.index(min_level) :]
        chosen = severe if chosen is None else tuple(lv for lv in chosen if lv in severe)
    return chosen


def _cursor(after: str) -> tuple[int, str, int, int]:
    try:
        ts, writer, seq, idx = orjson.loads(after)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (ts, seq, idx)):
            raise TypeError
        if not isinstance(writer, str) or not 0 <= seq < 2**64 or not 0 <= idx < 2**32:
            raise TypeError
        if not -(2**63) <= ts < 2**63:
            raise TypeError
        return ts, writer, seq, idx
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise BadRequest("invalid cursor 'after': pass back the 'next' value unchanged") from None
