"""The file and artifact methods of :class:`~stride.Run`: staged on disk for the
delivery helper, which sends them beside the metrics."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from time import time_ns
from typing import IO, Any

from . import _files
from ._artifacts import Artifact, check_aliases, check_ref
from ._fields import json_text as _json
from ._settings import Settings
from ._transport import Transport
from ._wal import LogWriter
from .errors import UsageError

__all__ = ["RunFiles"]


class RunFiles:
    """Mixed into :class:`~stride.Run`; needs the run's identity and transport."""

    entity: str
    project: str
    id: str
    mode: str
    settings: Settings
    _wal: LogWriter | None
    _transport: Transport | None
    _slot: int

    def _not_logging(self) -> None:
        raise NotImplementedError

    def save(
        self,
        filename: str | os.PathLike[str],
        category: str = "output",
        filetype: str | None = None,
        preserve_path: bool = False,
        *,
        name: str | None = None,
        description: str = "",
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Save a file with the run; return the name it is stored under.

        Returns at once: the delivery helper sends the bytes (in chunks, beside
        metrics, never ahead of them) and ``finish()`` waits for them. The name
        is the file's base name, the path as given with ``preserve_path``, or
        ``name``. Saving a name again stores a new version; reads return the
        latest. ``category`` is ``code``, ``input`` or ``output``; ``filetype``
        (a MIME type) is guessed from the name when not given. A missing or
        unreadable file, a directory, a name that would escape its directory
        (``..``, absolute, backslashes) or a file over ``Settings.max_file_bytes``
        raises :class:`~stride.errors.UsageError`.
        """
        path = Path(filename)
        stored = _files.file_name(path, name, preserve_path)
        _files.check_category(category)
        _files.check_source(path, self.settings.max_file_bytes)
        self._stage(stored, category, filetype, description, tags, metadata, source=path)
        return stored

    def save_data(
        self,
        name: str,
        data: bytes | bytearray | memoryview | IO[bytes],
        category: str = "output",
        filetype: str | None = None,
        *,
        description: str = "",
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Save ``data`` (bytes, or a binary file object read to its end now) as the
        file ``name``; otherwise as :meth:`save`."""
        stored = _files.file_name(Path(name), name, False)
        _files.check_category(category)
        self._stage(stored, category, filetype, description, tags, metadata, data=data)
        return stored

    def save_directory(
        self,
        directory: str | os.PathLike[str],
        category: str = "output",
        filetype: str | None = None,
        preserve_path: bool = False,
    ) -> list[str]:
        """Save every file under ``directory`` as ``<directory name>/<relative path>``
        (the directory's path as given with ``preserve_path``); return the names."""
        path = Path(directory)
        if not path.is_dir():
            raise UsageError(f"cannot save the directory {path}: not a directory")
        prefix = _files.file_name(path, None, preserve_path) if path.name else ""
        found = _files.names_in_directory(path, prefix)
        for source, _ in found:
            _files.check_source(source, self.settings.max_file_bytes)
        return [self.save(source, category, filetype, name=stored) for source, stored in found]

    def save_all(
        self,
        items: Iterable[str | os.PathLike[str]],
        category: str = "output",
        filetype: str | None = None,
        preserve_path: bool = False,
    ) -> list[str]:
        """Save each file and directory of ``items``; return every name saved."""
        names: list[str] = []
        for item in items:
            if Path(item).is_dir():
                names += self.save_directory(item, category, filetype, preserve_path)
            else:
                names.append(self.save(item, category, filetype, preserve_path))
        return names

    def upload_file(self, path: str | os.PathLike[str], root: str = ".") -> str:
        """W&B's ``upload_file``: save ``path`` under its path relative to ``root``."""
        source = Path(path)
        try:
            relative = os.path.relpath(source.resolve(), Path(root).resolve())
        except ValueError:  # another drive (Windows)
            relative = source.name
        return self.save(source, name=Path(relative).as_posix())

    def log_artifact(self, artifact: Artifact, aliases: Iterable[str] = ()) -> Artifact:
        """Log ``artifact`` as an output of this run, with ``aliases`` (moved to this
        version if another had them). Returns at once: its files travel like saved
        files, then its manifest; logging the same content again makes no new version.
        ``latest`` and ``vN`` are Stride's own aliases."""
        checked = check_aliases(aliases)
        if not artifact.entries:
            raise UsageError(f"artifact {artifact.name!r} has no files; add some first")
        transport = self._logging_transport()
        if transport is None:
            return artifact
        directory = transport.dir / _files.FILES_DIR
        run = _files.RunRef(self.entity, self.project, self.id, self._slot)
        artifact_id = secrets.token_hex(16)
        members: dict[str, str] = {}
        for path, source in artifact.entries.items():
            size = len(source) if isinstance(source, bytes) else source.stat().st_size
            _files.check_size(
                f"{path!r} of artifact {artifact.name!r}", size, self.settings.max_file_bytes
            )
            entry = _files.stage(
                directory,
                run,
                name=path,
                category="output",
                mime=_files.guess_mime(path, None),
                source=source if isinstance(source, Path) else None,
                data=source if isinstance(source, bytes) else None,
                max_bytes=self.settings.max_file_bytes,
                artifact=artifact_id,
            )
            members[entry.upload] = path
        self._stage_artifact(
            directory,
            kind="log",
            artifact_id=artifact_id,
            name=artifact.name,
            type=artifact.type,
            aliases=checked,
            description=artifact.description,
            metadata=_json(artifact.metadata, "artifact metadata"),
            members=members,
        )
        return artifact

    def use_artifact(self, artifact: Artifact | str, use_as: str | None = None) -> str:
        """Record that this run uses an artifact: ``"name:alias"``, ``"name:vN"``,
        ``"name"`` (its latest version) or an :class:`Artifact`. The version is the one
        the reference names when ingest records it. Returns the reference; read the
        artifact itself with ``stride.Api().artifact(...)``."""
        ref = f"{artifact.name}:latest" if isinstance(artifact, Artifact) else artifact
        name, alias = check_ref(ref)
        transport = self._logging_transport()
        if transport is not None:
            self._stage_artifact(
                transport.dir / _files.FILES_DIR,
                kind="use",
                artifact_id=secrets.token_hex(16),
                name=name,
                ref=alias,
                use_as=use_as or "",
            )
        return f"{name}:{alias}"

    def _logging_transport(self) -> Transport | None:
        """The transport to stage through; ``None`` when disabled; raises if finished."""
        if self.mode == "disabled":
            return None
        if self._wal is None or self._transport is None:
            self._not_logging()
            return None
        return self._transport

    def _stage_artifact(
        self, directory: Path, *, kind: str, artifact_id: str, name: str, **fields: Any
    ) -> None:
        _files.stage_artifact(
            directory,
            _files.StagedArtifact(
                id=artifact_id,
                ver=time_ns(),
                entity=self.entity,
                project=self.project,
                run_id=self.id,
                slot=self._slot,
                kind=kind,
                name=name,
                **fields,
            ),
        )

    def _stage(
        self,
        name: str,
        category: str,
        filetype: str | None,
        description: str,
        tags: Iterable[str],
        metadata: Mapping[str, Any] | None,
        *,
        source: Path | None = None,
        data: bytes | bytearray | memoryview | IO[bytes] | None = None,
    ) -> None:
        if self.mode == "disabled":
            return
        if self._wal is None or self._transport is None:
            return self._not_logging()
        _files.stage(
            self._transport.dir / _files.FILES_DIR,
            _files.RunRef(self.entity, self.project, self.id, self._slot),
            name=name,
            category=category,
            mime=_files.guess_mime(name, filetype),
            source=source,
            data=data,
            description=description,
            tags=tags,
            metadata=metadata,
            max_bytes=self.settings.max_file_bytes,
        )
