"""Micro tier: the per-row and per-batch costs on the logging and ingest paths.

No server. Prints ns/op for:

* the pieces of ``Run.log()`` (clock, key tuple, key-set check, float64 array,
  buffer append) and ``MetricBuffer.append`` alone;
* ``sdk._buffer.to_blocks`` per row (rows -> columnar MetricBlocks);
* ``sdk.wire.encode_batch`` / ``decode_batch`` of a typical Batch
  (``flush_rows`` = 4096 rows of a 10-key dict);
* ``ingest._tables.build_tables`` per point (Batch -> Arrow tables);
* ``query._columns.Columns.to_json`` per row (the HTTP answer of history/scan).

Usage: python benchmarks/bench_micro.py [--rows 4096] [--keys 10] [--repeat 7]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns
from time import time as _now

import numpy as np
from _machine import print_machine
from _server import fmt_rate  # also puts the repository root on sys.path

import stride
from stride import Settings
from stride._buffer import Groups, MetricBuffer, record_format, to_blocks
from stride.ingest._tables import build_tables
from stride.query._columns import Columns
from stride.wire import WIRE_VERSION, Batch, decode_batch, encode_batch


def best_ns(fn: Callable[[], object], ops: int, repeat: int) -> float:
    """Best-of-``repeat`` wall time of ``fn()`` divided by ``ops`` (ns per op)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = perf_counter_ns()
        fn()
        best = min(best, perf_counter_ns() - t0)
    return best / ops


def make_groups(n: int, keys: tuple[str, ...]) -> Groups:
    """``n`` rows of ``keys`` as the buffer holds them (what the flusher takes)."""
    buf = MetricBuffer(10**9)
    t0 = _now()
    pack = record_format(len(keys)).pack
    for i in range(n):
        values = [i * 0.001 + j for j in range(len(keys))]
        buf.append(keys, pack(i, 0.001 * i, t0 + 0.001 * i, *values))
    return buf.take()


def log_alone_ns(calls: int, repeat: int) -> float:
    """Best ns per ``Run.log()`` with the flusher idle (offline, nothing due before finish)."""
    tmp = Path(tempfile.mkdtemp(prefix="stride-bench-micro-"))
    try:
        settings = Settings(
            spool_dir=tmp,
            flush_rows=10**9,
            linger_s=3600.0,
            heartbeat_s=3600.0,
            max_buffer_rows=10**9,
        )
        run = stride.init(project="bench", mode="offline", settings=settings)
        time.sleep(0.2)  # the flusher sends its first (fields) batch, then idles

        def loop() -> None:
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

        ns = best_ns(loop, calls, repeat)
        run.finish()
        return ns
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_batch(seq: int, blocks: list) -> Batch:  # type: ignore[type-arg]
    return Batch(
        v=WIRE_VERSION,
        entity="default",
        project="bench",
        run_id="micro",
        writer="host-1-r0-abcdef",
        seq=seq,
        ver=time.time_ns(),
        set={"state": '"running"'},
        metrics=blocks,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096, help="rows per batch (default flush_rows)")
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    print_machine("bench_micro: per-op costs on the log/ingest/query paths")
    n, repeat = args.rows, args.repeat
    keys = tuple(f"metric_{j}" for j in range(args.keys))
    groups = make_groups(n, keys)
    results: list[tuple[str, float, str]] = []

    def add(name: str, ns: float, unit: str) -> None:
        results.append((name, ns, unit))
        print(f"  {name:<52} {ns:>10.1f} ns/{unit}", flush=True)

    print(f"typical batch: {n} rows x {len(keys)} keys = {n * len(keys)} points\n")
    print("log() pieces (per call, 10-key dict):")
    data = {k: 0.5 for k in keys}
    loop_n = 200_000

    def empty_loop() -> None:
        for _ in range(loop_n):
            pass

    base = best_ns(empty_loop, loop_n, repeat)
    add("empty for-loop (subtracted below)", base, "iter")

    def t_clock() -> None:
        for _ in range(loop_n):
            _now()

    def t_tuple() -> None:
        for _ in range(loop_n):
            tuple(data)

    packers = {keys: record_format(len(keys)).pack}

    def t_known() -> None:
        for _ in range(loop_n):
            _ = packers.get(keys)

    def t_struct() -> None:
        pack = packers[keys]
        for i in range(loop_n):
            pack(i, 0.5, 1.0, *data.values())

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

    record = packers[keys](0, 0.5, 1.0, *data.values())

    def t_append() -> None:
        buf = MetricBuffer(10**9)
        append = buf.append
        for _ in range(loop_n):
            append(keys, record)

    def t_lock() -> None:
        lock = threading.Lock()
        for _ in range(loop_n):
            with lock:
                pass

    def t_timer() -> None:
        for _ in range(loop_n):
            perf_counter_ns()
            perf_counter_ns()

    for name, fn in (
        ("time.time()", t_clock),
        ("tuple(data)  (10 keys)", t_tuple),
        ("packer lookup (dict of key tuples)", t_known),
        ("struct pack of step, time, timestamp + 10 values", t_struct),
        ("MetricBuffer.append (lock + one bytearray append)", t_append),
        ("  of which: uncontended `with threading.Lock()`", t_lock),
        ("10-key dict literal (user side, not log())", t_dict),
        ("2x perf_counter_ns (timing overhead in bench_log)", t_timer),
    ):
        add(name, best_ns(fn, loop_n, repeat) - base, "call")

    whole = log_alone_ns(loop_n // 2, repeat) - base
    add("Run.log(dict literal), flusher idle (offline)", whole, "call")
    dict_ns = next(ns for name, ns, _ in results if name.startswith("10-key dict"))
    add("  => Run.log() alone (minus the dict literal)", whole - dict_ns, "call")

    print("\nflusher side:")
    add(
        "to_blocks, per row",
        best_ns(lambda: list(to_blocks(groups, "default", 900_000)), n, repeat),
        "row",
    )
    chunks = list(to_blocks(groups, "default", 900_000))
    batches = [make_batch(i, blocks) for i, blocks in enumerate(chunks)]
    payloads = [encode_batch(b) for b in batches]
    size = sum(len(p) for p in payloads)
    print(f"  ({len(batches)} batch(es) from {n} rows, {size} bytes encoded)")
    add(
        "encode_batch, per batch",
        best_ns(lambda: [encode_batch(b) for b in batches], len(batches), repeat),
        "batch",
    )
    add(
        "encode_batch, per point",
        best_ns(lambda: [encode_batch(b) for b in batches], n * len(keys), repeat),
        "point",
    )

    print("\ningest side:")
    add(
        "decode_batch (+validate), per batch",
        best_ns(lambda: [decode_batch(p) for p in payloads], len(payloads), repeat),
        "batch",
    )
    add(
        "decode_batch (+validate), per point",
        best_ns(lambda: [decode_batch(p) for p in payloads], n * len(keys), repeat),
        "point",
    )
    # ingest takes up to fetch_batch=128 messages at once
    many = [decode_batch(p) for p in payloads] * max(1, 128 // len(payloads))
    pts = sum(b.points for b in many)
    add(
        f"build_tables ({len(many)} batches), per point",
        best_ns(lambda: build_tables(many), pts, repeat),
        "point",
    )

    print("\nquery side:")
    m = 100_000
    cols = Columns(
        np.arange(m, dtype=np.int64),
        {"loss": np.random.default_rng(0).random(m), "_runtime": np.arange(m) * 0.01},
        {"loss": np.ones(m, bool), "_runtime": np.ones(m, bool)},
    )
    add("Columns.to_json (2 float columns), per row", best_ns(cols.to_json, m, repeat), "row")

    print("\nderived:")
    per_row_flush = next(ns for name, ns, _ in results if name.startswith("to_blocks"))
    enc = next(ns for name, ns, _ in results if name == "encode_batch, per point")
    print(
        f"  flusher CPU per point (to_blocks + encode)        "
        f"{per_row_flush / len(keys) + enc:>10.1f} ns -> "
        f"{fmt_rate(1e9 / (per_row_flush / len(keys) + enc))} points per core"
    )
    dec = next(ns for name, ns, _ in results if name == "decode_batch (+validate), per point")
    bt = next(ns for name, ns, _ in results if name.startswith("build_tables"))
    print(
        f"  ingest CPU per point (decode + build_tables)      {dec + bt:>10.1f} ns -> "
        f"{fmt_rate(1e9 / (dec + bt))} points per core (before chDB insert)"
    )


if __name__ == "__main__":
    main()
