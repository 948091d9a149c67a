"""Target (c): ``history(samples=1000)`` latency on a 10M-point series (and on 1M).

The series are loaded straight into chDB (see ``_load.py``: points,
``run_fields`` and ``run_keys`` exactly as ingest writes them), then
``stride up`` is started on that data directory. Timed, ``--reps`` times each
after a warm-up call:

* ``api.run(path).history(samples=1000, pandas=False)``: the SDK call, run
  lookup included (what a user types);
* ``ApiRun.history(...)`` on an already fetched run (the history request only);
* a raw ``GET .../history?samples=1000`` on a kept-alive connection (server
  time plus transfer, no client-side decoding);
* ``ApiRun.history(samples=1000, x_axis="_runtime")``: sampled by time (from
  the rollup rows over long ranges; no target of its own; fewer reps).

Reports median/p90/min in ms, rows returned, and checks the first and last
step are present. Target: <= 50 ms on 10M points. Also times ``ApiRun.stats()``
(count, first, last, min, max, mean of the series; target <= 20 ms on 10M
points) and checks its count.

Usage: python benchmarks/bench_history.py [--points 10000000] [--small 1000000]
       [--reps 20] [--optimize] [--profile-server FILE]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from _load import load_series
from _machine import print_machine
from _server import Http, Profiler, StrideUp, handle_sigterm, percentile, verdict

import stride

TARGET_MS = 50
STATS_MS = 20.0  # issue 7: metric stats on a 10M-point series
SAMPLES = 1000


def timed(fn: Callable[[], object], reps: int) -> tuple[dict[str, float], object]:
    result = fn()  # warm-up (caches, first connection)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    s = sorted(times)
    return {"median": percentile(s, 50), "p90": percentile(s, 90), "min": s[0]}, result


def line(name: str, stats: dict[str, float], target: bool, target_ms: float = TARGET_MS) -> None:
    mark = (
        f"   (target <= {target_ms:g} ms: {verdict(stats['median'] <= target_ms)})"
        if target
        else ""
    )
    print(
        f"  {name:<44} median {stats['median']:8.1f} ms   p90 {stats['p90']:8.1f} ms   "
        f"min {stats['min']:8.1f} ms{mark}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=10_000_000)
    ap.add_argument("--small", type=int, default=1_000_000, help="second series (0: none)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--optimize", action="store_true", help="OPTIMIZE TABLE FINAL after loading")
    ap.add_argument("--profile-server", type=Path, default=None, help="py-spy output for stride up")
    args = ap.parse_args()
    handle_sigterm()
    print_machine(f"bench_history: history(samples={SAMPLES}) latency")

    series = {f"default/bench/hist{args.points}": args.points}
    if args.small:
        series[f"default/bench/hist{args.small}"] = args.small
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stride-bench-history-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        info = load_series(tmp / "data", series, optimize=args.optimize)
        print(
            f"loaded {int(info['rows'])} points into chDB in {info['load_s']:.1f} s "
            f"({info['total_s']:.1f} s with open/close"
            f"{', OPTIMIZE FINAL' if args.optimize else ''}); "
            f"{int(info['active_parts'])} active parts in stride.points"
        )
        up = stack.enter_context(StrideUp(tmp / "data"))
        print(f"stride up: pid {up.pid}, {up.http_url}\n")
        api = stride.Api(up.http_url)
        stack.callback(api.close)
        http = Http(up.http_url)
        stack.callback(http.close)
        profiler = stack.enter_context(Profiler(up.pid, args.profile_server))

        for path, n in series.items():
            print(f"{path}: {n} points of one key, {args.reps} reps after 1 warm-up")
            run = api.run(path)
            full, _ = timed(
                lambda path=path: api.run(path).history(samples=SAMPLES, pandas=False), args.reps
            )
            only, rows = timed(
                lambda run=run: run.history(samples=SAMPLES, pandas=False), args.reps
            )
            raw_path = f"/api/v1/runs/{path}/history"
            raw, body = timed(lambda p=raw_path: http.get_raw(p, [("samples", SAMPLES)]), args.reps)
            line("api.run(path).history(...)", full, target=n >= 10_000_000)
            line("ApiRun.history(...) (run already fetched)", only, target=False)
            line("raw GET /history?samples=1000", raw, target=False)
            along_time, timed_rows = timed(
                lambda run=run: run.history(samples=SAMPLES, x_axis="_runtime", pandas=False),
                max(3, args.reps // 4),
            )
            line("ApiRun.history(x_axis='_runtime')", along_time, target=False)
            assert isinstance(timed_rows, list)
            if not timed_rows or timed_rows[-1]["_step"] != n - 1 or len(timed_rows) > SAMPLES:
                raise SystemExit("history along _runtime is wrong")
            stats_ms, summary = timed(lambda run=run: run.stats(), args.reps)
            line("ApiRun.stats() (run already fetched)", stats_ms, n >= 10_000_000, STATS_MS)
            if next(iter(summary.values()))["count"] != n:
                raise SystemExit(f"stats answer is wrong: {summary}")
            assert isinstance(rows, list) and isinstance(body, bytes)
            first_ok = rows[0]["_step"] == 0
            last_ok = rows[-1]["_step"] == n - 1
            print(
                f"  rows returned {len(rows)} (<= {SAMPLES}: {len(rows) <= SAMPLES}), "
                f"first step 0 present: {first_ok}, last step {n - 1} present: {last_ok}, "
                f"body {len(body) / 1e3:.1f} kB\n"
            )
            if not (first_ok and last_ok and len(rows) <= SAMPLES):
                raise SystemExit("history answer is wrong")
        profiler.__exit__()


if __name__ == "__main__":
    main()
