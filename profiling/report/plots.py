"""PNG charts: a metric against frames per variant, and memory timelines overlaid; for a
sweep's report, one of each per configuration (in train mode, one peak chart per phase)."""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
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
from profiling.sweep.records import CaseRecord, phase_field
from vggt.memory.units import byte_unit
from vggt.training.step import PHASES

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


@dataclass(frozen=True)
class Chart:
    """A chart of a record field against frames: its file name's start, title and y label."""

    prefix: str
    field: str
    title: str
    ylabel: str
    in_bytes: bool


INFERENCE_CHARTS = (
    Chart("peak-memory", "activation_peak_bytes", "Peak memory", "peak memory", True),
    Chart("time", "median_ms", "Median time", "time (ms)", False),
)
TRAIN_CHARTS = (
    *(
        Chart(
            f"peak-{phase}",
            phase_field(phase, "peak_bytes"),
            f"Peak memory in the {phase} phase",
            f"{phase} peak memory",
            True,
        )
        for phase in PHASES
    ),
    Chart("time", "median_ms", "Median training step time", "time (ms)", False),
)


def chart_series(
    records: list[CaseRecord], field: str
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, str]]]:
    """`field` by series label and frames, the largest over the ranks of a sequence-parallel
    case; and the failed cases' statuses, by label and frames."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    failures: dict[str, dict[int, str]] = defaultdict(dict)
    for record in records:
        label, frames = series_label(record), record.frames
        if record.status != "ok":
            failures[label][frames] = record.status
            continue
        value = getattr(record, field)
        if value is not None:
            series[label][frames] = max(value, series[label].get(frames, value))
    return series, failures


def write_plots(out_dir: Path, records: list[CaseRecord]) -> None:
    """Per configuration, charts against frames (the largest over the ranks of a
    sequence-parallel case): peak memory and time, or in train mode each phase's peak and the
    step time; and memory timelines."""
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for key, config_records in group_by_config(records).items():
        name = config_slug(key)
        title = config_title(key)
        for chart in TRAIN_CHARTS if key[-1] == "train" else INFERENCE_CHARTS:
            series, failures = chart_series(config_records, chart.field)
            path = plot_dir / f"{chart.prefix}-{name}.png"
            heading = f"{chart.title}: {title}"
            plot_against_frames(series, failures, path, heading, chart.ylabel, chart.in_bytes)
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
