"""Step c: each point the aggregator step measured against the estimator's figures for it: the
bytes allocated at the peak within ESTIMATE_TOLERANCE, and the reserved bytes under the
estimator's bound where it gives one."""

import multiprocessing
from typing import Any

from profiling.evidence.context import Context
from profiling.evidence.estimates import EstimateJob
from profiling.evidence.measuring import allocated_bytes, records_of
from profiling.evidence.results import SKIPPED_TIME, StepResult
from profiling.sweep.records import CaseRecord, one_line

ESTIMATE_TOLERANCE = 0.10


def compare_point(record: CaseRecord, context: Context) -> dict[str, Any]:
    """One row: the measurement, the estimate, their relative error and whether it is within
    the tolerance (`ok` None when no estimate came)."""
    row: dict[str, Any] = {
        "precision": record.precision,
        "variant": record.variant,
        "frames": record.frames,
        "measured_allocated_bytes": allocated_bytes(record),
        "measured_reserved_bytes": record.cuda_max_reserved_bytes,
        "ok": None,
    }
    job = EstimateJob(
        record.variant,
        record.component,
        context.plan.architecture,
        next(p for p in context.plan.precisions if p.label == record.precision),
        record.frames,
        context.plan.side,
    )
    try:
        figures = context.estimates.result(job, context.deadline.left())
    except multiprocessing.TimeoutError:
        row["error"] = SKIPPED_TIME
        return row
    except Exception as error:
        row["error"] = f"the estimator failed: {one_line(error)}"
        row["ok"] = False
        return row
    measured = row["measured_allocated_bytes"]
    row.update(
        estimate_allocated_bytes=figures.allocated_bytes,
        estimate_reserved_bound_bytes=figures.reserved_bound_bytes,
        relative_error=(figures.allocated_bytes - measured) / measured,
    )
    bound = figures.reserved_bound_bytes
    reserved = row["measured_reserved_bytes"]
    within = abs(row["relative_error"]) <= ESTIMATE_TOLERANCE
    row["ok"] = within and (bound is None or reserved is None or reserved <= bound)
    return row


def run_estimate_check(context: Context, result: StepResult) -> None:
    """Compare every point that ran in the aggregator step; pass when all are within."""
    measured = records_of(context.steps["aggregator"].data.get("records", []))
    rows = [compare_point(record, context) for record in measured if record.status == "ok"]
    result.data["rows"] = rows
    judged = [row for row in rows if row["ok"] is not None]
    if not judged:
        result.judge(False, "no point had both a measurement and an estimate")
        return
    worst = max(judged, key=lambda row: abs(row.get("relative_error", float("inf"))))
    failed = [row for row in judged if not row["ok"]]
    where = f"{worst['variant']} {worst['precision']} {worst['frames']} frames"
    if "relative_error" in worst:
        text = f"{len(judged) - len(failed)} of {len(judged)} points within "
        text += f"{ESTIMATE_TOLERANCE:.0%}; largest error {worst['relative_error']:+.1%} ({where})"
    else:
        text = f"{len(failed)} of {len(judged)} points failed; {where}: {worst['error']}"
    result.judge(not failed, text, complete=len(judged) == len(rows))
