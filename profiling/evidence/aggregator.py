"""Step b: the full and optimized aggregators at each frame count and precision of the plan;
the optimized one must agree with the full one, need no more memory (less at the largest frame
count), and stay under VGGT's README figures in the README's precision."""

from profiling.evidence.context import Context
from profiling.evidence.measuring import agrees, allocated_bytes, group_of, measure, records_of
from profiling.evidence.plan import README_PRECISION, Plan
from profiling.evidence.results import StepResult
from profiling.report.summary import format_diff, format_ratio, format_size
from profiling.sweep.measure import free_memory
from profiling.sweep.models import ModelCache
from profiling.sweep.records import CaseRecord

VARIANTS = ("full", "optimized")


def run_aggregator(context: Context, result: StepResult) -> None:
    """Measure each point while time is left (the first of each precision after a warm-up
    forward); the rest are listed as skipped."""
    plan = context.plan
    result.data.update(records=[], skipped=[])
    for precision in plan.precisions:
        cache = ModelCache(context.device, plan.seed)
        for index, frames in enumerate(plan.frames):
            if context.deadline.passed():
                result.data["skipped"].append({"precision": precision.label, "frames": frames})
                continue
            group = group_of(context, "aggregator", frames, precision, VARIANTS)
            records = measure(context, group, cache, warmup=1 if index == 0 else 0)
            result.data["records"] += [record.to_json() for record in records]
        cache.clear()
        free_memory(context.device)
    judge_aggregator(result, plan)


def point_problem(
    full: CaseRecord, optimized: CaseRecord, reference: int | None, largest: bool
) -> str | None:
    """What is wrong with one point (`largest`: the precision's largest frame count), or None."""
    where = f"{optimized.precision}, {optimized.frames} frames"
    if full.status != "ok" or optimized.status != "ok":
        return f"{where}: full {full.status}, optimized {optimized.status}"
    peak, full_peak = allocated_bytes(optimized), allocated_bytes(full)
    if peak > full_peak or (largest and peak == full_peak):
        return f"{where}: optimized peak {format_size(peak)}, full {format_size(full_peak)}"
    if not agrees(optimized):
        return f"{where}: max rel diff {format_diff(optimized.max_rel_diff)} from full"
    if reference is not None and peak >= reference:
        return f"{where}: optimized {format_size(peak)} is not below the reference's"
    return None


def judge_aggregator(result: StepResult, plan: Plan) -> None:
    """Pass when every measured point is fine; the verdict quotes the largest README-precision
    point (or the largest point)."""
    points: dict[tuple[str, int], dict[str, CaseRecord]] = {}
    for record in records_of(result.data["records"]):
        points.setdefault((record.precision, record.frames), {})[record.variant] = record
    problems = []
    largest = {}
    for precision, frames in points:
        largest[precision] = max(frames, largest.get(precision, 0))
    for (precision, frames), pair in points.items():
        reference = (
            plan.reference_bytes.get(frames) if precision == README_PRECISION.label else None
        )
        at_largest = frames == largest[precision]
        problem = point_problem(pair["full"], pair["optimized"], reference, at_largest)
        if problem:
            problems.append(problem)
    if not points:
        result.judge(False, "no point was measured")
        return
    complete = not result.data["skipped"]
    if problems:
        result.judge(False, "; ".join(problems[:3]))
        return
    quoted = max(points, key=lambda key: (key[0] == README_PRECISION.label, key[1]))
    optimized = points[quoted]["optimized"]
    peak, full_peak = allocated_bytes(optimized), allocated_bytes(points[quoted]["full"])
    text = (
        f"at {quoted[1]} frames, {quoted[0]}: optimized {format_size(peak)}, full "
        f"{format_size(full_peak)} ({format_ratio(peak, full_peak)}), max rel diff "
        f"{format_diff(optimized.max_rel_diff)}"
    )
    if quoted[0] == README_PRECISION.label and quoted[1] in plan.reference_bytes:
        text += f"; VGGT README {plan.reference_bytes[quoted[1]] / 1e9:.2f} GB"
    result.judge(True, text, complete)
