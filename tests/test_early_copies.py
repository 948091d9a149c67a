"""How the file worker's early copies are claimed, refused and cleaned up.

Against a real local object store. The copy itself is a stand-in for the chunk
reader (which needs a writer publishing chunks; ``test_files.py`` runs that end
to end): a put on a thread that a cancellation cannot interrupt, ended the way
the real copy ends it (``_ended``). What these tests pin down is the
bookkeeping around it, which end-to-end runs hit only by chance: a copy
stopped while its put is finishing must still be deleted once the put is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stride.ingest._early import EarlyCopies
from stride.ingest.files import _ended
from stride.store.objects import LocalObjects, ObjectNotFoundError
from stride.store.schema import blob_key, upload_key
from stride.wire import (
    CHUNK_BYTES,
    FILE_WIRE_VERSION,
    FileRecord,
    UploadStart,
    encode_upload_start,
)

UPLOAD = "ab" * 16
DATA = b"x" * (16 * CHUNK_BYTES)
SHA = hashlib.sha256(DATA).hexdigest()


def _hint() -> Any:
    hint = UploadStart(FILE_WIRE_VERSION, UPLOAD, "e/p/r", "m.bin", len(DATA), 16, "x/y")
    return SimpleNamespace(data=encode_upload_start(hint))  # what the callback reads of a Msg


def _record(sha256: str = SHA) -> FileRecord:
    return FileRecord(
        FILE_WIRE_VERSION, "e", "p", "r", "w", UPLOAD, 1, "m.bin", "output",
        len(DATA), sha256, 16, "x/y",
    )  # fmt: skip


class SlowCopy:
    """A copy whose put waits for ``release`` before writing the object."""

    def __init__(self, objects: LocalObjects) -> None:
        self.objects = objects
        self.release = threading.Event()
        self.started = asyncio.Event()

    def _put(self, key: str) -> None:
        assert self.release.wait(10)
        self.objects.put(key, DATA)

    async def __call__(self, hint: UploadStart, key: str) -> str:
        put = asyncio.get_running_loop().run_in_executor(None, self._put, key)
        self.started.set()
        await _ended(put)
        put.result()
        return SHA


def _early(objects: LocalObjects, copy: SlowCopy) -> EarlyCopies:
    async def blocking(call: Any, *args: Any) -> Any:
        return await asyncio.to_thread(call, *args)

    return EarlyCopies(copy, blocking, objects)


async def test_a_claimed_copy_is_moved_to_its_blob(tmp_path: Path) -> None:
    objects = LocalObjects(tmp_path)
    copy = SlowCopy(objects)
    early = _early(objects, copy)
    await early.hinted(_hint())
    await copy.started.wait()
    copy.release.set()
    assert await early.take(_record(), blob_key(SHA))  # waits for the copy to finish
    assert objects.get(blob_key(SHA)).read() == DATA
    with pytest.raises(ObjectNotFoundError):
        objects.head(upload_key(UPLOAD))
    assert early.moved == 1
    assert not await early.take(_record(), blob_key(SHA))  # claimed once only
    await early.close()


async def test_a_copy_of_other_bytes_is_not_used_and_is_deleted(tmp_path: Path) -> None:
    objects = LocalObjects(tmp_path)
    copy = SlowCopy(objects)
    early = _early(objects, copy)
    await early.hinted(_hint())
    copy.release.set()
    assert not await early.take(_record("cd" * 32), blob_key("cd" * 32))
    with pytest.raises(ObjectNotFoundError):
        objects.head(upload_key(UPLOAD))
    with pytest.raises(ObjectNotFoundError):
        objects.head(blob_key("cd" * 32))
    await early.close()


@pytest.mark.parametrize("stop", ["discard", "close"])
async def test_a_copy_stopped_while_its_put_finishes_is_deleted_after_it(
    tmp_path: Path, stop: str
) -> None:
    """The record found the bytes already stored (``discard``), or the worker stops
    (``close``), while the copy's put is in its last write: cancelling the task cannot
    stop that write, so the delete must wait for it."""
    objects = LocalObjects(tmp_path)
    copy = SlowCopy(objects)
    early = _early(objects, copy)
    await early.hinted(_hint())
    await copy.started.wait()
    if stop == "discard":
        early.discard(UPLOAD)
    closing = asyncio.create_task(early.close())
    await asyncio.sleep(0.05)
    copy.release.set()  # the put writes the object only now, after the stop
    await closing
    with pytest.raises(ObjectNotFoundError):
        objects.head(upload_key(UPLOAD))
    assert not list(tmp_path.rglob("*.stride-tmp"))


async def test_hints_beyond_the_limit_or_after_close_start_nothing(tmp_path: Path) -> None:
    objects = LocalObjects(tmp_path)
    copy = SlowCopy(objects)
    started: list[str] = []

    async def counting(hint: UploadStart, key: str) -> str:
        started.append(hint.upload)
        return await copy(hint, key)

    early = EarlyCopies(counting, lambda call, *a: asyncio.to_thread(call, *a), objects)
    for upload in ("a1" * 16, "a2" * 16, "a3" * 16):
        hint = UploadStart(FILE_WIRE_VERSION, upload, "e/p/r", "m", len(DATA), 16, "x/y")
        await early.hinted(SimpleNamespace(data=encode_upload_start(hint)))  # type: ignore[arg-type]
    await early.hinted(SimpleNamespace(data=b"not msgpack"))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert started == ["a1" * 16, "a2" * 16]  # MAX_EARLY at once; a bad hint is ignored
    copy.release.set()
    await early.close()
    await early.hinted(_hint())
    await asyncio.sleep(0.05)
    assert len(started) == 2
    assert not list(tmp_path.rglob("*"))  # both copies deleted: never claimed
