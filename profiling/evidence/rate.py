"""The effective rate the GPU evidence measured: the aggregator's FLOPs
(`Architecture.aggregator_flops`) over the seconds of its timed forwards (each timed with CUDA
events after a synchronize, the median of REPEATS), pooled over the points that speak for a
long run: the optimized variant, which `vggt.infer` runs, in 16 bits, at `Plan.rate_min_tokens`
tokens or more (VGGT-1B at 350x518: 50 frames and up, a second or more a forward, where kernel
launches and the Python between them weigh a few percent at most). `adopt.py` makes it the
library's rate for the GPU's type."""

from dataclasses import dataclass

from profiling.evidence.plan import Plan, Point
from profiling.evidence.results import Measured, StepResult, data_of
from profiling.sweep.records import CaseRecord
from vggt.memory.timing import low_precision

# The steps whose points compare full with optimized aggregators, and the variant timed.
RATE_STEPS = ("aggregator", "square")
RATE_VARIANT = "optimized"


@dataclass(frozen=True)
class RatePoint:
    """One point's timed forward: its label, its FLOPs and its median seconds."""

    label: str
    flops: float
    seconds: float

    @property
    def tflops(self) -> float:
        """The point's effective TFLOP/s."""
        return self.flops / self.seconds / 1e12


@dataclass(frozen=True)
class MeasuredRate:
    """The points' FLOPs over their seconds, pooled, and where they were measured: the
    device (`cuda:0`) and its name, torch's version, and the fewest tokens a point had to
    have."""

    points: tuple[RatePoint, ...]
    device: str
    device_name: str
    torch: str
    min_tokens: int

    @property
    def tflops(self) -> float:
        """All the points' FLOPs over all their seconds, in TFLOP/s."""
        flops = sum(point.flops for point in self.points)
        return flops / sum(point.seconds for point in self.points) / 1e12

    def to_json(self) -> dict:
        """The rate as results.json holds it (what `--adopt` reads)."""
        return {
            "tflops": self.tflops,
            "variant": RATE_VARIANT,
            "min_tokens": self.min_tokens,
            "device": self.device,
            "device_name": self.device_name,
            "torch": self.torch,
            "points": [
                {
                    "label": point.label,
                    "flops": point.flops,
                    "seconds": point.seconds,
                    "tflops": point.tflops,
                }
                for point in self.points
            ],
        }


def timed_records(plan: Plan, steps: list[StepResult]) -> list[tuple[Point, CaseRecord]]:
    """Each point of RATE_STEPS that enters the rate, with its timed RATE_VARIANT record."""
    found = []
    for step in steps:
        if step.name not in RATE_STEPS:
            continue
        for pair in data_of(step, Measured).pairs:
            point = pair.point
            tokens = point.frames * plan.architecture.tokens_per_frame(point.height, point.width)
            counted = point.component == "aggregator" and low_precision(point.precision)
            if not counted or tokens < plan.rate_min_tokens:
                continue
            found += [
                (point, record)
                for record in (pair.baseline, pair.compared)
                if record.variant == RATE_VARIANT and record.status == "ok" and record.median_ms
            ]
    return found


def measured_rate(plan: Plan, steps: list[StepResult], torch: str) -> MeasuredRate | None:
    """The rate of the steps' timed points (`torch`: its version), or None without one."""
    timed = timed_records(plan, steps)
    if not timed:
        return None
    points = tuple(
        RatePoint(
            point.label,
            plan.architecture.aggregator_flops(point.frames, point.height, point.width),
            record.median_ms / 1e3,
        )
        for point, record in timed
    )
    first = timed[0][1]
    return MeasuredRate(points, first.device, first.device_name, torch, plan.rate_min_tokens)
