"""One forward under the memory meters of its device: the figures go into the case's record,
the timelines and snapshots into OUT/timelines."""

import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from profiling.meters.cpu import max_rss_bytes, trace_cpu_memory
from profiling.meters.cuda import measure_cuda_peak
from profiling.meters.nvml import NvmlSampler
from profiling.report.artifacts import save_snapshot, save_timeline
from profiling.report.timelines import from_cpu_trace, from_nvml
from profiling.sweep.records import CaseRecord, one_line


def cpu_memory_run(forward: Callable[[], Any], record: CaseRecord, folder: Path) -> Any:
    """Peak live tensor bytes and their timeline from the profiler, and the peak RSS."""
    outputs, trace = trace_cpu_memory(forward)
    record.peak_bytes = record.activation_peak_bytes = trace.peak_bytes
    record.cpu_peak_live_bytes = trace.peak_bytes
    record.cpu_max_rss_bytes = max_rss_bytes()
    save_timeline(folder, record, from_cpu_trace(trace))
    return outputs


def cuda_memory_run(
    forward: Callable[[], Any], device: torch.device, record: CaseRecord, folder: Path
) -> Any:
    """Allocator peaks, NVML samples (where NVML works) and the allocator snapshot of a forward."""
    try:
        sampler = NvmlSampler(device)
    except Exception as error:
        warnings.warn(f"no NVML timeline: {one_line(error)}", RuntimeWarning, stacklevel=2)
        sampler = None
    with sampler or contextlib.nullcontext():
        outputs, peak = measure_cuda_peak(forward, device)
    record.peak_bytes = record.cuda_max_allocated_bytes = peak.max_allocated_bytes
    record.activation_peak_bytes = peak.above_start_bytes
    record.cuda_max_reserved_bytes = peak.max_reserved_bytes
    record.cpu_max_rss_bytes = max_rss_bytes()
    if sampler is not None:
        samples = sampler.samples
        record.nvml_peak_used_bytes = max(samples.used_bytes, default=None)
        record.nvml_sample_rate_hz = round(samples.rate_hz, 1)
        save_timeline(folder, record, from_nvml(samples))
    save_snapshot(folder, record, "memory", device, base_bytes=peak.start_bytes)
    return outputs
