"""What the miner runs on: GPUs from NVML when present, otherwise the CPU.

NVML comes from ``nvidia-ml-py`` (imported as ``pynvml``); without it, or without
an NVIDIA driver, the miner reports no GPU and its CPU load as utilisation.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

BYTES_PER_GB = 1024**3


@dataclass(frozen=True, slots=True)
class Hardware:
    """GPU name, memory per GPU (GB) and count; zero GPUs on a CPU-only machine."""

    gpu_name: str | None
    gpu_memory_gb: float | None
    gpu_count: int
    cpu_count: int
    memory_gb: float | None

    cpu_model: str | None = None

    def gpu_info(self) -> dict[str, Any]:
        """The registration's ``gpu_info``."""
        return {"name": self.gpu_name, "memory": self.gpu_memory_gb, "count": self.gpu_count}

    def cpu_info(self) -> dict[str, Any]:
        """The registration's ``cpu_info``."""
        return {"model": self.cpu_model, "cores": self.cpu_count, "memory_gb": self.memory_gb}


def _nvml() -> Any | None:
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no device: a CPU machine
        return None
    return pynvml


def _memory_gb() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * page_size / BYTES_PER_GB, 1)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()[:200] or None
    except OSError:
        pass
    return platform.processor()[:200] or None


def detect() -> Hardware:
    """Probe the machine once (at start-up)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpus = cpus or os.cpu_count() or 1
    nvml = _nvml()
    if nvml is not None:
        count = nvml.nvmlDeviceGetCount()
        if count:
            handle = nvml.nvmlDeviceGetHandleByIndex(0)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle).total / BYTES_PER_GB
            return Hardware(
                gpu_name=name.decode() if isinstance(name, bytes) else str(name),
                gpu_memory_gb=round(memory, 1),
                gpu_count=count,
                cpu_count=cpus,
                memory_gb=_memory_gb(),
                cpu_model=_cpu_model(),
            )
    return Hardware(None, None, 0, cpus, _memory_gb(), _cpu_model())


def utilisation(hardware: Hardware) -> float:
    """Percent busy now: mean GPU utilisation, or the CPU load average over the cores."""
    if hardware.gpu_count:
        nvml = _nvml()
        if nvml is not None:
            rates = [
                nvml.nvmlDeviceGetUtilizationRates(nvml.nvmlDeviceGetHandleByIndex(i)).gpu
                for i in range(hardware.gpu_count)
            ]
            return float(sum(rates) / len(rates))
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 0.0
    return round(min(100.0, 100.0 * load / hardware.cpu_count), 1)
