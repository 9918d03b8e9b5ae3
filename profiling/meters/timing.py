"""Wall time of one call on CPU or CUDA."""

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
