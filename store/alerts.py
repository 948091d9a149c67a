"""Which alerts a run has, as its project defines them (ingest and query share this).

A run attaches an alert with its field ``alerts.<name>``; the project's first
definition of the name (table ``alerts``) is the one that counts.
"""

from __future__ import annotations

from ._async import AsyncStore

__all__ = ["ALERT_FIELD_PREFIX", "attached_alerts"]

#: The run fields that attach alerts (as the SDK writes them).
ALERT_FIELD_PREFIX = "alerts."


async def attached_alerts(store: AsyncStore, paths: list[str]) -> dict[str, dict[str, str]]:
    """For each run of ``paths`` (``entity/project/run_id``) with alerts, each alert's
    name and its project's definition (JSON text)."""
    parts = [p.split("/", 2) for p in paths]
    table = await store.query_arrow(
        "SELECT f.entity AS entity, f.project AS project, f.run_id AS run_id, "
        "f.name AS name, a.definition AS definition "
        "FROM (SELECT DISTINCT entity, project, run_id, "
        "      substring(field, {skip:UInt32}) AS name FROM run_fields "
        "      WHERE entity IN {e:Array(String)} AND project IN {p:Array(String)} "
        "      AND run_id IN {r:Array(String)} AND startsWith(field, {prefix:String})) AS f "
        "INNER JOIN (SELECT entity, project, name, argMax(definition, ver) AS definition "
        "      FROM alerts WHERE entity IN {e:Array(String)} AND project IN {p:Array(String)} "
        "      GROUP BY entity, project, name) AS a "
        "ON a.entity = f.entity AND a.project = f.project AND a.name = f.name",
        {
            "e": sorted({e for e, _, _ in parts}),
            "p": sorted({p for _, p, _ in parts}),
            "r": sorted({r for _, _, r in parts}),
            "prefix": ALERT_FIELD_PREFIX,
            "skip": len(ALERT_FIELD_PREFIX) + 1,
        },
    )
    wanted = set(paths)
    found: dict[str, dict[str, str]] = {}
    for row in table.to_pylist():
        path = f"{row['entity']}/{row['project']}/{row['run_id']}"
        if path in wanted:  # the three IN lists also match other combinations
            found.setdefault(path, {})[row["name"]] = row["definition"]
    return found
