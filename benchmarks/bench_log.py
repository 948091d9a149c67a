"""Target (a): ``run.log()`` latency, with the helper process delivering to a real ``stride up``.

Each call is timed with ``time.perf_counter_ns()`` around ``run.log(d)`` only
(the 10-key dict is built before the first clock read). A baseline loop
builds the same dict and reads the clock twice with nothing in between, so
the cost of the timing itself is visible. Reports p50/p99/p99.9/max in µs,
calls/s for the whole loop, the training loop's wall time with and without
``log()``, the SDK's CPU per logged row (this process beyond the bare loop,
plus the helper process until it has delivered everything), how long
``finish()`` took and its DeliveryReport, and (online) how long until
``stride up`` had ingested every point. Also: GC pauses per generation during
the loop, and minor page faults.

Targets: p50 <= 2 µs, p99 <= 5 µs, p99.9 <= 20 µs, max <= 1 ms.

Usage: python benchmarks/bench_log.py [--calls 100000] [--mode online|offline]
       [--no-gc] [--switch-interval S] [--pin]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from array import array
from contextlib import ExitStack
from pathlib import Path
from time import perf_counter_ns

from _machine import print_machine
from _server import (
    Http,
    StrideUp,
    cpu_seconds,
    fmt_rate,
    handle_sigterm,
    percentile,
    verdict,
    wait_for_points,
)

import stride
from stride import Settings

KEYS = tuple(f"metric_{j}" for j in range(10))
TARGETS_US = {"p50": 2.0, "p99": 5.0, "p99.9": 20.0, "max": 1000.0}


def baseline(calls: int) -> array[int]:
    """Same dict construction and clock reads, no log(): the floor of the measurement."""
    lat = array("q", bytes(8 * calls))
    pc = perf_counter_ns
    for i in range(calls):
        x = i * 0.001
        d = {
            "metric_0": x,
            "metric_1": x + 1,
            "metric_2": x + 2,
            "metric_3": x + 3,
            "metric_4": x + 4,
            "metric_5": x + 5,
            "metric_6": x + 6,
            "metric_7": x + 7,
            "metric_8": x + 8,
            "metric_9": x + 9,
        }
        t0 = pc()
        t1 = pc()
        lat[i] = t1 - t0
    del d
    return lat


def logged(run: stride.Run, calls: int) -> array[int]:
    lat = array("q", bytes(8 * calls))
    pc = perf_counter_ns
    log = run.log
    for i in range(calls):
        x = i * 0.001
        d = {
            "metric_0": x,
            "metric_1": x + 1,
            "metric_2": x + 2,
            "metric_3": x + 3,
            "metric_4": x + 4,
            "metric_5": x + 5,
            "metric_6": x + 6,
            "metric_7": x + 7,
            "metric_8": x + 8,
            "metric_9": x + 9,
        }
        t0 = pc()
        log(d)
        t1 = pc()
        lat[i] = t1 - t0
    return lat


class GcPauses:
    """Collects the duration of every garbage collection (gc.callbacks), per generation."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._start = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = perf_counter_ns()
        else:
            self.pauses.append((info["generation"], (perf_counter_ns() - self._start) / 1e6))

    def report(self) -> None:
        for gen in (0, 1, 2):
            p = [ms for g, ms in self.pauses if g == gen]
            if p:
                print(
                    f"  gc gen{gen}: {len(p):>4} collections, {sum(p):7.1f} ms total, "
                    f"max {max(p):.2f} ms"
                )


def summarize(name: str, lat: array[int], wall_s: float, targets: bool) -> dict[str, float]:
    s = sorted(lat)
    stats = {
        "p50": percentile(s, 50) / 1e3,
        "p99": percentile(s, 99) / 1e3,
        "p99.9": percentile(s, 99.9) / 1e3,
        "max": s[-1] / 1e3,
        "mean": sum(s) / len(s) / 1e3,
    }
    over_1ms = sum(1 for v in s if v > 1_000_000)
    print(f"{name}: {len(s)} calls in {wall_s:.3f} s = {fmt_rate(len(s) / wall_s)} calls")
    for k, v in stats.items():
        mark = ""
        if targets and k in TARGETS_US:
            mark = f"   (target <= {TARGETS_US[k]:g} µs: {verdict(v <= TARGETS_US[k])})"
        print(f"  {k:<6} {v:>10.2f} µs{mark}")
    print(f"  calls > 1 ms: {over_1ms}", flush=True)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--mode", choices=("online", "offline"), default="online")
    ap.add_argument("--no-gc", action="store_true", help="gc.disable() during the timed loops")
    ap.add_argument(
        "--switch-interval", type=float, default=None, help="sys.setswitchinterval (s), to study"
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="CPU 0 for the training thread only; the page thread, the helper, stride up and "
        "nats-server on CPU 1",
    )
    ap.add_argument("--warmup", type=int, default=2_000, help="untimed log() calls first")
    args = ap.parse_args()
    handle_sigterm()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    print_machine(f"bench_log: log() latency, mode={args.mode}, {args.calls} calls, 10-key dict")

    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stride-bench-log-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        print(f"GIL switch interval: {sys.getswitchinterval() * 1e3:g} ms")
        up: StrideUp | None = None
        if args.mode == "online":
            cpus = {1} if args.pin else None
            up = stack.enter_context(StrideUp(tmp / "data", cpus=cpus))
            print(f"stride up: pid {up.pid}, {up.nats_url}, {up.http_url}")
            settings = Settings(server=up.nats_url, spool_dir=tmp / "spool")
        else:
            settings = Settings(spool_dir=tmp / "spool")

        run = stride.init(project="bench", name="log-latency", mode=args.mode, settings=settings)
        stack.callback(run.finish)  # no-op once finished; flushes on error
        helper = run._transport._helper if run._transport is not None else None
        helper_pid = helper.pid if helper is not None else None
        if args.pin:
            os.sched_setaffinity(0, {0})  # pid 0: this thread only
            others = [t.native_id for t in threading.enumerate() if t.name == "stride-log-pages"]
            if helper_pid is not None:  # every thread of the helper
                others += [int(p.name) for p in Path(f"/proc/{helper_pid}/task").iterdir()]
            for tid in others:
                if tid is not None:
                    os.sched_setaffinity(tid, {1})
            print(
                "pinned: training thread on CPU 0; page thread, helper, stride up, nats-server "
                "on CPU 1"
            )
        for i in range(args.warmup):
            run.log(dict.fromkeys(KEYS, i * 0.5))
        time.sleep(0.5)  # let the helper start, connect and send the warm-up rows
        print()

        if args.no_gc:
            gc.disable()
        t0 = time.perf_counter()
        base = baseline(args.calls)
        base_s = time.perf_counter() - t0
        gc_pauses = GcPauses()
        gc.callbacks.append(gc_pauses)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        helper_cpu0 = cpu_seconds(helper_pid) if helper_pid is not None else 0.0
        t0 = time.perf_counter()
        lat = logged(run, args.calls)
        log_s = time.perf_counter() - t0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        faults = usage1.ru_minflt - usage0.ru_minflt
        gc.callbacks.remove(gc_pauses)
        gc.enable()

        summarize("baseline (dict + 2 clock reads, no log)", base, base_s, targets=False)
        print()
        stats = summarize("log()", lat, log_s, targets=True)
        net = stats["p50"] - percentile(sorted(base), 50) / 1e3
        print(f"  p50 minus baseline p50 (log() alone, roughly): {net:.2f} µs")
        slowest = sorted(range(len(lat)), key=lat.__getitem__)[-5:][::-1]
        print(
            "  slowest calls (index after the warm-up: µs): "
            + ", ".join(f"{i}: {lat[i] / 1e3:.0f}" for i in slowest)
        )
        print(f"  minor page faults during the loop (whole process): {faults}")
        print(
            f"  training loop wall time with log() / without: {log_s:.3f} s / {base_s:.3f} s "
            f"= {log_s / base_s:.2f}x ({(log_s - base_s) / args.calls * 1e6:.2f} µs per call)"
        )
        gc_pauses.report()
        print()

        t0 = time.perf_counter()
        report = run.finish()
        finish_s = time.perf_counter() - t0
        # CPU of every SDK thread and process for the logged rows: this process during
        # the loop (log() itself) plus the helper until it had delivered them (finish()).
        own_cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
        own_loop_floor = base_s  # the same loop without log() costs about its wall time
        helper_cpu = 0.0
        if helper_pid is not None:  # it exits once it has delivered everything: its whole CPU
            _, _, usage = os.wait4(helper_pid, 0)
            helper_cpu = usage.ru_utime + usage.ru_stime - helper_cpu0
        sdk_cpu = max(0.0, own_cpu - own_loop_floor) + helper_cpu
        print(
            f"SDK CPU per logged row: {sdk_cpu / args.calls * 1e6:.2f} µs "
            f"(training process beyond the bare loop {max(0.0, own_cpu - own_loop_floor):.3f} s, "
            f"helper process {helper_cpu:.3f} s, for {args.calls} rows)"
        )
        print(f"finish(): {finish_s * 1e3:.1f} ms")
        print(f"  DeliveryReport: {report}")
        print(
            f"  batches_sent={report.batches_sent} points_sent={report.points_sent} "
            f"spooled_left={report.spooled_left} "
            f"last_error={report.last_error}"
        )
        expected = (args.calls + args.warmup) * len(KEYS)
        if up is not None:
            http = Http(up.http_url)
            t0 = time.monotonic()
            done = wait_for_points(http, expected, timeout=120)
            print(
                f"  all {expected} points ingested {(done - t0) * 1e3:.0f} ms after finish() "
                "returned"
            )
            http.close()
        else:
            files = list((tmp / "spool").rglob("seg-*.log"))
            size = sum(f.stat().st_blocks * 512 for f in files)
            print(f"  log: {len(files)} segments, {size / 1e6:.1f} MB on disk (offline mode)")


if __name__ == "__main__":
    main()
