"""Wall time of one call on CPU or CUDA, and the statistics reported over the repeats."""

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def time_call_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds `fn()` takes: CUDA events on a GPU, perf_counter after a synchronize else.

    The result of `fn` is dropped before returning.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def summarize_ms(samples: list[float]) -> dict[str, float | int]:
    """Median, min, max, interquartile range and count of timing samples (ms)."""
    if not samples:
        raise ValueError("no timing samples to summarize")
    ordered = sorted(samples)
    if len(ordered) > 1:
        quartiles = statistics.quantiles(ordered, n=4, method="inclusive")
        iqr = quartiles[2] - quartiles[0]
    else:
        iqr = 0.0
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "iqr": iqr,
        "repeats": len(ordered),
    }
