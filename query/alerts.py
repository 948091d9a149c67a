"""A run's alerts: their definitions, last evaluation and every change of state."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import msgspec

from stride.api_types import AlertDefinition, AlertDoc, AlertTransition
from stride.store import AsyncStore
from stride.store.alerts import attached_alerts

__all__ = ["MAX_TRANSITIONS", "run_alerts"]

#: The newest transitions returned per alert.
MAX_TRANSITIONS = 1000
_DEFINITION = msgspec.json.Decoder(AlertDefinition)


async def run_alerts(store: AsyncStore, run: str) -> list[AlertDoc]:
    """The alerts attached to ``run`` (``entity/project/run_id``), by name."""
    defined = (await attached_alerts(store, [run])).get(run, {})
    if not defined:
        return []
    params: dict[str, str | int] = {"run": run, "n": MAX_TRANSITIONS}
    status = await store.query_arrow(
        "SELECT alert, argMax(at, ver) AS at, argMax(state, ver) AS state, "
        "argMax(value, ver) AS value FROM alert_status WHERE run = {run:String} GROUP BY alert",
        params,
    )
    changes = await store.query_arrow(
        "SELECT alert, at, state, previous, value FROM alert_transitions FINAL "
        "WHERE run = {run:String} ORDER BY alert, at DESC LIMIT {n:UInt32} BY alert",
        params,
    )
    docs = {
        name: AlertDoc(name=name, definition=_DEFINITION.decode(text))
        for name, text in sorted(defined.items())
    }
    evaluated: dict[str, float] = {}
    for row in status.to_pylist():
        doc = docs.get(row["alert"])
        if doc is not None:
            doc.state, doc.evaluated_at = row["state"], _iso(row["at"])
            doc.value = _finite(row["value"])
            evaluated[doc.name] = row["at"]
    for row in reversed(changes.to_pylist()):  # oldest first
        doc = docs.get(row["alert"])
        if doc is None:
            continue
        doc.transitions.append(
            AlertTransition(
                at=_iso(row["at"]),
                state=row["state"],
                previous=row["previous"],
                value=_finite(row["value"]),
            )
        )
        # A change is stored before the status of its round: never show an older state.
        if row["at"] > evaluated.get(doc.name, -math.inf):
            doc.state, doc.evaluated_at = row["state"], _iso(row["at"])
            doc.value = _finite(row["value"])
            evaluated[doc.name] = row["at"]
    return list(docs.values())


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
