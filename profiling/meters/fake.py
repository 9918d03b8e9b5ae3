"""Live tensor bytes of a program run on fake tensors: memory figures without memory.

A dispatch mode sees every operator's outputs; each new storage on the tracked device is
counted until the storage is freed (a weakref finalizer), which gives the same running total of
live bytes that an allocator would see, minus kernel workspaces.
"""

import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytesTracker(TorchDispatchMode):
    """Running and peak bytes of storages created under this mode on `device_type`.

    Storages that existed before (weights, inputs) are ignored once passed to `ignore`.
    """

    def __init__(self, device_type: str = "cpu") -> None:
        super().__init__()
        self.device_type = device_type
        self.live_bytes = 0
        self.peak_bytes = 0
        self._sizes: dict[int, int] = {}

    def ignore(self, tensors: Iterable[torch.Tensor]) -> None:
        """Treat the storages of `tensors` as pre-existing: never count them."""
        for tensor in tensors:
            self._register(tensor.untyped_storage(), counted=False)

    def _register(self, storage: torch.UntypedStorage, counted: bool) -> None:
        key = id(storage)
        if key in self._sizes:
            return
        size = storage.nbytes() if counted else 0
        self._sizes[key] = size
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.live_bytes -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type == self.device_type:
                self._register(leaf.untyped_storage(), counted=True)
        return out
