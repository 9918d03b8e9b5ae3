"""Forward passes need no real data: they run on FakeTensorMode and on the meta device."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from tests.support.configs import SMALL_AGGREGATOR
from vggt.models.aggregator import Aggregator
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized
from vggt.models.vggt import VGGT
from vggt.models.vggt_vram_optimized import VGGTOptimized


def fake_model(model_class: type, **kwargs) -> tuple[torch.nn.Module, FakeTensorMode]:
    """Build on the meta device, then give the model fake CPU storage."""
    with torch.device("meta"):
        model = model_class(**kwargs).eval()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        model = model.to_empty(device="cpu")
    return model, mode


@pytest.mark.parametrize("model_class", [VGGT, VGGTOptimized])
def test_full_size_model_runs_on_fake_tensors(model_class: type) -> None:
    model, mode = fake_model(model_class)
    with mode, torch.no_grad():
        images = torch.rand(1, 3, 3, 518, 392)
        points = torch.rand(1, 5, 2) * 300
        predictions = model(images, query_points=points)
    assert isinstance(predictions["depth"], FakeTensor)
    assert predictions["depth"].shape == (1, 3, 518, 392, 1)
    assert predictions["world_points"].shape == (1, 3, 518, 392, 3)
    assert predictions["pose_enc"].shape == (1, 3, 9)
    assert predictions["track"].shape == (1, 3, 5, 2)


@pytest.mark.parametrize(
    "model_class", [Aggregator, AggregatorVramOptimized], ids=["full", "optimized"]
)
@pytest.mark.parametrize("patch_embed", ["conv", "dinov2_vits14_reg"])
def test_aggregator_runs_on_fake_tensors(model_class: type, patch_embed: str) -> None:
    config = {**SMALL_AGGREGATOR, "patch_embed": patch_embed}
    if patch_embed != "conv":
        config["embed_dim"] = 384
    model, mode = fake_model(model_class, **config)
    with mode, torch.no_grad():
        outputs = model(torch.rand(2, 3, 3, 42, 70))
    expected = (2, 3, 5 + 3 * 5, 2 * config["embed_dim"])
    assert outputs[0][config["depth"] - 1].shape == expected
    assert outputs[1] == 5


def test_vggt_runs_on_meta_tensors() -> None:
    with torch.device("meta"):
        model = VGGT().eval()
        images = torch.rand(2, 2, 3, 140, 182)
        points = torch.rand(2, 4, 2)
        with torch.no_grad():
            predictions = model(images, query_points=points)
    assert predictions["depth_conf"].device.type == "meta"
    assert predictions["depth_conf"].shape == (2, 2, 140, 182)
    assert predictions["vis"].shape == (2, 2, 4)
