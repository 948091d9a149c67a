"""Ingest: JetStream → decode → ClickHouse, exactly once in effect."""

from stride._extras import require_server_extra

require_server_extra("stride.ingest", "pyarrow", "numpy")


from ._settings import IngestSettings
from .handlers import Handler, default_handlers
from .worker import IngestStats, IngestWorker

__all__ = ["Handler", "IngestSettings", "IngestStats", "IngestWorker", "default_handlers"]
