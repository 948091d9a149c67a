"""Copies of large files made while their chunks arrive.

The SDK announces a file of 16 chunks or more with an
:class:`~stride.wire.UploadStart` (plain NATS: one file worker of the queue
group gets it) before publishing its first chunk. That worker reads the chunks
as they are published into a put under :func:`~stride.store.schema.upload_key`,
so by the time the file record comes (after the last chunk's ack) the copy is
done or nearly. The record's sha256 is then compared with the one computed
while copying: equal, the object is moved to its blob key (a rename locally, a
copy made by the S3 server); otherwise it is deleted and the record is copied
as before.

The hint is only a head start. Lost, refused (two early copies at once per
worker), or its record handled by another worker: the record's own copy runs,
and the unclaimed early copy is deleted after :data:`KEEP_S`. One left by a
killed worker stays under ``uploads/``, never listed or read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg

from stride.store.objects import ObjectNotFoundError, ObjectStore
from stride.store.schema import upload_key
from stride.wire import FileRecord, UploadStart, WireError, decode_upload_start

log = logging.getLogger("stride.ingest")

__all__ = ["KEEP_S", "MAX_EARLY", "EarlyCopies"]

#: Early copies running at once per worker (each holds one put and its queue).
MAX_EARLY = 2
#: How long a finished early copy waits for its record before it is deleted.
KEEP_S = 600.0


class EarlyCopies:
    """The early copies of one file worker, by upload id.

    ``copy(hint, key)`` streams the hinted upload's chunks, as they arrive, into a
    put under ``key`` and returns their sha256; ``blocking(call, *args)`` runs an
    object-store call off the event loop.
    """

    def __init__(
        self,
        copy: Callable[[UploadStart, str], Awaitable[str]],
        blocking: Callable[..., Awaitable[Any]],
        objects: ObjectStore,
    ) -> None:
        self._copy = copy
        self._blocking = blocking
        self._objects = objects
        self._copies: dict[str, asyncio.Task[str | None]] = {}
        self._timers: set[asyncio.Task[None]] = set()  # unclaimed copies, deleted later
        self._cleanups: set[asyncio.Task[None]] = set()  # stopped copies, being deleted
        self._closed = False
        self.moved = 0

    async def hinted(self, msg: Msg) -> None:
        """The subscription's callback: start an early copy if there is room."""
        if self._closed:
            return
        try:
            hint = decode_upload_start(msg.data)
        except WireError as exc:
            log.warning("files: an upload hint was ignored: %s", exc)
            return
        current = self._copies.get(hint.upload)
        if current is not None and not _stopped(current):
            return  # already copying (a resumed upload hinted again), or copied
        if sum(1 for task in self._copies.values() if not task.done()) >= MAX_EARLY:
            return  # the record's own copy will do
        task = asyncio.create_task(self._run(hint), name=f"early-copy-{hint.upload}")
        self._copies[hint.upload] = task
        task.add_done_callback(lambda _: self._expire_later(hint.upload, task))

    async def take(self, record: FileRecord, key: str) -> bool:
        """Move the early copy of ``record``'s upload to ``key`` if it holds exactly the
        record's bytes (waiting for it to finish); False if there is none to use."""
        task = self._copies.pop(record.upload, None)
        if task is None:
            return False
        sha256 = await task
        if sha256 is None:
            return False
        if sha256 != record.sha256:  # the writer re-sent different bytes: not these
            await self._delete(record.upload)
            return False
        try:
            await self._blocking(self._objects.move, upload_key(record.upload), key)
        except ObjectNotFoundError:  # removed meanwhile (by hand): copy it again
            return False
        except Exception:  # the store failed: the record comes back and tries again
            self._copies.setdefault(record.upload, task)
            raise
        self.moved += 1
        return True

    def discard(self, upload: str) -> None:
        """The record was stored without the early copy: stop it, then delete it."""
        task = self._copies.pop(upload, None)
        if task is not None:
            task.cancel()  # nothing if it has ended
            self._track(self._cleanups, self._delete_after(upload, task))

    async def close(self) -> None:
        """Stop the copies under way and delete every one never claimed."""
        self._closed = True
        for timer in list(self._timers):
            timer.cancel()
        stopping = list(self._copies.items())
        self._copies.clear()
        for upload, task in stopping:
            task.cancel()
            self._track(self._cleanups, self._delete_after(upload, task))
        if self._cleanups:
            await asyncio.wait(list(self._cleanups))

    async def _delete_after(self, upload: str, task: asyncio.Task[str | None]) -> None:
        """Delete the copy once its task, and the put under it, have ended (a put
        finishing its last write would otherwise leave the object after the delete)."""
        await asyncio.wait({task})
        await self._delete(upload)

    async def _run(self, hint: UploadStart) -> str | None:
        """The sha256 of the chunks copied, or None if the copy stopped (the writer
        stopped sending, a chunk is missing, the store failed)."""
        try:
            return await self._copy(hint, upload_key(hint.upload))
        except Exception as exc:
            log.info(
                "files: the early copy of %r of %s stopped (%s); its record will copy it",
                hint.name,
                hint.path,
                exc,
            )
            return None

    def _expire_later(self, upload: str, task: asyncio.Task[str | None]) -> None:
        async def expire() -> None:
            await asyncio.sleep(KEEP_S)
            if self._copies.get(upload) is task:
                del self._copies[upload]
                await self._delete(upload)

        if not task.cancelled() and not self._closed:
            self._track(self._timers, expire())

    @staticmethod
    def _track(tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _delete(self, upload: str) -> None:
        try:
            await self._blocking(self._objects.delete, upload_key(upload))
        except Exception as exc:  # left under uploads/: never read
            log.warning("files: cannot delete the early copy %s (%s)", upload_key(upload), exc)


def _stopped(task: asyncio.Task[str | None]) -> bool:
    return task.done() and (task.cancelled() or task.result() is None)
