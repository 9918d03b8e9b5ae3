"""Benchmark set-up: one CPU thread, so timings hold steady on a shared machine; each benchmark
runs per shape (frames, image side) and variant on seeded images. On the CPU with benchmarks
disabled (the test suite runs each once) the whole model's largest shape is left out: its heads
take 15 s a variant on one thread, and the aggregator's benchmark at that shape covers the
chunked path."""

from collections.abc import Iterator

import pytest
import torch

from tests.benchmarks.configs import BATCH, SHAPES, VARIANTS
from tests.support.images import seeded_images


def shape_id(shape: tuple[int, int]) -> str:
    """`S8-224px`: a shape's part of a benchmark's id."""
    return f"S{shape[0]}-{shape[1]}px"


LARGEST = shape_id(max(SHAPES, key=lambda shape: shape[0] * shape[1] ** 2))


@pytest.fixture(autouse=True, scope="module")
def single_cpu_thread(device: torch.device) -> Iterator[None]:
    """On CPU, run each benchmark module with one intra-op thread and restore the count after."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=SHAPES, ids=shape_id)
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the whole model's benchmarks at the largest shape on the CPU when benchmarks
    are disabled."""
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    if not disabled or config.getoption("--device") != "cpu":
        return
    dropped = [item for item in items if "test_model[" in item.name and LARGEST in item.name]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
