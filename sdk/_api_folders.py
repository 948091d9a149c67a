"""A project's folders as the client reads them (``Api.folders``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from .api_types import FolderDoc, FoldersPage

if TYPE_CHECKING:
    from ._api import Api, Runs

__all__ = ["ApiFolder", "list_folders"]

_FOLDERS = msgspec.json.Decoder(FoldersPage)


class ApiFolder:
    """A folder: its ``path``, details (``description``, ``tags``, ``metadata``) and
    ``run_count``; :meth:`runs` lists the runs in it."""

    def __init__(self, api: Api, entity: str, project: str, doc: FolderDoc) -> None:
        self._api = api
        self.entity, self.project = entity, project
        self.path: str = doc.path
        self.run_count: int = doc.run_count
        self.description: str | None = doc.description
        self.tags: list[str] = doc.tags
        self.metadata: dict[str, Any] = doc.metadata

    def runs(self, order: str = "-created_at", per_page: int = 50) -> Runs:
        """The runs whose ``folder`` is this one (as :meth:`Api.runs`)."""
        return self._api.runs(
            f"{self.entity}/{self.project}", {"folder": self.path}, order, per_page
        )

    def __repr__(self) -> str:
        return f"<ApiFolder {self.entity}/{self.project}:{self.path} runs={self.run_count}>"


def list_folders(api: Api, entity: str, project: str, prefix: str | None) -> list[ApiFolder]:
    page = api._get_as(_FOLDERS, f"/api/v1/folders/{entity}/{project}", [("prefix", prefix)])
    return [ApiFolder(api, entity, project, doc) for doc in page.folders]
