"""Folders (Simvue's ``set_folder_details``): a run's ``folder`` groups it; a folder's
metadata, tags and description travel as fields of the run that sets them,
``folder:<detail>:<path>``, which ingest stores per folder (not on the run)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._fields import json_text
from .errors import UsageError

__all__ = ["FOLDER_FIELD_PREFIX", "check_folder", "folder_fields"]

#: The run fields that carry folder details: ``folder:<detail>:<path>``.
FOLDER_FIELD_PREFIX = "folder:"
MAX_FOLDER_CHARS = 512


def check_folder(path: Any) -> str:
    """``path`` if it can name a folder, else :class:`UsageError` saying why."""
    if not isinstance(path, str) or not path.strip() or len(path) > MAX_FOLDER_CHARS:
        raise UsageError(f"a folder is a path of 1-{MAX_FOLDER_CHARS} characters, got {path!r}")
    if any(ord(c) < 32 for c in path):
        raise UsageError(f"folder {path!r} holds a control character")
    return path


def folder_fields(
    path: str,
    metadata: Mapping[str, Any] | None,
    tags: Iterable[str] | None,
    description: str | None,
) -> dict[str, str]:
    """The fields that set the details given (``None``: left as they are)."""
    check_folder(path)
    details: dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise UsageError(f"folder metadata must be a mapping, got {type(metadata).__name__}")
        details["metadata"] = dict(metadata)
    if tags is not None:
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise UsageError(f"folder tags must be a list of strings, got {tags!r}")
        details["tags"] = list(tags)
    if description is not None:
        details["description"] = str(description)
    return {
        f"{FOLDER_FIELD_PREFIX}{detail}:{path}": json_text(value, f"folder {detail}")
        for detail, value in details.items()
    }
