"""Per-case records: the typed result of one case, appended durably to a rank's partial log,
read back on resume, and de-duplicated by case id for the report."""

import dataclasses
import json
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiling.sweep.cases import Case
from profiling.sweep.environment import RankInfo
from vggt.training.step import PHASES

PARTIAL_DIR = "partial"
# Fields of earlier runs' records, read and dropped: `peak_bytes` meant max_memory_allocated
# on CUDA but the activation peak on the CPU (now `cuda_max_allocated_bytes` and
# `activation_peak_bytes`), `cpu_peak_live_bytes` repeated `activation_peak_bytes`.
EARLIER_FIELDS = ("peak_bytes", "cpu_peak_live_bytes")
MAX_MESSAGE = 500


def phase_field(phase: str, figure: str) -> str:
    """The record field of a training phase's figure (`peak_bytes` or `ms`): e.g.
    `backward_peak_bytes`."""
    return f"{phase}_{figure}"


def one_line(error: BaseException) -> str:
    """`Type: message` on one line, cut to MAX_MESSAGE characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text[:MAX_MESSAGE]


@dataclass(frozen=True)
class TimeSummary:
    """Median, min, max, interquartile range and count of timing samples, in milliseconds."""

    median: float
    min: float
    max: float
    iqr: float
    repeats: int

    @classmethod
    def of(cls, samples: list[float]) -> "TimeSummary":
        """The summary of timing samples (ms); ValueError for none."""
        ordered = sorted(samples)
        iqr = 0.0
        if len(ordered) > 1:
            quartiles = statistics.quantiles(ordered, n=4, method="inclusive")
            iqr = quartiles[2] - quartiles[0]
        return cls(statistics.median(ordered), ordered[0], ordered[-1], iqr, len(ordered))


@dataclass
class CaseRecord:
    """One case's result; the field order is the key order of results.json and the column
    order of results.csv (`time_ms` and `files` nested in JSON, `time_ms_median` in CSV);
    fields added later come last, so earlier columns keep their places.

    `parallel` is `cases` (each case on one rank; `world_size` counts the run's ranks) or
    `sequence` (`world_size` ranks ran the case together, `attention` across them, and the
    figures are this rank's own; the differences are from world size 1).

    Memory: `activation_peak_bytes` is the peak allocated during the forward above what was
    live before it (weights and input excluded), on either device: on CUDA
    max_memory_allocated minus the start, on the CPU the profiler's tensor bytes, with kernel
    scratch apart in `cpu_scratch_peak_bytes`. `cuda_max_allocated_bytes` and
    `cuda_max_reserved_bytes` are the allocator's totals, weights included.

    `mode` is `inference` (the figures are of forwards; the training fields stay None) or
    `train` (of training steps: `trainable` parts, `checkpoint` policy). In train mode each
    phase of the measured step (`forward`, `backward`, `optimizer`) has its absolute peak,
    `<phase>_peak_bytes`, everything allocated at its highest (weights, gradients and AdamW
    state included; on CPUs the tensors live when the step began plus the profiler's tensor
    bytes), and `<phase>_ms`, its median over the timed steps; `time_ms` times whole steps,
    `activation_peak_bytes` is the step's peak above what was live before it, `input_bytes`
    holds the targets too, `gradient_bytes` the trainable parameters' gradients, `loss` the
    measured step's loss, and `max_abs_diff`/`max_rel_diff` compare that loss with the
    baseline's (same initial weights, input and warm-up steps)."""

    case_id: str
    group_id: str
    variant: str
    component: str
    frames: int
    batch: int
    height: int
    width: int
    dtype: str
    dtype_mode: str
    precision: str
    architecture: str
    device: str
    device_name: str
    rank: int
    world_size: int
    attempt: int
    host: str
    status: str = "ok"
    error: str | None = None
    time_ms: TimeSummary | None = None
    activation_peak_bytes: int | None = None
    cuda_max_allocated_bytes: int | None = None
    cuda_max_reserved_bytes: int | None = None
    nvml_peak_used_bytes: int | None = None
    nvml_sample_rate_hz: float | None = None
    cpu_max_rss_bytes: int | None = None
    output_bytes: int | None = None
    weight_bytes: int | None = None
    input_bytes: int | None = None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    compared_to: str | None = None
    warmup: int = 0
    repeats: int = 0
    files: dict[str, str] = field(default_factory=dict)
    finished_at: str = ""
    parallel: str = "cases"
    attention: str | None = None
    comm_seconds: float | None = None
    comm_bytes: int | None = None
    cpu_scratch_peak_bytes: int | None = None
    comm_serial_seconds: float | None = None
    mode: str = "inference"
    trainable: str | None = None
    checkpoint: str | None = None
    forward_peak_bytes: int | None = None
    backward_peak_bytes: int | None = None
    optimizer_peak_bytes: int | None = None
    forward_ms: float | None = None
    backward_ms: float | None = None
    optimizer_ms: float | None = None
    gradient_bytes: int | None = None
    loss: float | None = None

    @classmethod
    def start(cls, case: Case, rank: RankInfo, warmup: int, repeats: int) -> "CaseRecord":
        """The record of `case` before any figure is in: what, where and how often it runs."""
        group, split, training = case.group, case.split, case.group.training
        return cls(
            case_id=case.case_id,
            group_id=group.group_id,
            variant=case.variant,
            component=group.component,
            frames=group.frames,
            batch=group.batch,
            height=group.height,
            width=group.width,
            dtype=group.precision.dtype,
            dtype_mode=group.precision.mode,
            precision=group.precision.label,
            architecture=group.architecture.tag(),
            device=rank.device,
            device_name=rank.device_name,
            rank=rank.rank,
            world_size=rank.world_size if split is None else split.world_size,
            attempt=rank.attempt,
            host=rank.host,
            parallel="cases" if split is None else "sequence",
            attention=None if split is None else split.attention,
            warmup=warmup,
            repeats=repeats,
            mode="inference" if training is None else "train",
            trainable=None if training is None else ",".join(training.parts),
            checkpoint=None if training is None else training.checkpoint,
        )

    @property
    def median_ms(self) -> float | None:
        """The median time, None when no timed run finished."""
        return self.time_ms.median if self.time_ms else None

    @property
    def step_peak_bytes(self) -> int | None:
        """A training step's highest phase peak, None unless every phase has one."""
        peaks = [getattr(self, phase_field(phase, "peak_bytes")) for phase in PHASES]
        return None if None in peaks else max(peaks)

    def fail(self, status: str, error: BaseException) -> None:
        """Mark the case `oom` or `error` with the exception's one-line message."""
        self.status, self.error = status, one_line(error)

    def add_note(self, text: str) -> None:
        """Add to `error` something that went wrong beside the figures (NVML, a snapshot), which
        leaves the status as it is; notes are joined with `; `."""
        self.error = text if not self.error else f"{self.error}; {text}"

    def to_json(self) -> dict[str, Any]:
        """The record as results.json and the partial log hold it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CaseRecord":
        """A record from `to_json`'s dict (or an earlier run's, whose `peak_bytes` and
        `cpu_peak_live_bytes` are left out: see EARLIER_FIELDS); TypeError or KeyError if it is
        not one."""
        time_ms = None if data["time_ms"] is None else TimeSummary(**data["time_ms"])
        fields = {k: v for k, v in data.items() if k not in EARLIER_FIELDS}
        return cls(**{**fields, "time_ms": time_ms})


class PartialLog:
    """`OUT/partial/rank<k>.jsonl`: each group's records appended, flushed and fsynced at once."""

    def __init__(self, out_dir: Path, rank: int) -> None:
        folder = out_dir / PARTIAL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank{rank}.jsonl"

    def append(self, records: Iterable[CaseRecord]) -> None:
        """Append one JSON line per record; a torn last line of a killed run is closed first."""
        text = "".join(json.dumps(record.to_json()) + "\n" for record in records)
        with self.path.open("a+b") as file:
            file.seek(0, os.SEEK_END)
            if file.tell() > 0:
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    text = "\n" + text
            file.write(text.encode())
            file.flush()
            os.fsync(file.fileno())


def has_partial_results(out_dir: Path) -> bool:
    """Whether `out_dir` holds a non-empty partial log of an earlier run."""
    return any(path.stat().st_size > 0 for path in (out_dir / PARTIAL_DIR).glob("*.jsonl"))


def read_partial_records(out_dir: Path) -> list[CaseRecord]:
    """Every complete record in `OUT/partial/*.jsonl`; torn or foreign lines are skipped."""
    records = []
    for path in sorted((out_dir / PARTIAL_DIR).glob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                records.append(CaseRecord.from_json(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError):
                continue
    return records


def deduplicate(records: Iterable[CaseRecord]) -> list[CaseRecord]:
    """One record per case id, the most recently finished, sorted by case id."""
    latest: dict[str, CaseRecord] = {}
    for record in records:
        kept = latest.get(record.case_id)
        if kept is None or record.finished_at >= kept.finished_at:
            latest[record.case_id] = record
    return [latest[case_id] for case_id in sorted(latest)]
