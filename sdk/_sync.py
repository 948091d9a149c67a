"""``stride sync``: deliver logs left in a spool directory.

Offline runs, and processes that died before their data was delivered,
leave their log directory behind (see :mod:`stride._wal`). Sync runs a
delivery agent over every such log whose writer is gone: sealed batches are
published again with their original identity (JetStream and the ingest
ledger recognise those that already landed), the rest is sealed and sent,
and each log is removed once all of it is acknowledged. Running sync twice,
or while another process adopts the same logs, never duplicates anything:
a log is only ever read by the one process holding its lock.
"""

from __future__ import annotations

import dataclasses

from ._agent import Agent, AgentReport
from ._settings import Settings


async def sync_spool(settings: Settings) -> AgentReport:
    """Deliver every log under ``settings.spool_dir`` whose writer is gone."""
    sync_settings = dataclasses.replace(settings, orphan_timeout_s=settings.connect_timeout_s * 3)
    agent = Agent(sync_settings, adopt=True, include_offline=True)
    return await agent.run()
