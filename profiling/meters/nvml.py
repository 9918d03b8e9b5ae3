"""Device memory in use, read from NVML by a background thread at a fixed rate."""

import threading
import time
from dataclasses import dataclass, field
from types import ModuleType

import torch

from profiling.meters.device_match import nvml_handle_for

DEFAULT_INTERVAL_S = 0.002


@dataclass
class NvmlSamples:
    """Seconds since the start and the device's used bytes at each sample."""

    times_s: list[float] = field(default_factory=list)
    used_bytes: list[int] = field(default_factory=list)

    @property
    def rate_hz(self) -> float:
        """Achieved samples per second."""
        if len(self.times_s) < 2 or self.times_s[-1] <= self.times_s[0]:
            return 0.0
        return (len(self.times_s) - 1) / (self.times_s[-1] - self.times_s[0])


class NvmlUnavailable(RuntimeError):
    """pynvml or the NVML library itself (libnvidia-ml, part of the driver) is not installed."""


def start_nvml() -> ModuleType:
    """pynvml after nvmlInit; NvmlUnavailable when pynvml or the library is missing. Any other
    NVML error (a driver fault, no permission) is raised as it is."""
    try:
        import pynvml
    except ImportError as error:
        raise NvmlUnavailable("pynvml (nvidia-ml-py) is not installed") from error
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound as error:
        raise NvmlUnavailable("the NVML library (libnvidia-ml) is not found") from error
    return pynvml


class NvmlSampler:
    """Context manager: samples NVML used memory of `device` every `interval_s` in a thread.

    Construction raises NvmlUnavailable without NVML, and any NVML error as it is; an error
    while sampling ends the sampling and is kept in `error`.
    """

    def __init__(self, device: torch.device, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._nvml = start_nvml()
        try:
            self._handle = nvml_handle_for(self._nvml, device)
        except BaseException:
            self._nvml.nvmlShutdown()
            raise
        self.interval_s = interval_s
        self.samples = NvmlSamples()
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)

    def _read(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _run(self) -> None:
        start = time.perf_counter()
        next_tick = start
        while True:
            try:
                used = self._read()
            except Exception as error:
                self.error = error
                return
            self.samples.times_s.append(time.perf_counter() - start)
            self.samples.used_bytes.append(used)
            if self._stop.is_set():
                return
            next_tick += self.interval_s
            self._stop.wait(max(0.0, next_tick - time.perf_counter()))

    def __enter__(self) -> "NvmlSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._nvml.nvmlShutdown()
