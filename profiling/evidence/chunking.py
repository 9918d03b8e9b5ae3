"""Step f: the optimized aggregator with and without token chunks: both must agree, and at the
largest frame count chunks must lower the peak."""

from profiling.evidence.context import Context
from profiling.evidence.measuring import agrees, allocated_bytes, group_of, measure, records_of
from profiling.evidence.plan import README_PRECISION
from profiling.evidence.results import StepResult
from profiling.evidence.variants import UNCHUNKED
from profiling.report.summary import format_diff, format_ratio, format_size
from profiling.sweep.measure import free_memory
from profiling.sweep.models import ModelCache

CHUNKED = "optimized"


def run_chunking(context: Context, result: StepResult) -> None:
    """Measure both at each of the plan's frame counts while time is left, and judge them."""
    result.data.update(records=[], skipped=[])
    cache = ModelCache(context.device, context.plan.seed)
    for frames in context.plan.chunk_frames:
        if context.deadline.passed():
            result.data["skipped"].append({"frames": frames})
            continue
        group = group_of(context, "aggregator", frames, README_PRECISION, (UNCHUNKED, CHUNKED))
        records = measure(context, group, cache, warmup=0, baseline=UNCHUNKED)
        result.data["records"] += [record.to_json() for record in records]
        free_memory(context.device)
    cache.clear()
    judge_chunking(result)


def judge_chunking(result: StepResult) -> None:
    """Pass when every frame count ran and agrees and chunks lower the largest one's peak."""
    pairs: dict[int, dict] = {}
    for record in records_of(result.data["records"]):
        pairs.setdefault(record.frames, {})[record.variant] = record
    if not pairs:
        result.judge(False, "no frame count was measured")
        return
    failed = [
        f"{frames} frames: unchunked {pair[UNCHUNKED].status}, chunked {pair[CHUNKED].status}"
        for frames, pair in pairs.items()
        if pair[UNCHUNKED].status != "ok" or pair[CHUNKED].status != "ok"
    ]
    if failed:
        result.judge(False, "; ".join(failed))
        return
    largest = max(pairs)
    plain, chunked = pairs[largest][UNCHUNKED], pairs[largest][CHUNKED]
    peak, plain_peak = allocated_bytes(chunked), allocated_bytes(plain)
    disagree = [frames for frames, pair in pairs.items() if not agrees(pair[CHUNKED])]
    text = (
        f"at {largest} frames: peak {format_size(peak)} chunked, {format_size(plain_peak)} "
        f"unchunked ({format_ratio(peak, plain_peak)}), time ratio "
        f"{format_ratio(chunked.median_ms, plain.median_ms)}, max rel diff "
        f"{format_diff(chunked.max_rel_diff)}"
    )
    if disagree:
        text += f"; outputs differ beyond tolerance at {disagree} frames"
    passed = not disagree and peak < plain_peak
    result.judge(passed, text, complete=not result.data["skipped"])
