"""System metrics: the sampler's figures, its GPU path, one GPU recorder per node, and
the ``system`` stream end to end.

No NVIDIA driver exists here: the GPU path is shown to be skipped cleanly with the
real ``pynvml``, and its reading code runs against a stand-in NVML whose functions
return the real library's own ctypes structures (the one fake in this file, for a
component that cannot run on this machine).
"""

from __future__ import annotations

import math
import time
import types
from pathlib import Path
from typing import Any

import pynvml
import pytest

import stride
from stride import Settings
from stride._system import GpuReader, Sampler
from stride._wal import log_dirs

from .conftest import StrideUp, read_log, wait_for, wait_run


def _fake_nvml(gpus: int) -> Any:
    """NVML's functions as nvidia-ml-py names them, answering with its structures."""

    def handle(i: int) -> int:
        return i

    def utilization(h: int) -> Any:
        return pynvml.c_nvmlUtilization_t(gpu=50 + h, memory=10)

    def memory(h: int) -> Any:
        return pynvml.c_nvmlMemory_t(total=80 << 30, free=60 << 30, used=20 << 30)

    def temperature(h: int, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return 61 + h

    return types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: gpus,
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetUtilizationRates=utilization,
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetTemperature=temperature,
        nvmlDeviceGetPowerUsage=lambda h: 312_500,  # milliwatts
        NVML_TEMPERATURE_GPU=pynvml.NVML_TEMPERATURE_GPU,
    )


def test_a_sample_has_host_and_process_figures_and_rates(tmp_path: Path) -> None:
    sampler = Sampler(gpus=GpuReader(_fake_nvml(0)), gpu_lock=tmp_path / "gpu.lock")
    time.sleep(0.05)
    row = sampler.sample()
    sampler.close()
    expected = {
        "cpu.percent", "cpu.process_percent", "memory.percent", "memory.used_mib",
        "memory.process_rss_mib", "disk.used_percent", "disk.read_mib_s", "disk.write_mib_s",
        "network.sent_mib_s", "network.recv_mib_s",
    }  # fmt: skip
    assert set(row) == expected
    assert all(math.isfinite(v) and v >= 0 for v in row.values()), row
    assert 10 < row["memory.process_rss_mib"] < row["memory.used_mib"]
    assert 0 < row["memory.percent"] <= 100


def test_without_a_driver_the_gpu_path_is_skipped_cleanly(tmp_path: Path) -> None:
    gpus = GpuReader()  # the real pynvml: no NVML library on this machine
    assert not gpus.available
    assert gpus.read() == {}
    sampler = Sampler(gpus=gpus, gpu_lock=tmp_path / "gpu.lock")
    assert not [k for k in sampler.sample() if k.startswith("gpu.")]
    sampler.close()


def test_gpu_figures_are_read_per_gpu() -> None:
    gpus = GpuReader(_fake_nvml(2))
    assert gpus.available
    row = gpus.read()
    assert row == {
        "gpu.0.utilization": 50.0, "gpu.0.memory_used_mib": 20480.0,
        "gpu.0.memory_percent": 25.0, "gpu.0.temperature_c": 61.0, "gpu.0.power_w": 312.5,
        "gpu.1.utilization": 51.0, "gpu.1.memory_used_mib": 20480.0,
        "gpu.1.memory_percent": 25.0, "gpu.1.temperature_c": 62.0, "gpu.1.power_w": 312.5,
    }  # fmt: skip


def test_one_process_per_node_records_the_gpus(tmp_path: Path) -> None:
    """Two samplers on one node (two ranks): only the lock holder reads the GPUs; when
    it goes, the other takes over at its next sample."""
    lock = tmp_path / "gpu.lock"
    first = Sampler(gpus=GpuReader(_fake_nvml(1)), gpu_lock=lock)
    second = Sampler(gpus=GpuReader(_fake_nvml(1)), gpu_lock=lock)
    assert "gpu.0.utilization" in first.sample()
    assert "gpu.0.utilization" not in second.sample()
    first.close()
    assert "gpu.0.utilization" in second.sample()
    second.close()


def test_system_metrics_reach_the_system_stream(stack: StrideUp, tmp_path: Path) -> None:
    settings = stack.settings(tmp_path, system_interval_s=0.2)
    with stride.init(project="system", settings=settings) as run:
        for step in range(100):
            run.log({"loss": 1.0 / (step + 1)})
        time.sleep(1.5)  # several samples
    api = stride.Api(stack.http_url)
    stored = wait_run(api, run.path)

    def rows() -> list[dict[str, Any]]:
        return list(stored.scan_history(stream="system"))

    system = wait_for(lambda: rows() if len(rows()) >= 3 else None)
    assert [r["_step"] for r in system] == list(range(len(system)))  # its own steps
    assert all(0 <= r["cpu.percent"] <= 100 * 64 for r in system)
    assert len(list(stored.scan_history())) == 100  # the run's own steps are untouched
    assert "memory.process_rss_mib" in wait_for(lambda: api.run(run.path).system_metrics or None)


def test_system_metrics_can_be_turned_off(tmp_path: Path) -> None:
    settings = Settings(spool_dir=tmp_path / "s", system_interval_s=0)
    run = stride.init(project="p", mode="offline", settings=settings)
    run.log({"x": 1.0})
    time.sleep(0.3)
    run.finish()
    [directory] = log_dirs(tmp_path / "s")
    streams = {b.stream for batch in read_log(directory) for b in batch.metrics}
    assert streams == {"default"}
    with pytest.raises(ValueError, match="system_interval_s must be positive"):
        Settings(system_interval_s=-1)
