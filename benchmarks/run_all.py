"""Run every benchmark in sequence (``make bench``), one at a time.

Default sizes keep the whole run under ~10 minutes on 2 cores; ``--quick``
is a smoke run (about a minute) that checks the harness still works.
Each benchmark prints the machine and its own figures; this script adds a
summary of exit codes and durations, and ``--out FILE`` keeps the whole log.

Usage: python benchmarks/run_all.py [--quick] [--only log,e2e] [--out bench.log]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _machine import print_machine

HERE = Path(__file__).resolve().parent

DEFAULT = {
    "micro": ["bench_micro.py"],
    "log": ["bench_log.py", "--calls", "100000"],
    "log-offline": ["bench_log.py", "--calls", "100000", "--mode", "offline"],
    # 4 writers x 150k rows x 10 keys = 6M points. A 2M-point run lasts ~2 s,
    # where start-up and the ingest tail weigh too much (see RESULTS.md).
    "e2e": ["bench_e2e.py", "--writers", "4", "--rows", "150000"],
    "history": ["bench_history.py", "--points", "10000000", "--small", "1000000", "--reps", "10"],
    "scan": ["bench_scan.py", "--points", "2000000", "--max-pages", "100"],
    "runs": ["bench_runs.py", "--runs", "100000", "--reps", "10"],
    "system": ["bench_system.py"],
}
QUICK = {
    "micro": ["bench_micro.py", "--repeat", "3"],
    "log": ["bench_log.py", "--calls", "20000"],
    "log-offline": ["bench_log.py", "--calls", "20000", "--mode", "offline"],
    "e2e": ["bench_e2e.py", "--writers", "2", "--rows", "10000"],
    "history": ["bench_history.py", "--points", "1000000", "--small", "100000", "--reps", "3"],
    "scan": ["bench_scan.py", "--points", "200000", "--max-pages", "20"],
    "runs": ["bench_runs.py", "--runs", "2000", "--reps", "3"],
    "system": ["bench_system.py", "--samples", "200"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(DEFAULT)}")
    ap.add_argument("--out", type=Path, default=None, help="also write all output here")
    args = ap.parse_args()
    plan = QUICK if args.quick else DEFAULT
    names = [n for n in args.only.split(",") if n] or list(plan)
    unknown = [n for n in names if n not in plan]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(plan)}")

    out = args.out.open("w") if args.out else None

    def emit(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        if out is not None:
            out.write(text)
            out.flush()

    print_machine("run_all: Stride benchmarks", quiet=False)
    summary: list[tuple[str, int, float]] = []
    t_all = time.monotonic()
    try:
        for name in names:
            cmd = [sys.executable, str(HERE / plan[name][0]), *plan[name][1:]]
            emit(f"\n$ {' '.join(['python', 'benchmarks/' + plan[name][0], *plan[name][1:]])}\n")
            t0 = time.monotonic()
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent
            )
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    emit(line)
                code = proc.wait()
            except KeyboardInterrupt:
                proc.terminate()  # each benchmark stops its own `stride up` on SIGTERM
                proc.wait(60)
                raise
            summary.append((name, code, time.monotonic() - t0))
    finally:
        emit("\n=== summary ===\n")
        for name, code, secs in summary:
            emit(
                f"  {name:<12} {'ok' if code == 0 else f'FAILED (exit {code})':<16} {secs:7.1f} s\n"
            )
        emit(f"  total        {time.monotonic() - t_all:7.1f} s\n")
        if out is not None:
            out.close()
    if any(code for _, code, _ in summary):
        sys.exit(1)


if __name__ == "__main__":
    main()
