"""Saving files: what ``run.save()`` and friends hand to the delivery agent.

A save is staged in the process's log directory, under ``files/``, and the
call returns: no byte is read or sent on the caller's thread (except for
:meth:`Run.save_data`, whose bytes exist only in memory or in a stream the
caller owns)::

    <log dir>/files/<ver>-<upload>.json   what to upload (run, name, category...)
    <log dir>/files/<ver>-<upload>.data   the bytes: a hard link to the saved file
                                          (or a copy of saved data)

A hard link is taken when the file system allows it (same file system, no
permission trouble): the upload then reads the file as it was when saved
even if the training code deletes or replaces it by renaming (how checkpoints
are usually written). Otherwise the upload reads the file where it is, so it
must stay in place until ``finish()`` returns. Overwriting a file in place
while it uploads sends whatever was read; the sha256 covers exactly that.

The JSON is written last (write, then rename): an entry without it is not
yet saved, and the agent ignores its ``.data``. The delivery agent
(:mod:`stride._uploads`) sends every staged file and removes its entry once
NATS has its record; a process killed meanwhile leaves the entry for the
next agent, which resumes the upload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mimetypes
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import msgspec

from .errors import UsageError
from .ids import InvalidIdentifier, check_file_name
from .wire import FILE_CATEGORIES

__all__ = [
    "FILES_DIR",
    "Staged",
    "StagedArtifact",
    "names_in_directory",
    "pending",
    "pending_artifacts",
    "stage",
    "stage_artifact",
]

log = logging.getLogger("stride")

FILES_DIR = "files"
_ENTRY = ".json"
_DATA = ".data"
_TMP = ".tmp"


class Staged(msgspec.Struct, kw_only=True):
    """One staged save, as written to ``<ver>-<upload>.json``."""

    upload: str
    ver: int
    entity: str
    project: str
    run_id: str
    #: The run's slot in the writer's log (for ``finish()``'s report).
    slot: int
    name: str
    category: str
    mime: str
    description: str = ""
    tags: list[str] = []
    metadata: str = "{}"
    #: Where the bytes are when no ``.data`` link was possible; ``None`` otherwise.
    source: str | None = None
    #: The id of the artifact the file belongs to ("" for a run's own file).
    artifact: str = ""

    def entry_path(self, directory: Path) -> Path:
        return directory / f"{self.ver:020d}-{self.upload}{_ENTRY}"

    def data_path(self, directory: Path) -> Path:
        return directory / f"{self.ver:020d}-{self.upload}{_DATA}"

    def progress_path(self, directory: Path) -> Path:
        return directory / f"{self.ver:020d}-{self.upload}.progress"

    def bytes_path(self, directory: Path) -> Path:
        """Where the upload reads the bytes."""
        return Path(self.source) if self.source is not None else self.data_path(directory)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Staged)


@dataclasses.dataclass(frozen=True)
class RunRef:
    entity: str
    project: str
    run_id: str
    slot: int


def check_category(category: str) -> str:
    if category not in FILE_CATEGORIES:
        raise UsageError(f"category {category!r} is not one of {', '.join(FILE_CATEGORIES)}")
    return category


def file_name(path: Path, given: str | None, preserve_path: bool) -> str:
    """The stored name of a saved path: ``given``, the path as written (made
    relative) with ``preserve_path``, else its base name; checked."""
    if given is not None:
        name = given
    elif preserve_path:
        name = path.as_posix().lstrip("/")
        while name.startswith("./"):
            name = name[2:]
    else:
        name = path.name
    try:
        return check_file_name(name)
    except InvalidIdentifier as exc:
        raise UsageError(str(exc)) from None


def check_source(path: Path, max_bytes: int) -> os.stat_result:
    """The ``stat`` of a regular, readable file no larger than ``max_bytes``."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UsageError(f"cannot save {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"cannot save {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"cannot save {path}: it is a directory; use save_directory()")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"cannot save {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"cannot save {path}: not readable (permission denied)")
    check_size(path, info.st_size, max_bytes)
    return info


def check_size(what: object, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise UsageError(
            f"cannot save {what}: it is {size:,} bytes; the limit is {max_bytes:,} "
            "(Settings.max_file_bytes, $STRIDE_MAX_FILE_BYTES)"
        )


def guess_mime(name: str, given: str | None) -> str:
    if given:
        return given
    kind, _ = mimetypes.guess_type(name, strict=False)
    return kind or "application/octet-stream"


def stage(
    directory: Path,
    run: RunRef,
    *,
    name: str,
    category: str,
    mime: str,
    source: Path | None = None,
    data: bytes | bytearray | memoryview | IO[bytes] | None = None,
    description: str = "",
    tags: Iterable[str] = (),
    metadata: Mapping[str, Any] | None = None,
    max_bytes: int,
    artifact: str = "",
) -> Staged:
    """Stage one file (``source``) or some bytes (``data``) for upload; return the entry."""
    try:
        meta_json = msgspec.json.encode(dict(metadata or {})).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise UsageError(f"file metadata must be JSON-serializable: {exc}") from None
    tags = list(tags)
    if not all(isinstance(t, str) for t in tags):
        raise UsageError(f"file tags must be strings, got {tags!r:.200}")
    directory.mkdir(exist_ok=True)
    entry = Staged(
        upload=secrets.token_hex(16),
        ver=time.time_ns(),
        entity=run.entity,
        project=run.project,
        run_id=run.run_id,
        slot=run.slot,
        name=name,
        category=category,
        mime=mime,
        description=description,
        tags=tags,
        metadata=meta_json,
        artifact=artifact,
    )
    target = entry.data_path(directory)
    try:
        if source is not None:
            try:
                os.link(source, target)
            except OSError:  # another file system, or not allowed: read it in place
                entry.source = str(source.resolve())
        else:
            _write_data(target, data, max_bytes)
        tmp = directory / (entry.entry_path(directory).name + _TMP)
        tmp.write_bytes(_encoder.encode(entry))
        tmp.rename(entry.entry_path(directory))
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return entry


def _write_data(
    target: Path, data: bytes | bytearray | memoryview | IO[bytes] | None, max_bytes: int
) -> None:
    if isinstance(data, bytes | bytearray | memoryview):
        check_size("the data", len(data), max_bytes)
        target.write_bytes(data)
        return
    if data is None or not hasattr(data, "read"):
        raise UsageError(f"save_data takes bytes or a binary file object, got {type(data)}")
    written = 0
    with target.open("wb") as out:
        while chunk := data.read(1 << 20):
            if not isinstance(chunk, bytes | bytearray):
                raise UsageError("save_data needs a binary file object (open it with 'rb')")
            written += len(chunk)
            check_size("the data", written, max_bytes)
            out.write(chunk)


def names_in_directory(directory: Path, prefix: str) -> list[tuple[Path, str]]:
    """Every regular file under ``directory`` (symlinks to files followed), with its
    name: ``prefix`` joined with its path relative to ``directory``, sorted."""
    found: list[tuple[Path, str]] = []
    for root, _, files in os.walk(directory):
        for f in files:
            path = Path(root) / f
            if path.is_file():
                rel = path.relative_to(directory).as_posix()
                found.append((path, f"{prefix}/{rel}" if prefix else rel))
    return sorted(found, key=lambda item: item[1])


def pending(directory: Path, known: dict[str, Staged] | None = None) -> dict[str, Staged]:
    """The staged saves in ``directory`` (a log's ``files/``) by entry name, oldest
    first; entries in ``known`` are not read again. An entry that cannot be read
    is renamed ``*.unreadable`` and left for inspection."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(_ENTRY))
    except FileNotFoundError:
        return {}
    known = known or {}
    entries: dict[str, Staged] = {}
    for name in names:
        entry = known.get(name)
        if entry is None:
            path = directory / name
            try:
                entry = _decoder.decode(path.read_bytes())
            except FileNotFoundError:
                continue  # uploaded and removed meanwhile
            except (OSError, msgspec.DecodeError) as exc:
                log.error("stride: cannot read the staged file entry %s (%s); set aside", path, exc)
                with contextlib.suppress(OSError):
                    shutil.move(path, path.with_suffix(".unreadable"))
                continue
        entries[name] = entry
    return entries


_ARTIFACT = ".artifact"
_DONE = ".done"


class StagedArtifact(msgspec.Struct, kw_only=True):
    """An artifact logged (its files staged as ``Staged`` entries with ``artifact``
    set to ``id``) or used, as written to ``<ver>-<id>.artifact``; published once
    every file of it is in NATS (each leaves a ``<id>-<upload>.done``)."""

    id: str
    ver: int
    entity: str
    project: str
    run_id: str
    slot: int
    kind: str  # "log" or "use"
    name: str
    type: str = ""
    aliases: list[str] = []
    description: str = ""
    metadata: str = "{}"
    #: Upload id -> the file's path in the artifact.
    members: dict[str, str] = {}
    ref: str = ""
    use_as: str = ""

    def entry_path(self, directory: Path) -> Path:
        return directory / f"{self.ver:020d}-{self.id}{_ARTIFACT}"

    def done_path(self, directory: Path, upload: str) -> Path:
        return done_path(directory, self.id, upload)


_artifact_decoder = msgspec.json.Decoder(StagedArtifact)


def done_path(directory: Path, artifact: str, upload: str) -> Path:
    """Where the uploader leaves what an artifact's record lists of one of its files."""
    return directory / f"{artifact}-{upload}{_DONE}"


def stage_artifact(directory: Path, entry: StagedArtifact) -> None:
    """Write the artifact's entry (after its files are staged: it is the last word)."""
    directory.mkdir(exist_ok=True)
    path = entry.entry_path(directory)
    tmp = directory / (path.name + _TMP)
    tmp.write_bytes(_encoder.encode(entry))
    tmp.rename(path)


def pending_artifacts(directory: Path) -> list[StagedArtifact]:
    """The artifacts staged in ``directory``, oldest first."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(_ARTIFACT))
    except FileNotFoundError:
        return []
    found: list[StagedArtifact] = []
    for name in names:
        try:
            found.append(_artifact_decoder.decode((directory / name).read_bytes()))
        except FileNotFoundError:
            continue
        except (OSError, msgspec.DecodeError) as exc:
            log.error("stride: cannot read the staged artifact %s (%s); set aside", name, exc)
            with contextlib.suppress(OSError):
                shutil.move(directory / name, directory / (name + ".unreadable"))
    return found
