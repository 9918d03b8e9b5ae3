"""Device memory in use, read from NVML by a background thread at a fixed rate."""

import os
import threading
import time
from dataclasses import dataclass, field

import torch

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


def nvml_index(device: torch.device) -> int:
    """NVML's index of a torch CUDA device, reading CUDA_VISIBLE_DEVICES when it holds ordinals."""
    index = torch.cuda.current_device() if device.index is None else device.index
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible:
        return index
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if all(entry.isdigit() for entry in entries):
        return int(entries[index])
    return torch.cuda._get_nvml_device_index(index)


class NvmlSampler:
    """Context manager: samples NVML used memory of `device` every `interval_s` in a thread."""

    def __init__(self, device: torch.device, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index(device))
        self.interval_s = interval_s
        self.samples = NvmlSamples()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)

    def _read(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _run(self) -> None:
        start = time.perf_counter()
        next_tick = start
        while True:
            self.samples.times_s.append(time.perf_counter() - start)
            self.samples.used_bytes.append(self._read())
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
