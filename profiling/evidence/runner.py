"""Runs the steps of the GPU evidence in order within the time budget: each in a try/except
(an error is recorded in one line and the next step runs), memory freed between them, and
results.json and summary.md rewritten after each; plots at the end (a failure to draw them is
printed, the rest is kept)."""

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from profiling.evidence.aggregator import run_aggregator
from profiling.evidence.chunking import run_chunking
from profiling.evidence.context import Context
from profiling.evidence.estimate_check import run_estimate_check
from profiling.evidence.estimates import EstimatePool, estimate_jobs
from profiling.evidence.gpu_tests import run_gpu_tests
from profiling.evidence.memory_budget import run_memory_budget
from profiling.evidence.offload import run_offload
from profiling.evidence.plan import Plan
from profiling.evidence.plots import write_plots
from profiling.evidence.results import (
    ERROR,
    SKIPPED_TIME,
    Deadline,
    StepResult,
    write_results,
)
from profiling.evidence.summary import write_summary
from profiling.evidence.variants import register_evidence_variants
from profiling.sweep.environment import RankInfo, collect_environment
from profiling.sweep.measure import free_memory
from profiling.sweep.records import one_line

NATIVE_LOG = "native-stderr.log"
COMMAND = "python -m profiling.gpu_check"
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
    header: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "plan": plan.describe(),
        "environment": collect_environment([rank], {"command": COMMAND, "seed": plan.seed}),
    }
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
            write_results(out_dir, header, results, deadline)
            for name, (_, step) in STEPS.items():
                run_step(context, steps[name], step)
                write_results(out_dir, header, results, deadline)
                write_summary(out_dir, header, results, deadline)
                print(report_line(steps[name]), flush=True)
    finally:
        estimates.close()
    try:
        write_plots(out_dir, plan, results)
    except Exception as error:
        print(f"plots not written: {one_line(error)}", flush=True)
    return results
