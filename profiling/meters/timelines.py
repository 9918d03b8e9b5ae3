"""Memory-over-time series from the CPU profiler, CUDA snapshots and NVML, saved as JSON and
drawn as PNG."""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from profiling.meters.cpu import MemoryTrace
from profiling.meters.cuda import device_trace
from profiling.meters.nvml import NvmlSamples
from vggt.memory.units import byte_unit

# Longest series written; a longer one keeps the highest point of each equal stretch.
MAX_POINTS = 20_000


@dataclass
class Timeline:
    """Bytes over time from the start of a measured forward (or training step), and where
    they came from.

    `time_axis` is "seconds", or "events" when the source had no timestamps. `phases` names
    stretches of the run on the same axis, [start, end] each (a training step's forward,
    backward and optimizer); none for a forward.
    """

    source: str
    times_s: list[float]
    bytes: list[int]
    time_axis: str = "seconds"
    phases: dict[str, list[float]] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        """The highest value of the series."""
        return max(self.bytes, default=0)

    def save(self, path: Path) -> None:
        """Write as JSON, thinned to at most MAX_POINTS points with peaks kept."""
        times, values = thin(self.times_s, self.bytes, MAX_POINTS)
        path.write_text(json.dumps({**asdict(self), "times_s": times, "bytes": values}))

    @classmethod
    def load(cls, path: Path) -> "Timeline":
        """Read a timeline written by `save`."""
        return cls(**json.loads(path.read_text()))


def thin(times: list[float], values: list[int], limit: int) -> tuple[list[float], list[int]]:
    """At most `limit` points: each stretch of the series is replaced by its highest point."""
    if len(values) <= limit:
        return list(times), list(values)
    stride = -(-len(values) // limit)
    kept_times, kept_values = [], []
    for start in range(0, len(values), stride):
        stretch = range(start, min(start + stride, len(values)))
        top = max(stretch, key=values.__getitem__)
        kept_times.append(times[top])
        kept_values.append(values[top])
    return kept_times, kept_values


def from_cpu_trace(trace: MemoryTrace) -> Timeline:
    """Live tensor bytes from the CPU profiler's trace, its marks as phases."""
    phases = {name: [start / 1e9, end / 1e9] for name, (start, end) in trace.marks.items()}
    return Timeline(
        "cpu-profiler",
        [t / 1e9 for t in trace.times_ns],
        [int(b) for b in trace.live_bytes],
        phases=phases,
    )


def from_nvml(samples: NvmlSamples) -> Timeline:
    """Device-wide used bytes as NVML reported them."""
    return Timeline("nvml", list(samples.times_s), list(samples.used_bytes))


def from_cuda_snapshot(
    snapshot: dict[str, Any],
    device_index: int,
    base_bytes: int,
    phases_ns: Mapping[str, tuple[int, int]] | None = None,
) -> Timeline:
    """Allocated bytes over time from a snapshot's allocator trace, on top of `base_bytes`
    already allocated when recording began. Times are in seconds when the trace has them,
    else the event number stands in. `phases_ns`: stretches of the run in Unix-epoch
    nanoseconds (the trace's clock), placed on the timeline when it has times."""
    events = device_trace(snapshot, device_index)
    live = base_bytes
    times, values = [], []
    start_us = next((e["time_us"] for e in events if "time_us" in e), None)
    for number, event in enumerate(events):
        if event["action"] == "alloc":
            live += event["size"]
        elif event["action"] == "free_completed":
            live -= event["size"]
        else:
            continue
        if start_us is None:
            times.append(float(number))
        else:
            times.append((event["time_us"] - start_us) / 1e6)
        values.append(live)
    if start_us is None:
        return Timeline("cuda-snapshot", times, values, "events")
    phases = {
        name: [(start / 1e3 - start_us) / 1e6, (end / 1e3 - start_us) / 1e6]
        for name, (start, end) in (phases_ns or {}).items()
    }
    return Timeline("cuda-snapshot", times, values, "seconds", phases)


def plot_timelines(series: Mapping[str, Timeline], path: Path, title: str) -> None:
    """Bytes over time, one line per label (a variant, or a variant and a source); each
    timeline's phases start at a dotted line of its colour, named at the top."""
    figure = Figure(figsize=(8, 5), dpi=120, layout="constrained")
    axes = figure.subplots()
    largest = max((t.peak_bytes for t in series.values()), default=1)
    unit, divisor = byte_unit(largest, "MiB")
    for label, timeline in series.items():
        values = [b / divisor for b in timeline.bytes]
        peak = max(values, default=0.0)
        (line,) = axes.step(
            timeline.times_s, values, where="post", label=f"{label} (peak {peak:.2f} {unit})"
        )
        for phase, (start, _) in timeline.phases.items():
            axes.axvline(start, color=line.get_color(), linestyle=":", linewidth=1)
            axes.annotate(
                phase,
                (start, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -2),
                textcoords="offset points",
                va="top",
                rotation=90,
                fontsize=7,
                color=line.get_color(),
            )
    axes_kinds = {t.time_axis for t in series.values()}
    in_seconds = axes_kinds <= {"seconds"}
    run = "training step" if any(t.phases for t in series.values()) else "forward"
    axes.set_xlabel(f"seconds from the start of the {run}" if in_seconds else "allocator event")
    axes.set_ylabel(f"memory ({unit})")
    axes.set_title(title)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    if series:
        axes.legend()
    figure.savefig(path)
