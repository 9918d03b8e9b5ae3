"""Full against optimized VGGT (aggregator and heads): time, peak memory and output bytes."""

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from tests.benchmarks.configs import BATCH, FRAMES, MODEL, MODEL_ROUNDS
from tests.benchmarks.measure import bench_forward
from tests.helpers import seeded_images
from vggt.models.vggt import VGGT
from vggt.models.vggt_vram_optimized import VGGTOptimized

SIZE = MODEL["img_size"]


@pytest.fixture(scope="module")
def models(device: torch.device) -> dict[str, torch.nn.Module]:
    """Both variants with the same weights, in eval mode on the benchmark device."""
    torch.manual_seed(0)
    full = VGGT(**MODEL).eval()
    optimized = VGGTOptimized(**MODEL).eval()
    optimized.load_state_dict(full.state_dict())
    return {"full": full.to(device), "optimized": optimized.to(device)}


@pytest.mark.parametrize("variant", ["full", "optimized"])
@pytest.mark.parametrize("frames", FRAMES, ids=lambda frames: f"S{frames}")
def test_model(
    benchmark: BenchmarkFixture,
    models: dict[str, torch.nn.Module],
    device: torch.device,
    frames: int,
    variant: str,
) -> None:
    images = seeded_images(BATCH, frames, SIZE, SIZE).to(device)
    bench_forward(benchmark, "model", variant, models[variant], images, MODEL_ROUNDS)
    assert benchmark.extra_info["peak_bytes"] >= benchmark.extra_info["output_bytes"] > 0
