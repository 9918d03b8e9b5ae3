"""Small configurations and comparison helpers shared by the tests."""

import json
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
GOLDEN_FILE = DATA / "vggt1b_recipe0_b1_s2_140x140.pt"

# A small aggregator that runs in milliseconds; head_dim 16 keeps RoPE's quarter split.
SMALL_AGGREGATOR = {
    "img_size": 56,
    "patch_size": 14,
    "embed_dim": 32,
    "depth": 6,
    "num_heads": 2,
    "patch_embed": "conv",
}
# A small VGGT whose heads read layers 1, 2, 4 and 5 of a 6-layer aggregator.
SMALL_VGGT = {
    "img_size": 56,
    "patch_size": 14,
    "embed_dim": 32,
    "depth": 6,
    "num_heads": 2,
    "patch_embed": "conv",
    "intermediate_layer_idx": (1, 2, 4, 5),
}
# The configuration the memory targets of the optimized-aggregator issue are stated for.
MEMORY_AGGREGATOR = {
    "embed_dim": 256,
    "depth": 24,
    "num_heads": 4,
    "img_size": 224,
    "patch_size": 14,
    "patch_embed": "conv",
}


def manifest() -> dict[str, list[int]]:
    """Name -> shape of every entry of the published VGGT-1B state dict, in order."""
    return json.loads((DATA / "vggt1b_state_dict.json").read_text())["state_dict"]


def rel_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """||ours - reference|| / ||reference|| in float64."""
    diff = ours.double() - reference.double()
    return (diff.norm() / reference.double().norm()).item()


def seeded_images(batch: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Reproducible images in [0, 1]."""
    return torch.rand(
        batch, frames, 3, height, width, generator=torch.Generator().manual_seed(seed)
    )


def assert_same_predictions(actual: dict, expected: dict) -> None:
    """Both prediction dicts hold the same names and bit-identical tensors (lists item by item)."""
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        values = value if isinstance(value, list) else [value]
        others = actual[name] if isinstance(value, list) else [actual[name]]
        for a, b in zip(others, values, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
