"""The files one case leaves under timelines/: memory timelines as JSON, and CUDA allocator
snapshots as pickles (for pytorch.org/memory_viz) and PNGs, each noted in the case's record."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from profiling.meters import cuda
from profiling.meters.timelines import Timeline, from_cuda_snapshot, plot_timelines
from profiling.sweep.records import CaseRecord

TIMELINE_DIR = "timelines"


def save_timeline(folder: Path, record: CaseRecord, timeline: Timeline) -> None:
    """Write `<case_id>.<source>.json` into `folder` (OUT/timelines)."""
    name = f"{record.case_id}.{timeline.source}.json"
    timeline.save(folder / name)
    record.files[timeline.source] = f"{TIMELINE_DIR}/{name}"


def save_snapshot(
    folder: Path,
    record: CaseRecord,
    label: str,
    snapshot: dict[str, Any],
    device: torch.device,
    base_bytes: int,
    phases_ns: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """Pickle an allocator snapshot and plot its timeline as a PNG; the `memory` snapshot's
    timeline is saved as JSON too. `base_bytes`: allocated when recording began; `phases_ns`:
    stretches of the run (Unix-epoch ns) the timeline marks."""
    stem = f"{record.case_id}.{label}.snapshot"
    cuda.save_snapshot(snapshot, folder / f"{stem}.pickle")
    record.files[f"{label}_snapshot"] = f"{TIMELINE_DIR}/{stem}.pickle"
    index = device.index if device.index is not None else 0
    timeline = from_cuda_snapshot(snapshot, index, base_bytes, phases_ns)
    if label == "memory":
        save_timeline(folder, record, timeline)
    title = f"{record.case_id} ({label})"
    plot_timelines({record.variant: timeline}, folder / f"{stem}.png", title)
    record.files[f"{label}_snapshot_png"] = f"{TIMELINE_DIR}/{stem}.png"
