"""Give the C heap's freed memory back to the system when ingest goes idle.

A burst of ingest allocates and frees hundreds of MiB on the Python side
(fetched messages, decoded batches, Arrow tables). glibc's allocator keeps
much of what is freed for reuse: in a trial run of ``benchmarks/bench_e2e.py``
(10M points), ``malloc_trim`` called on ``stride up`` at rest gave back 117 MiB
(309 -> 192 MiB anonymous). Trimming after every fetch would cost the
burst itself; trimming once when the stream runs dry costs nothing while
data flows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import cast

__all__ = ["release_freed_memory"]


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
    return cast("Callable[[int], int] | None", trim)


_TRIM = _malloc_trim()  # glibc only: None with musl, on macOS...


def release_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``); a
    no-op where the C library has none."""
    if _TRIM is not None:
        _TRIM(0)
