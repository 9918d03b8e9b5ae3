"""The fit over budgets: answers read off a line through three passes where the requirement
grows affinely, the exact search everywhere else, and how many passes each takes."""

from collections.abc import Callable

from profiling.sweep.presets import load_preset
from vggt.memory.estimate import Estimate, FakeModel
from vggt.memory.fit import max_frames, max_frames_by_budget
from vggt.precision import get_precision

GIB = 1 << 30
MIB = 1 << 20


class RequirementModel:
    """Stands in for FakeModel: `required(frames)` bytes per pass, affine from `start` frames
    on (where the fit may trace) over `world_size` ranks, remembering estimates and counting
    passes as FakeModel does."""

    def __init__(self, required: Callable[[int], int], start: int = 1, world_size: int = 1) -> None:
        self.required = required
        self.start = start
        self.world_size = world_size
        self.passes = 0
        self.traced: dict[int, Estimate] = {}

    def affine_from(self, batch: int, height: int, width: int) -> int:
        return self.start

    def estimate(self, frames: int, batch: int, height: int, width: int) -> Estimate:
        if frames not in self.traced:
            self.passes += 1
            self.traced[frames] = self.line_estimate(frames)
        return self.traced[frames]

    def line_estimate(self, frames: int) -> Estimate:
        need = self.required(frames)
        return Estimate(
            variant="line",
            frames=frames,
            world_size=self.world_size,
            rank_frames=-(-frames // self.world_size),
            precision="autocast",
            live_peak_bytes=need,
            weights_bytes=0,
            input_bytes=0,
            output_bytes=0,
            transient_bytes=need,
            host_bytes=0,
            allocated_bytes=need,
            reserved_bound_bytes=need,
            reserved_peak_bytes=need,
            allocations=1,
            cuda_context_bytes=0,
            nccl_bytes=0,
            required_bytes=need,
        )


def affine(frames: int) -> int:
    """10 GiB plus 100 MiB per frame."""
    return 10 * GIB + 100 * MIB * frames


# Frame counts doubling from 1 below the line's start at 40 frames: 1, 2, 4, 8, 16, 32.
GALLOP_PASSES = 6


def test_an_affine_requirement_is_read_off_the_line_in_three_passes() -> None:
    model = RequirementModel(affine, start=20)
    budgets = [24 * GIB, 40 * GIB, 48 * GIB, 80 * GIB]
    answers = max_frames_by_budget(model, budgets, 1, 518, 518)
    # (budget - 10 GiB) / 100 MiB, rounded down: 14336 / 100, 30720 / 100, ...
    assert answers == {24 * GIB: 143, 40 * GIB: 307, 48 * GIB: 389, 80 * GIB: 716}
    assert model.passes == GALLOP_PASSES + 3
    for budget, frames in answers.items():
        assert max_frames(RequirementModel(affine), budget, 1, 518, 518) == frames


def test_answers_do_not_depend_on_earlier_passes_or_other_budgets() -> None:
    def kinked(frames: int) -> int:
        return affine(frames) + max(0, frames - 300) * 50 * MIB

    used = RequirementModel(kinked, start=20)
    for frames in (1, 200, 1000):
        used.estimate(frames, 1, 518, 518)
    together = max_frames_by_budget(used, [24 * GIB, 48 * GIB, 80 * GIB], 1, 518, 518)
    for budget, frames in together.items():
        alone = max_frames_by_budget(RequirementModel(kinked, start=20), [budget], 1, 518, 518)
        assert alone == {budget: frames}
    # the line starts at twice the affine start
    assert {40, 160, 640} <= set(used.traced)


def test_a_wiggle_under_the_margin_still_reads_off_the_line() -> None:
    def wiggly(frames: int) -> int:
        return affine(frames) + (frames % 3) * 64 * 1024

    model = RequirementModel(wiggly, start=20)
    answers = max_frames_by_budget(model, [24 * GIB + 50 * MIB], 1, 518, 518)
    assert answers == {24 * GIB + 50 * MIB: 143}
    assert model.passes == GALLOP_PASSES + 3


def test_a_budget_within_the_margin_is_answered_conservatively() -> None:
    def wiggly(frames: int) -> int:
        return affine(frames) + (frames % 3) * 64 * 1024

    model = RequirementModel(wiggly, start=20)
    budget = wiggly(150)
    answers = max_frames_by_budget(model, [budget], 1, 518, 518)
    assert answers == {budget: 149}
    assert model.passes == GALLOP_PASSES + 3
    assert max_frames(RequirementModel(wiggly), budget, 1, 518, 518) == 150


def test_a_kinked_requirement_is_searched_exactly() -> None:
    def kinked(frames: int) -> int:
        return affine(frames) + max(0, frames - 300) * 50 * MIB

    model = RequirementModel(kinked, start=20)
    budgets = [24 * GIB, 48 * GIB, 80 * GIB]
    answers = max_frames_by_budget(model, budgets, 1, 518, 518)
    assert answers == {
        budget: max_frames(RequirementModel(kinked), budget, 1, 518, 518) for budget in budgets
    }
    # 80 GiB: 10 GiB + 100 MiB x f + 50 MiB x (f - 300) = 80 GiB at f = 577.8
    assert answers[80 * GIB] == 577


def test_budgets_below_the_affine_regime_are_searched_exactly() -> None:
    model = RequirementModel(affine, start=200)
    answers = max_frames_by_budget(model, [12 * GIB], 1, 518, 518)
    assert answers == {12 * GIB: 20}
    assert max_frames_by_budget(RequirementModel(affine, 200), [GIB], 1, 518, 518) == {GIB: 0}


def test_fit_on_a_small_preset_answers_frame_counts_that_fit() -> None:
    architecture = load_preset("tiny").architecture
    fp32 = get_precision("fp32")
    model = FakeModel("full", "aggregator", architecture, fp32, cuda_context_bytes=0)
    budgets = [40 * MIB, 50 * MIB, 60 * MIB]
    answers = max_frames_by_budget(model, budgets, 1, 56, 56)
    for budget, frames in answers.items():
        assert model.estimate(frames, 1, 56, 56).required_bytes <= budget
        # Conservative: at this size 20 MiB allocator segments, not frames, shape the curve.
        assert 1 <= frames <= max_frames(model, budget, 1, 56, 56)


def test_a_near_affine_requirement_is_searched_in_few_passes() -> None:
    def curved(frames: int) -> int:
        return affine(frames) + frames * frames * 64 * 1024

    budgets = [24 * GIB, 40 * GIB, 48 * GIB, 80 * GIB]
    model = RequirementModel(curved)
    answers = max_frames_by_budget(model, budgets, 1, 518, 518)
    for budget, frames in answers.items():
        assert curved(frames) <= budget < curved(frames + 1)
    assert model.passes <= 3 + 3 * len(budgets)


def per_rank(frames: int, world_size: int = 8) -> int:
    """The busiest of `world_size` ranks: 3 GiB, 200 MiB per frame it holds, 1 MiB per frame of
    the whole sequence."""
    return 3 * GIB + 200 * MIB * -(-frames // world_size) + MIB * frames


def test_split_frames_fit_in_whole_shares_or_the_few_frames_past_one() -> None:
    model = RequirementModel(per_rank, start=64, world_size=8)
    budgets = [24 * GIB, 80 * GIB]
    answers = max_frames_by_budget(model, budgets, 1, 518, 518)
    for budget, frames in answers.items():
        assert per_rank(frames) <= budget < per_rank(frames + 1)
    # 80 GiB: 3 GiB + 200 MiB x s + 8 MiB x s <= 80 GiB at s = 379 shares, and a 380th frame
    # on the busiest rank passes it; 24 GiB: 103 shares, and 824 + 1 frames need 104 there.
    assert answers == {24 * GIB: 824, 80 * GIB: 3032}
    assert model.passes <= 3 + 3 * len(budgets)
