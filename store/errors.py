"""Storage errors.

The tree::

    StoreError                  root; retriable unless a subclass says otherwise
    ├── ObjectNotFoundError     no object under that key (not retriable)
    ├── InvalidKeyError         the key breaks the key rules; also a ValueError (not retriable)
    ├── CredentialsRefusedError the server refused the access key or secret (not retriable)
    └── StoreUnavailableError   the server could not be reached or failed (retriable)

``retriable`` tells a caller whether the same call may succeed later. Ingest
today naks (and backs off) on every storage error, retriable or not, so a
batch the server always rejects is retried until someone fixes the cause;
dead-lettering the non-retriable ones is not done yet.
"""

from __future__ import annotations

__all__ = [
    "CredentialsRefusedError",
    "InvalidKeyError",
    "ObjectNotFoundError",
    "StoreError",
    "StoreUnavailableError",
]


class StoreError(Exception):
    """A storage call failed. ``retriable`` is per class, or per error where given."""

    retriable: bool = True

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ObjectNotFoundError(StoreError):
    """No object is stored under ``key``."""

    retriable = False

    def __init__(self, key: str, where: str) -> None:
        super().__init__(
            f"no object under key {key!r} in {where}: it was never written, was deleted, "
            "or its write did not complete; check the key, or put() the object first"
        )
        self.key = key


class InvalidKeyError(StoreError, ValueError):
    """``key`` cannot name an object; ``reason`` says which rule it breaks."""

    retriable = False

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid object key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class CredentialsRefusedError(StoreError):
    """The server refused the credentials; retrying with the same ones cannot help."""

    retriable = False


class StoreUnavailableError(StoreError):
    """The server could not be reached, timed out or failed; the call may succeed later."""

    retriable = True
