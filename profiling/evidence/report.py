"""What the GPU evidence writes: results.json (the only place its results become JSON,
rewritten after every step so a killed run keeps what it finished), summary.md (a verdict per
check, then each check's table) and the plots."""

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from profiling.evidence.plan import Plan, Point
from profiling.evidence.rate import MeasuredRate, measured_rate
from profiling.evidence.results import (
    PASS,
    ContextData,
    EstimateRow,
    EstimatesData,
    GpuTestsData,
    Measured,
    MemoryCapData,
    Pair,
    PreflightData,
    Run,
    StepData,
    StepResult,
    TrainingData,
    TrainingRow,
    activation_bytes,
    allocated_bytes,
    data_of,
    nvml_used_bytes,
    phase_peak_bytes,
    reserved_bytes,
)
from profiling.report.plots import DPI, FIGSIZE, plot_against_frames
from profiling.report.results import write_atomically
from profiling.report.summary import (
    environment_table,
    format_diff,
    format_loss,
    format_ms,
    format_ratio,
    format_size,
)
from profiling.sweep.records import CaseRecord
from vggt.memory.units import byte_unit
from vggt.training.step import PHASES

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"
PEAK_PLOT = "peak-vs-frames.png"
TIME_PLOT = "time-vs-frames.png"
SWITCHES_PLOT = "offload-and-chunking.png"
RECORD_HEADER = (
    "| frames | variant | status | allocated | reserved | NVML used | ms | max abs diff |"
)
# The steps whose points compare full with optimized, drawn against frames.
FRAME_STEPS = ("aggregator", "square")


def point_json(point: Point) -> dict[str, Any]:
    """A point as plain values, its precision by label."""
    values = dataclasses.asdict(point)
    values["precision"] = point.precision.label
    return values


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as plain values: model, shape, rates, points and predicted seconds."""
    steps = ("aggregator", "memory-cap", "chunking", "offload", "training", "square")
    return {
        "model": plan.model,
        "architecture": dataclasses.asdict(plan.architecture),
        "rates": dataclasses.asdict(plan.rates),
        "points": {step: [point_json(point) for point in plan.points(step)] for step in steps},
        "pytest_paths": list(plan.pytest_paths),
        "test_timeout_s": plan.test_timeout_s,
        "offload_piece_bytes": plan.offload_piece_bytes,
        "reference_bytes": plan.reference_bytes,
        "seed": plan.seed,
        "predicted": plan.plan_json(),
    }


def known(**values: Any) -> dict[str, Any]:
    """The values a step has found so far (one that erred leaves the rest None)."""
    return {key: value for key, value in values.items() if value is not None}


def row_json(row: EstimateRow) -> dict[str, Any]:
    """A measured variant against its estimate; the estimate's figures only where one came."""
    record = row.record
    values: dict[str, Any] = {
        "precision": record.precision,
        "variant": record.variant,
        "frames": record.frames,
        "height": record.height,
        "width": record.width,
        "measured_allocated_bytes": allocated_bytes(record),
        "measured_activation_bytes": activation_bytes(record),
        "measured_reserved_bytes": reserved_bytes(record),
        "judged": row.judged,
        "ok": row.ok,
    }
    if row.error is not None:
        values["error"] = row.error
    if row.estimate is not None:
        values.update(
            estimate_allocated_bytes=row.estimate.allocated_bytes,
            estimate_activation_bytes=row.estimate.activation_bytes,
            estimate_reserved_bound_bytes=row.estimate.reserved_bound_bytes,
            estimate_reserved_peak_bytes=row.estimate.reserved_peak_bytes,
            estimate_allocations=row.estimate.allocations,
            relative_error=row.relative_error,
            reserved_error=row.reserved_error,
        )
    return values


def training_row_json(row: TrainingRow) -> dict[str, Any]:
    """A variant's training step: its point, the sweep's record (per-phase peaks and ms, loss,
    loss difference), and per phase the estimate and its relative error where one came."""
    values: dict[str, Any] = {
        "point": point_json(row.point),
        "record": row.record.to_json(),
        "ok": row.ok,
    }
    if row.error is not None:
        values["error"] = row.error
    if row.estimate is not None:
        values["estimate_phase_peak_bytes"] = row.estimate
        values["relative_errors"] = {phase: row.relative_error(phase) for phase in PHASES}
    return values


def pair_json(pair: Pair) -> dict[str, Any]:
    """A measured point: the point, both variants as the sweep's records, the SDPA backends."""
    return {
        "point": point_json(pair.point),
        "records": [pair.baseline.to_json(), pair.compared.to_json()],
        "sdpa": pair.sdpa,
    }


def data_json(data: StepData | None) -> dict[str, Any]:
    """A step's data as plain values."""
    match data:
        case None:
            return {}
        case GpuTestsData() | PreflightData() | ContextData():
            return known(**dataclasses.asdict(data))
        case EstimatesData():
            return {"rows": [row_json(row) for row in data.rows]}
        case MemoryCapData():
            runs = [{"cap_bytes": cap, "record": record.to_json()} for cap, record in data.runs]
            return known(need_bytes=data.need_bytes, runs=runs)
        case Measured():
            return {
                "pairs": [pair_json(pair) for pair in data.pairs],
                "skipped": data.skipped,
                "rows": [row_json(row) for row in data.rows],
            }
        case TrainingData():
            return {
                "rows": [training_row_json(row) for row in data.rows],
                "skipped": data.skipped,
            }
    return {}


def write_results(out_dir: Path, run: Run, steps: list[StepResult]) -> None:
    """results.json: when it started, the plan, the environment, the time spent, the device
    memory outside the allocator, the measured rate and every step."""
    context = next((step.data for step in steps if isinstance(step.data, ContextData)), None)
    rate = measured_rate(run.plan, steps, run.environment["torch"])
    document = {
        "started_at": run.started_at,
        "plan": plan_json(run.plan),
        "environment": run.environment,
        "budget_s": run.deadline.budget_s,
        "elapsed_s": round(run.deadline.elapsed(), 1),
        "cuda_context_bytes": None if context is None else context.cuda_context_bytes,
        "nccl_bytes": None if context is None else context.nccl_bytes,
        "measured_rate": None if rate is None else rate.to_json(),
        "steps": [
            {
                "name": step.name,
                "letter": step.letter,
                "status": step.status,
                "verdict": step.verdict,
                "error": step.error,
                "seconds": step.seconds,
                "data": data_json(step.data),
            }
            for step in steps
        ],
    }
    write_atomically(out_dir / RESULTS_FILE, json.dumps(document, indent=2) + "\n")


def table(header: str, rows: list[list[str]]) -> list[str]:
    """A markdown table of `rows` under `header`."""
    columns = header.count("|") - 1
    return [header, "|" + "---|" * columns] + ["| " + " | ".join(row) + " |" for row in rows]


def record_row(record: CaseRecord) -> list[str]:
    """One variant's figures; a failed one shows its status and reason."""
    if record.status != "ok":
        return [str(record.frames), record.variant, f"{record.status}: {record.error}"]
    return [
        str(record.frames),
        record.variant,
        "ok" + (f" ({record.error})" if record.error else ""),
        format_size(allocated_bytes(record)),
        format_size(reserved_bytes(record)),
        format_size(nvml_used_bytes(record)),
        format_ms(record.median_ms),
        format_diff(record.max_abs_diff),
    ]


def variant_cells(record: CaseRecord) -> list[str]:
    """Allocated (or the failure), reserved, NVML used and time of one variant."""
    allocated = format_size(allocated_bytes(record)) if record.status == "ok" else record.status
    return [
        allocated,
        format_size(reserved_bytes(record)),
        format_size(nvml_used_bytes(record)),
        format_ms(record.median_ms),
    ]


def pairs_section(data: Measured, plan: Plan) -> list[str]:
    """Per size and precision: frames as rows, both variants side by side, VGGT's README."""
    lines = []
    configurations = dict.fromkeys(
        (pair.point.height, pair.point.width, pair.precision.label) for pair in data.pairs
    )
    for height, width, label in configurations:
        rows = []
        pairs = [
            pair
            for pair in data.pairs
            if (pair.point.height, pair.point.width, pair.precision.label) == (height, width, label)
        ]
        for pair in sorted(pairs, key=lambda pair: pair.frames):
            full, optimized = pair.baseline, pair.compared
            readme = plan.reference_for(pair.point)
            sdpa = ", ".join(f"{name} {count}" for name, count in sorted(pair.sdpa.items()))
            rows.append(
                [
                    str(pair.frames),
                    *variant_cells(full),
                    *variant_cells(optimized),
                    format_ratio(allocated_bytes(optimized), allocated_bytes(full)),
                    format_diff(optimized.max_rel_diff),
                    "-" if readme is None else f"{readme / 1e9:.2f} GB",
                    sdpa or "-",
                ]
            )
        first, second = pairs[0].baseline.variant, pairs[0].compared.variant
        header = (
            f"| frames | {first} allocated | {first} reserved | {first} NVML | {first} ms | "
            f"{second} allocated | {second} reserved | {second} NVML | {second} ms | "
            f"{second}/{first} allocated | max rel diff | VGGT README | SDPA calls |"
        )
        lines += ["", f"{height}x{width}, {label}:", "", *table(header, rows)]
    if data.skipped:
        lines += ["", f"Skipped (time): {'; '.join(data.skipped)}"]
    return lines


def estimates_section(rows: list[EstimateRow]) -> list[str]:
    """Each measured variant against its estimate."""
    cells = []
    for row in rows:
        record, estimate = row.record, row.estimate
        error, reserved_error = row.relative_error, row.reserved_error
        cells.append(
            [
                f"{record.height}x{record.width}",
                record.precision,
                record.variant,
                str(record.frames),
                format_size(activation_bytes(record)),
                format_size(None if estimate is None else estimate.activation_bytes),
                "-" if error is None else f"{error:+.1%}",
                format_size(reserved_bytes(record)),
                format_size(None if estimate is None else estimate.reserved_peak_bytes),
                "-" if reserved_error is None else f"{reserved_error:+.1%}",
                row.error or {True: "yes", False: "no", None: "not judged"}[row.ok],
            ]
        )
    header = (
        "| size | precision | variant | frames | measured activations | estimated activations "
        "| error | measured reserved | estimated reserve (never released) | error | within |"
    )
    return ["", *table(header, cells)]


def phase_cell(row: TrainingRow, phase: str) -> str:
    """`20.71 / 20.90 GiB (+0.9%)`: a phase's peak measured, estimated and the error."""
    measured = format_size(phase_peak_bytes(row.record, phase))
    if row.estimate is None:
        return f"{measured} / -"
    return f"{measured} / {format_size(row.estimate[phase])} ({row.relative_error(phase):+.1%})"


def training_section(data: TrainingData) -> list[str]:
    """Per point, a row per variant: each phase's peak measured against estimated, the loss and
    its difference from the baseline's, the step's median ms, whether the estimates agree."""
    lines = []
    for point in dict.fromkeys(row.point for row in data.rows):
        cells = []
        for row in (row for row in data.rows if row.point == point):
            record = row.record
            if record.status != "ok":
                cells.append([record.variant, f"{record.status}: {record.error}"])
                continue
            cells.append(
                [
                    record.variant,
                    "ok" + (f" ({record.error})" if record.error else ""),
                    *(phase_cell(row, phase) for phase in PHASES),
                    format_loss(record.loss),
                    format_diff(record.max_rel_diff),
                    format_ms(record.median_ms),
                    row.error or {True: "yes", False: "no", None: "-"}[row.ok],
                ]
            )
        header = (
            "| variant | status | forward peak (measured / estimated) | backward peak | "
            "optimizer peak | loss | loss rel diff | step ms | within |"
        )
        lines += ["", f"{point.label} (warm-up steps: {point.warmup}):", "", *table(header, cells)]
    if data.skipped:
        lines += ["", f"Skipped (time): {'; '.join(data.skipped)}"]
    return lines


def memory_cap_section(data: MemoryCapData) -> list[str]:
    """The need, then each capped run."""
    if data.need_bytes is None:
        return []
    rows = [[format_size(cap), *record_row(record)] for cap, record in data.runs]
    header = "| cap " + RECORD_HEADER
    return [
        "",
        f"Estimated need under a cap: {format_size(data.need_bytes)}.",
        "",
        *table(header, rows),
    ]


def step_section(step: StepResult, plan: Plan) -> list[str]:
    """A check's heading, status and verdict (or error), and its table."""
    lines = ["", f"## {step.letter}. {step.name}", "", f"**{step.status}**"]
    if step.verdict:
        lines[-1] += f": {step.verdict}"
    if step.error:
        lines[-1] += f": {step.error}"
    data = step.data
    if isinstance(data, GpuTestsData):
        lines += ["", f"`{data.command}`; output in `{data.output}`."]
    elif isinstance(data, EstimatesData):
        lines += estimates_section(data.rows)
    elif isinstance(data, MemoryCapData):
        lines += memory_cap_section(data)
    elif isinstance(data, TrainingData):
        lines += training_section(data)
    elif isinstance(data, PreflightData) and data.sdpa_enabled:
        enabled = ", ".join(name for name, on in data.sdpa_enabled.items() if on)
        lines += ["", f"SDPA backends enabled: {enabled}."]
    elif isinstance(data, Measured) and step.name in FRAME_STEPS:
        lines += pairs_section(data, plan)
        if data.rows:
            lines += estimates_section(data.rows)
    elif isinstance(data, Measured) and data.records:
        lines += ["", *table(RECORD_HEADER, [record_row(record) for record in data.records])]
    return lines


def rate_lines(rate: MeasuredRate | None, plan: Plan) -> list[str]:
    """The measured rate, its points, and how it becomes the library's."""
    if rate is None:
        return [
            "",
            f"Measured rate: none (no optimized aggregator timed in 16 bits at "
            f"{plan.rate_min_tokens:,} tokens or more).",
        ]
    points = "; ".join(f"{point.label}: {point.tflops:.3g}" for point in rate.points)
    return [
        "",
        f"Measured rate: {rate.tflops:.3g} TFLOP/s on {rate.device_name} (torch {rate.torch}): "
        f"the optimized aggregator's FLOPs over its timed forwards' median seconds, at points "
        f"of {rate.min_tokens:,} tokens or more ({points}). Measured on a GPU, "
        "`python -m profiling.gpu_check --adopt DIR` makes it the forward-time predictions' "
        "rate for its type.",
    ]


def summary_markdown(run: Run, steps: list[StepResult]) -> str:
    """The whole summary."""
    plan, deadline = run.plan, run.deadline
    passed = sum(step.status == PASS for step in steps)
    lines = [
        "# GPU evidence",
        "",
        f"{passed} of {len(steps)} checks passed, in {deadline.elapsed():.0f} s of a "
        f"{deadline.budget_s:.0f} s budget (predicted {plan.total_seconds():.0f} s). Model: "
        f"{plan.model}; batch 1. Allocated: the allocator's peak with weights and input (on a "
        "CPU, the profiler's peak plus weights and input); activations: the peak above what "
        "was allocated before the forward; reserved: the allocator's peak reserve; NVML used: "
        "the device's peak as NVML sampled it (CUDA context included). Differences are "
        "against `full` (offload: against the model on the device; chunking: against "
        "`unchunked`), relative ones to its largest magnitude.",
        "",
        *table(
            "| check | status | seconds | verdict |",
            [
                [
                    f"{step.letter}. {step.name}",
                    step.status,
                    "-" if step.seconds is None else f"{step.seconds:.1f}",
                    (step.error or step.verdict).replace("|", "/"),
                ]
                for step in steps
            ],
        ),
    ]
    lines += rate_lines(measured_rate(plan, steps, run.environment["torch"]), plan)
    for step in steps:
        lines += step_section(step, plan)
    lines += ["", "## Environment", "", *environment_table(run.environment)]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, run: Run, steps: list[StepResult]) -> None:
    """Write DIR/summary.md."""
    write_atomically(out_dir / SUMMARY_FILE, summary_markdown(run, steps))


def write_plots(out_dir: Path, plan: Plan, steps: list[StepResult]) -> None:
    """Peak allocated and time against frames (measured, estimated, VGGT's README), and the
    offload and chunking comparisons as bars, from whatever the steps recorded."""
    by_name = {step.name: step for step in steps}
    peaks: dict[str, dict[int, float]] = defaultdict(dict)
    times: dict[str, dict[int, float]] = defaultdict(dict)
    failures: dict[str, dict[int, str]] = defaultdict(dict)
    for name in FRAME_STEPS:
        for record in data_of(by_name[name], Measured).records:
            label = f"{record.variant} {record.precision} {record.height}x{record.width}"
            if record.status != "ok":
                failures[label][record.frames] = record.status
                continue
            peaks[label][record.frames] = allocated_bytes(record)
            times[label][record.frames] = record.median_ms
    for row in data_of(by_name["estimates"], EstimatesData).rows:
        if row.estimate is not None:
            record = row.record
            label = f"estimate {record.variant} {record.precision} {record.height}x{record.width}"
            peaks[label][record.frames] = row.estimate.allocated_bytes
    if plan.reference_bytes:
        peaks["VGGT README (H100, 350x518)"] = dict(plan.reference_bytes)
    title = plan.model
    plot_against_frames(
        peaks, failures, out_dir / PEAK_PLOT, f"Peak allocated: {title}", "peak allocated", True
    )
    plot_against_frames(
        times, failures, out_dir / TIME_PLOT, f"Forward time: {title}", "time (ms)", False
    )
    plot_switches(by_name["offload"], by_name["chunking"], out_dir / SWITCHES_PLOT)


def plot_switches(offload: StepResult, chunking: StepResult, path: Path) -> None:
    """Peak allocated and time of each variant, as bars: a row per step, each on its scale."""
    figure = Figure(figsize=(FIGSIZE[0] * 1.5, FIGSIZE[1] * 1.6), dpi=DPI, layout="constrained")
    for row, step in zip(figure.subplots(2, 2), (offload, chunking), strict=True):
        ran = [record for record in data_of(step, Measured).records if record.status == "ok"]
        labels = [f"{record.variant}\n{record.frames} frames" for record in ran]
        peaks = [allocated_bytes(record) for record in ran]
        unit, divisor = byte_unit(max(peaks, default=1), "MiB")
        positions = list(range(len(ran)))
        peak_axes, time_axes = row
        peak_axes.bar(positions, [peak / divisor for peak in peaks])
        peak_axes.set_ylabel(f"peak allocated ({unit})")
        time_axes.bar(positions, [record.median_ms or 0.0 for record in ran])
        time_axes.set_ylabel("time (ms)")
        for axes, name in ((peak_axes, "peak allocated"), (time_axes, "forward time")):
            axes.set_xticks(positions, labels, fontsize=8)
            axes.set_title(f"{step.letter}. {step.name}: {name}")
            axes.grid(True, axis="y", alpha=0.3)
    figure.savefig(path)
