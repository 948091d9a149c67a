"""The write-ahead log: what ``log()`` writes, and what delivery reads back.

Every process that logs owns one log directory under the spool directory::

    <spool_dir>/<writer>/
        meta.json          who wrote it (writer id, host, pid, offline or not)
        lock               flock: shared while the writer or its delivery agent lives
        seg-000000.log     segments of ``segment_bytes``, memory-mapped by the writer
        catalog            run and key-set definitions, copied out of segments by delivery
        seals              batches sealed by delivery: (run slot, seq, ver, frame range)

``log()`` packs one frame straight into the memory-mapped segment and then
advances the segment's commit offset. That is a memory write, not I/O: the
page belongs to the kernel's page cache the moment it is written, so a
training process killed by SIGKILL or the OOM killer loses nothing it logged;
the kernel writes the pages back to disk on its own schedule (an OS crash can
lose the last seconds).

Frames are 8-byte aligned. Each starts with one little-endian u64 header:
``size`` (bits 0-31, the whole frame), ``kind`` (bits 32-39) and ``ref``
(bits 40-63: a key-set id for rows, a run slot otherwise). Every row frame of
one key set has the same size and the same header, so a reader finds a run
of consecutive rows by comparing headers, and cuts columns out of it with
strided slices (C only)::

    ROW      ref=keyset  int64 step, float64 time, float64 timestamp, float64 value per key
    KEYSET   ref=keyset  msgpack [slot, stream, [key, ...]]   (every payload: u32 length first)
    OPEN     ref=slot    msgpack [entity, project, run_id]
    SET      ref=slot    msgpack {field: json text}      last write wins
    SET_ONCE ref=slot    msgpack {field: json text}      first write wins
    CLOSE    ref=slot    (empty) the run was finished by this writer
    EVENT    ref=slot    msgpack [timestamp, level, message, metadata json]   (format 2)

A segment's first 64 bytes are its header: magic, index, commit offset
(bytes written so far), and a "full" flag set when the writer moved on to
the next segment. Positions in the whole log are ``index * segment_bytes +
offset``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import mmap
import os
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

ROW, KEYSET, OPEN, SET, SET_ONCE, CLOSE, EVENT = 1, 2, 3, 4, 5, 6, 7
FRAME_KINDS = (ROW, KEYSET, OPEN, SET, SET_ONCE, CLOSE, EVENT)
HEADER_BYTES = 64
_MAGIC = b"STRDLOG1"
_COMMIT, _FULL = 2, 3  # u64 slots of the segment header
_SEG_HEADER = struct.Struct("<8sQQQ")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
#: Bytes of a row frame besides its values: header, step, time, timestamp.
ROW_OVERHEAD = 32
_MAX_REF = (1 << 24) - 1
#: madvise(MADV_POPULATE_WRITE), Linux 5.14+: fault pages in ahead of log().
_MADV_POPULATE_WRITE = 23
_MADV_DONTNEED = 4  # drops page-table entries; a shared file's pages stay in the page cache
#: Pages of a new log faulted in by init itself; the page thread does the rest.
_FIRST_PAGES = 1024 * 1024

_encode = msgspec.msgpack.Encoder().encode


def frame_header(size: int, kind: int, ref: int) -> int:
    return size | (kind << 32) | (ref << 40)


def split_header(header: int) -> tuple[int, int, int]:
    return header & 0xFFFFFFFF, (header >> 32) & 0xFF, header >> 40


def frame_payload(body: memoryview) -> memoryview:
    """The msgpack payload of a non-row frame body (which starts with its u32 length)."""
    (length,) = _U32.unpack_from(body)
    return body[4 : 4 + length]


def row_format(width: int) -> struct.Struct:
    """A row frame of a key set with ``width`` keys (header included)."""
    return struct.Struct(f"<Qqdd{width}d")


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


def segment_name(index: int) -> str:
    return f"seg-{index:06d}.log"


def segment_paths(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("seg-*.log"):
        with contextlib.suppress(ValueError):
            found.append((int(path.stem.removeprefix("seg-")), path))
    return sorted(found)


#: The log layout this SDK writes and reads; a newer one is left for a newer SDK.
#: 2 added EVENT frames.
LOG_FORMAT = 2


class LogMeta(msgspec.Struct, frozen=True):
    writer: str
    host: str
    pid: int
    segment_bytes: int
    offline: bool = False
    created: float = 0.0
    format: int = 1


def read_meta(directory: Path) -> LogMeta | None:
    try:
        return msgspec.json.decode((directory / "meta.json").read_bytes(), type=LogMeta)
    except (OSError, msgspec.DecodeError):
        return None


def lock_shared(directory: Path) -> IO[bytes]:
    """Hold the log's lock shared (the writer and its own delivery agent)."""
    f = open(directory / "lock", "ab")  # noqa: SIM115 - held for the life of the log
    fcntl.flock(f, fcntl.LOCK_SH)
    return f


def try_lock_exclusive(directory: Path) -> IO[bytes] | None:
    """Take over a log nobody holds (its writer and agent are gone), or ``None``."""
    return try_flock(directory / "lock")


def try_flock(path: Path) -> IO[bytes] | None:
    """``path`` open and exclusively flocked if no other process holds it, else ``None``
    (the lock goes when the file is closed, or its process ends)."""
    try:
        f = open(path, "ab")  # noqa: SIM115
    except OSError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


class _Mapped:
    """One segment mapped by the writer, and how far its pages are faulted in."""

    def __init__(self, path: Path, index: int, size: int, populate: int) -> None:
        """Create, size and map the segment file ``path``, and write its header."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            # Blocks reserved now: a full disk is an OSError here, not a SIGBUS in log().
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            os.ftruncate(fd, size)
            self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.index = index
        self.size = size
        self._anchor = ctypes.c_char.from_buffer(self.mm) if _madvise is not None else None
        self.populated = 0
        # Fault the first pages in before touching them: a fault on a new file page
        # can wait on the file system's journal, and here it would hold the GIL.
        self.populate(populate)
        _SEG_HEADER.pack_into(self.mm, 0, _MAGIC, index, HEADER_BYTES, 0)
        self.header = memoryview(self.mm)[:32].cast("Q")

    def populate(self, stop: int) -> None:
        """Fault pages in up to ``stop``, with the GIL released (ctypes drops it)."""
        stop = min(stop, self.size)
        if _madvise is None or self._anchor is None or stop <= self.populated:
            return
        start = self.populated - self.populated % mmap.PAGESIZE
        _madvise(ctypes.addressof(self._anchor) + start, stop - start, _MADV_POPULATE_WRITE)
        self.populated = stop  # on failure (an old kernel) pages just fault in one by one

    def close(self) -> None:
        # Drop the page-table entries first, with the GIL released: mmap.close()
        # unmaps holding the GIL, and unmapping 32 MiB of mapped pages takes ms.
        if _madvise is not None and self._anchor is not None:
            _madvise(ctypes.addressof(self._anchor), self.size, _MADV_DONTNEED)
        self.header.release()
        self._anchor = None
        self.mm.close()


def _libc_madvise() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _libc_madvise() if sys.platform == "linux" else None


class LogWriter:
    """The writing side, in the training process. Thread-safe; see the module docstring.

    The hot path (``Run.log``) uses the attributes directly under ``lock``:
    pack the frame into ``mm`` at ``pos``, then :meth:`commit`.

    A first write to a page costs a page fault (2-4 µs on a VM), once every
    few dozen rows, and creating a segment costs system calls. Neither
    happens in ``log()``: a small thread (``stride-log-pages``) makes the next
    segment, all its pages faulted in with the GIL released, while the writer
    is in the second half of the current one, and unmaps full ones. It wakes
    twice per segment (every time it takes the GIL back, ``log()`` pauses, and
    on a machine with no idle core that pause can last a scheduler slice), and
    takes no lock ``log()`` takes except for a pointer swap.
    """

    def __init__(self, directory: Path, meta: LogMeta, max_spool_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.meta = meta
        self.lock = threading.Lock()
        self._lock_file: IO[bytes] | None = lock_shared(directory)
        (directory / "meta.json").write_bytes(msgspec.json.encode(meta))
        self.segment_bytes = meta.segment_bytes
        self.max_spool_bytes = max_spool_bytes
        self.spool_warnings = 0  # times the backlog on disk passed max_spool_bytes
        self._warned_at = max_spool_bytes
        self._next_ref = 1
        self._oldest = 0  # the oldest segment delivery has not deleted yet
        self._warned_no_segment = False
        self.closed = False
        #: Held only to hand the next segment over: never while a file is made.
        self._swap_lock = threading.Lock()
        self._ready: _Mapped | None = None  # the next segment, made ahead
        self._retired: list[_Mapped] = []  # full segments the page thread unmaps
        self._wake = threading.Event()
        self._wake_at = self.segment_bytes // 2  # then the page thread makes the next one
        self._current: _Mapped = self._create(0, "writer", _FIRST_PAGES)
        self.mm: mmap.mmap = self._current.mm
        self._header = self._current.header
        self.index = 0
        self.pos = HEADER_BYTES
        self._pages = threading.Thread(
            target=self._keep_pages, name="stride-log-pages", daemon=True
        )
        self._pages.start()
        self._wake.set()  # fault in the rest of the first segment

    # ---- hot path helpers (called with ``lock`` held) -------------------------------------------

    def commit(self, end: int) -> None:
        """Make bytes up to ``end`` visible to the reader (one aligned 8-byte store)."""
        self.pos = end
        self._header[_COMMIT] = end
        if end >= self._wake_at:
            self._wake_at = self.segment_bytes  # once per segment
            self._wake.set()

    def reserve(self, size: int) -> int:
        """Where a frame of ``size`` bytes goes: the current segment, or the next one."""
        if self.pos + size > self.segment_bytes:
            if size > self.segment_bytes - HEADER_BYTES:
                raise ValueError(
                    f"a frame of {size} bytes does not fit a {self.segment_bytes}-byte segment"
                )
            self._next_segment()
        return self.pos

    @property
    def position(self) -> int:
        """The global position just past the last committed frame."""
        return self.index * self.segment_bytes + self.pos

    # ---- slow path: definitions and fields ------------------------------------------------------

    def new_ref(self) -> int:
        with self.lock:
            ref = self._next_ref
            if ref > _MAX_REF:
                raise ValueError("too many runs or key sets in one process (16M)")
            self._next_ref += 1
            return ref

    def write_frame(self, kind: int, ref: int, payload: Any = None) -> int:
        """Append one non-row frame; return the global position just past it."""
        encoded = b"" if payload is None else _encode(payload)
        body = _U32.pack(len(encoded)) + encoded
        size = 8 + len(body)
        size += -size % 8
        with self.lock:
            if self.closed:
                raise ValueError("the log is closed")
            pos = self.reserve(size)
            _U64.pack_into(self.mm, pos, frame_header(size, kind, ref))
            self.mm[pos + 8 : pos + 8 + len(body)] = body
            self.commit(pos + size)
            return self.position

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self._wake.set()
        self._pages.join(timeout=5.0)
        with self._swap_lock:
            ready, self._ready = self._ready, None
        for mapped in [self._current, *self._retired]:
            mapped.close()
        self._retired.clear()
        if ready is not None:  # made ahead, never used: not part of the log
            ready.close()
            (self.dir / segment_name(ready.index)).unlink(missing_ok=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def forget_in_child(self) -> None:
        """In a forked child: drop this process's copy of the lock; write nothing."""
        self.closed = True
        if self._lock_file is not None:
            self._lock_file.close()  # not LOCK_UN: the parent still holds the lock
            self._lock_file = None

    # ---- segments -------------------------------------------------------------------------------

    def _prepare(self, index: int, maker: str, populate: int) -> tuple[_Mapped, Path]:
        """Make segment ``index`` under a private name (header written, pages faulted in)."""
        final = self.dir / segment_name(index)
        tmp = final.with_name(f"{final.name}.{maker}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            return _Mapped(tmp, index, self.segment_bytes, populate), tmp
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OSError(
                exc.errno,
                f"stride: cannot make a log segment in {self.dir} ({exc.strerror}); "
                "free disk space there, or set Settings.spool_dir to a larger disk",
            ) from exc

    def _link(self, mapped: _Mapped, tmp: Path) -> None:
        """Put a prepared segment in place under its real name (with ``_swap_lock`` held)."""
        try:
            os.link(tmp, self.dir / segment_name(mapped.index))
        finally:
            tmp.unlink(missing_ok=True)

    def _create(self, index: int, maker: str, populate: int) -> _Mapped:
        mapped, tmp = self._prepare(index, maker, populate)
        self._link(mapped, tmp)
        return mapped

    def _next_segment(self) -> None:
        """Move to the next segment: the one made ahead, or (rarely) one made now.

        Segments appear under their real name only complete, and only through
        ``_link`` under ``_swap_lock``: whichever maker links first, the other
        sees it (in ``_ready``) and drops its own.
        """
        index = self.index + 1
        with self._swap_lock:
            mapped, self._ready = self._ready, None
        if mapped is None:
            # The page thread has not made it (yet): make it here, faulting in only
            # the first page; the page thread catches up with the rest.
            mine, tmp = self._prepare(index, "writer", mmap.PAGESIZE)
            with self._swap_lock:
                mapped, self._ready = self._ready, None
                if mapped is None:
                    self._link(mine, tmp)
                    mapped = mine
            if mapped is not mine:  # the page thread finished it meanwhile
                mine.close()
                tmp.unlink(missing_ok=True)
        # Only now: a reader moves on once it has read up to a full segment's commit,
        # so nothing may be written to this one after the flag.
        self._header[_FULL] = 1
        self._retired.append(self._current)
        self._current = mapped
        self.mm = mapped.mm
        self._header = mapped.header
        self.index = mapped.index
        self.pos = HEADER_BYTES
        self._wake_at = self.segment_bytes // 2
        self._wake.set()

    def _keep_pages(self) -> None:
        """The page thread: fault in pages ahead, make the next segment, unmap old ones.

        It runs at the training thread's priority: it takes the GIL now and
        then, and a low-priority thread holding the GIL would stall log()
        whenever the scheduler left it waiting for a CPU.
        """
        while not self.closed:
            self._wake.wait()  # no timeout: every wake costs log() a GIL hand-over
            self._wake.clear()
            if self.closed:
                return
            # Each step below releases the GIL for its system calls; every time it
            # takes the GIL back, log() pauses briefly: keep the steps few.
            current = self._current
            current.populate(current.size)  # a no-op but for a log's first segment
            if self._retired:
                while self._retired:
                    self._retired.pop(0).close()
                self._check_backlog()  # once per segment
            if self.pos > self.segment_bytes // 2 and self._ready is None:
                self._make_next(current.index + 1)

    def _make_next(self, index: int) -> None:
        """Make the next segment ahead of the writer, and hand it over."""
        try:
            mapped, tmp = self._prepare(index, "pages", self.segment_bytes)
        except OSError as exc:
            if not self._warned_no_segment:
                self._warned_no_segment = True
                logging.getLogger("stride").warning("%s", exc.strerror)
            return
        with self._swap_lock:
            if self.index + 1 == index and self._ready is None and not self.closed:
                self._link(mapped, tmp)
                self._ready = mapped
                return
        mapped.close()  # the writer made it itself, or closed meanwhile
        tmp.unlink(missing_ok=True)

    def _check_backlog(self) -> None:
        """Warn (once per doubling) when undelivered segments pass ``max_spool_bytes``."""
        # Delivery deletes segments oldest first: find the oldest left with a few stats.
        while self._oldest < self.index and not (self.dir / segment_name(self._oldest)).exists():
            self._oldest += 1
        backlog = (self.index - self._oldest + 1) * self.segment_bytes
        if backlog >= self._warned_at:
            self.spool_warnings += 1
            self._warned_at *= 2
            logging.getLogger("stride").warning(
                "stride: %s of logged data in %s are not delivered yet (limit %s); "
                "nothing is dropped, but the disk fills until NATS is reachable again",
                human_bytes(backlog),
                self.dir,
                human_bytes(self.max_spool_bytes),
            )


class Segment:
    """A read-only view of one segment, for delivery."""

    def __init__(self, path: Path, index: int, segment_bytes: int) -> None:
        self.path = path
        self.index = index
        self.base = index * segment_bytes
        with open(path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)
        self.view = memoryview(self.mm)
        self._header = self.view[:32].cast("Q")
        self.seen_commit = HEADER_BYTES

    def poll(self) -> tuple[int, bool]:
        """The commit offset seen on the previous poll, and whether the segment is complete.

        Reading one poll behind the writer means every byte below the offset was
        stored at least one tick ago, also on CPUs that reorder stores.
        """
        readable = self.seen_commit
        self.seen_commit = self.commit()
        return readable, bool(self._header[_FULL]) and readable == self.seen_commit

    def commit(self) -> int:
        """The commit offset now (only safe to read up to once the writer is gone, or
        after a memory barrier such as a socket round trip; see :meth:`poll`)."""
        return int(self._header[_COMMIT])

    def close(self) -> bool:
        """Unmap; ``False`` if slices of it are still in use (try again later)."""
        try:
            self._header.release()
            self.view.release()
            self.mm.close()
        except BufferError:
            return False
        return True


def scan(
    view: memoryview, pos: int, end: int, max_rows: int = 65536
) -> Iterator[tuple[int, int, int, memoryview, int]]:
    """Frames in ``view[pos:end]`` as ``(kind, ref, offset, body, rows)``.

    Consecutive rows of one key set come as one item: ``body`` holds ``rows``
    whole frames (headers included). Other frames come one by one with
    ``body`` their payload.
    """
    unpack = _U64.unpack_from
    while pos < end:
        (header,) = unpack(view, pos)
        size, kind, ref = split_header(header)
        if size < 8 or size % 8 or pos + size > end or kind not in FRAME_KINDS:
            raise CorruptLog(f"invalid frame header {header:#x} at offset {pos}")
        if kind != ROW:
            yield kind, ref, pos, view[pos + 8 : pos + size], 1
            pos += size
            continue
        n = min((end - pos) // size, max_rows)
        rows = 1
        if n > 1:
            headers = view[pos : pos + n * size].cast("Q")[:: size // 8].tobytes()
            target = headers[:8]
            if headers == target * n:
                rows = n
            else:  # the longest prefix of equal headers, by bisection (C compares)
                lo, hi = 1, n - 1
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if headers[: 8 * mid] == target * mid:
                        lo = mid
                    else:
                        hi = mid - 1
                rows = lo
        yield ROW, ref, pos, view[pos : pos + rows * size], rows
        pos += rows * size


class CorruptLog(Exception):
    """A segment holds bytes that are not a frame (a torn or foreign file)."""


def log_dirs(root: Path) -> list[Path]:
    """The log directories under a spool directory (delivered ones are removed)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "meta.json").exists())
