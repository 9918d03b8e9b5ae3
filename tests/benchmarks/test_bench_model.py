"""Full against optimized VGGT (aggregator and heads): time, peak memory and output bytes."""

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from tests.benchmarks.configs import MODEL, MODEL_ROUNDS
from tests.benchmarks.measure import bench_forward, with_shared_weights
from vggt.models.vggt import VGGT
from vggt.models.vggt_vram_optimized import VGGTOptimized


@pytest.fixture(scope="module")
def models(device: torch.device) -> dict[str, torch.nn.Module]:
    """Both variants with the same weights, in eval mode on the benchmark device."""
    torch.manual_seed(0)
    return with_shared_weights(VGGT(**MODEL), VGGTOptimized(**MODEL), device)


def test_model(
    benchmark: BenchmarkFixture,
    models: dict[str, torch.nn.Module],
    images: torch.Tensor,
    variant: str,
) -> None:
    bench_forward(benchmark, "model", variant, models[variant], images, MODEL_ROUNDS)
    assert benchmark.extra_info["peak_bytes"] >= benchmark.extra_info["output_bytes"] > 0
