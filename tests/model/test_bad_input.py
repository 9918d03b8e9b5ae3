"""Bad input raises ValueError naming the problem, before any block runs."""

import pytest
import torch

from tests.support.configs import SMALL_AGGREGATOR, SMALL_VGGT
from tests.support.images import seeded_images
from vggt.models.aggregator import Aggregator
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized
from vggt.models.vggt import VGGT


@pytest.fixture(scope="module")
def model() -> VGGT:
    return VGGT(**SMALL_VGGT).eval()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 56, 56), "must be \\[S, 3, H, W\\] or \\[B, S, 3, H, W\\]"),
        ((1, 1, 1, 3, 56, 56), "must be \\[S, 3, H, W\\] or \\[B, S, 3, H, W\\]"),
        ((1, 2, 4, 56, 56), "3 channels"),
        ((1, 2, 3, 56, 50), "multiple of the patch size"),
        ((1, 2, 3, 57, 56), "multiple of the patch size"),
        ((1, 0, 3, 56, 56), "at least one frame"),
    ],
)
def test_bad_images(model: VGGT, shape: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model(torch.rand(shape))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((4, 3), "query_points must be"),
        ((1, 4, 2, 1), "query_points must be"),
        ((2, 4, 2), "batch 2 != images batch 1"),
    ],
)
def test_bad_query_points(model: VGGT, shape: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model(torch.rand(1, 2, 3, 140, 140), query_points=torch.rand(shape))


def test_integer_images_are_refused(model: VGGT) -> None:
    pixels = torch.randint(0, 256, (1, 2, 3, 56, 56), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"floating point in \[0, 1\], got torch.uint8"):
        model(pixels)


def test_float64_images_run_on_float32_weights(model: VGGT) -> None:
    images = seeded_images(1, 2, 56, 56)
    with torch.no_grad():
        expected = model(images)
        actual = model(images.double())
    torch.testing.assert_close(actual["depth"], expected["depth"], rtol=1e-5, atol=1e-6)


def test_images_must_be_a_tensor(model: VGGT) -> None:
    with pytest.raises(ValueError, match="images must be"):
        model([[0.0]])


def test_unknown_patch_embed() -> None:
    with pytest.raises(ValueError, match="unknown patch_embed 'dinov3'"):
        Aggregator(**{**SMALL_AGGREGATOR, "patch_embed": "dinov3"})


def test_aggregator_needs_five_dims() -> None:
    with pytest.raises(ValueError, match="\\[B, S, 3, H, W\\]"):
        Aggregator(**SMALL_AGGREGATOR)(torch.rand(2, 3, 56, 56))


def test_head_layers_must_exist() -> None:
    with pytest.raises(ValueError, match="out of range for depth 6"):
        VGGT(**{**SMALL_VGGT, "intermediate_layer_idx": (1, 2, 4, 6)})


def test_optimized_aggregator_checks_before_work() -> None:
    with pytest.raises(ValueError, match="\\[B, S, 3, H, W\\]"):
        AggregatorVramOptimized(**SMALL_AGGREGATOR)(torch.rand(2, 3, 56, 56))
