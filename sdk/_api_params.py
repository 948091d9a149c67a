"""The caller's arguments as the query API takes them (filters, keys, edited values)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import UsageError

__all__ = ["check_finite", "keys_param", "plain"]


def plain(value: Any) -> Any:
    """``value`` with nested dicts (NestedDict included) as plain dicts, for JSON."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def check_finite(value: Any, where: str) -> None:
    """Refuse NaN and infinities in a filter: JSON has none, and sent as ``null``
    they would silently mean something else."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{where}: {value!r} is not a number a filter can compare with")
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_finite(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_finite(item, f"{where}[{i}]")


def keys_param(keys: Sequence[str] | None) -> list[str] | None:
    if keys is None:
        return None
    if isinstance(keys, str):
        return [keys]
    return list(keys)
