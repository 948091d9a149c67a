"""The object store against real servers: a temporary directory, and S3 from ``weed mini``.

Every behaviour test runs against both backends (the ``objects`` fixture is
parametrized): they must be indistinguishable to ingest and query.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from stride.store import errors
from stride.store import objects as objects_module
from stride.store.objects import (
    CredentialsRefusedError,
    InvalidKeyError,
    LocalObjects,
    ObjectNotFoundError,
    ObjectStore,
    S3Objects,
    S3Settings,
    StoreError,
    StoreUnavailableError,
    open_objects,
)

from .weed import ACCESS_KEY, MIB, SECRET_KEY, Weed
from .weed import weed as weed  # the fixture


@pytest.fixture(params=["local", "s3"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    store: ObjectStore
    if request.param == "local":
        store = LocalObjects(tmp_path / "objects")
    else:
        weed: Weed = request.getfixturevalue("weed")
        store = S3Objects(weed.settings())
    yield store
    if isinstance(store, S3Objects):  # leave the shared bucket empty for the next test
        client = Minio(weed.endpoint, ACCESS_KEY, SECRET_KEY, secure=False)
        for item in client.list_objects(Weed.shared_bucket, recursive=True):
            client.remove_object(Weed.shared_bucket, item.object_name or "")
    store.close()


def _chunks(data: bytes, size: int = MIB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class Boom(Exception):
    pass


def _failing(data: bytes, after: int) -> Iterator[bytes]:
    """Yields ``data`` in 1 MiB chunks, then raises once ``after`` bytes are out."""
    sent = 0
    for chunk in _chunks(data):
        if sent >= after:
            raise Boom("the source failed mid-stream")
        yield chunk
        sent += len(chunk)
    raise Boom("the source failed at its end")


# --- round trips --------------------------------------------------------------------------


def test_empty_object_round_trips(objects: ObjectStore) -> None:
    info = objects.put("runs/a/empty", b"")
    assert info.size == 0
    assert objects.head("runs/a/empty").size == 0
    with objects.get("runs/a/empty") as stream:
        assert stream.length == 0
        assert b"".join(stream) == b""


def test_small_objects_round_trip_from_bytes_files_and_iterables(objects: ObjectStore) -> None:
    data = b"hello, \x00 object \xff store"
    objects.put("a/bytes", data)
    objects.put("a/file", io.BytesIO(data), length=len(data))
    objects.put("a/iterable", [data[:5], b"", data[5:]])
    objects.put("a/bytearray", bytearray(data))
    for key in ("a/bytes", "a/file", "a/iterable", "a/bytearray"):
        assert objects.get(key).read() == data, key
        assert objects.head(key).size == len(data), key


def test_unknown_length_stream_round_trips_through_multipart(objects: ObjectStore) -> None:
    data = os.urandom(12 * MIB + 123)  # 3 parts of 5 MiB on S3
    info = objects.put("runs/a/big.bin", _chunks(data), content_type="application/x-test")
    assert info.size == len(data)
    if isinstance(objects, S3Objects):
        assert info.etag.endswith("-3"), f"not a 3-part upload: {info.etag}"
    got = bytearray()
    with objects.get("runs/a/big.bin") as stream:
        assert stream.length == len(data)
        for chunk in stream:
            got += chunk
    assert got == data
    head = objects.head("runs/a/big.bin")
    assert (head.size, head.etag, head.content_type) == (len(data), info.etag, "application/x-test")


def test_unusual_but_valid_keys_round_trip(objects: ObjectStore) -> None:
    longest = "/".join(["k" * 255] * 3 + ["k" * 254, "z"])
    assert len(longest.encode()) == 1024
    for key in ("with space/ü ñ/#?%&=+;,@!$'()*.txt", longest, ".hidden/x", "a/b..c"):
        objects.put(key, key.encode())
        assert objects.get(key).read() == key.encode(), key
        assert objects.head(key).key == key


# --- ranges -------------------------------------------------------------------------------

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(0, 10, id="first-bytes"),
        pytest.param(100, 5000, id="middle"),
        pytest.param(len(DATA) - 7, None, id="last-bytes-open-end"),
        pytest.param(len(DATA) - 7, len(DATA), id="last-bytes"),
        pytest.param(len(DATA) - 5, len(DATA) + 100, id="end-past-the-end-is-cut"),
        pytest.param(len(DATA), None, id="start-at-the-end-is-empty"),
        pytest.param(len(DATA) + 10, len(DATA) + 20, id="start-past-the-end-is-empty"),
        pytest.param(50, 50, id="empty-range"),
        pytest.param(0, None, id="whole"),
    ],
)
def test_ranges_are_slices_with_an_exclusive_end(
    objects: ObjectStore, start: int, end: int | None
) -> None:
    objects.put("r", DATA)
    with objects.get("r", start=start, end=end) as stream:
        got = b"".join(stream)
        assert stream.length == len(DATA[start:end])
    assert got == DATA[start:end]


def test_a_range_of_an_empty_object_is_empty(objects: ObjectStore) -> None:
    objects.put("e", b"")
    assert objects.get("e", start=0, end=5).read() == b""


@pytest.mark.parametrize(("start", "end"), [(-1, None), (5, 4), (0, -1)])
def test_invalid_ranges_are_refused(objects: ObjectStore, start: int, end: int | None) -> None:
    objects.put("r", DATA)
    with pytest.raises(ValueError, match="invalid byte range"):
        objects.get("r", start=start, end=end)


def test_a_closed_stream_releases_its_file_or_connection(objects: ObjectStore) -> None:
    objects.put("r", os.urandom(3 * MIB))
    objects.get("r").read()  # the connection pool now holds one connection
    before = len(os.listdir("/proc/self/fd"))
    streams = [objects.get("r", start=1) for _ in range(30)]
    assert len(os.listdir("/proc/self/fd")) >= before + 25  # each holds a file or socket
    for stream in streams:
        next(stream)  # read partly, then give up
        stream.close()
    assert len(os.listdir("/proc/self/fd")) <= before + 1
    with objects.get("r", start=MIB, end=MIB + 3) as stream:
        assert b"".join(stream) == objects.get("r").read()[MIB : MIB + 3]


# --- head, delete, missing keys -----------------------------------------------------------


def test_head_reports_size_etag_type_and_time(objects: ObjectStore) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    put = objects.put("h", b"one", content_type="text/plain")
    head = objects.head("h")
    assert (head.key, head.size, head.content_type) == ("h", 3, "text/plain")
    assert head.etag == put.etag and head.etag
    assert before <= head.last_modified <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    objects.put("h", b"two")
    assert objects.head("h").etag != put.etag
    assert objects.head("h").content_type == "application/octet-stream"
    if isinstance(objects, S3Objects):  # the MD5 of a single-part upload's bytes
        objects.put("h2", b"one")
        assert objects.head("h2").etag == put.etag


def test_delete_removes_and_is_idempotent(objects: ObjectStore) -> None:
    objects.put("runs/d/x", b"x")
    objects.delete("runs/d/x")
    with pytest.raises(ObjectNotFoundError):
        objects.head("runs/d/x")
    objects.delete("runs/d/x")
    objects.delete("never/written")


def test_move_renames_replaces_and_keeps_the_content_type(objects: ObjectStore) -> None:
    data = os.urandom(11 * MIB + 5)  # several parts of an S3 multipart upload
    objects.put("uploads/u1", _chunks(data), content_type="model/x")
    objects.put("blobs/b", b"old")
    moved = objects.move("uploads/u1", "blobs/b")
    assert (moved.key, moved.size, moved.content_type) == ("blobs/b", len(data), "model/x")
    assert objects.get("blobs/b").read() == data
    with pytest.raises(ObjectNotFoundError):
        objects.head("uploads/u1")
    with pytest.raises(ObjectNotFoundError) as caught:
        objects.move("uploads/u1", "blobs/c")
    assert caught.value.key == "uploads/u1"
    with pytest.raises(ObjectNotFoundError):
        objects.head("blobs/c")
    objects.move("blobs/b", "deeper/than/before/b")
    assert objects.get("deeper/than/before/b").read() == data


def test_missing_keys_raise_a_not_retriable_not_found(objects: ObjectStore) -> None:
    calls = [
        lambda: objects.head("no/such"),
        lambda: objects.get("no/such"),
        lambda: objects.get("no/such", start=3, end=3),
        lambda: objects.get("no/such", start=10),
    ]
    for call in calls:
        with pytest.raises(ObjectNotFoundError) as caught:
            call()
        assert caught.value.key == "no/such"
        assert not caught.value.retriable
        assert "'no/such'" in str(caught.value) and "check the key" in str(caught.value)


BAD_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("/abs/key", id="leading-slash"),
    pytest.param("a/../b", id="dotdot"),
    pytest.param("..", id="only-dotdot"),
    pytest.param("./a", id="dot"),
    pytest.param("a//b", id="empty-segment"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("/".join(["s" * 200] * 5) + "/" + "t" * 20, id="1025-bytes"),
    pytest.param("s" * 256, id="256-byte-segment"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a/.1234.stride-tmp", id="temp-name"),
    pytest.param("a\udcffb", id="surrogate"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_refused_by_every_call(objects: ObjectStore, key: str) -> None:
    calls = [
        lambda: objects.put(key, b"x"),
        lambda: objects.get(key),
        lambda: objects.head(key),
        lambda: objects.delete(key),
        lambda: objects.presigned_get(key),
        lambda: objects.move(key, "fine"),
        lambda: objects.move("fine", key),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyError, match="invalid object key") as caught:
            call()
        assert isinstance(caught.value, ValueError) and not caught.value.retriable


# --- all or nothing -----------------------------------------------------------------------


def test_a_put_whose_data_fails_leaves_nothing_visible(objects: ObjectStore) -> None:
    data = os.urandom(8 * MIB)
    with pytest.raises(Boom):  # the caller's own error, unchanged
        objects.put("runs/a/f", _failing(data, after=6 * MIB))  # past the first S3 part
    with pytest.raises(ObjectNotFoundError):
        objects.head("runs/a/f")
    with pytest.raises(ObjectNotFoundError):
        objects.get("runs/a/f")


def test_a_failed_put_keeps_the_previous_object(objects: ObjectStore) -> None:
    objects.put("runs/a/f", b"version one")
    with pytest.raises(Boom):
        objects.put("runs/a/f", _failing(os.urandom(2 * MIB), after=MIB))
    assert objects.get("runs/a/f").read() == b"version one"


@pytest.mark.parametrize(
    ("length", "chunks"),
    [
        pytest.param(10, [b"x" * 9], id="short"),
        pytest.param(10, [b"x" * 11], id="long"),
        pytest.param(10, [b"x" * 10, b"y"], id="one-byte-more-after-the-length"),
        pytest.param(6 * MIB, [b"x" * MIB] * 6 + [b"y"], id="more-after-a-multipart-length"),
    ],
)
def test_a_wrong_length_raises_and_stores_nothing(
    objects: ObjectStore, length: int, chunks: list[bytes]
) -> None:
    with pytest.raises(ValueError, match=f"length={length} was given"):
        objects.put("runs/a/len", iter(chunks), length=length)
    with pytest.raises(ObjectNotFoundError):
        objects.head("runs/a/len")


def test_a_local_put_killed_mid_write_leaves_nothing_visible(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    code = f"""
import os, signal
from pathlib import Path
from stride.store.objects import LocalObjects

def chunks():
    yield b"x" * 1_000_000
    yield b"y" * 1_000_000
    os.kill(os.getpid(), signal.SIGKILL)
    yield b"never"

LocalObjects(Path({str(root)!r})).put("runs/a/big.bin", chunks())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    leftovers = list((root / "runs" / "a").iterdir())
    assert [p.name.endswith(".stride-tmp") for p in leftovers] == [True]
    assert leftovers[0].stat().st_size > 0  # it died mid-write, not before writing
    objects = LocalObjects(root)
    with pytest.raises(ObjectNotFoundError):
        objects.head("runs/a/big.bin")
    with pytest.raises(InvalidKeyError):  # no key reaches the half-written file
        objects.get(f"runs/a/{leftovers[0].name}")
    objects.put("runs/a/big.bin", b"whole")
    assert objects.get("runs/a/big.bin").read() == b"whole"
    # A sweep takes the temporary file once it is old enough, and nothing else.
    assert objects.sweep("uploads/", dt.timedelta(hours=1)) == 0  # just written: it stays
    os.utime(leftovers[0], (time.time() - 7200, time.time() - 7200))
    os.utime(root / "runs" / "a" / "big.bin", (time.time() - 7200, time.time() - 7200))
    assert objects.sweep("uploads/", dt.timedelta(hours=1)) == 1
    assert [p.name for p in (root / "runs" / "a").iterdir()] == ["big.bin"]
    assert objects.get("runs/a/big.bin").read() == b"whole"


def test_a_sweep_deletes_abandoned_objects_and_nothing_else(objects: ObjectStore) -> None:
    """Objects under the abandoned prefix (a killed worker's early copies) go once
    unwritten for long enough; younger ones and every other key stay."""
    objects.put("uploads/old", b"copy a killed worker left")
    objects.put("runs/r/kept.bin", b"a stored file, as old")
    objects.put("uploadsx/not-under-the-prefix", b"kept")
    time.sleep(2.2)  # S3 times have whole seconds
    objects.put("uploads/new", b"a copy still being made")
    assert objects.sweep("uploads/", dt.timedelta(seconds=1)) == 1
    with pytest.raises(ObjectNotFoundError):
        objects.head("uploads/old")
    for key in ("uploads/new", "runs/r/kept.bin", "uploadsx/not-under-the-prefix"):
        assert objects.head(key).size > 0
    assert objects.sweep("uploads/", dt.timedelta(hours=1)) == 0


def test_local_keys_that_are_prefixes_of_each_other_are_refused(tmp_path: Path) -> None:
    objects = LocalObjects(tmp_path / "objects")
    objects.put("a", b"1")
    with pytest.raises(InvalidKeyError, match="prefix"):
        objects.put("a/b", b"2")
    objects.delete("a")
    objects.put("a/b/c", b"3")
    with pytest.raises(InvalidKeyError, match="prefix"):
        objects.put("a", b"1")
    with pytest.raises(ObjectNotFoundError):
        objects.head("a")  # a directory is not an object
    objects.delete("a/b/c")  # takes the emptied directories with it
    objects.put("a", b"1")
    assert objects.get("a").read() == b"1"


# --- presigned URLs -----------------------------------------------------------------------


def test_a_presigned_get_url_returns_the_bytes(objects: ObjectStore) -> None:
    data = os.urandom(100_000)
    objects.put("runs/a/shared file.bin", data)
    url = objects.presigned_get("runs/a/shared file.bin", expires=dt.timedelta(seconds=60))
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == data
    if isinstance(objects, S3Objects):
        assert "X-Amz-Expires=60" in url and SECRET_KEY not in url
        tampered = url.replace("X-Amz-Expires=60", "X-Amz-Expires=61")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(tampered, timeout=10)
        caught.value.close()
        assert caught.value.code == 403
    else:
        assert url.startswith("file:///")
    with pytest.raises(ValueError):
        objects.presigned_get("runs/a/shared file.bin", expires=dt.timedelta(0))


# --- S3 credentials and reachability ------------------------------------------------------


@pytest.mark.parametrize(("access", "secret"), [(ACCESS_KEY, "wrong"), ("no-such-key", SECRET_KEY)])
def test_refused_credentials_raise_a_clear_not_retriable_error(
    weed: Weed, access: str, secret: str
) -> None:
    settings = weed.settings("creds", access_key=access, secret_key=secret)
    with pytest.raises(CredentialsRefusedError) as caught:
        S3Objects(settings)
    message = str(caught.value)
    assert not caught.value.retriable
    assert f"access key {access!r}" in message and "secret key" in message
    assert "wrong" not in message.replace(f"{access!r}", "")  # the secret is never shown


def test_an_unreachable_endpoint_is_unavailable_and_retriable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    settings = S3Settings(
        endpoint=f"127.0.0.1:{port}",
        access_key="a",
        secret_key="b",
        bucket="bkt",
        secure=False,
        retries=0,
        connect_timeout_s=2,
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        S3Objects(settings)
    assert caught.value.retriable
    assert f"127.0.0.1:{port}" in str(caught.value) and "retried" in str(caught.value)
    assert time.monotonic() - started < 10


def test_the_bucket_is_created_if_missing_and_reopening_keeps_it(weed: Weed) -> None:
    settings = weed.settings(f"new-{uuid.uuid4().hex[:16]}")
    first = S3Objects(settings)
    first.put("k", b"v")
    first.close()
    second = S3Objects(settings)
    assert second.get("k").read() == b"v"
    second.close()


# --- URLs and settings --------------------------------------------------------------------


def test_open_objects_opens_both_backends_from_urls(weed: Weed, tmp_path: Path) -> None:
    local = open_objects(f"file://{tmp_path / 'dir with space'}")
    assert isinstance(local, LocalObjects) and local.root == tmp_path / "dir with space"
    quoted = urllib.parse.quote(SECRET_KEY, safe="")
    url = f"s3://{ACCESS_KEY}:{quoted}@{weed.endpoint}/from-url?secure=false&region=us-east-1"
    s3 = open_objects(url)
    assert isinstance(s3, S3Objects)
    assert s3.settings.secret_key == SECRET_KEY and s3.settings.region == "us-east-1"
    s3.put("k", b"via url")
    assert s3.get("k").read() == b"via url"
    s3.close()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://host/bucket", "unsupported object store URL"),
        ("chdb:///x", "unsupported object store URL"),
        ("file://relative/dir", "file:///absolute/path"),
        ("file:///x?opt=1", "takes no options"),
        ("s3://host:9000/bucket", "give the credentials"),
        ("s3://key:TOPSECRET@host:9000/", "bucket name"),
        ("s3://key:TOPSECRET@host:9000/a/b", "bucket name"),
        ("s3://key:TOPSECRET@host:9000/b?secure=maybe", "secure='maybe'"),
        ("s3://key:TOPSECRET@host:9000/b?tls=false", "unknown option"),
    ],
)
def test_bad_urls_are_refused_without_showing_the_secret(url: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        open_objects(url)
    assert says in str(caught.value)
    assert "TOPSECRET" not in str(caught.value)


def test_s3_settings_refuse_what_s3_cannot_do_and_hide_the_secret() -> None:
    base: dict[str, Any] = {"access_key": "a", "secret_key": "TOPSECRET", "bucket": "b"}
    with pytest.raises(ValueError, match="5 MiB"):
        S3Settings(endpoint="h:1", part_size=MIB, **base)
    with pytest.raises(ValueError, match="host:port"):
        S3Settings(endpoint="http://h:1", **base)
    assert "TOPSECRET" not in repr(S3Settings(endpoint="h:1", **base))


# --- the public surface -------------------------------------------------------------------


def test_the_exported_names_are_the_ones_we_mean(tmp_path: Path) -> None:
    assert set(objects_module.__all__) == {
        "MAX_KEY_BYTES",
        "CredentialsRefusedError",
        "InvalidKeyError",
        "LocalObjects",
        "ObjectInfo",
        "ObjectNotFoundError",
        "ObjectStore",
        "ObjectStream",
        "PutData",
        "S3Objects",
        "S3Settings",
        "StoreError",
        "StoreUnavailableError",
        "open_objects",
        "validate_key",
    }
    assert all(hasattr(objects_module, name) for name in objects_module.__all__)
    assert isinstance(LocalObjects(tmp_path), ObjectStore)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), StoreError)


# --- the store away during a write --------------------------------------------------


def _freezing(
    data: bytes, weed: Weed, at_chunk: int, thaw_after_s: float | None
) -> Iterator[bytes]:
    """Yields ``data`` in 1 MiB chunks, freezing weed before chunk ``at_chunk`` (after the
    first 5 MiB part went out) and thawing it ``thaw_after_s`` later (never if None)."""
    for i, chunk in enumerate(_chunks(data)):
        if i == at_chunk:
            weed.freeze()
            if thaw_after_s is not None:
                threading.Timer(thaw_after_s, weed.thaw).start()
        yield chunk


@pytest.mark.slow
def test_a_put_rides_out_a_stalled_s3_server_by_retrying(weed: Weed) -> None:
    store = S3Objects(weed.settings(read_timeout_s=1.0, connect_timeout_s=1.0, retries=8))
    data = os.urandom(12 * MIB)
    try:
        started = time.monotonic()
        info = store.put("outage/rides-out.bin", _freezing(data, weed, 6, thaw_after_s=2.5))
        assert time.monotonic() - started > 2.5  # it did wait for the server
        assert info.size == len(data)
        with store.get("outage/rides-out.bin") as stream:
            assert b"".join(stream) == data
    finally:
        weed.thaw()
        store.delete("outage/rides-out.bin")
        store.close()


@pytest.mark.slow
def test_a_put_that_gives_up_leaves_no_partial_object(weed: Weed) -> None:
    store = S3Objects(weed.settings(read_timeout_s=1.0, connect_timeout_s=1.0, retries=1))
    data = os.urandom(12 * MIB)
    try:
        with pytest.raises(StoreUnavailableError) as info:
            store.put("outage/gave-up.bin", _freezing(data, weed, 6, thaw_after_s=None))
        assert info.value.retriable
        weed.thaw()
        with pytest.raises(ObjectNotFoundError):
            store.head("outage/gave-up.bin")
        client = Minio(weed.endpoint, ACCESS_KEY, SECRET_KEY, secure=False)
        listed = client.list_objects(Weed.shared_bucket, prefix="outage/", recursive=True)
        assert [o.object_name for o in listed] == []
        # Retrying the whole put once the server is back stores it whole.
        store.put("outage/gave-up.bin", _chunks(data))
        with store.get("outage/gave-up.bin") as stream:
            assert b"".join(stream) == data
    finally:
        weed.thaw()
        store.delete("outage/gave-up.bin")
        store.close()
