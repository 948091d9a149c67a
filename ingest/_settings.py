"""Ingest worker settings."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class IngestSettings:
    #: Most messages fetched (and written to ClickHouse) at once.
    fetch_batch: int = 128
    #: Fewer when they are large: a fetch aims at about this many bytes of batches,
    #: which bounds ingest's memory (two fetches are in hand: one written, one prepared).
    fetch_bytes: int = 16 << 20
    #: A fetch that came back short waits up to this long for more batches before
    #: it is written: when batches trickle in, a worker writes a few larger inserts
    #: a second instead of one per batch (each insert costs ClickHouse a new part).
    fetch_linger_s: float = 0.25
    #: How long one fetch waits for messages before checking for shutdown.
    fetch_timeout_s: float = 0.25
    #: JetStream redelivers a message not acked within this time.
    ack_wait_s: float = 60.0
    #: The same for file records; the file worker tells JetStream it is still working
    #: every third of this while it copies, so it bounds only how long a file whose
    #: worker died waits before another worker (or a restarted one) takes it over.
    file_ack_wait_s: float = 10.0
    #: On SIGTERM, the batch being written is finished and acked within this bound.
    drain_timeout_s: float = 30.0
    #: Stream replicas (1 for the embedded server, 3 in a cluster).
    replicas: int = 1
    #: JetStream drops a batch re-published within this window (by its message id);
    #: older re-sends are recognised by the ingest ledger.
    duplicate_window_s: float = 600.0
