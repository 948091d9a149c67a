"""Runs: fold ``run_fields`` (last write wins per field) into run documents."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import orjson

from stride.store import DATABASE, AsyncStore
from stride.store.params import string_array
from stride.store.schema import ONCE_PREFIX

from .errors import BadRequest, NotFound

Doc = dict[str, Any]


def _fold(
    entity: str, project: str, run_id: str, fields: dict[str, str], lost_after_s: float
) -> Doc:
    doc: dict[str, Any] = {
        "entity": entity,
        "project": project,
        "id": run_id,
        "path": f"{entity}/{project}/{run_id}",
        "name": None,
        "state": "created",
        "config": {},
        "summary": {},
        "tags": [],
        "notes": None,
        "folder": None,
        "created_at": None,
        "heartbeat_at": None,
        "finished_at": None,
        "exit_code": None,
    }
    for field, raw in sorted(fields.items()):  # "~x" sorts after "x": a plain field wins
        if field.startswith(ONCE_PREFIX):
            field = field.removeprefix(ONCE_PREFIX)
            if field in fields:
                continue
        value = orjson.loads(raw)
        if field.startswith("summary."):
            doc["summary"][field.removeprefix("summary.")] = value
        else:
            doc[field] = value
    if doc["state"] == "running" and doc["heartbeat_at"]:
        age = time.time() - datetime.fromisoformat(doc["heartbeat_at"]).timestamp()
        if age > lost_after_s:
            doc["state"] = "crashed"
    return doc


async def get_run(
    store: AsyncStore, entity: str, project: str, run_id: str, lost_after_s: float
) -> Doc:
    runs = await _fetch(store, entity, project, [run_id], lost_after_s)
    if not runs:
        raise NotFound(f"run {entity}/{project}/{run_id} not found")
    return runs[0]


async def list_runs(
    store: AsyncStore,
    entity: str,
    project: str,
    *,
    per_page: int,
    order: str,
    after: str | None,
    lost_after_s: float,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a project's runs by creation time; ``after`` is the opaque cursor."""
    if order not in ("-created_at", "+created_at", "created_at"):
        raise BadRequest(f"order must be '-created_at' or '+created_at', got {order!r}")
    descending = order == "-created_at"
    params: dict[str, Any] = {
        "e": entity,
        "p": project,
        "n": per_page,
        "created": ONCE_PREFIX + "created_at",
    }
    having = ""
    if after:
        try:
            created, run_id = orjson.loads(after)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            raise BadRequest(
                "invalid cursor 'after': pass back the 'next' value unchanged"
            ) from None
        params.update(c=str(created), r=str(run_id))
        cmp = "<" if descending else ">"
        having = f"HAVING (created, run_id) {cmp} ({{c:String}}, {{r:String}})"
    direction = "DESC" if descending else "ASC"
    page = await store.query_arrow(
        f"SELECT run_id, argMax(value, ver) AS created FROM {DATABASE}.run_fields "
        "WHERE entity = {e:String} AND project = {p:String} AND field = {created:String} "
        f"GROUP BY run_id {having} "
        f"ORDER BY created {direction}, run_id {direction} LIMIT {{n:UInt32}}",
        params,
    )
    ids = [str(i) for i in page.column("run_id").to_pylist()]
    created = [str(c) for c in page.column("created").to_pylist()]
    runs = await _fetch(store, entity, project, ids, lost_after_s)
    by_id = {r["id"]: r for r in runs}
    ordered = [by_id[i] for i in ids if i in by_id]
    cursor = orjson.dumps([created[-1], ids[-1]]).decode() if len(ids) == per_page else None
    return ordered, cursor


async def run_exists(store: AsyncStore, entity: str, project: str, run_id: str) -> bool:
    rows = await store.query_arrow(
        f"SELECT count() AS n FROM {DATABASE}.run_fields "
        "WHERE entity = {e:String} AND project = {p:String} AND run_id = {r:String}",
        {"e": entity, "p": project, "r": run_id},
    )
    return bool(rows.column("n")[0].as_py())


async def _fetch(
    store: AsyncStore, entity: str, project: str, run_ids: list[str], lost_after_s: float
) -> list[dict[str, Any]]:
    if not run_ids:
        return []
    rows = await store.query_arrow(
        f"SELECT run_id, field, argMax(value, ver) AS value FROM {DATABASE}.run_fields "
        "WHERE entity = {e:String} AND project = {p:String} AND run_id IN {ids:Array(String)} "
        "GROUP BY run_id, field",
        {"e": entity, "p": project, "ids": string_array(run_ids)},
    )
    fields: dict[str, dict[str, str]] = {}
    for run_id, field, value in zip(
        rows.column("run_id").to_pylist(),
        rows.column("field").to_pylist(),
        rows.column("value").to_pylist(),
        strict=True,
    ):
        fields.setdefault(str(run_id), {})[str(field)] = str(value)
    return [_fold(entity, project, rid, f, lost_after_s) for rid, f in fields.items()]
