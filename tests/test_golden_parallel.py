"""The golden recipe reproduced with the sequence split over two gloo ranks (full VGGT-1B
from the recipe weights on each rank; each passes one of the two frames)."""

from pathlib import Path

import pytest

from tests.test_golden import TOLERANCE, TRACKER_BOUNDS
from tests.test_sequence_parallel import run_cases

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_golden_recipe_on_two_ranks(tmp_path: Path) -> None:
    case = {"name": "golden", "kind": "golden", "attention": "ulysses"}
    findings = run_cases(tmp_path, 2, [case])
    for rank, found in enumerate(findings):
        result = found["golden"]
        assert result["frames"] == [rank, rank + 1]
        for name, error in result["errors"].items():
            assert error <= TRACKER_BOUNDS.get(name, TOLERANCE), (rank, name, error)
