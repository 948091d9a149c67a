"""The wire schema: round trips, validation, and versioning.

Versioning is tested from both sides: an old reader meeting a newer writer's
message must reject it with a reason, and a new reader meeting an older,
shorter message must decode it with defaults. Writers of other layouts are
simulated by test-local Structs.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from stride import wire
from stride.wire import (
    MIN_WIRE_VERSION,
    WIRE_VERSION,
    Batch,
    MetricBlock,
    WireError,
    decode_batch,
    encode_batch,
)


def _block() -> MetricBlock:
    """Five rows of ``loss`` and ``acc``, as the wire carries them: little-endian arrays."""
    i = np.arange(5)
    return MetricBlock(
        "default",
        ["loss", "acc"],
        i.astype("<i8").tobytes(),
        i.astype("<f8").tobytes(),
        (1e9 + i).astype("<f8").tobytes(),
        [(1 / (i + 1)).astype("<f8").tobytes(), (i / 10).astype("<f8").tobytes()],
    )


def _batch(**changes: object) -> Batch:
    blocks = [_block()]
    fields = dict(
        v=WIRE_VERSION, entity="e", project="p", run_id="r", writer="w", seq=3, ver=10,
        set={"state": '"running"'}, set_once={"created_at": '"t"'}, metrics=blocks,
    )  # fmt: skip
    fields.update(changes)
    return Batch(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    batch = _batch()
    decoded = decode_batch(encode_batch(batch))
    assert decoded == batch
    assert decoded.points == 10
    assert decoded.path == "e/p/r"


def test_unknown_version_is_rejected_with_the_reason() -> None:
    with pytest.raises(WireError, match="unknown wire version 99"):
        decode_batch(encode_batch(_batch(v=99)))


def test_garbage_is_rejected() -> None:
    with pytest.raises(WireError, match="not a stride batch"):
        decode_batch(b"\xc1 definitely not msgpack")
    with pytest.raises(WireError, match="malformed batch"):
        decode_batch(msgspec.msgpack.encode([WIRE_VERSION, "only", "three"]))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"run_id": ""}, "invalid run id ''"),
        ({"project": "a/b"}, "invalid project 'a/b'"),
        ({"entity": "has space"}, "invalid entity"),
        ({"project": "x" * 129}, "invalid project"),
        ({"run_id": ".hidden"}, "starting with a letter or digit"),
        ({"writer": "host/1"}, "invalid writer"),
        (
            {"metrics": [MetricBlock("sys tem", ["a"], b"", b"", b"", [b""])]},
            "invalid stream 'sys tem'",
        ),
        (
            {"metrics": [MetricBlock("default", ["a\nb"], b"", b"", b"", [b""])]},
            "invalid key",
        ),
        (
            {"metrics": [MetricBlock("default", [""], b"", b"", b"", [b""])]},
            "invalid key ''",
        ),
        (
            {"metrics": [MetricBlock("default", ["k" * 257], b"", b"", b"", [b""])]},
            "use 1-256 characters",
        ),
        ({"seq": -1}, "invalid seq"),
        (
            {
                "metrics": [
                    MetricBlock("default", ["a"], b"\0" * 8, b"\0" * 8, b"\0" * 16, [b"\0" * 8])
                ]
            },
            "different lengths",
        ),
        (
            {
                "metrics": [
                    MetricBlock("default", ["a", "b"], b"\0" * 8, b"\0" * 8, b"\0" * 8, [b"\0" * 8])
                ]
            },
            "value array per key",
        ),
        (
            {"metrics": [MetricBlock("default", ["a", "a"], b"", b"", b"", [b"", b""])]},
            "unique",
        ),
    ],
)
def test_invalid_batches_are_rejected(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        decode_batch(encode_batch(_batch(**changes)))


def test_names_the_query_api_reads_are_accepted() -> None:
    """The wire accepts exactly stride.ids' rules: the longest names, any printable key."""
    block = MetricBlock(
        "system", ["_step", "k" * 256, "loss/val ü", "a.b"], b"", b"", b"", [b""] * 4
    )
    batch = _batch(
        entity="E-1", project="p" * 128, run_id="0.a_b-c", writer="h.1-2", metrics=[block]
    )
    assert decode_batch(encode_batch(batch)) == batch


# ---- versions ---------------------------------------------------------------------------------


def test_a_reader_accepts_every_version_in_its_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MIN_WIRE_VERSION", 2)
    monkeypatch.setattr(wire, "WIRE_VERSION", 4)
    for v in (2, 3, 4):
        assert decode_batch(encode_batch(_batch(v=v))).v == v
    for v in (1, 5):
        with pytest.raises(WireError, match=f"unknown wire version {v}"):
            decode_batch(encode_batch(_batch(v=v)))


def test_the_range_today_is_versions_1_to_2() -> None:
    assert (MIN_WIRE_VERSION, WIRE_VERSION) == (1, 2)
    with pytest.raises(
        WireError, match=r"unknown wire version 0 \(this reader knows versions 1 to 2\)"
    ):
        decode_batch(encode_batch(_batch(v=0)))


class _NewerBatch(msgspec.Struct, array_like=True):
    """A newer writer's layout: ``Batch`` plus a trailing optional field."""

    v: int
    entity: str
    project: str
    run_id: str
    writer: str
    seq: int
    ver: int
    set: dict[str, str] = {}
    set_once: dict[str, str] = {}
    metrics: list[MetricBlock] = []
    events: list[wire.Event] = []
    samples: list[tuple[int, str]] = []


def _newer(v: int) -> bytes:
    old = _batch()
    fields = {f: getattr(old, f) for f in old.__struct_fields__}
    return msgspec.msgpack.encode(_NewerBatch(**{**fields, "v": v, "samples": [(1, "gpu")]}))


def test_an_old_reader_rejects_a_newer_version_with_the_reason() -> None:
    with pytest.raises(WireError, match=f"unknown wire version {WIRE_VERSION + 1}"):
        decode_batch(_newer(WIRE_VERSION + 1))


def test_an_old_reader_rejects_unknown_trailing_fields_instead_of_dropping_them() -> None:
    """A newer layout under the current version number (a writer that forgot to bump
    ``v``): msgspec alone would drop ``events`` silently; the reader must refuse."""
    with pytest.raises(WireError, match="fields this reader does not know"):
        decode_batch(_newer(WIRE_VERSION))


def test_an_old_reader_rejects_unknown_fields_of_a_metric_block() -> None:
    class _NewerBlock(msgspec.Struct, array_like=True):
        stream: str
        keys: list[str]
        steps: bytes
        times: bytes
        timestamps: bytes
        values: list[bytes]
        units: list[str] = []

    block = _NewerBlock("default", ["a"], b"", b"", b"", [b""], units=["s"])
    payload = msgspec.msgpack.encode([WIRE_VERSION, "e", "p", "r", "w", 0, 1, {}, {}, [block]])
    with pytest.raises(WireError, match="fields this reader does not know"):
        decode_batch(payload)


class _OlderBatch(msgspec.Struct, array_like=True):
    """An older, shorter layout: none of the trailing optional fields."""

    v: int
    entity: str
    project: str
    run_id: str
    writer: str
    seq: int
    ver: int


def test_a_new_reader_decodes_an_older_shorter_batch_with_defaults() -> None:
    payload = msgspec.msgpack.encode(_OlderBatch(WIRE_VERSION, "e", "p", "r", "w", 0, 7))
    batch = decode_batch(payload)
    assert (batch.path, batch.writer, batch.seq, batch.ver) == ("e/p/r", "w", 0, 7)
    assert (batch.set, batch.set_once, batch.metrics) == ({}, {}, [])


def test_the_exported_names_are_the_ones_we_mean() -> None:
    assert set(wire.__all__) == {
        "DLQ_STREAM", "DLQ_SUBJECT", "INGEST_SUBJECT", "MIN_WIRE_VERSION", "STREAM", "LEVELS",
        "MAX_EVENT_BYTES", "MAX_EVENT_SECONDS", "Event",
        "WIRE_VERSION", "Batch", "MetricBlock", "VersionPeek", "WireError", "decode_batch",
        "encode_batch", "message_id", "CHUNK_BYTES", "CHUNK_HEADER", "FILES_STREAM",
        "FILE_CATEGORIES", "FILE_SUBJECT", "FILE_WIRE_VERSION", "FileRecord", "chunk_subject",
        "decode_file_record", "encode_file_record", "file_message_id", "ARTIFACT_KINDS",
        "ARTIFACT_SUBJECT", "ArtifactEntry", "ArtifactRecord", "decode_artifact_record",
        "encode_artifact_record", "UPLOAD_SUBJECT", "UploadStart", "decode_upload_start",
        "encode_upload_start", "LAST_STEP_SUBJECT", "decode_last_step", "encode_last_step",
    }  # fmt: skip
    assert all(hasattr(wire, name) for name in wire.__all__)


def test_an_upload_hint_round_trips_and_bad_ones_say_why() -> None:
    hint = wire.UploadStart(
        wire.FILE_WIRE_VERSION, "ab" * 16, "e/p/r", "m.bin", 10 << 20, 20, "x/y"
    )
    assert wire.decode_upload_start(wire.encode_upload_start(hint)) == hint
    for bad, why in (
        (msgspec.structs.replace(hint, upload="../x"), "invalid upload id"),
        (msgspec.structs.replace(hint, chunks=19), "inconsistent upload hint"),
        (msgspec.structs.replace(hint, v=2), "unknown upload hint version 2"),
    ):
        with pytest.raises(WireError, match=why):
            wire.decode_upload_start(wire.encode_upload_start(bad))
    with pytest.raises(WireError, match="malformed upload hint"):
        wire.decode_upload_start(msgspec.msgpack.encode([1, "ab" * 16]))


def test_a_last_step_reply_round_trips() -> None:
    for step, error in ((41, None), (None, None), (None, "storage does not answer")):
        assert wire.decode_last_step(wire.encode_last_step(step, error)) == (step, error)
    with pytest.raises(WireError, match="malformed last-step reply"):
        wire.decode_last_step(b"[1]")


def test_events_round_trip_and_bad_ones_are_refused() -> None:
    events = [wire.Event(1.5, "info", "started"), wire.Event(2.0, "error", "oom", '{"gpu": 3}')]
    batch = msgspec.structs.replace(_batch(), events=events)
    assert decode_batch(encode_batch(batch)).events == events
    for bad, why in (
        (wire.Event(1.0, "verbose", "x"), "invalid event level 'verbose'"),
        (wire.Event(float("nan"), "info", "x"), "invalid event timestamp"),
        (wire.Event(1.8e12, "info", "x"), "invalid event timestamp"),  # milliseconds
        (wire.Event(1.0, "info", "x" * (wire.MAX_EVENT_BYTES + 1)), "over 65536 characters"),
    ):
        with pytest.raises(WireError, match=why):
            decode_batch(encode_batch(msgspec.structs.replace(_batch(), events=[bad])))


def test_a_batch_of_version_1_goes_out_in_version_1s_layout() -> None:
    """What an ingest not upgraded yet reads: no trailing ``events`` field at all."""
    batch = msgspec.structs.replace(_batch(), v=1)
    encoded = msgspec.msgpack.decode(encode_batch(batch))
    assert len(encoded) == 10 and encoded[0] == 1
    assert decode_batch(encode_batch(batch)) == batch
    with pytest.raises(ValueError, match="cannot carry events"):
        encode_batch(msgspec.structs.replace(batch, events=[wire.Event(1.0, "info", "x")]))


def test_event_metadata_must_be_a_json_object() -> None:
    for bad in ("[1]", "not json", '"text"'):
        event = wire.Event(1.0, "info", "x", bad)
        with pytest.raises(WireError, match="event metadata must be a JSON object"):
            decode_batch(encode_batch(msgspec.structs.replace(_batch(), events=[event])))


def test_a_version_1_batch_still_decodes_without_events() -> None:
    payload = msgspec.msgpack.encode(_OlderBatch(1, "e", "p", "r", "w", 0, 7))
    batch = decode_batch(payload)
    assert (batch.v, batch.events) == (1, [])
