"""Live tensor bytes of a program run on fake tensors: memory figures without memory.

`LiveBytesTracker` is a FakeTensorMode that shows every operator's outputs to the meter of the
current `track()` block; each new storage on the tracked device is counted until the storage
is freed (a weakref callback), which gives the same running total of live bytes that an
allocator would see, minus kernel workspaces. Counting in the fake mode itself, not in a second
dispatch mode on top of it, saves a Python dispatch per operator.
"""

import contextlib
import weakref
from collections.abc import Iterable, Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_leaves

# Asked for a tensor's device (autocast asks for every argument): no storage to count.
_DEVICE_QUERY = torch.ops.prim.device.default


class LiveBytes:
    """Running and peak bytes of the storages counted on one device.

    With `record_events`, `events` lists `(storage key, +bytes)` at each allocation and
    `(storage key, -bytes)` at each free, in order (empty storages take no memory: left out).
    """

    def __init__(self, device_type: str, record_events: bool) -> None:
        self.device_type = device_type
        self.live_bytes = 0
        self.peak_bytes = 0
        self.events: list[tuple[int, int]] | None = [] if record_events else None
        self._sizes: dict[int, int] = {}
        self._references: dict[int, weakref.ref] = {}

    def ignore(self, tensors: Iterable[torch.Tensor]) -> None:
        """Treat the storages of `tensors` as pre-existing: never count them."""
        for tensor in tensors:
            self._register(tensor.untyped_storage(), counted=False)

    def count_outputs(self, out: object) -> None:
        """Count the new storages among an operator's outputs on the tracked device."""
        for leaf in (out,) if isinstance(out, torch.Tensor) else tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type == self.device_type:
                self._register(leaf.untyped_storage(), counted=True)

    def _register(self, storage: torch.UntypedStorage, counted: bool) -> None:
        key = id(storage)
        if key in self._sizes:
            return
        size = storage.nbytes() if counted else 0
        self._sizes[key] = size
        self._references[key] = weakref.ref(storage, lambda _, key=key: self._release(key))
        if size:
            self.live_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            if self.events is not None:
                self.events.append((key, size))

    def _release(self, key: int) -> None:
        del self._references[key]
        size = self._sizes.pop(key)
        if size:
            self.live_bytes -= size
            if self.events is not None:
                self.events.append((key, -size))


class LiveBytesTracker(FakeTensorMode):
    """A FakeTensorMode (non-fake inputs allowed) that counts, inside `track()`, the bytes of
    the storages its operators create on `device_type`."""

    def __init__(self, device_type: str = "cpu") -> None:
        super().__init__(allow_non_fake_inputs=True)
        self.device_type = device_type
        self._meter: LiveBytes | None = None
        self._depth = 0

    @contextlib.contextmanager
    def track(
        self, existing: Iterable[torch.Tensor] = (), record_events: bool = False
    ) -> Iterator[LiveBytes]:
        """Count the storages created in this block, not those of `existing` tensors."""
        meter = LiveBytes(self.device_type, record_events)
        meter.ignore(existing)
        self._meter = meter
        try:
            yield meter
        finally:
            self._meter = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # Operators the fake mode runs while handling another (decompositions) stay unseen, as
        # they would under a separate mode: their temporaries are no kernel's allocations.
        self._depth += 1
        try:
            out = super().__torch_dispatch__(func, types, args, kwargs)
        finally:
            self._depth -= 1
        if self._meter is not None and self._depth == 0 and func is not _DEVICE_QUERY:
            self._meter.count_outputs(out)
        return out
