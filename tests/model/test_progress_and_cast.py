"""VGGTOptimized's progress callback counts every block and head chunk, on device and offloaded;
with the aggregator cast to bf16 the fp32 heads read converted chunks and agree with fp32."""

import pytest
import torch

from tests.support.compare import rel_l2
from tests.support.configs import SMALL_VGGT
from tests.support.images import seeded_images
from vggt.models import vggt_vram_optimized
from vggt.models.vggt_vram_optimized import VGGTOptimized

# 3 frames in chunks of 2: the heads read one chunk of 2 frames and one of 1.
FRAMES = 3


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return seeded_images(1, FRAMES, 28, 42)


@pytest.mark.parametrize("offload", [False, True])
def test_progress_reports_every_block_and_head_chunk(
    images: torch.Tensor, offload: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vggt_vram_optimized, "FRAMES_CHUNK_SIZE", 2)
    torch.manual_seed(0)
    model = VGGTOptimized(**SMALL_VGGT, offload_outputs=offload).eval()
    steps: list[int] = []
    model.progress = steps.append
    with torch.no_grad():
        model(images)
    assert model.progress_steps(FRAMES) == 2 * 6 + 2
    assert sum(steps) == model.progress_steps(FRAMES)
    assert steps[: 2 * 6] == [1] * (2 * 6)
    model.progress = None
    assert model.aggregator.after_block is None


def test_cast_aggregator_feeds_fp32_heads(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = VGGTOptimized(**SMALL_VGGT).eval()
    with torch.no_grad():
        expected = model(images)
        model.aggregator.to(torch.bfloat16)
        actual = model(images)
    assert model.heads_dtype() == torch.float32
    for name in ("depth", "depth_conf", "world_points_conf"):
        assert actual[name].dtype == torch.float32
        assert rel_l2(actual[name], expected[name]) < 1e-3, name
    assert rel_l2(actual["pose_enc"], expected["pose_enc"]) < 5e-2
