"""Artifact versions and aliases, read from ``artifact_events`` (ingest and query share this).

Every logging of an artifact is one ``log`` row with the digest of its
manifest. The versions of a name are its distinct digests, numbered ``v0``,
``v1``... in the order each was first logged; ``latest`` is the digest logged
last; a user alias names the digest it was most recently logged with. All of
it is computed from the rows at read time, so two ingest processes recording
at once cannot disagree on a number. The order is the writers' clocks: a
version logged from a machine whose clock was behind, or by an offline run
synced later, takes its place by the time it was logged, and the numbers of
versions after it move up by one (the digest, ``ArtifactDoc.digest``, never
changes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import msgspec

from stride.wire import ArtifactEntry

from ._async import AsyncStore

__all__ = ["Version", "aliases", "manifest_digest", "resolve", "versions"]

_WHERE = "entity = {entity:String} AND project = {project:String} AND name = {name:String}"
_VERSION = re.compile(r"v(\d+)")


@dataclasses.dataclass(frozen=True)
class Version:
    index: int
    digest: str
    ver: int  # when it was first logged (ns)
    producer: str  # the run that first logged it
    type: str
    manifest: str  # JSON: [[path, sha256, size, mime], ...]
    size: int
    files: int
    description: str
    metadata: str


def manifest_digest(entries: list[ArtifactEntry]) -> str:
    """The digest that makes a version: paths, sha256s and sizes, in path order (the
    same content logged again has the same digest, whatever the types or order)."""
    canonical = sorted([e.path, e.sha256, e.size] for e in entries)
    return hashlib.sha256(msgspec.json.encode(canonical)).hexdigest()


def manifest_json(entries: list[ArtifactEntry]) -> str:
    return msgspec.json.encode(sorted([e.path, e.sha256, e.size, e.mime] for e in entries)).decode()


async def versions(store: AsyncStore, entity: str, project: str, name: str) -> list[Version]:
    """Every version of the artifact, ``v0`` first."""
    table = await store.query_arrow(
        "SELECT digest, ver, run, type, manifest, size, files, description, metadata "
        f"FROM artifact_events FINAL WHERE {_WHERE} AND kind = 'log' "
        "ORDER BY digest, ver LIMIT 1 BY digest",
        {"entity": entity, "project": project, "name": name},
    )
    rows = sorted(table.to_pylist(), key=lambda r: (r["ver"], r["digest"]))
    return [
        Version(
            index=i,
            digest=r["digest"],
            ver=r["ver"],
            producer=r["run"],
            type=r["type"],
            manifest=r["manifest"],
            size=r["size"],
            files=r["files"],
            description=r["description"],
            metadata=r["metadata"],
        )
        for i, r in enumerate(rows)
    ]


async def aliases(store: AsyncStore, entity: str, project: str, name: str) -> dict[str, str]:
    """Alias -> digest, ``latest`` included (absent when nothing is logged)."""
    params = {"entity": entity, "project": project, "name": name}
    named = await store.query_arrow(
        "SELECT alias, argMax(digest, ver) AS digest FROM artifact_events FINAL "
        f"ARRAY JOIN aliases AS alias WHERE {_WHERE} AND kind = 'log' GROUP BY alias",
        params,
    )
    found = dict(zip(*(named.column(c).to_pylist() for c in ("alias", "digest")), strict=True))
    latest = await store.query_arrow(
        "SELECT argMax(digest, ver) AS digest, count() AS n FROM artifact_events FINAL "
        f"WHERE {_WHERE} AND kind = 'log'",
        params,
    )
    if latest.column("n")[0].as_py():
        found["latest"] = latest.column("digest")[0].as_py()
    return found


def resolve(all_versions: list[Version], by_alias: dict[str, str], ref: str) -> Version | None:
    """The version ``ref`` names (``vN``, ``latest`` or a user alias), or ``None``."""
    match = _VERSION.fullmatch(ref)
    if match is not None:
        index = int(match.group(1))
        return all_versions[index] if index < len(all_versions) else None
    digest = by_alias.get(ref)
    return next((v for v in all_versions if v.digest == digest), None)
