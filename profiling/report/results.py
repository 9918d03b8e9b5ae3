"""The report rank 0 writes once every rank is done: JSON, CSV, summary.md and plots."""

import csv
import io
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from profiling.plots import plot_against_frames, plot_timelines
from profiling.summary import (
    config_slug,
    config_title,
    group_by_config,
    median_ms,
    summary_markdown,
    variant_order,
)
from profiling.timelines import Timeline

TIMELINE_SOURCES = ("cpu-profiler", "cuda-snapshot", "nvml")


def write_atomically(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts become `outer_inner` columns."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{inner}": item for inner, item in value.items()})
        elif key == "time_ms" and value is None:
            flat.update({f"time_ms_{part}": None for part in ("median", "min", "max", "iqr")})
        else:
            flat[key] = value
    return flat


def records_csv(records: list[dict[str, Any]]) -> str:
    """All records as CSV, one column per flattened field in first-seen order."""
    rows = [flatten(record) for record in records]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_plots(out_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
    """Peak memory and time against frames per configuration, and memory timelines."""
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, config_records in group_by_config(records).items():
        name = config_slug(key)
        title = config_title(key)
        failures: dict[str, dict[int, str]] = defaultdict(dict)
        peaks: dict[str, dict[int, float]] = defaultdict(dict)
        times: dict[str, dict[int, float]] = defaultdict(dict)
        for record in config_records:
            variant, frames = record["variant"], record["frames"]
            if record["status"] != "ok":
                failures[variant][frames] = record["status"]
                continue
            if record.get("peak_bytes") is not None:
                peaks[variant][frames] = record["peak_bytes"]
            if median_ms(record) is not None:
                times[variant][frames] = median_ms(record)
        path = plot_dir / f"peak-memory-{name}.png"
        plot_against_frames(peaks, failures, path, f"Peak memory: {title}", "peak memory", True)
        written.append(path)
        path = plot_dir / f"time-{name}.png"
        plot_against_frames(times, failures, path, f"Median time: {title}", "time (ms)", False)
        written.append(path)
        written += write_timeline_plots(out_dir, plot_dir, name, title, config_records)
    return written


def write_timeline_plots(
    out_dir: Path, plot_dir: Path, name: str, title: str, records: list[dict[str, Any]]
) -> list[Path]:
    """For each source, the variants' timelines at the largest frame count most of them have."""
    written = []
    for source in TIMELINE_SOURCES:
        with_file = defaultdict(dict)
        for record in records:
            file = (record.get("files") or {}).get(source)
            if file and (out_dir / file).is_file():
                with_file[record["frames"]][record["variant"]] = out_dir / file
        if not with_file:
            continue
        frames = max(with_file, key=lambda count: (len(with_file[count]), count))
        order = variant_order(records)
        series = {
            variant: Timeline.load(path)
            for variant, path in sorted(with_file[frames].items(), key=lambda i: order.index(i[0]))
        }
        path = plot_dir / f"timeline-{source}-{name}-f{frames}.png"
        plot_timelines(series, path, f"{source} memory, {frames} frames: {title}")
        written.append(path)
    return written


def write_report(out_dir: Path, records: list[dict[str, Any]], environment: dict[str, Any]) -> None:
    """results.json, results.csv, summary.md and plots/*.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {"environment": environment, "cases": records}
    write_atomically(out_dir / "results.json", json.dumps(document, indent=2) + "\n")
    write_atomically(out_dir / "results.csv", records_csv(records))
    write_atomically(out_dir / "summary.md", summary_markdown(records, environment))
    write_plots(out_dir, records)
