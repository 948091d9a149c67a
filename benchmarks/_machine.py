"""The machine a benchmark ran on, printed at the top of every benchmark's output."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all cores busy over ``seconds`` (everything on the machine, this included)."""
    try:
        b0, t0 = cpu_ticks()
        time.sleep(seconds)
        b1, t1 = cpu_ticks()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return (b1 - b0) / max(1, t1 - t0)


def wait_for_quiet(limit: float = 15.0, max_wait: float = 30.0) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < ``limit``% of the CPUs.

    Other work on a 2-core machine (a test suite, a build) moves every figure;
    the busy share measured just before the run is printed with the results.
    """
    deadline = time.monotonic() + max_wait
    busy = busy_fraction()
    while busy * 100 >= limit and time.monotonic() < deadline:
        busy = busy_fraction()
    return busy


def calibrate() -> float:
    """ns per iteration of a fixed pure-Python loop (best of 5).

    This VM's speed drifts (up to 2x between runs minutes apart); the figure
    printed with every result says how fast the CPU was at the time.
    """
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        d: dict[str, float] = {}
        for i in range(200_000):
            d["k"] = i * 0.5
        best = min(best, time.perf_counter_ns() - t0)
    return best / 200_000


def describe() -> dict[str, str]:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": f"{_usable_cores()} usable ({os.cpu_count()} online)",
        "ram": f"{_ram_gib():.1f} GiB",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "os": f"{platform.system()} {platform.release()}",
        "commit": _git_commit(),
    }


def print_machine(title: str, quiet: bool = True) -> None:
    """Print the benchmark title and the machine description.

    With ``quiet``, first wait (bounded) for other processes to leave the CPUs
    alone, and print how busy the machine was just before the benchmark.
    """
    print(f"=== {title} ===")
    for key, value in describe().items():
        print(f"  {key:<7} {value}")
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    if quiet and os.environ.get("STRIDE_BENCH_NO_WAIT") != "1":
        busy = wait_for_quiet()
        note = (
            "" if busy < 0.15 else "  (NOT quiet: other processes were running; figures are noisy)"
        )
        print(f"  busy    {busy * 100:.0f}% of all cores in the second before start{note}")
    print(f"  loadavg {load}")
    print(f"  speed   {calibrate():.1f} ns per calibration-loop iteration (lower = faster CPU)")
    print(flush=True)


if __name__ == "__main__":
    print_machine("machine")
