"""Time one forward pass with pytest-benchmark and attach its peak and output memory."""

from collections.abc import Callable
from typing import Any

import torch
from pytest_benchmark.fixture import BenchmarkFixture

from profiling.meters.cpu import trace_cpu_memory
from profiling.meters.cuda import measure_cuda_peak
from tests.benchmarks.configs import WARMUP_ROUNDS
from vggt.memory.outputs import named_outputs, output_bytes

CUDA_PEAK_SOURCE = "cuda max_memory_allocated above the bytes allocated before the call"


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int, str]:
    """Run `fn()` once; return its result, the peak bytes allocated above those live before
    the call, and how that peak was measured."""
    if device.type != "cuda":
        result, trace = trace_cpu_memory(fn)
        return result, trace.tensor_peak_bytes, "cpu profiler peak live tensor bytes"
    result, peak = measure_cuda_peak(fn, device)
    return result, peak.above_start_bytes, CUDA_PEAK_SOURCE


def with_shared_weights(
    full: torch.nn.Module, optimized: torch.nn.Module, device: torch.device
) -> dict[str, torch.nn.Module]:
    """Both variants in eval mode on `device`, the optimized one holding the full one's weights."""
    optimized.load_state_dict(full.state_dict())
    return {"full": full.eval().to(device), "optimized": optimized.eval().to(device)}


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
        output_bytes=output_bytes(named_outputs(result).values(), exclude=[images]).device,
    )
