"""Benchmark set-up: one CPU thread, so timings hold steady on a shared machine; each benchmark
runs per frame count and variant on seeded images."""

from collections.abc import Iterator

import pytest
import torch

from tests.benchmarks.configs import BATCH, FRAMES, SIZE, VARIANTS
from tests.helpers import seeded_images


@pytest.fixture(autouse=True, scope="module")
def single_cpu_thread(device: torch.device) -> Iterator[None]:
    """On CPU, run each benchmark module with one intra-op thread and restore the count after."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=FRAMES, ids=lambda frames: f"S{frames}")
def frames(request: pytest.FixtureRequest) -> int:
    """Each frame count the benchmarks compare."""
    return request.param


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    """Each variant: the full and the optimized one."""
    return request.param


@pytest.fixture
def images(frames: int, device: torch.device) -> torch.Tensor:
    """Seeded [BATCH, frames, 3, SIZE, SIZE] images on the benchmark device."""
    return seeded_images(BATCH, frames, SIZE, SIZE).to(device)
