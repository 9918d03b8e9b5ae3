"""Peak live tensor bytes on the CPU, read from torch.profiler memory events, and peak RSS.

The CPU allocator has no peak counter; the profiler records every allocation and free, so the
running sum of those events gives the live bytes over time. The figures are deterministic for a
given program, shapes and thread count, which makes them fit for assertions in tests.
"""

import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch.profiler import ProfilerActivity, profile

_MEMORY_EVENT = "[memory]"


@dataclass
class MemoryTrace:
    """Live bytes allocated during a call: the peak, the end value and the timeline."""

    peak_bytes: int
    end_bytes: int
    times_ns: list[int] = field(default_factory=list)
    live_bytes: list[int] = field(default_factory=list)


def trace_cpu_memory(fn: Callable[[], Any]) -> tuple[Any, MemoryTrace]:
    """Run `fn()` under the profiler; return its result and the live-byte trace on the CPU.

    Bytes allocated before the call (weights, inputs) are not counted; outputs still alive at
    the end are.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == _MEMORY_EVENT and event.device_type().name.lower() == "cpu"
    ]
    events.sort(key=lambda event: event.start_ns())
    trace = MemoryTrace(peak_bytes=0, end_bytes=0)
    live = 0
    start = events[0].start_ns() if events else 0
    for event in events:
        live += event.nbytes()
        trace.peak_bytes = max(trace.peak_bytes, live)
        trace.times_ns.append(event.start_ns() - start)
        trace.live_bytes.append(live)
    trace.end_bytes = live
    return result, trace


def peak_live_bytes(fn: Callable[[], Any]) -> int:
    """Peak live CPU tensor bytes allocated while `fn()` runs."""
    return trace_cpu_memory(fn)[1].peak_bytes


def max_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
