"""The query service: runs, sampled history and full scans over HTTP."""

from ._settings import QuerySettings
from .app import STATUS, create_app

__all__ = ["STATUS", "QuerySettings", "create_app"]
