"""Fixtures that tests in several rooms share."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.support.recipe import GOLDEN_FILE, recipe_state_dict
from tests.support.repo import manifest


@pytest.fixture(scope="session")
def recipe_weights_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The golden recipe's VGGT-1B weights, drawn once a session (half a minute on a CPU core)
    and saved for every test that loads them memory-mapped (ranks then share the pages); the
    file (4.8 GB) is deleted at the session's end."""
    seed = torch.load(GOLDEN_FILE, weights_only=True)["recipe"]["weights_seed"]
    path = tmp_path_factory.mktemp("recipe") / "vggt1b-recipe-weights.pt"
    torch.save(recipe_state_dict(manifest(), seed=seed), path)
    yield path
    path.unlink()
