"""Peak live tensor bytes on the CPU, read from torch.profiler allocation events, and peak RSS.

The CPU allocator has no peak counter; the profiler records every allocation and free, so the
running sum of those events gives the live bytes over time. Each allocation is also sorted
into one of two kinds: *tensor* bytes back a tensor that an operator returned (what the
program holds, and what the fake-tensor estimator counts), *scratch* bytes are taken and
given back inside a kernel (oneDNN's scratchpads, whose size depends on the CPU's instruction
set: with AMX-BF16 a bf16 convolution takes hundreds of MB that AVX2 machines never ask for).
To tell them apart, every operator the program dispatches runs inside a profiler range of its
own, and an allocation made in that range counts as tensor bytes when an output of the
operator lives at its address. The figures are deterministic for a given program, shapes,
thread count and CPU, which makes them fit for assertions in tests. Profiler ranges the program
opens with a given prefix (`record_function("train.forward")`) are kept as marks, so the peak
of a stretch of the program (a training step's phase) can be read from the same trace.
"""

import bisect
import resource
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_RANGE_PREFIX = "dispatch#"


@dataclass
class MemoryTrace:
    """Live bytes allocated during a call.

    `peak_bytes`: the peak of every allocation (tensors and kernel scratch together, what the
    allocator held); `tensor_peak_bytes`: the peak of the tensor bytes alone;
    `scratch_peak_bytes`: the largest scratch held at once; `end_bytes`: tensor bytes still
    live at the end (outputs). The timeline holds every allocation's running total, of all
    bytes (`live_bytes`) and of tensor bytes (`tensor_bytes`); `marks` the ranges the program
    opened with the traced prefix, by name without it. Times are nanoseconds from the first
    allocation or mark.
    """

    peak_bytes: int
    tensor_peak_bytes: int
    scratch_peak_bytes: int
    end_bytes: int
    times_ns: list[int] = field(default_factory=list)
    live_bytes: list[int] = field(default_factory=list)
    tensor_bytes: list[int] = field(default_factory=list)
    marks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def tensor_peak_during(self, start_ns: int, end_ns: int) -> int:
        """The highest tensor bytes between two times: the level at `start_ns` and every
        allocation or free up to `end_ns`."""
        first = bisect.bisect_left(self.times_ns, start_ns)
        last = bisect.bisect_right(self.times_ns, end_ns)
        level = self.tensor_bytes[first - 1] if first > 0 else 0
        return max([level, *self.tensor_bytes[first:last]])


class _OperatorRanges(TorchDispatchMode):
    """Runs each dispatched operator in a numbered profiler range and remembers the addresses
    of the storages it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[set[int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        addresses: set[int] = set()
        self.outputs.append(addresses)
        with record_function(f"{_RANGE_PREFIX}{len(self.outputs) - 1}"):
            out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu":
                addresses.add(leaf.untyped_storage().data_ptr())
        return out


def _operator_index(node: Any) -> int | None:
    """The number of the operator range that holds an event, None outside every range."""
    while node is not None:
        if node.name.startswith(_RANGE_PREFIX):
            return int(node.name[len(_RANGE_PREFIX) :])
        node = node.parent
    return None


def _allocations(tree: Iterable[Any]) -> list[Any]:
    """Every CPU allocation and free event of an event tree, in time order."""
    found, stack = [], list(tree)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            found.append(node)
        stack.extend(node.children)
    found.sort(key=lambda node: node.start_time_ns)
    return found


def _marks(tree: Iterable[Any], prefix: str) -> dict[str, tuple[int, int]]:
    """The start and end (ns) of every range named `prefix...`, by name without the prefix."""
    found, stack = {}, list(tree)
    while stack:
        node = stack.pop()
        if node.name.startswith(prefix):
            found[node.name[len(prefix) :]] = (node.start_time_ns, node.end_time_ns)
        stack.extend(node.children)
    return found


def _trace(
    events: list[Any], outputs: list[set[int]], marks: dict[str, tuple[int, int]]
) -> MemoryTrace:
    """Running totals of all, tensor and scratch bytes over the allocation events; times from
    the first event or mark."""
    trace = MemoryTrace(0, 0, 0, 0)
    kinds: dict[int, bool] = {}
    totals = {True: 0, False: 0}
    starts = [start for start, _ in marks.values()] + [e.start_time_ns for e in events[:1]]
    start = min(starts, default=0)
    in_order = sorted(marks.items(), key=lambda item: item[1])
    trace.marks = {name: (s - start, e - start) for name, (s, e) in in_order}
    for event in events:
        size, address = event.extra_fields.alloc_size, event.extra_fields.ptr
        if size > 0:
            index = _operator_index(event.parent)
            is_tensor = index is not None and address in outputs[index]
            kinds[address] = is_tensor
        else:
            is_tensor = kinds.pop(address, True)
        totals[is_tensor] += size
        live = totals[True] + totals[False]
        trace.peak_bytes = max(trace.peak_bytes, live)
        trace.tensor_peak_bytes = max(trace.tensor_peak_bytes, totals[True])
        trace.scratch_peak_bytes = max(trace.scratch_peak_bytes, totals[False])
        trace.times_ns.append(event.start_time_ns - start)
        trace.live_bytes.append(live)
        trace.tensor_bytes.append(totals[True])
    trace.end_bytes = totals[True]
    return trace


def trace_cpu_memory(
    fn: Callable[[], Any], mark_prefix: str | None = None
) -> tuple[Any, MemoryTrace]:
    """Run `fn()` under the profiler; return its result and the live-byte trace on the CPU,
    with the ranges `fn` opened named `mark_prefix...` as marks.

    Bytes allocated before the call (weights, inputs) are not counted; outputs still alive at
    the end are.
    """
    ranges = _OperatorRanges()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, ranges:
        result = fn()
    tree = prof.profiler.kineto_results.experimental_event_tree()
    marks = _marks(tree, mark_prefix) if mark_prefix else {}
    return result, _trace(_allocations(tree), ranges.outputs, marks)


def peak_live_bytes(fn: Callable[[], Any]) -> int:
    """Peak live CPU tensor bytes allocated while `fn()` runs (kernel scratch left out)."""
    return trace_cpu_memory(fn)[1].tensor_peak_bytes


def max_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
