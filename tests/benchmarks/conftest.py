"""Benchmark set-up: one CPU thread, so timings hold steady on a shared machine."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_cpu_thread(device: torch.device) -> Iterator[None]:
    """On CPU, run each benchmark module with one intra-op thread and restore the count after."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
