"""Identifier rules: one set, used by the SDK, ingest and query alike.

Whatever the SDK lets a user write, the wire accepts and the query API can
read back, because all three check names here:

* ``entity``, ``project``, ``run id``, ``stream``, ``writer``: 1-128 letters,
  digits, ``_``, ``-`` or ``.``, starting with a letter or digit (they appear
  in URL paths and JetStream message ids, so no ``/`` and no spaces);
* a metric ``key``: 1-256 characters of any kind but control characters.
  Keys starting with ``_`` are reserved for Stride's own columns (``_step``,
  ``_runtime``, ``_timestamp``) and refused by ``log()``; the query API
  accepts them so those columns can be asked for by name.

Example::

    from stride.ids import check

    check("project", "vision")  # returns "vision"
    check("project", "a/b")     # raises InvalidIdentifier("invalid project 'a/b': use 1-128 ...")
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "KEY_PATTERN",
    "NAME_PATTERN",
    "NAME_RULE",
    "InvalidIdentifier",
    "Kind",
    "check",
    "is_valid",
]

Kind = Literal["entity", "project", "run id", "stream", "writer", "key"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_KEY = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
#: The rules as regular expressions of the whole value (for schemas: OpenAPI's).
NAME_PATTERN = _NAME.pattern
KEY_PATTERN = _KEY.pattern
NAME_RULE = "use 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit"
KEY_RULE = "use 1-256 characters, no control characters"


class InvalidIdentifier(ValueError):
    """A name that breaks the rules above; the message says which rule."""


def is_valid(kind: Kind, value: object) -> bool:
    pattern = _KEY if kind == "key" else _NAME
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def check(kind: Kind, value: object) -> str:
    """Return ``value`` if it is a valid ``kind``; raise :class:`InvalidIdentifier` if not."""
    if isinstance(value, str) and is_valid(kind, value):
        return value
    rule = KEY_RULE if kind == "key" else NAME_RULE
    raise InvalidIdentifier(f"invalid {kind} {value!r:.80}: {rule}")
