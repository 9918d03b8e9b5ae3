"""One precision object: its names, the earlier names it reads, and what it does to a model."""

import pytest
import torch

from tests.support.configs import SMALL_VGGT
from tests.support.images import seeded_images
from vggt.models.vggt_vram_optimized import VGGTOptimized
from vggt.precision import PRECISIONS, from_dtype, get_precision


def test_each_name_is_one_program() -> None:
    programs = {(p.weights_dtype, p.autocast_dtype) for p in PRECISIONS.values()}
    assert len(programs) == len(PRECISIONS)
    assert (get_precision("fp32").weights_dtype, get_precision("fp32").autocast_dtype) == (
        torch.float32,
        None,
    )
    autocast, bf16 = get_precision("autocast"), get_precision("bf16")
    assert (autocast.weights_dtype, autocast.autocast_dtype) == (torch.float32, torch.bfloat16)
    assert (bf16.weights_dtype, bf16.autocast_dtype) == (torch.bfloat16, torch.bfloat16)
    assert (autocast.dtype, autocast.mode, bf16.dtype, bf16.mode) == (
        "bf16",
        "autocast",
        "bf16",
        "cast",
    )


@pytest.mark.parametrize(
    ("earlier", "name"),
    [("bf16-autocast", "autocast"), ("bf16-cast", "bf16"), ("fp16-autocast", "autocast-fp16")],
)
def test_earlier_labels_are_aliases(earlier: str, name: str) -> None:
    assert get_precision(earlier) is get_precision(name)
    dtype, mode = earlier.split("-")
    assert from_dtype(dtype, mode) is get_precision(name)
    assert from_dtype("fp32", "cast") is get_precision("fp32")


@pytest.mark.parametrize("text", ["fp8", "bf16-sideways", ""])
def test_unknown_names_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"unknown precision .* choose from fp32, autocast, bf16"):
        get_precision(text)


def test_bf16_casts_the_aggregator_and_keeps_the_heads_in_fp32() -> None:
    torch.manual_seed(0)
    model = get_precision("bf16").apply(VGGTOptimized(**SMALL_VGGT).eval())
    assert {p.dtype for p in model.aggregator.parameters()} == {torch.bfloat16}
    heads = [model.camera_head, model.depth_head, model.point_head, model.track_head]
    assert {p.dtype for head in heads for p in head.parameters()} == {torch.float32}
    with torch.no_grad(), get_precision("bf16").autocast("cpu"):
        predictions = model(seeded_images(1, 2, 56, 56))
    assert predictions["depth"].dtype == torch.float32
    assert predictions["pose_enc"].dtype == torch.float32


def test_fp32_runs_without_autocast() -> None:
    with get_precision("fp32").autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with get_precision("autocast").autocast("cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
