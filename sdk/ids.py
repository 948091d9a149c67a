"""Identifier rules: one set, used by the SDK, ingest and query alike.

Whatever the SDK lets a user write, the wire accepts and the query API can
read back, because all three check names here:

* ``entity``, ``project``, ``run id``, ``stream``, ``writer``, and an
  ``artifact``'s name, type and aliases: 1-128 letters,
  digits, ``_``, ``-`` or ``.``, starting with a letter or digit (they appear
  in URL paths and JetStream message ids, so no ``/`` and no spaces);
* a metric ``key``: 1-256 characters of any kind but control characters.
  Keys starting with ``_`` are reserved for Stride's own columns (``_step``,
  ``_runtime``, ``_timestamp``) and refused by ``log()``; the query API
  accepts them so those columns can be asked for by name.

A saved file's ``name`` is a relative path (:func:`check_file_name`): at
most 1024 UTF-8 bytes of ``/``-separated parts, none empty, ``.`` or ``..``,
each at most 255 bytes; no leading ``/``, no backslash, no control character
(NUL included). So no name can escape the directory it is downloaded into.

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
    "check_file_name",
    "is_valid",
]

Kind = Literal[
    "entity", "project", "run id", "stream", "writer", "key", "artifact", "artifact type", "alias"
]

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


#: The longest saved-file name, in UTF-8 bytes, and the longest part of it.
MAX_FILE_NAME_BYTES = 1024
MAX_FILE_NAME_PART_BYTES = 255


def check_file_name(name: object) -> str:
    """Return ``name`` if it can name a saved file; raise :class:`InvalidIdentifier`
    saying which rule it breaks (see the module docstring)."""

    def refuse(why: str) -> InvalidIdentifier:
        return InvalidIdentifier(f"invalid file name {name!r:.120}: {why}")

    if not isinstance(name, str) or not name:
        raise refuse("a file name is a non-empty string")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise refuse("it is not valid Unicode") from None
    if size > MAX_FILE_NAME_BYTES:
        raise refuse(f"it is {size} UTF-8 bytes; the limit is {MAX_FILE_NAME_BYTES}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise refuse("it contains a control character (NUL, newline...)")
    if "\\" in name:
        raise refuse("it contains a backslash; separate directories with '/'")
    if name.startswith("/"):
        raise refuse("it is absolute; names are relative, like 'plots/loss.png'")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise refuse("it has an empty, '.' or '..' part; it must stay inside its directory")
        if len(part.encode()) > MAX_FILE_NAME_PART_BYTES:
            raise refuse(f"a part is longer than {MAX_FILE_NAME_PART_BYTES} bytes")
    return name
