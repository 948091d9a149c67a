"""A project's folders: each path some run is in or whose details were set, with
its details (last write wins per detail) and how many runs it holds."""

from __future__ import annotations

from typing import Any

import orjson

from stride.api_types import FolderDoc
from stride.store import AsyncStore
from stride.store.schema import FOLDER_DETAILS

__all__ = ["list_folders"]

#: Each run's current folder (from ``run_search``: the newest of its rows of key
#: ``folder`` and ``pos`` 0, if a string) counted per folder; beside it, every
#: folder detail set.
_FOLDERS = (
    "SELECT folder AS path, count() AS runs, '' AS field, '' AS value FROM ("
    "  SELECT run_id, argMaxIf(if(kind = 3, str, ''), ver, pos = 0) AS folder FROM run_search "
    "  WHERE entity = {e:String} AND project = {p:String} AND key = 'folder' GROUP BY run_id"
    ") WHERE folder != '' AND startsWith(folder, {prefix:String}) GROUP BY folder "
    "UNION ALL "
    "SELECT path, 0 AS runs, field, argMax(value, ver) AS value FROM folder_fields "
    "WHERE entity = {e:String} AND project = {p:String} AND startsWith(path, {prefix:String}) "
    "GROUP BY path, field"
)


async def list_folders(
    store: AsyncStore, entity: str, project: str, prefix: str = ""
) -> list[FolderDoc]:
    """The project's folders whose path starts with ``prefix``, by path."""
    rows = await store.query_arrow(_FOLDERS, {"e": entity, "p": project, "prefix": prefix})
    folders: dict[str, dict[str, Any]] = {}
    for row in rows.to_pylist():
        folder = folders.setdefault(row["path"], {"path": row["path"], "run_count": 0})
        if row["field"] in FOLDER_DETAILS:  # only these: a FolderDoc has no other
            folder[row["field"]] = orjson.loads(row["value"])
        elif not row["field"]:
            folder["run_count"] = int(row["runs"])
    return [FolderDoc(**_typed(folders[path])) for path in sorted(folders)]


def _typed(folder: dict[str, Any]) -> dict[str, Any]:
    """The details as :class:`FolderDoc` has them (a writer's JSON is any JSON)."""
    if not isinstance(folder.get("metadata", {}), dict):
        folder["metadata"] = {}
    tags = folder.get("tags", [])
    folder["tags"] = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
    description = folder.get("description")
    folder["description"] = description if isinstance(description, str) else None
    return folder
