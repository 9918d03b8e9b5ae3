"""PNG charts: a metric against frames per variant, and memory timelines overlaid; for a
sweep's report, one of each per configuration."""

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from profiling.meters.timelines import Timeline, plot_timelines
from profiling.report.summary import (
    config_slug,
    config_title,
    group_by_config,
    series_label,
    series_order,
)
from profiling.sweep.records import CaseRecord
from vggt.memory.units import byte_unit

TIMELINE_SOURCES = ("cpu-profiler", "cuda-snapshot", "nvml")
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
    ticks = sorted({f for points in [*series.values(), *failures.values()] for f in points})
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


def write_plots(out_dir: Path, records: list[CaseRecord]) -> None:
    """Peak memory and time against frames per configuration (the largest over the ranks
    of a sequence-parallel case), and memory timelines."""
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for key, config_records in group_by_config(records).items():
        name = config_slug(key)
        title = config_title(key)
        failures: dict[str, dict[int, str]] = defaultdict(dict)
        peaks: dict[str, dict[int, float]] = defaultdict(dict)
        times: dict[str, dict[int, float]] = defaultdict(dict)
        for record in config_records:
            label, frames = series_label(record), record.frames
            if record.status != "ok":
                failures[label][frames] = record.status
                continue
            # Ranks of one sequence-parallel case share a point: the largest of theirs.
            peak = record.activation_peak_bytes
            if peak is not None:
                peaks[label][frames] = max(peak, peaks[label].get(frames, 0))
            if record.median_ms is not None:
                times[label][frames] = max(record.median_ms, times[label].get(frames, 0.0))
        path = plot_dir / f"peak-memory-{name}.png"
        plot_against_frames(peaks, failures, path, f"Peak memory: {title}", "peak memory", True)
        path = plot_dir / f"time-{name}.png"
        plot_against_frames(times, failures, path, f"Median time: {title}", "time (ms)", False)
        write_timeline_plots(out_dir, plot_dir, name, title, config_records)


def write_timeline_plots(
    out_dir: Path, plot_dir: Path, name: str, title: str, records: list[CaseRecord]
) -> None:
    """For each source, the variants' timelines at the largest frame count most of them have
    (one rank's for a sequence-parallel case)."""
    for source in TIMELINE_SOURCES:
        with_file = defaultdict(dict)
        for record in records:
            file = record.files.get(source)
            if file and (out_dir / file).is_file():
                with_file[record.frames][series_label(record)] = out_dir / file
        if not with_file:
            continue
        frames = max(with_file, key=lambda count: (len(with_file[count]), count))
        order = series_order(records)
        series = {
            label: Timeline.load(path)
            for label, path in sorted(with_file[frames].items(), key=lambda i: order.index(i[0]))
        }
        path = plot_dir / f"timeline-{source}-{name}-f{frames}.png"
        plot_timelines(series, path, f"{source} memory, {frames} frames: {title}")
