"""The largest frame count that fits a device memory size: a frame count fits M bytes when its
estimate's requirement is at most M (`Estimate.required_bytes`: reserved bound, CUDA context
and, split over ranks, NCCL's buffers; a training step's `TrainingEstimate.required_bytes`
alike, from a `FakeTrainingModel`).

`max_frames` searches exactly: a gallop from a guess, then interpolation between the traced
frame counts on either side of the budget (bisection where that does not shrink them fast).
`max_frames_by_budget` answers several budgets from few passes: frame counts double from one
per rank until the requirement outgrows the budget (then the exact search) or grows affinely
with the frame count; there it traces three frame counts and, when they are collinear, reads
each budget's answer off the line, conservatively by the line's margin (WIGGLE_BYTES, the
residual, and the bend a parabola through the three would show); any other budget gets the
exact search. Split over W ranks the line runs through multiples of W and answers in whole
shares.
"""

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from vggt.memory.estimate import FakeModel

SEARCH_LIMIT = 1 << 20
# Frame counts of the line, as multiples of the first frame count of the affine regime. The
# line starts at twice that count: just past it the near-equal chunks round to few per stream and
# bend the requirement (VGGT-1B, bf16 cast: 339 MB off the line through 96, 384 and 1536
# frames; 4.6 MB through 192, 768 and 3072, whose answers equal the exact search's).
LINE_MULTIPLES = (2, 8, 32)
# How far the requirement may stray from affine growth in frames: three traced requirements
# are collinear when they lie within it of their line, and an answer is read off the line only
# where the line clears the budget by more than it (the residuals of three passes can miss the
# wiggle, e.g. when all three sit at its top). The chunks of the streamed blocks hold
# ceil(tokens / count) tokens, less than one token off their affine share, and each
# chunk-sized temporary is at most TRANSIENT_WIDTHS (8) C-wide fp32 tensors: 32 KiB per chunk
# for C = 1024, some hundred chunk temporaries at a peak; the allocator rounds each of a few
# hundred live blocks up to 512 B; large segments round up to 2 MiB.
WIGGLE_BYTES = 4 << 20
# The caching allocator's segment fits make the reserved bound jitter between neighbouring
# frame counts (VGGT-1B: tens of MiB off a line over 60 GiB of rise); traced requirements
# this close to their line, relative to its rise, still count as collinear.
COLLINEAR_FRACTION = Fraction(1, 400)


class Requirement(Protocol):
    """What the search reads of an estimate (`Estimate`, `TrainingEstimate`)."""

    @property
    def required_bytes(self) -> int:
        """Bytes that must be free on the device."""


Cache = dict[int, Requirement]


def required_bytes(
    model: FakeModel, frames: int, batch: int, height: int, width: int, cache: Cache
) -> int:
    """The requirement of `frames` frames, estimated once per frame count (kept in `cache`)."""
    if frames not in cache:
        cache[frames] = model.estimate(frames, batch, height, width)
    return cache[frames].required_bytes


def max_frames(
    model: FakeModel,
    budget: int,
    batch: int,
    height: int,
    width: int,
    cache: Cache | None = None,
    guess: int | None = None,
) -> int:
    """Largest frame count whose required bytes fit `budget` (0 if not even one frame per rank
    fits).

    With no traced frame count above the budget it gallops up from `guess` (default: where
    the parabola through the three largest traced counts meets the budget). Between the
    largest traced count that fits and the smallest above it that does not, it traces where
    the parabola through them and the traced count nearest meets the budget, and the frame
    count next to it on the far side: a smooth requirement is settled in about two passes; a
    bracket that does not shrink by half is bisected. Where the requirement is not monotonic
    in frames it returns a frame count that fits whose successor does not. Pass one `cache`
    (frames -> estimate) per model and size to share passes between budgets.
    """
    cache = {} if cache is None else cache

    def need(frames: int) -> int:
        return required_bytes(model, frames, batch, height, width, cache)

    def fits(frames: int) -> bool:
        return need(frames) <= budget

    if not fits(model.world_size):
        return 0
    low, high = bracket(cache, budget)
    if high is None:
        probe = guess if guess is not None else predict(cache, budget, low, None)
        probe, step = max(low + 1, min(SEARCH_LIMIT, probe)), 1
        while fits(probe):
            if probe == SEARCH_LIMIT:
                return probe
            probe, step = min(SEARCH_LIMIT, probe + step), 2 * step
        low, high = bracket(cache, budget)
    while high - low > 1:
        width_before = high - low
        guess = predict(cache, budget, low, high)
        if guess == low:
            fits(low + 1)
        elif fits(guess):
            if guess + 1 < high:
                fits(guess + 1)
        elif guess - 1 > low:
            fits(guess - 1)
        low, high = bracket(cache, budget)
        if high - low > width_before // 2:
            fits((low + high) // 2)
            low, high = bracket(cache, budget)
    return low


def bracket(cache: Cache, budget: int) -> tuple[int, int | None]:
    """The largest traced frame count that fits `budget` and the smallest larger one that does
    not (None when every larger traced count fits)."""
    low = max(frames for frames, e in cache.items() if e.required_bytes <= budget)
    above = [frames for frames, e in cache.items() if frames > low and e.required_bytes > budget]
    return low, min(above, default=None)


def predict(cache: Cache, budget: int, low: int, high: int | None) -> int:
    """The largest frame count in [low, high) (high None: up to SEARCH_LIMIT) that fits
    `budget` by the parabola through three traced requirements: at `low`, `high` and the
    traced count nearest them, or with no `high` the three largest up to `low` (a line
    through two, when only two are traced)."""
    if high is None:
        nodes = sorted(frames for frames in cache if frames <= low)[-3:]
    else:
        others = sorted(
            (frames for frames in cache if frames not in (low, high)),
            key=lambda frames: min(abs(frames - low), abs(frames - high)),
        )
        nodes = [low, high, *others[:1]]

    def curve(frames: int) -> Fraction:
        total = Fraction(0)
        for node in nodes:
            weight = Fraction(cache[node].required_bytes)
            for other in nodes:
                if other != node:
                    weight *= Fraction(frames - other, node - other)
            total += weight
        return total

    below, above = low, high
    if above is None:
        step = 1
        above = min(SEARCH_LIMIT, low + step)
        while above < SEARCH_LIMIT and curve(above) <= budget:
            below, step = above, 2 * step
            above = min(SEARCH_LIMIT, above + step)
        if curve(above) <= budget:
            return above
    while above - below > 1:
        middle = (below + above) // 2
        below, above = (middle, above) if curve(middle) <= budget else (below, middle)
    return below


@dataclass(frozen=True)
class RequirementLine:
    """The line through the requirement at the fewest and the most frames traced (multiples of
    `step`, the world size), and the largest deviation of the traced requirements from it.

    Split over `step` ranks, the busiest rank holds ceil(frames / step) frames: between two
    multiples of `step` the requirement lies on or above the line (that rank already holds the
    next multiple's share) and at most at the next multiple's value."""

    first: int
    first_bytes: int
    last: int
    last_bytes: int
    residual: int
    curvature: Fraction = Fraction(0)
    step: int = 1

    @property
    def slope(self) -> Fraction:
        """Bytes per frame."""
        return Fraction(self.last_bytes - self.first_bytes, self.last - self.first)

    @property
    def collinear(self) -> bool:
        """Whether every traced requirement lies within WIGGLE_BYTES, or COLLINEAR_FRACTION of
        the line's rise, of the line."""
        rise = self.last_bytes - self.first_bytes
        return self.residual <= max(WIGGLE_BYTES, rise * COLLINEAR_FRACTION)

    def bytes_at(self, frames: int) -> Fraction:
        """The line's requirement at `frames`."""
        return self.first_bytes + self.slope * (frames - self.first)

    def crossing(self, budget: int) -> int | None:
        """Largest frame count whose line requirement fits `budget` (None: the line is flat or
        falls)."""
        if self.slope <= 0:
            return None
        return self.first + math.floor((budget - self.first_bytes) / self.slope)

    def margin(self, frames: int) -> Fraction:
        """How far the requirement at `frames` may be off the line: WIGGLE_BYTES, the largest
        residual, and the bend a quadratic through the traced points would show there (it grows
        as the line is extrapolated past the last traced count)."""
        bend = self.curvature * (frames - self.first) * abs(frames - self.last)
        return WIGGLE_BYTES + self.residual + bend

    def answer(self, budget: int) -> int | None:
        """The largest multiple of `step` whose line requirement plus `margin` fits `budget`:
        it fits, and so do all smaller frame counts of the traced regime. It may fall short of
        the exact boundary by the frames within the margin (a frame at most where the margin
        is under a frame's bytes) and, split over ranks, by the fewer than `step` frames of a
        last uneven share. None where the line does not decide: not collinear, flat, or the
        answer below the traced regime."""
        frames = self.crossing(budget)
        if not self.collinear or frames is None or frames < self.first:
            return None
        frames = min(frames, SEARCH_LIMIT)
        frames -= frames % self.step
        while frames >= self.first and self.bytes_at(frames) + self.margin(frames) > budget:
            frames -= self.step
        return frames if frames >= self.first else None


def line_frames(model: FakeModel, batch: int, height: int, width: int) -> list[int]:
    """The frame counts of the affine regime the line runs through: LINE_MULTIPLES of its first
    frame count (multiples of the world size)."""
    affine = model.affine_from(batch, height, width)
    return [affine * multiple for multiple in LINE_MULTIPLES]


def requirement_line(
    model: FakeModel, batch: int, height: int, width: int, cache: Cache
) -> RequirementLine:
    """Trace the requirement at `line_frames` and fit the line through the outer two; the
    residuals of the inner ones give its largest deviation and its curvature."""
    frames = line_frames(model, batch, height, width)
    values = {count: required_bytes(model, count, batch, height, width, cache) for count in frames}
    first, last = frames[0], frames[-1]
    line = RequirementLine(first, values[first], last, values[last], 0)
    residuals = {count: abs(values[count] - line.bytes_at(count)) for count in frames[1:-1]}
    curvature = max(
        (error / ((count - first) * (last - count)) for count, error in residuals.items()),
        default=Fraction(0),
    )
    residual = math.ceil(max(residuals.values(), default=0))
    return RequirementLine(
        first, values[first], last, values[last], residual, curvature, model.world_size
    )


def max_frames_by_budget(
    model: FakeModel, budgets: list[int], batch: int, height: int, width: int
) -> dict[int, int]:
    """Budget -> the largest frame count that fits it, from few passes. Frame counts double
    from one per rank; a budget they outgrow before the affine regime is searched exactly
    between the last two (`max_frames`), so small budgets cost only small passes. Beyond, the
    answer is read off the line where it decides (`RequirementLine.answer`: conservative
    within the line's margin), and searched exactly elsewhere.

    Each budget's answer depends on nothing but the model, the size and the budget (its search
    sees only its own traced counts; `FakeModel.estimate` remembers the passes), so every
    command that asks gets the same answer."""
    start = model.affine_from(batch, height, width) * LINE_MULTIPLES[0]
    line: RequirementLine | None = None
    line_cache: Cache = {}
    answers = {}
    for budget in budgets:
        cache: Cache = {}
        frames = model.world_size
        while (
            frames < start and required_bytes(model, frames, batch, height, width, cache) <= budget
        ):
            frames = min(start, 2 * frames)
        if frames < start or required_bytes(model, start, batch, height, width, cache) > budget:
            answers[budget] = max_frames(model, budget, batch, height, width, cache)
            continue
        line = line or requirement_line(model, batch, height, width, line_cache)
        answer = line.answer(budget)
        if answer is None:
            guess = line.crossing(budget) if line.collinear else None
            answer = max_frames(model, budget, batch, height, width, dict(line_cache), guess)
        answers[budget] = answer
    return answers
