"""System metrics: one sampler per delivery path (a process and its spool), not per run.

Every ``Settings.system_interval_s`` (10 s by default; 0 turns it off) a thread of
the training process reads the host and the process itself with psutil (CPU,
memory, disk and network) and, when NVIDIA's management library answers, each
GPU (utilisation, memory, temperature, power; nvidia-ml-py). The sample goes as
one row into the ``system`` stream of every run the process has open:
``ApiRun.history(stream="system")`` reads them, ``ApiRun.system_metrics`` the
last values.

GPUs belong to the node, not to a process: of the processes on one node (eight
ranks, say), only the one holding the node's GPU lock (an ``flock`` on
``<tmp>/stride-gpu-sampler-<uid>.lock``) records them; the others record host
and process figures. When the holder exits, the next sample of another process
takes the lock over. Rates (disk, network) are per second since the previous
sample, so the first row comes one interval after the start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ._wal import try_flock

log = logging.getLogger("stride")

__all__ = ["GpuReader", "Sampler", "SamplerThread"]

MIB = 1024 * 1024


class GpuReader:
    """Per-GPU figures through NVML (``pynvml``, from nvidia-ml-py), or nothing.

    ``nvml`` is the module (a parameter so tests can hand in a fake with the same
    functions). No library, no driver, or no GPU: :meth:`read` returns ``{}``.
    """

    def __init__(self, nvml: Any | None = None) -> None:
        self.available = False
        self._count = 0
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                return
            nvml = pynvml
        self._nvml: Any = nvml
        try:
            self._nvml.nvmlInit()
            self._count = int(self._nvml.nvmlDeviceGetCount())
        except Exception as exc:  # no driver (NVMLError_LibraryNotFound...), no GPU
            log.debug("stride: no GPU metrics: %s", exc)
            return
        self.available = self._count > 0

    def read(self) -> dict[str, float]:
        if not self.available:
            return {}
        nvml = self._nvml
        row: dict[str, float] = {}
        for i in range(self._count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                temperature = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                power_mw = nvml.nvmlDeviceGetPowerUsage(handle)
            except Exception as exc:  # one GPU failing (lost, reset) leaves the others
                log.debug("stride: GPU %d did not answer: %s", i, exc)
                continue
            row[f"gpu.{i}.utilization"] = float(util.gpu)
            row[f"gpu.{i}.memory_used_mib"] = memory.used / MIB
            row[f"gpu.{i}.memory_percent"] = 100.0 * memory.used / memory.total
            row[f"gpu.{i}.temperature_c"] = float(temperature)
            row[f"gpu.{i}.power_w"] = power_mw / 1000.0
        return row


class _NodeLock:
    """Held by one process per node and user: the one that records GPU figures."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[bytes] | None = None

    def held(self) -> bool:
        if self._file is None:
            self._file = try_flock(self._path)
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # the flock goes with it
            self._file = None


def default_gpu_lock() -> Path:
    return Path(tempfile.gettempdir()) / f"stride-gpu-sampler-{os.getuid()}.lock"


class Sampler:
    """Reads one row of system metrics; rates against the previous call."""

    def __init__(self, gpus: GpuReader | None = None, gpu_lock: Path | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._gpus = gpus if gpus is not None else GpuReader()
        self._lock = _NodeLock(gpu_lock or default_gpu_lock())
        self._last = time.monotonic()
        self._disk = psutil.disk_io_counters()
        self._net = psutil.net_io_counters()
        psutil.cpu_percent(None)  # the first call only starts the measure
        self._process.cpu_percent(None)

    def sample(self) -> dict[str, float]:
        ps = self._psutil
        now = time.monotonic()
        elapsed = max(now - self._last, 1e-6)
        memory = ps.virtual_memory()
        row = {
            "cpu.percent": float(ps.cpu_percent(None)),
            "cpu.process_percent": float(self._process.cpu_percent(None)),
            "memory.percent": float(memory.percent),
            "memory.used_mib": memory.used / MIB,
            "memory.process_rss_mib": self._process.memory_info().rss / MIB,
        }
        with contextlib.suppress(OSError):
            row["disk.used_percent"] = float(ps.disk_usage(os.sep).percent)
        disk, net = ps.disk_io_counters(), ps.net_io_counters()
        if disk is not None and self._disk is not None:
            row["disk.read_mib_s"] = (disk.read_bytes - self._disk.read_bytes) / MIB / elapsed
            row["disk.write_mib_s"] = (disk.write_bytes - self._disk.write_bytes) / MIB / elapsed
        if net is not None and self._net is not None:
            row["network.sent_mib_s"] = (net.bytes_sent - self._net.bytes_sent) / MIB / elapsed
            row["network.recv_mib_s"] = (net.bytes_recv - self._net.bytes_recv) / MIB / elapsed
        self._last, self._disk, self._net = now, disk, net
        if self._gpus.available and self._lock.held():
            row.update(self._gpus.read())
        return row

    def close(self) -> None:
        self._lock.release()


class SamplerThread:
    """Samples every ``interval_s`` and hands each row to ``write`` until stopped."""

    def __init__(self, interval_s: float, write: Callable[[dict[str, float]], None]) -> None:
        self._interval = interval_s
        self._write = write
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stride-system", daemon=True)
        #: CPU seconds this thread used (for the cost benchmark).
        self.cpu_s = 0.0
        self.samples = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        try:
            sampler = Sampler()
        except Exception as exc:  # psutil missing or refused (a locked-down container)
            log.warning("stride: system metrics are off: %s", exc)
            return
        try:
            while not self._stop.wait(self._interval):
                started = time.thread_time()
                try:
                    self._write(sampler.sample())
                except Exception as exc:  # never take the training process down
                    log.warning("stride: a system metrics sample failed: %s", exc)
                self.cpu_s += time.thread_time() - started
                self.samples += 1
        finally:
            sampler.close()
