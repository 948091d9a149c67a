"""Artifacts: named, typed, versioned sets of files, and which runs made and used them.

Build one, then log it from a run::

    art = stride.Artifact("mnist", type="dataset", metadata={"rows": 70000})
    art.add_file("train.csv")
    art.add_dir("images")                   # images/<path> for every file in it
    run.log_artifact(art, aliases=["best"])
    run.use_artifact("mnist:latest")        # another run records what it read

The files travel like saved files (chunks through NATS, checked by sha256,
stored once by content). Once every file is in NATS the delivery agent
publishes the artifact's manifest (path, sha256, size of each file); ingest
records it when all the bytes are stored. A version is a distinct manifest:
logging the same content again makes no new version (its aliases still
move). Versions are ``v0``, ``v1``, ... in the order they were first logged;
``latest`` is the version logged last; any other alias names the version it
was last given to.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from ._files import check_source, file_name, names_in_directory
from .errors import UsageError, check_identifier

__all__ = ["Artifact", "check_aliases", "check_ref"]


class Artifact:
    """A set of files to log as one version of the artifact ``name`` of ``type``."""

    def __init__(
        self,
        name: str,
        type: str,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = check_identifier("artifact", name)
        self.type = check_identifier("artifact type", type)
        self.description = description
        self.metadata = dict(metadata or {})
        #: name in the artifact -> a local path, or bytes.
        self.entries: dict[str, Path | bytes] = {}

    def __repr__(self) -> str:
        return f"<Artifact {self.name} ({self.type}), {len(self.entries)} file(s)>"

    def add_file(self, path: str | os.PathLike[str], name: str | None = None) -> str:
        """Add a file as ``name`` (default: its base name); return the name."""
        source = Path(path)
        check_source(source, 2**63)
        return self._add(file_name(source, name, False), source)

    def add_dir(self, path: str | os.PathLike[str], name: str | None = None) -> list[str]:
        """Add every file under a directory as ``<name>/<relative path>`` (``name``
        defaults to nothing: the relative paths alone); return the names."""
        directory = Path(path)
        if not directory.is_dir():
            raise UsageError(f"cannot add the directory {directory}: not a directory")
        prefix = file_name(directory, name, False) if name else ""
        found = names_in_directory(directory, prefix)
        return [self._add(stored, source) for source, stored in found]

    def add_data(self, name: str, data: bytes | bytearray | IO[bytes]) -> str:
        """Add bytes (or a binary file object, read now) as the file ``name``."""
        content = bytes(data) if isinstance(data, bytes | bytearray) else data.read()
        return self._add(file_name(Path(name), name, False), content)

    def _add(self, name: str, source: Path | bytes) -> str:
        if name in self.entries:
            raise UsageError(f"artifact {self.name!r} already has a file {name!r}")
        self.entries[name] = source
        return name


#: Aliases Stride sets itself: ``latest`` follows the version logged last, and
#: ``v0``, ``v1``... name versions.
_RESERVED_ALIAS = re.compile(r"latest|v\d+")


def check_aliases(aliases: Iterable[str]) -> list[str]:
    """User aliases, checked: not ``latest`` or ``vN`` (Stride's own)."""
    checked = [check_identifier("alias", a) for a in aliases]
    reserved = [a for a in checked if _RESERVED_ALIAS.fullmatch(a)]
    if reserved:
        raise UsageError(f"alias {reserved[0]!r} is kept by Stride (latest and vN name versions)")
    return list(dict.fromkeys(checked))


def check_ref(ref: str) -> tuple[str, str]:
    """``name:alias`` or ``name:vN`` (``name`` alone means ``name:latest``), checked."""
    name, _, alias = ref.partition(":")
    return check_identifier("artifact", name), check_identifier("alias", alias or "latest")
