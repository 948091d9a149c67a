"""JetStream streams and the ingest consumer, created idempotently on start."""

from __future__ import annotations

import dataclasses
import logging

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from stride.wire import (
    ARTIFACT_SUBJECT,
    CHUNK_BYTES,
    DLQ_STREAM,
    DLQ_SUBJECT,
    FILE_SUBJECT,
    FILES_STREAM,
    INGEST_SUBJECT,
    STREAM,
    chunk_subject,
)

log = logging.getLogger("stride.ingest")

DURABLE = "stride-ingest"

#: Alert notifications waiting to be delivered (see :mod:`.notify`, which re-exports
#: these; defined here so that this module stays free of the notifier's imports).
NOTIFY_STREAM = "STRIDE_NOTIFY"
NOTIFY_SUBJECT = "stride.notify.v1"


def notify_stream_config(replicas: int, duplicate_window_s: float) -> StreamConfig:
    """The stream of alert notifications: kept 7 days after delivery as a record of
    what was sent; a notification re-published within the duplicate window (same
    ``Nats-Msg-Id``) is dropped."""
    return StreamConfig(
        name=NOTIFY_STREAM,
        subjects=[NOTIFY_SUBJECT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=duplicate_window_s,
        max_age=7 * 24 * 3600.0,
    )


def stream_configs(replicas: int = 1, duplicate_window_s: float = 600.0) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=STREAM,
            subjects=[INGEST_SUBJECT],
            # Acked batches are in ClickHouse; the stream only holds work not yet applied.
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            # A batch re-published within this window is dropped by JetStream; older
            # re-syncs are caught by the ingest ledger.
            duplicate_window=duplicate_window_s,
            max_msg_size=8 * 1024 * 1024,
        ),
        StreamConfig(
            name=FILES_STREAM,
            subjects=[FILE_SUBJECT, ARTIFACT_SUBJECT, chunk_subject(">")],
            # Ingest purges a file's chunks once it is stored; records are tiny and
            # age out. A writer that resumes an upload after this long starts over.
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=duplicate_window_s,
            max_age=7 * 24 * 3600.0,
            max_msg_size=CHUNK_BYTES + 64 * 1024,
            # Ingest reads chunks with direct gets (raw bytes, no base64 JSON).
            allow_direct=True,
        ),
        StreamConfig(
            name=DLQ_STREAM,
            subjects=[DLQ_SUBJECT],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=30 * 24 * 3600.0,
        ),
        notify_stream_config(replicas, duplicate_window_s),
    ]


def consumer_config(ack_wait_s: float) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=DURABLE,
        ack_wait=ack_wait_s,
        max_ack_pending=20_000,
        max_deliver=-1,
        filter_subject=INGEST_SUBJECT,
    )


async def ensure_streams(
    js: JetStreamContext, *, replicas: int = 1, duplicate_window_s: float = 600.0
) -> None:
    """Create the streams, or bring existing ones to this configuration.

    Safe against other processes doing the same, or deleting a stream meanwhile:
    adding a stream with its exact configuration is a no-op; a different one is
    updated; one deleted between the two calls is added again.
    """
    for config in stream_configs(replicas, duplicate_window_s):
        for _ in range(3):
            try:
                await js.add_stream(config)
                break
            except BadRequestError:  # exists with another configuration
                try:
                    await js.update_stream(config)
                    break
                except NotFoundError:
                    continue
        else:
            raise RuntimeError(f"could not create or update the JetStream stream {config.name}")


async def pull_durable(
    js: JetStreamContext, subject: str, stream: str, config: ConsumerConfig
) -> JetStreamContext.PullSubscription:
    """A pull subscription on the durable consumer ``config`` names: made with
    ``config`` if new, and brought to it first if it exists with other settings.

    nats-py's ``pull_subscribe`` binds an existing durable consumer as it is, so
    a changed ``--ack-wait`` would otherwise apply only once the consumer was
    deleted by hand. The settings compared are those ``config`` sets; JetStream
    lets all of them change on a live consumer. Processes started with
    different settings each bring the consumer to theirs: the last one wins.
    """
    durable = config.durable_name
    assert durable is not None, "a durable consumer needs its name"
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        info = None
    changed = [] if info is None else _differences(info.config, config)
    if changed:
        await js.add_consumer(stream, config)
        log.info(
            "the JetStream consumer %s of %s had other settings; now %s",
            durable,
            stream,
            ", ".join(f"{name} {getattr(config, name)} (was {was})" for name, was in changed),
        )
    return await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)


def _differences(current: ConsumerConfig, wanted: ConsumerConfig) -> list[tuple[str, object]]:
    """The settings ``wanted`` sets that ``current`` has otherwise, with their current values."""
    return [
        (field.name, getattr(current, field.name))
        for field in dataclasses.fields(wanted)
        if field.name not in ("name", "durable_name")
        and getattr(wanted, field.name) is not None
        and getattr(current, field.name) != getattr(wanted, field.name)
    ]
