"""One forward under the memory meters of its device: the figures go into the case's record,
the timelines and snapshots into OUT/timelines. On CUDA the caller records the allocator history
around the run (measure.run_guarded), so the snapshot holds this forward's events only. A
train-mode step (training_run.py) records its figures with the same helpers."""

import contextlib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from profiling.meters import cuda
from profiling.meters.cpu import MemoryTrace, max_rss_bytes, trace_cpu_memory
from profiling.meters.cuda import measure_cuda_peak
from profiling.meters.nvml import NvmlSampler, NvmlUnavailable
from profiling.meters.timelines import from_cpu_trace, from_nvml
from profiling.sweep.artifacts import save_snapshot, save_timeline
from profiling.sweep.records import CaseRecord, one_line


def cpu_memory_run(forward: Callable[[], Any], record: CaseRecord, folder: Path) -> Any:
    """Peak live tensor bytes and their timeline from the profiler, and the peak RSS."""
    outputs, trace = trace_cpu_memory(forward)
    record_cpu_trace(trace, record, folder)
    return outputs


def record_cpu_trace(trace: MemoryTrace, record: CaseRecord, folder: Path) -> None:
    """A run's tensor and scratch peaks (above the start), the peak RSS, and its timeline."""
    record.activation_peak_bytes = trace.tensor_peak_bytes
    record.cpu_scratch_peak_bytes = trace.scratch_peak_bytes
    record.cpu_max_rss_bytes = max_rss_bytes()
    save_timeline(folder, record, from_cpu_trace(trace))


def nvml_sampler(device: torch.device, record: CaseRecord) -> NvmlSampler | None:
    """A sampler of `device`; None without NVML, and None with a note in the record when NVML
    is installed but fails."""
    try:
        return NvmlSampler(device)
    except NvmlUnavailable:
        return None
    except Exception as error:
        record.add_note(f"NVML failed: {one_line(error)}")
        return None


def cuda_memory_run(
    forward: Callable[[], Any],
    device: torch.device,
    record: CaseRecord,
    folder: Path,
    history_entries: int | None = cuda.HISTORY_MAX_ENTRIES,
) -> Any:
    """Allocator peaks, NVML samples (where NVML is installed) and, where the history was
    recorded (`history_entries` not None), the allocator snapshot of a forward; a snapshot
    whose history ring buffer filled up gets a note and a warning."""
    sampler = nvml_sampler(device, record)
    with sampler or contextlib.nullcontext():
        outputs, peak = measure_cuda_peak(forward, device)
    record.cuda_max_allocated_bytes = peak.max_allocated_bytes
    record.activation_peak_bytes = peak.above_start_bytes
    record.cuda_max_reserved_bytes = peak.max_reserved_bytes
    record.cpu_max_rss_bytes = max_rss_bytes()
    record_nvml(sampler, record, folder)
    save_memory_snapshot(record, folder, device, history_entries, peak.start_bytes)
    return outputs


def record_nvml(sampler: NvmlSampler | None, record: CaseRecord, folder: Path) -> None:
    """A finished sampler's peak, rate and timeline (nothing without a sampler)."""
    if sampler is None:
        return
    samples = sampler.samples
    record.nvml_peak_used_bytes = max(samples.used_bytes, default=None)
    record.nvml_sample_rate_hz = round(samples.rate_hz, 1)
    if sampler.error is not None:
        record.add_note(f"NVML sampling stopped: {one_line(sampler.error)}")
    save_timeline(folder, record, from_nvml(samples))


def save_memory_snapshot(
    record: CaseRecord,
    folder: Path,
    device: torch.device,
    history_entries: int | None,
    base_bytes: int,
    phases_ns: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """The allocator snapshot of the recorded run as the `memory` snapshot (none where no
    history was recorded: `history_entries` None), its timeline marking `phases_ns`; a
    history whose ring buffer filled up gets a note and a warning."""
    if history_entries is None:
        return
    snapshot = cuda.take_snapshot()
    index = device.index if device.index is not None else torch.cuda.current_device()
    if cuda.history_wrapped(snapshot, index, history_entries):
        note = (
            f"the allocator history filled its {history_entries} entries: the "
            "snapshot's oldest events are lost"
        )
        record.add_note(note)
        warnings.warn(f"{record.case_id}: {note}", RuntimeWarning, stacklevel=3)
    save_snapshot(folder, record, "memory", snapshot, device, base_bytes, phases_ns)
