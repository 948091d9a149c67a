"""The wire schema: the one contract between the SDK, ingest and query.

Everything a writer emits travels as a :class:`Batch`, encoded with msgpack.
A batch is identified by ``(run, writer, seq)``: ``writer`` is unique per
producing process and ``seq`` counts that writer's batches from 0. The
JetStream message id is :func:`message_id` of that identity, so a batch
published twice (a retry, an offline re-sync) is recognised as the same batch.

A batch carries, for one run:

* ``set`` — run fields, last write wins (config, tags, notes, state, summary
  keys as ``summary.<key>``...). Values are JSON text.
* ``set_once`` — run fields, first write wins (``created_at``, a generated
  name): a second process joining the run never overwrites them.
* ``metrics`` — columnar metric blocks. Rows logged with the same key set are
  grouped into one :class:`MetricBlock`: shared arrays of steps, times and
  timestamps, and one array of values per key. Arrays are raw little-endian
  bytes (``int64`` steps, ``float64`` elsewhere), so both ends convert them
  without a per-value loop.

Versioning: the first field of every batch is ``v``. A reader decodes
:class:`VersionPeek` first and rejects any version it does not know
(ingest dead-letters it with the reason, it never drops it silently).
"""

from __future__ import annotations

import msgspec

__all__ = [
    "DLQ_STREAM",
    "DLQ_SUBJECT",
    "INGEST_SUBJECT",
    "STREAM",
    "WIRE_VERSION",
    "Batch",
    "MetricBlock",
    "VersionPeek",
    "WireError",
    "decode_batch",
    "encode_batch",
    "message_id",
]

WIRE_VERSION = 1

#: JetStream stream holding every batch, and the subject writers publish to.
STREAM = "STRIDE"
INGEST_SUBJECT = "stride.ingest.v1"
#: Dead-letter stream and subject for messages ingest could not accept.
DLQ_STREAM = "STRIDE_DLQ"
DLQ_SUBJECT = "stride.dlq"


class MetricBlock(msgspec.Struct, array_like=True, gc=False):
    """Rows that share one key set, stored column by column."""

    stream: str  # "default" for user metrics, "system" for machine metrics
    keys: list[str]
    steps: bytes  # int64[n]
    times: bytes  # float64[n], seconds since the run started
    timestamps: bytes  # float64[n], seconds since the Unix epoch
    values: list[bytes]  # per key, float64[n], aligned with steps


class Batch(msgspec.Struct, array_like=True, gc=False):
    """One flush of one writer for one run."""

    v: int
    entity: str
    project: str
    run_id: str
    writer: str
    seq: int
    #: Nanoseconds since the epoch when the writer built the batch, strictly
    #: increasing per writer. It is the version for last-write-wins: a batch
    #: applied twice, or late, changes nothing a newer batch wrote.
    ver: int
    set: dict[str, str] = {}
    set_once: dict[str, str] = {}
    metrics: list[MetricBlock] = []

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"

    @property
    def points(self) -> int:
        return sum(len(b.steps) // 8 * len(b.keys) for b in self.metrics)


class VersionPeek(msgspec.Struct, array_like=True):
    """Decodes only the leading version field of any batch."""

    v: int


class WireError(ValueError):
    """A message that is not a valid batch of a known version."""


_encoder = msgspec.msgpack.Encoder()
_peek_decoder = msgspec.msgpack.Decoder(VersionPeek)
_batch_decoder = msgspec.msgpack.Decoder(Batch)


def encode_batch(batch: Batch) -> bytes:
    return _encoder.encode(batch)


def decode_batch(payload: bytes) -> Batch:
    """Decode and validate one batch; raise :class:`WireError` with the reason."""
    try:
        version = _peek_decoder.decode(payload).v
    except msgspec.DecodeError as exc:
        raise WireError(f"not a stride batch: {exc}") from None
    if version != WIRE_VERSION:
        raise WireError(f"unknown wire version {version} (this reader knows {WIRE_VERSION})")
    try:
        batch = _batch_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed batch: {exc}") from None
    _validate(batch)
    return batch


def _validate(batch: Batch) -> None:
    for name in ("entity", "project", "run_id", "writer"):
        value = getattr(batch, name)
        if not value or "/" in value:
            raise WireError(f"invalid {name} {value!r}: must be non-empty and contain no '/'")
    if batch.seq < 0 or batch.ver <= 0:
        raise WireError(f"invalid seq {batch.seq} or ver {batch.ver}")
    for block in batch.metrics:
        n, rem = divmod(len(block.steps), 8)
        if rem or len(block.times) != n * 8 or len(block.timestamps) != n * 8:
            raise WireError("metric block arrays have different lengths")
        if len(block.values) != len(block.keys) or any(len(v) != n * 8 for v in block.values):
            raise WireError("metric block has a value array per key of the wrong length")
        if len(set(block.keys)) != len(block.keys) or not all(block.keys):
            raise WireError("metric block keys must be unique and non-empty")


def message_id(run_path: str, writer: str, seq: int) -> str:
    """JetStream ``Nats-Msg-Id`` for a batch: the batch identity itself."""
    return f"{run_path}/{writer}/{seq}"
