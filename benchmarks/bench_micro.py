"""Micro tier: the per-row and per-batch costs on the logging and ingest paths.

No server. Prints ns/op for:

* the pieces of ``Run.log()``: clock, key tuple, packer lookup, the frame pack
  (``struct.pack_into`` of ``stride._wal.row_format(10)`` into an mmap), the
  lock, ``LogWriter.commit``; then ``Run.log()`` as a whole (offline mode, so
  no helper process: only the ``stride-log-pages`` thread runs beside it);
* the helper's side, on the frames of a real (finished, offline) log:
  ``stride._wal.scan`` per row, ``stride._batches.Builder`` rows -> ``build()``
  per row, ``encode_batch`` of the built Batch, and a whole ``LogReader`` pass
  (read, seal, encode) per row;
* ``decode_batch`` and ``ingest._tables.build_tables`` per point (ingest);
* ``query._columns.Columns.to_json`` per row (the HTTP answer of history/scan).

Usage: python benchmarks/bench_micro.py [--rows 4096] [--repeat 7]
"""

from __future__ import annotations

import argparse
import mmap
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns
from time import time as _now

import msgspec
import numpy as np
from _machine import print_machine
from _server import fmt_rate  # also puts the repository root on sys.path

import stride
from stride import Settings
from stride._batches import Builder, KeySet, RunRef
from stride._reader import Outgoing, seal_whole_log
from stride._wal import (
    HEADER_BYTES,
    KEYSET,
    ROW,
    ROW_OVERHEAD,
    LogMeta,
    LogWriter,
    Segment,
    frame_header,
    frame_payload,
    log_dirs,
    row_format,
    scan,
    segment_paths,
)
from stride.ingest._tables import build_tables
from stride.query._columns import Columns
from stride.wire import Batch, decode_batch, encode_batch

KEYS = tuple(f"metric_{j}" for j in range(10))  # the dict log_rows() logs


def best_ns(fn: Callable[[], object], ops: int, repeat: int) -> float:
    """Best-of-``repeat`` wall time of ``fn()`` divided by ``ops`` (ns per op)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = perf_counter_ns()
        fn()
        best = min(best, perf_counter_ns() - t0)
    return best / ops


def log_rows(run: stride.Run, calls: int) -> None:
    log = run.log
    for i in range(calls):
        x = i * 0.001
        log(
            {
                "metric_0": x,
                "metric_1": x,
                "metric_2": x,
                "metric_3": x,
                "metric_4": x,
                "metric_5": x,
                "metric_6": x,
                "metric_7": x,
                "metric_8": x,
                "metric_9": x,
            }
        )


def log_alone_ns(tmp: Path, calls: int, repeat: int) -> float:
    """Best ns per ``Run.log()`` of an offline run (no helper; the page thread runs)."""
    run = stride.init(project="bench", mode="offline", settings=Settings(spool_dir=tmp))
    ns = best_ns(lambda: log_rows(run, calls), calls, repeat)
    run.finish()
    return ns


def offline_log(tmp: Path, rows: int) -> Path:
    """A finished offline log of ``rows`` rows of the 10-key dict, written by ``Run.log()``."""
    run = stride.init(project="bench", id="micro", mode="offline", settings=Settings(spool_dir=tmp))
    log_rows(run, rows)
    run.finish()
    (directory,) = log_dirs(tmp)
    return directory


def read_whole_log(directory: Path, max_batch_bytes: int = 900_000) -> list[Outgoing]:
    """What delivery does with a gone writer's log, up to publishing."""
    return seal_whole_log(directory, max_batch_bytes)


def log_reader_ns(directory: Path, rows: int, repeat: int) -> float:
    """Best ns per row of a whole ``LogReader`` pass, each on a fresh copy of the log."""
    best = float("inf")
    for i in range(repeat):
        copy = directory.parent / f"copy-{i}"
        shutil.copytree(directory, copy)
        t0 = perf_counter_ns()
        out = read_whole_log(copy)
        best = min(best, perf_counter_ns() - t0)
        assert sum(o.points for o in out) == rows * len(KEYS), "the reader lost rows"
        shutil.rmtree(copy)
    return best / rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096, help="rows per batch (default flush_rows)")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    print_machine("bench_micro: per-op costs on the log/delivery/ingest/query paths")
    n, repeat, width = args.rows, args.repeat, len(KEYS)
    keys = KEYS
    results: dict[str, float] = {}

    def add(key: str, name: str, ns: float, unit: str) -> float:
        results[key] = ns
        print(f"  {name:<58} {ns:>10.1f} ns/{unit}", flush=True)
        return ns

    tmp = Path(tempfile.mkdtemp(prefix="stride-bench-micro-"))
    try:
        print(f"typical batch: {n} rows x {width} keys = {n * width} points\n")
        print("log() pieces (per call, 10-key dict):")
        data = dict.fromkeys(keys, 0.5)
        loop_n = 200_000

        def empty_loop() -> None:
            for _ in range(loop_n):
                pass

        base = add(
            "base", "empty for-loop (subtracted below)", best_ns(empty_loop, loop_n, repeat), "iter"
        )

        def t_clock() -> None:
            for _ in range(loop_n):
                _now()

        def t_tuple() -> None:
            for _ in range(loop_n):
                tuple(data)

        size = ROW_OVERHEAD + 8 * width
        packers = {keys: (row_format(width).pack_into, frame_header(size, ROW, 1), size)}

        def t_known() -> None:
            for _ in range(loop_n):
                _ = packers.get(keys)

        area = mmap.mmap(-1, loop_n * size)  # anonymous; the first repeat faults it in

        def t_pack() -> None:
            pack, header, size = packers[keys]
            for i in range(loop_n):
                pack(area, i * size, header, i, 0.5, 1.0, *data.values())

        def t_lock() -> None:
            lock = threading.Lock()
            for _ in range(loop_n):
                with lock:
                    pass

        meta = LogMeta(writer="micro", host="h", pid=0, segment_bytes=32 * 1024 * 1024)
        writer = LogWriter(tmp / "writer", meta, 1 << 40)

        def t_commit() -> None:
            commit, end = writer.commit, HEADER_BYTES + size
            for _ in range(loop_n):
                commit(end)  # below the next 4 MiB mark: the page thread is not woken

        def t_frame() -> None:  # the locked part of Run.log, on a real segment
            w = writer
            w.pos = HEADER_BYTES  # rewrite the same pages each repeat
            pack, header, size = packers[keys]
            for i in range(loop_n):
                with w.lock:
                    pos = w.pos
                    if pos + size > w.segment_bytes:
                        pos = w.reserve(size)
                    pack(w.mm, pos, header, i, 0.5, 1.0, *data.values())
                    w.commit(pos + size)

        def t_dict() -> None:
            for i in range(loop_n):
                x = i * 0.001
                _ = {
                    "metric_0": x,
                    "metric_1": x,
                    "metric_2": x,
                    "metric_3": x,
                    "metric_4": x,
                    "metric_5": x,
                    "metric_6": x,
                    "metric_7": x,
                    "metric_8": x,
                    "metric_9": x,
                }

        def t_timer() -> None:
            for _ in range(loop_n):
                perf_counter_ns()
                perf_counter_ns()

        for key, name, fn in (
            ("clock", "time.time()", t_clock),
            ("tuple", f"tuple(data)  ({width} keys)", t_tuple),
            ("lookup", "packer lookup (dict of key tuples)", t_known),
            ("pack", f"frame pack: pack_into(row_format({width})) into an mmap", t_pack),
            ("lock", "uncontended `with threading.Lock()`", t_lock),
            ("commit", "LogWriter.commit (an 8-byte store and a compare)", t_commit),
            ("frame", "lock + pack_into + commit, on a LogWriter segment", t_frame),
            ("dict", "10-key dict literal (user side, not log())", t_dict),
            ("timer", "2x perf_counter_ns (timing overhead in bench_log)", t_timer),
        ):
            add(key, name, best_ns(fn, loop_n, repeat) - base, "call")
        writer.close()
        area.close()

        whole = log_alone_ns(tmp / "alone", loop_n // 2, repeat) - base
        add("log", "Run.log(dict literal), offline, page thread running", whole, "call")
        add(
            "log_alone",
            "  => Run.log() alone (minus the dict literal)",
            whole - results["dict"],
            "call",
        )

        print("\nhelper side (frames of a finished offline log written by Run.log):")
        reader_rows = 20 * n
        directory = offline_log(tmp / "spool", reader_rows)
        (_, path), *_ = segment_paths(directory)
        segment = Segment(path, 0, meta.segment_bytes)
        segment.poll()
        end, _ = segment.poll()  # the writer is gone: the second poll sees its last commit
        items = list(scan(segment.view, HEADER_BYTES, end))
        keysets = {}
        for kind, ref, _, body, _ in items:
            if kind == KEYSET:
                slot, stream, names = msgspec.msgpack.decode(frame_payload(body))
                keysets[ref] = KeySet(slot, stream, tuple(names))
        row_items = [(ref, body, count) for kind, ref, _, body, count in items if kind == ROW]
        assert sum(c for _, _, c in row_items) == reader_rows, "rows missing from the segment"
        ref, frames, _ = row_items[0]
        frames = frames[: n * keysets[ref].row_bytes]
        run_ref = RunRef("default", "bench", "micro")

        def t_scan() -> None:
            for _ in scan(segment.view, HEADER_BYTES, end):
                pass

        def t_build() -> Batch:
            b = Builder(HEADER_BYTES, 0.0)
            b.add_rows(ref, width, frames, n)
            return b.build(run_ref, "micro-writer", 0, time.time_ns(), keysets)

        add(
            "scan",
            f"scan ({reader_rows} rows in {len(items)} items), per row",
            best_ns(t_scan, reader_rows, repeat),
            "row",
        )
        add(
            "build",
            f"Builder.add_rows + build() ({n} rows), per row",
            best_ns(t_build, n, repeat),
            "row",
        )
        batch = t_build()
        payload = encode_batch(batch)
        print(f"  (one Batch of {n} rows x {width} keys: {len(payload)} bytes encoded)")
        add(
            "encode_batch",
            "encode_batch, per batch",
            best_ns(lambda: encode_batch(batch), 1, repeat),
            "batch",
        )
        add(
            "encode",
            "encode_batch, per point",
            best_ns(lambda: encode_batch(batch), n * width, repeat),
            "point",
        )
        add(
            "reader",
            f"LogReader pass (read, seal, encode; {reader_rows} rows), per row",
            log_reader_ns(directory, reader_rows, repeat),
            "row",
        )

        print("\ningest side:")
        add(
            "decode_batch",
            "decode_batch (+validate), per batch",
            best_ns(lambda: decode_batch(payload), 1, repeat),
            "batch",
        )
        add(
            "decode",
            "decode_batch (+validate), per point",
            best_ns(lambda: decode_batch(payload), n * width, repeat),
            "point",
        )
        many = [decode_batch(payload) for _ in range(128)]  # ingest fetches up to 128 messages
        pts = sum(b.points for b in many)
        add(
            "tables",
            f"build_tables ({len(many)} batches), per point",
            best_ns(lambda: build_tables(many), pts, repeat),
            "point",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\nquery side:")
    m = 100_000
    cols = Columns(
        np.arange(m, dtype=np.int64),
        {"loss": np.random.default_rng(0).random(m), "_runtime": np.arange(m) * 0.01},
        {"loss": np.ones(m, bool), "_runtime": np.ones(m, bool)},
    )
    add(
        "to_json",
        "Columns.to_json (2 float columns), per row",
        best_ns(cols.to_json, m, repeat),
        "row",
    )

    print("\nderived:")
    helper = results["scan"] + results["build"] + results["encode"] * width
    print(
        f"  helper CPU per point (scan + build + encode)            {helper / width:>10.1f} ns -> "
        f"{fmt_rate(1e9 / (helper / width))} points per core (before the NATS publish)"
    )
    print(
        f"  helper CPU per point (whole LogReader pass)             "
        f"{results['reader'] / width:>10.1f} ns -> "
        f"{fmt_rate(1e9 / (results['reader'] / width))} points per core"
    )
    ingest = results["decode"] + results["tables"]
    print(
        f"  ingest CPU per point (decode + build_tables)            {ingest:>10.1f} ns -> "
        f"{fmt_rate(1e9 / ingest)} points per core (before the chDB insert)"
    )


if __name__ == "__main__":
    main()
