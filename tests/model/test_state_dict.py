"""The model's state dict has exactly the published checkpoint's names, shapes and order."""

import pytest
import torch

from tests.support.repo import manifest
from vggt.models.vggt import VGGT
from vggt.models.vggt_vram_optimized import VGGTOptimized


@pytest.mark.parametrize("model_class", [VGGT, VGGTOptimized])
def test_state_dict_matches_manifest(model_class: type) -> None:
    with torch.device("meta"):
        model = model_class()
    ours = [(name, list(tensor.shape)) for name, tensor in model.state_dict().items()]
    assert ours == list(manifest().items())


def test_parameter_count_of_vggt_1b() -> None:
    with torch.device("meta"):
        model = VGGT()
    assert sum(t.numel() for t in model.state_dict().values()) == 1_256_537_516


def test_mask_token_is_frozen_but_saved() -> None:
    with torch.device("meta"):
        model = VGGT(enable_track=False)
    assert not model.aggregator.patch_embed.mask_token.requires_grad
    assert "aggregator.patch_embed.mask_token" in model.state_dict()


def test_disabled_heads_leave_no_keys() -> None:
    with torch.device("meta"):
        model = VGGT(enable_camera=False, enable_point=False, enable_track=False)
    prefixes = {name.split(".")[0] for name in model.state_dict()}
    assert prefixes == {"aggregator", "depth_head"}
