"""Artifacts on the query side: a project's artifacts, an artifact's versions, one
version (with its files), a run's logged and used artifacts.

Versions and aliases come from :mod:`stride.store.artifacts`; file bytes are
blobs in the object store like saved files' (see :mod:`.files`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from stride.api_types import ArtifactDoc, ArtifactFile, FileDoc
from stride.store import AsyncStore, ParamValue
from stride.store.artifacts import Version, aliases, resolve, versions

from .errors import NotFound

__all__ = [
    "artifact_file",
    "artifact_version",
    "artifact_versions",
    "list_artifacts",
    "run_artifacts",
]


def _doc(
    entity: str,
    project: str,
    name: str,
    version: Version,
    count: int,
    by_alias: dict[str, str],
    *,
    with_files: bool,
    use_as: str = "",
) -> ArtifactDoc:
    try:
        metadata: Any = msgspec.json.decode(version.metadata)
    except msgspec.DecodeError:
        metadata = {}
    files = []
    if with_files:
        files = [ArtifactFile(*entry) for entry in msgspec.json.decode(version.manifest)]
    return ArtifactDoc(
        entity=entity,
        project=project,
        name=name,
        type=version.type,
        version=f"v{version.index}",
        versions=count,
        aliases=sorted(a for a, digest in by_alias.items() if digest == version.digest),
        digest=version.digest,
        size=version.size,
        file_count=version.files,
        producer=version.producer,
        created_at=datetime.fromtimestamp(version.ver / 1e9, UTC).isoformat(),
        description=version.description,
        metadata=metadata if isinstance(metadata, dict) else {},
        files=files,
        use_as=use_as,
    )


async def _versions(
    store: AsyncStore, entity: str, project: str, name: str
) -> tuple[list[Version], dict[str, str]]:
    found = await versions(store, entity, project, name)
    if not found:
        raise NotFound(f"project {entity}/{project} has no artifact {name!r}")
    return found, await aliases(store, entity, project, name)


async def artifact_versions(
    store: AsyncStore, entity: str, project: str, name: str
) -> list[ArtifactDoc]:
    """Every version, ``v0`` first (without their file lists)."""
    found, by_alias = await _versions(store, entity, project, name)
    return [_doc(entity, project, name, v, len(found), by_alias, with_files=False) for v in found]


async def artifact_version(
    store: AsyncStore, entity: str, project: str, name: str, ref: str
) -> ArtifactDoc:
    """The version ``ref`` names (``vN``, ``latest`` or an alias), with its files."""
    found, by_alias = await _versions(store, entity, project, name)
    version = resolve(found, by_alias, ref)
    if version is None:
        known = ", ".join([*(f"v{v.index}" for v in found), *sorted(by_alias)])
        raise NotFound(f"artifact {name!r} has no version {ref!r} (it has: {known})")
    return _doc(entity, project, name, version, len(found), by_alias, with_files=True)


def artifact_file(doc: ArtifactDoc, path: str) -> FileDoc:
    """One file of a version, as the file download takes it."""
    for f in doc.files:
        if f.path == path:
            return FileDoc(
                name=f.path,
                version=0,
                versions=1,
                size=f.size,
                sha256=f.sha256,
                mime=f.mime,
                category="output",
                saved_at=doc.created_at,
            )
    raise NotFound(f"artifact {doc.name}:{doc.version} has no file {path!r}")


async def list_artifacts(
    store: AsyncStore,
    entity: str,
    project: str,
    *,
    type: str | None,
    after: str | None,
    limit: int,
) -> tuple[list[ArtifactDoc], str | None]:
    """A page of the project's artifacts by name, each at its latest version."""
    params: dict[str, ParamValue] = {
        "entity": entity,
        "project": project,
        "after": after or "",
        "n": limit + 1,
    }
    having = ""
    if type:
        having = "HAVING last_type = {type:String} "
        params["type"] = type
    table = await store.query_arrow(
        "SELECT name, argMax(type, ver) AS last_type FROM artifact_events FINAL "
        "WHERE entity = {entity:String} AND project = {project:String} AND kind = 'log' "
        "AND name > {after:String} GROUP BY name " + having + "ORDER BY name LIMIT {n:UInt32}",
        params,
    )
    names: list[str] = [str(n) for n in table.column("name").to_pylist()]
    docs = [
        await artifact_version(store, entity, project, name, "latest") for name in names[:limit]
    ]
    for doc in docs:
        doc.files = []
    return docs, (names[limit - 1] if len(names) > limit else None)


async def run_artifacts(store: AsyncStore, run: str, *, used: bool) -> list[ArtifactDoc]:
    """The artifact versions the run logged (each once) or used, in the order it did."""
    table = await store.query_arrow(
        "SELECT entity, project, name, digest, ref, use_as FROM artifact_events FINAL "
        "WHERE run = {run:String} AND kind = {kind:String} ORDER BY ver",
        {"run": run, "kind": "use" if used else "log"},
    )
    docs: list[ArtifactDoc] = []
    seen: set[tuple[str, str]] = set()
    for row in table.to_pylist():
        key = (row["name"], row["digest"])
        if key in seen or not row["digest"]:
            continue  # logged twice, or used before anything had that name
        seen.add(key)
        found, by_alias = await _versions(store, row["entity"], row["project"], row["name"])
        version = next((v for v in found if v.digest == row["digest"]), None)
        if version is not None:
            docs.append(
                _doc(
                    row["entity"],
                    row["project"],
                    row["name"],
                    version,
                    len(found),
                    by_alias,
                    with_files=False,
                    use_as=row["use_as"],
                )
            )
    return docs
