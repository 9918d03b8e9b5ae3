"""VGGT and VGGTOptimized reproduce the reference outputs under the deterministic recipe."""

from pathlib import Path

import pytest
import torch

from tests.support.compare import rel_l2
from tests.support.recipe import (
    GOLDEN_FILE,
    TOLERANCE,
    TRACKER_BOUNDS,
    recipe_images,
    recipe_query_points,
)
from vggt.models.vggt import VGGT
from vggt.models.vggt_vram_optimized import VGGTOptimized
from vggt.streaming.chunks import ChunkPolicy

pytestmark = pytest.mark.slow

PREDICTIONS = ["pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"]


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN_FILE, weights_only=True)


@pytest.fixture(scope="module")
def recipe_weights(recipe_weights_file: Path) -> dict[str, torch.Tensor]:
    return torch.load(recipe_weights_file, mmap=True, weights_only=True)


@pytest.fixture(scope="module")
def inputs(golden: dict) -> tuple[torch.Tensor, torch.Tensor]:
    recipe = golden["recipe"]
    batch, frames, _, height, width = recipe["images"]
    images = recipe_images(batch, frames, height, width, seed=recipe["images_seed"])
    count = recipe["query_points"][1]
    points = recipe_query_points(batch, count, height, width, seed=recipe["query_points_seed"])
    return images, points


def build(model_class: type, weights: dict[str, torch.Tensor]) -> VGGT:
    with torch.device("meta"):
        model = model_class()
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def check_predictions(predictions: dict, golden: dict) -> None:
    for name in PREDICTIONS:
        assert predictions[name].shape == golden[name].shape, name
        assert rel_l2(predictions[name], golden[name]) <= TOLERANCE, name
    stacked = torch.stack(predictions["pose_enc_list"])
    assert rel_l2(stacked, golden["pose_enc_list"]) <= TOLERANCE
    for name, bound in TRACKER_BOUNDS.items():
        assert predictions[name].shape == golden[name].shape, name
        assert rel_l2(predictions[name], golden[name]) <= bound, name


def test_vggt_matches_reference(recipe_weights: dict, golden: dict, inputs: tuple) -> None:
    model = build(VGGT, recipe_weights)
    images, points = inputs
    captured = {}

    def keep_patch_tokens(module, args, output) -> None:
        captured["patch"] = output["x_norm_patchtokens"]

    model.aggregator.patch_embed.register_forward_hook(keep_patch_tokens)
    with torch.no_grad():
        layers, patch_start_idx = model.aggregator(images)
        predictions = model(images, query_points=points)
    assert patch_start_idx == golden["patch_start_idx"]
    patch_reference = golden["aggregator.patch_embed.x_norm_patchtokens"]
    assert rel_l2(captured["patch"], patch_reference) <= TOLERANCE
    for index in (0, 4, 11, 17, 23):
        assert rel_l2(layers[index], golden[f"aggregator.layer{index}"]) <= TOLERANCE, index
    check_predictions(predictions, golden)
    assert torch.equal(predictions["images"], images)


@pytest.mark.parametrize("min_chunk_tokens", [256, 16], ids=["default-chunks", "streamed-kv"])
def test_vggt_optimized_matches_reference(
    recipe_weights: dict, golden: dict, inputs: tuple, min_chunk_tokens: int
) -> None:
    model = build(VGGTOptimized, recipe_weights)
    model.aggregator.block_runner.policy = ChunkPolicy(min_chunk_tokens=min_chunk_tokens)
    images, points = inputs
    with torch.no_grad():
        view, _, kept = model.aggregator(images)
        predictions = model(images, query_points=points)
    assert kept == [4, 11, 17, 23]
    for index in kept:
        assert rel_l2(view[index], golden[f"aggregator.layer{index}"]) <= TOLERANCE, index
    check_predictions(predictions, golden)
