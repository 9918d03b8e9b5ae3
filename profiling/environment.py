"""Facts about the machine and software a sweep ran on, for the report."""

import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import torch

CPUINFO = Path("/proc/cpuinfo")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name for CUDA devices, the CPU model otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def rank_facts(rank: int, device: torch.device) -> dict[str, Any]:
    """What differs between ranks: host, device and threads."""
    facts: dict[str, Any] = {
        "rank": rank,
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        facts["device_total_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return facts


def nvidia_driver() -> str | None:
    """The NVIDIA driver version through NVML, None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def collect_environment(
    world_size: int, ranks: list[dict[str, Any]], settings: dict[str, Any]
) -> dict[str, Any]:
    """Software versions, devices of every rank, world size and the sweep's settings."""
    gpu_names = sorted({r["device_name"] for r in ranks if r["device"].startswith("cuda")})
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "nvidia_driver": nvidia_driver(),
        "gpu_names": gpu_names,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "world_size": world_size,
        "hosts": sorted({r["host"] for r in ranks}),
        "ranks": ranks,
        "settings": settings,
    }
