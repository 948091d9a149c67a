"""Target (d): ``scan_history`` rows/s over JSON, by page size, and the Arrow stream.

A run with ``--points`` points of one key is loaded straight into chDB (see
``_load.py``), then ``stride up`` serves it. For each page size:

* client: ``ApiRun.scan_history(page_size=N)``, iterating every row (dicts),
  the way a user consumes it;
* server only: raw ``GET .../scan?page_size=N&cursor=...`` page after page on
  a kept-alive connection; only the time inside the GET counts (the JSON is
  parsed outside the clock, to find the next cursor), reported as rows/s and
  bytes/s.

Then the whole run in one streamed answer: ``ApiRun.to_arrow()`` and
``scan_batches()`` (Arrow IPC; target >= 5M rows/s) and raw NDJSON, best of 3.

Small pages are slow by construction (fixed cost per request), so each page
size scans at most ``--max-pages`` pages (with ``max_step`` bounding the scan).
Last, twice, the first 200 pages of 1000 again after the service sat idle 5 s.
Targets, as the client sees them: >= 1M rows/s for one key, >= 500k for rows of
several (``--keys``). A warm-up scan of the run's last 50,000 rows comes first,
printed apart: the first scan after a start is slower (see its comment).

Usage: python benchmarks/bench_scan.py [--points 2000000] [--page-sizes 1000,10000,100000]
       [--max-pages 200] [--profile-server FILE]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import orjson
from _load import load_series
from _machine import print_machine
from _server import Http, Profiler, StrideUp, fmt_rate, handle_sigterm, verdict

import stride

#: rows/s at the default page size: one key, and rows of several keys (issue 7).
TARGET = 1_000_000
TARGET_WIDE = 500_000
#: Rows the warm-up scans, at the end of the run.
WARM_UP_ROWS = 50_000
#: Seconds the service sits idle before the last scans.
IDLE_S = 5.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=2_000_000)
    ap.add_argument("--page-sizes", default="1000,10000,100000")
    ap.add_argument("--max-pages", type=int, default=200, help="cap per page size")
    ap.add_argument(
        "--keys", type=int, default=1, help="keys per step (more than 1: scan all keys, no keys=)"
    )
    ap.add_argument("--profile-server", type=Path, default=None, help="py-spy output for stride up")
    args = ap.parse_args()
    handle_sigterm()
    print_machine(
        f"bench_scan: scan_history rows/s over JSON, {args.points} steps x {args.keys} key(s)"
    )

    path = f"default/bench/scan{args.points}x{args.keys}"
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stride-bench-scan-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        info = load_series(tmp / "data", {path: args.points}, extra_keys=args.keys - 1)
        print(
            f"loaded {int(info['rows'])} points into chDB in {info['load_s']:.1f} s; "
            f"{int(info['active_parts'])} active parts"
        )
        up = stack.enter_context(StrideUp(tmp / "data"))
        print(f"stride up: pid {up.pid}, {up.http_url}\n")
        api = stride.Api(up.http_url)
        stack.callback(api.close)
        http = Http(up.http_url)
        stack.callback(http.close)
        profiler = stack.enter_context(Profiler(up.pid, args.profile_server))
        run = api.run(path)
        # Warm-up, away from the measured range: the first scans after a start are
        # up to 2x slower (RESULTS, "Reads on a normal-speed day"); printed, not
        # counted below.
        warm_from = max(0, args.points - WARM_UP_ROWS)
        t0 = time.perf_counter()
        warm_rows = sum(1 for _ in run.scan_history(page_size=1000, min_step=warm_from))
        print(
            f"first scan after start (warm-up, page_size 1000, the last {warm_rows} rows): "
            f"{fmt_rate(warm_rows / (time.perf_counter() - t0))}\n"
        )

        target = TARGET if args.keys == 1 else TARGET_WIDE
        print(f"  target at the default page size (1000): client >= {fmt_rate(target)}")
        print(
            f"  {'page_size':>9} {'rows':>9} {'pages':>6} | {'client rows/s':>14} "
            f"| {'server rows/s':>14} {'MB/s':>7} {'ms/page':>8} | vs target (client)"
        )
        for page_size in (int(p) for p in args.page_sizes.split(",")):
            rows_wanted = min(args.points, page_size * args.max_pages)
            max_step = rows_wanted - 1

            t0 = time.perf_counter()
            count = 0
            last = -1
            for row in run.scan_history(page_size=page_size, max_step=max_step):
                count += 1
                last = row["_step"]
            client_s = time.perf_counter() - t0
            if count != rows_wanted or last != max_step:
                raise SystemExit(
                    f"scan returned {count} rows ending at {last}, expected {rows_wanted}"
                )

            get_s = 0.0
            nbytes = 0
            pages = 0
            raw_rows = 0
            cursor: int | None = None
            raw_path = f"/api/v1/runs/{path}/scan"
            while True:
                params = [("page_size", page_size), ("max_step", max_step), ("cursor", cursor)]
                t0 = time.perf_counter()
                body = http.get_raw(raw_path, params)
                get_s += time.perf_counter() - t0
                nbytes += len(body)
                pages += 1
                page = orjson.loads(body)
                raw_rows += len(page["columns"]["_step"])
                cursor = page["next"]
                if cursor is None:
                    break
            if raw_rows != rows_wanted:
                raise SystemExit(f"raw scan returned {raw_rows} rows, expected {rows_wanted}")
            client_rate = count / client_s
            print(
                f"  {page_size:>9} {count:>9} {pages:>6} | {fmt_rate(client_rate):>14} "
                f"| {fmt_rate(raw_rows / get_s):>14} {nbytes / get_s / 1e6:>7.1f} "
                f"{get_s / pages * 1e3:>8.2f} | {verdict(client_rate >= target)}",
                flush=True,
            )
        # The whole run in one streamed answer (Arrow IPC; NDJSON for comparison).
        arrow_target = 5_000_000
        for name, read in (
            ("ApiRun.to_arrow() (Arrow IPC stream)", lambda: run.to_arrow().num_rows),
            ("ApiRun.scan_batches(), batch by batch", lambda: sum(
                b.num_rows for b in run.scan_batches())),
            ("raw GET .../stream?format=ndjson (bytes only)", lambda: http.get_raw(
                f"/api/v1/runs/{path}/stream", [("format", "ndjson")]).count(b"\n")),
        ):  # fmt: skip
            best = math.inf
            for _ in range(3):
                t0 = time.perf_counter()
                got = read()
                best = min(best, time.perf_counter() - t0)
            if got != args.points:
                raise SystemExit(f"{name} returned {got} rows, expected {args.points}")
            rate = args.points / best
            mark = (
                f"(target >= 5M rows/s: {verdict(rate >= arrow_target)})" if "Arrow" in name else ""
            )
            print(f"  {name:<46} {fmt_rate(rate):>14} best of 3  {mark}", flush=True)
        # A page must cost the same wherever it is: time 100 pages at each end.
        for where, start in (("start", 0), ("end", max(0, args.points - 100_000))):
            t0 = time.perf_counter()
            rows = sum(
                1 for _ in run.scan_history(page_size=1000, min_step=start, max_step=start + 99_999)
            )
            per_page = (time.perf_counter() - t0) / max(1, rows / 1000) * 1e3
            print(
                f"  page_size 1000 at the {where} of the run: {per_page:.1f} ms/page ({rows} rows)"
            )
        # A user comes back to a service that sat idle: the first scan then is slower
        # (RESULTS, "Reads on a normal-speed day"). The same 200 pages, after a pause.
        rows_wanted = min(args.points, 200_000)
        for pause_s in (IDLE_S, IDLE_S):
            time.sleep(pause_s)
            t0 = time.perf_counter()
            rows = sum(1 for _ in run.scan_history(page_size=1000, max_step=rows_wanted - 1))
            rate = rows / (time.perf_counter() - t0)
            if rows != rows_wanted:
                raise SystemExit(f"scan after idle returned {rows} rows, expected {rows_wanted}")
            print(
                f"  page_size 1000 after {pause_s:g} s idle: {fmt_rate(rate)} ({rows} rows)"
                f"   (target {fmt_rate(target)}: {verdict(rate >= target)})"
            )
        profiler.__exit__()


if __name__ == "__main__":
    main()
