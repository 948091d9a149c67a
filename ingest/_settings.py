"""Ingest worker settings."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class IngestSettings:
    #: Messages fetched (and written to ClickHouse) at once.
    fetch_batch: int = 128
    #: How long one fetch waits for messages before checking for shutdown.
    fetch_timeout_s: float = 0.25
    #: JetStream redelivers a message not acked within this time.
    ack_wait_s: float = 60.0
    #: On SIGTERM, the batch being written is finished and acked within this bound.
    drain_timeout_s: float = 30.0
    #: Stream replicas (1 for the embedded server, 3 in a cluster).
    replicas: int = 1
    #: JetStream drops a batch re-published within this window (by its message id);
    #: older re-sends are recognised by the ingest ledger.
    duplicate_window_s: float = 600.0
