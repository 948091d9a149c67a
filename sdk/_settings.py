"""SDK settings: one frozen object, read from the environment in one place."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

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

    #: NATS URL the SDK publishes to (the only endpoint a training node needs); for a
    #: cluster, several URLs separated by commas (it also learns the others from any one).
    server: str = DEFAULT_SERVER
    #: Where batches that cannot be delivered yet are kept (and offline runs write).
    spool_dir: Path = DEFAULT_SPOOL_DIR
    #: Who delivers: "process" (a helper process the SDK starts: it outlives a killed
    #: training process and keeps encoding and network work off its GIL) or "thread"
    #: (a thread of this process; a kill leaves the rest for the next process or
    #: `stride sync`).
    delivery: str = "process"
    #: A batch is sent when this many rows are waiting ...
    flush_rows: int = 4096
    #: ... or when the oldest waiting row is this old.
    linger_s: float = 0.05
    #: Size of one log segment file (the log is kept until delivered, then trimmed).
    segment_bytes: int = 32 * 1024 * 1024
    #: Undelivered data on disk beyond which a warning says so (again at each doubling).
    #: Nothing is ever dropped: the log keeps growing while NATS is unreachable.
    max_spool_bytes: int = 4 * 1024**3
    #: Upper bound on one encoded batch (NATS' default max payload is 1 MiB).
    max_batch_bytes: int = 900_000
    #: Publishes awaiting their JetStream ack at once.
    max_inflight: int = 256
    #: How long one publish may wait for its ack before it is retried.
    ack_timeout_s: float = 10.0
    #: How long finish() waits for the run's data to be acknowledged.
    finish_timeout_s: float = 30.0
    #: A run with nothing to send still reports it is alive this often.
    heartbeat_s: float = 15.0
    #: Time allowed to (re)connect to NATS.
    connect_timeout_s: float = 2.0
    #: How long ``stride.init(id=...)`` waits to learn the run's largest stored step
    #: (so that ``log()`` without ``step=`` goes on after it); then it starts at 0.
    resume_timeout_s: float = 5.0
    #: Pause between reconnection attempts while NATS is unreachable.
    reconnect_interval_s: float = 1.0
    #: After the training process exits, how long delivery keeps trying to reach NATS
    #: before it leaves the rest on disk (for the next process or `stride sync`).
    orphan_timeout_s: float = 120.0
    #: The largest file ``run.save()`` accepts (refused at the call, naming the limit).
    max_file_bytes: int = 64 * 1024**3
    #: File chunks awaiting their JetStream ack at once (each up to 512 KiB).
    file_window: int = 8
    #: With ``init(capture_output=True)``: stdout and stderr recorded per run, at most.
    max_captured_bytes: int = 16 * 1024 * 1024
    #: System metrics (CPU, memory, disk, network, GPUs) are sampled this often into
    #: every open run's ``system`` stream; 0 turns them off (see ``stride._system``).
    system_interval_s: float = 10.0

    def to_json(self) -> bytes:
        return msgspec.json.encode(dataclasses.asdict(self), enc_hook=str)

    @classmethod
    def from_json(cls, data: bytes) -> Settings:
        return cls(**msgspec.json.decode(data))

    def __post_init__(self) -> None:
        object.__setattr__(self, "spool_dir", Path(self.spool_dir))  # accept a str too
        if self.delivery not in ("process", "thread"):
            raise ValueError(
                f"Settings.delivery must be 'process' or 'thread', got {self.delivery!r}"
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "system_interval_s" and value == 0:
                continue  # off
            if isinstance(value, int | float) and value <= 0:
                raise ValueError(f"Settings.{field.name} must be positive, got {value!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``STRIDE_SERVER``, ``STRIDE_SPOOL_DIR``, ``STRIDE_DELIVERY``,
        ``STRIDE_MAX_FILE_BYTES``, ``STRIDE_SYSTEM_INTERVAL``, then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("STRIDE_SERVER"):
            values["server"] = env["STRIDE_SERVER"]
        if env.get("STRIDE_SPOOL_DIR"):
            values["spool_dir"] = Path(env["STRIDE_SPOOL_DIR"])
        if env.get("STRIDE_DELIVERY"):
            values["delivery"] = env["STRIDE_DELIVERY"]
        if env.get("STRIDE_MAX_FILE_BYTES"):
            values["max_file_bytes"] = int(env["STRIDE_MAX_FILE_BYTES"])
        if env.get("STRIDE_SYSTEM_INTERVAL"):
            values["system_interval_s"] = float(env["STRIDE_SYSTEM_INTERVAL"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
