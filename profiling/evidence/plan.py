"""What the GPU evidence runs and how long each piece should take on the target GPU.

Every measured point is a configuration of variants with its predicted seconds, from the
architecture's FLOPs and bytes at stated effective rates (`Rates`); a step's seconds are its
points' plus its fixed costs. `gpu_plan` fills a time budget: the like-for-like points with
VGGT's README table first, the checks that judge the most next (a training step among them),
then 518x518 points while time is left. `dry_run_plan` runs the same steps at tiny sizes on a
CPU in seconds.
"""

import dataclasses
import functools
from dataclasses import dataclass, field

from torch import nn

from profiling.sweep.cases import TRAINING_COST, Training
from profiling.sweep.presets import load_preset
from vggt.memory.device_rates import rates_for
from vggt.memory.timing import forward_time
from vggt.models.architecture import VGGT_1B, Architecture
from vggt.models.variants import Variant, register_variant, variant_names
from vggt.precision import Precision, get_precision
from vggt.training.trainable import PRESETS

GB = 10**9
# VGGT's README: the aggregator's peak memory on an H100 (GB as printed) by frame count, for
# frames of 350x518 (930 tokens each).
README_SIZE = (350, 518)
REFERENCE_BYTES = {
    1: int(1.88 * GB),
    10: int(3.63 * GB),
    50: int(11.41 * GB),
    100: int(21.15 * GB),
    200: int(40.63 * GB),
}
# The README's precision (fp32 weights under bf16 autocast), and the aggregator's weights in bf16.
README_PRECISION = get_precision("autocast")
CAST_PRECISION = get_precision("bf16")
OFFLOAD = "offload"
UNCHUNKED = "unchunked"
CHUNKED = "chunked"
AGGREGATORS = ("full", "optimized")
DEFAULT_BUDGET_S = 300.0
# Timed forwards (training points: steps) per variant after its memory run.
REPEATS = 1
# What the training points train: the aggregator and the camera, depth and point heads, each
# block's input kept for backward and the block recomputed.
TRAINING = Training(PRESETS["unfrozen-aggregator"], "blocks")
# The design goal (README): an 80 GiB GPU trains the optimized model on at least this many
# images a step.
TRAINING_GOAL_FRAMES = 48


@dataclass(frozen=True)
class Rates:
    """Effective rates of the target GPU (an H100 or H200 by default: the rates table's stated
    bf16 rate, fp32 work at its share of it) and fixed costs, in seconds."""

    tflops: float = field(default_factory=lambda: rates_for(None).tflops)
    bandwidth_gbs: float = 2500.0
    forward_overhead_s: float = 0.3
    build_s: float = 4.0
    history_s: float = 3.0
    preflight_s: float = 5.0
    context_s: float = 15.0
    report_s: float = 5.0
    estimate_base_s: float = 3.0
    estimate_s_per_token: float = 1e-4


@dataclass(frozen=True)
class Point:
    """One configuration measured with `variants` (the first is the baseline): warm-up
    forwards, one memory run (with the allocator's history when `history`), REPEATS timed; with
    `training`, whole training steps of what it says instead of forwards."""

    component: str
    variants: tuple[str, ...]
    frames: int
    height: int
    width: int
    precision: Precision
    warmup: int = 0
    history: bool = False
    training: Training | None = None

    @property
    def label(self) -> str:
        """`aggregator 100 frames 350x518 autocast`; a training point adds what trains and the
        checkpoint policy."""
        label = (
            f"{self.component} {self.frames} frames {self.height}x{self.width} "
            f"{self.precision.label}"
        )
        if self.training is None:
            return label
        return f"{label} training {self.training.trainable}, checkpoint {self.training.checkpoint}"

    def forward_seconds(self, architecture: Architecture, rates: Rates) -> float:
        """One forward of one variant: its FLOPs at the precision's rate (`forward_time`), the
        residual stream's traffic (about 40 passes over fp32 tokens per layer) and a fixed
        overhead."""
        seconds = forward_time(
            architecture,
            self.frames,
            self.height,
            self.width,
            self.precision,
            heads=self.component == "model",
            tflops=rates.tflops,
        ).seconds
        tokens = self.frames * architecture.tokens_per_frame(self.height, self.width)
        layers = 3 * architecture.depth
        traffic = layers * 40 * tokens * architecture.embed_dim * 4
        return seconds + traffic / (rates.bandwidth_gbs * 1e9) + rates.forward_overhead_s

    def seconds(self, architecture: Architecture, rates: Rates) -> float:
        """Every forward of every variant, and the history's cost; a training point's steps
        at TRAINING_COST forwards each, and the build of each variant (each trains a model of
        its own)."""
        runs = len(self.variants) * (self.warmup + 1 + REPEATS)
        history = rates.history_s * len(self.variants) if self.history else 0.0
        forward = self.forward_seconds(architecture, rates)
        if self.training is None:
            return runs * forward + history
        return runs * TRAINING_COST * forward + history + len(self.variants) * rates.build_s

    def estimate_seconds(self, architecture: Architecture, rates: Rates) -> float:
        """One fake pass of the estimator on one CPU core, per variant (a training step's
        tracing about TRAINING_COST forwards')."""
        tokens = self.frames * architecture.tokens_per_frame(self.height, self.width)
        cost = TRAINING_COST if self.training else 1.0
        return rates.estimate_base_s + cost * rates.estimate_s_per_token * tokens


@dataclass(frozen=True)
class Plan:
    """The model, the rates and every step's points."""

    model: str
    architecture: Architecture
    rates: Rates
    aggregator: tuple[Point, ...]
    cap: Point
    chunking: tuple[Point, ...]
    offload: Point
    training: tuple[Point, ...]
    square: tuple[Point, ...]
    pytest_paths: tuple[str, ...]
    gpu_tests_s: float
    test_timeout_s: float
    offload_piece_bytes: int
    min_chunk_tokens: int | None = None
    reference_bytes: dict[int, int] = field(default_factory=dict)
    seed: int = 0
    # The fewest tokens of a timed point that enters the measured rate (`rate.py`).
    rate_min_tokens: int = 40_000

    def points(self, step: str) -> tuple[Point, ...]:
        """The points a measuring step runs (none for the others)."""
        return {
            "aggregator": self.aggregator,
            "memory-cap": (self.cap,),
            "chunking": self.chunking,
            "offload": (self.offload,),
            "training": self.training,
            "square": self.square,
        }.get(step, ())

    def reference_for(self, point: Point) -> int | None:
        """VGGT's README figure for a point of its size and precision, or None."""
        like = (point.height, point.width) == README_SIZE and point.precision == README_PRECISION
        return self.reference_bytes.get(point.frames) if like else None

    def point_seconds(self, point: Point) -> float:
        """A point's predicted seconds."""
        return point.seconds(self.architecture, self.rates)

    def measured_seconds(self, step: str) -> float:
        """A measuring step's points and the build of its model cache (nothing without points;
        no cache for training points, which build their variants themselves)."""
        points = self.points(step)
        cached = any(point.training is None for point in points)
        return sum(map(self.point_seconds, points)) + (self.rates.build_s if cached else 0.0)

    def step_seconds(self) -> dict[str, float]:
        """Each step's predicted seconds on the target GPU, in the order they run."""
        rates = self.rates
        measured = {
            step: self.measured_seconds(step)
            for step in ("aggregator", "chunking", "offload", "training", "square")
        }
        cap_forward = self.cap.forward_seconds(self.architecture, rates)
        before_estimates = rates.preflight_s + rates.context_s + self.gpu_tests_s
        before_estimates += measured["aggregator"]
        return {
            "preflight": rates.preflight_s,
            "cuda-context": rates.context_s,
            "gpu-tests": self.gpu_tests_s,
            "aggregator": measured["aggregator"],
            "estimates": max(1.0, self.estimates_wall_s() - before_estimates),
            # Above the cap every forward of the point runs; below it the first runs out.
            "memory-cap": self.cap.seconds(self.architecture, rates) + cap_forward + rates.build_s,
            "chunking": measured["chunking"],
            "offload": measured["offload"],
            "training": measured["training"],
            "square": measured["square"],
            "report": rates.report_s,
        }

    def estimates_wall_s(self) -> float:
        """The estimator's slowest fake pass: the jobs run in parallel worker processes."""
        points = (*self.aggregator, self.cap, *self.training, *self.square)
        return max(point.estimate_seconds(self.architecture, self.rates) for point in points)

    def total_seconds(self) -> float:
        """The whole run's predicted seconds."""
        return sum(self.step_seconds().values())

    def plan_json(self) -> dict:
        """`{"steps": [{"name", "seconds"}...], "total_seconds"}`, seconds to 0.1."""
        steps = [
            {"name": name, "seconds": round(seconds, 1)}
            for name, seconds in self.step_seconds().items()
        ]
        return {"steps": steps, "total_seconds": round(self.total_seconds(), 1)}


def like_for_like(frames: tuple[int, ...], size: tuple[int, int]) -> tuple[Point, ...]:
    """Full against optimized in the README's precision at each frame count, the first after
    a warm-up forward, the smallest with the allocator's history."""
    return tuple(
        Point("aggregator", AGGREGATORS, count, *size, README_PRECISION, int(index == 0), index < 2)
        for index, count in enumerate(frames)
    )


def training_point(
    variants: tuple[str, ...], frames: int, side: int, precision: Precision
) -> Point:
    """A training step of the whole model (TRAINING) on square frames, after one warm-up step:
    it makes AdamW's states, which the later steps the estimator traces hold throughout."""
    return Point("model", variants, frames, side, side, precision, warmup=1, training=TRAINING)


def gpu_plan(budget_s: float = DEFAULT_BUDGET_S, rates: Rates | None = None) -> Plan:
    """VGGT-1B's aggregator at the README's size and frame counts, a memory cap, chunks,
    offload and a training step of the whole model at 8 images of 518x518 (one frame chunk of
    the dense heads; the full model's step fits an 80 GiB GPU several times over); then while
    `budget_s` allows, the optimized model's step at TRAINING_GOAL_FRAMES images and 518x518
    points (autocast, then bf16 weights)."""
    rates = rates or Rates()
    size = README_SIZE
    plan = Plan(
        model="VGGT-1B (preset vggt-1b), random seeded weights",
        architecture=VGGT_1B,
        rates=rates,
        aggregator=like_for_like((1, 10, 50, 100, 200), size),
        cap=Point("aggregator", ("optimized",), 100, *size, CAST_PRECISION),
        chunking=tuple(
            Point("aggregator", (UNCHUNKED, CHUNKED), frames, *size, README_PRECISION)
            for frames in (10, 100)
        ),
        offload=Point("model", ("optimized", OFFLOAD), 50, *size, README_PRECISION),
        training=(training_point(AGGREGATORS, 8, 518, README_PRECISION),),
        square=(),
        pytest_paths=(
            "tests/profiling/test_gpu.py",
            "tests/memory/test_estimate.py",
            "tests/model/test_offload.py",
            "tests/parallel/test_ring_kernel.py",
        ),
        gpu_tests_s=45.0,
        test_timeout_s=120.0,
        offload_piece_bytes=64 << 20,
        reference_bytes=REFERENCE_BYTES,
    )
    goal = training_point(("optimized",), TRAINING_GOAL_FRAMES, 518, README_PRECISION)
    trial = dataclasses.replace(plan, training=(*plan.training, goal))
    if trial.total_seconds() <= budget_s:
        plan = trial
    square: list[Point] = []
    for precision in (README_PRECISION, CAST_PRECISION):
        for frames in (8, 100, 200):
            point = Point("aggregator", AGGREGATORS, frames, 518, 518, precision)
            trial = dataclasses.replace(plan, square=(*square, point))
            if trial.total_seconds() <= budget_s:
                square.append(point)
    return dataclasses.replace(plan, square=tuple(square))


def dry_run_plan() -> Plan:
    """The tiny preset made 12 layers deep at 28x28, so its kept layers outweigh its images
    and the optimized aggregator needs clearly less than the full one; its memory cap is
    applied in fp32, which the estimator counts exactly on a CPU; chunks of 64 tokens, so a
    few hundred tokens make several; its 128-frame points (1,152 tokens) give the measured
    rate; its training point trains the aggregator alone (the tiny preset's heads keep VGGT's
    widths, 218 MB of weights: their steps would add about 10 s on a CPU core)."""
    architecture = dataclasses.replace(load_preset("tiny").architecture, depth=12, img_size=28)
    side = (28, 28)
    alone = Training(("aggregator",), TRAINING.checkpoint)
    return Plan(
        model="tiny preset made 12 layers deep, random seeded weights",
        architecture=architecture,
        rates=Rates(
            tflops=0.05,
            forward_overhead_s=0.05,
            build_s=0.2,
            history_s=0.0,
            preflight_s=0.5,
            context_s=0.5,
            report_s=1.0,
            estimate_base_s=1.0,
        ),
        aggregator=like_for_like((2, 128), side),
        cap=Point("aggregator", ("optimized",), 16, *side, get_precision("fp32")),
        chunking=(Point("aggregator", (UNCHUNKED, CHUNKED), 64, *side, README_PRECISION),),
        offload=Point("model", ("optimized", OFFLOAD), 2, *side, README_PRECISION),
        training=(
            Point("aggregator", AGGREGATORS, 2, *side, README_PRECISION, warmup=1, training=alone),
        ),
        square=(Point("aggregator", AGGREGATORS, 2, 28, 28, CAST_PRECISION),),
        pytest_paths=("tests/profiling/test_gpu.py",),
        gpu_tests_s=20.0,
        test_timeout_s=60.0,
        offload_piece_bytes=4 << 10,
        min_chunk_tokens=64,
        rate_min_tokens=1_000,
    )


def build_offload(component: str, architecture: Architecture, piece_bytes: int) -> nn.Module:
    """`VGGTOptimized(offload_outputs=True)`: kept layers in page-locked host memory, copied
    out in pieces of at most `piece_bytes`."""
    from vggt.models.vggt_vram_optimized import VGGTOptimized

    if component != "model":
        raise ValueError(f"the {OFFLOAD} variant is a whole model, not a {component}")
    model = VGGTOptimized(**architecture.model_kwargs(), offload_outputs=True)
    model.aggregator.offload_piece_bytes = piece_bytes
    return model


def build_chunked(
    component: str, architecture: Architecture, chunked: bool, min_chunk_tokens: int | None
) -> nn.Module:
    """The optimized aggregator with its default transient budget and `min_chunk_tokens`
    (None: the device's minimum), or unchunked: `transient_budget=None`, each in-place block
    on the whole residual stream at once."""
    from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized

    if component != "aggregator":
        raise ValueError(f"the chunking variants are aggregators, not a {component}")
    return AggregatorVramOptimized(
        **architecture.aggregator_kwargs(),
        selected_layer_idx=architecture.head_layers(),
        transient_budget=1.0 if chunked else None,
        min_chunk_tokens=min_chunk_tokens,
    )


def register_evidence_variants(plan: Plan) -> None:
    """Register the offload and chunking variants with the plan's piece size and chunk floor
    (once per process: the first plan's)."""
    offload = functools.partial(build_offload, piece_bytes=plan.offload_piece_bytes)
    floor = plan.min_chunk_tokens
    unchunked = functools.partial(build_chunked, chunked=False, min_chunk_tokens=None)
    chunked = functools.partial(build_chunked, chunked=True, min_chunk_tokens=floor)
    for name, build in ((OFFLOAD, offload), (UNCHUNKED, unchunked), (CHUNKED, chunked)):
        if name not in variant_names():
            register_variant(Variant(name, build))
