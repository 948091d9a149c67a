"""Durable JetStream consumers follow the settings they are started with, against
a real nats-server: a worker restarted with another ``--ack-wait`` gets it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.client import Client as NatsClient

from stride.ingest.streams import DURABLE, consumer_config, ensure_streams, pull_durable
from stride.wire import INGEST_SUBJECT, STREAM


async def test_a_consumer_made_with_another_ack_wait_redelivers_after_the_new_one(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await pull_durable(js, INGEST_SUBJECT, STREAM, consumer_config(60.0))
    assert (await js.consumer_info(STREAM, DURABLE)).config.ack_wait == 60.0

    # Started again with a short ack wait (as `stride ingest --ack-wait 1` would be).
    with caplog.at_level(logging.INFO, logger="stride.ingest"):
        sub = await pull_durable(js, INGEST_SUBJECT, STREAM, consumer_config(1.0))
    assert (await js.consumer_info(STREAM, DURABLE)).config.ack_wait == 1.0
    assert "ack_wait 1.0 (was 60.0)" in caplog.text

    # The new wait is the one in force: a batch taken and never acked comes back
    # after about a second, not after the minute it was made with.
    await js.publish(INGEST_SUBJECT, b"a batch")
    [taken] = await sub.fetch(1, timeout=5)
    assert taken.metadata.num_delivered == 1
    await asyncio.sleep(1.5)
    [again] = await sub.fetch(1, timeout=5)
    assert again.data == b"a batch" and again.metadata.num_delivered == 2
    await again.ack()

    # The same settings again change nothing, and say nothing.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stride.ingest"):
        await pull_durable(js, INGEST_SUBJECT, STREAM, consumer_config(1.0))
    assert "other settings" not in caplog.text
