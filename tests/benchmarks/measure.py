"""Time one forward pass with pytest-benchmark and attach its peak and output memory."""

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from pytest_benchmark.fixture import BenchmarkFixture

from profiling.meters.cpu import trace_cpu_memory
from tests.benchmarks.configs import WARMUP_ROUNDS
from vggt.models.aggregator_vram_optimized import LayerSelectView


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a forward's result: nested lists, tuples, dicts and layer views."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, LayerSelectView):
        for _, tensor in value.items():
            yield tensor
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from tensors_in(item)


def output_bytes(value: Any, inputs: torch.Tensor) -> int:
    """Bytes of the distinct storages a result holds, not counting the input's."""
    seen = {inputs.untyped_storage().data_ptr()}
    total = 0
    for tensor in tensors_in(value):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int, str]:
    """Run `fn()` once; return its result, the peak bytes allocated above those live before
    the call, and how that peak was measured."""
    if device.type != "cuda":
        result, trace = trace_cpu_memory(fn)
        return result, trace.peak_bytes, "cpu profiler peak live tensor bytes"
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    return result, peak, "cuda max_memory_allocated above the bytes allocated before the call"


def bench_forward(
    benchmark: BenchmarkFixture,
    component: str,
    variant: str,
    model: torch.nn.Module,
    images: torch.Tensor,
    rounds: int,
) -> None:
    """Time `model(images)` after warm-up, grouped by configuration, then record the peak and
    output memory of one more call in `benchmark.extra_info`."""
    batch, frames, _, height, width = images.shape
    benchmark.group = f"{component} B{batch} S{frames} {height}x{width}"

    def forward() -> Any:
        result = model(images)
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        return result

    with torch.no_grad():
        benchmark.pedantic(forward, warmup_rounds=WARMUP_ROUNDS, rounds=rounds, iterations=1)
        result, peak, source = peak_bytes(forward, images.device)
    benchmark.extra_info.update(
        component=component,
        variant=variant,
        batch=batch,
        frames=frames,
        height=height,
        width=width,
        device=str(images.device),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        peak_bytes=peak,
        peak_source=source,
        output_bytes=output_bytes(result, images),
    )
