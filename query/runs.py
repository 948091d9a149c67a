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
from stride.store.schema import ONCE_PREFIX, SERIES_STATS_MERGE

from .errors import NotFound
from .search import search_run_ids
from .stats import finite

log = logging.getLogger("stride.query")

#: The run fields a writer sets whole, and the type each must have (the identity
#: comes from the path; the summary is assembled from ``summary.<key>`` fields).
_FIELD_TYPES = {
    f.name: f.type
    for f in msgspec.structs.fields(RunDoc)
    if f.name not in ("entity", "project", "id", "path", "summary")
}


def _fold(
    entity: str, project: str, run_id: str, fields: dict[str, str], lost_after_s: float
) -> RunDoc:
    doc: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for field, raw in sorted(fields.items()):  # "~x" sorts after "x": a plain field wins
        if field.startswith(ONCE_PREFIX):
            field = field.removeprefix(ONCE_PREFIX)
            if field in fields:
                continue
        if field.startswith("summary."):
            summary[field.removeprefix("summary.")] = orjson.loads(raw)
        elif field in _FIELD_TYPES:
            doc[field] = orjson.loads(raw)
        # Any other field was sent by a newer SDK than this service: not part of RunDoc.
    run = _typed(entity, project, run_id, doc, summary)
    if run.state == "running" and run.heartbeat_at:
        try:
            beat = datetime.fromisoformat(run.heartbeat_at).timestamp()
        except ValueError:
            beat = None  # not written by ingest: no evidence either way
        if beat is not None and time.time() - beat > lost_after_s:
            run.state = "crashed"
    return run


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


async def _fetch(
    store: AsyncStore, entity: str, project: str, run_ids: list[str], lost_after_s: float
) -> list[RunDoc]:
    if not run_ids:
        return []
    rows = await store.query_arrow(
        "SELECT run_id, field, argMax(value, ver) AS value FROM run_fields "
        "WHERE entity = {e:String} AND project = {p:String} AND run_id IN {ids:Array(String)} "
        "GROUP BY run_id, field",
        {"e": entity, "p": project, "ids": sorted(run_ids)},
    )
    fields: dict[str, dict[str, str]] = {}
    for run_id, field, value in zip(
        rows.column("run_id").to_pylist(),
        rows.column("field").to_pylist(),
        rows.column("value").to_pylist(),
        strict=True,
    ):
        fields.setdefault(str(run_id), {})[str(field)] = str(value)
    runs = [_fold(entity, project, rid, f, lost_after_s) for rid, f in fields.items()]
    await _add_metric_summaries(store, runs)
    return runs


async def _add_metric_summaries(store: AsyncStore, runs: list[RunDoc]) -> None:
    """Put each metric's last value in its run's summary, as W&B does; its min and
    max go under ``_min`` and ``_max`` (``summary["_min"]["loss"]``) and the last
    step under ``_step``. A summary key the user set wins. Read from
    ``series_stats`` (stream ``default``): one row per key, whatever the length.
    Non-finite values are ``None`` (JSON has no NaN or infinity)."""
    if not runs:
        return
    by_path = {run.path: run for run in runs}
    rows = await store.query_arrow(
        f"SELECT run, key, {SERIES_STATS_MERGE} FROM series_stats "
        "WHERE run IN {runs:Array(String)} AND stream = 'default' GROUP BY run, key",
        {"runs": sorted(by_path)},
    )
    metrics: dict[str, dict[str, Any]] = {}
    for row in rows.to_pylist():
        found = metrics.setdefault(str(row["run"]), {"_min": {}, "_max": {}, "_step": 0})
        key = str(row["key"])
        found[key] = finite(row["last"])
        found["_min"][key] = finite(row["min"])
        found["_max"][key] = finite(row["max"])
        found["_step"] = max(found["_step"], int(row["last_step"]))
    for path, found in metrics.items():
        summary = by_path[path].summary
        for name, value in found.items():
            summary.setdefault(name, value)


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
