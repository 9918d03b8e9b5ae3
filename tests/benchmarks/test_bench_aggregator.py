"""Full against optimized aggregator: time, peak memory and output bytes per frame count."""

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from tests.benchmarks.configs import AGGREGATOR, AGGREGATOR_ROUNDS, BATCH, FRAMES, HEAD_LAYERS
from tests.benchmarks.measure import bench_forward
from tests.helpers import seeded_images
from vggt.models.aggregator import Aggregator
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized

SIZE = AGGREGATOR["img_size"]
TOKENS_PER_FRAME = (SIZE // AGGREGATOR["patch_size"]) ** 2 + 5  # camera and 4 register tokens
KEPT_LAYERS = {"full": AGGREGATOR["depth"], "optimized": len(HEAD_LAYERS)}


@pytest.fixture(scope="module")
def aggregators(device: torch.device) -> dict[str, torch.nn.Module]:
    """Both variants with the same weights, in eval mode on the benchmark device."""
    torch.manual_seed(0)
    full = Aggregator(**AGGREGATOR).eval()
    optimized = AggregatorVramOptimized(**AGGREGATOR, selected_layer_idx=HEAD_LAYERS).eval()
    optimized.load_state_dict(full.state_dict())
    return {"full": full.to(device), "optimized": optimized.to(device)}


@pytest.mark.parametrize("variant", ["full", "optimized"])
@pytest.mark.parametrize("frames", FRAMES, ids=lambda frames: f"S{frames}")
def test_aggregator(
    benchmark: BenchmarkFixture,
    aggregators: dict[str, torch.nn.Module],
    device: torch.device,
    frames: int,
    variant: str,
) -> None:
    images = seeded_images(BATCH, frames, SIZE, SIZE).to(device)
    bench_forward(benchmark, "aggregator", variant, aggregators[variant], images, AGGREGATOR_ROUNDS)
    layer_bytes = BATCH * frames * TOKENS_PER_FRAME * 2 * AGGREGATOR["embed_dim"] * 4
    assert benchmark.extra_info["output_bytes"] == KEPT_LAYERS[variant] * layer_bytes
    assert benchmark.extra_info["peak_bytes"] >= benchmark.extra_info["output_bytes"]
