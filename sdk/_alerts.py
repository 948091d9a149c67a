"""Alerts as a run defines them (Simvue's ``add_alert``): checked here, sent as a run
field ``alerts.<name>`` holding the definition, evaluated by ingest as data arrives.

Checked here so a mistake fails at the call, in the training script, not later in
the service's log. Frequency and window are in seconds (Simvue counts minutes).
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from .api_types import AlertDefinition
from .errors import UsageError

__all__ = ["ALERT_FIELD_PREFIX", "MIN_FREQUENCY_S", "RULES", "check_definition", "define_alert"]

#: The run field that attaches an alert: ``alerts.<name>``, the definition as JSON.
ALERT_FIELD_PREFIX = "alerts."
RULES = ("is above", "is below", "is outside range", "is inside range")
SOURCES = ("metrics", "events")
NOTIFICATIONS = ("none", "webhook", "email")
#: The shortest ``frequency``: instants are multiples of it in Unix seconds.
MIN_FREQUENCY_S = 0.001
_MAX_NAME = 128
_MAX_PATTERN = 1024
_EMAIL = re.compile(r"[^@\s,]+@[^@\s,]+")


def define_alert(
    name: str,
    *,
    source: str,
    frequency: float,
    window: float | None,
    rule: str | None,
    metric: str | None,
    stream: str,
    threshold: float | None,
    range_low: float | None,
    range_high: float | None,
    pattern: str | None,
    notification: str,
    webhook: str | None,
    email: str | list[str] | None,
    description: str | None,
) -> AlertDefinition:
    """The definition these arguments make, or :class:`UsageError` saying what is wrong."""
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise UsageError(f"alert name must be 1-{_MAX_NAME} characters, got {name!r}")
    if any(ord(c) < 32 for c in name):
        raise UsageError(f"alert name {name!r} holds a control character")
    _one_of("source", source, SOURCES)
    _one_of("notification", notification, NOTIFICATIONS)
    frequency = _positive("frequency", frequency)
    if frequency < MIN_FREQUENCY_S:
        raise UsageError(f"frequency must be at least {MIN_FREQUENCY_S} s, got {frequency!r}")
    window = frequency if window is None else _positive("window", window)
    fields: dict[str, Any] = {"source": source, "frequency": frequency, "window": window}
    if source == "metrics":
        _one_of("rule", rule, RULES)
        if not isinstance(metric, str) or not metric:
            raise UsageError("a metrics alert needs metric=, the name of a logged metric")
        if rule in ("is above", "is below"):
            fields["threshold"] = _finite("threshold", threshold, rule)
        else:
            low = _finite("range_low", range_low, rule)
            high = _finite("range_high", range_high, rule)
            if low > high:
                raise UsageError(f"range_low ({low:g}) is above range_high ({high:g})")
            fields |= {"range_low": low, "range_high": high}
        fields |= {"rule": rule, "metric": metric, "stream": stream}
    else:
        if not isinstance(pattern, str) or not pattern or len(pattern) > _MAX_PATTERN:
            raise UsageError(
                f"an events alert needs pattern=, the text to find (1-{_MAX_PATTERN} characters)"
            )
        fields["pattern"] = pattern
    fields["notification"] = notification
    if notification == "webhook":
        if not isinstance(webhook, str) or not webhook.startswith(("http://", "https://")):
            raise UsageError(
                f"notification='webhook' needs webhook='http(s)://...', got {webhook!r}"
            )
        fields["target"] = webhook
    elif notification == "email" and email:
        recipients = email.split(",") if isinstance(email, str) else list(email)
        bad = [r for r in recipients if not _EMAIL.fullmatch(str(r).strip())]
        if bad:
            raise UsageError(f"not an email address: {bad[0]!r}")
        fields["target"] = ",".join(str(r).strip() for r in recipients)
    if description is not None:
        fields["description"] = str(description)
    return msgspec.convert(fields, AlertDefinition)


def check_definition(name: str, d: AlertDefinition) -> AlertDefinition:
    """``d`` as :func:`define_alert` would have made it, or :class:`UsageError`: for
    definitions read off the wire, which any writer could have sent."""
    return define_alert(
        name,
        source=d.source,
        frequency=d.frequency,
        window=d.window,
        rule=d.rule,
        metric=d.metric,
        stream=d.stream,
        threshold=d.threshold,
        range_low=d.range_low,
        range_high=d.range_high,
        pattern=d.pattern,
        notification=d.notification,
        webhook=d.target if d.notification == "webhook" else None,
        email=d.target if d.notification == "email" else None,
        description=d.description,
    )


def _one_of(what: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{what} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _positive(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{what} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _finite(what: str, value: Any, rule: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"rule {rule!r} needs {what}= as a finite number, got {value!r}")
    return float(value)
