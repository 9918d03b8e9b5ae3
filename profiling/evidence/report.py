"""What the GPU evidence writes: results.json (the only place its results become JSON,
rewritten after every step so a killed run keeps what it finished), summary.md (a verdict per
check, then each check's table) and the plots."""

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from profiling.evidence.plan import Plan
from profiling.evidence.results import (
    PASS,
    AggregatorData,
    ChunkingData,
    EstimateRow,
    EstimatesData,
    GpuTestsData,
    Measured,
    MemoryBudgetData,
    Run,
    Skipped,
    StepData,
    StepResult,
    allocated_bytes,
    data_of,
    nvml_used_bytes,
    reserved_bytes,
)
from profiling.report.plots import DPI, FIGSIZE, plot_against_frames
from profiling.report.results import write_atomically
from profiling.report.summary import (
    environment_table,
    format_diff,
    format_ms,
    format_ratio,
    format_size,
)
from profiling.sweep.records import CaseRecord
from vggt.memory.units import byte_unit

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"
PEAK_PLOT = "peak-vs-frames.png"
TIME_PLOT = "time-vs-frames.png"
SWITCHES_PLOT = "offload-and-chunking.png"
RECORD_HEADER = (
    "| frames | variant | status | allocated | reserved | NVML used | ms | max abs diff |"
)


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as plain values, precisions by label."""
    values = dataclasses.asdict(plan)
    values["precisions"] = [precision.label for precision in plan.precisions]
    values["budget_precision"] = plan.budget_precision.label
    return values


def known(**values: Any) -> dict[str, Any]:
    """The values a step has found so far (one that erred leaves the rest None)."""
    return {key: value for key, value in values.items() if value is not None}


def skipped_json(point: Skipped) -> dict[str, Any]:
    """A point the time left out."""
    return {"precision": point.precision.label, "frames": point.frames}


def row_json(row: EstimateRow) -> dict[str, Any]:
    """A measured point against its estimate; the estimate's figures only where one came."""
    record = row.record
    values: dict[str, Any] = {
        "precision": record.precision,
        "variant": record.variant,
        "frames": record.frames,
        "measured_allocated_bytes": allocated_bytes(record),
        "measured_reserved_bytes": reserved_bytes(record),
        "ok": row.ok,
    }
    if row.error is not None:
        values["error"] = row.error
    if row.estimate is not None:
        values["estimate_allocated_bytes"] = row.estimate.allocated_bytes
        values["estimate_reserved_bound_bytes"] = row.estimate.reserved_bound_bytes
        values["relative_error"] = row.relative_error
    return values


def data_json(data: StepData | None) -> dict[str, Any]:
    """A step's data: measured variants as the sweep's records, estimates as rows."""
    match data:
        case None:
            return {}
        case GpuTestsData():
            return known(
                command=data.command,
                exit_code=data.exit_code,
                summary=data.summary,
                output=data.output,
            )
        case EstimatesData():
            return {"rows": [row_json(row) for row in data.rows]}
        case AggregatorData():
            skipped = [skipped_json(point) for point in data.skipped]
            return {"records": records_json(data), "skipped": skipped}
        case ChunkingData():
            skipped = [{"frames": frames} for frames in data.skipped_frames]
            return {"records": records_json(data), "skipped": skipped}
        case MemoryBudgetData():
            estimates = known(
                full_estimate_bytes=data.full_estimate_bytes,
                optimized_estimate_bytes=data.optimized_estimate_bytes,
                cuda_context_bytes=data.cuda_context_bytes,
                cap_bytes=data.cap_bytes,
                device_memory_bytes=data.device_memory_bytes,
            )
            return {**estimates, "records": records_json(data)}
        case Measured():
            return {"records": records_json(data)}


def records_json(data: Measured) -> list[dict[str, Any]]:
    """The measured variants as the sweep's results.json holds them."""
    return [record.to_json() for record in data.records]


def write_results(out_dir: Path, run: Run, steps: list[StepResult]) -> None:
    """results.json: when it started, the plan, the environment, the time spent and every
    step."""
    document = {
        "started_at": run.started_at,
        "plan": plan_json(run.plan),
        "environment": run.environment,
        "budget_s": run.deadline.budget_s,
        "elapsed_s": round(run.deadline.elapsed(), 1),
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


def aggregator_section(data: AggregatorData, reference: dict[int, int]) -> list[str]:
    """Per precision: frames as rows, full and optimized side by side, the VGGT README."""
    lines = []
    for label in sorted({pair.precision.label for pair in data.pairs}):
        rows = []
        pairs = [pair for pair in data.pairs if pair.precision.label == label]
        for pair in sorted(pairs, key=lambda pair: pair.frames):
            full, optimized = pair.baseline, pair.compared
            row = [str(pair.frames)]
            for record in (full, optimized):
                row += [
                    format_size(allocated_bytes(record))
                    if record.status == "ok"
                    else record.status,
                    format_size(reserved_bytes(record)),
                    format_size(nvml_used_bytes(record)),
                    format_ms(record.median_ms),
                ]
            readme = reference.get(pair.frames)
            row += [
                format_ratio(allocated_bytes(optimized), allocated_bytes(full)),
                format_diff(optimized.max_abs_diff),
                format_diff(optimized.max_rel_diff),
                "-" if readme is None else f"{readme / 1e9:.2f} GB",
            ]
            rows.append(row)
        header = (
            "| frames | full allocated | full reserved | full NVML | full ms | optimized "
            "allocated | optimized reserved | optimized NVML | optimized ms | optimized/full "
            "allocated | max abs diff | max rel diff | VGGT README |"
        )
        lines += ["", f"{label}:", "", *table(header, rows)]
    if data.skipped:
        skipped = ", ".join(str(skipped_json(point)) for point in data.skipped)
        lines += ["", f"Skipped (time): {skipped}"]
    return lines


def estimates_section(rows: list[EstimateRow]) -> list[str]:
    """Each measured point against its estimate."""
    cells = []
    for row in rows:
        error = row.relative_error
        estimate = row.estimate
        cells.append(
            [
                row.record.precision,
                row.record.variant,
                str(row.record.frames),
                format_size(allocated_bytes(row.record)),
                format_size(None if estimate is None else estimate.allocated_bytes),
                "-" if error is None else f"{error:+.1%}",
                format_size(reserved_bytes(row.record)),
                format_size(None if estimate is None else estimate.reserved_bound_bytes),
                row.error or {True: "yes", False: "no", None: "-"}[row.ok],
            ]
        )
    header = (
        "| precision | variant | frames | measured allocated | estimated allocated | error | "
        "measured reserved | estimated reserved bound | within |"
    )
    return ["", *table(header, cells)]


def records_section(data: Measured) -> list[str]:
    """The measured variants, one row per variant and frame count; the memory cap first."""
    lines = []
    if isinstance(data, MemoryBudgetData) and data.cap_bytes is not None:
        context = data.cuda_context_bytes
        gpu = f"a GPU of about {format_size(data.device_memory_bytes)} with the estimated "
        gpu += f"CUDA context of {format_size(context)}" if context else "no context estimate"
        lines += [
            "",
            f"Estimated needs: full {format_size(data.full_estimate_bytes)}, optimized "
            f"{format_size(data.optimized_estimate_bytes)}; allocator cap "
            f"{format_size(data.cap_bytes)} ({gpu}).",
        ]
    if data.records:
        lines += ["", *table(RECORD_HEADER, [record_row(record) for record in data.records])]
    return lines


def step_section(step: StepResult, reference: dict[int, int]) -> list[str]:
    """A check's heading, status and verdict (or error), and its table."""
    lines = ["", f"## {step.letter}. {step.name}", "", f"**{step.status}**"]
    if step.verdict:
        lines[-1] += f": {step.verdict}"
    if step.error:
        lines[-1] += f": {step.error}"
    if isinstance(step.data, GpuTestsData):
        lines += ["", f"`{step.data.command}`; output in `{step.data.output}`."]
    elif step.name == "aggregator":
        lines += aggregator_section(data_of(step, AggregatorData), reference)
    elif step.name == "estimates":
        lines += estimates_section(data_of(step, EstimatesData).rows)
    else:
        lines += records_section(data_of(step, Measured))
    return lines


def summary_markdown(run: Run, steps: list[StepResult]) -> str:
    """The whole summary."""
    plan, deadline = run.plan, run.deadline
    passed = sum(step.status == PASS for step in steps)
    lines = [
        "# GPU evidence",
        "",
        f"{passed} of {len(steps)} checks passed, in {deadline.elapsed():.0f} s of a "
        f"{deadline.budget_s:.0f} s budget. Model: {plan.model}; images {plan.side}x"
        f"{plan.side}, batch 1. Allocated: the allocator's peak with weights and input "
        "(on a CPU, the profiler's peak plus weights and input); reserved: the allocator's "
        "peak reserve; NVML used: the device's peak as NVML sampled it (CUDA context and other "
        "processes included). Differences are against `full` (offload: against the model on "
        "the device; chunking: against `unchunked`), relative ones to its largest magnitude.",
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
    for step in steps:
        lines += step_section(step, plan.reference_bytes)
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
    for record in data_of(by_name["aggregator"], AggregatorData).records:
        label = f"{record.variant} {record.precision}"
        if record.status != "ok":
            failures[label][record.frames] = record.status
            continue
        peaks[label][record.frames] = allocated_bytes(record)
        times[label][record.frames] = record.median_ms
    for row in data_of(by_name["estimates"], EstimatesData).rows:
        if row.estimate is not None:
            label = f"estimate {row.record.variant} {row.record.precision}"
            peaks[label][row.record.frames] = row.estimate.allocated_bytes
    if plan.reference_bytes:
        peaks["VGGT README (H100)"] = dict(plan.reference_bytes)
    title = f"{plan.model}, {plan.side}x{plan.side}"
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
