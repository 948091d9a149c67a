"""Handlers: what ingest stores from a batch, one record kind each.

The worker's loop knows no record kind: it dispatches every fetch through a
registry of handlers. For each fetch it

1. calls ``prepare`` on every handler with the fetch's decoded batches (pure
   CPU, in the stage that overlaps the previous fetch's write);
2. drops the batches the ledger already holds; if it dropped any, it calls
   ``prepare`` again with the rest, so what was prepared for the full fetch is
   discarded unwritten;
3. calls ``write`` on every handler, in registry order, with what it prepared
   (skipping a handler that prepared ``None``);
4. writes the ledger, always last, then acks.

A handler therefore writes each batch once in effect, but may write it again
after a crash or a store error between its write and the ledger's: tables it
writes must absorb a repeat (a ``ReplacingMergeTree`` keyed by the record's
identity, as in :mod:`stride.store.schema`). A ``StoreError`` from ``write``
makes the worker nak the fetch for redelivery; other handlers are not undone.

Adding a record kind (events, file records, alert evaluation) means adding a
handler, not editing the loop::

    worker = IngestWorker(nc, store, settings, handlers=[*default_handlers(), Events()])
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import pyarrow as pa

from stride.store import AsyncStore
from stride.store.run_search import (
    SEARCH_COLUMNS,
    SEARCH_FROM_PARTIALS,
    runs_with_several_writers,
    search_rows,
    several_writers_rows,
)
from stride.store.schema import (
    EVENTS_COLUMNS,
    FIELDS_COLUMNS,
    FOLDER_FIELDS_COLUMNS,
    KEYS_COLUMNS,
    POINTS_COLUMNS,
    ROLLUP_COLUMNS,
    ROLLUP_FROM_PARTIALS,
    ROLLUP_PARTIALS_STRUCTURE,
    SERIES_STATS_COLUMNS,
    SERIES_STATS_FROM_PARTIALS,
    WIDE_FROM_PARTIALS,
)
from stride.wire import Batch

from ._tables import Points, build_events, build_fields, build_folder_fields, build_points

__all__ = [
    "EventsHandler",
    "FoldersHandler",
    "Handler",
    "MetricsHandler",
    "RunFieldsHandler",
    "check_registry",
    "default_handlers",
]

T = TypeVar("T")

#: Runs a handler remembers as already marked before it forgets them all (and marks
#: again, harmlessly, any that still get states).
_MAX_REMEMBERED = 100_000


class Handler(Protocol[T]):
    """Stores one kind of record found in batches; ``T`` is what it prepares."""

    @property
    def name(self) -> str:
        """Short and unique in a registry; names the handler in logs."""
        ...

    @property
    def parts(self) -> frozenset[str]:
        """The fields of :class:`~stride.wire.Batch` it reads (``"metrics"``, ``"set"``...)."""
        ...

    def prepare(self, batches: Sequence[Batch]) -> T | None:
        """Build what to write for ``batches``, or ``None`` for nothing.

        Pure CPU with no side effects: it runs while another fetch is being
        written, and its result is dropped if the ledger then skips a batch.
        """
        ...

    async def write(self, store: AsyncStore, prepared: T) -> int:
        """Write what :meth:`prepare` built; return the metric points it stored
        (added to ``IngestStats.points``; 0 for other records)."""
        ...


class MetricsHandler:
    """``points``, then from partials built beside them ``points_rollup`` (and its
    wide level),
    ``series_stats`` and each metric's summary row in ``run_search``; and ``run_keys``.

    Remembers the keys it has written, so a run's keys are inserted once per
    worker, not once per fetch.
    """

    name = "metrics"
    parts = frozenset({"metrics"})

    def __init__(self) -> None:
        self._known_keys: set[tuple[str, str, str]] = set()

    def prepare(self, batches: Sequence[Batch]) -> Points | None:
        return build_points(batches)

    async def write(self, store: AsyncStore, prepared: Points) -> int:
        # Keys, points, then the aggregates: a reader that sees points sees their keys,
        # and a scan that pages by rollup counts never counts a point it cannot read
        # yet (history may briefly lack the newest buckets instead).
        # Decided at write time, not in prepare: the fetch written meanwhile may add keys.
        new_keys = prepared.keys - self._known_keys
        if new_keys:
            run, stream, key = zip(*sorted(new_keys), strict=True)
            keys = pa.table({"run": list(run), "stream": list(stream), "key": list(key)})
            await store.insert_arrow("run_keys", KEYS_COLUMNS, keys)
            self._known_keys |= new_keys
        await store.insert_arrow("points", POINTS_COLUMNS, prepared.table)
        for table, columns, select in (
            ("points_rollup", ROLLUP_COLUMNS, ROLLUP_FROM_PARTIALS),
            ("points_rollup_wide", ROLLUP_COLUMNS, WIDE_FROM_PARTIALS),
            ("series_stats", SERIES_STATS_COLUMNS, SERIES_STATS_FROM_PARTIALS),
            ("run_search", SEARCH_COLUMNS, SEARCH_FROM_PARTIALS),
        ):
            await store.insert_select(
                table, columns, select, prepared.rollup, ROLLUP_PARTIALS_STRUCTURE
            )
        return prepared.count


class RunFieldsHandler:
    """``run_fields``: set fields (last write wins), set-once fields as ``~name``
    (first write wins) and every batch's ``heartbeat_at``; then the same fields
    flattened into ``run_search`` (so a run a search finds can be read), with each
    writer's newest batch time (its beat: is that writer alive?).

    After writing a state, it looks whether another writer set one for the same
    run, and if so marks the run as written by several
    (:data:`~stride.store.run_search.SEVERAL_WRITERS_KEY`). Each worker looks
    after its own insert, so of two writers' first states stored at once by two
    workers, the later look sees both; and looks again at every state change (a
    writer's end too), so a look that missed a row not yet visible is made good.
    """

    name = "run_fields"
    parts = frozenset({"set", "set_once", "ver"})

    def __init__(self) -> None:
        self._several: set[tuple[str, str, str]] = set()  # runs marked (a cache, bounded)

    def prepare(self, batches: Sequence[Batch]) -> RunFields:
        fields = build_fields(batches)
        beats: dict[tuple[str, str, str, str], int] = {}  # each writer's newest batch
        for b in batches:
            where = (b.entity, b.project, b.run_id, b.writer)
            beats[where] = max(beats.get(where, 0), b.ver)
        states = {(b.entity, b.project, b.run_id) for b in batches if "state" in b.set}
        return RunFields(fields, search_rows(fields, beats), states)

    async def write(self, store: AsyncStore, prepared: RunFields) -> int:
        await store.insert_arrow("run_fields", FIELDS_COLUMNS, prepared.fields)
        await store.insert_arrow("run_search", SEARCH_COLUMNS, prepared.search)
        several = await runs_with_several_writers(store, prepared.states - self._several)
        if several:
            marks = several_writers_rows(sorted(several), time.time_ns())
            await store.insert_arrow("run_search", SEARCH_COLUMNS, marks)
            if len(self._several) > _MAX_REMEMBERED:
                self._several.clear()
            self._several |= several
        return 0


@dataclasses.dataclass(frozen=True)
class RunFields:
    """What :class:`RunFieldsHandler` writes for a fetch."""

    fields: pa.Table
    search: pa.Table
    #: (entity, project, run id) of the runs whose state a batch set.
    states: set[tuple[str, str, str]]


class EventsHandler:
    """``events``: each batch's events and log lines, one row each, identified by the
    batch (writer, seq) and the event's place in it."""

    name = "events"
    parts = frozenset({"events"})

    def prepare(self, batches: Sequence[Batch]) -> pa.Table | None:
        return build_events(batches)

    async def write(self, store: AsyncStore, prepared: pa.Table) -> int:
        await store.insert_arrow("events", EVENTS_COLUMNS, prepared)
        return 0


class FoldersHandler:
    """``folder_fields``: the folder details (``Run.set_folder_details``) a batch sets."""

    name = "folders"
    parts = frozenset({"set"})

    def prepare(self, batches: Sequence[Batch]) -> pa.Table | None:
        return build_folder_fields(batches)

    async def write(self, store: AsyncStore, prepared: pa.Table) -> int:
        await store.insert_arrow("folder_fields", FOLDER_FIELDS_COLUMNS, prepared)
        return 0


def default_handlers() -> list[Handler[Any]]:
    """A fresh registry of what Stride stores today: metrics, events, folders, then run
    fields (last: a run whose state says it ended has its data stored).

    Fresh on every call, because handlers keep per-worker state (known keys).
    """
    return [MetricsHandler(), EventsHandler(), FoldersHandler(), RunFieldsHandler()]


def check_registry(handlers: Sequence[Handler[Any]]) -> None:
    """Refuse a registry with two handlers of one name or a part that is no batch field."""
    names = [h.name for h in handlers]
    if len(set(names)) != len(names):
        raise ValueError(f"handler names must be unique, got {names}")
    for h in handlers:
        unknown = h.parts - set(Batch.__struct_fields__)
        if unknown:
            raise ValueError(f"handler {h.name!r} reads {sorted(unknown)}, not fields of a Batch")
