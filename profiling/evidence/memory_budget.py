"""Step d: a memory cap (what `--memory-budget` does) between the estimates of the full and
optimized aggregators at one frame count: the estimator says full does not fit and optimized
does, and the run must agree (full `oom`, optimized `ok`).

On CUDA the cap is torch.cuda.set_per_process_memory_fraction, a limit on PyTorch's caching
allocator; on a CPU (the dry run) a live-bytes tracker raises OutOfMemoryError above it."""

import contextlib
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from profiling.evidence.context import Context
from profiling.evidence.estimates import EstimateFigures, EstimateJob
from profiling.evidence.measuring import allocated_bytes, group_of, measure, records_of
from profiling.evidence.results import StepResult
from profiling.report.summary import format_size
from profiling.sweep.models import ModelCache
from vggt.memory.tracker import LiveBytes

# The cap sits halfway between the two needs, but no further above the optimized one than
# this factor and slack, so an estimator that undercounts full still sees it run out.
CAP_FACTOR = 1.25
CAP_SLACK_BYTES = 1 << 30


class CappedLiveBytes(TorchDispatchMode):
    """Counts the bytes of tensors created under it on the CPU and raises OutOfMemoryError when
    they pass `cap_bytes`, as a capped CUDA allocator would."""

    def __init__(self, cap_bytes: int) -> None:
        super().__init__()
        self.cap_bytes = cap_bytes
        self.meter = LiveBytes("cpu", record_events=False)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.meter.count_outputs(out)
        if self.meter.live_bytes > self.cap_bytes:
            raise torch.OutOfMemoryError(
                f"emulated out of memory: {self.meter.live_bytes} live bytes pass the CPU cap "
                f"of {self.cap_bytes}"
            )
        return out


@contextlib.contextmanager
def memory_cap(device: torch.device, cap_bytes: int) -> Iterator[None]:
    """Cap the memory the block's tensors may take on `device` at `cap_bytes`."""
    if device.type != "cuda":
        with CappedLiveBytes(cap_bytes):
            yield
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(cap_bytes / total, device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def fit_need(figures: EstimateFigures, device: torch.device) -> int:
    """The bytes the estimator says a run needs under the cap of `device`: on CUDA, where the
    cap limits what the allocator reserves, its reserved bound if it gives one, else the bytes
    allocated at the peak (the CUDA context is outside the cap either way); on a CPU, whose cap
    counts live tensor bytes, the live peak (no allocator rounding, no cuBLAS workspace)."""
    if device.type != "cuda":
        return figures.peak_bytes
    if figures.reserved_bound_bytes is not None:
        return figures.reserved_bound_bytes
    return figures.allocated_bytes


def choose_cap(optimized_need: int, full_need: int) -> int:
    """A cap that the estimator says optimized fits and full does not; ValueError when it puts
    optimized at or above full."""
    if optimized_need >= full_need:
        raise ValueError(
            f"the estimator puts optimized ({format_size(optimized_need)}) at or above full "
            f"({format_size(full_need)}), so no cap separates them"
        )
    return int(min((optimized_need + full_need) / 2, optimized_need * CAP_FACTOR + CAP_SLACK_BYTES))


def run_memory_budget(context: Context, result: StepResult) -> None:
    """Run both variants under the cap (after a warm-up, as the sweep does); pass when full
    runs out of memory and optimized runs."""
    plan = context.plan
    needs = {}
    for variant in ("full", "optimized"):
        job = EstimateJob(
            variant,
            "aggregator",
            plan.architecture,
            plan.budget_precision,
            plan.budget_frames,
            plan.side,
        )
        figures = context.estimates.result(job, context.deadline.left())
        needs[variant] = fit_need(figures, context.device)
        result.data[f"{variant}_estimate_bytes"] = needs[variant]
        result.data["cuda_context_bytes"] = figures.cuda_context_bytes
    cap = choose_cap(needs["optimized"], needs["full"])
    result.data["cap_bytes"] = cap
    result.data["device_memory_bytes"] = cap + result.data["cuda_context_bytes"]
    group = group_of(
        context, "aggregator", plan.budget_frames, plan.budget_precision, ("full", "optimized")
    )
    with memory_cap(context.device, cap):
        cache = ModelCache(context.device, plan.seed)
        records = measure(context, group, cache, warmup=1)
        cache.clear()
    result.data["records"] = [record.to_json() for record in records]
    full, optimized = records_of(result.data["records"])
    passed = full.status == "oom" and optimized.status == "ok"
    optimized_peak = allocated_bytes(optimized)
    result.judge(
        passed,
        f"cap {format_size(cap)} at {plan.budget_frames} frames: full {full.status}, optimized "
        f"{optimized.status}"
        + (f" (peak {format_size(optimized_peak)})" if optimized_peak is not None else ""),
    )
