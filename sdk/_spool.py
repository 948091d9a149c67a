"""The offline spool: encoded batches on disk until NATS has acknowledged them.

Layout: ``<spool_dir>/<writer>/<seq:012d>.batch``, one file per batch, the
exact bytes that are published. A file is written to a temporary name and
renamed, so a crash never leaves a torn batch behind; it is removed only after
JetStream acknowledged the batch. Replaying a file twice is harmless: the
message id is the batch identity, so JetStream's duplicate window and the
ingest ledger both recognise it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_SUFFIX = ".batch"


class Spool:
    """The spooled batches of one writer."""

    def __init__(self, root: Path, writer: str) -> None:
        self.dir = root / writer
        #: False once a scan found nothing; set again by the next write. Lets the
        #: flusher skip listing the directory while there is nothing to replay.
        self.has_pending = True

    def write(self, seq: int, payload: bytes) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{seq:012d}{_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
        self.has_pending = True
        return path

    def pending(self) -> list[Path]:
        """This writer's spooled batches, oldest first."""
        found = sorted(self.dir.glob(f"*{_SUFFIX}")) if self.dir.is_dir() else []
        self.has_pending = bool(found)
        return found


def spooled_files(root: Path) -> Iterator[Path]:
    """Every spooled batch under ``root``, grouped by writer, oldest first."""
    if not root.is_dir():
        return
    for writer_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        yield from sorted(writer_dir.glob(f"*{_SUFFIX}"))


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # drop the writer folder once it is empty
