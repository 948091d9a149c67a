"""Run fields as they travel: JSON text, bounded in size."""

from __future__ import annotations

from typing import Any

import orjson

from .errors import UsageError

__all__ = ["MAX_FIELD_BYTES", "json_text"]

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


#: Largest JSON text of one run field (config, tags, a summary value...). A batch
#: must fit in one NATS message; refusing here beats a batch that never sends.
MAX_FIELD_BYTES = 256 * 1024


def json_text(value: Any, what: str = "value") -> str:
    """``value`` as JSON text, or :class:`UsageError` saying why it cannot be a field."""
    try:
        text = orjson.dumps(value, option=_JSON_OPTIONS).decode()
    except TypeError as exc:
        raise UsageError(f"{what} {value!r:.80} cannot be stored as JSON: {exc}") from None
    if len(text) > MAX_FIELD_BYTES:
        raise UsageError(
            f"{what} is {len(text) // 1024} KiB as JSON; the limit is "
            f"{MAX_FIELD_BYTES // 1024} KiB. Store large objects as files instead."
        )
    return text
