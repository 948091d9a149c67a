"""Simvue's ``Client`` artifact calls, over Stride's query API.

In Simvue a run's saved files are its "artifacts"; these calls read them as
Simvue's client does, with its filters. A run is named by its path
(``entity/project/run_id``, or shorter with the ``Api``'s defaults).

Example::

    from stride.simvue import Client

    client = Client()                                   # $STRIDE_API, else localhost
    for a in client.list_artifacts("vision/3k9x0a1b", category="output"):
        print(a["name"], a["size"])
    client.get_artifacts_as_files("vision/3k9x0a1b", category="code", endswith=".py",
                                  path="restored")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._api import Api
from ._api_files import ApiFile

__all__ = ["Client"]


class Client:
    """Reads runs' files the way Simvue's ``Client`` does."""

    def __init__(self, api: Api | None = None) -> None:
        self.api = api or Api()

    def list_artifacts(self, run: str, category: str | None = None) -> list[dict[str, Any]]:
        """The run's files (of ``category``: ``code``, ``input`` or ``output``), each
        as a dict: ``name``, ``size``, ``checksum`` (sha256), ``type`` (MIME),
        ``category``, ``created``, ``version``, ``metadata``."""
        return [_describe(f) for f in self.api.run(run).files(category=category)]

    def get_artifact(self, run: str, name: str) -> bytes:
        """The content of the file ``name`` (its latest version)."""
        return self.api.run(run).file(name).read()

    def get_artifact_as_file(
        self, run: str, name: str, path: str | os.PathLike[str] | None = None
    ) -> Path:
        """Download the file ``name`` into the directory ``path`` (default: here), as
        ``path/<name>``; return where it went."""
        return self.api.run(run).file(name).download(path or ".", replace=True)

    def get_artifacts_as_files(
        self,
        run: str,
        category: str | None = None,
        startswith: str | None = None,
        contains: str | None = None,
        endswith: str | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> list[Path]:
        """Download the run's files that match every filter given (``category``, and a
        name that starts with, contains, ends with) into ``path``; return the paths."""
        found = self.api.run(run).files(prefix=startswith, category=category)
        return [
            f.download(path or ".", replace=True)
            for f in found
            if (contains is None or contains in f.name)
            and (endswith is None or f.name.endswith(endswith))
        ]


def _describe(f: ApiFile) -> dict[str, Any]:
    return {
        "name": f.name,
        "size": f.size,
        "checksum": f.sha256,
        "type": f.mimetype,
        "category": f.category,
        "created": f.updated_at,
        "version": f.version,
        "metadata": f.metadata,
    }
