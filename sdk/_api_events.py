"""A run's events and log lines as the client reads them (``ApiRun.events``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .api_types import EventDoc, EventsPage

if TYPE_CHECKING:
    from ._api import Api

__all__ = ["list_events"]

_EVENTS = msgspec.json.Decoder(EventsPage)


def list_events(
    api: Api,
    run_base: str,
    *,
    level: str | Sequence[str] | None,
    min_level: str | None,
    since: float | None,
    until: float | None,
    contains: str | None,
    per_page: int,
) -> Iterator[EventDoc]:
    """The run's events in time order, fetched a page at a time."""
    levels = [level] if isinstance(level, str) else level
    after: str | None = None
    while True:
        params: list[tuple[str, Any]] = [
            ("level", ",".join(levels) if levels else None),
            *(("min_level", min_level), ("since", since), ("until", until)),
            *(("q", contains), ("per_page", per_page), ("after", after)),
        ]
        page = api._get_as(_EVENTS, f"{run_base}/events", params)
        yield from page.events
        if page.next is None:
            return
        after = page.next
