"""The file worker: file records from JetStream → bytes into object storage → ``files`` rows.

A member of the durable pull consumer ``stride-files`` on the records'
subject of ``STRIDE_FILES`` (see :mod:`stride.wire`), apart from the batch
workers: copying a large file never holds back metrics. For each record:

1. if the object store already holds the blob (``blobs/sha256/…``, the same
   bytes saved before, or this record redelivered after a crash), nothing is
   copied;
2. otherwise the chunks are read from JetStream in order (direct gets) and
   streamed into one object-store put: size and sha256 are checked before
   the last byte is handed over, so a mismatch stores nothing, and a put is
   all or nothing (no half-written object is ever visible);
3. the ``files`` row is written (``ReplacingMergeTree``: a repeat changes nothing);
4. the chunks are purged from the stream and the record is acked.

A crash anywhere redelivers the record and the steps above repeat safely. A
record that cannot succeed (malformed, checksum mismatch, chunks gone) is
dead-lettered with the reason; an unavailable object store or ClickHouse
makes the worker nak it and back off, as the batch worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import queue
from collections.abc import AsyncIterator, Iterator

import pyarrow as pa
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError

from stride.store import AsyncStore, StoreError
from stride.store.objects import ObjectNotFoundError, ObjectStore
from stride.store.schema import FILES_COLUMNS, blob_key
from stride.wire import (
    DLQ_SUBJECT,
    FILE_SUBJECT,
    FILES_STREAM,
    FileRecord,
    WireError,
    chunk_subject,
    decode_file_record,
)

from ._settings import IngestSettings
from .streams import ensure_streams
from .worker import MAX_BACKOFF_S, MIN_BACKOFF_S

log = logging.getLogger("stride.ingest")

__all__ = ["FILES_DURABLE", "FileStats", "FileWorker"]

FILES_DURABLE = "stride-files"
#: The header the SDK numbers chunks with (``stride._uploads.CHUNK_HEADER``).
_CHUNK_HEADER = "Stride-Chunk"
#: Chunks read ahead of the object-store put.
_QUEUE_CHUNKS = 8


class FileStats:
    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0
        self.deduplicated = 0
        self.dead_lettered = 0
        self.errors = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class _Rejected(Exception):
    """The record cannot be stored, however often it is tried (dead-letter it)."""


class FileWorker:
    def __init__(
        self, nc: NatsClient, store: AsyncStore, objects: ObjectStore, settings: IngestSettings
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._store = store
        self._objects = objects
        self._settings = settings
        self._stopping = asyncio.Event()
        self._backoff_s = 0.0
        self.subscribed = False
        self.stats = FileStats()

    def stop(self) -> None:
        self._stopping.set()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        s = self._settings
        config = ConsumerConfig(
            durable_name=FILES_DURABLE,
            ack_wait=s.file_ack_wait_s,
            max_deliver=-1,
            filter_subject=FILE_SUBJECT,
        )
        try:
            return await self._js.pull_subscribe(
                FILE_SUBJECT, durable=FILES_DURABLE, stream=FILES_STREAM, config=config
            )
        except NotFoundError:  # the stream is gone (deleted by hand): make it again
            await ensure_streams(
                self._js, replicas=s.replicas, duplicate_window_s=s.duplicate_window_s
            )
            return await self._js.pull_subscribe(
                FILE_SUBJECT, durable=FILES_DURABLE, stream=FILES_STREAM, config=config
            )

    async def run(self) -> None:
        s = self._settings
        sub = await self._subscribe()
        self.subscribed = True
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(1, timeout=s.fetch_timeout_s)
                except (TimeoutError, NatsTimeoutError):
                    continue
                except Exception as exc:  # stream or consumer gone, connection lost...
                    log.error("files: fetch failed (%s); subscribing again in 1 s", exc)
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(Exception):
                        sub = await self._subscribe()
                    continue
                for msg in msgs:
                    await self._handle(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        alive = asyncio.create_task(self._keep_alive(msg))
        try:
            record = decode_file_record(msg.data)
            await self._store_file(record)
        except (WireError, _Rejected) as exc:
            await self._dead_letter(msg, str(exc))
            return
        except (StoreError, OSError, NatsTimeoutError, TimeoutError) as exc:
            self.stats.errors += 1
            self._backoff_s = min(max(2 * self._backoff_s, MIN_BACKOFF_S), MAX_BACKOFF_S)
            log.error(
                "files: could not store a file (%s: %s); retrying in %.1f s",
                exc.__class__.__name__,
                exc,
                self._backoff_s,
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=self._backoff_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._backoff_s)
            return
        finally:
            alive.cancel()
        self._backoff_s = 0.0
        await msg.ack()

    async def _store_file(self, record: FileRecord) -> None:
        key = blob_key(record.sha256)
        try:
            held = await asyncio.to_thread(self._objects.head, key)
        except ObjectNotFoundError:
            held = None
        if held is not None and held.size == record.size:
            self.stats.deduplicated += 1
        else:
            await self._copy(record, key)
            self.stats.bytes += record.size
        await self._store.insert_arrow("files", FILES_COLUMNS, _row(record))
        self.stats.files += 1
        await self._js.purge_stream(FILES_STREAM, subject=chunk_subject(record.upload))

    async def _copy(self, record: FileRecord, key: str) -> None:
        """Chunks from JetStream into one put, checked before its last byte is handed over."""
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        failed: list[str] = []

        def checked() -> Iterator[bytes]:
            digest = hashlib.sha256()
            size = 0
            while (data := chunks.get()) is not None:
                digest.update(data)
                size += len(data)
                yield data
            if failed:
                raise _Rejected(failed[0])
            if size != record.size or digest.hexdigest() != record.sha256:
                raise _Rejected(
                    f"file {record.name!r} of {record.path}: the chunks hold {size} bytes with "
                    f"sha256 {digest.hexdigest()}, the record says {record.size} bytes with "
                    f"sha256 {record.sha256}; not stored"
                )

        loop = asyncio.get_running_loop()
        put = asyncio.ensure_future(
            asyncio.to_thread(
                self._objects.put, key, checked(), length=record.size, content_type=record.mime
            )
        )

        async def hand_over(item: bytes | None) -> bool:
            """Queue ``item`` for the put; False once the put has ended (failed)."""
            while not put.done():
                try:
                    await loop.run_in_executor(None, chunks.put, item, True, 0.5)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            async for data in self._chunks(record):
                if not await hand_over(data):
                    break  # the put failed: its error is raised below
        except _Rejected as exc:
            failed.append(str(exc))
        finally:
            await hand_over(None)
        await put

    async def _chunks(self, record: FileRecord) -> AsyncIterator[bytes]:
        """The record's chunks in order, each once (a re-sent chunk stored twice is skipped)."""
        subject = chunk_subject(record.upload)
        seq = 1
        index = 0
        while index < record.chunks:
            try:
                msg = await self._js.get_msg(
                    FILES_STREAM, seq=seq, subject=subject, next=True, direct=True
                )
            except NotFoundError:
                raise _Rejected(
                    f"file {record.name!r} of {record.path}: chunk {index} of {record.chunks} "
                    "is not in the stream (expired or purged); not stored"
                ) from None
            seq = (msg.seq or seq) + 1
            got = int((msg.headers or {}).get(_CHUNK_HEADER, -1))
            if got < index:
                continue  # a duplicate of a chunk already read
            if got > index:
                raise _Rejected(
                    f"file {record.name!r} of {record.path}: chunk {index} is missing "
                    f"(found {got} next); not stored"
                )
            index += 1
            yield msg.data or b""

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._settings.file_ack_wait_s / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        meta = msg.metadata
        headers = {
            "Stride-Reason": reason[:1000],
            "Stride-Stream": FILES_STREAM,
            "Nats-Msg-Id": f"dlq-files-{meta.sequence.stream}",
        }
        try:
            await self._js.publish(DLQ_SUBJECT, msg.data, headers=headers, timeout=10.0)
        except Exception as exc:
            log.error("files: cannot dead-letter a record (%s); retrying later", exc)
            await msg.nak(delay=5.0)
            return
        await msg.ack()
        self.stats.dead_lettered += 1
        log.warning("files: record %s dead-lettered: %s", meta.sequence.stream, reason)


def _row(record: FileRecord) -> pa.Table:
    return pa.table(
        {
            "run": [record.path],
            "name": [record.name],
            "ver": pa.array([record.ver], pa.uint64()),
            "upload": [record.upload],
            "writer": [record.writer],
            "category": [record.category],
            "size": pa.array([record.size], pa.uint64()),
            "sha256": [record.sha256],
            "mime": [record.mime],
            "description": [record.description],
            "tags": pa.array([record.tags], pa.list_(pa.string())),
            "metadata": [record.metadata],
            "deleted": pa.array([0], pa.uint8()),
            "updated": pa.array([record.ver], pa.uint64()),
        }
    )
