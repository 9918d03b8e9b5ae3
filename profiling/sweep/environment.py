"""Facts about the ranks, machines and software a sweep ran on, for the records and the report."""

import os
import platform
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vggt.memory.allocator import ALLOCATOR_VARIABLES

CPUINFO = Path("/proc/cpuinfo")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class RankInfo:
    """One rank of a run: its place, attempt, host and device (total memory on CUDA)."""

    rank: int
    world_size: int
    attempt: int
    host: str
    device: str
    device_name: str
    torch_threads: int
    device_total_bytes: int | None

    @classmethod
    def of(cls, rank: int, world_size: int, attempt: int, device: torch.device) -> "RankInfo":
        """Describe this process as `rank` of `world_size`, running on `device`."""
        on_cuda = device.type == "cuda"
        name = torch.cuda.get_device_name(device) if on_cuda else cpu_name()
        total = torch.cuda.get_device_properties(device).total_memory if on_cuda else None
        host, threads = socket.gethostname(), torch.get_num_threads()
        return cls(rank, world_size, attempt, host, str(device), name, threads, total)

    def facts(self) -> dict[str, Any]:
        """What the report lists for each rank: host, device, threads (and CUDA memory)."""
        left_out = ("world_size", "attempt")
        return {k: v for k, v in asdict(self).items() if k not in left_out and v is not None}


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


def allocator_settings() -> dict[str, str]:
    """The allocator variables set in this process's environment, by name."""
    return {name: os.environ[name] for name in ALLOCATOR_VARIABLES if name in os.environ}


def collect_environment(ranks: list[RankInfo], settings: dict[str, Any]) -> dict[str, Any]:
    """Software versions, allocator settings, devices of every rank, world size and the
    sweep's settings."""
    gpu_names = sorted({r.device_name for r in ranks if r.device.startswith("cuda")})
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "nvidia_driver": nvidia_driver(),
        "allocator_settings": allocator_settings(),
        "gpu_names": gpu_names,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "world_size": len(ranks),
        "hosts": sorted({r.host for r in ranks}),
        "ranks": [r.facts() for r in ranks],
        "settings": settings,
    }
