"""Measures the variants of one configuration: warm-up, memory, equality and timed repeats.

Order of work for a group: warm-up runs with the variants interleaved (their order reversed
every other round); one memory run per variant, each after gc, empty_cache and a peak reset
(non-baseline variants first, so their outputs can wait on the CPU for the baseline's); then
the timed repeats, interleaved the same way. A variant that fails is recorded as `oom` or
`error`, its memory freed, and left out of the remaining runs while the others go on.
"""

import contextlib
import gc
import resource
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from profiling import cuda_memory, timelines
from profiling.cases import CaseGroup, Precision
from profiling.cpu_memory import trace_cpu_memory
from profiling.models import ModelCache, tensor_bytes
from profiling.nvml_sampler import NvmlSampler
from profiling.outputs import compare, named_tensors, storage_bytes
from profiling.plots import plot_timelines
from profiling.timing import summarize_ms, time_call_ms
from profiling.variants import BASELINE

MAX_MESSAGE = 500


@dataclass
class VariantResult:
    """What was measured for one variant of a group; `figures` holds byte counts and rates."""

    status: str = "ok"
    error: str | None = None
    times_ms: list[float] = field(default_factory=list)
    figures: dict[str, float | int | None] = field(default_factory=dict)
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    files: dict[str, str] = field(default_factory=dict)

    def time_summary(self) -> dict[str, float | int] | None:
        """Median, min, max and IQR of the timed repeats; None when none ran."""
        return summarize_ms(self.times_ms) if self.times_ms else None


def free_memory(device: torch.device) -> None:
    """Collect garbage and hand cached CUDA blocks back so the next run starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def max_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def seeded_images(group: CaseGroup, device: torch.device, seed: int) -> torch.Tensor:
    """Uniform [B, S, 3, H, W] images in [0, 1], the same on every rank and device."""
    generator = torch.Generator().manual_seed(seed)
    shape = (group.batch, group.frames, 3, group.height, group.width)
    return torch.rand(shape, generator=generator).to(device)


def autocast_for(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast to the case's dtype, or nothing for fp32."""
    if precision.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision.torch_dtype)


def one_line(error: BaseException) -> str:
    """`Type: message` on one line, cut to MAX_MESSAGE characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text[:MAX_MESSAGE]


class GroupMeasurement:
    """Runs the stages of one group on prepared modules and input, collecting results."""

    def __init__(
        self,
        group: CaseGroup,
        modules: dict[str, nn.Module],
        images: torch.Tensor,
        device: torch.device,
        timeline_dir: Path,
    ) -> None:
        self.group = group
        self.modules = modules
        self.images = images
        self.device = device
        self.timeline_dir = timeline_dir
        self.case_ids = {case.variant: case.case_id for case in group.cases()}
        self.results = {name: VariantResult() for name in group.variants}
        self.kept_outputs: dict[str, dict[str, torch.Tensor]] = {}
        weights = tensor_bytes(modules[group.variants[0]])
        for result in self.results.values():
            result.figures["weight_bytes"] = weights
            result.figures["input_bytes"] = images.numel() * images.element_size()

    @property
    def on_cuda(self) -> bool:
        """Whether the group runs on a GPU."""
        return self.device.type == "cuda"

    def alive(self) -> list[str]:
        """Variants that have not failed, in group order."""
        return [name for name in self.group.variants if self.results[name].status == "ok"]

    def in_turn(self, round_number: int) -> list[str]:
        """The live variants, reversed every other round (ABBA) so no variant always runs
        right after the same other one."""
        names = self.alive()
        return names if round_number % 2 == 0 else names[::-1]

    def forward(self, name: str) -> Any:
        """One inference forward of variant `name` on the group's input."""
        with torch.no_grad(), autocast_for(self.device, self.group.precision):
            return self.modules[name](self.images)

    def run(self, warmup: int, repeats: int) -> dict[str, VariantResult]:
        """All stages; returns variant name -> result."""
        for round_number in range(warmup):
            for name in self.in_turn(round_number):
                self.guarded(name, self.warm_up, record_history=True)
        for name in sorted(self.alive(), key=lambda variant: variant == BASELINE):
            self.guarded(name, self.memory_run, record_history=True)
        self.kept_outputs.clear()
        for round_number in range(repeats):
            for name in self.in_turn(round_number):
                self.guarded(name, self.timed_run, record_history=False)
        return self.results

    def guarded(self, name: str, stage: Callable[[str], None], record_history: bool) -> None:
        """Run `stage(name)`; turn an OOM or any other exception into the variant's status.

        An OOM while the allocator history is recorded also saves the snapshot at the failure.
        """
        failure = None
        history = record_history and self.on_cuda
        start_bytes = torch.cuda.memory_allocated(self.device) if self.on_cuda else 0
        with cuda_memory.recording_history(history):
            try:
                stage(name)
            except torch.cuda.OutOfMemoryError as error:
                failure = ("oom", one_line(error))
                if history:
                    failure = ("oom", failure[1] + self.save_oom_snapshot(name, start_bytes))
            except Exception as error:
                failure = ("error", one_line(error))
        if failure is not None:
            self.results[name].status, self.results[name].error = failure
            self.kept_outputs.pop(name, None)
            free_memory(self.device)

    def save_oom_snapshot(self, name: str, start_bytes: int) -> str:
        """Save the snapshot at an OOM; return a note for the error message if that fails."""
        try:
            self.save_snapshot(name, "oom", start_bytes)
        except Exception as error:
            return f" (the OOM snapshot could not be saved: {one_line(error)})"
        return ""

    def warm_up(self, name: str) -> None:
        """An untimed forward."""
        self.forward(name)

    def timed_run(self, name: str) -> None:
        """A timed forward, appended to the variant's samples."""
        self.results[name].times_ms.append(time_call_ms(lambda: self.forward(name), self.device))

    def memory_run(self, name: str) -> None:
        """Peaks and timeline of one forward; then output bytes and the baseline comparison."""
        free_memory(self.device)
        result = self.results[name]
        if self.on_cuda:
            outputs = self.cuda_memory_run(name, result)
        else:
            outputs = self.cpu_memory_run(name, result)
        tensors = named_tensors(outputs)
        result.figures["output_bytes"] = storage_bytes(tensors)
        if name == BASELINE:
            self.compare_with(tensors)
        elif BASELINE in self.alive():
            self.kept_outputs[name] = {key: t.detach().to("cpu") for key, t in tensors.items()}

    def cpu_memory_run(self, name: str, result: VariantResult) -> Any:
        """Peak live tensor bytes and their timeline from the profiler, and the peak RSS."""
        outputs, trace = trace_cpu_memory(lambda: self.forward(name))
        result.figures.update(
            peak_bytes=trace.peak_bytes,
            activation_peak_bytes=trace.peak_bytes,
            cpu_peak_live_bytes=trace.peak_bytes,
            cpu_max_rss_bytes=max_rss_bytes(),
        )
        self.save_timeline(name, timelines.from_cpu_trace(trace))
        return outputs

    def cuda_memory_run(self, name: str, result: VariantResult) -> Any:
        """Allocator peaks, NVML samples and the allocator snapshot of one forward."""
        torch.cuda.reset_peak_memory_stats(self.device)
        start_bytes = torch.cuda.memory_allocated(self.device)
        with self.nvml_sampling() as sampler:
            outputs = self.forward(name)
            torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        result.figures.update(
            peak_bytes=peak,
            activation_peak_bytes=peak - start_bytes,
            cuda_max_allocated_bytes=peak,
            cuda_max_reserved_bytes=torch.cuda.max_memory_reserved(self.device),
            cpu_max_rss_bytes=max_rss_bytes(),
        )
        if sampler is not None:
            samples = sampler.samples
            result.figures["nvml_peak_used_bytes"] = max(samples.used_bytes, default=None)
            result.figures["nvml_sample_rate_hz"] = round(samples.rate_hz, 1)
            self.save_timeline(name, timelines.from_nvml(samples))
        self.save_snapshot(name, "memory", base_bytes=start_bytes)
        return outputs

    @contextlib.contextmanager
    def nvml_sampling(self) -> Iterator[Any]:
        """An NvmlSampler around the block, or None where NVML cannot be used."""
        try:
            sampler = NvmlSampler(self.device)
        except Exception as error:
            warnings.warn(f"no NVML timeline: {one_line(error)}", RuntimeWarning, stacklevel=2)
            sampler = None
        if sampler is None:
            yield None
            return
        with sampler:
            yield sampler

    def compare_with(self, baseline: dict[str, torch.Tensor]) -> None:
        """Record each kept variant's difference from the baseline outputs (0 for itself)."""
        own = self.results[BASELINE]
        own.max_abs_diff, own.max_rel_diff = 0.0, 0.0
        for name, tensors in self.kept_outputs.items():
            try:
                difference = compare(tensors, baseline)
            except ValueError as error:
                self.results[name].error = f"comparison failed: {error}"
                continue
            self.results[name].max_abs_diff = difference.max_abs_diff
            self.results[name].max_rel_diff = difference.max_rel_diff

    def save_timeline(self, name: str, timeline: timelines.Timeline) -> None:
        """Write the timeline under timelines/ and note the file in the variant's result."""
        file = timelines.save_timeline(timeline, self.timeline_dir, self.case_ids[name])
        self.results[name].files[timeline.source] = f"timelines/{file}"

    def save_snapshot(self, name: str, label: str, base_bytes: int) -> None:
        """Pickle the allocator snapshot, save its timeline as JSON and as a PNG."""
        case_id = self.case_ids[name]
        snapshot = cuda_memory.take_snapshot()
        pickle_name = f"{case_id}.{label}.snapshot.pickle"
        cuda_memory.save_snapshot(snapshot, self.timeline_dir / pickle_name)
        self.results[name].files[f"{label}_snapshot"] = f"timelines/{pickle_name}"
        index = self.device.index if self.device.index is not None else 0
        timeline = timelines.from_cuda_snapshot(snapshot, index, base_bytes)
        del snapshot
        if label == "memory":
            self.save_timeline(name, timeline)
        png_name = f"{case_id}.{label}.snapshot.png"
        plot_timelines({name: timeline}, self.timeline_dir / png_name, f"{case_id} ({label})")
        self.results[name].files[f"{label}_snapshot_png"] = f"timelines/{png_name}"


def measure_group(
    group: CaseGroup,
    cache: ModelCache,
    warmup: int,
    repeats: int,
    timeline_dir: Path,
    seed: int,
) -> dict[str, VariantResult]:
    """Measure every variant of `group`; a failure to build or to make the input fails all."""
    device = cache.device
    try:
        modules = cache.modules_for(group)
        images = seeded_images(group, device, seed)
    except Exception as error:
        status = "oom" if isinstance(error, torch.cuda.OutOfMemoryError) else "error"
        message = one_line(error)
        results = {name: VariantResult(status=status, error=message) for name in group.variants}
    else:
        measurement = GroupMeasurement(group, modules, images, device, timeline_dir)
        results = measurement.run(warmup, repeats)
        del measurement, images, modules
    free_memory(device)
    return results
