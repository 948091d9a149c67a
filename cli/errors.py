"""Errors the CLI reports as one clear line (never a traceback)."""

from __future__ import annotations


class CliError(Exception):
    """A problem the user can fix; ``str()`` says what and how."""
