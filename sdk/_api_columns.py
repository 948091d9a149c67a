"""What the query API's column pages become on the client: rows, DataFrames, Arrow."""

from __future__ import annotations

from typing import Any

from .api_types import ColumnsPage
from .errors import UsageError

__all__ = ["NEXT_CURSOR_HEADER", "columns", "dataframe", "pyarrow_ipc"]

#: A scan page's ``next`` cursor, also sent as this header (empty after the last
#: page): a client can ask for the next page before it decodes this one.
NEXT_CURSOR_HEADER = "Stride-Next-Cursor"

_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def pyarrow_ipc() -> Any:
    try:
        import pyarrow.ipc
    except ImportError:
        raise UsageError(
            "Arrow scans need pyarrow: pip install pyarrow (or 'stride[server]'), "
            "or use scan_history() for rows as dicts"
        ) from None
    return pyarrow.ipc


def columns(page: ColumnsPage) -> dict[str, list[Any]]:
    """The page's columns with its non-finite values put back (in place)."""
    by_key: dict[str, list[Any]] = page.columns
    for key, items in page.nonfinite.items():
        column = by_key[key]
        for row, name in items:
            column[row] = _NONFINITE[name]
    return by_key


def dataframe(columns: dict[str, list[Any]]) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise UsageError(
            "history(pandas=True) needs pandas: pip install 'stride[pandas]', "
            "or pass pandas=False for a list of dicts"
        ) from None
    frame = pd.DataFrame(columns)
    for name in frame.columns:
        if name != "_step" and frame[name].dtype == object:
            frame[name] = pd.to_numeric(frame[name], errors="coerce")  # None -> NaN
    return frame
