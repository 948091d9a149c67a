"""A run's saved files: listing, versions, and their bytes with HTTP ranges.

Rows are in ``files`` (one per version, see :mod:`stride.store.schema`); the
bytes are blobs in the object store keyed by sha256. A name's latest version
is the one saved last; versions count from 0 in the order they were saved.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import msgspec
import pyarrow as pa
from aiohttp import web

from stride.api_types import FileDoc, FileUpdate
from stride.store import AsyncStore, ParamValue
from stride.store.objects import ObjectNotFoundError, ObjectStore
from stride.store.schema import FILES_COLUMNS, blob_key

from .errors import NotFound, QueryError, Unavailable

__all__ = [
    "byte_range",
    "delete_file",
    "file_versions",
    "list_files",
    "pick_version",
    "send_file",
    "update_file",
]

_COLUMNS = "name, ver, size, sha256, mime, category, description, tags, metadata"


class RangeNotSatisfiable(QueryError):
    status = 416


async def list_files(
    store: AsyncStore,
    run: str,
    *,
    prefix: str | None,
    category: str | None,
    tag: str | None,
    after: str | None,
    limit: int,
    deleted: bool = False,
) -> tuple[list[FileDoc], str | None]:
    """A page of the run's files by name, each at its latest version, and the cursor
    (the soft-deleted files instead, with ``deleted``)."""
    params: dict[str, ParamValue] = {
        "run": run,
        "after": after or "",
        "n": limit + 1,
        "deleted": int(deleted),
    }
    where = ["run = {run:String}", "deleted = {deleted:UInt8}", "name > {after:String}"]
    if prefix:
        where.append("startsWith(name, {prefix:String})")
        params["prefix"] = prefix
    having: list[str] = []  # on each name's latest version
    if category:
        having.append("category = {category:String}")
        params["category"] = category
    if tag:
        having.append("has(tags, {tag:String})")
        params["tag"] = tag
    # Each name's newest version (LIMIT 1 BY), with its count of versions.
    latest = (
        f"SELECT {_COLUMNS}, count() OVER (PARTITION BY name) AS versions FROM files FINAL "
        f"WHERE {' AND '.join(where)} ORDER BY name, ver DESC LIMIT 1 BY name"
    )
    table = await store.query_arrow(
        f"SELECT * FROM ({latest}) "
        + (f"WHERE {' AND '.join(having)} " if having else "")
        + "ORDER BY name LIMIT {n:UInt32}",
        params,
    )
    rows = table.to_pylist()
    docs = [_doc(r, r["versions"] - 1, r["versions"]) for r in rows[:limit]]
    return docs, (docs[-1].name if len(rows) > limit else None)


async def file_versions(
    store: AsyncStore, run: str, name: str, *, deleted: bool = False
) -> list[FileDoc]:
    """Every version of ``name`` in the run, oldest first (those soft-deleted, with
    ``deleted``); :class:`NotFound` if none."""
    rows = (await _version_rows(store, run, name, deleted)).to_pylist()
    if not rows:
        what = "deleted file" if deleted else "file"
        raise NotFound(f"run {run} has no {what} {name!r}")
    return [_doc(r, i, len(rows)) for i, r in enumerate(rows)]


async def _version_rows(store: AsyncStore, run: str, name: str, deleted: bool) -> pa.Table:
    """The stored rows (every column) of the versions of ``name``, oldest first."""
    return await store.query_arrow(
        "SELECT * FROM files FINAL WHERE run = {run:String} AND name = {name:String} "
        "AND deleted = {deleted:UInt8} ORDER BY ver",
        {"run": run, "name": name, "deleted": int(deleted)},
    )


async def update_file(
    store: AsyncStore, run: str, name: str, version: int | None, update: FileUpdate
) -> None:
    """Apply ``update``: new rows for the changed versions, newer than the stored ones
    (``updated``), which win when read."""
    if update.deleted is False:
        await _set_deleted(store, run, name, False)
    rows = await _version_rows(store, run, name, False)
    if not rows.num_rows:
        raise NotFound(f"run {run} has no file {name!r}")
    edits: dict[str, pa.Array[Any]] = {}
    if update.description is not None:
        edits["description"] = pa.array([update.description])
    if update.tags is not None:
        edits["tags"] = pa.array([update.tags], pa.list_(pa.string()))
    if update.metadata is not None:
        edits["metadata"] = pa.array([msgspec.json.encode(update.metadata).decode()])
    if not edits:
        return
    index = rows.num_rows - 1 if version is None else version
    if not 0 <= index < rows.num_rows:
        raise NotFound(f"file {name!r} has versions 0 to {rows.num_rows - 1}, not {version}")
    row = rows.slice(index, 1)
    updated = pa.array([_newer_than(row)], pa.uint64())
    for column, value in {**edits, "updated": updated}.items():
        row = row.set_column(row.schema.get_field_index(column), column, value)
    await store.insert_arrow("files", FILES_COLUMNS, row.select(list(FILES_COLUMNS)))


async def delete_file(
    store: AsyncStore, objects: ObjectStore | None, run: str, name: str, *, purge: bool
) -> None:
    """Soft-delete every version of ``name`` (hidden, restorable), or with ``purge``
    remove its rows, and the bytes no other file holds."""
    if not purge:
        await _set_deleted(store, run, name, True)
        return
    if objects is None:
        raise Unavailable("purging needs the object store; this service has none (--objects)")
    found = await store.query_arrow(
        "SELECT DISTINCT sha256 FROM files WHERE run = {run:String} AND name = {name:String}",
        {"run": run, "name": name},
    )
    shas: list[str] = [str(sha) for sha in found.column("sha256").to_pylist()]
    if not shas:
        raise NotFound(f"run {run} has no file {name!r}")
    await store.delete_rows(
        "files", "run = {run:String} AND name = {name:String}", {"run": run, "name": name}
    )
    held = await store.query_arrow(
        "SELECT DISTINCT sha256 FROM files WHERE sha256 IN {shas:Array(String)}", {"shas": shas}
    )
    for sha in set(shas) - set(held.column("sha256").to_pylist()):
        # An artifact version may list the same bytes (its files have no files rows).
        listed = await store.query_arrow(
            "SELECT count() AS n FROM artifact_events "
            "WHERE kind = 'log' AND position(manifest, {sha:String}) > 0",
            {"sha": sha},
        )
        if not listed.column("n")[0].as_py():
            await asyncio.to_thread(objects.delete, blob_key(sha))


def _newer_than(rows: pa.Table) -> int:
    """A version for edit rows that wins over ``rows``: now, or later than they are if
    the writer's clock ran ahead of this service's."""
    stored = max(int(u or 0) for u in rows.column("updated").to_pylist())
    return max(time.time_ns(), stored + 1)


async def _set_deleted(store: AsyncStore, run: str, name: str, deleted: bool) -> None:
    rows = await _version_rows(store, run, name, not deleted)
    if not rows.num_rows:
        state = "deleted file" if not deleted else "file"
        raise NotFound(f"run {run} has no {state} {name!r}")
    n = rows.num_rows
    rows = rows.set_column(
        rows.schema.get_field_index("deleted"), "deleted", pa.array([int(deleted)] * n, pa.uint8())
    )
    rows = rows.set_column(
        rows.schema.get_field_index("updated"),
        "updated",
        pa.array([_newer_than(rows)] * n, pa.uint64()),
    )
    await store.insert_arrow("files", FILES_COLUMNS, rows.select(list(FILES_COLUMNS)))


def pick_version(versions: list[FileDoc], version: int | None) -> FileDoc:
    if version is None:
        return versions[-1]
    if not 0 <= version < len(versions):
        raise NotFound(
            f"file {versions[0].name!r} has versions 0 to {len(versions) - 1}, not {version}"
        )
    return versions[version]


def _doc(row: dict[str, Any], version: int, versions: int) -> FileDoc:
    try:
        metadata = msgspec.json.decode(row["metadata"])
    except msgspec.DecodeError:
        metadata = {}
    return FileDoc(
        name=row["name"],
        version=version,
        versions=versions,
        size=row["size"],
        sha256=row["sha256"],
        mime=row["mime"],
        category=row["category"],
        saved_at=datetime.fromtimestamp(row["ver"] / 1e9, UTC).isoformat(),
        description=row["description"],
        tags=list(row["tags"]),
        metadata=metadata if isinstance(metadata, dict) else {},
    )


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` asked for by a ``Range`` header, ``None`` for the whole file.

    One range only (a list of ranges, or another unit, gets the whole file, as
    RFC 9110 allows); a range that starts past the end is not satisfiable.
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if (not first and not last) or size == 0:
        return None
    if not first:  # the last N bytes
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = size if not last else min(size, int(last) + 1)
        if last and int(last) < start:
            return None
    if start >= size:
        raise RangeNotSatisfiable(f"range {header!r} is outside the file's {size} bytes")
    return start, end


async def send_file(request: web.Request, objects: ObjectStore, doc: FileDoc) -> web.StreamResponse:
    """The bytes of ``doc`` (a range of them, if the request asks), streamed.

    ``If-Range`` (RFC 9110): a range is served only if the tag given is this
    version's; otherwise (another version, or a date: there is no modification
    time to compare) the whole file is, so a resumed download never joins parts
    of two versions.
    """
    etag = f'"{doc.sha256}"'
    ranged = request.headers.get("Range")
    if ranged is not None and request.headers.get("If-Range", etag).strip() != etag:
        ranged = None
    try:
        asked = byte_range(ranged, doc.size)
    except RangeNotSatisfiable:
        answer = web.Response(status=416)
        answer.headers["Content-Range"] = f"bytes */{doc.size}"
        return answer
    start, end = asked if asked is not None else (0, doc.size)
    try:
        stream = await asyncio.to_thread(objects.get, blob_key(doc.sha256), start=start, end=end)
    except ObjectNotFoundError:
        raise NotFound(f"the bytes of {doc.name!r} are missing from the object store") from None
    response = web.StreamResponse(status=206 if asked is not None else 200)
    response.content_type = doc.mime
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["ETag"] = etag
    response.headers["Content-Disposition"] = _disposition(doc.name)
    if asked is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{doc.size}"
    try:
        await response.prepare(request)
        chunks: Iterator[bytes] = iter(stream)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            await response.write(chunk)
        await response.write_eof()
    finally:
        await asyncio.to_thread(stream.close)
    return response


def _disposition(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return f"attachment; filename*=UTF-8''{quote(base)}"
