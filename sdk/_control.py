"""The control socket between a training process and its delivery agent.

Each message is a msgpack list, preceded by its length as a little-endian u32:
``["finish", slot, upto, timeout]`` (answered ``["report", batches, points,
left, last_error, files_sent, files_left, files_failed]``), ``["terminated",
timeout, upto]`` (answered the same way) and ``["close"]`` (not answered). See :mod:`stride._agent`.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

LENGTH = struct.Struct("<I")

_encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(list).decode


def encode(message: list[Any]) -> bytes:
    """One message as it goes on the socket: its length, then its msgpack body."""
    body = _encode(message)
    return LENGTH.pack(len(body)) + body
