"""Query parameters as ClickHouse text literals (what chDB expects for arrays)."""

from __future__ import annotations

from collections.abc import Iterable


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def string_array(values: Iterable[str]) -> str:
    """``['a', 'b']`` for a ``{name:Array(String)}`` parameter."""
    return "[" + ", ".join(quote(v) for v in values) + "]"


def int_array(values: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"
