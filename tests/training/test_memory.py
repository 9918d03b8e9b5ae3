"""What a training forward keeps for backward, as live tensor bytes of a fake pass: the
checkpoint policies order as they claim, and the lean path keeps only what backward needs."""

import pytest
import torch

from tests.support.configs import SMALL_AGGREGATOR
from tests.support.training import with_small_heads
from vggt.memory.tracker import LiveBytesTracker
from vggt.models.aggregator import Aggregator
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized
from vggt.models.vggt import VGGT
from vggt.models.vggt_vram_optimized import VGGTOptimized
from vggt.precision import get_precision
from vggt.training.loss import seeded_targets
from vggt.training.step import TrainingStep
from vggt.training.trainable import PRESETS

CONFIG = {**SMALL_AGGREGATOR, "embed_dim": 64}
LAYERS = [1, 5]
FRAMES, SIZE = 8, 56


def forward_bytes(
    build, parts: tuple[str, ...], policy: str, frames: int = FRAMES
) -> tuple[int, int]:
    """Live bytes after the forward and loss of one training step (weights and input aside),
    what autograd keeps for backward plus the loss, and the peak on the way."""
    with torch.device("meta"):
        module = build()
    mode = LiveBytesTracker("cpu")
    with mode:
        module = module.to_empty(device="cpu")
        step = TrainingStep(module, parts, policy, get_precision("fp32"), layers=LAYERS)
        images = torch.rand(1, frames, 3, SIZE, SIZE)
        targets = seeded_targets(1, frames, SIZE, SIZE)
        with mode.track([*module.parameters(), *module.buffers(), images]) as live:
            losses = step.loss(images, targets)
            kept = live.live_bytes
        del losses
    return kept, live.peak_bytes


def kept_bytes(build, parts: tuple[str, ...], policy: str, frames: int = FRAMES) -> int:
    """What autograd keeps for backward after a training forward (and the loss)."""
    return forward_bytes(build, parts, policy, frames)[0]


def stream_bytes(frames: int = FRAMES) -> int:
    """One fp32 residual stream [frames, P, C]."""
    tokens = (SIZE // 14) ** 2 + 5
    return frames * tokens * CONFIG["embed_dim"] * 4


def full_aggregator() -> Aggregator:
    return Aggregator(**CONFIG)


def optimized_aggregator() -> AggregatorVramOptimized:
    return AggregatorVramOptimized(**CONFIG, selected_layer_idx=LAYERS)


def test_policies_keep_less_from_none_to_selective_to_blocks() -> None:
    kept = {
        p: kept_bytes(full_aggregator, ("aggregator",), p) for p in ("none", "selective", "blocks")
    }
    assert kept["none"] > 2 * kept["selective"]
    # selective keeps each block's attention output too: one stream a block.
    assert kept["selective"] - kept["blocks"] == pytest.approx(
        2 * CONFIG["depth"] * stream_bytes(), rel=0.05
    )


def test_lean_aggregator_keeps_block_inputs_and_its_layers_only() -> None:
    full, full_peak = forward_bytes(full_aggregator, ("aggregator",), "blocks")
    lean, lean_peak = forward_bytes(optimized_aggregator, ("aggregator",), "blocks")
    # Each of the 2 x depth blocks keeps its input, the two kept layers are two streams wide,
    # and the patch embedding keeps the normalised images.
    images = FRAMES * 3 * SIZE * SIZE * 4
    needed = (2 * CONFIG["depth"] + 2 * len(LAYERS)) * stream_bytes() + images
    assert needed <= lean <= 1.02 * needed
    # The full aggregator keeps as much for backward, but concatenates every layer first.
    assert full == lean
    assert full_peak - lean_peak >= (CONFIG["depth"] - len(LAYERS)) * stream_bytes()


def small_model(cls: type) -> callable:
    config = {**CONFIG, "intermediate_layer_idx": (1, 2, 4, 5), "enable_track": False}
    return lambda: with_small_heads(cls(**config))


def test_lean_model_keeps_one_head_chunk_at_a_time() -> None:
    parts = PRESETS["unfrozen-aggregator"]
    growth = {
        cls.__name__: kept_bytes(small_model(cls), parts, "blocks", 24)
        - kept_bytes(small_model(cls), parts, "blocks", 8)
        for cls in (VGGT, VGGTOptimized)
    }
    # 16 more frames: the full model keeps their full-resolution head activations, the lean
    # one their block inputs, kept layers and predictions only.
    assert growth["VGGTOptimized"] < 0.2 * growth["VGGT"]


def test_frozen_aggregator_keeps_nothing_of_its_blocks() -> None:
    frozen = kept_bytes(small_model(VGGTOptimized), PRESETS["frozen-aggregator"], "blocks")
    unfrozen = kept_bytes(small_model(VGGTOptimized), PRESETS["unfrozen-aggregator"], "blocks")
    assert unfrozen - frozen >= 2 * CONFIG["depth"] * stream_bytes()


def tracked_kept_bytes(tracker_policy: str, frames: int = 4) -> int:
    """What a lean model with a small track head keeps for backward after a forward of
    `frames` frames with 8 query points, everything trained and checkpointed by `blocks`
    except the tracker's refinements, checkpointed as `tracker_policy` says."""
    config = {**CONFIG, "intermediate_layer_idx": (1, 2, 4, 5), "enable_track": True}
    with torch.device("meta"):
        module = with_small_heads(VGGTOptimized(**config))
    mode = LiveBytesTracker("cpu")
    with mode:
        module = module.to_empty(device="cpu")
        step = TrainingStep(module, PRESETS["all"], "blocks", get_precision("fp32"))
        module.track_head.tracker.checkpointing = tracker_policy
        images = torch.rand(1, frames, 3, 140, 140)
        points = torch.rand(1, 8, 2) * 139
        targets = seeded_targets(1, frames, 140, 140, query_points=8)
        existing = [*module.parameters(), *module.buffers(), images, points, *targets.tensors()]
        with mode.track(existing) as live:
            losses = step.loss(images, targets, points)
            kept = live.live_bytes
        del losses
    return kept


def test_lean_tracker_keeps_each_refinements_inputs_only() -> None:
    kept = {policy: tracked_kept_bytes(policy) for policy in ("none", "blocks")}
    # Unless checkpointed, each refinement keeps its correlation pyramid, volumes and
    # transformer activations: most of what the whole model keeps (measured 44.3 MB against
    # 7.9 MB); checkpointed, a refinement keeps its coordinates and track features.
    assert kept["blocks"] <= 0.25 * kept["none"]
