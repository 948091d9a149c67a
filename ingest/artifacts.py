"""The artifact worker: artifact records from JetStream → ``artifact_events`` rows.

A member of the durable consumer ``stride-artifacts`` on
:data:`~stride.wire.ARTIFACT_SUBJECT`. A ``log`` record lists its files by
sha256; it is recorded once every one of those bytes is in the object store
(the file worker may still be copying them: until then the record is handed
back and tried again, a little later each time up to a minute; it is
dead-lettered, naming a missing file, only once it is older than
:data:`GIVE_UP_S`, the time ``STRIDE_FILES`` keeps chunks: by then its files
can no longer arrive). A ``use`` record is resolved to the
version its reference names at that moment and recorded with that version's
digest; one that names no version yet (the artifact may be on its way) is
tried again each second, and after :data:`USE_TRIES` recorded as naming none.

Rows are keyed by the record's id, so a redelivered record changes nothing.
"""

from __future__ import annotations

import asyncio
import time

import pyarrow as pa
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from stride.store import AsyncStore, StoreError
from stride.store.artifacts import aliases, manifest_digest, manifest_json, resolve, versions
from stride.store.objects import ObjectNotFoundError, ObjectStore
from stride.store.schema import ARTIFACT_EVENTS_COLUMNS, blob_key
from stride.wire import ARTIFACT_SUBJECT, ArtifactRecord, WireError, decode_artifact_record

from ._records import RecordWorker
from ._settings import IngestSettings

__all__ = ["ARTIFACTS_DURABLE", "GIVE_UP_S", "ArtifactWorker"]

ARTIFACTS_DURABLE = "stride-artifacts"
#: Age of a record whose files are still not stored when it is dead-lettered: the
#: ``max_age`` of ``STRIDE_FILES`` (see :mod:`.streams`).
GIVE_UP_S = 7 * 24 * 3600.0


#: Deliveries of a ``use`` record whose reference names no version yet (its
#: artifact may still be on its way) before it is recorded as naming none.
USE_TRIES = 30


class _NotYet(Exception):
    """What the record needs is not stored yet: try again in a second."""


class ArtifactWorker(RecordWorker):
    durable = ARTIFACTS_DURABLE
    subject = ARTIFACT_SUBJECT
    what = "artifacts"

    def __init__(
        self, nc: NatsClient, store: AsyncStore, objects: ObjectStore, settings: IngestSettings
    ) -> None:
        super().__init__(nc, store, objects, settings)
        self.recorded = 0

    async def _handle(self, msgs: list[Msg]) -> None:
        ready: list[tuple[Msg, dict[str, object]]] = []
        for msg in msgs:
            try:
                record = decode_artifact_record(msg.data)
                last_try = msg.metadata.num_delivered >= USE_TRIES
                ready.append((msg, await self._row(record, last_try)))
            except WireError as exc:
                await self._dead_letter(msg, str(exc))
            except _NotYet as exc:
                meta = msg.metadata
                if time.time() - meta.timestamp.timestamp() > GIVE_UP_S:
                    await self._dead_letter(msg, str(exc))
                else:
                    await self._hand_back(msg, exc, delay=min(60.0, float(meta.num_delivered)))
            except (StoreError, OSError) as exc:
                await self._hand_back(msg, exc)
        if not ready:
            return
        rows = [row for _, row in ready]
        table = pa.table(
            {
                column: pa.array([row[column] for row in rows], _TYPES.get(column, pa.string()))
                for column in ARTIFACT_EVENTS_COLUMNS
            }
        )
        try:
            await self._store.insert_arrow("artifact_events", ARTIFACT_EVENTS_COLUMNS, table)
        except StoreError as exc:
            for msg, _ in ready:
                await self._hand_back(msg, exc)
            return
        self.recorded += len(ready)
        for msg, _ in ready:
            await msg.ack()
        self._succeeded()

    async def _row(self, record: ArtifactRecord, last_try: bool) -> dict[str, object]:
        row: dict[str, object] = {
            "entity": record.entity,
            "project": record.project,
            "name": record.name,
            "ver": record.ver,
            "event": record.id,
            "kind": record.kind,
            "run": record.path,
            "type": record.type,
            "digest": "",
            "aliases": record.aliases,
            "manifest": "[]",
            "size": 0,
            "files": 0,
            "description": record.description,
            "metadata": record.metadata,
            "ref": record.ref,
            "use_as": record.use_as,
        }
        if record.kind == "log":
            await self._check_stored(record)
            row["digest"] = manifest_digest(record.entries)
            row["manifest"] = manifest_json(record.entries)
            row["size"] = sum(e.size for e in record.entries)
            row["files"] = len(record.entries)
        else:
            found = await versions(self._store, record.entity, record.project, record.name)
            named = await aliases(self._store, record.entity, record.project, record.name)
            version = resolve(found, named, record.ref)
            if version is None and not last_try:
                raise _NotYet(f"artifact {record.name}:{record.ref} names no version yet")
            row["digest"] = version.digest if version is not None else ""
        return row

    async def _check_stored(self, record: ArtifactRecord) -> None:
        for entry in record.entries:
            try:
                await asyncio.to_thread(self._objects.head, blob_key(entry.sha256))
            except ObjectNotFoundError:
                raise _NotYet(
                    f"artifact {record.name!r} of {record.path}: the bytes of {entry.path!r} "
                    f"(sha256 {entry.sha256}) are not in the object store"
                ) from None


_TYPES = {
    "ver": pa.uint64(),
    "size": pa.uint64(),
    "files": pa.uint32(),
    "aliases": pa.list_(pa.string()),
}
