"""Errors raised by the SDK.

The tree::

    StrideError                 root of everything the SDK raises
    ├── UsageError              a bad argument or a call in the wrong state (not retriable)
    ├── ApiError                the query service answered with an error
    │   ├── NotFoundError       404: unknown run, project or key
    │   ├── BadRequestError     400: invalid parameter; ``message`` says which and why
    │   └── AuthError           401: no token, or an unknown or revoked one;
    │                           403: a token without the scope asked for
    └── ServiceUnavailableError the query service could not be reached (retriable)

``retriable`` tells a caller whether the same call may succeed later.
"""

from __future__ import annotations

from .ids import InvalidIdentifier, Kind, check

__all__ = [
    "ApiError",
    "AuthError",
    "BadRequestError",
    "NotFoundError",
    "ServiceUnavailableError",
    "StrideError",
    "UsageError",
    "check_identifier",
]


class StrideError(Exception):
    retriable: bool = False


class UsageError(StrideError, ValueError):
    """The caller passed something the SDK cannot accept."""


class ApiError(StrideError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retriable = status >= 500


class NotFoundError(ApiError):
    pass


class BadRequestError(ApiError):
    pass


class AuthError(ApiError):
    """The service wants a token (``Api(token=...)``, ``$STRIDE_API_TOKEN``), or one
    with more scope: ``status`` is 401 or 403, ``message`` says which."""


class ServiceUnavailableError(StrideError):
    retriable = True


def check_identifier(kind: Kind, value: object) -> str:
    """``value`` if it is a valid ``kind`` (:mod:`stride.ids`); a :class:`UsageError`
    saying which rule it breaks if not."""
    try:
        return check(kind, value)
    except InvalidIdentifier as exc:
        raise UsageError(str(exc)) from None
