"""Alerts evaluated by ingest as data arrives (Simvue's ``add_alert``).

A run attaches an alert with the run field ``alerts.<name>`` (the definition as
JSON, see :class:`~stride.api_types.AlertDefinition`); the first definition of a
name in a project is stored in ``alerts`` and is the one evaluated.

Evaluation is driven by the data, never by a timer polling the database:

* every batch moves its run's *clock* to the batch's time (``ver``, when the
  writer sealed it);
* an alert is evaluated at the instants ``k * frequency`` (Unix seconds) that
  the clock has passed since its last evaluation: a metrics alert takes the
  mean of the points of ``metric`` whose ``_timestamp`` lies in
  ``(T - window, T]`` (NaN left out; no point: no evaluation, the state
  stays), an events alert counts the events and log lines holding
  ``pattern`` in that window (``critical`` when there is one);
* every evaluation updates ``alert_status``; every change of state is a row of
  ``alert_transitions`` and, when the alert says so, a notification
  (:mod:`.notify`).

Several ingest workers share the stream, so batches of one run reach several
of them. Each reads the points from storage (written by whichever worker
stored them), and evaluations of one alert on one run are serialized through
a NATS key-value entry holding its last instant and state, updated with
compare-and-set: a worker that loses the race reads the winner's entry and
evaluates only what is left. What it writes before the update is idempotent
(rows keyed by instant, notifications deduplicated by id), so a worker that
dies in between leaves nothing twice. An alert never holds up ingest: a
failed evaluation is logged and retried by the run's next batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from stride.api_types import AlertDefinition
from stride.store import MAX_VER, AsyncStore
from stride.store.alerts import ALERT_FIELD_PREFIX, attached_alerts
from stride.store.schema import (
    ALERT_STATUS_COLUMNS,
    ALERT_TRANSITIONS_COLUMNS,
    ALERTS_COLUMNS,
)
from stride.wire import Batch

from .notify import Notification, publish_notification

log = logging.getLogger("stride.ingest")

__all__ = ["ALERTS_BUCKET", "AlertEvaluator", "AlertsHandler"]

#: The NATS key-value bucket of each alert's last evaluation on each run.
ALERTS_BUCKET = "stride_alerts"
#: At most this many instants are evaluated at once (a run's backlog synced
#: days later): the newest; the older ones are skipped, and the log says so.
MAX_INSTANTS = 1000
#: How long a worker trusts what it knows of a run's alerts before reading them
#: again (another worker may have stored a new one meanwhile).
_KNOWN_FOR_S = 10.0
_DEFINITION = msgspec.json.Decoder(AlertDefinition)


class _Entry(msgspec.Struct):
    """An alert's last evaluation on a run, as the key-value entry holds it."""

    index: int  # the instant, as a multiple of the frequency
    state: str


_ENTRY = msgspec.json.Decoder(_Entry)


@dataclasses.dataclass
class Prepared:
    """What one fetch brings: definitions to store, alerts attached, run clocks."""

    definitions: pa.Table | None
    #: run path -> {alert name: definition JSON} attached by this fetch.
    attached: dict[str, dict[str, str]]
    #: run path -> the newest batch time (Unix seconds) in the fetch.
    clocks: dict[str, float]


class AlertsHandler:
    """Stores alert definitions, then evaluates the alerts of the fetch's runs
    (registered after the handlers that store points and events)."""

    name = "alerts"
    parts = frozenset({"set", "ver"})

    def __init__(self, evaluator: AlertEvaluator) -> None:
        self._evaluator = evaluator

    def prepare(self, batches: Sequence[Batch]) -> Prepared:
        rows: dict[str, list[Any]] = {c: [] for c in ALERTS_COLUMNS}
        attached: dict[str, dict[str, str]] = {}
        clocks: dict[str, float] = {}
        for b in batches:
            path = f"{b.entity}/{b.project}/{b.run_id}"
            clocks[path] = max(clocks.get(path, 0.0), b.ver / 1e9)
            for field, value in b.set.items():
                if field.startswith(ALERT_FIELD_PREFIX):
                    name = field.removeprefix(ALERT_FIELD_PREFIX)
                    attached.setdefault(path, {})[name] = value
                    for column, cell in zip(
                        ALERTS_COLUMNS,
                        (b.entity, b.project, name, value, MAX_VER - b.ver),
                        strict=True,
                    ):
                        rows[column].append(cell)
        definitions = None
        if rows["name"]:
            definitions = pa.table({**rows, "ver": pa.array(rows["ver"], pa.uint64())})
        return Prepared(definitions, attached, clocks)

    async def write(self, store: AsyncStore, prepared: Prepared) -> int:
        if prepared.definitions is not None:
            await store.insert_arrow("alerts", ALERTS_COLUMNS, prepared.definitions)
        await self._evaluator.advance(store, prepared.attached, prepared.clocks)
        return 0


@dataclasses.dataclass
class _Known:
    alerts: dict[str, AlertDefinition]
    until: float


class AlertEvaluator:
    """Evaluates alerts for runs whose clocks a fetch moved (one per ingest process
    or worker; any number share the key-value bucket)."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._js = js
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._known: dict[str, _Known] = {}
        self.evaluations = 0
        self.transitions = 0

    async def advance(
        self, store: AsyncStore, attached: dict[str, dict[str, str]], clocks: dict[str, float]
    ) -> None:
        try:
            runs = await self._alerts_of(store, attached, list(clocks))
        except Exception:
            log.exception(
                "alerts: cannot read the alerts of %d run(s); next batch retries", len(clocks)
            )
            return
        for path, alerts in runs.items():
            for name, definition in alerts.items():
                try:
                    await self._evaluate(store, path, name, definition, clocks[path])
                except Exception:
                    log.exception(
                        "alerts: evaluating %r on %s failed; next batch retries", name, path
                    )

    # ---- which alerts a run has ----------------------------------------------------------------

    async def _alerts_of(
        self, store: AsyncStore, attached: dict[str, dict[str, str]], paths: list[str]
    ) -> dict[str, dict[str, AlertDefinition]]:
        now = time.monotonic()
        stale = [p for p in paths if p in attached or self._known.get(p, _NEVER).until < now]
        if stale:
            found = {
                path: {n: _DEFINITION.decode(d) for n, d in alerts.items()}
                for path, alerts in (await attached_alerts(store, stale)).items()
            }
            for path in stale:
                mine = {n: _DEFINITION.decode(d) for n, d in attached.get(path, {}).items()}
                # The project's first definition wins over this fetch's own.
                self._known[path] = _Known({**mine, **found.get(path, {})}, now + _KNOWN_FOR_S)
            if len(self._known) > 100_000:  # runs long gone: forget them
                self._known = {p: k for p, k in self._known.items() if k.until >= now}
        return {p: self._known[p].alerts for p in paths if self._known[p].alerts}

    # ---- one alert on one run ------------------------------------------------------------------

    async def _evaluate(
        self, store: AsyncStore, run: str, name: str, d: AlertDefinition, clock: float
    ) -> None:
        kv = await self._bucket()
        key = hashlib.sha1(f"{run}\0{name}".encode()).hexdigest()
        for _ in range(8):  # another worker updated the entry: read it again
            try:
                entry = await kv.get(key)
                last: _Entry | None = _ENTRY.decode(entry.value or b"")
                revision: int | None = entry.revision
            except KeyNotFoundError:
                last, revision = None, None
            newest = math.floor(clock / d.frequency)
            first = newest if last is None else last.index + 1
            if first > newest:
                return
            if newest - first >= MAX_INSTANTS:
                log.info(
                    "alerts: %r on %s: %d instants behind; evaluating the newest %d",
                    name, run, newest - first + 1, MAX_INSTANTS,
                )  # fmt: skip
                first = newest - MAX_INSTANTS + 1
            instants = np.arange(first, newest + 1, dtype=np.float64) * d.frequency
            values = await _measure(store, run, d, instants)
            state = await self._record(
                store, run, name, d, last.state if last else "ok", instants, values
            )
            value = _Entry(newest, state)
            try:
                if revision is None:
                    await kv.create(key, msgspec.json.encode(value))
                else:
                    await kv.update(key, msgspec.json.encode(value), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return
        log.warning("alerts: %r on %s: the entry kept changing; next batch retries", name, run)

    async def _record(
        self,
        store: AsyncStore,
        run: str,
        name: str,
        d: AlertDefinition,
        state: str,
        instants: np.ndarray,
        values: list[float | None],
    ) -> str:
        """Store the evaluations (the last as the status, each change of state as a
        transition), send the notifications; return the state after the last."""
        changes: dict[str, list[Any]] = {c: [] for c in ALERT_TRANSITIONS_COLUMNS}
        status: tuple[float, str, float] | None = None
        for at, value in zip(instants.tolist(), values, strict=True):
            if value is None:
                continue  # no data in the window: no evaluation, the state stays
            new = "critical" if _critical(d, value) else "ok"
            if new != state:
                for column, cell in zip(
                    ALERT_TRANSITIONS_COLUMNS, (run, name, at, new, state, value), strict=True
                ):
                    changes[column].append(cell)
            state, status = new, (at, new, value)
            self.evaluations += 1
        if status is None:
            return state
        if changes["at"]:
            await store.insert_arrow(
                "alert_transitions", ALERT_TRANSITIONS_COLUMNS, pa.table(changes)
            )
            self.transitions += len(changes["at"])
        at, new, value = status
        row: dict[str, Any] = {"run": [run], "alert": [name], "at": [at], "state": [new]}
        row |= {"value": [value], "ver": pa.array([round(at * 1e9)], pa.uint64())}
        await store.insert_arrow("alert_status", ALERT_STATUS_COLUMNS, pa.table(row))
        if d.notification != "none":
            for at, new, previous, value in zip(
                changes["at"], changes["state"], changes["previous"], changes["value"], strict=True
            ):
                notice = Notification(
                    alert=name,
                    run=run,
                    state=new,
                    previous=previous,
                    at=at,
                    value=value,
                    channel=d.notification,
                    target=d.target,
                    summary=d.summary(value, new),
                    description=d.description,
                )
                await publish_notification(self._js, notice)
        return state

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(ALERTS_BUCKET)
            except BucketNotFoundError:
                self._kv = await self._js.create_key_value(
                    bucket=ALERTS_BUCKET, history=1, replicas=self._replicas
                )
        return self._kv


_NEVER = _Known({}, -math.inf)


def _critical(d: AlertDefinition, value: float) -> bool:
    return value > 0 if d.source == "events" else d.breached(value)


async def _measure(
    store: AsyncStore, run: str, d: AlertDefinition, instants: np.ndarray
) -> list[float | None]:
    """Per instant ``T``: the mean of the metric over ``(T - window, T]`` (metrics
    alerts), or the count of events holding the pattern (events alerts); ``None``
    where a metrics window holds no point."""
    lo, hi = float(instants[0]) - d.window, float(instants[-1])
    if d.source == "events":
        table = await store.query_arrow(
            "SELECT ts / 1e9 AS t FROM events FINAL WHERE run = {run:String} "
            "AND ts > {lo:Int64} AND ts <= {hi:Int64} AND position(message, {p:String}) > 0",
            {
                "run": run,
                "lo": math.floor(lo * 1e9),
                "hi": math.floor(hi * 1e9),
                "p": d.pattern or "",
            },
        )
        times = np.sort(table.column("t").to_numpy())
        starts = np.searchsorted(times, instants - d.window, side="right")
        ends = np.searchsorted(times, instants, side="right")
        return [float(n) for n in ends - starts]
    table = await store.query_arrow(
        "SELECT argMax(timestamp, ver) AS t, argMax(value, ver) AS v FROM points "
        "WHERE run = {run:String} AND stream = {stream:String} AND key = {key:String} "
        "AND timestamp > {lo:Float64} AND timestamp <= {hi:Float64} GROUP BY step",
        {"run": run, "stream": d.stream, "key": d.metric or "", "lo": lo, "hi": hi},
    )
    times = table.column("t").to_numpy()
    values = table.column("v").to_numpy()
    keep = ~np.isnan(values) & ~np.isnan(times)
    order = np.argsort(times[keep], kind="stable")
    times, values = times[keep][order], values[keep][order]
    starts = np.searchsorted(times, instants - d.window, side="right")
    ends = np.searchsorted(times, instants, side="right")
    return [
        float(values[s:e].mean()) if e > s else None
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
