"""A run's saved files as the query client sees them (W&B's ``File``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import msgspec

from .api_types import FileDoc, FilesPage, FileUpdate, Status
from .errors import UsageError
from .ids import InvalidIdentifier, check_file_name

if TYPE_CHECKING:
    from ._api import Api

__all__ = ["ApiFile", "list_files", "one_file"]

_FILE = msgspec.json.Decoder(FileDoc)
_FILES = msgspec.json.Decoder(FilesPage)
_STATUS = msgspec.json.Decoder(Status)
_UPDATE = msgspec.json.Encoder()


class ApiFile:
    """One saved file of a run, at one version (the latest unless asked otherwise).

    Example::

        f = api.run("vision/3k9x0a1b").file("plots/loss.png")
        f.download(root="out")          # out/plots/loss.png
        print(f.size, f.sha256, f.version, f.versions)
    """

    def __init__(self, api: Api, run_base: str, doc: FileDoc) -> None:
        self._api = api
        self._run_base = run_base
        self._set(doc)

    def _set(self, doc: FileDoc) -> None:
        self.name = doc.name
        self.size = doc.size
        self.sha256 = doc.sha256
        self.mimetype = doc.mime
        self.category = doc.category
        self.description = doc.description
        self.tags = doc.tags
        self.metadata: dict[str, Any] = doc.metadata
        self.version = doc.version
        self.versions = doc.versions
        self.updated_at = doc.saved_at

    def __repr__(self) -> str:
        return f"<ApiFile {self.name} v{self.version} ({self.size} bytes)>"

    @property
    def url(self) -> str:
        """Where the service serves the bytes (a GET with the client's token)."""
        params = urlencode({"name": self.name, "version": self.version})
        return f"{self._api.base_url}{self._run_base}/file/content?{params}"

    def download(
        self, root: str | os.PathLike[str] = ".", replace: bool = False, exist_ok: bool = False
    ) -> Path:
        """Write the file to ``root/<name>`` (directories made as needed) and return
        the path. An existing file is an error unless ``replace`` (write it again)
        or ``exist_ok`` (keep it). Streamed: any size fits."""
        dest = Path(root) / _safe(self.name)
        if dest.exists() and not replace:
            if exist_ok:
                return dest
            raise UsageError(f"{dest} exists; pass replace=True or exist_ok=True")
        dest.parent.mkdir(parents=True, exist_ok=True)
        return self._api._download(f"{self._run_base}/file/content", self._params(), dest)

    def read(self) -> bytes:
        """The whole file, in memory."""
        with self._api._open(f"{self._run_base}/file/content", self._params()) as response:
            return response.read()

    def update(
        self,
        *,
        description: str | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ApiFile:
        """Change this version's description, tags or metadata (replaced whole); what is
        not given stays. Returns the file as now stored."""
        body = FileUpdate(description=description, tags=tags, metadata=metadata)
        return self._patch(body)

    def delete(self, purge: bool = False) -> None:
        """Hide the file, every version (listed again with ``run.files(deleted=True)``
        and brought back with :meth:`restore`); with ``purge``, remove it for good, and
        its bytes unless another file holds the same."""
        query = urlencode({"name": self.name, "purge": str(purge).lower()})
        self._api._send_as(_STATUS, "DELETE", f"{self._run_base}/file?{query}", None)

    def restore(self) -> ApiFile:
        """Bring a soft-deleted file back (every version)."""
        return self._patch(FileUpdate(deleted=False))

    def _patch(self, body: FileUpdate) -> ApiFile:
        query = urlencode({"name": self.name, "version": self.version})
        path = f"{self._run_base}/file?{query}"
        self._set(self._api._send_as(_FILE, "PATCH", path, _UPDATE.encode(body)))
        return self

    def _params(self) -> list[tuple[str, Any]]:
        return [("name", self.name), ("version", self.version)]


def _safe(name: str) -> str:
    """``name`` if it stays inside the directory it is written to (checked here too:
    the client does not take the service's word for it)."""
    try:
        return check_file_name(name)
    except InvalidIdentifier as exc:
        raise UsageError(f"refusing to write a file the service named badly: {exc}") from None


def list_files(
    api: Api,
    run_base: str,
    *,
    prefix: str | None = None,
    category: str | None = None,
    tag: str | None = None,
    per_page: int = 100,
    deleted: bool = False,
) -> Iterator[ApiFile]:
    after: str | None = None
    while True:
        params: list[tuple[str, Any]] = [("prefix", prefix), ("category", category), ("tag", tag)]
        params.append(("deleted", "true" if deleted else None))
        params += [("per_page", per_page), ("after", after)]
        page = api._get_as(_FILES, f"{run_base}/files", params)
        for doc in page.files:
            yield ApiFile(api, run_base, doc)
        if page.next is None:
            return
        after = page.next


def one_file(api: Api, run_base: str, name: str, version: int | None = None) -> ApiFile:
    try:
        check_file_name(name)
    except InvalidIdentifier as exc:
        raise UsageError(str(exc)) from None
    doc = api._get_as(_FILE, f"{run_base}/file", [("name", name), ("version", version)])
    return ApiFile(api, run_base, doc)
