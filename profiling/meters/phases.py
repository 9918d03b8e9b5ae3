"""The phases of a training step, each measured apart: a `phase(name)` context factory for
`vggt.training.step.TrainingStep`.

Each phase runs in a profiler range `train.<name>` (the CPU meter reads phase peaks from its
trace by that name), between synchronizations on CUDA, and leaves its milliseconds and its span
in Unix-epoch nanoseconds (the clock of the CUDA allocator's trace); on CUDA, with `peaks`, also
the allocator's peaks during it: the peak counters are reset as it starts and read as it ends,
so each is absolute (what was allocated before the phase included).
"""

import contextlib
import time
from collections.abc import Iterator

import torch
from torch.profiler import record_function

PHASE_PREFIX = "train."


class PhaseMeter:
    """Times every phase it wraps and, on CUDA with `peaks`, reads its allocator peaks."""

    def __init__(self, device: torch.device, peaks: bool = False) -> None:
        self.device = device
        self.peaks = peaks and device.type == "cuda"
        self.ms: dict[str, float] = {}
        self.spans_ns: dict[str, tuple[int, int]] = {}
        self.peak_bytes: dict[str, int] = {}
        self.reserved_bytes: dict[str, int] = {}

    def synchronize(self) -> None:
        """Wait for the device's queued work (nothing to wait for on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Measure the block as phase `name`; a block that raises leaves no figures."""
        self.synchronize()
        if self.peaks:
            torch.cuda.reset_peak_memory_stats(self.device)
        start_ns, begin = time.time_ns(), time.perf_counter()
        with record_function(f"{PHASE_PREFIX}{name}"):
            yield
        self.synchronize()
        self.ms[name] = (time.perf_counter() - begin) * 1e3
        self.spans_ns[name] = (start_ns, time.time_ns())
        if self.peaks:
            self.peak_bytes[name] = torch.cuda.max_memory_allocated(self.device)
            self.reserved_bytes[name] = torch.cuda.max_memory_reserved(self.device)
