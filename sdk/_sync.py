"""``stride sync``: upload spooled batches (offline runs, or sends that failed).

Each file is published with its batch identity as the JetStream message id
and removed once acknowledged, so running sync twice, or after the writer
itself re-sent some batches, never duplicates anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import nats

from ._spool import remove, spooled_files
from .wire import INGEST_SUBJECT, WireError, decode_batch, message_id


@dataclasses.dataclass
class SyncReport:
    sent: int = 0
    duplicates: int = 0  # already delivered earlier (JetStream recognised the id)
    points: int = 0
    invalid: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)


async def sync_spool(
    spool_dir: Path, server: str, *, window: int = 64, ack_timeout: float = 10.0
) -> SyncReport:
    """Publish every spooled batch under ``spool_dir``; raise ``OSError`` if NATS is down."""
    report = SyncReport()
    files = list(spooled_files(spool_dir))
    if not files:
        return report

    async def _quiet(_: Exception) -> None:  # failures are reported in the SyncReport
        return None

    nc = await nats.connect(server, connect_timeout=5.0, max_reconnect_attempts=1, error_cb=_quiet)
    js = nc.jetstream()
    try:
        for start in range(0, len(files), window):
            chunk = files[start : start + window]
            await asyncio.gather(*(_send(js, path, ack_timeout, report) for path in chunk))
    finally:
        await nc.close()
    return report


async def _send(
    js: nats.js.JetStreamContext, path: Path, timeout: float, report: SyncReport
) -> None:
    payload = path.read_bytes()
    try:
        batch = decode_batch(payload)
    except WireError:
        report.invalid.append(path)  # kept on disk for inspection, never deleted silently
        return
    msg_id = message_id(batch.path, batch.writer, batch.seq)
    try:
        ack = await js.publish(
            INGEST_SUBJECT, payload, headers={"Nats-Msg-Id": msg_id}, timeout=timeout
        )
    except Exception as exc:
        report.failed.append((path, f"{exc.__class__.__name__}: {exc}"))
        return
    remove(path)
    if ack.duplicate:
        report.duplicates += 1
    else:
        report.sent += 1
        report.points += batch.points
