"""PNG charts: a metric against frames per variant, and memory timelines overlaid."""

from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from profiling.timelines import Timeline
from profiling.units import byte_unit

FIGSIZE = (8, 5)
DPI = 120


def plot_against_frames(
    series: Mapping[str, Mapping[int, float]],
    failures: Mapping[str, Mapping[int, str]],
    path: Path,
    title: str,
    ylabel: str,
    in_bytes: bool,
) -> None:
    """One line per variant of `series[variant][frames] = value`; failed frame counts are
    marked on the x axis with their status (oom, error)."""
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = figure.subplots()
    largest = max((v for points in series.values() for v in points.values()), default=1.0)
    unit, divisor = byte_unit(largest, "MiB") if in_bytes else ("", 1.0)
    for variant, points in series.items():
        frames = sorted(points)
        axes.plot(frames, [points[f] / divisor for f in frames], marker="o", label=variant)
    for variant, failed in failures.items():
        for frames, status in sorted(failed.items()):
            axes.plot([frames], [0], marker="x", color="red", markersize=10, clip_on=False)
            axes.annotate(
                f"{variant}: {status}",
                (frames, 0),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
                color="red",
                rotation=90,
            )
    axes.set_xscale("log", base=2)
    ticks = sorted(
        {f for points in series.values() for f in points} | set(_failed_frames(failures))
    )
    axes.set_xticks(ticks, [str(t) for t in ticks])
    axes.minorticks_off()
    axes.set_xlabel("frames")
    axes.set_ylabel(f"{ylabel} ({unit})" if unit else ylabel)
    axes.set_title(title)
    axes.set_ylim(bottom=0)
    axes.grid(True, which="both", alpha=0.3)
    if series:
        axes.legend()
    figure.savefig(path)


def plot_timelines(series: Mapping[str, Timeline], path: Path, title: str) -> None:
    """Bytes over time, one line per label (a variant, or a variant and a source)."""
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = figure.subplots()
    largest = max((t.peak_bytes for t in series.values()), default=1)
    unit, divisor = byte_unit(largest, "MiB")
    for label, timeline in series.items():
        values = [b / divisor for b in timeline.bytes]
        peak = max(values, default=0.0)
        axes.step(timeline.times_s, values, where="post", label=f"{label} (peak {peak:.2f} {unit})")
    axes_kinds = {t.time_axis for t in series.values()}
    in_seconds = axes_kinds <= {"seconds"}
    axes.set_xlabel("seconds from the start of the forward" if in_seconds else "allocator event")
    axes.set_ylabel(f"memory ({unit})")
    axes.set_title(title)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    if series:
        axes.legend()
    figure.savefig(path)


def _failed_frames(failures: Mapping[str, Mapping[int, str]]) -> list[int]:
    return [frames for failed in failures.values() for frames in failed]
