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
    on (where the fit may trace), counting passes."""

    def __init__(self, required: Callable[[int], int], start: int = 1) -> None:
        self.required = required
        self.start = start
        self.passes = 0

    def affine_from(self, batch: int, height: int, width: int) -> int:
        return self.start

    def estimate(self, frames: int, batch: int, height: int, width: int) -> Estimate:
        self.passes += 1
        need = self.required(frames)
        return Estimate(
            variant="line",
            frames=frames,
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
    assert sorted(cache) == [1, 20, 200, 1000]


def test_a_wiggle_under_the_margin_still_reads_off_the_line() -> None:
    def wiggly(frames: int) -> int:
        return affine(frames) + (frames % 3) * 64 * 1024

    model = RequirementModel(wiggly, start=20)
    answers = max_frames_by_budget(model, [24 * GIB + 50 * MIB], 1, 518, 518)
    assert answers == {24 * GIB + 50 * MIB: 143}
    assert model.passes == 3


def test_a_budget_at_the_line_falls_back_to_the_exact_search() -> None:
    def wiggly(frames: int) -> int:
        return affine(frames) + (frames % 3) * 64 * 1024

    model = RequirementModel(wiggly, start=20)
    budget = wiggly(150)
    answers = max_frames_by_budget(model, [budget], 1, 518, 518)
    assert answers == {budget: 150}
    assert model.passes > 3


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


def test_fit_on_a_small_preset_finds_each_budgets_boundary() -> None:
    architecture = load_preset("tiny").architecture
    model = FakeModel("full", "aggregator", architecture, torch.float32, cuda_context_bytes=0)
    budgets = [40 * MIB, 60 * MIB, 90 * MIB]
    answers = max_frames_by_budget(model, budgets, 1, 56, 56)
    for budget, frames in answers.items():
        assert model.estimate(frames, 1, 56, 56).required_bytes <= budget
        assert model.estimate(frames + 1, 1, 56, 56).required_bytes > budget
