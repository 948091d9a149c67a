"""Runs: fold ``run_fields`` (last write wins per field) into :class:`RunDoc` documents."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import msgspec
import orjson

from stride.api_types import ProjectDoc, RunDoc
from stride.store import AsyncStore
from stride.store.run_search import WRITER_BEAT_KEY, writer_pos
from stride.store.schema import ONCE_PREFIX, WRITER_PREFIX

from .errors import NotFound
from .search import search_run_ids
from .stats import finite

log = logging.getLogger("stride.query")

#: The run fields a writer sets whole, and the type each must have (the identity
#: comes from the path; the summary is assembled from ``summary.<key>`` fields).
_FIELD_TYPES = {
    f.name: f.type
    for f in msgspec.structs.fields(RunDoc)
    if f.name not in ("entity", "project", "id", "path", "summary", "system_metrics", "writers")
}


def _fold(
    entity: str,
    project: str,
    run_id: str,
    fields: dict[str, str],
    lost_after_s: float,
) -> RunDoc:
    """The run document of its fields. The state of a run several writers wrote
    is left as written: it needs their batch times (:func:`_several_writers_states`)."""
    doc: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    writers: dict[str, str] = {}
    for field, raw in sorted(fields.items()):  # "~x" sorts after "x": a plain field wins
        if field.startswith(ONCE_PREFIX):
            field = field.removeprefix(ONCE_PREFIX)
            if field in fields:
                continue
        if field.startswith("summary."):
            summary[field.removeprefix("summary.")] = orjson.loads(raw)
        elif field.startswith(WRITER_PREFIX):
            writers[field.removeprefix(WRITER_PREFIX)] = str(orjson.loads(raw))
        elif field in _FIELD_TYPES:
            doc[field] = orjson.loads(raw)
        # Any other field was sent by a newer SDK than this service: not part of RunDoc.
    run = _typed(entity, project, run_id, doc, summary)
    run.writers = writers
    # One writer (or from before they were kept): silent too long is crashed.
    if len(writers) < 2 and run.state == "running" and run.heartbeat_at:
        try:
            beat = datetime.fromisoformat(run.heartbeat_at).timestamp()
        except ValueError:
            beat = None  # not written by ingest: no evidence either way
        if beat is not None and beat < time.time() - lost_after_s:
            run.state = "crashed"
    return run


def _derive_state(run: RunDoc, beats: dict[int, float], cutoff: float) -> None:
    """The state of a run several writers wrote (as ``search._state``): running
    while a writer that last said ``running`` sent a batch since ``cutoff``; else
    ``crashed`` if the writer that sent the newest batch last said ``running``
    (it died unseen); else the state written last."""
    says = {writer_pos(w): state for w, state in run.writers.items()}
    if any(s == "running" and beats.get(pos, 0.0) >= cutoff for pos, s in says.items()):
        run.state = "running"
        run.finished_at = run.exit_code = None  # another writer's, which ended first
    elif beats:
        newest = max(sorted(beats), key=beats.__getitem__)  # the first on a tie, as SQL
        if says.get(newest) == "running":
            run.state = "crashed"


def _typed(
    entity: str, project: str, run_id: str, doc: dict[str, Any], summary: dict[str, Any]
) -> RunDoc:
    """``doc`` as a :class:`RunDoc`; a field of the wrong type is left at its default.

    The wire carries any JSON for a run field, so the service checks the types
    here, once, rather than hand a client a document it cannot decode.
    """
    path = f"{entity}/{project}/{run_id}"
    identity = {"entity": entity, "project": project, "id": run_id, "path": path}
    try:
        return msgspec.convert({**identity, **doc, "summary": summary}, RunDoc)
    except msgspec.ValidationError:
        pass
    good: dict[str, Any] = {}
    for name, value in doc.items():
        try:
            good[name] = msgspec.convert(value, _FIELD_TYPES[name])
        except msgspec.ValidationError as exc:
            log.warning("run %s: field %r ignored: %s", path, name, exc)
    return RunDoc(entity=entity, project=project, id=run_id, path=path, summary=summary, **good)


async def get_run(
    store: AsyncStore, entity: str, project: str, run_id: str, lost_after_s: float
) -> RunDoc:
    runs = await _fetch(store, entity, project, [run_id], lost_after_s)
    if not runs:
        raise NotFound(f"run {entity}/{project}/{run_id} not found")
    return runs[0]


async def list_runs(
    store: AsyncStore,
    entity: str,
    project: str,
    *,
    filters: dict[str, Any] | None = None,
    per_page: int,
    order: str,
    after: str | None,
    lost_after_s: float,
) -> tuple[list[RunDoc], str | None]:
    """One page of a project's runs that match ``filters`` (see :mod:`.search`) in
    ``order``; ``after`` is the opaque cursor of the page before."""
    ids, cursor = await search_run_ids(
        store,
        entity,
        project,
        filters=filters,
        order=order,
        per_page=per_page,
        after=after,
        lost_after_s=lost_after_s,
    )
    runs = await _fetch(store, entity, project, ids, lost_after_s)
    by_id = {r.id: r for r in runs}
    return [by_id[i] for i in ids if i in by_id], cursor


async def run_exists(store: AsyncStore, entity: str, project: str, run_id: str) -> bool:
    rows = await store.query_arrow(
        "SELECT count() AS n FROM run_fields "
        "WHERE entity = {e:String} AND project = {p:String} AND run_id = {r:String}",
        {"e": entity, "p": project, "r": run_id},
    )
    return bool(rows.column("n")[0].as_py())


#: One query for a page of run documents: their fields (``field``, ``value``) and,
#: for each metric of streams ``default`` (the summary) and ``system`` (the
#: system metrics), its aggregates (``stream``, ``key``...) from ``series_stats``.
#: One query, not one per part: ClickHouse runs the parts in parallel (50 documents
#: of 100k runs: 23 -> 18 ms on two cores, measured with three parts).
_DOCUMENTS = (
    "SELECT run_id, field, argMax(value, ver) AS value, '' AS stream, '' AS key, "
    "nan AS last, nan AS min, nan AS max, toInt64(0) AS last_step FROM run_fields "
    "WHERE entity = {e:String} AND project = {p:String} AND run_id IN {ids:Array(String)} "
    "GROUP BY run_id, field "
    "UNION ALL "
    "SELECT splitByChar('/', run)[3] AS run_id, '' AS field, '' AS value, "
    "toString(stream) AS stream, toString(key) AS key, "
    "argMaxMerge(lv) AS last, min(vmin) AS min, max(vmax) AS max, max(smax) AS last_step "
    "FROM series_stats WHERE run IN {paths:Array(String)} AND stream IN ('default', 'system') "
    "GROUP BY run, stream, key"
)
#: Each writer's newest batch time (``beat``) of the runs ``ids``, by the writer's
#: number (``pos``): read only for runs that several writers wrote, whose state
#: depends on it (see :func:`_derive_state`). A third part of :data:`_DOCUMENTS`
#: cost every page ~5 ms for what most runs never use.
_BEATS = (
    "SELECT run_id, pos, max(num) AS beat FROM run_search "
    "WHERE entity = {e:String} AND project = {p:String} AND run_id IN {ids:Array(String)} "
    "AND key = {beat:String} GROUP BY run_id, pos"
)


#: The columns of a metric's row in the answer to :data:`_DOCUMENTS`.
_METRIC_COLUMNS = ("stream", "key", "last", "min", "max", "last_step")


async def _fetch(
    store: AsyncStore, entity: str, project: str, run_ids: list[str], lost_after_s: float
) -> list[RunDoc]:
    if not run_ids:
        return []
    ids = sorted(run_ids)
    paths = [f"{entity}/{project}/{run_id}" for run_id in ids]
    rows = await store.query_arrow(
        _DOCUMENTS, {"e": entity, "p": project, "ids": ids, "paths": paths}
    )
    if not rows.num_rows:  # no run of these ids (chDB answers no columns at all)
        return []
    fields: dict[str, dict[str, str]] = {}
    metrics: dict[str, list[dict[str, Any]]] = {}
    # Columns, not a dict per row (``to_pylist``: ~5x the cost, and a page of 50
    # documents has thousands of rows, most of them fields).
    cols = rows.to_pydict()
    for i, (run_id, name, value, key) in enumerate(
        zip(cols["run_id"], cols["field"], cols["value"], cols["key"], strict=True)
    ):
        if key:
            metrics.setdefault(run_id, []).append({c: cols[c][i] for c in _METRIC_COLUMNS})
        else:
            fields.setdefault(run_id, {})[name] = value
    runs = [_fold(entity, project, rid, f, lost_after_s) for rid, f in fields.items()]
    await _several_writers_states(store, entity, project, runs, lost_after_s)
    for run in runs:
        found = metrics.get(run.id, [])
        _add_metric_summaries(run, [m for m in found if m["stream"] == "default"])
        run.system_metrics = {
            str(m["key"]): finite(m["last"]) for m in found if m["stream"] == "system"
        }
    return runs


async def _several_writers_states(
    store: AsyncStore, entity: str, project: str, runs: list[RunDoc], lost_after_s: float
) -> None:
    """Set the state of each of ``runs`` that several writers wrote, from each
    writer's newest batch time (:func:`_derive_state`); no query when there is none."""
    several = {run.id: run for run in runs if len(run.writers) > 1 and run.state != "created"}
    if not several:
        return
    rows = await store.query_arrow(
        _BEATS, {"e": entity, "p": project, "ids": sorted(several), "beat": WRITER_BEAT_KEY}
    )
    beats: dict[str, dict[int, float]] = {run_id: {} for run_id in several}
    if rows.num_rows:  # (without rows, chDB answers no columns at all)
        columns = (rows.column(c).to_pylist() for c in ("run_id", "pos", "beat"))
        for run_id, pos, beat in zip(*columns, strict=True):
            beats[run_id][int(pos)] = float(beat)
    cutoff = time.time() - lost_after_s
    for run_id, run in several.items():
        _derive_state(run, beats[run_id], cutoff)


def _add_metric_summaries(run: RunDoc, metrics: list[dict[str, Any]]) -> None:
    """Put each metric's last value in the run's summary, as W&B does; its min and
    max go under ``_min`` and ``_max`` (``summary["_min"]["loss"]``) and the last
    step under ``_step``. A summary key the user set wins. From ``series_stats``
    (stream ``default``): one row per key, whatever the length. Non-finite values
    are ``None`` (JSON has no NaN or infinity)."""
    if not metrics:
        return
    found: dict[str, Any] = {"_min": {}, "_max": {}, "_step": 0}
    for row in metrics:
        key = str(row["key"])
        found[key] = finite(row["last"])
        found["_min"][key] = finite(row["min"])
        found["_max"][key] = finite(row["max"])
        found["_step"] = max(found["_step"], int(row["last_step"]))
    for name, value in found.items():
        run.summary.setdefault(name, value)


async def list_projects(
    store: AsyncStore, entity: str, *, per_page: int, after: str | None
) -> tuple[list[ProjectDoc], str | None]:
    """One page of ``entity``'s projects by name, after the project ``after``."""
    rows = await store.query_arrow(
        "SELECT project, uniqExact(run_id) AS runs, "
        "maxIf(value, field = 'heartbeat_at') AS last FROM run_fields "
        "WHERE entity = {e:String} AND project > {after:String} "
        "GROUP BY project ORDER BY project LIMIT {n:UInt32}",
        {"e": entity, "after": after or "", "n": per_page},
    )
    projects = [
        ProjectDoc(
            entity=entity,
            name=str(row["project"]),
            run_count=int(row["runs"]),
            last_activity=orjson.loads(row["last"]) if row["last"] else None,
        )
        for row in rows.to_pylist()
    ]
    return projects, (projects[-1].name if len(projects) == per_page else None)
