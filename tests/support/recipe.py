"""The golden file's deterministic weight and input recipe and the tolerances its outputs are
reproduced to (tests/data/README.md states both)."""

import math
from collections.abc import Mapping, Sequence

import torch

from tests.support.repo import DATA

GOLDEN_FILE = DATA / "vggt1b_recipe0_b1_s2_140x140.pt"
TOLERANCE = 1e-4
TRACKER_BOUNDS = {"track": 3e-3, "vis": 1.5e-1, "conf": 1.5e-1}


def recipe_state_dict(
    shapes: Mapping[str, Sequence[int]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Draw every tensor from one float64 generator, in the order of `shapes`."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in shapes.items():
        noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float64)
        leaf = name.rsplit(".", 1)[-1]
        if len(shape) >= 2:
            value = noise / math.sqrt(math.prod(shape[1:]))
        elif leaf == "gamma":
            value = 0.1 + 0.01 * noise
        elif leaf == "weight":
            value = 1.0 + 0.05 * noise
        else:
            value = 0.02 * noise
        weights[name] = value.to(torch.float32)
    return weights


def recipe_images(batch: int, frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    """Uniform images in [0, 1] of shape [B, S, 3, H, W]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, height, width, generator=generator)


def recipe_query_points(
    batch: int, count: int, height: int, width: int, seed: int = 2
) -> torch.Tensor:
    """Uniform pixel coordinates (x, y) of shape [B, N, 2]."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.tensor([width - 1, height - 1], dtype=torch.float32)
    return torch.rand(batch, count, 2, generator=generator) * scale
