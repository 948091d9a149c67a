"""The file worker: file records from JetStream → bytes into object storage → ``files`` rows.

A member of the durable pull consumer ``stride-files`` on the records'
subject of ``STRIDE_FILES`` (see :mod:`stride.wire`), apart from the batch
workers: copying a large file never holds back metrics. For each record:

1. if the object store already holds the blob (``blobs/sha256/…``, the same
   bytes saved before, or this record redelivered after a crash), nothing is
   copied;
2. if an early copy of a large file, made while its chunks arrived
   (:mod:`stride.ingest._early`), holds exactly the record's bytes, it is
   moved to the blob key;
3. otherwise the chunks are read from JetStream in order (direct gets for a
   chunk or two, a short-lived consumer for more; a chunk re-sent after later
   ones is put back in its place) and
   streamed into one object-store put: size and sha256 are checked before
   the last byte is handed over, so a mismatch stores nothing, and a put is
   all or nothing (no half-written object is ever visible);
4. the ``files`` row is written (``ReplacingMergeTree``: a repeat changes nothing);
5. the chunks are purged from the stream and the record is acked.

A crash anywhere redelivers the record and the steps above repeat safely. A
record that cannot succeed (malformed, checksum mismatch, chunks gone) is
dead-lettered with the reason; an unavailable object store or ClickHouse
makes the worker nak it and back off, as the batch worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import logging
import queue
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pyarrow as pa
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from stride.store import AsyncStore, StoreError
from stride.store.objects import ObjectNotFoundError, ObjectStore
from stride.store.schema import FILES_COLUMNS, UPLOADS_PREFIX, blob_key
from stride.wire import (
    CHUNK_HEADER,
    FILE_SUBJECT,
    FILES_STREAM,
    UPLOAD_SUBJECT,
    FileRecord,
    UploadStart,
    WireError,
    chunk_subject,
    decode_file_record,
)

from ._early import MAX_EARLY, EarlyCopies
from ._records import RecordWorker
from ._settings import IngestSettings

log = logging.getLogger("stride.ingest")
T = TypeVar("T")

__all__ = ["FILES_DURABLE", "FileStats", "FileWorker"]

FILES_DURABLE = "stride-files"
#: Chunks read ahead of the object-store put.
_QUEUE_CHUNKS = 8
#: Records fetched at once, and how many of their files are copied at once.
_FETCH_RECORDS = 64
_PARALLEL_COPIES = 8
#: Chunks fetched per request when a file has more than one.
_CHUNK_BATCH = 16
#: Chunks held that arrived before one re-sent (at least the SDK's window, 8 by default).
_REORDER = 16
#: An early copy waiting for chunks polls this often, and stops after this long
#: without a new one (the writer stopped: its record, if it comes, copies the file).
_FOLLOW_POLL_S = 0.05
_FOLLOW_IDLE_S = 30.0
#: What interrupted writes leave in the object store (an early copy a killed worker
#: never moved, a local put's temporary file) is deleted once unwritten this long:
#: a live early copy is written to or claimed within minutes (``_FOLLOW_IDLE_S``,
#: ``KEEP_S``). Each file worker sweeps when it starts, then this often.
LEFTOVER_AGE = dt.timedelta(hours=1)


class FileStats:
    def __init__(self, worker: FileWorker) -> None:
        self._worker = worker
        self.files = 0
        self.bytes = 0
        self.deduplicated = 0

    def as_dict(self) -> dict[str, int]:
        counts = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {
            **counts,
            "copied_early": self._worker.early.moved,
            "dead_lettered": self._worker.dead_lettered,
            "errors": self._worker.errors,
        }


class _Rejected(Exception):
    """The record cannot be stored, however often it is tried (dead-letter it)."""


class FileWorker(RecordWorker):
    durable = FILES_DURABLE
    subject = FILE_SUBJECT
    what = "files"

    def __init__(
        self, nc: NatsClient, store: AsyncStore, objects: ObjectStore, settings: IngestSettings
    ) -> None:
        super().__init__(nc, store, objects, settings)
        self.early = EarlyCopies(self._copy, self._blocking, objects)
        self.stats = FileStats(self)
        self._threads = ThreadPoolExecutor(
            _PARALLEL_COPIES + MAX_EARLY + 2, thread_name_prefix="stride-files"
        )

    async def run(self) -> None:
        hints = await self._nc.subscribe(UPLOAD_SUBJECT, queue=FILES_DURABLE, cb=self.early.hinted)
        sweeping = asyncio.create_task(self._sweep_leftovers())
        try:
            await super().run()
        finally:
            sweeping.cancel()
            with contextlib.suppress(Exception):
                await hints.unsubscribe()

    async def _sweep_leftovers(self) -> None:
        """Now and every :data:`LEFTOVER_AGE`: delete what killed workers left."""
        while True:
            try:
                swept = await self._blocking(self._objects.sweep, UPLOADS_PREFIX, LEFTOVER_AGE)
            except Exception as exc:
                log.warning("files: could not sweep the object store (%s); trying again later", exc)
            else:
                if swept:
                    log.info("files: deleted %d leftovers of interrupted writes", swept)
            await asyncio.sleep(LEFTOVER_AGE.total_seconds())

    async def _closing(self) -> None:
        await self.early.close()
        self._threads.shutdown(wait=False)

    async def _blocking(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on the worker's own threads: each copy holds one for its put
        (blocked on its queue), so they must not be the loop's shared few."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, call, *args)

    async def _handle(self, msgs: list[Msg]) -> None:
        """Store a fetch of records: their bytes a few at a time, then every row in one
        insert (one part for many small files), then purge their chunks and ack."""
        limit = asyncio.Semaphore(_PARALLEL_COPIES)
        held = await asyncio.gather(*(self._blob(msg, limit) for msg in msgs))
        stored = [(msg, record) for msg, record in zip(msgs, held, strict=True) if record]
        # An artifact's files are listed by its record (ingest.artifacts), not as the run's.
        own = [record for _, record in stored if not record.artifact]
        if own:
            try:
                await self._store.insert_arrow("files", FILES_COLUMNS, _rows(own))
            except StoreError as exc:
                for msg, _ in stored:
                    await self._hand_back(msg, exc)
                return
        self.stats.files += len(stored)
        await asyncio.gather(*(self._done(msg, record) for msg, record in stored))
        if len(stored) == len(msgs):
            self._succeeded()

    async def _done(self, msg: Msg, record: FileRecord) -> None:
        """Purge the stored file's chunks, then ack its record."""
        with contextlib.suppress(Exception):  # chunks left over age out (max_age)
            await self._js.purge_stream(FILES_STREAM, subject=chunk_subject(record.upload))
        await msg.ack()

    async def _blob(self, msg: Msg, limit: asyncio.Semaphore) -> FileRecord | None:
        """The record once its bytes are in the object store; ``None`` if they could
        not be stored (the message is then dead-lettered or handed back)."""
        async with limit:
            try:
                record = decode_file_record(msg.data)
                await self._store_blob(record)
            except (WireError, _Rejected) as exc:
                await self._dead_letter(msg, str(exc))
                return None
            except Exception as exc:  # storage or NATS failing: try again later
                await self._hand_back(msg, exc)
                return None
            return record

    async def _store_blob(self, record: FileRecord) -> None:
        key = blob_key(record.sha256)
        try:
            held = await self._blocking(self._objects.head, key)
        except ObjectNotFoundError:
            held = None
        if held is not None and held.size == record.size:
            self.stats.deduplicated += 1
            self.early.discard(record.upload)
        elif await self.early.take(record, key):
            self.stats.bytes += record.size
        else:
            await self._copy(record, key)
            self.stats.bytes += record.size

    async def _copy(self, upload: FileRecord | UploadStart, key: str) -> str:
        """Chunks from JetStream into one put under ``key``; return their sha256.

        A record's size and sha256 are checked before the put's last byte is handed
        over (a mismatch stores nothing). For an upload hint (an early copy), the
        chunks are read while they arrive and only their size is checked: its record,
        when it comes, is compared with the sha256 returned.
        """
        expected = upload.sha256 if isinstance(upload, FileRecord) else None
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        failed: list[str] = []
        computed: list[str] = []

        def checked() -> Iterator[bytes]:
            digest = hashlib.sha256()
            size = 0
            while (data := chunks.get()) is not None:
                digest.update(data)
                size += len(data)
                if size > upload.size:  # before the put's own length check raises
                    raise _Rejected(
                        f"file {upload.name!r} of {upload.path}: the chunks hold more than "
                        f"the {upload.size} bytes the record says; not stored"
                    )
                yield data
            if failed:
                raise _Rejected(failed[0])
            sha256 = digest.hexdigest()
            if size != upload.size or expected not in (None, sha256):
                raise _Rejected(
                    f"file {upload.name!r} of {upload.path}: the chunks hold {size} bytes with "
                    f"sha256 {sha256}, the record says {upload.size} bytes with "
                    f"sha256 {expected}; not stored"
                )
            computed.append(sha256)

        put = asyncio.ensure_future(
            self._blocking(
                functools.partial(
                    self._objects.put, key, checked(), length=upload.size, content_type=upload.mime
                )
            )
        )

        async def hand_over(item: bytes | None) -> bool:
            """Queue ``item`` for the put (no thread waits on a full queue: the put's own
            thread is the one that empties it); False once the put has ended (failed)."""
            while not put.done():
                try:
                    chunks.put_nowait(item)
                    return True
                except queue.Full:
                    await asyncio.sleep(0.002)
            return False

        try:
            try:
                async with contextlib.aclosing(self._chunks(upload)) as chunks_read:
                    async for data in chunks_read:
                        if not await hand_over(data):
                            break  # the put failed: its error is raised below
            except _Rejected as exc:
                failed.append(str(exc))
            await hand_over(None)
        except BaseException:  # stopped (cancelled, NATS failed): the put must fail and end
            failed.append(f"the copy of {upload.name!r} of {upload.path} was stopped")
            _end_now(chunks)
            await _ended(put)
            raise
        await _ended(put)
        put.result()  # the put's own error, if it failed
        return computed[0]

    async def _chunks(self, record: FileRecord | UploadStart) -> AsyncGenerator[bytes, None]:
        """The upload's chunks in order, each once (a re-sent chunk stored twice is skipped)."""
        index = 0
        if record.chunks == 0:
            return  # an empty file
        # A chunk whose publish failed is sent again after the next ones went through:
        # hold up to _REORDER chunks that arrive early.
        early: dict[int, bytes] = {}
        async with contextlib.aclosing(self._stored_chunks(record)) as stored:
            async for got, data in stored:
                if got < index or got in early:
                    continue  # a duplicate of a chunk already read
                if got > index:
                    if len(early) >= _REORDER:
                        raise _Rejected(
                            f"file {record.name!r} of {record.path}: chunk {index} is missing "
                            f"({len(early)} later ones arrived first); not stored"
                        )
                    early[got] = data
                    continue
                yield data
                index += 1
                while index in early:
                    yield early.pop(index)
                    index += 1
                if index == record.chunks:
                    return
        raise _Rejected(
            f"file {record.name!r} of {record.path}: chunk {index} of {record.chunks} "
            "is not in the stream (expired or purged); not stored"
        )

    async def _stored_chunks(
        self, record: FileRecord | UploadStart
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """(index, bytes) of every message on the upload's chunk subject, in stream order:
        one direct get each for a file of a chunk or two, else through a short-lived
        consumer that delivers them ``_CHUNK_BATCH`` at a time. For an upload hint,
        it waits for chunks still to be published (the caller stops at the last)."""
        subject = chunk_subject(record.upload)
        follow = isinstance(record, UploadStart)
        if record.chunks <= 2 and not follow:
            seq = 1
            while True:
                try:
                    raw = await self._js.get_msg(
                        FILES_STREAM, seq=seq, subject=subject, next=True, direct=True
                    )
                except NotFoundError:
                    return
                seq = (raw.seq or seq) + 1
                yield _index(raw.headers), raw.data or b""
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=subject,
            inactive_threshold=60.0,  # gone by itself if this worker dies
        )
        sub = await self._js.pull_subscribe(subject, stream=FILES_STREAM, config=config)
        last_chunk = time.monotonic()
        try:
            while True:
                try:
                    # Following, a short wait: a fetch returns early only once it has
                    # the whole batch or nothing more is stored.
                    msgs = await sub.fetch(_CHUNK_BATCH, timeout=_FOLLOW_POLL_S if follow else 2.0)
                except (TimeoutError, NatsTimeoutError):
                    if follow and time.monotonic() - last_chunk < _FOLLOW_IDLE_S:
                        continue
                    return  # nothing more on the subject
                last_chunk = time.monotonic()
                for msg in msgs:
                    yield _index(msg.headers), msg.data
                    if msg.metadata.num_pending == 0 and not follow:
                        return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if config.name:
                with contextlib.suppress(Exception):
                    await self._js.delete_consumer(FILES_STREAM, config.name)


def _end_now(chunks: queue.Queue[bytes | None]) -> None:
    """End a put's input at once, dropping chunks it has not read yet (the caller is
    the only producer, so this cannot block)."""
    while True:
        try:
            chunks.put_nowait(None)
            return
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                chunks.get_nowait()


async def _ended(put: asyncio.Future[Any]) -> None:
    """Wait until ``put`` (a call on a thread: it cannot be interrupted) has ended, even
    when cancelled meanwhile; the cancellation is raised once it has. Until then, the
    object it writes may still appear, so whoever stops a copy can clean up after it."""
    cancelled = False
    while not put.done():
        try:
            await asyncio.wait({put})
        except asyncio.CancelledError:
            cancelled = True
    if not put.cancelled():
        put.exception()  # retrieved here: the caller raises what counts
    if cancelled:
        raise asyncio.CancelledError


def _index(headers: dict[str, str] | None) -> int:
    try:
        return int((headers or {})[CHUNK_HEADER])
    except (KeyError, ValueError):
        return -1  # not a chunk: skipped as a duplicate


def _rows(records: list[FileRecord]) -> pa.Table:
    def column(name: str) -> list[object]:
        return [getattr(r, name) for r in records]

    return pa.table(
        {
            "run": [r.path for r in records],
            "name": column("name"),
            "ver": pa.array(column("ver"), pa.uint64()),
            "upload": column("upload"),
            "writer": column("writer"),
            "category": column("category"),
            "size": pa.array(column("size"), pa.uint64()),
            "sha256": column("sha256"),
            "mime": column("mime"),
            "description": column("description"),
            "tags": pa.array(column("tags"), pa.list_(pa.string())),
            "metadata": column("metadata"),
            "deleted": pa.array([0] * len(records), pa.uint8()),
            "updated": pa.array(column("ver"), pa.uint64()),
        }
    )
