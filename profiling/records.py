"""Per-case records: built from a group's results, appended durably to a rank's partial log,
read back on resume, and de-duplicated by case id for the report."""

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from profiling.cases import CaseGroup
from profiling.measure import VariantResult
from profiling.variants import BASELINE

PARTIAL_DIR = "partial"
FIGURES = (
    "peak_bytes",
    "activation_peak_bytes",
    "cuda_max_allocated_bytes",
    "cuda_max_reserved_bytes",
    "nvml_peak_used_bytes",
    "nvml_sample_rate_hz",
    "cpu_peak_live_bytes",
    "cpu_max_rss_bytes",
    "output_bytes",
    "weight_bytes",
    "input_bytes",
)


@dataclass(frozen=True)
class RunInfo:
    """Where and how the cases of this process run."""

    rank: int
    world_size: int
    attempt: int
    host: str
    device: str
    device_name: str
    warmup: int
    repeats: int


def make_records(
    group: CaseGroup, results: dict[str, VariantResult], info: RunInfo
) -> list[dict[str, Any]]:
    """One flat-as-possible record per variant of `group`."""
    finished_at = datetime.now(UTC).isoformat()
    records = []
    for case in group.cases():
        result = results[case.variant]
        record = {
            "case_id": case.case_id,
            "group_id": group.group_id,
            "variant": case.variant,
            "component": case.component,
            "frames": case.frames,
            "batch": case.batch,
            "height": case.height,
            "width": case.width,
            "dtype": case.precision.dtype,
            "dtype_mode": case.precision.mode,
            "precision": case.precision.label,
            "architecture": case.architecture_tag,
            "device": info.device,
            "device_name": info.device_name,
            "rank": info.rank,
            "world_size": info.world_size,
            "attempt": info.attempt,
            "host": info.host,
            "status": result.status,
            "error": result.error,
            "time_ms": result.time_summary(),
        }
        record.update({name: result.figures.get(name) for name in FIGURES})
        record.update(
            max_abs_diff=result.max_abs_diff,
            max_rel_diff=result.max_rel_diff,
            compared_to=BASELINE if result.max_abs_diff is not None else None,
            warmup=info.warmup,
            repeats=info.repeats,
            files=dict(result.files),
            finished_at=finished_at,
        )
        records.append(record)
    return records


class PartialLog:
    """`OUT/partial/rank<k>.jsonl`: each group's records appended, flushed and fsynced at once."""

    def __init__(self, out_dir: Path, rank: int) -> None:
        folder = out_dir / PARTIAL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank{rank}.jsonl"

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append one JSON line per record; a torn last line of a killed run is closed first."""
        text = "".join(json.dumps(record) + "\n" for record in records)
        with self.path.open("a+b") as file:
            file.seek(0, os.SEEK_END)
            if file.tell() > 0:
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    text = "\n" + text
            file.write(text.encode())
            file.flush()
            os.fsync(file.fileno())


def read_partial_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every complete record in `OUT/partial/*.jsonl`; torn or foreign lines are skipped."""
    records = []
    for path in sorted((out_dir / PARTIAL_DIR).glob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "case_id" in record:
                records.append(record)
    return records


def deduplicate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per case id, the most recently finished, sorted by case id."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        kept = latest.get(record["case_id"])
        if kept is None or record.get("finished_at", "") >= kept.get("finished_at", ""):
            latest[record["case_id"]] = record
    return [latest[case_id] for case_id in sorted(latest)]
