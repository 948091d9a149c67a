"""How the ``stride`` command writes its logs: one line of text, or one JSON object a line."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"}`` (and ``"error"`` with a traceback) per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("stride: %(message)s"))
    handler.addFilter(_quiet_clients)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


#: Client libraries whose retries and failures reach Stride's own messages (with the
#: address and what to do); their warnings would repeat each one in another form.
_CHATTY = ("urllib3", "clickhouse_connect")


def _quiet_clients(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not record.name.startswith(_CHATTY)
