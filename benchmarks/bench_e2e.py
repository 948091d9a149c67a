"""Target (b): end-to-end points/s, from the first log() until every point is queryable.

One ``stride up`` subprocess; ``--writers`` writer processes (this script with
``--writer``), each logging ``--rows`` rows of a 10-key dict into its own run.
Writers start, connect and wait; the clock starts when all are told "go" and
stops when ``GET /api/v1/status`` reports every point ingested. The counts are
then verified exactly through the query API (``scan_history`` per run: every
step present once, with all 10 keys). CPU seconds of each process are reported
so it is visible where the cores went.

Targets (the embedded default on the 2-core machine, 4 writers): >= 2M points/s,
and ``stride up`` under 400 MiB resident after 10M points. Memory is printed
three ways: the peak, right after the last point is ingested (merges and the
allocator's decay still running), and at rest (once ``stride up`` has used
under 2% of a core for two seconds in a row).

Usage: python benchmarks/bench_e2e.py [--writers 4] [--rows 50000] [--fetch-mib MIB]
       [--profile-server FILE.svg|.txt|.json]  (py-spy record of `stride up`: flame graph,
       collapsed stacks or speedscope)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from _machine import cpu_ticks, print_machine
from _server import (
    DIE_WITH_PARENT,
    ROOT,
    Http,
    Profiler,
    StrideUp,
    child_pids,
    cpu_seconds,
    fmt_rate,
    handle_sigterm,
    verdict,
    wait_for_points,
)

KEYS = tuple(f"metric_{j}" for j in range(10))
TARGET = 2_000_000
MEMORY_TARGET_MIB = 400


def memory(pid: int) -> tuple[float, str]:
    """Resident memory now (MiB) and a line with its peak and kinds, children excluded."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    rss, peak = (int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    kinds = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in rollup)}
    return rss, (
        f"RSS {rss:.0f} MiB (peak so far {peak:.0f} MiB): {kinds['Anonymous']:.0f} MiB "
        f"anonymous, {kinds['Pss_File']:.0f} MiB mapped files (the chDB library's code among them)"
    )


def wait_until_quiet(pid: int, timeout: float = 60.0) -> float:
    """Seconds waited until ``pid`` used under 2% of a core for two 1-second windows."""
    t0 = time.monotonic()
    quiet = 0
    last = cpu_seconds(pid)
    while quiet < 2 and time.monotonic() - t0 < timeout:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        quiet = quiet + 1 if now - last < 0.02 else 0
        last = now
    return time.monotonic() - t0


def writer_main(args: argparse.Namespace) -> None:
    """One writer process: init, report ready, wait for go, log, finish, report JSON."""
    import stride

    settings = stride.Settings(server=args.server, spool_dir=Path(args.spool))
    run = stride.init(project="bench", id=args.run_id, name=args.run_id, settings=settings)
    helper = run._transport._helper if run._transport is not None else None
    time.sleep(0.5)  # let the delivery helper start and connect before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    usage = os.times()
    cpu_go = usage.user + usage.system
    helper_go = cpu_seconds(helper.pid) if helper is not None else 0.0
    t_go = time.time()
    log = run.log
    for i in range(args.rows):
        x = i * 0.001
        log(
            {
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
        )
    t_logged = time.time()
    report = run.finish()
    t_finished = time.time()
    usage = os.times()
    helper_cpu = 0.0
    if helper is not None:  # it exits once everything is delivered: its whole CPU from go
        _, _, rusage = os.wait4(helper.pid, 0)
        helper_cpu = rusage.ru_utime + rusage.ru_stime - helper_go
    result = {
        "t_go": t_go,
        "t_logged": t_logged,
        "t_finished": t_finished,
        "cpu_s": usage.user + usage.system - cpu_go,
        "helper_cpu_s": helper_cpu,
        "report": str(report),
        "points_sent": report.points_sent,
        "batches_sent": report.batches_sent,
        "spooled_left": report.spooled_left,
    }
    print("result " + json.dumps(result), flush=True)


def verify(http_url: str, run_paths: list[str], rows: int) -> list[str]:
    """Exact check through the SDK query client; returns a list of problems (empty = ok)."""
    import stride

    problems = []
    with stride.Api(http_url) as api:
        for path in run_paths:
            run = api.run(path)
            keys = set(run.history_keys)
            if keys != set(KEYS):
                problems.append(f"{path}: keys {sorted(keys)}")
            expected_step = 0
            for row in run.scan_history(page_size=100_000):
                # Each row: _step, _runtime, _timestamp and the keys.
                if row["_step"] != expected_step or len(row) != len(KEYS) + 3:
                    problems.append(f"{path}: row {expected_step} is {row}")
                    break
                expected_step += 1
            if expected_step != rows:
                problems.append(f"{path}: {expected_step} rows, expected {rows}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--rows", type=int, default=50_000, help="rows (10 points each) per writer")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument(
        "--fetch-mib", default=None, help="passed to stride up (default: its own default)"
    )
    ap.add_argument(
        "--profile-server", type=Path, default=None, help="py-spy output (.svg, .txt, .json)"
    )
    ap.add_argument("--profile-writer", type=Path, default=None, help="py-spy output for writer 0")
    ap.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--spool", help=argparse.SUPPRESS)
    ap.add_argument("--run-id", help=argparse.SUPPRESS)
    args = ap.parse_args()
    handle_sigterm()
    if args.writer:
        writer_main(args)
        return

    total = args.writers * args.rows * len(KEYS)
    print_machine(
        f"bench_e2e: {args.writers} writers x {args.rows} rows x {len(KEYS)} keys = {total} points"
    )
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stride-bench-e2e-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        extra = ("--fetch-mib", args.fetch_mib) if args.fetch_mib else ()
        up = stack.enter_context(StrideUp(tmp / "data", *extra))
        if extra:
            print(f"stride up {' '.join(extra)}")
        nats_pids = child_pids(up.pid)
        print(f"stride up: pid {up.pid} (nats-server pid {nats_pids}), {up.http_url}")
        http = Http(up.http_url)
        stack.callback(http.close)
        stamp = f"{int(time.time())}"
        run_ids = [f"e2e-{stamp}-w{i}" for i in range(args.writers)]
        writers: list[subprocess.Popen[str]] = []

        def stop_writers() -> None:
            for w in writers:
                if w.poll() is None:
                    w.terminate()
            for w in writers:
                try:
                    w.wait(30)
                except subprocess.TimeoutExpired:
                    w.kill()

        stack.callback(stop_writers)
        for run_id in run_ids:
            cmd = [sys.executable, __file__, "--writer", "--server", up.nats_url]
            cmd += ["--spool", str(tmp / "spool"), "--run-id", run_id, "--rows", str(args.rows)]
            writers.append(
                subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                    preexec_fn=DIE_WITH_PARENT,
                )
            )
        for w in writers:
            assert w.stdout is not None
            line = w.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"writer did not start: {line!r}")
        base_points = int(http.get("/api/v1/status")["ingest"]["points"])
        cpu0 = {"stride up": cpu_seconds(up.pid)}
        cpu0.update({f"nats-server {p}": cpu_seconds(p) for p in nats_pids})

        profiler = stack.enter_context(Profiler(up.pid, args.profile_server))
        wprofiler = stack.enter_context(Profiler(writers[0].pid, args.profile_writer))
        ticks0 = cpu_ticks()
        t_go = time.time()
        t0 = time.monotonic()
        for w in writers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        done = wait_for_points(http, base_points + total, timeout=args.timeout)
        e2e_s = done - t0
        _, memory_after = memory(up.pid)
        ticks1 = cpu_ticks()
        cpu1 = {"stride up": cpu_seconds(up.pid)}
        cpu1.update({f"nats-server {p}": cpu_seconds(p) for p in nats_pids})
        profiler.__exit__()
        wprofiler.__exit__()

        results = []
        for w in writers:
            out, _ = w.communicate(timeout=60)
            line = next((ln for ln in out.splitlines() if ln.startswith("result ")), None)
            if line is None:
                raise RuntimeError(f"writer failed (exit {w.returncode}): {out[-500:]}")
            results.append(json.loads(line.removeprefix("result ")))

        logged_s = max(r["t_logged"] for r in results) - t_go
        finished_s = max(r["t_finished"] for r in results) - t_go
        rate = total / e2e_s
        print()
        print(f"writer side: all log() calls done after   {logged_s:7.3f} s")
        print(f"             ({fmt_rate(total / logged_s)} points logged)")
        print(f"             all finish() returned after  {finished_s:7.3f} s")
        print(f"end to end:  all {total} points ingested after {e2e_s:7.3f} s")
        print(
            f"             = {fmt_rate(rate)} points  (target >= 2 M/s: {verdict(rate >= TARGET)})"
        )
        print("\nper writer:")
        for run_id, r in zip(run_ids, results, strict=True):
            print(
                f"  {run_id}: log {r['t_logged'] - r['t_go']:.3f} s, finish "
                f"{r['t_finished'] - r['t_logged']:.3f} s, cpu {r['cpu_s']:.2f} s, "
                f"helper cpu {r['helper_cpu_s']:.2f} s, left {r['spooled_left']}: {r['report']}"
            )
        print(f"\nCPU seconds during the {e2e_s:.2f} s window (2 cores = {2 * e2e_s:.2f} s):")
        for name in cpu1:
            print(f"  {name:<22} {cpu1[name] - cpu0[name]:7.2f}")
        writers_cpu = sum(r["cpu_s"] for r in results)
        helpers_cpu = sum(r["helper_cpu_s"] for r in results)
        print(f"  {'writers (go..finish)':<22} {writers_cpu:7.2f}")
        print(f"  {'helpers (go..exit)':<22} {helpers_cpu:7.2f}")
        busy = (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1])
        print(f"  machine-wide: {busy * 100:.0f}% of all cores busy in the window (all processes)")
        rows = args.writers * args.rows
        print(
            f"  SDK CPU per logged row: {(writers_cpu + helpers_cpu) / rows * 1e6:.2f} µs "
            f"(writers {writers_cpu / rows * 1e6:.2f} + helpers {helpers_cpu / rows * 1e6:.2f}; "
            "the bare loop building the dicts included)"
        )
        status = http.get("/api/v1/status")["ingest"]
        print(f"\ningest status: {status}")
        print(f"stride up memory right after the last point: {memory_after}")
        waited = wait_until_quiet(up.pid)
        rss, memory_rest = memory(up.pid)
        print(
            f"stride up memory at rest ({waited:.0f} s later): {memory_rest}\n"
            f"  (target: RSS < {MEMORY_TARGET_MIB} MiB after 10M points: "
            f"{verdict(rss < MEMORY_TARGET_MIB)})"
        )

        t0 = time.monotonic()
        problems = verify(up.http_url, [f"default/bench/{r}" for r in run_ids], args.rows)
        print(f"verification via scan_history ({time.monotonic() - t0:.1f} s): ", end="")
        print("OK, every point present exactly once" if not problems else "FAILED")
        for p in problems[:20]:
            print(f"  {p}")
        if problems:
            sys.exit(1)


if __name__ == "__main__":
    main()
