"""One ``stride up`` per data directory: an exclusive, non-blocking file lock."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from .errors import CliError


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "stride.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the lifetime of the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            f.close()
            raise CliError(
                f"the data directory {self.path.parent} is already used by `stride up` "
                f"(pid {owner}); stop it first or pass a different --data-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
