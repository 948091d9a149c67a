"""Saved files end to end: SDK → NATS (chunks) → ingest → object store → query API.

Against a real ``stride up`` (nats-server, chDB, a local object directory) and,
for S3, ``weed mini``.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

import stride
from stride.errors import NotFoundError, UsageError
from stride.store.errors import ObjectNotFoundError
from stride.store.objects import open_objects
from stride.store.schema import blob_key
from stride.wire import (
    CHUNK_BYTES,
    FILE_SUBJECT,
    FILE_WIRE_VERSION,
    FileRecord,
    chunk_subject,
    encode_file_record,
    file_message_id,
)

from .conftest import STRIDE, StrideUp, free_port, stride_up, wait_for, wait_run
from .weed import Weed
from .weed import weed as weed  # the fixture

MIB = 1 << 20


@dataclass(frozen=True)
class Objects:
    """Where ``stride up`` keeps file bytes in a test: its data directory, or an S3 bucket."""

    url: str

    def args(self) -> tuple[str, ...]:
        return ("--objects", self.url)

    def read(self, key: str) -> bytes | None:
        """The stored object's bytes, or None if there is none (a part never shows)."""
        store = open_objects(self.url)
        try:
            return store.get(key).read()
        except ObjectNotFoundError:
            return None
        finally:
            store.close()


@pytest.fixture(params=["local", "s3"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Objects:
    """Each store the issue names: a local directory, and S3 (``weed mini``)."""
    if request.param == "local":
        return Objects((tmp_path / "objects").as_uri())
    weed: Weed = request.getfixturevalue("weed")
    return Objects(weed.url())


def _wait_files(
    run: stride.ApiRun, count: int, timeout: float = 30.0, **filters: Any
) -> list[stride.ApiFile]:
    files: list[stride.ApiFile] = wait_for(
        lambda: (f := list(run.files(**filters))) and len(f) == count and f, timeout
    )
    return files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _status(api: stride.Api) -> dict[str, int]:
    files: dict[str, int] = api.get("/api/v1/status")["files"]
    return files


def test_files_round_trip_with_versions_filters_and_pages(stack: StrideUp, tmp_path: Path) -> None:
    big = os.urandom(2 * CHUNK_BYTES + 12345)  # three chunks, the last one short
    (tmp_path / "model.bin").write_bytes(big)
    code = tmp_path / "src"
    (code / "pkg").mkdir(parents=True)
    (code / "train.py").write_text("print('hi')\n")
    (code / "pkg" / "util.py").write_text("X = 1\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    settings = stack.settings(tmp_path / "spool")
    with stride.init(project="files", id="round-trip", settings=settings) as run:
        assert run.save(tmp_path / "model.bin") == "model.bin"
        assert run.save_directory(code, category="code") == ["src/pkg/util.py", "src/train.py"]
        run.save_data("notes.md", b"v0", description="first", tags=["a"], metadata={"k": 1})
        run.save_data("notes.md", b"v1 is longer", tags=["b"])
        assert run.save(tmp_path / "empty.txt", category="input") == "empty.txt"
        with (tmp_path / "model.bin").open("rb") as stream:
            run.save_data("copies/model.bin", stream)
    report = run.finish()
    assert (report.files_sent, report.files_left) == (7, 0)

    api = stride.Api(stack.http_url)
    stored = wait_run(api, "default/files/round-trip")
    files = _wait_files(stored, 6)
    assert [f.name for f in files] == [
        *("copies/model.bin", "empty.txt", "model.bin", "notes.md"),
        *("src/pkg/util.py", "src/train.py"),
    ]

    model = stored.file("model.bin")
    assert (model.size, model.sha256, model.version, model.versions) == (len(big), _sha(big), 0, 1)
    assert model.mimetype == "application/octet-stream"
    assert stored.file("src/train.py").mimetype == "text/x-python"
    path = model.download(tmp_path / "out")
    assert path == tmp_path / "out" / "model.bin" and path.read_bytes() == big
    with pytest.raises(UsageError, match="exists"):
        model.download(tmp_path / "out")
    assert model.download(tmp_path / "out", exist_ok=True) == path
    assert stored.file("copies/model.bin").read() == big
    assert stored.file("empty.txt").read() == b""

    notes = stored.file("notes.md")
    assert (notes.version, notes.versions, notes.read()) == (1, 2, b"v1 is longer")
    assert (notes.tags, notes.metadata, notes.description) == (["b"], {}, "")
    first = stored.file("notes.md", version=0)
    assert (first.read(), first.tags, first.metadata, first.description) == (
        b"v0",
        ["a"],
        {"k": 1},
        "first",
    )
    with pytest.raises(NotFoundError, match="versions 0 to 1"):
        stored.file("notes.md", version=2)
    with pytest.raises(NotFoundError, match="no file"):
        stored.file("missing.txt")

    assert [f.name for f in stored.files(category="code")] == ["src/pkg/util.py", "src/train.py"]
    assert [f.name for f in stored.files(category="input")] == ["empty.txt"]
    assert [f.name for f in stored.files(prefix="src/pkg")] == ["src/pkg/util.py"]
    assert [f.name for f in stored.files(tag="b")] == ["notes.md"]
    assert list(stored.files(tag="a")) == []  # only the latest version's tags count
    paged = [f.name for f in stored.files(per_page=2)]
    assert paged == [f.name for f in files]


def _get(url: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_downloads_honour_range_requests(stack: StrideUp, tmp_path: Path) -> None:
    data = os.urandom(CHUNK_BYTES + 1000)
    settings = stack.settings(tmp_path / "spool")
    with stride.init(project="files", id="ranges", settings=settings) as run:
        run.save_data("data.bin", data)
    api = stride.Api(stack.http_url)
    _wait_files(wait_run(api, "default/files/ranges"), 1)
    path = "/api/v1/runs/default/files/ranges/file/content?name=data.bin"

    status, headers, body = _get(stack.http_url, path, {})
    assert (status, body, headers["Accept-Ranges"]) == (200, data, "bytes")
    assert headers["ETag"] == f'"{_sha(data)}"'
    for asked, start, end in (
        ("bytes=10-19", 10, 20),
        ("bytes=-5", len(data) - 5, len(data)),
        (f"bytes={CHUNK_BYTES - 3}-", CHUNK_BYTES - 3, len(data)),
        ("bytes=0-99999999", 0, len(data)),
    ):
        status, headers, body = _get(stack.http_url, path, {"Range": asked})
        assert (status, body) == (206, data[start:end]), asked
        assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
    status, headers, _ = _get(stack.http_url, path, {"Range": f"bytes={len(data)}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")
    status, _, body = _get(stack.http_url, path, {"Range": "bytes=5-1"})  # invalid: ignored
    assert (status, body) == (200, data)
    # If-Range: the part only if the version is the one the client has the rest of.
    same = {"Range": "bytes=10-19", "If-Range": f'"{_sha(data)}"'}
    assert _get(stack.http_url, path, same)[::2] == (206, data[10:20])
    for stale in (f'"{_sha(b"another version")}"', "Wed, 21 Oct 2015 07:28:00 GMT"):
        status, headers, body = _get(stack.http_url, path, {**same, "If-Range": stale})
        assert (status, body, "Content-Range" in headers) == (200, data, False), stale


def test_a_file_gone_before_its_upload_is_reported_not_dropped_silently(
    tmp_path: Path,
) -> None:
    """A file on another file system is read in place (no hard link); deleted before
    NATS answers, it cannot be sent: ``finish()`` says so and the report is incomplete."""
    elsewhere = Path("/dev/shm")
    if not elsewhere.is_dir() or elsewhere.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the spool")
    source = elsewhere / f"stride-test-{os.getpid()}-{time.monotonic_ns()}.bin"
    source.write_bytes(b"gone soon")
    port = free_port()
    settings = stride.Settings(server=f"nats://127.0.0.1:{port}", spool_dir=tmp_path / "spool")
    try:
        run = stride.init(project="files", id="gone", settings=settings)
        run.save(source, name="kept-in-place.bin")
        run.save_data("fine.bin", b"fine")
    finally:
        source.unlink()
    with stride_up(tmp_path / "data", "--nats-port", str(port)) as up:
        report = run.finish(timeout=60)
        assert (report.files_sent, report.files_left) == (1, 0)
        (failed,) = report.files_failed
        assert failed.startswith("kept-in-place.bin: cannot read the saved file")
        assert "No such file" in failed
        assert not report.complete
        assert "1 saved file(s) could not be read and were not uploaded" in str(report)
        (f,) = _wait_files(wait_run(stride.Api(up.http_url), "default/files/gone"), 1)
        assert f.name == "fine.bin"


def test_bad_saves_are_refused_with_the_reason(stack: StrideUp, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "ok.txt").write_text("ok")
    (tmp_path / "big.bin").write_bytes(b"x" * 101)
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    secret.chmod(0)
    settings = stack.settings(tmp_path / "spool", max_file_bytes=100)
    with stride.init(project="files", id="refused", settings=settings) as run:
        with pytest.raises(UsageError, match="no such file"):
            run.save(tmp_path / "missing.txt")
        with pytest.raises(UsageError, match="is a directory; use save_directory"):
            run.save(tmp_path / "dir")
        with pytest.raises(UsageError, match="not a directory"):
            run.save_directory(tmp_path / "ok.txt")
        if os.geteuid() != 0:  # root reads anything
            with pytest.raises(UsageError, match="not readable"):
                run.save(secret)
        with pytest.raises(UsageError, match="101 bytes; the limit is 100"):
            run.save(tmp_path / "big.bin")
        with pytest.raises(UsageError, match="the limit is 100"):
            run.save_data("big", b"y" * 101)
        with pytest.raises(UsageError, match="category 'weights'"):
            run.save(tmp_path / "ok.txt", category="weights")
        for name, why in (
            ("../escape.txt", r"'\.\.' part"),
            ("/etc/passwd", "absolute"),
            ("a\\b.txt", "backslash"),
            ("a\x00b", "control character"),
            ("a//b", "empty"),
            ("", "non-empty"),
        ):
            with pytest.raises(UsageError, match=why):
                run.save(tmp_path / "ok.txt", name=name)
        with pytest.raises(UsageError, match=r"'\.\.' part"):
            run.save(Path("../ok.txt"), preserve_path=True)
        with pytest.raises(UsageError, match="JSON"):
            run.save_data("m", b"", metadata={"k": object()})
        run.save(tmp_path / "ok.txt")
    assert run.finish().files_sent == 1
    with pytest.raises(UsageError, match="finished"):
        run.save(tmp_path / "ok.txt")

    api = stride.Api(stack.http_url)
    stored = wait_run(api, "default/files/refused")
    assert [f.name for f in _wait_files(stored, 1)] == ["ok.txt"]
    with pytest.raises(UsageError, match=r"'\.\.' part"):
        stored.file("../ok.txt")
    base = "/api/v1/runs/default/files/refused/file/content"
    assert _get(stack.http_url, f"{base}?name=../../etc/passwd", {})[0] == 400
    assert _get(stack.http_url, f"{base}?name=a%00b", {})[0] == 400
    assert _get(stack.http_url, f"{base}?name=no-such-file", {})[0] == 404
    assert _get(stack.http_url, base, {})[0] == 400


def test_identical_bytes_are_stored_once(stack: StrideUp, tmp_path: Path) -> None:
    data = os.urandom(3000)
    api = stride.Api(stack.http_url)
    before = _status(api)
    for run_id in ("same-a", "same-b"):
        with stride.init(project="files", id=run_id, settings=stack.settings(tmp_path)) as run:
            run.save_data("weights.bin", data)
        _wait_files(wait_run(api, f"default/files/{run_id}"), 1)
    after = _status(api)
    assert after["files"] - before["files"] == 2
    assert after["deduplicated"] - before["deduplicated"] == 1
    assert after["bytes"] - before["bytes"] == len(data)
    blob = stack.data_dir / "objects" / blob_key(_sha(data))
    assert blob.read_bytes() == data


def test_a_large_file_is_copied_while_its_chunks_arrive(stack: StrideUp, tmp_path: Path) -> None:
    """A file of 16 chunks or more is announced before its chunks: ingest copies them
    as they come, and its record then only moves the copy to the blob key."""
    data = os.urandom(16 * CHUNK_BYTES + 1)
    small = os.urandom(CHUNK_BYTES * 3)
    api = stride.Api(stack.http_url)
    before = _status(api)
    settings = stack.settings(tmp_path / "spool")
    with stride.init(project="files", id="early", settings=settings) as run:
        run.save_data("big.bin", data)
        run.save_data("small.bin", small)  # not announced: copied after its record
    stored = _wait_files(wait_run(api, "default/files/early"), 2)
    assert {f.name: f.read() for f in stored} == {"big.bin": data, "small.bin": small}
    after = _status(api)
    assert after["copied_early"] - before["copied_early"] == 1
    assert after["bytes"] - before["bytes"] == len(data) + len(small)
    objects = stack.data_dir / "objects"
    assert (objects / blob_key(_sha(data))).read_bytes() == data
    assert not list(objects.glob("uploads/*"))  # moved, none left

    # The same bytes again: already stored, so the early copy is stopped and deleted.
    with stride.init(project="files", id="early-again", settings=settings) as run:
        run.save_data("big.bin", data)
    _wait_files(wait_run(api, "default/files/early-again"), 1)
    again = _status(api)
    assert again["deduplicated"] - after["deduplicated"] == 1
    assert again["copied_early"] == after["copied_early"]
    wait_for(lambda: not list(objects.glob("uploads/**/*")), timeout=10)


def test_edit_soft_delete_restore_and_purge(stack: StrideUp, tmp_path: Path) -> None:
    shared, own = os.urandom(2000), os.urandom(3000)
    settings = stack.settings(tmp_path / "spool")
    with stride.init(project="files", id="edits", settings=settings) as run:
        run.save_data("plot.png", shared, tags=["old"])
        run.save_data("plot.png", own)  # version 1
        run.save_data("keep.bin", shared)  # the same bytes as plot.png's version 0
    api = stride.Api(stack.http_url)
    stored = wait_run(api, "default/files/edits")
    _wait_files(stored, 2)

    latest = stored.file("plot.png").update(description="loss", tags=["final"], metadata={"a": 1})
    assert (latest.version, latest.description, latest.tags, latest.metadata) == (
        1,
        "loss",
        ["final"],
        {"a": 1},
    )
    again = stored.file("plot.png")
    assert (again.description, again.tags, again.metadata) == ("loss", ["final"], {"a": 1})
    assert stored.file("plot.png", version=0).tags == ["old"]  # other versions unchanged
    assert [f.name for f in stored.files(tag="final")] == ["plot.png"]
    latest.update(tags=[])  # what is not given stays
    assert (stored.file("plot.png").tags, stored.file("plot.png").description) == ([], "loss")

    stored.file("plot.png").delete()
    assert [f.name for f in stored.files()] == ["keep.bin"]
    assert [f.name for f in stored.files(deleted=True)] == ["plot.png"]
    with pytest.raises(NotFoundError):
        stored.file("plot.png")
    (deleted,) = stored.files(deleted=True)
    restored = deleted.restore()
    assert (restored.versions, restored.read(), restored.description) == (2, own, "loss")
    assert [f.name for f in stored.files()] == ["keep.bin", "plot.png"]
    assert list(stored.files(deleted=True)) == []

    objects = stack.data_dir / "objects"
    stored.file("plot.png").delete(purge=True)
    assert [f.name for f in stored.files()] == ["keep.bin"]
    assert list(stored.files(deleted=True)) == []
    assert not (objects / blob_key(_sha(own))).exists()  # no other file held these bytes
    assert (objects / blob_key(_sha(shared))).read_bytes() == shared  # keep.bin holds these
    assert stored.file("keep.bin").read() == shared
    with pytest.raises(NotFoundError):
        stored.file("plot.png").delete(purge=True)


def _publish(
    nats_url: str, record: FileRecord, chunks: list[bytes], order: list[int] | None = None
) -> None:
    """Publish ``chunks`` (in ``order`` of their indexes, if given), then ``record``."""

    async def go() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for i in order if order is not None else range(len(chunks)):
            data = chunks[i]
            headers = {"Nats-Msg-Id": f"{record.upload}/{i}", "Stride-Chunk": str(i)}
            await js.publish(chunk_subject(record.upload), data, headers=headers)
        headers = {"Nats-Msg-Id": file_message_id(record.upload)}
        await js.publish(FILE_SUBJECT, encode_file_record(record), headers=headers)
        await nc.close()

    asyncio.run(go())


def _record(run_id: str, name: str, upload: str, data: bytes, sha: str) -> FileRecord:
    return FileRecord(
        v=FILE_WIRE_VERSION,
        entity="default",
        project="files",
        run_id=run_id,
        writer="test-writer",
        upload=upload,
        ver=time.time_ns(),
        name=name,
        category="output",
        size=len(data),
        sha256=sha,
        chunks=-(-len(data) // CHUNK_BYTES),
        mime="application/octet-stream",
    )


def test_a_checksum_mismatch_or_missing_chunk_stores_nothing(stack: StrideUp) -> None:
    """Records built by hand (a writer with a bug, or chunks lost): dead-lettered with
    the reason, no object and no file row; a good record after them is stored."""
    api = stride.Api(stack.http_url)
    before = _status(api)
    data = os.urandom(CHUNK_BYTES + 10)
    chunks = [data[:CHUNK_BYTES], data[CHUNK_BYTES:]]
    wrong = _sha(b"something else")
    _publish(stack.nats_url, _record("bad", "a.bin", "aa" * 16, data, wrong), chunks)
    _publish(stack.nats_url, _record("bad", "b.bin", "bb" * 16, data, _sha(data)), chunks[:1])
    _publish(stack.nats_url, _record("bad", "c.bin", "cc" * 16, data, _sha(data)), chunks)
    wait_for(lambda: _status(api)["dead_lettered"] - before["dead_lettered"] == 2)
    wait_for(lambda: _status(api)["files"] - before["files"] == 1)
    assert not (stack.data_dir / "objects" / blob_key(wrong)).exists()
    assert (stack.data_dir / "objects" / blob_key(_sha(data))).read_bytes() == data
    # The run has no fields (no batch was sent for it), so the run itself is not found.
    content = "/api/v1/runs/default/files/bad/file?name="
    assert _get(stack.http_url, content + "a.bin", {})[0] == 404


def test_chunks_out_of_order_are_put_back_and_oversized_ones_refused(stack: StrideUp) -> None:
    """A chunk re-sent after later ones went through (its first publish failed) is put
    back in place; chunks holding more bytes than the record says are dead-lettered,
    and the worker goes on."""
    api = stride.Api(stack.http_url)
    before = _status(api)
    data = os.urandom(4 * CHUNK_BYTES - 5)
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    record = _record("bad", "shuffled.bin", "dd" * 16, data, _sha(data))
    _publish(stack.nats_url, record, chunks, order=[0, 2, 3, 1])
    short = _record("bad", "short.bin", "ee" * 16, data[:-100], _sha(data[:-100]))
    _publish(stack.nats_url, short, chunks)  # 100 bytes more than it says
    after = os.urandom(100)
    _publish(stack.nats_url, _record("bad", "after.bin", "ff" * 16, after, _sha(after)), [after])
    wait_for(lambda: _status(api)["files"] - before["files"] == 2)
    wait_for(lambda: _status(api)["dead_lettered"] - before["dead_lettered"] == 1)
    assert (stack.data_dir / "objects" / blob_key(_sha(data))).read_bytes() == data
    assert not (stack.data_dir / "objects" / blob_key(_sha(data[:-100]))).exists()
    assert (stack.data_dir / "objects" / blob_key(_sha(after))).read_bytes() == after


_WRITER = """
import sys, time, stride
s = stride.Settings(server={server!r}, spool_dir={spool!r}, file_window=2)
run = stride.init(project="files", id={run_id!r}, settings=s)
helper = run._transport._helper
print(helper.pid if helper else 0, flush=True)
run.save({path!r})
time.sleep(600)
"""


async def _count_chunks(nats_url: str, counted: list[int], stop: asyncio.Event) -> None:
    """Count every chunk published (a plain subscriber sees re-sent ones too)."""
    nc = await nats.connect(nats_url)

    async def count(_: Any) -> None:
        counted[0] += 1

    await nc.subscribe(chunk_subject(">"), cb=count)
    await stop.wait()
    await nc.close()


@pytest.mark.slow
def test_a_writer_killed_mid_upload_resumes_without_resending(
    tmp_path: Path, objects: Objects
) -> None:
    """SIGKILL the training process and its helper while a 24 MiB file uploads; the next
    agent on the spool (``stride sync``) finishes it, sending only what was missing."""
    data = os.urandom(24 * MIB)
    total = len(data) // CHUNK_BYTES
    (tmp_path / "ckpt.bin").write_bytes(data)
    spool = tmp_path / "spool"
    with stride_up(tmp_path / "data", *objects.args()) as up:
        counted = [0]

        async def scenario() -> None:
            stop = asyncio.Event()
            counter = asyncio.create_task(_count_chunks(up.nats_url, counted, stop))
            await asyncio.sleep(0.3)
            code = _WRITER.format(
                server=up.nats_url,
                spool=str(spool),
                run_id="killed",
                path=str(tmp_path / "ckpt.bin"),
            )
            writer = subprocess.Popen(
                [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
            )
            assert writer.stdout is not None
            helper = int(await asyncio.to_thread(writer.stdout.readline))
            while counted[0] < total // 3:
                await asyncio.sleep(0.005)
            for pid in (helper, writer.pid):
                os.kill(pid, signal.SIGKILL)
            writer.wait()
            writer.stdout.close()
            killed_at = counted[0]
            assert killed_at < total, "the upload finished before the kill"
            done = await asyncio.to_thread(
                subprocess.run,
                [*STRIDE, "sync", str(spool), "--server", up.nats_url],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert "1 file" in done.stdout
            stop.set()
            await counter

        asyncio.run(scenario())
        api = stride.Api(up.http_url)
        stored = wait_run(api, "default/files/killed")
        (f,) = _wait_files(stored, 1)
        assert (f.sha256, f.versions) == (_sha(data), 1)
        assert f.read() == data
        assert objects.read(blob_key(_sha(data))) == data
        # Every chunk published at least once; sent again at most those in flight at
        # the kill (the window: 2), not the ones acknowledged before.
        assert total <= counted[0] <= total + 2


@pytest.mark.slow
def test_ingest_killed_while_copying_a_file_stores_it_on_restart(
    tmp_path: Path, objects: Objects
) -> None:
    """SIGKILL ``stride up`` just after a 40 MiB file's record reaches NATS (ingest is
    copying it): no partial object is ever visible, and the restart stores it whole."""
    data = os.urandom(40 * MIB)
    (tmp_path / "big.bin").write_bytes(data)
    key = blob_key(_sha(data))
    # The run's own batch may have been fetched by the killed ingest too: it comes
    # back after the metrics consumer's ack wait, shortened here from 60 s.
    ack_wait = ("--ack-wait", "5")
    with stride_up(tmp_path / "data", *ack_wait, *objects.args()) as up:
        port = up.nats_url.rsplit(":", 1)[1]
        settings = up.settings(tmp_path / "spool")
        with stride.init(project="files", id="ingest-killed", settings=settings) as run:
            run.save(tmp_path / "big.bin")
        assert run.finish().files_sent == 1
        time.sleep(0.05)  # the record is in NATS: ingest is copying the chunks now
        up.kill()
    assert objects.read(key) in (None, data)  # never a part
    with stride_up(tmp_path / "data", "--nats-port", port, *ack_wait, *objects.args()) as up:
        api = stride.Api(up.http_url)
        # The record is redelivered once its ack wait (10 s) passes.
        (f,) = _wait_files(wait_run(api, "default/files/ingest-killed"), 1, timeout=60)
        assert (f.read(), f.versions) == (data, 1)
    assert objects.read(key) == data


def test_files_go_to_s3_when_stride_up_is_given_a_bucket(tmp_path: Path, weed: Weed) -> None:
    data = os.urandom(CHUNK_BYTES * 2 + 7)
    with stride_up(tmp_path / "data", "--objects", weed.url("stride-files")) as up:
        with stride.init(project="files", id="s3", settings=up.settings(tmp_path / "spool")) as run:
            run.save_data("model/weights.bin", data)
        api = stride.Api(up.http_url)
        (f,) = _wait_files(wait_run(api, "default/files/s3"), 1)
        assert f.read() == data
        status, _, body = _get(
            up.http_url,
            "/api/v1/runs/default/files/s3/file/content?name=model/weights.bin",
            {"Range": "bytes=5-9"},
        )
        assert (status, body) == (206, data[5:10])
    assert not (tmp_path / "data" / "objects").exists()


def test_simvue_client_artifact_calls_with_their_filters(stack: StrideUp, tmp_path: Path) -> None:
    from stride.simvue import Client

    settings = stack.settings(tmp_path / "spool")
    with stride.init(project="files", id="simvue", settings=settings) as run:
        run.save_data("train.py", b"print(1)", category="code")
        run.save_data("lib/util.py", b"X = 1", category="code")
        run.save_data("lib/notes.txt", b"notes", category="code")
        run.save_data("model.pt", b"weights", category="output", metadata={"epoch": 3})
    api = stride.Api(stack.http_url)
    _wait_files(wait_run(api, "default/files/simvue"), 4)
    client = Client(api)

    listed = client.list_artifacts("files/simvue")
    assert [a["name"] for a in listed] == ["lib/notes.txt", "lib/util.py", "model.pt", "train.py"]
    model = next(a for a in listed if a["name"] == "model.pt")
    assert (model["size"], model["checksum"], model["category"]) == (7, _sha(b"weights"), "output")
    assert model["metadata"] == {"epoch": 3}
    assert [a["name"] for a in client.list_artifacts("files/simvue", category="output")] == [
        "model.pt"
    ]
    assert client.get_artifact("files/simvue", "lib/util.py") == b"X = 1"
    saved = client.get_artifact_as_file("files/simvue", "model.pt", tmp_path / "one")
    assert saved.read_bytes() == b"weights"

    def names(**filters: Any) -> list[str]:
        got = client.get_artifacts_as_files("files/simvue", path=tmp_path / "many", **filters)
        return sorted(p.relative_to(tmp_path / "many").as_posix() for p in got)

    assert names(category="code", endswith=".py") == ["lib/util.py", "train.py"]
    assert names(startswith="lib/", contains="not") == ["lib/notes.txt"]
    assert names(category="input") == []
    assert (tmp_path / "many" / "train.py").read_bytes() == b"print(1)"


def test_an_unavailable_object_store_is_retried_and_shows_nothing_partial(
    tmp_path: Path,
) -> None:
    """The object directory is replaced by a plain file while a file is saved: every
    write fails; the worker hands the record back, waits longer each time, and
    stores it once the directory is back."""
    data = os.urandom(CHUNK_BYTES + 99)
    with stride_up(tmp_path / "data") as up:
        objects = tmp_path / "data" / "objects"
        away = tmp_path / "objects-away"
        objects.rename(away)
        objects.write_text("not a directory")
        settings = up.settings(tmp_path / "spool")
        with stride.init(project="files", id="outage", settings=settings) as run:
            run.save_data("data.bin", data)
        assert run.finish().files_sent == 1
        api = stride.Api(up.http_url)
        wait_for(lambda: _status(api)["errors"] >= 2)
        stored = wait_run(api, "default/files/outage")
        assert list(stored.files()) == []
        objects.unlink()
        away.rename(objects)
        (f,) = _wait_files(stored, 1, timeout=60)
        assert f.read() == data
        assert _status(api)["files"] == 1


def test_a_starting_file_worker_deletes_what_interrupted_writes_left(tmp_path: Path) -> None:
    """An early copy a killed worker never moved, and a local put's temporary file,
    both two hours old, are gone soon after ``stride up`` starts; a stored file as
    old, and a leftover younger than an hour (maybe still being written), stay."""
    data = tmp_path / "data"
    root = data / "objects"
    leftovers = [root / "uploads" / "u-killed", root / "blobs" / "ab" / ".0123.stride-tmp"]
    young = root / "uploads" / "u-live"
    stored = root / "blobs" / "ab" / "abcdef"
    two_hours_ago = time.time() - 7200
    for path in (*leftovers, young, stored):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        if path is not young:
            os.utime(path, (two_hours_ago, two_hours_ago))
    with stride_up(data):
        wait_for(lambda: not any(p.exists() for p in leftovers), timeout=30)
        assert young.exists() and stored.exists()
