"""The CUDA allocator: peaks of one call, and history recorded around it as memory_viz snapshots
(a ring buffer of HISTORY_MAX_ENTRIES events; `history_wrapped` tells when it filled up)."""

import contextlib
import inspect
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Allocator events kept per recorded run (each holds a Python stack of a few KB).
HISTORY_MAX_ENTRIES = 100_000
# Entries per allocation of a traced pass: its allocation, its free, and room for segment
# events and the allocations the trace does not see.
ENTRIES_PER_ALLOCATION = 3
MIN_HISTORY_ENTRIES = 10_000


def history_entries_for(allocations: int) -> int:
    """History entries that hold every event of a forward with `allocations` allocations (the
    estimator's count), so the ring buffer does not wrap."""
    return max(MIN_HISTORY_ENTRIES, ENTRIES_PER_ALLOCATION * allocations)


@dataclass(frozen=True)
class CudaPeak:
    """Allocator figures of one call: bytes allocated before it, and the peaks during it."""

    start_bytes: int
    max_allocated_bytes: int
    max_reserved_bytes: int

    @property
    def above_start_bytes(self) -> int:
        """The peak above what was allocated before the call (its activations and outputs)."""
        return self.max_allocated_bytes - self.start_bytes


def measure_cuda_peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, CudaPeak]:
    """Run `fn()` between synchronizations with the peak counters reset; its result and peaks."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = CudaPeak(
        start, torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    )
    return result, peak


@contextlib.contextmanager
def recording_history(enabled: bool, max_entries: int = HISTORY_MAX_ENTRIES) -> Iterator[None]:
    """Record every allocation and free (with Python stacks) while the block runs, the last
    `max_entries` of them."""
    if not enabled:
        yield
        return
    options: dict[str, Any] = {
        "context": "all",
        "stacks": "python",
        "max_entries": max_entries,
    }
    if "clear_history" in inspect.signature(torch.cuda.memory._record_memory_history).parameters:
        options["clear_history"] = True
    torch.cuda.memory._record_memory_history("all", **options)
    try:
        yield
    finally:
        torch.cuda.memory._record_memory_history(None)


def device_trace(snapshot: dict[str, Any], device_index: int) -> list[dict[str, Any]]:
    """The allocator events a snapshot holds for one device (none when it has no trace)."""
    traces = snapshot.get("device_traces", [])
    return traces[device_index] if device_index < len(traces) else []


def history_wrapped(
    snapshot: dict[str, Any], device_index: int, max_entries: int = HISTORY_MAX_ENTRIES
) -> bool:
    """Whether the device's trace filled its ring buffer of `max_entries` events, so the
    oldest events of the recorded run may have been overwritten."""
    return len(device_trace(snapshot, device_index)) >= max_entries


def take_snapshot() -> dict[str, Any]:
    """The allocator's segments and trace now, as pytorch.org/memory_viz reads them."""
    return torch.cuda.memory._snapshot()


def save_snapshot(snapshot: dict[str, Any], path: Path) -> None:
    """Pickle `snapshot` to `path` (drag the file onto pytorch.org/memory_viz)."""
    with path.open("wb") as file:
        pickle.dump(snapshot, file)
