"""The delivery agent's file uploads: staged saves (:mod:`stride._files`) to JetStream.

Each staged file goes out as chunks of :data:`~stride.wire.CHUNK_BYTES` on its
own subject of the ``STRIDE_FILES`` stream, then one
:class:`~stride.wire.FileRecord` (size, sha256, chunk count) once every chunk
is acknowledged; ingest copies the chunks into object storage. Then the
staged entry is removed.

* Metrics first: all uploads share a window of ``Settings.file_window``
  chunks awaiting their ack (4 MiB by default), so a large upload never puts
  more than that on the connection ahead of a metric batch.
* Several files at once (:data:`PARALLEL`), so many small files are not one
  round trip each in a row.
* Exactly once, and resumable: each chunk's message id is ``<upload>/<index>``
  and the record's ``file/<upload>``, so JetStream drops a re-sent one. As
  acks arrive (in order), the count of chunks stored is kept in
  ``<entry>.progress``; an agent that resumes the upload (this one after an
  error, or another after the process was killed) re-reads the bytes before
  that point to compute the sha256 and sends from there: only the chunks that
  were in flight at the interruption can be sent twice (JetStream drops them).
* A staged file that cannot be read any more (deleted before a hard link
  could be taken, permissions, shrunk while read) is reported as an error
  (``finish()``'s report names it too) and dropped; NATS errors are retried
  with a growing pause.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from ._artifact_publish import ArtifactPublisher
from ._files import FILES_DIR, Staged, done_path, pending
from .wire import (
    CHUNK_BYTES,
    CHUNK_HEADER,
    FILE_SUBJECT,
    FILE_WIRE_VERSION,
    UPLOAD_SUBJECT,
    ArtifactEntry,
    FileRecord,
    UploadStart,
    chunk_subject,
    encode_file_record,
    encode_upload_start,
    file_message_id,
)

log = logging.getLogger("stride")

__all__ = ["Uploader"]

#: Files uploaded at once.
PARALLEL = 16
#: Files of at least this many chunks (8 MiB) are announced before their first chunk,
#: so that ingest copies them while they arrive (:class:`~stride.wire.UploadStart`).
EARLY_COPY_CHUNKS = 16
#: A staged-files directory changed this recently is listed again at least this often
#: (its modification time may not change for a save made within the same clock tick).
_RESCAN_S = 0.1
_RECENT_NS = 2_000_000_000
_MAX_PAUSE_S = 30.0
#: How long JetStream keeps chunks (``max_age`` of ``STRIDE_FILES``), less a margin.
_CHUNKS_KEPT_S = 6 * 24 * 3600.0
_done = msgspec.json.Encoder()


class _Unreadable(Exception):
    """The staged bytes cannot be read: the upload cannot succeed by retrying."""


class Uploader:
    """Uploads the files staged in the log directories it is given, a few at a time."""

    def __init__(
        self,
        window: int,
        ack_timeout_s: float,
        warn: Callable[[str, str], None],
        wake: Callable[[], None],
    ) -> None:
        self._wake = wake
        self._window = asyncio.Semaphore(window)
        self._ack_timeout_s = ack_timeout_s
        self._warn = warn
        self._staged: dict[Path, dict[str, Staged]] = {}  # files dir -> entry name -> entry
        self._scanned: dict[Path, tuple[int, float]] = {}  # files dir -> (mtime ns, when)
        self._active: dict[str, asyncio.Task[None]] = {}
        self._retry_at: dict[str, float] = {}
        self._pause: dict[str, float] = {}
        #: When a chunk or record was last acknowledged (the agent's "progress").
        self.progress_at = 0.0
        self.files_sent = 0
        self._sent_by_run: collections.Counter[tuple[Path, int]] = collections.Counter()
        self._failed_by_run: collections.defaultdict[tuple[Path, int], list[str]] = (
            collections.defaultdict(list)
        )
        self.last_error: str | None = None
        self.artifacts = ArtifactPublisher(ack_timeout_s, warn, wake)

    def pending(self, log_dir: Path, slot: int | None = None) -> int:
        """Files staged in ``log_dir`` not yet delivered (of run ``slot`` only, if given)."""
        directory = log_dir / FILES_DIR
        entries = self._staged.get(directory, {})
        files = sum(1 for e in entries.values() if slot is None or e.slot == slot)
        return files + self.artifacts.pending(directory, slot)

    def sent(self, log_dir: Path, slot: int) -> int:
        """Files of run ``slot`` of ``log_dir`` delivered by this uploader."""
        return self._sent_by_run[(log_dir / FILES_DIR, slot)]

    def failed(self, log_dir: Path, slot: int) -> list[str]:
        """Files of run ``slot`` of ``log_dir`` this uploader could not read (not sent),
        each as ``"<name>: <why>"``."""
        return self._failed_by_run.get((log_dir / FILES_DIR, slot), [])

    def step(
        self, nc: NatsClient | None, js: JetStreamContext | None, log_dirs: Sequence[Path]
    ) -> int:
        """Look for staged files and start uploads while there is room (``nc`` and its
        ``js`` given: connected); return how many uploads run."""
        now = time.monotonic()
        rescanned: set[Path] = set()
        self._staged = {
            directory: self._scan(directory, now, rescanned)
            for directory in (log_dir / FILES_DIR for log_dir in log_dirs)
        }
        self.artifacts.scan(self._staged, rescanned)
        if nc is None or js is None:
            return len(self._active)
        self.artifacts.step(js, self._staged)
        for directory, entries in self._staged.items():
            for entry in entries.values():
                if len(self._active) >= PARALLEL:
                    return len(self._active)
                if entry.upload in self._active or self._retry_at.get(entry.upload, 0) > now:
                    continue
                task = asyncio.create_task(self._upload(nc, js, directory, entry))
                self._active[entry.upload] = task
                task.add_done_callback(functools.partial(self._ended, entry.upload))
        return len(self._active)

    def invalidate(self) -> None:
        """List every directory again at the next step (``finish()`` is waiting: every
        save made before it must be counted)."""
        self._scanned.clear()

    def _scan(self, directory: Path, now: float, rescanned: set[Path]) -> dict[str, Staged]:
        """The staged entries of ``directory``, listed again only when it may have
        changed: its modification time moved, or it changed so recently that a
        save in the same clock tick would not have moved it."""
        known = self._staged.get(directory)
        try:
            mtime = directory.stat().st_mtime_ns
        except FileNotFoundError:
            self._scanned.pop(directory, None)
            return {}
        last = self._scanned.get(directory)
        if known is not None and last is not None:
            recent = time.time_ns() - mtime < _RECENT_NS
            if mtime == last[0] and not (recent and now - last[1] >= _RESCAN_S):
                return known
        self._scanned[directory] = (mtime, now)
        rescanned.add(directory)
        return pending(directory, known)

    def _ended(self, upload: str, _: asyncio.Task[None]) -> None:
        self._active.pop(upload, None)
        self._wake()  # room for the next upload now, not at the next tick

    async def close(self) -> None:
        await self.artifacts.close()
        for task in list(self._active.values()):
            task.cancel()
        for task in list(self._active.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- one upload -----------------------------------------------------------------------------

    async def _upload(
        self, nc: NatsClient, js: JetStreamContext, directory: Path, entry: Staged
    ) -> None:
        try:
            record = await self._send(nc, js, directory, entry)
        except _Unreadable as exc:
            self.last_error = str(exc)
            log.error("stride: %s; it is not uploaded", exc)
            if not entry.artifact:  # an artifact's own report says it is incomplete
                self._failed_by_run[(directory, entry.slot)].append(f"{entry.name}: {exc}")
            self._forget(directory, entry)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            pause = min(max(2 * self._pause.get(entry.upload, 0.5), 1.0), _MAX_PAUSE_S)
            self._pause[entry.upload] = pause
            self._retry_at[entry.upload] = time.monotonic() + pause
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            self._warn(
                "file-upload",
                f"stride: NATS did not take the file {entry.name!r} of {entry.run_id} "
                f"({self.last_error}); retrying, it is safe in the spool directory",
            )
            return
        if entry.artifact:  # what the artifact's record will list (see ._artifact_publish)
            done = ArtifactEntry(entry.name, record.sha256, record.size, record.mime)
            done_path(directory, entry.artifact, entry.upload).write_bytes(_done.encode(done))
        else:
            self.files_sent += 1
            self._sent_by_run[(directory, entry.slot)] += 1
        self._retry_at.pop(entry.upload, None)
        self._pause.pop(entry.upload, None)
        self._forget(directory, entry)

    def _forget(self, directory: Path, entry: Staged) -> None:
        path = entry.entry_path(directory)
        path.unlink(missing_ok=True)  # first: without its entry, the data is not a save
        entry.data_path(directory).unlink(missing_ok=True)
        entry.progress_path(directory).unlink(missing_ok=True)
        self._staged.get(directory, {}).pop(path.name, None)

    async def _send(
        self, nc: NatsClient, js: JetStreamContext, directory: Path, entry: Staged
    ) -> FileRecord:
        subject = chunk_subject(entry.upload)
        source = entry.bytes_path(directory)
        try:
            stream: BinaryIO = source.open("rb")
        except OSError as exc:
            raise _Unreadable(f"cannot read the saved file {source}: {exc.strerror}") from None
        digest = hashlib.sha256()
        inflight: collections.deque[tuple[int, asyncio.Future[Any]]] = collections.deque()
        info = os.fstat(stream.fileno())
        progress = _Progress(entry.progress_path(directory), info)
        first = progress.read()
        with stream, progress:
            size = info.st_size
            chunks = -(-size // CHUNK_BYTES)
            if chunks >= EARLY_COPY_CHUNKS and first < chunks:  # (all stored: the record)
                path = f"{entry.entity}/{entry.project}/{entry.run_id}"
                hint = UploadStart(
                    FILE_WIRE_VERSION, entry.upload, path, entry.name, size, chunks, entry.mime
                )
                await nc.publish(UPLOAD_SUBJECT, encode_upload_start(hint))
            try:
                for index in range(chunks):
                    data = await asyncio.to_thread(_read_and_hash, stream, digest, index, size)
                    if index < first:
                        continue  # stored before: hashed, not sent again
                    await self._window.acquire()
                    future = asyncio.ensure_future(
                        js.publish(
                            subject,
                            data,
                            headers={
                                "Nats-Msg-Id": f"{entry.upload}/{index}",
                                CHUNK_HEADER: str(index),
                            },
                            timeout=self._ack_timeout_s,
                        )
                    )
                    future.add_done_callback(lambda _: self._window.release())
                    inflight.append((index, future))
                    while inflight and inflight[0][1].done():
                        self._settled(progress, *inflight.popleft())
                while inflight:
                    await asyncio.wait({inflight[0][1]})
                    self._settled(progress, *inflight.popleft())
            finally:
                for _, pending_ack in inflight:
                    pending_ack.cancel()
        record = FileRecord(
            v=FILE_WIRE_VERSION,
            entity=entry.entity,
            project=entry.project,
            run_id=entry.run_id,
            writer=directory.parent.name,  # the log's: <spool>/<writer>/files
            upload=entry.upload,
            ver=entry.ver,
            name=entry.name,
            category=entry.category,
            size=size,
            sha256=digest.hexdigest(),
            chunks=chunks,
            mime=entry.mime,
            description=entry.description,
            tags=entry.tags,
            metadata=entry.metadata,
            artifact=entry.artifact,
        )
        await js.publish(
            FILE_SUBJECT,
            encode_file_record(record),
            headers={"Nats-Msg-Id": file_message_id(entry.upload)},
            timeout=self._ack_timeout_s,
        )
        self.progress_at = time.monotonic()
        return record

    def _settled(self, progress: _Progress, index: int, future: asyncio.Future[Any]) -> None:
        future.result()  # raises the publish's error
        progress.write(index + 1)  # acks settle in order: every chunk before is stored
        self.progress_at = time.monotonic()


class _Progress:
    """How many leading chunks of an upload JetStream has acknowledged, kept in a
    small file beside the staged entry (page cache: it survives the process), with
    what identifies the bytes they came from (inode, size, modification time) and
    when it was written. A resume starts over when the bytes changed since (the
    stored chunks would not match them) or when JetStream has aged them out."""

    def __init__(self, path: Path, source: os.stat_result) -> None:
        self._path = path
        self._source = f"{source.st_ino} {source.st_size} {source.st_mtime_ns}"
        self._fd: int | None = None

    def read(self) -> int:
        try:
            chunks, source, written = self._path.read_text().split("|")
            fresh = time.time() - float(written) < _CHUNKS_KEPT_S
            return int(chunks) if source == self._source and fresh else 0
        except (OSError, ValueError):
            return 0

    def write(self, chunks: int) -> None:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self._fd, f"{chunks:020d}|{self._source}|{time.time():.3f}".encode(), 0)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_and_hash(stream: BinaryIO, digest: Any, index: int, size: int) -> bytes:
    """Chunk ``index`` of ``stream`` (read in order), added to ``digest``."""
    want = min(CHUNK_BYTES, size - index * CHUNK_BYTES)
    data = stream.read(want)
    if len(data) != want:
        name = getattr(stream, "name", "the file")
        raise _Unreadable(
            f"the saved file {name} shrank while it was uploaded ({size} bytes when the "
            "upload started); save a copy that is not being rewritten"
        )
    digest.update(data)
    return data
