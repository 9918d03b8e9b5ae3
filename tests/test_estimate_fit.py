"""The fit over budgets: answers read off a line through three passes where the requirement
grows affinely, the exact search everywhere else, and how many passes each takes."""

from collections.abc import Callable

import torch

from profiling.estimate.fake_model import Estimate, FakeModel
from profiling.estimate.fit import max_frames, max_frames_by_budget
from profiling.sweep.presets import load_preset

GIB = 1 << 30
MIB = 1 << 20


class RequirementModel:
    """Stands in for FakeModel: `required(frames)` bytes per pass, affine from `start` frames
    on (where the fit may trace) over `world_size` ranks, counting passes."""

    def __init__(self, required: Callable[[int], int], start: int = 1, world_size: int = 1) -> None:
        self.required = required
        self.start = start
        self.world_size = world_size
        self.passes = 0

    def affine_from(self, batch: int, height: int, width: int) -> int:
        return self.start

    def estimate(self, frames: int, batch: int, height: int, width: int) -> Estimate:
        self.passes += 1
        need = self.required(frames)
        return Estimate(
            variant="line",
            frames=frames,
            world_size=self.world_size,
            rank_frames=-(-frames // self.world_size),
            dtype_mode="autocast",
            peak_bytes=need,
            weights_bytes=0,
            input_bytes=0,
            output_bytes=0,
            transient_bytes=need,
            host_bytes=0,
            allocated_bytes=need,
            reserved_bound_bytes=need,
            cuda_context_bytes=0,
            required_bytes=need,
        )


def affine(frames: int) -> int:
    """10 GiB plus 100 MiB per frame."""
    return 10 * GIB + 100 * MIB * frames


def test_an_affine_requirement_is_read_off_the_line_in_three_passes() -> None:
    model = RequirementModel(affine, start=20)
    budgets = [24 * GIB, 40 * GIB, 48 * GIB, 80 * GIB]
    answers = max_frames_by_budget(model, budgets, 1, 518, 518)
    # (budget - 10 GiB) / 100 MiB, rounded down: 14336 / 100, 30720 / 100, ...
    assert answers == {24 * GIB: 143, 40 * GIB: 307, 48 * GIB: 389, 80 * GIB: 716}
    assert model.passes == 3
    for budget, frames in answers.items():
        assert max_frames(RequirementModel(affine), budget, 1, 518, 518) == frames


def test_cached_frame_counts_take_the_place_of_new_points() -> None:
    model = RequirementModel(affine, start=20)
    cache = {frames: model.estimate(frames, 1, 518, 518) for frames in (1, 200, 1000)}
    max_frames_by_budget(model, [24 * GIB], 1, 518, 518, cache)
    assert model.passes == 4
    assert sorted(cache) == [1, 40, 200, 1000]  # the line starts at twice the affine start


def test_a_wiggle_under_the_margin_still_reads_off_the_line() -> None:
    def wiggly(frames: int) -> int:
        return affine(frames) + (frames % 3) * 64 * 1024

    model = RequirementModel(wiggly, start=20)
    answers = max_frames_by_budget(model, [24 * GIB + 50 * MIB], 1, 518, 518)
    assert answers == {24 * GIB + 50 * MIB: 143}
    assert model.passes == 3


def test_a_budget_within_the_margin_is_answered_conservatively() -> None:
    def wiggly(frames: int) -> int:
        return affine(frames) + (frames % 3) * 64 * 1024

    model = RequirementModel(wiggly, start=20)
    budget = wiggly(150)
    answers = max_frames_by_budget(model, [budget], 1, 518, 518)
    assert answers == {budget: 149}
    assert model.passes == 3
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
    model = FakeModel("full", "aggregator", architecture, torch.float32, cuda_context_bytes=0)
    budgets = [40 * MIB, 60 * MIB, 90 * MIB]
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
    # on rank 0 passes it; 24 GiB: 103 shares, and 824 + 1 frames need 104 on rank 0.
    assert answers == {24 * GIB: 824, 80 * GIB: 3032}
    assert model.passes <= 3 + 3 * len(budgets)
