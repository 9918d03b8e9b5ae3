"""The tests' input images."""

import torch


def seeded_images(batch: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Reproducible images in [0, 1]."""
    return torch.rand(
        batch, frames, 3, height, width, generator=torch.Generator().manual_seed(seed)
    )
