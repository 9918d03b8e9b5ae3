"""The checks of the GPU evidence and the runner that takes them in order within the time
budget. A step whose predicted seconds exceed the time left is not started, and measuring
steps check the time before each point; each step runs in a try/except (an error is recorded
in one line and the next step runs), memory is freed between them, and results.json and
summary.md are rewritten after each."""

import contextlib
import importlib
import multiprocessing
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from profiling.evidence.estimates import (
    EstimateFigures,
    EstimatePool,
    estimate_jobs,
    point_jobs,
)
from profiling.evidence.plan import (
    REPEATS,
    Plan,
    Point,
    register_evidence_variants,
)
from profiling.evidence.report import write_plots, write_results, write_summary
from profiling.evidence.results import (
    ERROR,
    PASS,
    SKIPPED_TIME,
    ContextData,
    Deadline,
    EstimateRow,
    EstimatesData,
    GpuTestsData,
    Measured,
    MemoryCapData,
    Pair,
    PreflightData,
    Run,
    StepResult,
    TrainingData,
    TrainingRow,
    allocated_bytes,
    data_of,
    phase_peak_bytes,
)
from profiling.meters import cuda, sdpa
from profiling.meters.cap import memory_cap
from profiling.native_stderr import native_stderr_to
from profiling.report.summary import format_diff, format_ratio, format_size
from profiling.sweep.cases import CaseGroup
from profiling.sweep.environment import RankInfo, collect_environment
from profiling.sweep.measure import free_memory, measure_group
from profiling.sweep.models import ModelCache
from profiling.sweep.records import CaseRecord, one_line
from profiling.sweep.training_run import measure_training_group
from vggt.layers import attention_backends
from vggt.memory.allocator import unmodelled_setting
from vggt.memory.estimate import CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, NCCL_BYTES
from vggt.training.step import PHASES

REPO_ROOT = Path(__file__).resolve().parents[2]
NATIVE_LOG = "native-stderr.log"
SNAPSHOTS = "snapshots"
COMMAND = "python -m profiling.gpu_check"
PYTEST_OUTPUT = "pytest-gpu.txt"
# The end of pytest's output that is kept (its summary is at the end).
KEPT_CHARS = 1 << 20
PYTEST_COUNT = re.compile(r"\d+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")
# The largest difference from the baseline, relative to the baseline's largest magnitude, that
# counts as agreement: about one bf16 rounding step (2**-7) with some room.
DIFF_TOLERANCE = 1e-2
ESTIMATE_TOLERANCE = 0.10
# The memory cap runs the optimized aggregator this far above and below the estimated need.
CAP_MARGIN = 0.08
# Imports the evidence needs (pytest for the gpu tests, NVML for the context, matplotlib for
# the plots); the others are reported when missing.
REQUIRED_IMPORTS = ("pytest", "pynvml", "matplotlib")
OPTIONAL_IMPORTS = ("hypothesis", "safetensors", "huggingface_hub", "tqdm")


@dataclass
class Context:
    """What every step reads: the plan, the device, the time budget, the estimates computing in
    the background, the earlier steps' results, and where files go (`snapshots`: the memory
    runs' allocator snapshots and timelines)."""

    plan: Plan
    device: torch.device
    rank: RankInfo
    out_dir: Path
    snapshots: Path
    native_log: Path
    deadline: Deadline
    estimates: EstimatePool
    steps: dict[str, StepResult]

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def fits(self, point: Point) -> bool:
        """Whether `point` is predicted to finish in the time left."""
        return self.deadline.allows(self.plan.point_seconds(point))


def history_entries(context: Context, point: Point) -> int | None:
    """Allocator history for a point's memory runs: None where the plan records none, else
    room for the estimator's allocation count of its largest variant (the default size when
    that estimate is not ready)."""
    if not point.history:
        return None
    counts = []
    for job in point_jobs(point, context.plan.architecture):
        with contextlib.suppress(Exception):
            counts.append(context.estimates.result(job, 0.0).allocations)
    return cuda.history_entries_for(max(counts)) if counts else cuda.HISTORY_MAX_ENTRIES


def point_group(plan: Plan, point: Point) -> CaseGroup:
    """The sweep's configuration of a point (batch 1)."""
    return CaseGroup(
        point.component,
        point.frames,
        1,
        point.height,
        point.width,
        point.precision,
        point.variants,
        plan.architecture,
        point.training,
    )


def measure_point(context: Context, cache: ModelCache, point: Point) -> list[CaseRecord]:
    """The sweep's records of the point's variants (warm-up, peaks, NVML, time; of a training
    point, its steps with each phase's peak and time), each compared with the first."""
    plan = context.plan
    measure = measure_group if point.training is None else measure_training_group
    with native_stderr_to(context.native_log):
        return measure(
            point_group(plan, point),
            cache,
            context.rank,
            point.warmup,
            REPEATS,
            context.snapshots,
            plan.seed,
            point.variants[0],
            history_entries(context, point),
        )


def measure_pair(context: Context, cache: ModelCache, point: Point) -> Pair:
    """Both variants of a point, the SDPA backend of every attention call counted."""
    with sdpa.counting_backends() as counts:
        baseline, compared = measure_point(context, cache, point)
    return Pair(point, baseline, compared, dict(counts))


def measure_points(context: Context, points: tuple[Point, ...], data: Measured) -> None:
    """Each point that fits in the time left, one model cache per precision and component;
    the labels of the others go to `data.skipped`."""
    cache = ModelCache(context.device, context.plan.seed)
    for point in points:
        if not context.fits(point):
            data.skipped.append(point.label)
            continue
        data.pairs.append(measure_pair(context, cache, point))
        free_memory(context.device)
    cache.clear()


def agrees(record: CaseRecord) -> bool:
    """Whether a variant's outputs were compared and lie within DIFF_TOLERANCE."""
    return record.max_rel_diff is not None and record.max_rel_diff <= DIFF_TOLERANCE


def import_problem(name: str) -> str | None:
    """Why `name` cannot be imported, or None."""
    try:
        importlib.import_module(name)
    except Exception as error:
        return f"{name} ({one_line(error)})"
    return None


def run_preflight(context: Context, result: StepResult) -> None:
    """Step a: the versions, the imports the evidence needs, the SDPA backends enabled; fails
    when a needed import is missing or the allocator's settings are not the ones modelled."""
    data = result.data = PreflightData()
    data.versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version())
        if torch.backends.cudnn.is_available()
        else None,
        "device": torch.cuda.get_device_name(context.device) if context.on_cuda else "CPU",
    }
    problems = [import_problem(name) for name in (*REQUIRED_IMPORTS, *OPTIONAL_IMPORTS)]
    data.missing = [problem for problem in problems if problem]
    if context.on_cuda:
        checks = attention_backends.backend_checks()
        data.sdpa_enabled = {name: bool(enabled()) for name, (enabled, _) in checks.items()}
    required = [problem for problem in data.missing if problem.split()[0] in REQUIRED_IMPORTS]
    versions = ", ".join(f"{key} {value}" for key, value in data.versions.items())
    text = versions + (f"; missing: {'; '.join(data.missing)}" if data.missing else "")
    setting = unmodelled_setting()
    if setting:
        text += f"; {setting}: the estimator models the allocator without expandable segments"
    result.judge(not required and not setting, text)


def outside_allocator_bytes(device: torch.device) -> int:
    """Device memory NVML counts as used beyond what the caching allocator reserved."""
    from profiling.meters.nvml import nvml_handle_for, start_nvml

    torch.cuda.synchronize(device)
    pynvml = start_nvml()
    try:
        used = pynvml.nvmlDeviceGetMemoryInfo(nvml_handle_for(pynvml, device)).used
    finally:
        pynvml.nvmlShutdown()
    return used - torch.cuda.memory_reserved(device)


def first_kernels(device: torch.device) -> None:
    """A matmul and an attention call, so cuBLAS and the attention kernels are loaded."""
    x = torch.randn(256, 256, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        (x @ x).sum().item()
        heads = x.view(1, 4, 64, 256)
        torch.nn.functional.scaled_dot_product_attention(heads, heads, heads).sum().item()


@contextlib.contextmanager
def one_rank_group(backend: str, folder: Path) -> Iterator[None]:
    """A process group of this process alone, through a file store under `folder`."""
    import torch.distributed as dist

    store = folder / "one-rank-store"
    store.unlink(missing_ok=True)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        store.unlink(missing_ok=True)


def run_cuda_context(context: Context, result: StepResult) -> None:
    """Step b: NVML used minus reserved bytes after the first kernels (the CUDA context), and
    what a one-rank NCCL group and its first all-reduce add; pass when both fit the
    estimator's allowances. On a CPU a one-rank gloo group is started and used instead."""
    import torch.distributed as dist

    data = result.data = ContextData()
    device = context.device
    backend = data.backend = "nccl" if context.on_cuda else "gloo"
    first_kernels(device)
    if context.on_cuda:
        data.cuda_context_bytes = outside_allocator_bytes(device)
    with one_rank_group(backend, context.out_dir):
        tensor = torch.ones(1 << 18, device=device)
        dist.all_reduce(tensor)
        if context.on_cuda:
            data.nccl_bytes = outside_allocator_bytes(device) - data.cuda_context_bytes
    if not context.on_cuda:
        result.judge(True, f"no CUDA context on a CPU; a one-rank {backend} group all-reduced")
        return
    judge_context(result, data)


def judge_context(result: StepResult, data: ContextData) -> None:
    """Pass when the measured context (the larger of both readings) and NCCL's bytes are
    within the estimator's allowances."""
    contexts = [data.cuda_context_bytes, data.after_forwards_bytes]
    measured = max(value for value in contexts if value is not None)
    nccl = data.nccl_bytes or 0
    text = (
        f"CUDA context {format_size(measured)} (allowance {format_size(CUDA_CONTEXT_BYTES)}), "
        f"NCCL {format_size(nccl)} at world size 1 (allowance {format_size(NCCL_BYTES)})"
    )
    result.judge(measured <= CUDA_CONTEXT_BYTES and nccl <= NCCL_BYTES, text)


def pytest_summary(output: str) -> str:
    """pytest's final count line (`3 passed, 2 skipped in 4.1s`), or `no summary`."""
    lines = [line.strip("= ") for line in output.splitlines() if PYTEST_COUNT.search(line)]
    return lines[-1] if lines else "no summary"


def decoded(output: bytes | str | None) -> str:
    """Captured output of a timed-out run, which may be bytes or missing."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def pytest_command(plan: Plan, device: torch.device) -> list[str]:
    """pytest on the plan's gpu test files only, each test stopped after its timeout."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "--device",
        device.type,
        "--test-timeout",
        f"{plan.test_timeout_s:.0f}",
        "-q",
        "-p",
        "no:cacheprovider",
        *plan.pytest_paths,
    ]


def run_gpu_tests(context: Context, result: StepResult) -> None:
    """Step c: the gpu-marked tests of the plan's files within the time left, their output
    kept in DIR/pytest-gpu.txt; pass when pytest exits 0."""
    command = pytest_command(context.plan, context.device)
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


def point_problem(pair: Pair, reference: int | None, largest: bool) -> str | None:
    """What is wrong with one full-against-optimized point (`largest`: its precision's largest
    frame count), or None: optimized must run, need less than full and agree with it, and
    stay under VGGT's README figure where there is one."""
    full, optimized = pair.baseline, pair.compared
    where = pair.point.label
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


def judge_pairs(result: StepResult, data: Measured, plan: Plan) -> None:
    """Pass when every measured point is fine; the verdict quotes the largest point."""
    if not data.pairs:
        result.judge(False, "no point was measured")
        return
    largest: dict[tuple, int] = {}
    for pair in data.pairs:
        key = (pair.precision, pair.point.height, pair.point.width)
        largest[key] = max(pair.frames, largest.get(key, 0))
    problems = [
        problem
        for pair in data.pairs
        if (
            problem := point_problem(
                pair,
                plan.reference_for(pair.point),
                pair.frames == largest[(pair.precision, pair.point.height, pair.point.width)],
            )
        )
    ]
    if problems:
        result.judge(False, "; ".join(problems[:3]))
        return
    quoted = max(data.pairs, key=lambda pair: pair.frames)
    full, optimized = quoted.baseline, quoted.compared
    peak, full_peak = allocated_bytes(optimized), allocated_bytes(full)
    text = (
        f"at {quoted.point.label}: optimized {format_size(peak)}, full {format_size(full_peak)} "
        f"({format_ratio(peak, full_peak)}), max rel diff {format_diff(optimized.max_rel_diff)}"
    )
    reference = plan.reference_for(quoted.point)
    if reference is not None:
        text += f"; VGGT README {reference / 1e9:.2f} GB"
    backends = sorted({name for pair in data.pairs for name in pair.sdpa})
    if backends:
        text += f"; SDPA {', '.join(backends)}"
    result.judge(True, text, complete=not data.skipped)


def run_aggregator(context: Context, result: StepResult) -> None:
    """Step d: full against optimized at the README's size and frame counts while time is
    left; then the device memory outside the allocator is read again."""
    data = result.data = Measured()
    measure_points(context, context.plan.aggregator, data)
    step = context.steps.get("cuda-context")
    if context.on_cuda and step is not None and isinstance(step.data, ContextData):
        step.data.after_forwards_bytes = outside_allocator_bytes(context.device)
        judge_context(step, step.data)
    judge_pairs(result, data, context.plan)


def estimate_of(
    context: Context, point: Point, variant: str
) -> tuple[EstimateFigures | None, str | None]:
    """The estimate of `variant` at `point`, waited for while time is left; else None and
    why: SKIPPED_TIME when it was not ready in time, or how the estimator failed."""
    jobs = {job.variant: job for job in point_jobs(point, context.plan.architecture)}
    try:
        return context.estimates.result(jobs[variant], context.deadline.left()), None
    except multiprocessing.TimeoutError:
        return None, SKIPPED_TIME
    except Exception as error:
        return None, f"the estimator failed: {one_line(error)}"


def compare_point(context: Context, pair: Pair, record: CaseRecord) -> EstimateRow:
    """One measured variant against its estimate: activations within ESTIMATE_TOLERANCE, and
    on CUDA the unconstrained peak reserve within it of the never-release figure; judged
    only where its activations are at least half of its peak."""
    figures, error = estimate_of(context, pair.point, record.variant)
    if figures is None:
        return EstimateRow(record, error=error, ok=None if error == SKIPPED_TIME else False)
    row = EstimateRow(record, figures)
    if not row.judged:
        return row
    errors = [row.relative_error, row.reserved_error]
    row.ok = errors[0] is not None and all(
        error is None or abs(error) <= ESTIMATE_TOLERANCE for error in errors
    )
    return row


def error_size(row: EstimateRow) -> float:
    """How far off a row's estimate is; infinite without one."""
    errors = [abs(error) for error in (row.relative_error, row.reserved_error) if error is not None]
    return max(errors, default=float("inf"))


def estimate_rows(context: Context, pairs: list[Pair]) -> list[EstimateRow]:
    """Every variant of `pairs` that ran, against its estimate."""
    return [
        compare_point(context, pair, record)
        for pair in pairs
        for record in (pair.baseline, pair.compared)
        if record.status == "ok"
    ]


def judge_rows(
    result: StepResult, rows: list[EstimateRow], complete: bool, require_judged: bool = True
) -> None:
    """Pass when every judged row agrees (and, if `require_judged`, at least one was judged);
    the verdict names the largest error."""
    judged = [row for row in rows if row.ok is not None]
    waiting = [row for row in rows if row.error == SKIPPED_TIME]
    if not judged:
        text = f"no point was judged ({len(rows)} measured, activations under half of the peak)"
        result.judge(not require_judged and not waiting, text, complete=complete)
        return
    failed = [row for row in judged if not row.ok]
    worst = max(judged, key=error_size)
    point = worst.record
    where = f"{point.variant} {point.precision} {point.frames} frames"
    if worst.relative_error is not None:
        text = f"{len(judged) - len(failed)} of {len(judged)} judged points within "
        text += f"{ESTIMATE_TOLERANCE:.0%}: largest error {error_size(worst):.1%} ({where})"
    else:
        text = f"{len(failed)} of {len(judged)} points failed; {where}: {worst.error}"
    unjudged = len(rows) - len(judged) - len(waiting)
    if unjudged:
        text += f"; {unjudged} not judged (activations under half of the peak)"
    result.judge(not failed, text, complete=complete and not waiting)


def run_estimate_check(context: Context, result: StepResult) -> None:
    """Step e: every variant the aggregator step measured against its estimate."""
    pairs = data_of(context.steps["aggregator"], Measured).pairs
    rows = estimate_rows(context, pairs)
    result.data = EstimatesData(rows)
    judge_rows(result, rows, complete=True)


def fit_need(figures: EstimateFigures, device: torch.device) -> int:
    """What the estimator says a run needs under a cap of `device`: on CUDA, where the cap
    limits what the allocator reserves (weights included), its reserved bound; on a CPU,
    whose cap counts the tensors created under it, the live peak less the weights."""
    if device.type == "cuda":
        return figures.reserved_bound_bytes
    return figures.peak_bytes - figures.weights_bytes


def run_memory_cap(context: Context, result: StepResult) -> None:
    """Step f: the optimized aggregator under a cap CAP_MARGIN above its estimated need must
    run, and under one CAP_MARGIN below it must run out of memory."""
    point = context.plan.cap
    data = result.data = MemoryCapData()
    (job,) = point_jobs(point, context.plan.architecture)
    need = data.need_bytes = fit_need(
        context.estimates.result(job, context.deadline.left()), context.device
    )
    cache = ModelCache(context.device, context.plan.seed)
    cache.modules_for(point_group(context.plan, point))
    for factor in (1 + CAP_MARGIN, 1 - CAP_MARGIN):
        cap = int(need * factor)
        with memory_cap(context.device, cap):
            (record,) = measure_point(context, cache, point)
        data.runs.append((cap, record))
    cache.clear()
    (above, run_above), (below, run_below) = data.runs
    passed = run_above.status == "ok" and run_below.status == "oom"
    peak = allocated_bytes(run_above)
    result.judge(
        passed,
        f"estimated need {format_size(need)}: under {format_size(above)} "
        f"{run_above.status}"
        + (f" (peak {format_size(peak)})" if peak else "")
        + f", under {format_size(below)} {run_below.status} (expected ok, then oom)",
    )


def run_chunking(context: Context, result: StepResult) -> None:
    """Step g: the optimized aggregator with and without token chunks; pass when every point
    ran and agrees and chunks lower the largest one's peak."""
    data = result.data = Measured()
    measure_points(context, context.plan.chunking, data)
    if not data.pairs:
        result.judge(False, "no point was measured")
        return
    failed = [
        f"{pair.point.label}: unchunked {pair.baseline.status}, chunked {pair.compared.status}"
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
    result.judge(not disagree and peak < plain_peak, text, complete=not data.skipped)


def run_offload(context: Context, result: StepResult) -> None:
    """Step h: the whole optimized model with its kept layers on the device and offloaded to
    the host in several pieces; pass when the predictions are equal bit for bit and (on
    CUDA) offloading lowers the peak."""
    data = result.data = Measured()
    measure_points(context, (context.plan.offload,), data)
    if not data.pairs:
        result.judge(False, "not measured")
        return
    kept, offloaded = data.pairs[0].baseline, data.pairs[0].compared
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
    result.judge(equal and (peak < kept_peak or not context.on_cuda), text)


def judge_unmeasured(result: StepResult, planned: bool, skipped: list[str]) -> None:
    """A step that measured no point: skipped when the time left its points out, else a pass
    only when it had none planned."""
    result.judge(not planned, "no point was planned or measured")
    if skipped:
        result.status = SKIPPED_TIME


def compare_training(context: Context, point: Point, record: CaseRecord) -> TrainingRow:
    """One variant's training step against its estimate: each phase's peak within
    ESTIMATE_TOLERANCE of the estimator's. Both count the weights, images, targets, AdamW's
    states, gradients and activations, each storage once, except where noted below."""
    if record.status != "ok":
        return TrainingRow(point, record)
    figures, error = estimate_of(context, point, record.variant)
    if figures is None:
        return TrainingRow(point, record, error=error, ok=None if error == SKIPPED_TIME else False)
    # On CUDA the allocator also counts the cuBLAS workspace, which the estimator's live bytes
    # leave out (autograd's backward thread may hold a second one: 32 MiB, under 0.2 % of
    # VGGT-1B's peaks), and rounds each tensor up to 512 bytes (a few MiB over VGGT-1B's).
    added = CUBLAS_WORKSPACE_BYTES if context.on_cuda else 0
    estimate = {phase: peak + added for phase, peak in figures.phase_peak_bytes.items()}
    row = TrainingRow(point, record, estimate)
    errors = [row.relative_error(phase) for phase in PHASES]
    row.ok = all(error is not None and abs(error) <= ESTIMATE_TOLERANCE for error in errors)
    return row


def training_problems(data: TrainingData) -> list[str]:
    """What is wrong with the measured steps: a variant that did not run, a loss away from its
    baseline's (the point's first variant), a forward or backward peak above the baseline's,
    an estimate off by more than ESTIMATE_TOLERANCE or that failed."""
    problems = []
    baselines: dict[Point, CaseRecord] = {}
    for row in data.rows:
        record = row.record
        base = baselines.setdefault(row.point, record)
        where = f"{row.point.frames} frames {record.variant}"
        if record.status != "ok":
            problems.append(f"{where}: {record.status}: {record.error}")
            continue
        if not agrees(record):
            problems.append(f"{where}: loss rel diff {format_diff(record.max_rel_diff)}")
        for phase in ("forward", "backward"):
            peak, base_peak = phase_peak_bytes(record, phase), phase_peak_bytes(base, phase)
            if base_peak is not None and peak > base_peak:
                problems.append(
                    f"{where}: {phase} peak {format_size(peak)} above {base.variant}'s "
                    f"{format_size(base_peak)}"
                )
        if row.ok is False:
            largest = row.largest_error()
            off = f"{largest[0]} peak {largest[1]:+.1%} off its estimate" if largest else None
            problems.append(f"{where}: {off or row.error}")
    return problems


def training_verdict(data: TrainingData) -> str:
    """Each point's forward and backward peaks per variant (and with several variants the
    largest loss difference from the baseline's), then the estimates' largest error."""
    parts = []
    for point in dict.fromkeys(row.point for row in data.rows):
        records = [row.record for row in data.rows if row.point == point]
        text = f"at {point.frames} frames: " + ", ".join(
            f"{record.variant} {format_size(phase_peak_bytes(record, 'forward'))} forward, "
            f"{format_size(phase_peak_bytes(record, 'backward'))} backward"
            for record in records
        )
        if len(records) > 1:
            diff = max(record.max_rel_diff for record in records[1:])
            text += f"; loss rel diff {format_diff(diff)}"
        parts.append(text)
    errors = [(row, *largest) for row in data.rows if (largest := row.largest_error())]
    if errors:
        row, phase, error = max(errors, key=lambda item: abs(item[2]))
        parts.append(
            f"{len(errors) * len(PHASES)} phase peaks within {ESTIMATE_TOLERANCE:.0%} of the "
            f"estimates: largest error {error:+.1%} ({row.record.variant} {row.point.frames} "
            f"frames {phase})"
        )
    waiting = sum(row.error == SKIPPED_TIME for row in data.rows)
    if waiting:
        parts.append(f"{waiting} estimates not ready in time")
    return "; ".join(parts)


def run_training(context: Context, result: StepResult) -> None:
    """Step i: a training step of each variant of the training points (the whole model on a
    GPU), after its warm-up step, while time is left; pass when every variant ran, its loss
    agrees with the baseline's, no forward or backward peak is above the baseline's, and every
    phase's peak is within ESTIMATE_TOLERANCE of its estimate."""
    data = result.data = TrainingData()
    cache = ModelCache(context.device, context.plan.seed)
    for point in context.plan.training:
        if not context.fits(point):
            data.skipped.append(point.label)
            continue
        records = measure_point(context, cache, point)
        data.rows += [compare_training(context, point, record) for record in records]
        free_memory(context.device)
    if not data.rows:
        judge_unmeasured(result, bool(context.plan.training), data.skipped)
        return
    problems = training_problems(data)
    if problems:
        result.judge(False, "; ".join(problems[:3]))
        return
    waiting = any(row.error == SKIPPED_TIME for row in data.rows)
    result.judge(True, training_verdict(data), complete=not data.skipped and not waiting)


def run_square(context: Context, result: StepResult) -> None:
    """Step j: full against optimized at 518x518 (and the precision with bf16 weights) while
    time is left, each point also judged against its estimate."""
    data = result.data = Measured()
    measure_points(context, context.plan.square, data)
    if not data.pairs:
        judge_unmeasured(result, bool(context.plan.square), data.skipped)
        return
    judge_pairs(result, data, context.plan)
    if result.status != PASS:
        return
    data.rows = estimate_rows(context, data.pairs)
    verdict = result.verdict
    judge_rows(result, data.rows, complete=not data.skipped, require_judged=False)
    result.verdict = f"{verdict}; estimates: {result.verdict}"


def run_report(context: Context, result: StepResult) -> None:
    """Step k: the plots, from whatever the steps recorded."""
    write_plots(context.out_dir, context.plan, list(context.steps.values()))
    result.judge(True, "plots written")


Step = Callable[[Context, StepResult], None]
STEPS: dict[str, tuple[str, Step]] = {
    "preflight": ("a", run_preflight),
    "cuda-context": ("b", run_cuda_context),
    "gpu-tests": ("c", run_gpu_tests),
    "aggregator": ("d", run_aggregator),
    "estimates": ("e", run_estimate_check),
    "memory-cap": ("f", run_memory_cap),
    "chunking": ("g", run_chunking),
    "offload": ("h", run_offload),
    "training": ("i", run_training),
    "square": ("j", run_square),
    "report": ("k", run_report),
}


def plan_lines(plan: Plan, device_type: str, budget_s: float) -> list[str]:
    """Each step with its predicted seconds and what it runs, then the total and whether it
    exceeds `budget_s`."""
    described = {
        "preflight": "versions, imports, SDPA backends",
        "cuda-context": "NVML used minus reserved: the CUDA context, a one-rank NCCL group",
        "gpu-tests": " ".join(pytest_command(plan, torch.device(device_type))[1:]),
        "estimates": "the estimator against each aggregator point (computed meanwhile)",
        "report": "plots",
    }
    lines = []
    for name, seconds in plan.step_seconds().items():
        points = plan.points(name)
        what = described.get(name) or "; ".join(point.label for point in points) or "nothing"
        lines.append(f"  {STEPS[name][0]}. {name} ({seconds:.0f} s): {what}")
    total = plan.total_seconds()
    lines.append(f"  total: {total:.0f} s at {plan.rates.tflops:g} TFLOP/s")
    if total > budget_s:
        lines.append(
            f"  the total exceeds the budget of {budget_s:.0f} s: the steps and points that "
            "cannot finish in the time left will be skipped (exit status 3)"
        )
    return lines


def run_step(context: Context, result: StepResult, step: Step, predicted_s: float) -> None:
    """Run one step unless its predicted seconds exceed the time left; an exception becomes
    its error."""
    if not context.deadline.allows(predicted_s):
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
    """`d. aggregator: pass (95.2 s): the verdict`."""
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
    (out_dir / SNAPSHOTS).mkdir(exist_ok=True)
    register_evidence_variants(plan)
    rank = RankInfo.of(0, 1, 0, device)
    environment = collect_environment([rank], {"command": COMMAND, "seed": plan.seed})
    run = Run(datetime.now(UTC).isoformat(), plan, environment, deadline)
    steps = {name: StepResult(name, letter) for name, (letter, _) in STEPS.items()}
    results = list(steps.values())
    predicted = plan.step_seconds()
    estimates = EstimatePool(estimate_jobs(plan), out_dir / NATIVE_LOG, device.type)
    context = Context(
        plan,
        device,
        rank,
        out_dir,
        out_dir / SNAPSHOTS,
        out_dir / NATIVE_LOG,
        deadline,
        estimates,
        steps,
    )
    try:
        write_results(out_dir, run, results)
        for name, (_, step) in STEPS.items():
            run_step(context, steps[name], step, predicted[name])
            write_results(out_dir, run, results)
            write_summary(out_dir, run, results)
            print(report_line(steps[name]), flush=True)
    finally:
        estimates.close()
    return results
