"""Storage errors. ``StoreError`` is retriable: the same write may succeed later."""

from __future__ import annotations


class StoreError(Exception):
    retriable = True
