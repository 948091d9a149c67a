"""A run's saved files: listing, versions, and their bytes with HTTP ranges.

Rows are in ``files`` (one per version, see :mod:`stride.store.schema`); the
bytes are blobs in the object store keyed by sha256. A name's latest version
is the one saved last; versions count from 0 in the order they were saved.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import msgspec
from aiohttp import web

from stride.api_types import FileDoc
from stride.store import AsyncStore, ParamValue
from stride.store.objects import ObjectNotFoundError, ObjectStore
from stride.store.schema import blob_key

from .errors import NotFound, QueryError

__all__ = ["byte_range", "file_versions", "list_files", "pick_version", "send_file"]

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
) -> tuple[list[FileDoc], str | None]:
    """A page of the run's files by name, each at its latest version, and the cursor."""
    params: dict[str, ParamValue] = {"run": run, "after": after or "", "n": limit + 1}
    where = ["run = {run:String}", "deleted = 0", "name > {after:String}"]
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


async def file_versions(store: AsyncStore, run: str, name: str) -> list[FileDoc]:
    """Every version of ``name`` in the run, oldest first; :class:`NotFound` if none."""
    table = await store.query_arrow(
        f"SELECT {_COLUMNS} FROM files FINAL "
        "WHERE run = {run:String} AND name = {name:String} AND deleted = 0 ORDER BY ver",
        {"run": run, "name": name},
    )
    rows = table.to_pylist()
    if not rows:
        raise NotFound(f"run {run} has no file {name!r}")
    return [_doc(r, i, len(rows)) for i, r in enumerate(rows)]


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
    """The bytes of ``doc`` (a range of them, if the request asks), streamed."""
    try:
        asked = byte_range(request.headers.get("Range"), doc.size)
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
    response.headers["ETag"] = f'"{doc.sha256}"'
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
