"""One log directory as delivery sees it: read frames, seal batches, trim what is acked.

A :class:`LogReader` walks the log from its cursor, sorting frames into one
:class:`~stride._batches.Builder` per run slot. A builder is sealed into a
batch (``seq``, ``ver`` and its frame range appended to the ``seals`` file)
when it is full, old enough (``linger_s``) or asked for; only then is the
batch published. Once every batch below a position is acknowledged, whole
segments below it are deleted and a trim mark is sealed.

Recovery is the same walk: a reader opened on a log whose writer is gone
first loads the catalog and the seals, rebuilds every sealed batch not yet
proven delivered from its range (same ``seq``, same ``ver``, same frames: the
same message id, so JetStream and the ingest ledger recognise a batch that
did land) and seals whatever follows as new batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import msgspec

from ._batches import (
    SEAL,
    SEAL_CLOSED,
    SEAL_CRASHED,
    SEAL_ENDED,
    SEAL_NOTES,
    SEAL_RANGE,
    SEAL_TRIM,
    Builder,
    KeySet,
    RunRef,
    Seal,
    ended_batch,
    read_seals,
)
from ._wal import (
    CLOSE,
    EVENT,
    HEADER_BYTES,
    KEYSET,
    OPEN,
    ROW,
    SET,
    SET_ONCE,
    CorruptLog,
    LogMeta,
    Segment,
    frame_header,
    frame_payload,
    scan,
    segment_name,
    segment_paths,
)
from .wire import Batch, Event, encode_batch

log = logging.getLogger("stride")
_decode_list = msgspec.msgpack.Decoder(list).decode
_decode_fields = msgspec.msgpack.Decoder(dict[str, str]).decode
_decode_event = msgspec.msgpack.Decoder(Event).decode
_FIELD_KINDS = (SET, SET_ONCE)
#: A trim mark is written at least every this many bytes of delivered log.
_MARK_EVERY = 1024 * 1024


@dataclasses.dataclass
class Outgoing:
    """A sealed batch ready to publish (or republish, after a recovery)."""

    slot: int
    seq: int
    start: int
    end: int
    points: int
    payload: bytes


@dataclasses.dataclass
class SlotState:
    ref: RunRef
    seq: int = 0
    covered_until: int = 0  # frames below this belong to seals being rebuilt
    builder: Builder | None = None
    closed: bool = False  # the writer finished the run (CLOSE frame)
    ended: bool = False  # closed, or marked crashed by delivery
    batches_sent: int = 0
    points_sent: int = 0
    last_sealed: float = 0.0  # monotonic; drives heartbeats


class LogReader:
    """Delivery's side of one log directory; not thread-safe (one agent loop owns it)."""

    def __init__(
        self, directory: Path, meta: LogMeta, lock: IO[bytes], *, writer_alive: bool
    ) -> None:
        self.dir = directory
        self.meta = meta
        self.writer = meta.writer
        self.writer_alive = writer_alive
        self._lock = lock
        self._seg_bytes = meta.segment_bytes
        self.slots: dict[int, SlotState] = {}
        self.keysets: dict[int, KeySet] = {}
        self._segments: dict[int, Segment] = {}
        self._last_ver = 0
        self.trim = HEADER_BYTES
        self._trim_due = False  # something was acknowledged since the last trim
        self._torn = False  # a gone writer's log ended in bytes that are not a frame
        self.unacked: dict[tuple[int, int], int] = {}  # (slot, seq) -> start
        self._rebuild: dict[int, list[tuple[Seal, Builder]]] = {}  # slot -> pending rebuilds
        self.ready: list[Outgoing] = []  # rebuilt seals with no frames (heartbeats, ends)
        # A process killed mid-write leaves a torn last record: cut it before appending.
        self._load_catalog()
        self._catalog = open(directory / "catalog", "ab")  # noqa: SIM115 - closed in close()
        _cut_to(directory / "seals", lambda size: size - size % SEAL.size)
        self._seals_fd = os.open(directory / "seals", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._load_seals()
        first = segment_paths(directory)
        start_segment = first[0][0] if first else 0
        self.cursor = max(self.trim, start_segment * self._seg_bytes + HEADER_BYTES)
        self._read_end = self.cursor  # just past the last frame read
        self._marked = self.trim  # the last trim mark written

    # ---- reading --------------------------------------------------------------------------------

    def read(self, now: float, max_batch_bytes: int, room: int, out: list[Outgoing]) -> None:
        """Read new frames into builders; seal (into ``out``) builders that fill up.

        Stops early once ``room`` batches were sealed, so a long backlog is
        read a window at a time.
        """
        out.extend(self.ready)
        self.ready = []
        try:
            self._read_window(now, max_batch_bytes, room, out)
        finally:
            self._publish_rebuilt(out, everything=not self.writer_alive and self.at_end())

    def _read_window(
        self, now: float, max_batch_bytes: int, room: int, out: list[Outgoing]
    ) -> None:
        while len(out) < room:
            index, offset = divmod(self.cursor, self._seg_bytes)
            segment = self._segment(index)
            if segment is None:
                return
            readable, complete = segment.poll() if self.writer_alive else self._final(segment)
            if offset < readable:
                try:
                    stopped = self._read_frames(
                        segment, offset, readable, now, max_batch_bytes, room, out
                    )
                except CorruptLog as exc:
                    if self.writer_alive:
                        raise
                    # A gone writer's torn tail (an OS crash before writeback):
                    # everything before it is delivered, the rest cannot be read.
                    log.warning("stride: %s ends early in %s: %s", self.dir, segment.path, exc)
                    self._torn = True
                    return
                if stopped:
                    return
            if not complete or not (self.dir / segment_name(index + 1)).exists():
                return
            self.cursor = (index + 1) * self._seg_bytes + HEADER_BYTES

    def _publish_rebuilt(self, out: list[Outgoing], *, everything: bool) -> None:
        """Rebuilt batches whose whole range has been read go out (with ``everything``,
        all: a gone writer's log is read to its end, and a range past it holds no more)."""
        for slot, pending in list(self._rebuild.items()):
            state = self.slots[slot]
            while pending and (everything or pending[0][0].end <= self.cursor):
                out.append(self._rebuilt(state, *pending.pop(0)))
            if not pending:
                self._rebuild.pop(slot, None)

    def at_end(self) -> bool:
        """Everything committed so far has been read (for a gone writer: everything)."""
        if self._torn:
            return True
        index = self.cursor // self._seg_bytes
        segment = self._segment(index)
        if segment is None:
            return True
        readable = self._final(segment)[0] if not self.writer_alive else segment.seen_commit
        return (
            self.cursor % self._seg_bytes >= readable
            and not (self.dir / segment_name(index + 1)).exists()
        )

    def catch_up(self) -> None:
        """The writer just told us something over a socket (a full memory barrier on
        both sides): everything it committed before is visible, so the next read
        may go up to the current commit instead of the one seen a poll earlier."""
        for segment in self._segments.values():
            segment.poll()

    def _final(self, segment: Segment) -> tuple[int, bool]:
        """The writer is gone: its last commit is final, and the segment complete."""
        return segment.commit(), True

    def _read_frames(
        self,
        segment: Segment,
        offset: int,
        end: int,
        now: float,
        max_batch_bytes: int,
        room: int,
        out: list[Outgoing],
    ) -> bool:
        base = segment.base
        for kind, ref, pos, body, rows in scan(segment.view, offset, end):
            where = base + pos
            if kind == ROW:
                keyset = self.keysets.get(ref)
                if keyset is None:
                    raise CorruptLog(f"rows of unknown key set {ref} at {where}")
                self._add_rows(keyset, ref, body, rows, where, now, max_batch_bytes, out)
            elif kind in _FIELD_KINDS:
                fields = _decode_fields(frame_payload(body))
                self._add(ref, where, now, max_batch_bytes, len(body) + 8, out).add_fields(
                    fields, once=kind == SET_ONCE, size=len(body) + 8
                )
            elif kind == EVENT:
                event = _decode_event(frame_payload(body))
                size = len(body) + 8
                self._add(ref, where, now, max_batch_bytes, size, out).add_event(event, size)
            elif kind == CLOSE:
                state = self._state(ref)
                if not state.closed:
                    state.closed = state.ended = True
                    self._write_seal(Seal(ref, SEAL_CLOSED, 0, 0, where, where))
                self._add(ref, where, now, max_batch_bytes, 8, out)
            else:
                self._define(kind, ref, body)
            self.cursor = self._read_end = (
                base + pos + (len(body) if kind == ROW else len(body) + 8)
            )
            if len(out) >= room:
                return True
        self.cursor = self._read_end = base + end
        return False

    def _add_rows(
        self,
        keyset: KeySet,
        ref: int,
        frames: memoryview,
        rows: int,
        where: int,
        now: float,
        max_batch_bytes: int,
        out: list[Outgoing],
    ) -> None:
        size = keyset.row_bytes
        width = len(keyset.keys)
        done = 0
        while done < rows:
            pos = where + done * size
            builder = self._add(keyset.slot, pos, now, max_batch_bytes, size, out)
            fit = rows - done
            if builder.start >= self._state(keyset.slot).covered_until:  # a live builder
                fit = min(fit, max(1, (max_batch_bytes - builder.nbytes) // size))
            else:  # a rebuild: take exactly the rows inside its sealed range
                seal_end = self._rebuild[keyset.slot][0][0].end
                fit = min(fit, (seal_end - pos) // size)
            builder.add_rows(ref, width, frames[done * size : (done + fit) * size], fit)
            done += fit

    def _add(
        self, slot: int, pos: int, now: float, max_batch_bytes: int, size: int, out: list[Outgoing]
    ) -> Builder:
        """The builder of a frame at ``pos``: a sealed range being rebuilt, or the live one."""
        state = self._state(slot)
        if pos < state.covered_until:
            pending = self._rebuild[slot]
            while pending[0][0].end <= pos:  # every frame of that range is in: publish it
                out.append(self._rebuilt(state, *pending.pop(0)))
            return pending[0][1]
        if rest := self._rebuild.get(slot):
            while rest:
                out.append(self._rebuilt(state, *rest.pop(0)))
        builder = state.builder
        if builder is not None and builder.nbytes and builder.nbytes + size > max_batch_bytes:
            out.append(self.seal(slot, pos))
            builder = None
        if builder is None:
            builder = state.builder = Builder(pos, now)
        return builder

    def _define(self, kind: int, ref: int, body: memoryview) -> None:
        item = _decode_list(frame_payload(body))
        if kind == KEYSET and ref not in self.keysets:
            slot, stream, keys = item
            self.keysets[ref] = KeySet(int(slot), str(stream), tuple(keys))
        elif kind == OPEN and ref not in self.slots:
            self.slots[ref] = SlotState(RunRef(*item))
        else:
            return
        # Kept outside the segments, which are deleted once delivered.
        header = frame_header(len(body) + 8, kind, ref).to_bytes(8, "little")
        self._catalog.write(header + bytes(body))
        self._catalog.flush()

    def _state(self, slot: int) -> SlotState:
        state = self.slots.get(slot)
        if state is None:
            raise CorruptLog(f"frames of unknown run slot {slot} in {self.dir}")
        return state

    # ---- sealing --------------------------------------------------------------------------------

    def due(self, now: float, linger_s: float, flush_rows: int, heartbeat_s: float) -> list[int]:
        """Slots whose builder should be sealed now, and open slots due a heartbeat."""
        slots = []
        for slot, state in self.slots.items():
            b = state.builder
            if b is not None:
                if (
                    not self.writer_alive
                    or state.closed
                    or b.set
                    or b.set_once
                    or b.nrows + len(b.events) >= flush_rows
                    or now - b.created >= linger_s
                ):
                    slots.append(slot)
            elif self.writer_alive and not state.ended and now - state.last_sealed >= heartbeat_s:
                slots.append(slot)
        return slots

    def seal(self, slot: int, end: int | None = None) -> Outgoing:
        """Seal the slot's builder (or an empty heartbeat batch) as the next batch."""
        state = self.slots[slot]
        # Ranges end where frames were read, never in a segment not read yet (which
        # a writer may delete unused): a recovery must be able to read up to the end.
        builder = state.builder or Builder(self._read_end, 0.0)
        state.builder = None
        end = self._read_end if end is None else end
        seal = Seal(slot, SEAL_RANGE, state.seq, self._next_ver(), builder.start, end)
        return self._sealed(
            state,
            seal,
            builder.build(state.ref, self.writer, seal.seq, seal.ver, self.keysets),
            builder.points,
        )

    def end_orphans(self, out: list[Outgoing], kind: int = SEAL_CRASHED) -> None:
        """The writer is gone and everything it wrote is read: mark its unfinished runs crashed."""
        if self.writer_alive or not self.at_end():
            return
        for slot, state in self.slots.items():
            if not state.ended and state.builder is None and slot not in self._rebuild:
                state.ended = True
                seal = Seal(slot, kind, state.seq, self._next_ver(), self._read_end, self._read_end)
                batch = ended_batch(state.ref, self.writer, seal.seq, seal.ver, kind)
                out.append(self._sealed(state, seal, batch, 0))

    def _sealed(self, state: SlotState, seal: Seal, batch: Batch, points: int) -> Outgoing:
        state.seq = max(state.seq, seal.seq + 1)
        state.last_sealed = time.monotonic()
        self.unacked[(seal.slot, seal.seq)] = seal.start
        self._write_seal(seal)  # before it is published: recovery needs it
        return Outgoing(seal.slot, seal.seq, seal.start, seal.end, points, encode_batch(batch))

    def _write_seal(self, seal: Seal) -> None:
        record = seal.pack()
        if os.write(self._seals_fd, record) != len(record):
            raise OSError(f"stride: short write to {self.dir / 'seals'} (disk full?)")

    def _rebuilt(self, state: SlotState, seal: Seal, builder: Builder) -> Outgoing:
        if seal.kind in SEAL_ENDED:
            batch = ended_batch(state.ref, self.writer, seal.seq, seal.ver, seal.kind)
        else:
            batch = builder.build(state.ref, self.writer, seal.seq, seal.ver, self.keysets)
        self.unacked[(seal.slot, seal.seq)] = seal.start
        if not self._rebuild.get(seal.slot):
            self._rebuild.pop(seal.slot, None)
        return Outgoing(
            seal.slot, seal.seq, seal.start, seal.end, builder.points, encode_batch(batch)
        )

    def _next_ver(self) -> int:
        self._last_ver = max(time.time_ns(), self._last_ver + 1)
        return self._last_ver

    # ---- acknowledgements and trimming ----------------------------------------------------------

    def acked(self, item: Outgoing) -> None:
        self._trim_due = True
        self.unacked.pop((item.slot, item.seq), None)
        state = self.slots[item.slot]
        state.batches_sent += 1
        state.points_sent += item.points

    def low_water(self) -> int:
        """Every frame below this position is in an acknowledged batch."""
        low = self.cursor
        for state in self.slots.values():
            if state.builder is not None:
                low = min(low, state.builder.start)
        for pending in self._rebuild.values():
            for seal, _ in pending:
                low = min(low, seal.start)
        return min([low, *self.unacked.values()])

    def trim_delivered(self) -> None:
        """Delete segments wholly below the low-water mark, and record it."""
        if not self._trim_due:
            return
        self._trim_due = False
        low = self.low_water()
        removed = False
        for index, path in segment_paths(self.dir):
            if (index + 1) * self._seg_bytes > low:
                break
            segment = self._segments.pop(index, None)
            if segment is not None and not segment.close():
                self._segments[index] = segment  # slices still in use: next time
                self._trim_due = True
                break
            path.unlink(missing_ok=True)
            removed = True
        if removed:
            self._compact_seals(low)
        elif low - self._marked >= _MARK_EVERY:
            # No segment to delete yet (a slow run fills one in hours): still record
            # progress, or a recovery would republish everything since the last mark.
            self._write_seal(Seal(0, SEAL_TRIM, 0, 0, low, low))
            self._marked = low

    def _compact_seals(self, low: int) -> None:
        """Rewrite ``seals`` with the trim mark and what recovery may still need."""
        keep = [Seal(0, SEAL_TRIM, 0, 0, low, low)]
        last: dict[int, Seal] = {}
        for seal in read_seals((self.dir / "seals").read_bytes()):
            if seal.kind == SEAL_CLOSED:
                keep.append(seal)  # small, one per run: kept for good
            if seal.kind in SEAL_NOTES:
                continue
            if not seal.delivered_below(low):
                keep.append(seal)
            if seal.slot not in last or seal.seq > last[seal.slot].seq:
                last[seal.slot] = seal
        kept = {(s.slot, s.seq) for s in keep}
        keep += [s for s in last.values() if (s.slot, s.seq) not in kept]  # next seq, next ver
        tmp = self.dir / "seals.tmp"
        tmp.write_bytes(b"".join(s.pack() for s in keep))
        os.close(self._seals_fd)
        os.replace(tmp, self.dir / "seals")
        self._seals_fd = os.open(self.dir / "seals", os.O_WRONLY | os.O_APPEND)
        self._marked = low

    def finished(self) -> bool:
        """Everything the (gone) writer logged is delivered."""
        if self.writer_alive or self.unacked or self._rebuild or self.ready:
            return False
        if any(s.builder is not None or not s.ended for s in self.slots.values()):
            return False
        return self.at_end()

    def pending(self, upto: int, slot: int | None = None) -> tuple[int, int]:
        """Up to ``upto``: batches not yet acked (of ``slot``, or of every run, counting
        a builder not sealed yet as one), and log bytes not yet read."""
        unacked = sum(1 for (s, _) in self.unacked if slot is None or s == slot)
        unacked += sum(
            1
            for s, state in self.slots.items()
            if (slot is None or s == slot) and state.builder is not None
        )
        return unacked, max(0, upto - self.cursor)

    def remove(self) -> None:
        """Delete the delivered log directory.

        ``meta.json`` goes first, while the lock is held: an agent that takes the
        lock next finds no log there and leaves the rest alone.
        """
        (self.dir / "meta.json").unlink(missing_ok=True)
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()
        with contextlib.suppress(OSError):
            os.close(self._seals_fd)
        self._catalog.close()
        self._lock.close()

    # ---- loading a log left behind -------------------------------------------------------------

    def _segment(self, index: int) -> Segment | None:
        segment = self._segments.get(index)
        if segment is None:
            path = self.dir / segment_name(index)
            if not path.exists():
                return None
            segment = self._segments[index] = Segment(path, index, self._seg_bytes)
        return segment

    def _load_catalog(self) -> None:
        path = self.dir / "catalog"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        whole = 0  # bytes of whole frames
        with contextlib.suppress(CorruptLog):
            for kind, ref, pos, body, _ in scan(memoryview(data), 0, len(data) - len(data) % 8):
                if kind in (KEYSET, OPEN):
                    self._define_loaded(kind, ref, body)
                whole = pos + 8 + len(body)
        _cut_to(path, lambda size: whole)

    def _define_loaded(self, kind: int, ref: int, body: memoryview) -> None:
        item = _decode_list(frame_payload(body))
        if kind == KEYSET:
            slot, stream, keys = item
            self.keysets[ref] = KeySet(int(slot), str(stream), tuple(keys))
        else:
            self.slots[ref] = SlotState(RunRef(*item))

    def _load_seals(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            seals = read_seals((self.dir / "seals").read_bytes())
            for seal in seals:
                if seal.kind == SEAL_TRIM:
                    self.trim = max(self.trim, seal.end)
            for seal in seals:
                if seal.kind == SEAL_CLOSED and seal.slot in self.slots:
                    self.slots[seal.slot].closed = self.slots[seal.slot].ended = True
                if seal.kind in SEAL_NOTES:
                    continue
                self._last_ver = max(self._last_ver, seal.ver)
                state = self.slots.get(seal.slot)
                if state is None:
                    continue
                state.seq = max(state.seq, seal.seq + 1)
                if seal.kind in SEAL_ENDED:
                    state.ended = True
                if seal.delivered_below(self.trim):
                    continue
                state.covered_until = max(state.covered_until, seal.end)
                builder = Builder(seal.start, 0.0)
                if seal.start == seal.end:
                    self.ready.append(self._rebuilt(state, seal, builder))
                else:
                    self._rebuild.setdefault(seal.slot, []).append((seal, builder))
            for pending in self._rebuild.values():
                pending.sort(key=lambda item: item[0].start)


def _cut_to(path: Path, keep: Callable[[int], int]) -> None:
    """Truncate ``path`` to ``keep(size)`` bytes if that is shorter (a torn last record)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if keep(size) < size:
        os.truncate(path, keep(size))


def seal_whole_log(directory: Path, max_batch_bytes: int = 900_000) -> list[Outgoing]:
    """Every batch of a gone writer's log, sealed as delivery would, without sending.

    For tests and benchmarks (and inspection by hand). The log must be free (its
    writer and agent gone); sealing writes its ``seals`` file, as delivery does.
    """
    from ._wal import read_meta, try_lock_exclusive

    meta = read_meta(directory)
    lock = try_lock_exclusive(directory)
    if meta is None or lock is None:
        if lock is not None:
            lock.close()
        raise ValueError(f"{directory} is not a log, or its writer or agent still holds it")
    reader = LogReader(directory, meta, lock, writer_alive=False)
    out: list[Outgoing] = []
    try:
        while True:
            before = len(out)
            reader.read(0.0, max_batch_bytes, 1 << 30, out)
            for slot in reader.due(0.0, 0.05, 4096, 15.0):
                out.append(reader.seal(slot))
            if len(out) == before:
                return out
    finally:
        reader.close()
