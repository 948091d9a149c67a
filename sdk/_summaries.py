"""Buffered values and their aggregates: ML-Dash's ``buffer`` / ``log_summary``.

``Run.buffer`` appends numbers to an in-memory array per key (no I/O);
``Run.log_summary`` turns each key's values into ``<key>.<aggregation>``
metrics and empties the buffer. Sums use :func:`math.fsum` (exactly rounded,
so a long buffer of small values does not drift), the standard deviation is
two-pass (population, ``ddof=0``), and percentiles interpolate linearly
between the two nearest ranks, as NumPy's default does. A NaN among a key's
values makes its aggregates NaN (``count`` excepted).
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Iterable, Mapping

from .errors import UsageError, check_identifier

__all__ = ["AGGREGATIONS", "SummaryBuffer"]

AGGREGATIONS = ("mean", "std", "min", "max", "count", "sum")
"""The aggregations by name; ``p<q>`` (``p50``, ``p99``, ``p99.9``) adds a percentile."""
_PERCENTILE = re.compile(r"p(\d{1,2}(?:\.\d+)?|100)")


class SummaryBuffer:
    """Numbers kept per key until their aggregates are taken."""

    def __init__(self) -> None:
        self._values: dict[str, array[float]] = {}

    def add(self, data: Mapping[str, float]) -> None:
        """Append every value, or none: each is checked first."""
        numbers = [(_checked_key(key), _number(key, value)) for key, value in data.items()]
        for key, number in numbers:
            values = self._values.get(key)
            if values is None:
                values = self._values[key] = array("d")
            values.append(number)

    def __len__(self) -> int:
        return sum(len(v) for v in self._values.values())

    def clear(self) -> None:
        self._values.clear()

    def aggregates(self, aggregations: Iterable[str]) -> dict[str, float]:
        """``{"<key>.<aggregation>": value}`` for every buffered key."""
        names = list(aggregations) or ["mean"]
        for name in names:
            if name not in AGGREGATIONS and _PERCENTILE.fullmatch(name) is None:
                raise UsageError(
                    f"unknown aggregation {name!r}: use {', '.join(AGGREGATIONS)} or a "
                    "percentile p0-p100 (p50, p90, p99.9)"
                )
        return {
            f"{key}.{name}": _aggregate(name, values)
            for key, values in self._values.items()
            for name in names
        }


def _checked_key(key: object) -> str:
    """A key whose aggregates ``log()`` will take (``loss`` → ``loss.mean``)."""
    if not isinstance(key, str) or not key:
        raise UsageError(f"buffered keys must be non-empty strings, got {key!r}")
    if key.startswith("_"):
        raise UsageError(f"buffered key {key!r} is reserved: names starting with '_' are")
    return check_identifier("key", key)


def _number(key: str, value: object) -> float:
    """``value`` as a float, by the rule ``log()`` applies (numbers only, not text)."""
    try:
        if isinstance(value, str | bytes):
            raise TypeError
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(
            f"buffer({key!r}=...) needs a number, got {type(value).__name__} {value!r:.80}"
        ) from None


def _aggregate(name: str, values: array[float]) -> float:
    n = len(values)
    if name == "count":
        return float(n)
    if any(math.isnan(x) for x in values):  # as NumPy: a NaN makes every aggregate NaN
        return math.nan
    if name == "min":
        return min(values)
    if name == "max":
        return max(values)
    if name == "sum":
        return _sum(values)
    if name == "mean":
        return _sum(values) / n
    if name == "std":
        mean = _sum(values) / n
        return math.sqrt(_sum([(x - mean) ** 2 for x in values]) / n)
    return _percentile(sorted(values), float(name[1:]))


def _sum(values: Iterable[float]) -> float:
    try:
        return math.fsum(values)
    except (ValueError, OverflowError):  # inf and -inf, or an overflow: IEEE's answer
        return sum(values, 0.0)


def _percentile(ordered: list[float], q: float) -> float:
    position = q / 100 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
