"""Alerts evaluated by ingest as data arrives (Simvue's ``add_alert``).

A run attaches an alert with the run field ``alerts.<name>`` (the definition as
JSON, see :class:`~stride.api_types.AlertDefinition`). The first definition of
a name in a project to *arrive* is the alert, for every run that names it: a
``create`` on a NATS key-value entry decides, and that definition is stored in
``alerts``. Definitions that fail the SDK's checks are logged and ignored.

Evaluation is driven by the data, never by a timer polling the database:

* a run's *clock* is the newest ``_timestamp`` of the points and events its
  batches bring (capped at ingest's own clock plus a minute, so one writer's
  clock far ahead cannot skip the alert past real data);
* an alert is evaluated at the instants ``T = k * frequency`` (Unix seconds)
  the clock has passed by :data:`GRACE_S` since its last evaluation (so that
  batches of the same moment other workers are still storing are in), from
  the instant at or before the run's first data, at most the newest
  :data:`MAX_INSTANTS` at once; when a writer ends the run (its last batch
  sets ``finished``, ``failed``, ``cancelled`` or ``crashed``), up to the
  instant after its last data, without waiting: a metrics alert takes the mean of the points
  of ``metric`` whose ``_timestamp`` lies in ``(T - window, T]`` (NaN left
  out; no point: no evaluation, the state stays), an events alert counts the
  events and log lines holding ``pattern`` in that window (``critical`` when
  there is one);
* the last evaluation is ``alert_status``; every change of state is a row of
  ``alert_transitions`` and, when the alert says so, a notification
  (:mod:`.notify`).

Evaluations run in a task of their own, after the fetch is acknowledged: an
alert never holds up ingest. Each fetch hands its runs' data spans to the
task (merged while it is busy), which evaluates up to 8 alerts at once.

Several ingest workers share the stream, so batches of one run reach several
of them. Each reads the points from storage (written by whichever worker
stored them), and the evaluations of one alert on one run are serialized by
its key-value entry, updated with compare-and-set. The entry holds the last
instant and state and, as an outbox, the changes of state that instant made:
a worker writes the entry first, then the transitions and notifications, then
marks the outbox flushed. A worker that loses the race computes nothing from
stale data; one that finds an outbox not flushed (its writer died) flushes it
again, which stores the same rows and publishes notifications JetStream drops
as duplicates (by id, within its duplicate window).

The end of a run with alerts (a writer's last batch) is kept in the bucket
too (``due.*``), written before its fetch is acknowledged and deleted once
evaluated: every worker looks for ends left there when it starts and every
:data:`_SWEEP_S`, so an end whose worker died, or whose evaluation failed, is
evaluated though the run sends nothing more.

What is not seen: a point that arrives more than :data:`GRACE_S` after its
instant was evaluated (a writer lagging behind the others, a spool synced
later in pieces) does not change that evaluation; other work lost with an
ingest process (after its fetch was acknowledged, before evaluation; a stop
gets one last round of at most a few seconds), or changes whose storing failed
after the entry was updated, wait for the run's next data or its end.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from stride._alerts import check_definition
from stride.api_types import AlertDefinition
from stride.errors import UsageError
from stride.store import AsyncStore
from stride.store.alerts import ALERT_FIELD_PREFIX, attached_alerts
from stride.store.schema import ALERT_STATUS_COLUMNS, ALERT_TRANSITIONS_COLUMNS, ALERTS_COLUMNS
from stride.wire import Batch

from .notify import Notification, publish_notification

log = logging.getLogger("stride.ingest")

__all__ = ["ALERTS_BUCKET", "MAX_INSTANTS", "AlertEvaluator", "AlertsHandler"]

#: The NATS key-value bucket of alert definitions and evaluations.
ALERTS_BUCKET = "stride_alerts"
#: At most this many instants are evaluated at once (a backlog synced days
#: later): the newest; the older ones are skipped, and the log says so.
MAX_INSTANTS = 1000
#: A run's clock is never ahead of ingest's own by more than this.
_AHEAD_S = 60.0
#: Instants are evaluated this long after the clock passes them, so that batches
#: of the same moment that other workers are still storing are in (a run's
#: end is evaluated at once: nothing more is coming).
GRACE_S = 2.0
#: The states that end a writer: its last batch, after which the run's final
#: stretch is evaluated without waiting for more data.
_ENDED = frozenset({'"finished"', '"failed"', '"cancelled"', '"crashed"'})
#: How long a worker trusts what it knows of a run's alerts before reading them
#: again (another worker may have stored a new one meanwhile).
_KNOWN_FOR_S = 10.0
_PARALLEL = 8
_LAST_ROUND_S = 5.0
#: A run's end, kept in the bucket (``due.<run digest>``) from the fetch that
#: brought it until its alerts are evaluated: work an ingest process dies with is
#: found and done by a live one (every worker looks this often).
_DUE_PREFIX = "due."
_SWEEP_S = 30.0
#: JetStream's error codes for a write whose expected last revision is not the key's.
_WRONG_LAST_REVISION = (10071, 10164)
_DEFINITION = msgspec.json.Decoder(AlertDefinition)


class _Entry(msgspec.Struct):
    """An alert's last evaluation on a run, as its key-value entry holds it."""

    index: int  # the last instant evaluated, as a multiple of the frequency
    state: str  # after it
    at: float | None = None  # the last instant that had data, its value
    value: float | None = None
    #: The outbox: (at, state, previous, value) of the changes the last update
    #: made, and whether they are stored and sent.
    changes: list[tuple[float, str, str, float]] = []
    flushed: bool = True


_ENTRY = msgspec.json.Decoder(_Entry)


class _Due(msgspec.Struct):
    """A run's end waiting for its evaluation: the span of its last fetch."""

    run: str
    lo: float
    hi: float


_DUE = msgspec.json.Decoder(_Due)


@dataclasses.dataclass(frozen=True)
class Span:
    """The times of a run's new data, and whether a writer ended it (``final``)."""

    lo: float
    hi: float
    final: bool = False

    def __or__(self, other: Span) -> Span:
        return Span(min(self.lo, other.lo), max(self.hi, other.hi), self.final or other.final)


@dataclasses.dataclass
class Prepared:
    """What one fetch brings: definitions and the span of data of each run."""

    #: (entity, project, name) -> (definition JSON, the batch's ver)
    definitions: dict[tuple[str, str, str], tuple[str, int]]
    #: run path -> the span of ``_timestamp`` of its points and events.
    spans: dict[str, Span]
    #: run path -> names of the alerts this fetch attached.
    attached: dict[str, set[str]]


class AlertsHandler:
    """Registers the fetch's alert definitions, then hands its runs' data spans to
    the :class:`AlertEvaluator` (registered after the handlers that store points
    and events)."""

    name = "alerts"
    parts = frozenset({"set", "metrics", "events"})

    def __init__(self, evaluator: AlertEvaluator) -> None:
        self._evaluator = evaluator

    def prepare(self, batches: Sequence[Batch]) -> Prepared:
        definitions: dict[tuple[str, str, str], tuple[str, int]] = {}
        spans: dict[str, Span] = {}
        attached: dict[str, set[str]] = {}
        for b in batches:
            path = f"{b.entity}/{b.project}/{b.run_id}"
            for field, value in b.set.items():
                if field.startswith(ALERT_FIELD_PREFIX):
                    name = field.removeprefix(ALERT_FIELD_PREFIX)
                    attached.setdefault(path, set()).add(name)
                    key = (b.entity, b.project, name)
                    if key not in definitions or b.ver < definitions[key][1]:
                        definitions[key] = (value, b.ver)
            times = [np.frombuffer(m.timestamps) for m in b.metrics if m.timestamps]
            times.append(np.array([e.timestamp for e in b.events], dtype=np.float64))
            stamps = np.concatenate(times)
            stamps = stamps[np.isfinite(stamps)]
            span = None
            if stamps.size:
                span = Span(float(stamps.min()), float(stamps.max()))
            if b.set.get("state") in _ENDED:  # a writer's last batch: often no data in it
                span = (span or Span(b.ver / 1e9, b.ver / 1e9)) | Span(math.inf, 0.0, True)
            if span is not None:
                spans[path] = spans[path] | span if path in spans else span
        return Prepared(definitions, spans, attached)

    async def write(self, store: AsyncStore, prepared: Prepared) -> int:
        if prepared.definitions:
            await self._evaluator.define(store, prepared.definitions)
        await self._evaluator.keep_due({p: s for p, s in prepared.spans.items() if s.final})
        self._evaluator.submit(prepared.spans, prepared.attached)
        return 0

    def start(self) -> None:
        """Start the evaluations (the worker calls it when it starts): runs' ends
        left by a worker that died are evaluated without waiting for new data."""
        self._evaluator.start()

    async def close(self) -> None:
        """Stop the evaluations (the worker calls it when it stops)."""
        await self._evaluator.close()


@dataclasses.dataclass
class _Known:
    alerts: dict[str, AlertDefinition]
    until: float


class AlertEvaluator:
    """Evaluates the alerts of the runs whose data arrived, in a task of its own (one
    per ingest worker; any number share the key-value bucket)."""

    def __init__(self, js: JetStreamContext, store: AsyncStore, *, replicas: int = 1) -> None:
        self._js = js
        self._store = store
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._known: dict[str, _Known] = {}
        self._pending: dict[str, Span] = {}
        #: run path -> revision of the newest ``due.*`` entry of its end this worker
        #: kept or found (deleted only at that revision: a newer end stays due).
        self._due_revision: dict[str, int] = {}
        self._attached: set[str] = set()  # runs whose alerts a fetch just named
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.evaluations = 0
        self.transitions = 0

    # ---- definitions (in the fetch's write: before it is acknowledged) --------------------------

    async def define(
        self, store: AsyncStore, definitions: dict[tuple[str, str, str], tuple[str, int]]
    ) -> None:
        """Make each definition its project's alert unless one arrived before it, and
        store the alert that won."""
        kv = await self._bucket()
        rows: dict[str, list[Any]] = {c: [] for c in ALERTS_COLUMNS}
        for (entity, project, name), (text, _) in definitions.items():
            try:
                definition = check_definition(name, _DEFINITION.decode(text))
            except (msgspec.DecodeError, UsageError) as exc:
                log.warning("alerts: %s/%s: alert %r ignored: %s", entity, project, name, exc)
                continue
            key = "def." + _digest(f"{entity}/{project}\0{name}")
            try:
                await kv.create(key, msgspec.json.encode(definition))
            except KeyWrongLastSequenceError:  # defined before: that one is the alert
                entry = await kv.get(key)
                try:
                    definition = _DEFINITION.decode(entry.value or b"")
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning(
                        "alerts: %s/%s: stored alert %r unreadable: %s", entity, project, name, exc
                    )
                    continue
            for column, cell in zip(
                ALERTS_COLUMNS,
                (entity, project, name, msgspec.json.encode(definition).decode(), 0),
                strict=True,
            ):
                rows[column].append(cell)
        if rows["name"]:
            table = pa.table({**rows, "ver": pa.array(rows["ver"], pa.uint64())})
            await store.insert_arrow("alerts", ALERTS_COLUMNS, table)

    # ---- the evaluation task --------------------------------------------------------------------

    def submit(self, spans: dict[str, Span], attached: dict[str, set[str]]) -> None:
        """Queue the runs' new data for evaluation (merged with what already waits)."""
        ceiling = time.time() + _AHEAD_S
        for path, span in spans.items():
            span = Span(min(span.lo, ceiling), min(span.hi, ceiling), span.final)
            self._pending[path] = self._pending[path] | span if path in self._pending else span
        self._attached |= attached.keys()
        if self._pending:
            self._wake.set()
            self.start()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="alerts")

    async def keep_due(self, ends: dict[str, Span]) -> None:
        """Keep the runs' ends in the bucket until they are evaluated (in the fetch's
        write, before it is acknowledged)."""
        if ends:  # only runs with alerts (this fetch's fields and definitions are stored)
            with_alerts = await attached_alerts(self._store, list(ends))
            ends = {path: span for path, span in ends.items() if with_alerts.get(path)}
        if ends:
            kv = await self._bucket()
            for path, span in ends.items():
                due = msgspec.json.encode(_Due(path, span.lo, span.hi))
                self._note_due(path, await kv.put(_DUE_PREFIX + _digest(path), due))

    def _note_due(self, path: str, revision: int) -> None:
        self._due_revision[path] = max(revision, self._due_revision.get(path, 0))

    async def _due(self) -> dict[str, Span]:
        """The runs' ends kept in the bucket (by any worker) and not yet evaluated."""
        kv = await self._bucket()
        found: dict[str, Span] = {}
        watcher = await kv.watch(_DUE_PREFIX + ">", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:  # the end of what is stored
                    break
                try:
                    due = _DUE.decode(entry.value or b"")
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.warning("alerts: unreadable %s dropped", entry.key)
                    await kv.delete(entry.key)
                    continue
                found[due.run] = Span(due.lo, due.hi, True)
                self._note_due(due.run, entry.revision or 0)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return found

    async def close(self) -> None:
        """Stop the task; what waits gets one last round, of at most a few seconds."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending, self._pending = self._pending, {}
        if pending:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._round(pending, self._attached), _LAST_ROUND_S)

    async def _loop(self) -> None:
        sweep_at = 0.0  # look for runs' ends left by a dead worker at once, then every _SWEEP_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, sweep_at - time.monotonic()))
            self._wake.clear()
            if time.monotonic() >= sweep_at:
                sweep_at = time.monotonic() + _SWEEP_S
                try:
                    self.submit(await self._due(), {})
                except Exception:
                    log.exception("alerts: could not read the runs' ends waiting; tries again")
            pending, self._pending = self._pending, {}
            attached, self._attached = self._attached, set()
            if not pending:
                continue
            try:
                await self._round(pending, attached)
            except Exception:
                log.exception(
                    "alerts: %d run(s) not evaluated; their next data retries", len(pending)
                )

    async def _round(self, pending: dict[str, Span], attached: set[str]) -> None:
        due = {
            p: self._due_revision[p]
            for p, s in pending.items()
            if s.final and p in self._due_revision
        }
        runs = await self._alerts_of(list(pending), attached)
        limit = asyncio.Semaphore(_PARALLEL)
        status: list[tuple[str, str, _Entry]] = []
        failed: set[str] = set()

        async def one(path: str, name: str, definition: AlertDefinition) -> None:
            async with limit:
                try:
                    entry = await self._evaluate(path, name, definition, pending[path])
                except Exception:
                    log.exception("alerts: %r on %s failed; its next data retries", name, path)
                    failed.add(path)
                    return
                if entry is not None and entry.at is not None:
                    status.append((path, name, entry))

        await asyncio.gather(
            *(one(p, n, d) for p, alerts in runs.items() for n, d in alerts.items())
        )
        if status:  # one insert per round, not one per alert
            table = pa.table(
                {
                    "run": [path for path, _, _ in status],
                    "alert": [name for _, name, _ in status],
                    "at": [e.at for _, _, e in status],
                    "state": [e.state for _, _, e in status],
                    "value": [math.nan if e.value is None else e.value for _, _, e in status],
                    "ver": pa.array([round((e.at or 0) * 1e9) for _, _, e in status], pa.uint64()),
                }
            )
            await self._store.insert_arrow("alert_status", ALERT_STATUS_COLUMNS, table)
        done = {p: revision for p, revision in due.items() if p not in failed}
        if done:  # no longer due (a failed one is tried again at the next sweep)
            kv = await self._bucket()
            for path, revision in done.items():
                try:
                    await kv.delete(_DUE_PREFIX + _digest(path), last=revision)
                except APIError as exc:
                    if exc.err_code not in _WRONG_LAST_REVISION:
                        raise
                    # A newer end was kept meanwhile: it stays due.
                if self._due_revision.get(path) == revision:
                    del self._due_revision[path]

    async def _alerts_of(
        self, paths: list[str], attached: set[str]
    ) -> dict[str, dict[str, AlertDefinition]]:
        now = time.monotonic()
        never = _Known({}, -math.inf)
        stale = [p for p in paths if p in attached or self._known.get(p, never).until < now]
        if stale:
            found = await attached_alerts(self._store, stale)
            for path in stale:
                alerts: dict[str, AlertDefinition] = {}
                for name, text in found.get(path, {}).items():
                    with contextlib.suppress(msgspec.DecodeError):
                        alerts[name] = _DEFINITION.decode(text)
                self._known[path] = _Known(alerts, now + _KNOWN_FOR_S)
            if len(self._known) > 100_000:  # runs long gone: forget them
                self._known = {p: k for p, k in self._known.items() if k.until >= now}
        return {p: self._known[p].alerts for p in paths if self._known[p].alerts}

    # ---- one alert on one run -------------------------------------------------------------------

    async def _evaluate(self, run: str, name: str, d: AlertDefinition, span: Span) -> _Entry | None:
        """Evaluate the instants the span's data passed (all of them when final);
        return the entry written (``None``: none)."""
        kv = await self._bucket()
        key = "run." + _digest(f"{run}\0{name}")
        for _ in range(8):  # another worker updated the entry: read it again
            last: _Entry | None = None
            revision: int | None = None
            try:
                found = await kv.get(key)
                revision = found.revision
                last = _ENTRY.decode(found.value or b"")
            except KeyNotFoundError:
                pass
            except (msgspec.DecodeError, msgspec.ValidationError):  # start the entry again
                log.warning("alerts: %r on %s: unreadable entry replaced", name, run)
            try:
                if last is not None and not last.flushed:  # its writer died: finish its work
                    await self._flush(run, name, d, last)
                    last.flushed = True
                    revision = await kv.update(key, msgspec.json.encode(last), last=revision)
                f = d.frequency
                newest = (
                    math.ceil(span.hi / f) if span.final else math.floor((span.hi - GRACE_S) / f)
                )
                lo = max(span.lo, span.hi - (MAX_INSTANTS + 1) * f)  # bounded, even for -1e308
                first = math.floor(lo / f) if last is None else last.index + 1
                if first > newest:
                    if last is None:  # the run's first data, not due yet: start from it
                        await _write_entry(kv, key, _Entry(first - 1, "ok"), revision)
                    return None
                if newest - first >= MAX_INSTANTS:
                    log.info(
                        "alerts: %r on %s: %d instants to evaluate; the newest %d only",
                        name, run, newest - first + 1, MAX_INSTANTS,
                    )  # fmt: skip
                    first = newest - MAX_INSTANTS + 1
                instants = np.arange(first, newest + 1, dtype=np.float64) * d.frequency
                values = await _measure(self._store, run, d, instants)
                entry = self._next(last, newest, d, instants, values)
                revision = await _write_entry(kv, key, entry, revision)
            except KeyWrongLastSequenceError:
                continue
            if not entry.flushed:
                await self._flush(run, name, d, entry)
                entry.flushed = True
                with contextlib.suppress(KeyWrongLastSequenceError):  # a later one flushed it
                    await kv.update(key, msgspec.json.encode(entry), last=revision)
            return entry
        log.warning("alerts: %r on %s: its entry kept changing; its next data retries", name, run)
        return None

    def _next(
        self,
        last: _Entry | None,
        newest: int,
        d: AlertDefinition,
        instants: np.ndarray,
        values: list[float | None],
    ) -> _Entry:
        """The entry after evaluating ``values`` at ``instants``, from ``last``."""
        state = last.state if last else "ok"
        entry = _Entry(newest, state, last.at if last else None, last.value if last else None)
        for at, value in zip(instants.tolist(), values, strict=True):
            if value is None:
                continue  # no data in the window: no evaluation, the state stays
            new = "critical" if (value > 0 if d.source == "events" else d.breached(value)) else "ok"
            if new != entry.state:
                entry.changes.append((at, new, entry.state, value))
            entry.state, entry.at, entry.value = new, at, value
            self.evaluations += 1
        entry.flushed = not entry.changes
        return entry

    async def _flush(self, run: str, name: str, d: AlertDefinition, entry: _Entry) -> None:
        """Store the entry's changes of state and send their notifications (again:
        both are idempotent)."""
        if not entry.changes:
            return
        at, state, previous, value = (list(c) for c in zip(*entry.changes, strict=True))
        n = len(at)
        cells = ([run] * n, [name] * n, at, state, previous, value)
        table = pa.table(dict(zip(ALERT_TRANSITIONS_COLUMNS, cells, strict=True)))
        await self._store.insert_arrow("alert_transitions", ALERT_TRANSITIONS_COLUMNS, table)
        self.transitions += n
        if d.notification == "none":
            return
        for when, new, before, measured in entry.changes:
            notice = Notification(
                alert=name,
                run=run,
                state=new,
                previous=before,
                at=when,
                value=measured,
                channel=d.notification,
                target=d.target,
                summary=d.summary(measured, new),
                description=d.description,
            )
            await publish_notification(self._js, notice)

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(ALERTS_BUCKET)
            except BucketNotFoundError:
                self._kv = await self._js.create_key_value(
                    bucket=ALERTS_BUCKET, history=1, replicas=self._replicas
                )
        return self._kv


async def _write_entry(kv: KeyValue, key: str, entry: _Entry, revision: int | None) -> int:
    """Write ``entry`` if the key is still at ``revision`` (``None``: absent); its new
    revision. :class:`KeyWrongLastSequenceError` if another worker wrote first."""
    value = msgspec.json.encode(entry)
    if revision is None:
        return await kv.create(key, value)
    return await kv.update(key, value, last=revision)


def _digest(text: str) -> str:
    """A key-value key for any text (keys allow only a few characters)."""
    return hashlib.sha1(text.encode()).hexdigest()


async def _measure(
    store: AsyncStore, run: str, d: AlertDefinition, instants: np.ndarray
) -> list[float | None]:
    """Per instant ``T``: the mean of the metric over ``(T - window, T]`` (metrics
    alerts; ``None`` where the window holds no point, or only +inf and -inf), or
    the count of events holding the pattern (events alerts)."""
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
        counts = _window_sums(times, np.ones_like(times), instants, d.window)
        return [float(n) for n in counts]
    table = await store.query_arrow(
        "SELECT argMax(timestamp, ver) AS t, argMax(value, ver) AS v FROM points "
        "WHERE run = {run:String} AND stream = {stream:String} AND key = {key:String} "
        "AND timestamp > {lo:Float64} AND timestamp <= {hi:Float64} GROUP BY step",
        {"run": run, "stream": d.stream, "key": d.metric or "", "lo": lo, "hi": hi},
    )
    times, values = table.column("t").to_numpy(), table.column("v").to_numpy()
    keep = ~np.isnan(values) & ~np.isnan(times)
    order = np.argsort(times[keep], kind="stable")
    times, values = times[keep][order], values[keep][order]
    count = _window_sums(times, np.ones_like(values), instants, d.window)
    total = _window_sums(times, values, instants, d.window)
    means: list[float | None] = []
    for n, s in zip(count.tolist(), total.tolist(), strict=True):
        mean = s / n if n else math.nan
        means.append(None if math.isnan(mean) else mean)  # empty, or +inf with -inf
    return means


def _window_sums(
    times: np.ndarray, weights: np.ndarray, instants: np.ndarray, window: float
) -> np.ndarray:
    """Per instant ``T``, the sum of ``weights`` whose (sorted) ``times`` lie in
    ``(T - window, T]``. Each window is summed on its own (not as differences of
    one running sum, which a huge value would spoil for every later window)."""
    starts = np.searchsorted(times, instants - window, side="right")
    ends = np.searchsorted(times, instants, side="right")
    padded = np.append(weights, 0.0)  # reduceat needs every index inside the array
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN are answers here
        sums = np.add.reduceat(padded, np.column_stack((starts, ends)).ravel())[::2]
    return np.where(ends > starts, sums, 0.0)
