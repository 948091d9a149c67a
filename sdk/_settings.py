"""SDK settings: one frozen object, read from the environment in one place."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "nats://127.0.0.1:4222"
DEFAULT_API = "http://127.0.0.1:8080"
DEFAULT_SPOOL_DIR = Path(".stride") / "spool"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """How a run delivers its data. Every field has a safe default.

    Example::

        settings = Settings.from_env(linger_s=0.05)
        with stride.init(project="p", settings=settings) as run: ...
    """

    #: NATS URL the SDK publishes to (the only endpoint a training node needs).
    server: str = DEFAULT_SERVER
    #: Where batches that cannot be delivered yet are kept (and offline runs write).
    spool_dir: Path = DEFAULT_SPOOL_DIR
    #: Flush when this many logged rows are buffered ...
    flush_rows: int = 4096
    #: ... or when the oldest buffered row is this old. SIGKILL loses at most this window.
    linger_s: float = 0.1
    #: Rows the in-memory buffer holds before log() waits for the flusher.
    max_buffer_rows: int = 2_000_000
    #: The longest log() ever waits for buffer space; after that it keeps the row
    #: anyway (memory above the limit, with a warning): log() never drops a point.
    max_block_s: float = 0.5
    #: Upper bound on one encoded batch (NATS' default max payload is 1 MiB).
    max_batch_bytes: int = 900_000
    #: Publishes awaiting their JetStream ack at once.
    max_inflight: int = 256
    #: How long one publish may wait for its ack before the batch is spooled.
    ack_timeout_s: float = 10.0
    #: How long finish() may take to deliver what is left before spooling it.
    finish_timeout_s: float = 30.0
    #: A run with nothing to send still reports it is alive this often.
    heartbeat_s: float = 15.0
    #: Time allowed to (re)connect to NATS before spooling to disk.
    connect_timeout_s: float = 2.0
    #: Pause between reconnection attempts while NATS is unreachable.
    reconnect_interval_s: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "spool_dir", Path(self.spool_dir))  # accept a str too
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int | float) and value <= 0:
                raise ValueError(f"Settings.{field.name} must be positive, got {value!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``STRIDE_SERVER`` and ``STRIDE_SPOOL_DIR``, then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("STRIDE_SERVER"):
            values["server"] = env["STRIDE_SERVER"]
        if env.get("STRIDE_SPOOL_DIR"):
            values["spool_dir"] = Path(env["STRIDE_SPOOL_DIR"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
