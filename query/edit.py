"""Changing stored runs: ``update`` (name, notes, tags, config, summary) and ``delete``.

The service writes these itself, straight to storage, as one more writer: an
update is a set of run fields at the service's time (``ver``, nanoseconds
since the epoch), so it wins over what writers sent before and loses to what
they send after, as between any two writers.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pyarrow as pa

from stride.api_types import RunUpdate
from stride.store import AsyncStore
from stride.store.run_search import SEARCH_COLUMNS, search_rows
from stride.store.schema import FIELDS_COLUMNS, RUN_ROWS

from .errors import BadRequest

__all__ = ["delete_run", "update_run"]

#: The largest JSON text of one field, as the SDK's limit (``MAX_FIELD_BYTES``).
_MAX_FIELD_BYTES = 256 * 1024
#: Summary keys the service derives from the metrics.
_DERIVED = ("_min", "_max", "_step")


def _fields(update: RunUpdate) -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: value
        for name in ("name", "notes", "tags", "config")
        if (value := getattr(update, name)) is not None
    }
    for key, value in (update.summary or {}).items():
        if not key or key in _DERIVED:
            raise BadRequest(
                f"summary key {key!r}: keys must be non-empty, and _min, _max and _step "
                "are the service's (from the metrics)"
            )
        fields[f"summary.{key}"] = value
    if not fields:
        raise BadRequest("nothing to update: give name, notes, tags, config or summary")
    return fields


async def update_run(
    store: AsyncStore, entity: str, project: str, run_id: str, update: RunUpdate
) -> None:
    """Store the fields ``update`` sets, at this moment's version."""
    ver = time.time_ns()
    names, values = [], []
    for name, value in _fields(update).items():
        text = orjson.dumps(value).decode()
        if len(text) > _MAX_FIELD_BYTES:
            raise BadRequest(
                f"{name} is {len(text) // 1024} KiB as JSON; the limit is "
                f"{_MAX_FIELD_BYTES // 1024} KiB"
            )
        names.append(name)
        values.append(text)
    n = len(names)
    fields = pa.table(
        {
            "entity": [entity] * n,
            "project": [project] * n,
            "run_id": [run_id] * n,
            "field": names,
            "value": values,
            "ver": pa.array([ver] * n, pa.uint64()),
        }
    )
    # As ingest writes them: the fields, then their search rows.
    await store.insert_arrow("run_fields", FIELDS_COLUMNS, fields)
    await store.insert_arrow("run_search", SEARCH_COLUMNS, search_rows(fields))


async def delete_run(
    store: AsyncStore, entity: str, project: str, run_id: str, *, delete_artifacts: bool = False
) -> None:
    """Delete everything stored of the run: fields first (it leaves listings at
    once), then its points, aggregates, keys and files' records, and the record of
    the artifacts it used. The artifact versions it logged stay (other runs may use
    them) unless ``delete_artifacts``: then its loggings go too, and a version no
    other run logged with them."""
    path = f"{entity}/{project}/{run_id}"
    params = {"entity": entity, "project": project, "run_id": run_id, "path": path}
    for table, where in RUN_ROWS:
        await store.delete_rows(table, where, params)
    kinds = "('log', 'use')" if delete_artifacts else "('use')"
    await store.delete_rows("artifact_events", f"run = {{path:String}} AND kind IN {kinds}", params)
