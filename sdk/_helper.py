"""The delivery helper process: ``python -I -c <boot>`` started by the SDK.

It runs one :class:`~stride._agent.Agent` on the training process's log and
exits once everything is delivered and the training process has closed the
log or died. It lives in its own session (Ctrl-C in the terminal is not for
it). SIGTERM or SIGINT sent to it directly shorten its wait: it delivers
what it can for a few seconds and leaves the rest on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from pathlib import Path
from typing import Any

from ._agent import Agent, open_own_reader
from ._settings import Settings

#: After SIGTERM or SIGINT, how long the helper still tries before leaving data on disk.
_HURRY_S = 5.0


def main(args: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    settings = Settings(**{**args["settings"], "spool_dir": Path(args["settings"]["spool_dir"])})
    control = socket.socket(fileno=args["fd"])
    own = open_own_reader(Path(args["dir"]))
    agent = Agent(settings, own=own, control=control)

    def hurry(signum: int, frame: object) -> None:
        agent.hurry(_HURRY_S)

    signal.signal(signal.SIGTERM, hurry)
    signal.signal(signal.SIGINT, hurry)
    try:
        asyncio.run(agent.run())
    finally:
        log_file = Path(args["log"])
        with contextlib.suppress(OSError):
            if log_file.stat().st_size == 0:
                log_file.unlink()
