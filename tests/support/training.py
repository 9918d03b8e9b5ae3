"""Small-headed model pairs for the training tests, and their comparison."""

import pytest
import torch

from tests.support.compare import rel_l2
from vggt.heads.dpt_head import DPTHead
from vggt.heads.track_head import TrackHead
from vggt.models.vggt import VGGT
from vggt.models.vggt_vram_optimized import VGGTOptimized
from vggt.precision import get_precision
from vggt.training.step import TrainingStep

# Relative L2 of each gradient against the full model's (fp32 on the CPU).
GRADIENT_BOUND = 1e-5


def with_small_heads(model: VGGT) -> VGGT:
    """`model` with narrow depth and point heads (16 features, not 256): the same code at a
    fraction of the time, so a property can try many architectures."""
    for name, dims, activation in (("depth_head", 2, "exp"), ("point_head", 4, "inv_log")):
        head = getattr(model, name)
        small = DPTHead(
            dim_in=head.norm.normalized_shape[0],
            output_dim=dims,
            activation=activation,
            conf_activation="expp1",
            features=16,
            out_channels=(8, 16, 16, 16),
            intermediate_layer_idx=head.intermediate_layer_idx,
        )
        setattr(model, name, small)
    if model.track_head is not None:
        head = model.track_head
        model.track_head = TrackHead(
            dim_in=head.feature_extractor.norm.normalized_shape[0],
            features=16,
            iters=2,
            hidden_size=32,
            intermediate_layer_idx=head.feature_extractor.intermediate_layer_idx,
        )
    return model


def model_pair(config: dict) -> tuple[VGGT, VGGTOptimized]:
    """A full model and an optimized one with the same (small-headed) weights."""
    torch.manual_seed(0)
    full = with_small_heads(VGGT(**config))
    optimized = with_small_heads(VGGTOptimized(**config))
    optimized.load_state_dict(full.state_dict())
    return full, optimized


def losses_and_gradients(
    model: torch.nn.Module, parts: tuple[str, ...], policy: str, images, targets, layers=None
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    step = TrainingStep(model, parts, policy, get_precision("fp32"), layers=layers)
    losses = step.loss(images, targets)
    losses["total"].backward()
    gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return {name: value.item() for name, value in losses.items()}, gradients


def assert_same_training(full_result, optimized_result) -> None:
    (full_losses, full_grads), (losses, grads) = full_result, optimized_result
    assert losses == pytest.approx(full_losses, rel=1e-6)
    assert grads.keys() == full_grads.keys()
    for name, gradient in full_grads.items():
        if gradient.abs().max() > 0:
            assert rel_l2(grads[name], gradient) <= GRADIENT_BOUND, name
        else:
            assert grads[name].abs().max() == 0, name
