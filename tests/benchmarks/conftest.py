"""Benchmark set-up: one CPU thread, so timings hold steady on a shared machine; each benchmark
runs per shape (frames, image side) and variant on seeded images."""

from collections.abc import Iterator

import pytest
import torch

from tests.benchmarks.configs import BATCH, SHAPES, VARIANTS
from tests.support.images import seeded_images


@pytest.fixture(autouse=True, scope="module")
def single_cpu_thread(device: torch.device) -> Iterator[None]:
    """On CPU, run each benchmark module with one intra-op thread and restore the count after."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=SHAPES, ids=lambda shape: f"S{shape[0]}-{shape[1]}px")
def shape(request: pytest.FixtureRequest) -> tuple[int, int]:
    """Each (frame count, image side) the benchmarks compare."""
    return request.param


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    """Each variant: the full and the optimized one."""
    return request.param


@pytest.fixture
def images(shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Seeded [BATCH, frames, 3, side, side] images on the benchmark device."""
    frames, side = shape
    return seeded_images(BATCH, frames, side, side).to(device)
