"""The typed results of the GPU evidence: each step's status, verdict and data (the measured
pairs of variants, the estimates against them), the run's time budget, and the one place that
reads a measurement's memory fields."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from profiling.evidence.estimates import EstimateFigures
from profiling.evidence.plan import Plan
from profiling.sweep.records import CaseRecord
from vggt.precision import Precision

PENDING = "pending"
PASS = "pass"
FAIL = "fail"
INCOMPLETE = "incomplete"
ERROR = "error"
SKIPPED_TIME = "skipped (time)"


def allocated_bytes(record: CaseRecord) -> int | None:
    """Bytes allocated at the forward's peak, weights and input included: the CUDA allocator's
    peak, or on a CPU the profiler's peak during the forward plus the weights and input."""
    if record.status != "ok" or record.activation_peak_bytes is None:
        return None
    if record.cuda_max_allocated_bytes is not None:
        return record.cuda_max_allocated_bytes
    return record.activation_peak_bytes + (record.weight_bytes or 0) + (record.input_bytes or 0)


def reserved_bytes(record: CaseRecord) -> int | None:
    """The CUDA allocator's peak reserve (None on a CPU)."""
    return record.cuda_max_reserved_bytes


def nvml_used_bytes(record: CaseRecord) -> int | None:
    """The device's peak use as NVML sampled it (None where NVML was not read)."""
    return record.nvml_peak_used_bytes


@dataclass(frozen=True)
class Pair:
    """One configuration measured with two variants: `compared` against `baseline`'s outputs."""

    precision: Precision
    frames: int
    baseline: CaseRecord
    compared: CaseRecord


@dataclass
class Measured:
    """The pairs a step measured, in order."""

    pairs: list[Pair] = field(default_factory=list)

    @property
    def records(self) -> list[CaseRecord]:
        """Every measured variant: each pair's baseline, then its compared variant."""
        return [record for pair in self.pairs for record in (pair.baseline, pair.compared)]


@dataclass(frozen=True)
class Skipped:
    """A point the time budget left unmeasured."""

    precision: Precision
    frames: int


@dataclass
class AggregatorData(Measured):
    """Full (baseline) against optimized at each frame count and precision of the plan."""

    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class ChunkingData(Measured):
    """Unchunked (baseline) against chunked, and the frame counts the time left out."""

    skipped_frames: list[int] = field(default_factory=list)


@dataclass
class MemoryBudgetData(Measured):
    """Full against optimized under a cap between the estimator's needs of the two; what is not
    known yet (the step erred before it) is None."""

    full_estimate_bytes: int | None = None
    optimized_estimate_bytes: int | None = None
    cuda_context_bytes: int | None = None
    cap_bytes: int | None = None

    @property
    def device_memory_bytes(self) -> int | None:
        """The GPU the cap stands for: the cap and the estimated CUDA context."""
        if self.cap_bytes is None or self.cuda_context_bytes is None:
            return None
        return self.cap_bytes + self.cuda_context_bytes


@dataclass
class GpuTestsData:
    """The pytest command, and once it finished its exit code, summary line and output file."""

    command: str
    exit_code: int | None = None
    summary: str | None = None
    output: str | None = None


@dataclass
class EstimateRow:
    """One measured point against the estimator's figures: `ok` is whether they agree, None
    when no estimate came in time; `error` says why there is no estimate."""

    record: CaseRecord
    estimate: EstimateFigures | None = None
    error: str | None = None
    ok: bool | None = None

    @property
    def relative_error(self) -> float | None:
        """(estimated - measured) / measured bytes allocated at the peak."""
        measured = allocated_bytes(self.record)
        if self.estimate is None or measured is None:
            return None
        return (self.estimate.allocated_bytes - measured) / measured


@dataclass
class EstimatesData:
    """A row per point the aggregator step measured."""

    rows: list[EstimateRow] = field(default_factory=list)


StepData = (
    GpuTestsData | AggregatorData | EstimatesData | ChunkingData | MemoryBudgetData | Measured
)
Data = TypeVar("Data", bound=Measured | EstimatesData)


@dataclass
class StepResult:
    """One check: its status (pending, pass, fail, incomplete: passed what it ran but the time
    ran out for the rest, error, skipped (time)), the verdict with its figure, the one-line
    reason of an error, its seconds and its data (None until the step starts)."""

    name: str
    letter: str
    status: str = PENDING
    verdict: str = ""
    error: str | None = None
    seconds: float | None = None
    data: StepData | None = None

    def judge(self, passed: bool, verdict: str, complete: bool = True) -> None:
        """Set pass or fail with the verdict's text; a pass on part of the points is
        `incomplete`."""
        self.status = (PASS if complete else INCOMPLETE) if passed else FAIL
        self.verdict = verdict


def data_of(step: StepResult, kind: type[Data]) -> Data:
    """The step's data, or an empty `kind` when it recorded none (not run, or stubbed)."""
    return step.data if isinstance(step.data, kind) else kind()


class Deadline:
    """The run's time budget in seconds, counted from its creation on `clock`."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self.budget_s - self.elapsed())

    def passed(self) -> bool:
        """Whether the budget is spent."""
        return self.left() <= 0


@dataclass(frozen=True)
class Run:
    """What the report says of the whole run besides its steps."""

    started_at: str
    plan: Plan
    environment: dict[str, Any]
    deadline: Deadline
