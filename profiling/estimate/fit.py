"""The largest frame count that fits a device memory size: a frame count fits M bytes when its
estimate's reserved bound plus the CUDA context is at most M (`Estimate.required_bytes`).

`max_frames` searches exactly: a gallop from a guess, then a bisection. `max_frames_by_budget`
answers several budgets from few passes: it traces the requirement at three frame counts where
it grows affinely with the frame count and, when they are collinear, reads each budget's
answer off the line, keeping it where the line clears the budget on both sides of the answer
by more than the wiggle allowed for (WIGGLE_BYTES, at least the largest residual seen); any
other budget gets the exact search, started at the line's answer.
"""

import math
from dataclasses import dataclass
from fractions import Fraction

from profiling.estimate.fake_model import Estimate, FakeModel

SEARCH_LIMIT = 1 << 20
# Frame counts of the line, as multiples of the first frame count of the affine regime; frame
# counts already estimated in that regime take the place of the larger multiples.
LINE_MULTIPLES = (1, 4, 16)
# How far the requirement may stray from affine growth in frames: three traced requirements
# are collinear when they lie within it of their line, and an answer is read off the line only
# where the line clears the budget by more than it (the residuals of three passes can miss the
# wiggle, e.g. when all three sit at its top). The chunks of the streamed blocks hold
# ceil(tokens / count) tokens, less than one token off their affine share, and each
# chunk-sized temporary is at most TRANSIENT_WIDTHS (8) C-wide fp32 tensors: 32 KiB per chunk
# for C = 1024, some hundred chunk temporaries at a peak; the allocator rounds each of a few
# hundred live blocks up to 512 B; large segments round up to 2 MiB.
WIGGLE_BYTES = 4 << 20

Cache = dict[int, Estimate]


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
    """Largest frame count whose required bytes fit `budget` (0 if not even one frame fits).

    The search starts at `guess` (default: a line through 1 and 32 frames), gallops to a frame
    count that fits next to one that does not, and bisects between them. Where the requirement
    is not monotonic in frames (allocator segments, see fake_model) it returns a frame count
    that fits whose successor does not. Pass one `cache` (frames -> Estimate) per model and
    size to share passes between budgets.
    """
    cache = {} if cache is None else cache

    def fits(frames: int) -> bool:
        return required_bytes(model, frames, batch, height, width, cache) <= budget

    if not fits(1):
        return 0
    if guess is None:
        probe = 32
        fits(probe)
        slope = max((cache[probe].required_bytes - cache[1].required_bytes) / (probe - 1), 1.0)
        guess = int(1 + (budget - cache[1].required_bytes) // slope)
    guess = min(SEARCH_LIMIT, max(1, guess))
    step = 1
    if fits(guess):
        low, high = guess, guess + step
        while high <= SEARCH_LIMIT and fits(high):
            low, step = high, step * 2
            high = low + step
    else:
        low, high = guess - step, guess
        while low > 1 and not fits(low):
            high, step = low, step * 2
            low = max(1, high - step)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class RequirementLine:
    """The line through the requirement at the fewest and the most frames traced, and the
    largest deviation of the traced requirements from it."""

    first: int
    first_bytes: int
    last: int
    last_bytes: int
    residual: int

    @property
    def slope(self) -> Fraction:
        """Bytes per frame."""
        return Fraction(self.last_bytes - self.first_bytes, self.last - self.first)

    @property
    def collinear(self) -> bool:
        """Whether every traced requirement lies within WIGGLE_BYTES of the line."""
        return self.residual <= WIGGLE_BYTES

    def bytes_at(self, frames: int) -> Fraction:
        """The line's requirement at `frames`."""
        return self.first_bytes + self.slope * (frames - self.first)

    def crossing(self, budget: int) -> int | None:
        """Largest frame count whose line requirement fits `budget` (None: the line is flat or
        falls)."""
        if self.slope <= 0:
            return None
        return self.first + math.floor((budget - self.first_bytes) / self.slope)

    def answer(self, budget: int) -> int | None:
        """The line's answer where it decides: collinear, inside the traced regime, and clear of
        the budget by more than WIGGLE_BYTES at the answer and at the frame count after it."""
        frames = self.crossing(budget)
        if not self.collinear or frames is None or not self.first <= frames < SEARCH_LIMIT:
            return None
        below = budget - self.bytes_at(frames)
        above = self.bytes_at(frames + 1) - budget
        return frames if min(below, above) > WIGGLE_BYTES else None


def line_frames(model: FakeModel, batch: int, height: int, width: int, cache: Cache) -> list[int]:
    """Three or more frame counts of the affine regime to fit a line through: its first frame
    count, the cached ones in it, and as many multiples of the first as three need."""
    start = model.affine_from(batch, height, width)
    frames = {start} | {count for count in cache if count > start}
    for multiple in LINE_MULTIPLES[1:]:
        if len(frames) >= len(LINE_MULTIPLES):
            break
        frames.add(start * multiple)
    return sorted(frames)


def requirement_line(
    model: FakeModel, batch: int, height: int, width: int, cache: Cache
) -> RequirementLine:
    """Trace the requirement at `line_frames` and fit the line through the outer two."""
    frames = line_frames(model, batch, height, width, cache)
    values = {count: required_bytes(model, count, batch, height, width, cache) for count in frames}
    first, last = frames[0], frames[-1]
    line = RequirementLine(first, values[first], last, values[last], 0)
    residual = max(abs(values[count] - line.bytes_at(count)) for count in frames)
    return RequirementLine(first, values[first], last, values[last], math.ceil(residual))


def max_frames_by_budget(
    model: FakeModel,
    budgets: list[int],
    batch: int,
    height: int,
    width: int,
    cache: Cache | None = None,
) -> dict[int, int]:
    """Budget -> largest frame count that fits it, as `max_frames` finds it, from few passes."""
    cache = {} if cache is None else cache
    line = requirement_line(model, batch, height, width, cache)
    answers = {}
    for budget in budgets:
        answer = line.answer(budget)
        if answer is None:
            answer = max_frames(model, budget, batch, height, width, cache, line.crossing(budget))
        answers[budget] = answer
    return answers
