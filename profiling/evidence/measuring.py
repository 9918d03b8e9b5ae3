"""Measuring the variants of one configuration with the sweep's own measurement (warm-up,
peaks, NVML, time, comparison with a baseline), and reading the figures back."""

from profiling.evidence.context import Context
from profiling.native_stderr import native_stderr_to
from profiling.sweep.cases import CaseGroup
from profiling.sweep.measure import measure_group
from profiling.sweep.models import ModelCache
from profiling.sweep.records import CaseRecord
from profiling.sweep.variants import BASELINE
from vggt.precision import Precision

# Timed forwards per variant after its memory run: the big configurations take seconds each.
REPEATS = 1
# The largest difference from the baseline, relative to the baseline's largest magnitude, that
# counts as agreement: about one bf16 rounding step (2**-7) with some room.
DIFF_TOLERANCE = 1e-2


def group_of(
    context: Context,
    component: str,
    frames: int,
    precision: Precision,
    variants: tuple[str, ...],
) -> CaseGroup:
    """A batch-1 configuration of the plan's model and image size."""
    plan = context.plan
    return CaseGroup(
        component, frames, 1, plan.side, plan.side, precision, variants, plan.architecture
    )


def measure(
    context: Context, group: CaseGroup, cache: ModelCache, warmup: int, baseline: str = BASELINE
) -> list[CaseRecord]:
    """The sweep's records of `group`, each variant compared with `baseline`."""
    with native_stderr_to(context.native_log):
        return measure_group(
            group,
            cache,
            context.rank,
            warmup,
            REPEATS,
            context.scratch,
            context.plan.seed,
            baseline,
        )


def allocated_bytes(record: CaseRecord) -> int | None:
    """Bytes allocated at the forward's peak, weights and input included: the CUDA allocator's
    peak, or on a CPU the profiler's peak during the forward plus the weights and input."""
    if record.status != "ok" or record.peak_bytes is None:
        return None
    if record.cuda_max_allocated_bytes is not None:
        return record.cuda_max_allocated_bytes
    return record.peak_bytes + (record.weight_bytes or 0) + (record.input_bytes or 0)


def records_of(data: list[dict]) -> list[CaseRecord]:
    """Records from the JSON a step keeps in its data."""
    return [CaseRecord.from_json(item) for item in data]


def agrees(record: CaseRecord) -> bool:
    """Whether a variant's outputs were compared and lie within DIFF_TOLERANCE."""
    return record.max_rel_diff is not None and record.max_rel_diff <= DIFF_TOLERANCE
