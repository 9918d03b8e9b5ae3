"""Step e: the whole optimized model with its kept layers on the device and offloaded to the
host: the predictions must be equal bit for bit, and offloading must lower the GPU peak."""

from profiling.evidence.context import Context
from profiling.evidence.measuring import allocated_bytes, group_of, measure, records_of
from profiling.evidence.plan import README_PRECISION
from profiling.evidence.results import StepResult
from profiling.evidence.variants import OFFLOAD
from profiling.report.summary import format_ratio, format_size
from profiling.sweep.models import ModelCache

ON_DEVICE = "optimized"


def run_offload(context: Context, result: StepResult) -> None:
    """Measure both at the plan's frame count and judge them."""
    frames = context.plan.offload_frames
    group = group_of(context, "model", frames, README_PRECISION, (ON_DEVICE, OFFLOAD))
    cache = ModelCache(context.device, context.plan.seed)
    records = measure(context, group, cache, warmup=0, baseline=ON_DEVICE)
    cache.clear()
    result.data["records"] = [record.to_json() for record in records]
    on_device, offloaded = records_of(result.data["records"])
    if on_device.status != "ok" or offloaded.status != "ok":
        result.judge(False, f"on the device {on_device.status}, offloaded {offloaded.status}")
        return
    equal = offloaded.max_abs_diff == 0.0
    peak, kept_peak = allocated_bytes(offloaded), allocated_bytes(on_device)
    text = "predictions equal bit for bit" if equal else f"max abs diff {offloaded.max_abs_diff}"
    text += (
        f"; peak {format_size(kept_peak)} on the device, {format_size(peak)} offloaded "
        f"({format_ratio(peak, kept_peak)}); time ratio "
        f"{format_ratio(offloaded.median_ms, on_device.median_ms)}"
    )
    on_cuda = context.device.type == "cuda"
    result.judge(equal and (peak < kept_peak or not on_cuda), text)
