"""The GPU evidence's plots: peak memory and time against frames (measured, estimated, VGGT's
README), and the offload and chunking comparisons as bars."""

from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from profiling.evidence.measuring import allocated_bytes, records_of
from profiling.evidence.plan import Plan
from profiling.evidence.results import StepResult
from profiling.report.plots import DPI, FIGSIZE, plot_against_frames
from vggt.memory.units import byte_unit

PEAK_PLOT = "peak-vs-frames.png"
TIME_PLOT = "time-vs-frames.png"
SWITCHES_PLOT = "offload-and-chunking.png"


def write_plots(out_dir: Path, plan: Plan, steps: list[StepResult]) -> None:
    """The three PNGs, from whatever the steps recorded."""
    by_name = {step.name: step for step in steps}
    peaks: dict[str, dict[int, float]] = defaultdict(dict)
    times: dict[str, dict[int, float]] = defaultdict(dict)
    failures: dict[str, dict[int, str]] = defaultdict(dict)
    for record in records_of(by_name["aggregator"].data.get("records", [])):
        label = f"{record.variant} {record.precision}"
        if record.status != "ok":
            failures[label][record.frames] = record.status
            continue
        peaks[label][record.frames] = allocated_bytes(record)
        times[label][record.frames] = record.median_ms
    for row in by_name["estimates"].data.get("rows", []):
        if row.get("estimate_allocated_bytes") is not None:
            label = f"estimate {row['variant']} {row['precision']}"
            peaks[label][row["frames"]] = row["estimate_allocated_bytes"]
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
        ran = [r for r in records_of(step.data.get("records", [])) if r.status == "ok"]
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
