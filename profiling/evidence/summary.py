"""summary.md of the GPU evidence: a verdict per check, then each check's table."""

from pathlib import Path
from typing import Any

from profiling.evidence.measuring import allocated_bytes, records_of
from profiling.evidence.results import PASS, Deadline, StepResult
from profiling.report.results import write_atomically
from profiling.report.summary import (
    environment_table,
    format_diff,
    format_ms,
    format_ratio,
    format_size,
)
from profiling.sweep.records import CaseRecord

SUMMARY_FILE = "summary.md"
RECORD_HEADER = (
    "| frames | variant | status | allocated | reserved | NVML used | ms | max abs diff |"
)


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
        format_size(record.cuda_max_reserved_bytes),
        format_size(record.nvml_peak_used_bytes),
        format_ms(record.median_ms),
        format_diff(record.max_abs_diff),
    ]


def aggregator_section(step: StepResult, reference: dict[int, int]) -> list[str]:
    """Per precision: frames as rows, full and optimized side by side, the VGGT README."""
    records = records_of(step.data.get("records", []))
    lines = []
    for precision in sorted({record.precision for record in records}):
        cells = {(r.frames, r.variant): r for r in records if r.precision == precision}
        rows = []
        for frames in sorted({frames for frames, _ in cells}):
            full, optimized = cells[(frames, "full")], cells[(frames, "optimized")]
            row = [str(frames)]
            for record in (full, optimized):
                row += [
                    format_size(allocated_bytes(record))
                    if record.status == "ok"
                    else record.status,
                    format_size(record.cuda_max_reserved_bytes),
                    format_size(record.nvml_peak_used_bytes),
                    format_ms(record.median_ms),
                ]
            ratio = format_ratio(allocated_bytes(optimized), allocated_bytes(full))
            row += [ratio, format_diff(optimized.max_abs_diff), format_diff(optimized.max_rel_diff)]
            row.append(f"{reference[frames] / 1e9:.2f} GB" if frames in reference else "-")
            rows.append(row)
        header = (
            "| frames | full allocated | full reserved | full NVML | full ms | optimized "
            "allocated | optimized reserved | optimized NVML | optimized ms | optimized/full "
            "allocated | max abs diff | max rel diff | VGGT README |"
        )
        lines += ["", f"{precision}:", "", *table(header, rows)]
    skipped = step.data.get("skipped", [])
    if skipped:
        lines += ["", "Skipped (time): " + ", ".join(f"{s}" for s in skipped)]
    return lines


def estimates_section(step: StepResult) -> list[str]:
    """Each measured point against its estimate."""
    rows = []
    for row in step.data.get("rows", []):
        error = row.get("relative_error")
        rows.append(
            [
                row["precision"],
                row["variant"],
                str(row["frames"]),
                format_size(row["measured_allocated_bytes"]),
                format_size(row.get("estimate_allocated_bytes")),
                "-" if error is None else f"{error:+.1%}",
                format_size(row["measured_reserved_bytes"]),
                format_size(row.get("estimate_reserved_bound_bytes")),
                row.get("error") or {True: "yes", False: "no", None: "-"}[row["ok"]],
            ]
        )
    header = (
        "| precision | variant | frames | measured allocated | estimated allocated | error | "
        "measured reserved | estimated reserved bound | within |"
    )
    return ["", *table(header, rows)]


def records_section(step: StepResult) -> list[str]:
    """The records of a step, one row per variant and frame count."""
    lines = []
    data = step.data
    if "cap_bytes" in data:
        context = data["cuda_context_bytes"]
        gpu = f"a GPU of about {format_size(data['device_memory_bytes'])} with the estimated "
        gpu += f"CUDA context of {format_size(context)}" if context else "no context estimate"
        lines += [
            "",
            f"Estimated needs: full {format_size(data['full_estimate_bytes'])}, optimized "
            f"{format_size(data['optimized_estimate_bytes'])}; allocator cap "
            f"{format_size(data['cap_bytes'])} ({gpu}).",
        ]
    records = records_of(data.get("records", []))
    if records:
        lines += ["", *table(RECORD_HEADER, [record_row(record) for record in records])]
    return lines


def step_section(step: StepResult, reference: dict[int, int]) -> list[str]:
    """A check's heading, status and verdict (or error), and its table."""
    lines = ["", f"## {step.letter}. {step.name}", "", f"**{step.status}**"]
    if step.verdict:
        lines[-1] += f": {step.verdict}"
    if step.error:
        lines[-1] += f": {step.error}"
    if step.name == "gpu-tests" and "command" in step.data:
        lines += ["", f"`{step.data['command']}`; output in `{step.data.get('output')}`."]
    elif step.name == "aggregator":
        lines += aggregator_section(step, reference)
    elif step.name == "estimates":
        lines += estimates_section(step)
    else:
        lines += records_section(step)
    return lines


def summary_markdown(header: dict[str, Any], steps: list[StepResult], deadline: Deadline) -> str:
    """The whole summary."""
    plan = header["plan"]
    passed = sum(step.status == PASS for step in steps)
    lines = [
        "# GPU evidence",
        "",
        f"{passed} of {len(steps)} checks passed, in {deadline.elapsed():.0f} s of a "
        f"{deadline.budget_s:.0f} s budget. Model: {plan['model']}; images {plan['side']}x"
        f"{plan['side']}, batch 1. Allocated: the allocator's peak with weights and input "
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
    reference = {int(frames): value for frames, value in plan["reference_bytes"].items()}
    for step in steps:
        lines += step_section(step, reference)
    lines += ["", "## Environment", "", *environment_table(header["environment"])]
    return "\n".join(lines) + "\n"


def write_summary(
    out_dir: Path, header: dict[str, Any], steps: list[StepResult], deadline: Deadline
) -> None:
    """Write DIR/summary.md."""
    write_atomically(out_dir / SUMMARY_FILE, summary_markdown(header, steps, deadline))
