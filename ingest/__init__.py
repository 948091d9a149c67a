"""Ingest: JetStream → decode → ClickHouse, exactly once in effect."""

from ._settings import IngestSettings
from .worker import IngestStats, IngestWorker

__all__ = ["IngestSettings", "IngestStats", "IngestWorker"]
