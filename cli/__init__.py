"""The ``stride`` command: ``stride up`` (the whole stack in one process) and ``stride sync``."""

from ._main import main

__all__ = ["main"]
