"""The training step's parts: what trains, the loss, the phases and the update."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.support.configs import SMALL_VGGT
from tests.support.images import seeded_images
from tests.support.training import with_small_heads
from vggt.layers.block import Block
from vggt.models.vggt_vram_optimized import VGGTOptimized
from vggt.parallel.group import SimulatedGroup
from vggt.parallel.sequence import SequenceParallelBlocks
from vggt.precision import get_precision
from vggt.streaming.chunks import ChunkPolicy
from vggt.training.checkpointing import check_policy
from vggt.training.loss import seeded_targets, training_loss
from vggt.training.step import PHASES, TrainingStep
from vggt.training.trainable import PRESETS, parse_trainable, set_trainable


def small_model(**changes) -> VGGTOptimized:
    torch.manual_seed(0)
    return with_small_heads(VGGTOptimized(**{**SMALL_VGGT, "enable_track": False, **changes}))


def test_trainable_names_presets_and_parts() -> None:
    assert parse_trainable("frozen-aggregator") == ("camera", "depth", "point")
    assert parse_trainable(" point , aggregator") == ("aggregator", "point")
    with pytest.raises(ValueError, match=r"unknown trainable part.*'heads'.*frozen-aggregator"):
        parse_trainable("camera,heads")
    with pytest.raises(ValueError, match="unknown trainable"):
        parse_trainable(" , ")
    with pytest.raises(ValueError, match=r"unknown checkpoint policy 'all'.*selective"):
        check_policy("all")


def test_set_trainable_freezes_the_rest() -> None:
    model = small_model()
    trained = set_trainable(model, PRESETS["frozen-aggregator"])
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {name.split(".")[0] for name in names} == {"camera_head", "depth_head", "point_head"}
    assert len(trained) == len(names)
    set_trainable(model, ("aggregator",))
    assert model.aggregator.patch_embed.proj.weight.requires_grad
    assert not model.camera_head.pose_branch.fc1.weight.requires_grad
    with pytest.raises(ValueError, match="no track head"):
        set_trainable(model, ("track",))
    with pytest.raises(ValueError, match="aggregator alone trains only"):
        set_trainable(model.aggregator, ("camera",))


@given(frames=st.integers(2, 5), split=st.integers(1, 4))
def test_loss_over_split_frames_adds_up_to_the_whole(frames: int, split: int) -> None:
    split = min(split, frames - 1)
    targets = seeded_targets(1, frames, 4, 6, query_points=3, seed=frames)
    generator = torch.Generator().manual_seed(split)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator)

    predictions = {
        "pose_enc_list": [rand(1, frames, 9) for _ in range(3)],
        "depth": rand(1, frames, 4, 6, 1),
        "depth_conf": 1 + rand(1, frames, 4, 6),
        "world_points": rand(1, frames, 4, 6, 3),
        "world_points_conf": 1 + rand(1, frames, 4, 6),
        "track": rand(1, frames, 3, 2),
        "vis": rand(1, frames, 3),
    }
    whole = training_loss(predictions, targets)
    parts = []
    for start, end in ((0, split), (split, frames)):
        piece = {
            key: [v[:, start:end] for v in value]
            if isinstance(value, list)
            else value[:, start:end]
            for key, value in predictions.items()
        }
        parts.append(training_loss(piece, targets.frames(start, end), total_frames=frames))
    for name, value in whole.items():
        torch.testing.assert_close(parts[0][name] + parts[1][name], value)
    assert set(whole) == {"camera", "depth", "point", "track", "total"}


def test_step_runs_each_phase_and_updates_only_trainable_weights() -> None:
    model = small_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    step = TrainingStep(model, PRESETS["frozen-aggregator"], "blocks", get_precision("autocast"))
    seen = []

    class Phase:
        def __init__(self, name: str) -> None:
            self.name = name

        def __enter__(self) -> None:
            seen.append(self.name)

        def __exit__(self, *exc) -> None:
            if self.name == "backward":
                seen.append(step.gradient_bytes)

    images = seeded_images(1, 3, 56, 56)
    losses = step(images, seeded_targets(1, 3, 56, 56), phase=Phase)
    assert seen[0] == "forward" and seen[1] == "backward" and seen[3] == "optimizer"
    assert tuple(name for name in seen if isinstance(name, str)) == PHASES
    assert losses["total"].isfinite() and not losses["total"].requires_grad
    expected = sum(p.numel() * 4 for p in step.parameters)
    assert step.gradient_bytes == expected
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and {name.split(".")[0] for name in changed} <= {
        "camera_head",
        "depth_head",
        "point_head",
    }
    assert all(p.grad is None for p in model.parameters())


def test_training_over_ranks_refuses_ring_attention() -> None:
    runner = SequenceParallelBlocks(ChunkPolicy(), SimulatedGroup(0, 3), "ring", heads=2)
    block = Block(dim=32, num_heads=2)
    assert runner.with_autograd(block, across_frames=False) is block
    with pytest.raises(RuntimeError, match="runs ulysses attention, not ring"):
        runner.with_autograd(block, across_frames=True)
