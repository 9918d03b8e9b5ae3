"""The typed results of the GPU evidence: each step's status, verdict and data (the measured
pairs of variants, the estimates against them, the training steps), the run's time budget, and
the one place that reads a measurement's memory fields."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from profiling.evidence.estimates import EstimateFigures
from profiling.evidence.plan import Plan, Point
from profiling.sweep.records import CaseRecord, phase_field
from vggt.precision import Precision
from vggt.training.step import PHASES

PENDING = "pending"
PASS = "pass"
FAIL = "fail"
INCOMPLETE = "incomplete"
ERROR = "error"
SKIPPED_TIME = "skipped (time)"
# Exit statuses of the command: every planned check ran and passed; a check failed or erred;
# a check was skipped for time or is incomplete (and none failed).
EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_INCOMPLETE = 3


def exit_status(steps: "list[StepResult]") -> int:
    """The command's exit status for these steps."""
    if any(step.status in (FAIL, ERROR) for step in steps):
        return EXIT_FAILED
    if any(step.status != PASS for step in steps):
        return EXIT_INCOMPLETE
    return EXIT_PASSED


def unfinished(steps: "list[StepResult]") -> list[str]:
    """`name (status)` of every step that did not pass."""
    return [f"{step.name} ({step.status})" for step in steps if step.status != PASS]


def activation_bytes(record: CaseRecord) -> int | None:
    """Bytes the forward allocated above what was allocated before it (activations and
    outputs): the CUDA allocator's peak minus its start, or on a CPU the profiler's peak."""
    return record.activation_peak_bytes if record.status == "ok" else None


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
    """One point measured with two variants: `compared` against `baseline`'s outputs; `sdpa`
    counts the attention calls of its forwards by the backend that ran them."""

    point: Point
    baseline: CaseRecord
    compared: CaseRecord
    sdpa: dict[str, int] = field(default_factory=dict)

    @property
    def precision(self) -> Precision:
        return self.point.precision

    @property
    def frames(self) -> int:
        return self.point.frames


@dataclass
class Measured:
    """The pairs a step measured, in order, the labels of the points the time left out, and
    the estimates of its points where the step judges them itself."""

    pairs: list[Pair] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows: "list[EstimateRow]" = field(default_factory=list)

    @property
    def records(self) -> list[CaseRecord]:
        """Every measured variant: each pair's baseline, then its compared variant."""
        return [record for pair in self.pairs for record in (pair.baseline, pair.compared)]


@dataclass
class MemoryCapData:
    """The optimized aggregator under caps around the estimator's need: (cap, record) of the
    run above it, then of the run below it; None until the step knows the need."""

    need_bytes: int | None = None
    runs: list[tuple[int, CaseRecord]] = field(default_factory=list)

    @property
    def records(self) -> list[CaseRecord]:
        """The runs' records, above the need first."""
        return [record for _, record in self.runs]


@dataclass
class PreflightData:
    """Versions, the imports that failed, and the SDPA backends enabled."""

    versions: dict[str, str | None] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    sdpa_enabled: dict[str, bool] = field(default_factory=dict)


@dataclass
class ContextData:
    """Device memory outside the caching allocator, as NVML used minus reserved bytes: the
    CUDA context after a first matmul and attention, after the aggregator's forwards, and
    what a one-rank NCCL group and its first collective added."""

    cuda_context_bytes: int | None = None
    after_forwards_bytes: int | None = None
    nccl_bytes: int | None = None
    backend: str | None = None


@dataclass
class GpuTestsData:
    """The pytest command, and once it finished its exit code, summary line and output file."""

    command: str
    exit_code: int | None = None
    summary: str | None = None
    output: str | None = None


@dataclass
class EstimateRow:
    """One measured point against the estimator's figures. `judged` says whether its
    activations are at least half of its peak (else the weights dominate and the point says
    little); `ok` whether the figures agree, None when not judged or no estimate came in time;
    `error` says why there is no estimate."""

    record: CaseRecord
    estimate: EstimateFigures | None = None
    error: str | None = None
    ok: bool | None = None

    @property
    def judged(self) -> bool:
        """Whether the measured activations are at least half of the measured peak."""
        activations, peak = activation_bytes(self.record), allocated_bytes(self.record)
        return activations is not None and peak is not None and 2 * activations >= peak

    @property
    def relative_error(self) -> float | None:
        """(estimated - measured) / measured activation bytes."""
        measured = activation_bytes(self.record)
        if self.estimate is None or not measured:
            return None
        return (self.estimate.activation_bytes - measured) / measured

    @property
    def reserved_error(self) -> float | None:
        """(estimated - measured) / measured peak reserve of an unconstrained run, against the
        estimator's never-release figure (None on a CPU)."""
        measured = reserved_bytes(self.record)
        if self.estimate is None or not measured:
            return None
        return (self.estimate.reserved_peak_bytes - measured) / measured


def phase_peak_bytes(record: CaseRecord, phase: str) -> int | None:
    """A training step's absolute peak in `phase` as its device's meter read it: the CUDA
    allocator's, or on a CPU the tensors live as the step began plus the profiler's peak."""
    return getattr(record, phase_field(phase, "peak_bytes")) if record.status == "ok" else None


@dataclass
class TrainingRow:
    """One variant's measured training step at `point` against the estimator's peak of each
    phase (`estimate`: the bytes its device's meter should read; None when no estimate came,
    `error` saying why); `ok` whether every phase is within the tolerance, None when not
    compared (the step did not run, or its estimate came too late)."""

    point: Point
    record: CaseRecord
    estimate: dict[str, int] | None = None
    error: str | None = None
    ok: bool | None = None

    def relative_error(self, phase: str) -> float | None:
        """(estimated - measured) / measured peak of `phase`."""
        measured = phase_peak_bytes(self.record, phase)
        if self.estimate is None or not measured:
            return None
        return (self.estimate[phase] - measured) / measured

    def largest_error(self) -> tuple[str, float] | None:
        """The phase whose estimate is furthest off, and its relative error."""
        errors = [(phase, self.relative_error(phase)) for phase in PHASES]
        known = [(phase, error) for phase, error in errors if error is not None]
        return max(known, key=lambda item: abs(item[1]), default=None)


@dataclass
class TrainingData:
    """The training step's rows, each point's variants in order (its baseline first), and the
    labels of the points the time left out."""

    rows: list[TrainingRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class EstimatesData:
    """A row per point the aggregator step measured."""

    rows: list[EstimateRow] = field(default_factory=list)


StepData = (
    GpuTestsData
    | EstimatesData
    | MemoryCapData
    | PreflightData
    | ContextData
    | Measured
    | TrainingData
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

    def allows(self, seconds: float) -> bool:
        """Whether work predicted to take `seconds` finishes within the time left."""
        return seconds <= self.left()


@dataclass(frozen=True)
class Run:
    """What the report says of the whole run besides its steps."""

    started_at: str
    plan: Plan
    environment: dict[str, Any]
    deadline: Deadline
