"""The kept layer outputs: written half by half as blocks finish, on the compute device or
offloaded to host memory, and read back for the heads frame chunk by frame chunk.

Offloaded, each finished half leaves the device in contiguous pieces on a side stream while
the next blocks run; a block waits (by CUDA event) only for the piece it is about to
overwrite. Host memory is a grow-only arena per host and compute device (page-locked for CUDA)
that each forward's result leases and the next forward reuses, until `release_host_memory()`
or exit; a forward run while an earlier result still holds it gets a block released with its
result. Reading back, each frame chunk is copied contiguously into a device staging buffer one
chunk ahead of use, then assembled into the layer's layout on the compute stream.
"""

import atexit
import ctypes
import mmap
import os
import sys
import warnings
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

# Pieces a finished half is copied out in; a block waits only for the piece it overwrites.
COPY_PIECE_BYTES = 256 << 20


@dataclass
class TransferLog:
    """Bytes of every copy between the compute device and host memory, in order."""

    device_to_host: list[int] = field(default_factory=list)
    host_to_device: list[int] = field(default_factory=list)


class HostBlock:
    """Host memory of whole pages, page-aligned on the CPU and page-locked when `pin` (pageable,
    with a warning, if CUDA refuses); `release()` unpins it after the last copy touching it."""

    def __init__(self, nbytes: int, host: torch.device, pin: bool) -> None:
        self.last_copy: torch.cuda.Event | None = None
        self.pinned_bytes = 0
        page = mmap.PAGESIZE
        span = -(-nbytes // page) * page
        raw = torch.empty(span + page, dtype=torch.uint8, device=host)
        offset = (-raw.data_ptr()) % page if host.type == "cpu" else 0
        self.memory = raw[offset : offset + span]
        self.pinned_bytes = _pin(self.memory) if pin else 0
        if pin:
            _CUDA_BLOCKS.add(self)

    @property
    def nbytes(self) -> int:
        return self.memory.numel()

    def release(self) -> None:
        """Wait for the last copy that touched the block, then unpin it (once)."""
        if self.last_copy is not None:
            self.last_copy.synchronize()
            self.last_copy = None
        if self.pinned_bytes:
            self.pinned_bytes = 0
            _unpin(self.memory)

    def __del__(self) -> None:
        self.release()


def _pin(memory: torch.Tensor) -> int:
    """Page-lock `memory`; its bytes, or 0 (with a warning) where CUDA refuses."""
    cudart = torch.cuda.cudart()
    status = cudart.cudaHostRegister(memory.data_ptr(), memory.numel(), 0)
    if int(status) == 0:
        return memory.numel()
    _clear_cuda_error()
    warnings.warn(
        f"cudaHostRegister of {memory.numel()} bytes failed ({cudart.cudaGetErrorString(status)},"
        f" cudaError {int(status)}): offloaded layers stay in pageable memory, copied slower",
        RuntimeWarning,
        stacklevel=2,
    )
    return 0


def _unpin(memory: torch.Tensor) -> None:
    """Undo `_pin`, warning (never raising: it runs in __del__ and at exit) if CUDA refuses."""
    cudart = torch.cuda.cudart()
    status = cudart.cudaHostUnregister(memory.data_ptr())
    if int(status) != 0:
        _clear_cuda_error()
        warnings.warn(
            f"cudaHostUnregister of {memory.numel()} bytes failed"
            f" ({cudart.cudaGetErrorString(status)}, cudaError {int(status)})",
            RuntimeWarning,
            stacklevel=2,
        )


def _clear_cuda_error() -> None:
    """Reset CUDA's last error, which the next kernel launch would raise: torch's cudart bindings
    lack cudaGetLastError, so it is called in every libcudart mapped into the process."""
    try:
        with open("/proc/self/maps") as maps:
            names = {line.split(maxsplit=5)[-1].strip() for line in maps if "libcudart" in line}
        for name in names:
            path = name.removesuffix(" (deleted)")
            if "libcudart" in os.path.basename(path):
                ctypes.CDLL(path).cudaGetLastError()
    except OSError:
        return


class _Arena:
    """The kept block of one host and compute device pair, and the store leasing it."""

    def __init__(self, host: torch.device, pin: bool) -> None:
        self.host = host
        self.pin = pin
        self.block: HostBlock | None = None
        self.holder: weakref.ref | None = None

    def lease(self, nbytes: int, holder: object) -> HostBlock | None:
        """The block, regrown if under `nbytes`, for `holder`; None while a live one holds it."""
        if self.holder is not None and self.holder() is not None:
            return None
        if self.block is None or self.block.nbytes < nbytes:
            self.block = None  # the smaller block goes (after its last copy) before the larger
            self.block = HostBlock(nbytes, self.host, self.pin)
        self.holder = weakref.ref(holder)
        return self.block


_ARENAS: dict[tuple[torch.device, torch.device], _Arena] = {}
# Blocks CUDA copies to and from, pinned or not: released at exit, while CUDA is still up.
_CUDA_BLOCKS: "weakref.WeakSet[HostBlock]" = weakref.WeakSet()


def _lease(nbytes: int, host: torch.device, compute: torch.device, holder: object) -> HostBlock:
    """At least `nbytes` of host memory for `holder`: the arena's block when no live holder has
    it, else a block of its own. Non-CPU hosts (the estimator's meta device) get an unpinned
    block of their own."""
    if host.type != "cpu":
        return HostBlock(nbytes, host, pin=False)
    arena = _ARENAS.setdefault((host, compute), _Arena(host, pin=compute.type == "cuda"))
    return arena.lease(nbytes, holder) or HostBlock(nbytes, host, arena.pin)


def release_host_memory() -> None:
    """Release the arenas' host memory now; a block a live result still holds goes with it."""
    _ARENAS.clear()


@atexit.register
def _release_at_exit() -> None:
    """Release every block CUDA copies to and from, after its last copy."""
    for block in list(_CUDA_BLOCKS):
        block.release()
    _ARENAS.clear()


class HostStore:
    """Host memory of one forward's offloaded layers (leased, see `_lease`), the copy stream
    and the transfer log."""

    def __init__(self, nbytes: int, host: torch.device, compute: torch.device) -> None:
        self.compute = compute
        self.transfers = TransferLog()
        self.copy_stream = torch.cuda.Stream(compute) if compute.type == "cuda" else None
        self.block = _lease(nbytes, host, compute, self)
        self.memory = self.block.memory[:nbytes]
        if self.block.last_copy is not None:
            # an earlier forward's copies may still read the memory this one overwrites
            torch.cuda.current_stream(compute).wait_event(self.block.last_copy)

    def tensor(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor over the store's bytes from byte `offset` on."""
        count = torch.Size(shape).numel() * dtype.itemsize
        return self.memory[offset : offset + count].view(dtype).view(shape)

    def to_host(self, host: torch.Tensor, device: torch.Tensor) -> torch.cuda.Event | None:
        """Copy a device tensor into host memory after the compute stream's queued work."""
        self.transfers.device_to_host.append(device.numel() * device.element_size())
        return self._copy(host, device)

    def to_device(self, device: torch.Tensor, host: torch.Tensor) -> torch.cuda.Event | None:
        """Copy host memory into a device tensor after the compute stream's queued work."""
        self.transfers.host_to_device.append(host.numel() * host.element_size())
        return self._copy(device, host)

    def _copy(self, destination: torch.Tensor, source: torch.Tensor) -> torch.cuda.Event | None:
        """The copy on the copy stream; the event marking its end (None without CUDA, where
        the copy is done on return)."""
        if self.copy_stream is None:
            destination.copy_(source)
            return None
        self.copy_stream.wait_stream(torch.cuda.current_stream(self.compute))
        with torch.cuda.stream(self.copy_stream):
            destination.copy_(source, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        for tensor in (destination, source):
            if tensor.is_cuda:
                tensor.record_stream(self.copy_stream)
        self.block.last_copy = done
        return done


@dataclass
class FramesInFlight:
    """Frames copied to the device into `staging` [parts, B, n, P, C], there after `done`."""

    staging: torch.Tensor
    done: torch.cuda.Event | None

    def assemble(self) -> torch.Tensor:
        """The frames [B, n, P, parts * C], made on the compute stream once the copies are in."""
        if self.done is not None:
            torch.cuda.current_stream(self.staging.device).wait_event(self.done)
        return torch.cat(self.staging.unbind(0), dim=-1)


class OffloadedLayer:
    """A kept layer output [B, S, P, parts * C] held in host memory as `parts` contiguous
    host [parts, B, S, P, C]. It is not a tensor: `fetch_frames` copies frames back."""

    __slots__ = ("host", "store")

    def __init__(self, host: torch.Tensor, store: HostStore) -> None:
        self.host = host
        self.store = store

    @property
    def shape(self) -> torch.Size:
        parts, *leading, dim = self.host.shape
        return torch.Size((*leading, parts * dim))

    @property
    def dtype(self) -> torch.dtype:
        return self.host.dtype

    def fetch_frames(self, start: int, end: int) -> FramesInFlight:
        """Start copying frames [start, end) to the compute device: one contiguous copy per half
        and batch element, into a staging buffer allocated on the compute stream."""
        parts, batch, _, tokens, dim = self.host.shape
        shape = (parts, batch, end - start, tokens, dim)
        staging = torch.empty(shape, dtype=self.dtype, device=self.store.compute)
        done = None
        for part in range(parts):
            for index in range(batch):
                done = self.store.to_device(staging[part, index], self.host[part, index, start:end])
        return FramesInFlight(staging, done)

    def __repr__(self) -> str:
        return f"OffloadedLayer(shape={tuple(self.shape)}, host={self.host.device})"


class KeptLayers:
    """Output buffers of the kept layers: `write(layer, part, stream)` stores one block's
    residual stream [B, S, P, C] as part `part` of layer `layer` ([B, S, P, parts * C]).

    On the device a layer's buffer is allocated at its first write and filled at once.
    Offloaded, the host memory of all of them is taken up front (`stream` gives the shape,
    dtype and device of the residual stream), each write leaves in pieces of at most
    `piece_bytes` on a side stream, `before_write(end)` makes the compute stream wait for the
    pieces of the tokens a block is about to overwrite, and `finish()` returns
    `OffloadedLayer`s.
    """

    def __init__(
        self,
        indices: Iterable[int],
        parts: int,
        stream: torch.Tensor,
        offload_device: torch.device | None = None,
        piece_bytes: int = COPY_PIECE_BYTES,
    ) -> None:
        self.indices = sorted(set(indices))
        self.parts = parts
        self.piece_bytes = piece_bytes
        self.layers: dict[int, torch.Tensor] = {}
        self.store: HostStore | None = None
        self._pending: deque[tuple[int, torch.cuda.Event]] = deque()
        if offload_device is not None:
            shape = (parts, *stream.shape)
            layer_bytes = torch.Size(shape).numel() * stream.element_size()
            total = layer_bytes * len(self.indices)
            self.store = HostStore(total, offload_device, stream.device)
            for number, layer in enumerate(self.indices):
                self.layers[layer] = self.store.tensor(number * layer_bytes, shape, stream.dtype)

    def __contains__(self, layer: int) -> bool:
        return layer in self.indices

    def write(self, layer: int, part: int, stream: torch.Tensor) -> None:
        """Store `stream` as part `part` of layer `layer`."""
        dim = stream.shape[-1]
        if self.store is None:
            if layer not in self.layers:
                self.layers[layer] = stream.new_empty((*stream.shape[:-1], self.parts * dim))
            self.layers[layer][..., part * dim : (part + 1) * dim].copy_(stream)
            return
        flat_host = self.layers[layer][part].view(-1, dim)
        flat = stream.reshape(-1, dim)
        piece = max(1, self.piece_bytes // (dim * flat.element_size()))
        for start in range(0, flat.shape[0], piece):
            done = self.store.to_host(flat_host[start : start + piece], flat[start : start + piece])
            if done is not None:
                self._pending.append((start, done))

    def before_write(self, end: int) -> None:
        """Wait until the copies out of the stream's flat tokens below `end` have finished
        (blocks overwrite the stream in increasing token order)."""
        last = None
        while self._pending and self._pending[0][0] < end:
            last = self._pending.popleft()[1]
        if last is not None:
            torch.cuda.current_stream(self.store.compute).wait_event(last)

    def finish(self) -> dict[int, "torch.Tensor | OffloadedLayer"]:
        """The kept layers by index; offloaded, the compute stream waits for every copy out."""
        if self.store is None:
            return dict(self.layers)
        self.before_write(sys.maxsize)
        return {index: OffloadedLayer(self.layers[index], self.store) for index in self.indices}


def iter_frame_chunks(
    layers: Mapping[int, "torch.Tensor | OffloadedLayer"], frames: int, chunk_frames: int
) -> Iterator[tuple[int, int, dict[int, torch.Tensor]]]:
    """(start, end, layer -> its frames [start, end) on the device) for consecutive chunks.

    Device tensors are sliced; offloaded layers are copied back once per chunk, one chunk
    ahead: the next chunk's copies are issued once the current one is assembled, so they
    overlap the work queued on it.
    """

    def fetch(start: int, end: int) -> dict[int, "torch.Tensor | FramesInFlight"]:
        return {
            index: layer.fetch_frames(start, end)
            if isinstance(layer, OffloadedLayer)
            else layer[:, start:end]
            for index, layer in layers.items()
        }

    bounds = [(s, min(s + chunk_frames, frames)) for s in range(0, frames, chunk_frames)]
    ahead = [fetch(*bounds[0])]
    for number, (start, end) in enumerate(bounds):
        # popped, the staging buffers go once assembled, before the next chunk's are allocated
        chunk = {
            index: value.assemble() if isinstance(value, FramesInFlight) else value
            for index, value in ahead.pop().items()
        }
        if number + 1 < len(bounds):
            ahead.append(fetch(*bounds[number + 1]))
        yield start, end, chunk
