"""Files: one large file from ``run.save()`` until stored, many small files, and the
effect of a large upload on ``log()`` latency in the same process.

One ``stride up`` subprocess (local object store under its data directory).

1. ``--mib`` MiB (default 1024) of random bytes: the clock starts at
   ``run.save()`` and stops when ``/api/v1/status`` counts the file stored (bytes
   in the object store, sha256 checked, row written). MB/s = 10^6 bytes/s. Peak
   resident memory (VmHWM) of the writer process, its delivery helper, ``stride
   up`` and nats-server; ``stride up``'s is also shown as it was before the
   upload, since it includes chDB and everything before.
2. ``--small`` files of 4 KiB (distinct bytes), ``save_data`` each: files per
   second from the first save until all are stored, and the save calls alone.
3. ``log()`` of a 10-key row, timed call by call (``perf_counter_ns``), with no
   upload and while a ``--mib`` upload runs in the same process:
   p50/p99/p99.9/max in µs.

Targets (issue "Files and artifacts"): >= 100 MB/s for the large file with
bounded memory.

Usage: python benchmarks/bench_files.py [--mib 1024] [--small 10000] [--calls 200000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from array import array
from contextlib import ExitStack
from pathlib import Path
from time import perf_counter_ns

from _machine import print_machine
from _server import Http, StrideUp, child_pids, fmt_rate, handle_sigterm, percentile, verdict

import stride

TARGET_MB_S = 100.0
MIB = 1 << 20


def peak_mib(pid: int) -> float:
    """VmHWM (peak resident memory) of ``pid`` in MiB; NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class PeakWatch:
    """Samples VmHWM of some processes until stopped (a helper's is gone once it exits)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peaks = {name: 0.0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            value = peak_mib(pid)
            if value == value:  # not NaN
                self.peaks[name] = max(self.peaks[name], value)

    def __enter__(self) -> PeakWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()


def write_random(path: Path, mib: int) -> None:
    block = os.urandom(64 * MIB)
    with path.open("wb") as out:
        for i in range(0, mib, 64):
            # Different bytes per block (a counter in front), so nothing repeats.
            out.write(i.to_bytes(8, "little") + block[8 : min(64, mib - i) * MIB])


def files_stored(http: Http) -> int:
    return int(http.get("/api/v1/status")["files"]["files"])


def wait_stored(http: Http, count: int, timeout: float = 600.0) -> float:
    deadline = time.monotonic() + timeout
    while files_stored(http) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {files_stored(http)} of {count} files stored in {timeout} s")
        time.sleep(0.01)
    return time.monotonic()


def log_latencies(run: stride.Run, calls: int) -> array[int]:
    lat = array("q", bytes(8 * calls))
    pc = perf_counter_ns
    log = run.log
    for i in range(calls):
        x = i * 0.001
        d = {f"metric_{j}": x + j for j in range(10)}
        t0 = pc()
        log(d)
        lat[i] = pc() - t0
    return lat


def summary(lat: array[int]) -> str:
    values = sorted(v / 1000 for v in lat)
    return (
        f"p50 {percentile(values, 50):6.2f} µs  p99 {percentile(values, 99):6.2f} µs  "
        f"p99.9 {percentile(values, 99.9):7.2f} µs  max {values[-1]:8.1f} µs"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=200_000)
    args = ap.parse_args()
    handle_sigterm()
    print_machine(f"bench_files: {args.mib} MiB file, {args.small} x 4 KiB, log() during upload")
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stride-bench-files-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        big = tmp / "big.bin"
        write_random(big, args.mib)
        up = stack.enter_context(StrideUp(tmp / "data"))
        nats_pid = child_pids(up.pid)[0]
        http = Http(up.http_url)
        stack.callback(http.close)
        settings = stride.Settings(server=up.nats_url, spool_dir=tmp / "spool")
        print(f"stride up: pid {up.pid} (nats-server {nats_pid}), {up.http_url}\n")

        # 1. One large file.
        run = stride.init(project="bench", id="big", settings=settings)
        helper = run._transport._helper if run._transport is not None else None
        pids = {"writer": os.getpid(), "stride up": up.pid, "nats-server": nats_pid}
        if helper is not None:
            pids["helper"] = helper.pid
        up_before = peak_mib(up.pid)
        size = big.stat().st_size
        with PeakWatch(pids) as watch:
            t0 = time.monotonic()
            run.save(big)
            t_saved = time.monotonic()
            report = run.finish(timeout=600)
            t_sent = time.monotonic()
            t_stored = wait_stored(http, 1)
        rate = size / (t_stored - t0) / 1e6
        print(f"1. one {size / MIB:.0f} MiB file (run.save -> stored, sha256 checked)")
        print(f"   save() returned after        {1e3 * (t_saved - t0):8.1f} ms")
        print(f"   finish() (all chunks in NATS) {t_sent - t0:8.2f} s   ({report})")
        print(f"   stored after                  {t_stored - t0:8.2f} s")
        print(f"   = {rate:.0f} MB/s  (target >= {TARGET_MB_S:.0f} MB/s: {verdict(rate >= 100)})")
        print("   peak resident memory (VmHWM):")
        for name, value in watch.peaks.items():
            extra = f" (before the upload: {up_before:.0f} MiB)" if name == "stride up" else ""
            print(f"     {name:<12} {value:7.0f} MiB{extra}")

        # 2. Many small files.
        run = stride.init(project="bench", id="small", settings=settings)
        blobs = [i.to_bytes(8, "little") + os.urandom(4088) for i in range(args.small)]
        t0 = time.monotonic()
        for i, data in enumerate(blobs):
            run.save_data(f"small/{i:06d}.bin", data)
        t_saved = time.monotonic()
        run.finish(timeout=600)
        t_stored = wait_stored(http, 1 + args.small)
        print(f"\n2. {args.small} files of 4 KiB")
        print(
            f"   save_data() calls: {fmt_rate(args.small / (t_saved - t0))} files/s; "
            f"stored after {t_stored - t0:.2f} s = {fmt_rate(args.small / (t_stored - t0))} files/s"
        )

        # 3. log() latency with and without an upload in the same process.
        run = stride.init(project="bench", id="latency", settings=settings)
        quiet = log_latencies(run, args.calls)
        write_random(big, args.mib)
        run.save(big, name="during.bin")
        busy = log_latencies(run, args.calls)
        run.finish(timeout=600)
        wait_stored(http, 2 + args.small)
        print(f"\n3. log() of a 10-key row, {args.calls} calls each")
        print(f"   no upload:                  {summary(quiet)}")
        print(f"   during a {args.mib} MiB upload: {summary(busy)}")


if __name__ == "__main__":
    main()
