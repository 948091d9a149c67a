"""Clear errors when a service package is imported without the server extra."""

from __future__ import annotations

import importlib.util


def require_server_extra(package: str, *modules: str) -> None:
    """Raise ``ModuleNotFoundError`` naming the extra if any of ``modules`` is missing."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                f"{package} needs the server extra, and {module} is not installed: "
                "pip install 'stride[server]'",
                name=module,
            )
