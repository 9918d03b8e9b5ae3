"""A cap on the memory a block's tensors may take: the CUDA caching allocator's
per-process fraction on a GPU, a live-bytes count on a CPU (where no allocator caps)."""

import contextlib
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vggt.memory.tracker import LiveBytes


class CappedLiveBytes(TorchDispatchMode):
    """Counts the bytes of storages created under it on the CPU and raises OutOfMemoryError
    when they pass `cap_bytes`, as a capped CUDA allocator would. An output that shares an
    input's storage (a view, an in-place result, a detached weight) is not new memory."""

    def __init__(self, cap_bytes: int) -> None:
        super().__init__()
        self.cap_bytes = cap_bytes
        self.meter = LiveBytes("cpu", record_events=False)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = tree_leaves((args, kwargs))
        self.meter.ignore(leaf for leaf in inputs if isinstance(leaf, torch.Tensor))
        self.meter.count_outputs(out)
        if self.meter.live_bytes > self.cap_bytes:
            raise torch.OutOfMemoryError(
                f"emulated out of memory: {self.meter.live_bytes} live bytes pass the CPU cap "
                f"of {self.cap_bytes}"
            )
        return out


@contextlib.contextmanager
def memory_cap(device: torch.device, cap_bytes: int) -> Iterator[None]:
    """Cap the memory on `device` at `cap_bytes`: on CUDA what the caching allocator may
    reserve in all (torch.cuda.set_per_process_memory_fraction), on a CPU the live bytes of
    the tensors the block creates."""
    if device.type != "cuda":
        with CappedLiveBytes(cap_bytes):
            yield
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(cap_bytes / total, device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
