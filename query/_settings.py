"""Query service settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuerySettings:
    #: Where the data is, when the app opens its own store (``create_app`` without
    #: ``store=``): a URL for :func:`stride.store.open_store`, e.g. ``chdb:///path``.
    store_url: str | None = None
    #: A running run whose last heartbeat is older than this is reported "crashed".
    lost_after_s: float = 300.0
    max_samples: int = 100_000
    max_page_size: int = 100_000
    max_runs_per_page: int = 1_000
    #: Rows scans have read ahead are kept up to this many bytes in all; a scan in
    #: full flight holds up to ~19 MB (:mod:`.readahead`), and past the bound the
    #: oldest scans' rows are dropped (read again if asked for: slower, never wrong).
    read_ahead_bytes: int = 64 << 20
    #: With a tokens file (``stride token create``), every request but the probes
    #: needs a bearer token with the right scope (see :mod:`.auth`); without, none.
    tokens_file: Path | None = None
