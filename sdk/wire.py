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

Files travel beside batches, not in them (a large upload must never hold
back metrics): the delivery agent publishes a file's bytes in chunks of at
most :data:`CHUNK_BYTES` to :func:`chunk_subject` of the ``STRIDE_FILES``
stream (message id ``<upload>/<index>``, header ``Stride-Chunk: <index>``),
and once every chunk is acknowledged, one :class:`FileRecord` to
:data:`FILE_SUBJECT` (message id :func:`file_message_id`). Ingest copies the
chunks into object storage, checks size and sha256, records the file, and
purges the chunks. Before a large file's first chunk, an :class:`UploadStart`
hint on :data:`UPLOAD_SUBJECT` (plain NATS, not stored) lets ingest copy the
chunks while they arrive; the record remains what stores the file.

Names are checked by :mod:`stride.ids`, the rules the query API reads with:
entity, project, run id, writer and stream are URL-safe names; metric keys
are any text without control characters.

Evolving the wire
-----------------

The first field of every batch is ``v``. A reader accepts the versions
``MIN_WIRE_VERSION`` to ``WIRE_VERSION`` and rejects anything else with a
reason (:class:`WireError`; ingest dead-letters the message with it). Nothing
a reader does not understand is ever silently ignored. The rules:

* Version 2 added :attr:`Batch.events`.
* New record kinds (events, file chunks, system samples) arrive as new
  optional trailing fields of :class:`Batch`, with a default, or as new
  record types inside such a field, never by reordering or retyping a field
  (the Structs are ``array_like``: position is the name).
* Adding a field or record type bumps ``WIRE_VERSION``. A reader that knows
  the new version decodes older, shorter batches with the defaults; an older
  reader rejects the newer version. Raise ``MIN_WIRE_VERSION`` only when
  support for old writers is dropped on purpose.
* The Structs set ``forbid_unknown_fields``: msgspec would otherwise drop the
  extra trailing elements of an ``array_like`` Struct without a word, so a
  newer layout sent under an old version number would lose data silently.
  Instead the batch is rejected as having unknown fields.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from .ids import InvalidIdentifier, check, check_file_name

__all__ = [
    "ARTIFACT_KINDS",
    "ARTIFACT_SUBJECT",
    "CHUNK_BYTES",
    "CHUNK_HEADER",
    "DLQ_STREAM",
    "DLQ_SUBJECT",
    "FILES_STREAM",
    "FILE_CATEGORIES",
    "FILE_SUBJECT",
    "FILE_WIRE_VERSION",
    "INGEST_SUBJECT",
    "LAST_STEP_SUBJECT",
    "LEVELS",
    "MAX_EVENT_BYTES",
    "MAX_EVENT_SECONDS",
    "MIN_WIRE_VERSION",
    "STREAM",
    "UPLOAD_SUBJECT",
    "WIRE_VERSION",
    "ArtifactEntry",
    "ArtifactRecord",
    "Batch",
    "Event",
    "FileRecord",
    "MetricBlock",
    "UploadStart",
    "VersionPeek",
    "WireError",
    "chunk_subject",
    "decode_artifact_record",
    "decode_batch",
    "decode_file_record",
    "decode_last_step",
    "decode_upload_start",
    "encode_artifact_record",
    "encode_batch",
    "encode_file_record",
    "encode_last_step",
    "encode_upload_start",
    "file_message_id",
    "message_id",
]

#: The version writers send, and the newest a reader accepts.
WIRE_VERSION = 2
#: The oldest version a reader still accepts.
MIN_WIRE_VERSION = 1

#: JetStream stream holding every batch, and the subject writers publish to.
STREAM = "STRIDE"
INGEST_SUBJECT = "stride.ingest.v1"
#: Dead-letter stream and subject for messages ingest could not accept.
DLQ_STREAM = "STRIDE_DLQ"
DLQ_SUBJECT = "stride.dlq"
#: JetStream stream holding file chunks and file records until ingest stores them.
FILES_STREAM = "STRIDE_FILES"
FILE_SUBJECT = "stride.files.v1"
ARTIFACT_SUBJECT = "stride.artifacts.v1"
#: Plain NATS (no stream): hints that a large upload is starting (:class:`UploadStart`).
UPLOAD_SUBJECT = "stride.uploads.v1"
#: Plain NATS request-reply: the request is a run's ``entity/project/run_id``, the
#: reply its largest stored step (:func:`encode_last_step`); ingest answers it.
LAST_STEP_SUBJECT = "stride.runs.v1.last_step"
ARTIFACT_KINDS = ("log", "use")
_CHUNKS_PREFIX = "stride.chunks."
#: The header that numbers a file chunk (ingest puts chunks in order by it).
CHUNK_HEADER = "Stride-Chunk"
#: Bytes per file chunk: well under NATS' default 1 MiB max payload.
CHUNK_BYTES = 512 * 1024
#: The version of :class:`FileRecord` writers send (it evolves like batches).
FILE_WIRE_VERSION = 1
FILE_CATEGORIES = ("code", "input", "output")


class MetricBlock(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """Rows that share one key set, stored column by column."""

    stream: str  # "default" for user metrics, "system" for machine metrics
    keys: list[str]
    steps: bytes  # int64[n]
    times: bytes  # float64[n], seconds since the run started
    timestamps: bytes  # float64[n], seconds since the Unix epoch
    values: list[bytes]  # per key, float64[n], aligned with steps


#: Event and log levels, from least to most severe.
LEVELS = ("debug", "info", "warn", "error", "fatal")
#: The longest event message, and the longest event metadata (JSON text), in characters.
MAX_EVENT_BYTES = 64 * 1024
#: Event times are stored in int64 nanoseconds: about ±292 years around 1970.
MAX_EVENT_SECONDS = 9.2e9


class Event(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """One event or log line (wire version 2)."""

    timestamp: float  # seconds since the Unix epoch
    level: str  # one of LEVELS
    message: str
    metadata: str = "{}"  # JSON text of an object


class Batch(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
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
    #: Since version 2: events and log lines, in the order they were written.
    events: list[Event] = []

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"

    @property
    def points(self) -> int:
        return sum(len(b.steps) // 8 * len(b.keys) for b in self.metrics)


class VersionPeek(msgspec.Struct, array_like=True):
    """Decodes only the leading version field of any batch (of any layout, so it
    ignores the rest on purpose)."""

    v: int


class WireError(ValueError):
    """A message that is not a valid batch of a known version."""


_encoder = msgspec.msgpack.Encoder()
_peek_decoder = msgspec.msgpack.Decoder(VersionPeek)
_batch_decoder = msgspec.msgpack.Decoder(Batch)
_V1_FIELDS = Batch.__struct_fields__.index("events")
_json_decode = msgspec.json.decode

_KNOWN = (
    f"version {WIRE_VERSION}"
    if MIN_WIRE_VERSION == WIRE_VERSION
    else f"versions {MIN_WIRE_VERSION} to {WIRE_VERSION}"
)


def _version(payload: bytes, what: str) -> int:
    """The leading version field of any message (of any layout)."""
    try:
        return _peek_decoder.decode(payload).v
    except msgspec.DecodeError as exc:
        raise WireError(f"not a stride {what}: {exc}") from None


def encode_batch(batch: Batch) -> bytes:
    """The batch in its version's layout: a version 1 batch (writers send one when
    it has no events) stays readable by an ingest not upgraded yet."""
    if batch.v != 1:
        return _encoder.encode(batch)
    if batch.events:
        raise ValueError("a version 1 batch cannot carry events")
    return _encoder.encode(msgspec.structs.astuple(batch)[:_V1_FIELDS])  # without `events`


def decode_batch(payload: bytes) -> Batch:
    """Decode and validate one batch; raise :class:`WireError` with the reason."""
    version = _version(payload, "batch")
    if not MIN_WIRE_VERSION <= version <= WIRE_VERSION:
        raise WireError(f"unknown wire version {version} (this reader knows {_KNOWN})")
    try:
        batch = _batch_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        if "at most length" in str(exc):  # extra trailing elements: fields we do not know
            raise WireError(
                f"batch has fields this reader does not know (a newer layout sent as "
                f"version {version}?): {exc}"
            ) from None
        raise WireError(f"malformed batch: {exc}") from None
    _validate(batch)
    return batch


def _validate(batch: Batch) -> None:
    try:
        check("entity", batch.entity)
        check("project", batch.project)
        check("run id", batch.run_id)
        check("writer", batch.writer)
        for block in batch.metrics:
            check("stream", block.stream)
            for key in block.keys:
                check("key", key)
    except InvalidIdentifier as exc:
        raise WireError(str(exc)) from None
    if batch.seq < 0 or batch.ver <= 0:
        raise WireError(f"invalid seq {batch.seq} or ver {batch.ver}")
    for block in batch.metrics:
        n, rem = divmod(len(block.steps), 8)
        if rem or len(block.times) != n * 8 or len(block.timestamps) != n * 8:
            raise WireError("metric block arrays have different lengths")
        if len(block.values) != len(block.keys) or any(len(v) != n * 8 for v in block.values):
            raise WireError("metric block has a value array per key of the wrong length")
        if len(set(block.keys)) != len(block.keys):
            raise WireError("metric block keys must be unique")
    for event in batch.events:
        if event.level not in LEVELS:
            raise WireError(f"invalid event level {event.level!r:.40}: one of {LEVELS}")
        if len(event.message) > MAX_EVENT_BYTES or len(event.metadata) > MAX_EVENT_BYTES:
            raise WireError(f"an event's message or metadata is over {MAX_EVENT_BYTES} characters")
        if not -MAX_EVENT_SECONDS < event.timestamp < MAX_EVENT_SECONDS:  # NaN too
            raise WireError(f"invalid event timestamp {event.timestamp}")
        try:
            if not isinstance(_json_decode(event.metadata), dict):
                raise TypeError
        except (msgspec.DecodeError, TypeError):
            raise WireError(
                f"event metadata must be a JSON object, got {event.metadata!r:.80}"
            ) from None


def message_id(run_path: str, writer: str, seq: int) -> str:
    """JetStream ``Nats-Msg-Id`` for a batch: the batch identity itself."""
    return f"{run_path}/{writer}/{seq}"


class FileRecord(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """One saved file, published once all its chunks are in ``STRIDE_FILES``."""

    v: int
    entity: str
    project: str
    run_id: str
    writer: str
    #: Random hex id of this upload: names its chunk subject and message ids.
    upload: str
    #: Nanoseconds since the epoch when ``save`` was called: orders the versions
    #: of one name (a later save is a newer version).
    ver: int
    name: str
    category: str
    size: int
    sha256: str  # hex
    chunks: int
    mime: str
    description: str = ""
    tags: list[str] = []
    #: User metadata as JSON text (an object).
    metadata: str = "{}"
    #: The id of the artifact this file belongs to: its bytes are stored, but it is
    #: not one of the run's files (the artifact's record lists it).
    artifact: str = ""

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"


class UploadStart(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """A hint that a large file's chunks are about to be published.

    Ingest may start copying them as they arrive instead of after the
    :class:`FileRecord`; losing the hint loses only that head start. Sent with
    plain NATS to :data:`UPLOAD_SUBJECT` (ingest listens as one queue group).
    """

    v: int
    upload: str
    #: ``entity/project/run_id`` and the file's name: for messages only.
    path: str
    name: str
    size: int
    chunks: int
    mime: str


class ArtifactEntry(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """One file of an artifact: its path in the artifact and its stored bytes."""

    path: str
    sha256: str
    size: int
    mime: str


class ArtifactRecord(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """A run logged an artifact (``kind="log"``: its files, all already sent as file
    records) or used one (``kind="use"``: ``ref`` names it, ``name:alias`` or
    ``name:vN``). Published to :data:`ARTIFACT_SUBJECT` with message id
    ``artifact/<id>``."""

    v: int
    entity: str
    project: str
    run_id: str
    writer: str
    id: str  # random hex
    ver: int  # nanoseconds since the epoch when logged or used
    kind: str
    name: str
    type: str = ""
    aliases: list[str] = []
    description: str = ""
    metadata: str = "{}"
    entries: list[ArtifactEntry] = []
    ref: str = ""
    use_as: str = ""

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"


_file_decoder = msgspec.msgpack.Decoder(FileRecord)
_UPLOAD_ID = re.compile(r"[0-9a-f]{16,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _LastStep(msgspec.Struct, forbid_unknown_fields=True):
    last_step: int | None = None
    error: str | None = None


def encode_last_step(last_step: int | None, error: str | None = None) -> bytes:
    """The reply on :data:`LAST_STEP_SUBJECT`: the step, ``None`` for a run with no
    stored step, or why it could not be read."""
    return msgspec.json.encode(_LastStep(last_step, error))


def decode_last_step(payload: bytes) -> tuple[int | None, str | None]:
    """``(last_step, error)`` from a reply; :class:`WireError` if it is not one."""
    try:
        reply = msgspec.json.decode(payload, type=_LastStep)
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed last-step reply: {exc}") from None
    return reply.last_step, reply.error


def chunk_subject(upload: str) -> str:
    return _CHUNKS_PREFIX + upload


def file_message_id(upload: str) -> str:
    return f"file/{upload}"


_Record = TypeVar("_Record", FileRecord, ArtifactRecord)


def _decode_record(payload: bytes, decoder: msgspec.msgpack.Decoder[_Record], what: str) -> _Record:
    """A file or artifact record of the known version, its run and writer checked."""
    version = _version(payload, what)
    if version != FILE_WIRE_VERSION:
        raise WireError(f"unknown {what} version {version} (this reader knows {FILE_WIRE_VERSION})")
    try:
        record = decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed {what}: {exc}") from None
    try:
        check("entity", record.entity)
        check("project", record.project)
        check("run id", record.run_id)
        check("writer", record.writer)
    except InvalidIdentifier as exc:
        raise WireError(str(exc)) from None
    return record


def encode_file_record(record: FileRecord) -> bytes:
    return _encoder.encode(record)


def decode_file_record(payload: bytes) -> FileRecord:
    """Decode and validate one file record; raise :class:`WireError` with the reason."""
    record = _decode_record(payload, _file_decoder, "file record")
    try:
        check_file_name(record.name)
    except InvalidIdentifier as exc:
        raise WireError(str(exc)) from None
    if _UPLOAD_ID.fullmatch(record.upload) is None:
        raise WireError(f"invalid upload id {record.upload!r:.80}")
    if _SHA256.fullmatch(record.sha256) is None:
        raise WireError(f"invalid sha256 {record.sha256!r:.80}: 64 lowercase hex digits")
    if record.category not in FILE_CATEGORIES:
        raise WireError(f"invalid category {record.category!r:.40}: one of {FILE_CATEGORIES}")
    if record.size < 0 or record.chunks != -(-record.size // CHUNK_BYTES) or record.ver <= 0:
        raise WireError(
            f"inconsistent file record: size {record.size}, {record.chunks} chunks, "
            f"ver {record.ver}"
        )
    return record


_upload_decoder = msgspec.msgpack.Decoder(UploadStart)


def encode_upload_start(hint: UploadStart) -> bytes:
    return _encoder.encode(hint)


def decode_upload_start(payload: bytes) -> UploadStart:
    """Decode and check one upload hint; raise :class:`WireError` with the reason."""
    version = _version(payload, "upload hint")
    if version != FILE_WIRE_VERSION:
        raise WireError(
            f"unknown upload hint version {version} (this reader knows {FILE_WIRE_VERSION})"
        )
    try:
        hint = _upload_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed upload hint: {exc}") from None
    if _UPLOAD_ID.fullmatch(hint.upload) is None:
        raise WireError(f"invalid upload id {hint.upload!r:.80}")
    if hint.size < 0 or hint.chunks != -(-hint.size // CHUNK_BYTES):
        raise WireError(f"inconsistent upload hint: size {hint.size}, {hint.chunks} chunks")
    return hint


_artifact_decoder = msgspec.msgpack.Decoder(ArtifactRecord)


def encode_artifact_record(record: ArtifactRecord) -> bytes:
    return _encoder.encode(record)


def decode_artifact_record(payload: bytes) -> ArtifactRecord:
    """Decode and validate one artifact record; raise :class:`WireError` with the reason."""
    record = _decode_record(payload, _artifact_decoder, "artifact record")
    try:
        check("artifact", record.name)
        if record.kind == "log":
            check("artifact type", record.type)
        for alias in record.aliases:
            check("alias", alias)
        for entry in record.entries:
            check_file_name(entry.path)
    except InvalidIdentifier as exc:
        raise WireError(str(exc)) from None
    if record.kind not in ARTIFACT_KINDS:
        raise WireError(
            f"invalid artifact record kind {record.kind!r:.40}: one of {ARTIFACT_KINDS}"
        )
    if _UPLOAD_ID.fullmatch(record.id) is None or record.ver <= 0:
        raise WireError(f"invalid artifact record id {record.id!r:.80} or ver {record.ver}")
    if any(_SHA256.fullmatch(e.sha256) is None or e.size < 0 for e in record.entries):
        raise WireError("an artifact entry has an invalid sha256 or size")
    if len({e.path for e in record.entries}) != len(record.entries):
        raise WireError("an artifact lists a path twice")
    return record
