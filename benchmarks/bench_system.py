"""The system-metrics sampler's cost: CPU time per sample, as a share of one core at
the default interval (target, issue "Live runs": < 1 %).

Times ``Sampler.sample()`` (psutil: CPU, memory, disk, network; GPUs when NVML
answers) ``--samples`` times with ``time.thread_time`` (CPU, not wall), then the
same through a running ``SamplerThread`` writing into an offline run (the row
packed into the run's log included).

Usage: python benchmarks/bench_system.py [--samples 2000] [--interval 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _machine import print_machine

import stride
from stride._system import GpuReader, Sampler

TARGET_PERCENT = 1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--interval", type=float, default=stride.Settings().system_interval_s)
    args = ap.parse_args()
    print_machine(f"bench_system: {args.samples} samples, cost at a {args.interval:g} s interval")

    gpus = GpuReader()
    print(f"GPUs through NVML: {'yes' if gpus.available else 'no (skipped)'}")
    with tempfile.TemporaryDirectory() as tmp:
        sampler = Sampler(gpus=gpus, gpu_lock=Path(tmp) / "gpu.lock")
        costs = []
        for _ in range(args.samples):
            started = time.thread_time()
            row = sampler.sample()
            costs.append(time.thread_time() - started)
        sampler.close()
        print(f"1. Sampler.sample(): {len(row)} figures per row")
        _report(costs, args.interval)

        settings = stride.Settings(spool_dir=Path(tmp) / "spool", system_interval_s=0.001)
        run = stride.init(project="bench", mode="offline", settings=settings)
        transport = run._transport
        assert transport is not None and transport._system is not None
        deadline = time.monotonic() + 5.0
        while transport._system.samples < args.samples and time.monotonic() < deadline:
            time.sleep(0.05)
        thread = transport._system
        samples, cpu_s = thread.samples, thread.cpu_s
        run.finish()
        print(f"2. SamplerThread into an offline run: {samples} samples")
        per_sample = cpu_s / max(samples, 1)
        print(f"   mean {per_sample * 1e6:.0f} us of CPU per sample (row packed into the log)")
        print(
            f"   = {_percent(per_sample, args.interval):.4f} % of one core at {args.interval:g} s"
        )


def _report(costs: list[float], interval: float) -> None:
    mean = statistics.fmean(costs)
    p99 = sorted(costs)[int(len(costs) * 0.99)]
    percent = _percent(mean, interval)
    verdict = "MEETS" if percent < TARGET_PERCENT else "MISSES"
    print(f"   CPU per sample: mean {mean * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us")
    print(
        f"   = {percent:.4f} % of one core at {interval:g} s "
        f"(target < {TARGET_PERCENT:g} %: {verdict} target)"
    )


def _percent(cpu_s: float, interval: float) -> float:
    return 100.0 * cpu_s / interval


if __name__ == "__main__":
    main()
