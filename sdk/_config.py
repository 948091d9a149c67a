"""Nested configuration that can also be read by dotted key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class NestedDict(dict[str, Any]):
    """A dict whose nested values can also be addressed as ``"model.depth"``.

    Example::

        >>> cfg = NestedDict({"lr": 0.001, "model": {"depth": 50}})
        >>> cfg["model"]["depth"], cfg["model.depth"]
        (50, 50)
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for key, value in (data or {}).items():
            super().__setitem__(key, _wrap(value))

    def __getitem__(self, key: str) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            if isinstance(key, str) and "." in key:
                node: Any = self
                for part in key.split("."):
                    if not isinstance(node, dict) or part not in node:
                        raise KeyError(key) from None
                    node = dict.__getitem__(node, part)
                return node
            raise

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def flat(self) -> dict[str, Any]:
        """Every leaf by its dotted key: ``{"lr": 0.001, "model.depth": 50}``."""
        out: dict[str, Any] = {}

        def walk(prefix: str, node: Mapping[str, Any]) -> None:
            for key, value in node.items():
                dotted = f"{prefix}{key}"
                if isinstance(value, Mapping) and value:
                    walk(dotted + ".", value)
                else:
                    out[dotted] = value

        walk("", self)
        return out


def _wrap(value: Any) -> Any:
    return NestedDict(value) if isinstance(value, Mapping) else value
