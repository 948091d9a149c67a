"""The wire schema: round trips, validation, and versioning."""

from __future__ import annotations

import msgspec
import pytest

from stride._buffer import MetricBuffer, record_format, to_blocks
from stride.wire import WIRE_VERSION, Batch, MetricBlock, WireError, decode_batch, encode_batch


def _batch(**changes: object) -> Batch:
    buffer = MetricBuffer(max_rows=100)
    for i in range(5):
        buffer.append(
            ("loss", "acc"), record_format(2).pack(i, float(i), 1e9 + i, 1 / (i + 1), i / 10)
        )
    blocks = next(to_blocks(buffer.take(), "default", 1 << 20))
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
        ({"run_id": ""}, "invalid run_id"),
        ({"project": "a/b"}, "invalid project"),
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
