"""The largest frame count whose estimated peak fits a memory size."""

from profiling.estimate.fake_model import FakeModel

_SEARCH_LIMIT = 1 << 20


def max_frames(
    model: FakeModel,
    budget: int,
    batch: int,
    height: int,
    width: int,
    cache: dict[int, int] | None = None,
) -> int:
    """Largest frame count whose peak fits `budget` bytes (0 if not even one frame fits).

    Peaks grow almost linearly with the frame count, so a line through two probes lands next
    to the answer; a gallop from there and a bisection make it exact with few passes. Pass the
    same `cache` (frames -> peak) to search several budgets of one model and size.
    """
    cache = {} if cache is None else cache

    def fits(frames: int) -> bool:
        if frames not in cache:
            cache[frames] = model.estimate(frames, batch, height, width).peak_bytes
        return cache[frames] <= budget

    if not fits(1):
        return 0
    probe = 32
    fits(probe)
    slope = max((cache[probe] - cache[1]) / (probe - 1), 1.0)
    guess = int(min(_SEARCH_LIMIT, max(1, 1 + (budget - cache[1]) // slope)))
    step = 1
    if fits(guess):
        low, high = guess, guess + step
        while high <= _SEARCH_LIMIT and fits(high):
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
