"""The query service: runs, sampled history and full scans over HTTP."""

from stride._extras import require_server_extra

require_server_extra("stride.query", "pyarrow", "numpy", "aiohttp")


from ._settings import QuerySettings
from .app import READY, STATUS, create_app

__all__ = ["READY", "STATUS", "QuerySettings", "create_app"]
