"""The delivery agent's artifact records: published once every file of an artifact is in NATS.

``run.log_artifact`` stages each file of the artifact like a saved file (with
the artifact's id) and then the artifact itself (:class:`~._files.StagedArtifact`).
The uploader sends the files; each leaves a ``<artifact>-<upload>.done`` with
its path, sha256, size and type. When none of the artifact's files is still
staged, this publishes one :class:`~stride.wire.ArtifactRecord` listing them
(message id ``artifact/<id>``: a re-send is dropped by JetStream) and removes
the entries. A file that could not be read (reported when it failed) leaves
the artifact incomplete: it is not published, and says so. ``use_artifact``
stages an artifact with no files: published at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import msgspec
from nats.js import JetStreamContext

from ._files import Staged, StagedArtifact, pending_artifacts
from .wire import (
    ARTIFACT_SUBJECT,
    FILE_WIRE_VERSION,
    ArtifactEntry,
    ArtifactRecord,
    encode_artifact_record,
)

log = logging.getLogger("stride")

__all__ = ["ArtifactPublisher"]

_done = msgspec.json.Decoder(ArtifactEntry)


class ArtifactPublisher:
    def __init__(
        self, ack_timeout_s: float, warn: Callable[[str, str], None], wake: Callable[[], None]
    ) -> None:
        self._ack_timeout_s = ack_timeout_s
        self._warn = warn
        self._wake = wake
        self._staged: dict[Path, list[StagedArtifact]] = {}
        self._active: dict[str, asyncio.Task[None]] = {}
        self.sent = 0

    def pending(self, directory: Path, slot: int | None) -> int:
        return sum(1 for a in self._staged.get(directory, []) if slot is None or a.slot == slot)

    def scan(self, files: dict[Path, dict[str, Staged]], rescanned: set[Path]) -> None:
        """List the artifacts of the directories the uploader listed again."""
        self._staged = {
            directory: pending_artifacts(directory)
            if directory in rescanned or directory not in self._staged
            else self._staged[directory]
            for directory in files
        }

    def step(self, js: JetStreamContext, files: dict[Path, dict[str, Staged]]) -> None:
        """Publish every artifact whose files are all sent."""
        for directory, artifacts in self._staged.items():
            waiting = {entry.artifact for entry in files.get(directory, {}).values()}
            for artifact in artifacts:
                if artifact.id in self._active or artifact.id in waiting:
                    continue
                task = asyncio.create_task(self._publish(js, directory, artifact))
                self._active[artifact.id] = task
                task.add_done_callback(functools.partial(self._ended, artifact.id))

    def _ended(self, artifact: str, _: asyncio.Task[None]) -> None:
        self._active.pop(artifact, None)
        self._wake()

    async def close(self) -> None:
        for task in list(self._active.values()):
            task.cancel()
        for task in list(self._active.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _publish(
        self, js: JetStreamContext, directory: Path, artifact: StagedArtifact
    ) -> None:
        entries: list[ArtifactEntry] = []
        members = sorted(artifact.members.items(), key=lambda item: item[1])
        for upload, path in members:
            try:
                entries.append(_done.decode(artifact.done_path(directory, upload).read_bytes()))
            except (OSError, msgspec.DecodeError):
                if any(directory.glob(f"*-{upload}.json")):
                    return  # still being sent (listed after the member list was taken)
                log.error(
                    "stride: artifact %r of %s is not logged: its file %r could not be sent "
                    "(see the error above)",
                    artifact.name,
                    artifact.run_id,
                    path,
                )
                self._forget(directory, artifact)
                return
        record = ArtifactRecord(
            v=FILE_WIRE_VERSION,
            entity=artifact.entity,
            project=artifact.project,
            run_id=artifact.run_id,
            writer=directory.parent.name,  # the log's: <spool>/<writer>/files
            id=artifact.id,
            ver=artifact.ver,
            kind=artifact.kind,
            name=artifact.name,
            type=artifact.type,
            aliases=artifact.aliases,
            description=artifact.description,
            metadata=artifact.metadata,
            entries=entries,
            ref=artifact.ref,
            use_as=artifact.use_as,
        )
        try:
            await js.publish(
                ARTIFACT_SUBJECT,
                encode_artifact_record(record),
                headers={"Nats-Msg-Id": f"artifact/{artifact.id}"},
                timeout=self._ack_timeout_s,
            )
        except Exception as exc:  # tried again at a later step
            self._warn(
                "artifact-publish",
                f"stride: NATS did not take artifact {artifact.name!r} of {artifact.run_id} "
                f"({exc.__class__.__name__}: {exc}); retrying, it is safe in the spool directory",
            )
            await asyncio.sleep(1.0)
            return
        self.sent += 1
        self._forget(directory, artifact)

    def _forget(self, directory: Path, artifact: StagedArtifact) -> None:
        artifact.entry_path(directory).unlink(missing_ok=True)
        for upload in artifact.members:
            artifact.done_path(directory, upload).unlink(missing_ok=True)
        staged = self._staged.get(directory, [])
        self._staged[directory] = [a for a in staged if a.id != artifact.id]
