"""Full against optimized aggregator: time, peak memory and output bytes per frame count."""

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from tests.benchmarks.configs import AGGREGATOR, AGGREGATOR_ROUNDS, BATCH, HEAD_LAYERS, PATCH_SIZE
from tests.benchmarks.measure import bench_forward, with_shared_weights
from vggt.models.aggregator import Aggregator
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized

KEPT_LAYERS = {"full": AGGREGATOR["depth"], "optimized": len(HEAD_LAYERS)}


@pytest.fixture(scope="module")
def aggregators(device: torch.device) -> dict[str, torch.nn.Module]:
    """Both variants with the same weights, in eval mode on the benchmark device."""
    torch.manual_seed(0)
    return with_shared_weights(
        Aggregator(**AGGREGATOR),
        AggregatorVramOptimized(**AGGREGATOR, selected_layer_idx=HEAD_LAYERS),
        device,
    )


def test_aggregator(
    benchmark: BenchmarkFixture,
    aggregators: dict[str, torch.nn.Module],
    images: torch.Tensor,
    shape: tuple[int, int],
    variant: str,
) -> None:
    bench_forward(benchmark, "aggregator", variant, aggregators[variant], images, AGGREGATOR_ROUNDS)
    frames, side = shape
    tokens_per_frame = (side // PATCH_SIZE) ** 2 + 5  # camera and 4 register tokens
    layer_bytes = BATCH * frames * tokens_per_frame * 2 * AGGREGATOR["embed_dim"] * 4
    assert benchmark.extra_info["output_bytes"] == KEPT_LAYERS[variant] * layer_bytes
    assert benchmark.extra_info["peak_bytes"] >= benchmark.extra_info["output_bytes"]
