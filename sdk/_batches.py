"""Frames read back from the log, grouped per run into the batches that travel.

A :class:`Builder` collects the frames of one run slot that fall in one range
of log positions ``[start, end)``; :meth:`Builder.build` turns them into a
wire :class:`~stride.wire.Batch`. A batch is *defined* by its range: the
frames of that slot between ``start`` and ``end``. That is what makes a
crash harmless: the range is written down (sealed) with the batch's ``seq``
and ``ver`` before it is published, and whoever recovers the log rebuilds the
same batch, with the same identity, from the same frames.
"""

from __future__ import annotations

import dataclasses
import struct
from datetime import UTC, datetime

from .wire import WIRE_VERSION, Batch, Event, MetricBlock

#: A sealed batch, as written to the ``seals`` file before it is published.
SEAL = struct.Struct("<IIQQQQ")  # slot, kind, seq, ver, start, end
#: Seal kinds: a range of frames; the trim mark (every seal wholly below ``end``
#: is delivered); a run ended by delivery because its writer died (crashed) or
#: was terminated by SIGTERM (cancelled); and a note that the writer finished
#: a run (its CLOSE frame may be trimmed away later: a recovery must still
#: know not to mark that run crashed). Only range and ended seals are batches.
SEAL_RANGE, SEAL_CRASHED, SEAL_TRIM, SEAL_CANCELLED, SEAL_CLOSED = 0, 1, 2, 3, 4
SEAL_ENDED = (SEAL_CRASHED, SEAL_CANCELLED)
SEAL_NOTES = (SEAL_TRIM, SEAL_CLOSED)


@dataclasses.dataclass(frozen=True)
class Seal:
    slot: int
    kind: int
    seq: int
    ver: int
    start: int
    end: int

    def pack(self) -> bytes:
        return SEAL.pack(self.slot, self.kind, self.seq, self.ver, self.start, self.end)

    def delivered_below(self, trim: int) -> bool:
        """Whether a trim mark at ``trim`` proves this seal was delivered."""
        return self.end < trim or (self.end == trim and self.start < self.end)


def read_seals(data: bytes) -> list[Seal]:
    usable = len(data) - len(data) % SEAL.size  # a torn last record was never published
    return [Seal(*SEAL.unpack_from(data, i)) for i in range(0, usable, SEAL.size)]


@dataclasses.dataclass(frozen=True)
class RunRef:
    entity: str
    project: str
    run_id: str

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"


@dataclasses.dataclass(frozen=True)
class KeySet:
    slot: int
    stream: str
    keys: tuple[str, ...]

    @property
    def row_bytes(self) -> int:
        return 8 * (4 + len(self.keys))


class Builder:
    """The frames of one run slot in ``[start, end)``."""

    __slots__ = (
        *("created", "events", "nbytes", "nrows", "points", "rows", "set", "set_once"),
        "start",
    )

    def __init__(self, start: int, created: float) -> None:
        self.start = start
        self.created = created
        self.set: dict[str, str] = {}
        self.set_once: dict[str, str] = {}
        self.rows: dict[int, list[memoryview]] = {}  # key set -> runs of row frames
        self.events: list[Event] = []
        self.nbytes = 0
        self.nrows = 0
        self.points = 0

    def add_fields(self, fields: dict[str, str], *, once: bool, size: int) -> None:
        if once:
            for name, value in fields.items():
                self.set_once.setdefault(name, value)
        else:
            self.set.update(fields)
        self.nbytes += size

    def add_event(self, event: Event, size: int) -> None:
        self.events.append(event)
        self.nbytes += size

    def add_rows(self, keyset: int, width: int, frames: memoryview, rows: int) -> None:
        self.rows.setdefault(keyset, []).append(frames)
        self.nbytes += len(frames)
        self.nrows += rows
        self.points += rows * width

    def build(
        self, ref: RunRef, writer: str, seq: int, ver: int, keysets: dict[int, KeySet]
    ) -> Batch:
        blocks = []
        for keyset_id, parts in self.rows.items():
            keyset = keysets[keyset_id]
            width = len(keyset.keys)
            stride = 4 + width
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            # Strided slices copy raw 8-byte cells: the int64 steps come through bit for bit.
            with memoryview(data).cast("d") as cells:
                blocks.append(
                    MetricBlock(
                        stream=keyset.stream,
                        keys=list(keyset.keys),
                        steps=cells[1::stride].tobytes(),
                        times=cells[2::stride].tobytes(),
                        timestamps=cells[3::stride].tobytes(),
                        values=[cells[4 + j :: stride].tobytes() for j in range(width)],
                    )
                )
        return _batch(ref, writer, seq, ver, self.set, self.set_once, blocks, self.events)


def ended_batch(ref: RunRef, writer: str, seq: int, ver: int, kind: int) -> Batch:
    """The run's writer ended without finishing it: crashed, or cancelled by SIGTERM.

    Everything in it derives from the seal, so a rebuilt one is the same batch.
    """
    fields = {"state": '"crashed"'}
    if kind == SEAL_CANCELLED:
        ended = datetime.fromtimestamp(ver / 1e9, UTC).isoformat()
        fields = {"state": '"cancelled"', "exit_code": "143", "finished_at": f'"{ended}"'}
    return _batch(ref, writer, seq, ver, fields, {}, [])


def _batch(
    ref: RunRef,
    writer: str,
    seq: int,
    ver: int,
    set_: dict[str, str],
    set_once: dict[str, str],
    metrics: list[MetricBlock],
    events: list[Event] | None = None,
) -> Batch:
    return Batch(
        v=WIRE_VERSION if events else 1,  # version 1 when it can: older ingest reads it
        entity=ref.entity,
        project=ref.project,
        run_id=ref.run_id,
        writer=writer,
        seq=seq,
        ver=ver,
        set=set_,
        set_once=set_once,
        metrics=metrics,
        events=events or [],
    )
