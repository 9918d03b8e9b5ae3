"""The six checks of the GPU evidence and the runner that takes them in order within the time
budget: each in a try/except (an error is recorded in one line and the next step runs), memory
freed between them, and results.json and summary.md rewritten after each; plots at the end (a
failure to draw them is printed, the rest is kept)."""

import contextlib
import multiprocessing
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from profiling.evidence.estimates import (
    EstimateFigures,
    EstimatePool,
    aggregator_job,
    estimate_jobs,
)
from profiling.evidence.plan import (
    OFFLOAD,
    README_PRECISION,
    UNCHUNKED,
    Plan,
    register_evidence_variants,
)
from profiling.evidence.report import write_plots, write_results, write_summary
from profiling.evidence.results import (
    ERROR,
    SKIPPED_TIME,
    AggregatorData,
    ChunkingData,
    Deadline,
    EstimateRow,
    EstimatesData,
    GpuTestsData,
    Measured,
    MemoryBudgetData,
    Pair,
    Run,
    Skipped,
    StepResult,
    allocated_bytes,
    data_of,
    reserved_bytes,
)
from profiling.native_stderr import native_stderr_to
from profiling.report.summary import format_diff, format_ratio, format_size
from profiling.sweep.cases import CaseGroup
from profiling.sweep.environment import RankInfo, collect_environment
from profiling.sweep.measure import free_memory, measure_group
from profiling.sweep.models import ModelCache
from profiling.sweep.records import CaseRecord, one_line
from vggt.memory.tracker import LiveBytes
from vggt.precision import Precision

REPO_ROOT = Path(__file__).resolve().parents[2]
NATIVE_LOG = "native-stderr.log"
COMMAND = "python -m profiling.gpu_check"
PYTEST_OUTPUT = "pytest-gpu.txt"
# The end of pytest's output that is kept (its summary is at the end).
KEPT_CHARS = 1 << 20
PYTEST_COUNT = re.compile(r"\d+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")
# Timed forwards per variant after its memory run: the big configurations take seconds each.
REPEATS = 1
# The largest difference from the baseline, relative to the baseline's largest magnitude, that
# counts as agreement: about one bf16 rounding step (2**-7) with some room.
DIFF_TOLERANCE = 1e-2
ESTIMATE_TOLERANCE = 0.10
# The memory cap sits halfway between the two needs, but no further above the optimized one
# than this factor and slack, so an estimator that undercounts full still sees it run out.
CAP_FACTOR = 1.25
CAP_SLACK_BYTES = 1 << 30
AGGREGATORS = ("full", "optimized")
ON_DEVICE = "optimized"
CHUNKED = "optimized"


@dataclass
class Context:
    """What every step reads: the plan, the device, the time budget, the estimates computing in
    the background and the earlier steps' results. `scratch` takes the sweep's per-case files
    (snapshots, timelines), which are not part of the evidence; `native_log` native stderr."""

    plan: Plan
    device: torch.device
    rank: RankInfo
    out_dir: Path
    scratch: Path
    native_log: Path
    deadline: Deadline
    estimates: EstimatePool
    steps: dict[str, StepResult]


def measure(
    context: Context, group: CaseGroup, cache: ModelCache, warmup: int, baseline: str
) -> list[CaseRecord]:
    """The sweep's records of `group` (warm-up, peaks, NVML, time), each variant compared with
    `baseline`."""
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


def measure_pair(
    context: Context,
    cache: ModelCache,
    component: str,
    frames: int,
    precision: Precision,
    variants: tuple[str, str],
    warmup: int,
) -> Pair:
    """Both `variants` of a batch-1 configuration of the plan's model and image size, the
    second compared with the first."""
    plan = context.plan
    group = CaseGroup(
        component, frames, 1, plan.side, plan.side, precision, variants, plan.architecture
    )
    baseline, compared = measure(context, group, cache, warmup, variants[0])
    return Pair(precision, frames, baseline, compared)


def agrees(record: CaseRecord) -> bool:
    """Whether a variant's outputs were compared and lie within DIFF_TOLERANCE."""
    return record.max_rel_diff is not None and record.max_rel_diff <= DIFF_TOLERANCE


def pytest_summary(output: str) -> str:
    """pytest's final count line (`3 passed, 2 skipped in 4.1s`), or `no summary`."""
    lines = [line.strip("= ") for line in output.splitlines() if PYTEST_COUNT.search(line)]
    return lines[-1] if lines else "no summary"


def decoded(output: bytes | str | None) -> str:
    """Captured output of a timed-out run, which may be bytes or missing."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def run_gpu_tests(context: Context, result: StepResult) -> None:
    """Step a: `pytest -m gpu --device <device>` within the time left, its output kept in
    DIR/pytest-gpu.txt; pass when it exits 0."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "--device", context.device.type]
    command += ["-q", "-p", "no:cacheprovider", *context.plan.pytest_paths]
    data = result.data = GpuTestsData(" ".join(command[1:]))
    timeout_s = max(1.0, context.deadline.left())
    try:
        completed = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as expired:
        output = decoded(expired.stdout) + decoded(expired.stderr)
        (context.out_dir / PYTEST_OUTPUT).write_text(output[-KEPT_CHARS:])
        raise TimeoutError(f"pytest did not finish in the {timeout_s:.0f} s left") from None
    output = completed.stdout + completed.stderr
    (context.out_dir / PYTEST_OUTPUT).write_text(output[-KEPT_CHARS:])
    data.exit_code, data.output = completed.returncode, PYTEST_OUTPUT
    data.summary = pytest_summary(completed.stdout)
    result.judge(completed.returncode == 0, f"{data.summary} (exit code {completed.returncode})")


def run_aggregator(context: Context, result: StepResult) -> None:
    """Step b: full against optimized at each frame count and precision of the plan while time
    is left (the first of each precision after a warm-up forward); the rest are skipped."""
    plan = context.plan
    data = result.data = AggregatorData()
    for precision in plan.precisions:
        cache = ModelCache(context.device, plan.seed)
        for index, frames in enumerate(plan.frames):
            if context.deadline.passed():
                data.skipped.append(Skipped(precision, frames))
                continue
            warmup = 1 if index == 0 else 0
            pair = measure_pair(
                context, cache, "aggregator", frames, precision, AGGREGATORS, warmup
            )
            data.pairs.append(pair)
        cache.clear()
        free_memory(context.device)
    judge_aggregator(result, data, plan)


def point_problem(pair: Pair, reference: int | None, largest: bool) -> str | None:
    """What is wrong with one aggregator point (`largest`: its precision's largest frame
    count), or None: optimized must run, need less than full and agree with it, and stay
    under VGGT's README figure where there is one."""
    full, optimized = pair.baseline, pair.compared
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


def judge_aggregator(result: StepResult, data: AggregatorData, plan: Plan) -> None:
    """Pass when every measured point is fine; the verdict quotes the largest README-precision
    point (or the largest point)."""
    if not data.pairs:
        result.judge(False, "no point was measured")
        return
    largest: dict[Precision, int] = {}
    for pair in data.pairs:
        largest[pair.precision] = max(pair.frames, largest.get(pair.precision, 0))
    problems = []
    for pair in data.pairs:
        readme = pair.precision == README_PRECISION
        reference = plan.reference_bytes.get(pair.frames) if readme else None
        problem = point_problem(pair, reference, pair.frames == largest[pair.precision])
        if problem:
            problems.append(problem)
    if problems:
        result.judge(False, "; ".join(problems[:3]))
        return
    quoted = max(data.pairs, key=lambda pair: (pair.precision == README_PRECISION, pair.frames))
    full, optimized = quoted.baseline, quoted.compared
    peak, full_peak = allocated_bytes(optimized), allocated_bytes(full)
    text = (
        f"at {quoted.frames} frames, {quoted.precision.label}: optimized {format_size(peak)}, "
        f"full {format_size(full_peak)} ({format_ratio(peak, full_peak)}), max rel diff "
        f"{format_diff(optimized.max_rel_diff)}"
    )
    if quoted.precision == README_PRECISION and quoted.frames in plan.reference_bytes:
        text += f"; VGGT README {plan.reference_bytes[quoted.frames] / 1e9:.2f} GB"
    result.judge(True, text, complete=not data.skipped)


def compare_point(context: Context, precision: Precision, record: CaseRecord) -> EstimateRow:
    """One measured aggregator point against its estimate: the bytes allocated at the peak
    within ESTIMATE_TOLERANCE, and the reserved bytes under the estimator's bound if it has one."""
    job = aggregator_job(context.plan, record.variant, precision, record.frames)
    try:
        figures = context.estimates.result(job, context.deadline.left())
    except multiprocessing.TimeoutError:
        return EstimateRow(record, error=SKIPPED_TIME)
    except Exception as error:
        return EstimateRow(record, error=f"the estimator failed: {one_line(error)}", ok=False)
    row = EstimateRow(record, figures)
    relative = row.relative_error
    bound, reserved = figures.reserved_bound_bytes, reserved_bytes(record)
    within = relative is not None and abs(relative) <= ESTIMATE_TOLERANCE
    row.ok = within and (bound is None or reserved is None or reserved <= bound)
    return row


def error_size(row: EstimateRow) -> float:
    """How far off a row's estimate is; infinite without one."""
    error = row.relative_error
    return float("inf") if error is None else abs(error)


def run_estimate_check(context: Context, result: StepResult) -> None:
    """Step c: every point that ran in the aggregator step against its estimate; pass when all
    are within."""
    measured = data_of(context.steps["aggregator"], AggregatorData).pairs
    rows = [
        compare_point(context, pair.precision, record)
        for pair in measured
        for record in (pair.baseline, pair.compared)
        if record.status == "ok"
    ]
    result.data = EstimatesData(rows)
    judged = [row for row in rows if row.ok is not None]
    if not judged:
        result.judge(False, "no point had both a measurement and an estimate")
        return
    worst = max(judged, key=error_size)
    failed = [row for row in judged if not row.ok]
    point = worst.record
    where = f"{point.variant} {point.precision} {point.frames} frames"
    if worst.relative_error is not None:
        text = f"{len(judged) - len(failed)} of {len(judged)} points within "
        text += f"{ESTIMATE_TOLERANCE:.0%}; largest error {worst.relative_error:+.1%} ({where})"
    else:
        text = f"{len(failed)} of {len(judged)} points failed; {where}: {worst.error}"
    result.judge(not failed, text, complete=len(judged) == len(rows))


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
    """Cap the memory the block's tensors may take on `device` at `cap_bytes`: on CUDA with
    torch.cuda.set_per_process_memory_fraction (a limit on PyTorch's caching allocator), on a
    CPU with a live-bytes tracker."""
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
    """Step d: full and optimized under a cap between their estimates (what `--memory-budget`
    does), after a warm-up as the sweep does; pass when full runs out of memory and optimized
    runs, as the estimator says."""
    plan = context.plan
    data = result.data = MemoryBudgetData()
    full_job, optimized_job = (
        aggregator_job(plan, variant, plan.budget_precision, plan.budget_frames)
        for variant in AGGREGATORS
    )
    full = context.estimates.result(full_job, context.deadline.left())
    full_need = data.full_estimate_bytes = fit_need(full, context.device)
    data.cuda_context_bytes = full.cuda_context_bytes
    optimized = context.estimates.result(optimized_job, context.deadline.left())
    optimized_need = data.optimized_estimate_bytes = fit_need(optimized, context.device)
    cap = data.cap_bytes = choose_cap(optimized_need, full_need)
    with memory_cap(context.device, cap):
        cache = ModelCache(context.device, plan.seed)
        pair = measure_pair(
            context,
            cache,
            "aggregator",
            plan.budget_frames,
            plan.budget_precision,
            AGGREGATORS,
            warmup=1,
        )
        cache.clear()
    data.pairs.append(pair)
    passed = pair.baseline.status == "oom" and pair.compared.status == "ok"
    peak = allocated_bytes(pair.compared)
    result.judge(
        passed,
        f"cap {format_size(cap)} at {plan.budget_frames} frames: full {pair.baseline.status}, "
        f"optimized {pair.compared.status}"
        + (f" (peak {format_size(peak)})" if peak is not None else ""),
    )


def run_offload(context: Context, result: StepResult) -> None:
    """Step e: the whole optimized model with its kept layers on the device and offloaded to
    the host; pass when the predictions are equal bit for bit and (on CUDA) offloading lowers
    the peak."""
    cache = ModelCache(context.device, context.plan.seed)
    frames = context.plan.offload_frames
    pair = measure_pair(
        context, cache, "model", frames, README_PRECISION, (ON_DEVICE, OFFLOAD), warmup=0
    )
    cache.clear()
    result.data = Measured([pair])
    kept, offloaded = pair.baseline, pair.compared
    if kept.status != "ok" or offloaded.status != "ok":
        result.judge(False, f"on the device {kept.status}, offloaded {offloaded.status}")
        return
    equal = offloaded.max_abs_diff == 0.0
    peak, kept_peak = allocated_bytes(offloaded), allocated_bytes(kept)
    text = "predictions equal bit for bit" if equal else f"max abs diff {offloaded.max_abs_diff}"
    text += (
        f"; peak {format_size(kept_peak)} on the device, {format_size(peak)} offloaded "
        f"({format_ratio(peak, kept_peak)}); time ratio "
        f"{format_ratio(offloaded.median_ms, kept.median_ms)}"
    )
    on_cuda = context.device.type == "cuda"
    result.judge(equal and (peak < kept_peak or not on_cuda), text)


def run_chunking(context: Context, result: StepResult) -> None:
    """Step f: the optimized aggregator with and without token chunks at each of the plan's
    frame counts while time is left."""
    data = result.data = ChunkingData()
    cache = ModelCache(context.device, context.plan.seed)
    for frames in context.plan.chunk_frames:
        if context.deadline.passed():
            data.skipped_frames.append(frames)
            continue
        variants = (UNCHUNKED, CHUNKED)
        pair = measure_pair(
            context, cache, "aggregator", frames, README_PRECISION, variants, warmup=0
        )
        data.pairs.append(pair)
        free_memory(context.device)
    cache.clear()
    judge_chunking(result, data)


def judge_chunking(result: StepResult, data: ChunkingData) -> None:
    """Pass when every frame count ran and agrees and chunks lower the largest one's peak."""
    if not data.pairs:
        result.judge(False, "no frame count was measured")
        return
    failed = [
        f"{pair.frames} frames: unchunked {pair.baseline.status}, chunked {pair.compared.status}"
        for pair in data.pairs
        if pair.baseline.status != "ok" or pair.compared.status != "ok"
    ]
    if failed:
        result.judge(False, "; ".join(failed))
        return
    largest = max(data.pairs, key=lambda pair: pair.frames)
    plain, chunked = largest.baseline, largest.compared
    peak, plain_peak = allocated_bytes(chunked), allocated_bytes(plain)
    disagree = [pair.frames for pair in data.pairs if not agrees(pair.compared)]
    text = (
        f"at {largest.frames} frames: peak {format_size(peak)} chunked, "
        f"{format_size(plain_peak)} unchunked ({format_ratio(peak, plain_peak)}), time ratio "
        f"{format_ratio(chunked.median_ms, plain.median_ms)}, max rel diff "
        f"{format_diff(chunked.max_rel_diff)}"
    )
    if disagree:
        text += f"; outputs differ beyond tolerance at {disagree} frames"
    passed = not disagree and peak < plain_peak
    result.judge(passed, text, complete=not data.skipped_frames)


Step = Callable[[Context, StepResult], None]
STEPS: dict[str, tuple[str, Step]] = {
    "gpu-tests": ("a", run_gpu_tests),
    "aggregator": ("b", run_aggregator),
    "estimates": ("c", run_estimate_check),
    "memory-budget": ("d", run_memory_budget),
    "offload": ("e", run_offload),
    "chunking": ("f", run_chunking),
}


def print_plan(plan: Plan, device: torch.device, budget_s: float) -> None:
    """The plan, before anything runs."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"GPU evidence on {device} ({name}): {plan.model}; time budget {budget_s:.0f} s")
    for step, line in plan.step_lines(device.type).items():
        print(f"  {STEPS[step][0]}. {step}: {line}")
    print(flush=True)


def run_step(context: Context, result: StepResult, step: Step) -> None:
    """Run one step unless the budget is spent; an exception becomes its error."""
    if context.deadline.passed():
        result.status = SKIPPED_TIME
        return
    started = context.deadline.elapsed()
    try:
        step(context, result)
    except Exception as error:
        result.status, result.error = ERROR, one_line(error)
    finally:
        result.seconds = round(context.deadline.elapsed() - started, 1)
        free_memory(context.device)


def report_line(result: StepResult) -> str:
    """`b. aggregator: pass (95.2 s): the verdict`."""
    seconds = "" if result.seconds is None else f" ({result.seconds:.1f} s)"
    detail = result.error or result.verdict
    return f"{result.letter}. {result.name}: {result.status}{seconds}" + (
        f": {detail}" if detail else ""
    )


def run_evidence(
    plan: Plan, device: torch.device, out_dir: Path, deadline: Deadline
) -> list[StepResult]:
    """Every step in order; the outputs are rewritten after each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    register_evidence_variants()
    rank = RankInfo.of(0, 1, 0, device)
    environment = collect_environment([rank], {"command": COMMAND, "seed": plan.seed})
    run = Run(datetime.now(UTC).isoformat(), plan, environment, deadline)
    steps = {name: StepResult(name, letter) for name, (letter, _) in STEPS.items()}
    results = list(steps.values())
    estimates = EstimatePool(estimate_jobs(plan), out_dir / NATIVE_LOG)
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
            context = Context(
                plan,
                device,
                rank,
                out_dir,
                Path(scratch),
                out_dir / NATIVE_LOG,
                deadline,
                estimates,
                steps,
            )
            write_results(out_dir, run, results)
            for name, (_, step) in STEPS.items():
                run_step(context, steps[name], step)
                write_results(out_dir, run, results)
                write_summary(out_dir, run, results)
                print(report_line(steps[name]), flush=True)
    finally:
        estimates.close()
    try:
        write_plots(out_dir, plan, results)
    except Exception as error:
        print(f"plots not written: {one_line(error)}", flush=True)
    return results
