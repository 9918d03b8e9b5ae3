"""The lean training path is exact: the optimized model's losses and gradients equal the full
model's, whatever is checkpointed and whatever trains (fp32 on the CPU)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.images import seeded_images
from tests.support.training import assert_same_training, losses_and_gradients, model_pair
from vggt.models.aggregator import Aggregator
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized
from vggt.precision import get_precision
from vggt.training.checkpointing import CHECKPOINT_POLICIES
from vggt.training.loss import seeded_targets
from vggt.training.step import TrainingStep
from vggt.training.trainable import PRESETS


@st.composite
def small_models(draw: st.DrawFn) -> dict:
    depth = draw(st.integers(2, 4))
    heads = draw(st.sampled_from([1, 2]))
    layers = tuple(draw(st.lists(st.integers(0, depth - 1), min_size=4, max_size=4)))
    return {
        "img_size": 28,
        "patch_size": 14,
        "embed_dim": 16 * heads,
        "depth": depth,
        "num_heads": heads,
        "patch_embed": "conv",
        "intermediate_layer_idx": layers,
        "enable_track": False,
    }


@settings(max_examples=6)
@given(
    config=small_models(),
    policy=st.sampled_from(CHECKPOINT_POLICIES),
    preset=st.sampled_from(["frozen-aggregator", "unfrozen-aggregator"]),
    frames=st.integers(1, 6),
    height=st.sampled_from([28, 42]),
)
def test_optimized_model_trains_as_the_full_one(config, policy, preset, frames, height) -> None:
    full, optimized = model_pair(config)
    images = seeded_images(1, frames, height, 28)
    targets = seeded_targets(1, frames, height, 28, seed=frames)
    parts = PRESETS[preset]
    full_result = losses_and_gradients(full, parts, "blocks", images, targets)
    assert_same_training(
        full_result, losses_and_gradients(optimized, parts, policy, images, targets)
    )


def test_every_trainable_part_gets_its_gradient_with_tracks() -> None:
    config = {**small_config(), "enable_track": True}
    full, optimized = model_pair(config)
    images = seeded_images(1, 2, 140, 140)
    targets = seeded_targets(1, 2, 140, 140, query_points=4, seed=2)
    points = torch.tensor([[[3.0, 5.0], [100.0, 7.5], [70.0, 70.0], [139.0, 1.0]]])
    results = []
    for model in (full, optimized):
        step = TrainingStep(model, PRESETS["all"], "selective", get_precision("fp32"))
        losses = step.loss(images, targets, points)
        losses["total"].backward()
        assert set(losses) == {"camera", "depth", "point", "track", "total"}
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: v.item() for k, v in losses.items()}, grads))
    assert_same_training(*results)
    trained = {name.split(".")[0] for name in results[1][1]}
    assert trained == {"aggregator", "camera_head", "depth_head", "point_head", "track_head"}


@pytest.mark.parametrize("policy", CHECKPOINT_POLICIES)
def test_optimized_aggregator_trains_as_the_full_one(policy: str) -> None:
    config = {
        k: v
        for k, v in small_config().items()
        if k not in ("intermediate_layer_idx", "enable_track")
    }
    torch.manual_seed(2)
    full = Aggregator(**config)
    optimized = AggregatorVramOptimized(**config, selected_layer_idx=[0, 2])
    optimized.load_state_dict(full.state_dict())
    images = seeded_images(1, 4, 28, 28)
    results = [
        losses_and_gradients(model, ("aggregator",), policy, images, None, layers=[0, 2])
        for model in (full, optimized)
    ]
    assert_same_training(*results)


def small_config() -> dict:
    return {
        "img_size": 28,
        "patch_size": 14,
        "embed_dim": 32,
        "depth": 3,
        "num_heads": 2,
        "patch_embed": "conv",
        "intermediate_layer_idx": (0, 1, 2, 2),
    }
