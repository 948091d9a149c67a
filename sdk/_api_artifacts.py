"""Artifacts as the query client sees them (W&B's ``Api.artifact``, ``Artifact``)."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ._api_files import _safe
from ._artifacts import check_ref
from .api_types import ArtifactDoc, ArtifactFile, ArtifactsPage
from .errors import UsageError

if TYPE_CHECKING:
    from ._api import Api

__all__ = ["ApiArtifact", "artifact", "artifact_versions", "list_artifacts", "run_artifacts"]

_ARTIFACT = msgspec.json.Decoder(ArtifactDoc)
_ARTIFACTS = msgspec.json.Decoder(ArtifactsPage)


class ApiArtifact:
    """One version of an artifact: ``name``, ``type``, ``version`` (``v3``),
    ``aliases``, ``files`` (path, sha256, size, mime), ``producer`` (the run
    that logged it first), ``size``, ``digest``, ``metadata``...

    Example::

        art = api.artifact("vision/mnist:latest")
        art.download("data")          # data/<path> for each of its files
    """

    def __init__(self, api: Api, doc: ArtifactDoc) -> None:
        self._api = api
        self._doc = doc
        self.entity, self.project, self.name = doc.entity, doc.project, doc.name
        self.type = doc.type
        self.version = doc.version
        self.versions = doc.versions
        self.aliases = doc.aliases
        self.digest = doc.digest
        self.size = doc.size
        self.file_count = doc.file_count
        self.producer = doc.producer
        self.created_at = doc.created_at
        self.description = doc.description
        self.metadata: dict[str, Any] = doc.metadata
        self.use_as = doc.use_as

    def __repr__(self) -> str:
        return f"<ApiArtifact {self.qualified_name} ({self.type}, {self.file_count} files)>"

    @property
    def qualified_name(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}:{self.version}"

    @property
    def files(self) -> list[ArtifactFile]:
        """The files of this version (fetched once, when a listing left them out)."""
        if len(self._doc.files) != self.file_count:
            self._doc = _get(self._api, self.entity, self.project, self.name, self.version)
        return self._doc.files

    def read(self, path: str) -> bytes:
        """The bytes of one file of this version, in memory."""
        with self._api._open(self._file_url(), self._params(path)) as response:
            return response.read()

    def download(self, root: str | os.PathLike[str] = ".") -> Path:
        """Write every file of this version under ``root`` (``root/<path>``), streamed;
        return ``root``."""
        base = Path(root)
        for f in self.files:
            dest = base / _safe(f.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._api._download(self._file_url(), self._params(f.path), dest)
        return base

    def _file_url(self) -> str:
        return _base(self.entity, self.project, self.name) + "/file"

    def _params(self, path: str) -> list[tuple[str, Any]]:
        return [("version", self.version), ("path", path)]


def _base(entity: str, project: str, name: str = "") -> str:
    parts = [entity, project, *([name] if name else [])]
    return "/api/v1/artifacts/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)


def _get(api: Api, entity: str, project: str, name: str, ref: str) -> ArtifactDoc:
    return api._get_as(_ARTIFACT, _base(entity, project, name), [("version", ref)])


def _split(api: Api, path: str) -> tuple[str, str, str, str]:
    """``entity/project/name:ref`` (or ``project/name:ref``, or ``name:ref`` with a
    default project) -> its parts; ``ref`` defaults to ``latest``."""
    *prefix, last = [p for p in path.split("/") if p] or [""]
    name, ref = check_ref(last)
    if len(prefix) == 2:
        return prefix[0], prefix[1], name, ref
    if len(prefix) == 1:
        return api.default_entity, prefix[0], name, ref
    if not prefix and api.default_project:
        return api.default_entity, api.default_project, name, ref
    raise UsageError(f"takes 'entity/project/name:version', got {path!r}")


def artifact(api: Api, path: str) -> ApiArtifact:
    entity, project, name, ref = _split(api, path)
    return ApiArtifact(api, _get(api, entity, project, name, ref))


def artifact_versions(api: Api, path: str) -> list[ApiArtifact]:
    entity, project, name, _ = _split(api, path)
    page = api._get_as(_ARTIFACTS, _base(entity, project, name) + "/versions")
    return [ApiArtifact(api, doc) for doc in page.artifacts]


def list_artifacts(
    api: Api, entity: str, project: str, type: str | None, per_page: int
) -> Iterator[ApiArtifact]:
    after: str | None = None
    while True:
        params = [("type", type), ("per_page", per_page), ("after", after)]
        page = api._get_as(_ARTIFACTS, _base(entity, project), params)
        for doc in page.artifacts:
            yield ApiArtifact(api, doc)
        if page.next is None:
            return
        after = page.next


def run_artifacts(api: Api, run_base: str, direction: str) -> list[ApiArtifact]:
    page = api._get_as(_ARTIFACTS, f"{run_base}/artifacts", [("direction", direction)])
    return [ApiArtifact(api, doc) for doc in page.artifacts]
