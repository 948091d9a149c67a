"""The control socket between a training process and its delivery agent.

Each message is a msgpack list ``[request id, [kind, ...]]``, preceded by its
length as a little-endian u32: ``["finish", slot, upto, timeout]`` (answered
``["report", batches, points, left, last_error, files_sent, files_left,
files_failed]``), ``["terminated", timeout, upto]`` (answered the same way),
``["last_step", run path, timeout]`` (answered ``["last_step", step, error]``)
and ``["close"]`` (not answered). A reply carries its request's id: one that
comes after its request timed out is recognised and dropped, never taken for
the answer to the next. See :mod:`stride._agent`.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

LENGTH = struct.Struct("<I")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[int, list[Any]]).decode


def encode(message: list[Any], request: int = 0) -> bytes:
    """One message as it goes on the socket: its length, then its msgpack body."""
    body = _encode((request, message))
    return LENGTH.pack(len(body)) + body


def decode(body: bytes) -> tuple[int, list[Any]]:
    """``(request id, message)`` from a body read off the socket."""
    return _decode(body)
