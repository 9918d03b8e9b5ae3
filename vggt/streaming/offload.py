"""The kept layer outputs: written half by half as blocks finish, on the compute device or
offloaded to host memory, and read back for the heads frame chunk by frame chunk.

Offloaded, each finished half leaves the device in contiguous pieces on a side stream while
the next blocks run; a block waits (by CUDA event) only for the piece it is about to
overwrite. Host memory is one block of exactly the kept bytes, page-locked with
cudaHostRegister rather than taken from the caching host allocator, which rounds every
block up to a power of two and keeps it. Reading back, every head's share of a frame chunk
comes from one copy of that chunk, issued one chunk ahead of use.
"""

import mmap
import sys
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


class HostStore:
    """Host memory of one forward's offloaded layers, the copy stream and the transfer log.

    The memory is one block of whole pages; with a CUDA compute device it is registered
    (page-locked), so copies run asynchronously, and it is unregistered once the store is
    garbage, after the last copy that touches it has finished.
    """

    def __init__(self, nbytes: int, host: torch.device, compute: torch.device) -> None:
        page = mmap.PAGESIZE
        span = -(-nbytes // page) * page
        self.compute = compute
        self.transfers = TransferLog()
        self.copy_stream = torch.cuda.Stream(compute) if compute.type == "cuda" else None
        self._last_copy: torch.cuda.Event | None = None
        self._raw = torch.empty(span + page, dtype=torch.uint8, device=host)
        offset = (-self._raw.data_ptr()) % page if host.type == "cpu" else 0
        self.memory = self._raw[offset : offset + span]
        self.pinned_bytes = 0
        if self.copy_stream is not None and host.type == "cpu":
            _check(torch.cuda.cudart().cudaHostRegister(self.memory.data_ptr(), span, 0))
            self.pinned_bytes = span

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
        self._last_copy = done
        return done

    def __del__(self) -> None:
        if not self.pinned_bytes:
            return
        if self._last_copy is not None:
            self._last_copy.synchronize()
        _check(torch.cuda.cudart().cudaHostUnregister(self.memory.data_ptr()))


def _check(status: object) -> None:
    if int(status) != 0:
        raise RuntimeError(f"page-locking host memory with CUDA failed (cudaError {int(status)})")


class OffloadedLayer:
    """A kept layer output [B, S, P, parts * C] held in host memory as `parts` contiguous
    host [parts, B, S, P, C]. It is not a tensor: `read_frames` copies frames back."""

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

    def read_frames(self, start: int, end: int) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Frames [start, end) on the compute device, [B, end - start, P, parts * C], and the
        event after which they are there; the copies are contiguous (one per half and batch)."""
        parts, batch, _, tokens, dim = self.host.shape
        shape = (batch, end - start, tokens, parts * dim)
        out = torch.empty(shape, dtype=self.dtype, device=self.store.compute)
        event = None
        for part in range(parts):
            for index in range(batch):
                target = out[index, :, :, part * dim : (part + 1) * dim]
                event = self.store.to_device(target, self.host[part, index, start:end])
        return out, event

    def __repr__(self) -> str:
        return f"OffloadedLayer(shape={tuple(self.shape)}, host={self.host.device})"


class KeptLayers:
    """Output buffers of the kept layers: `write(layer, part, stream)` stores one block's
    residual stream [B, S, P, C] as part `part` of layer `layer` ([B, S, P, parts * C]).

    On the device a layer's buffer is allocated at its first write and filled at once.
    Offloaded, the host memory of all of them is taken up front (`stream` gives the shape,
    dtype and device of the residual stream), each write leaves in pieces on a side stream,
    `before_write(end)` makes the compute stream wait for the pieces of the tokens a block is
    about to overwrite, and `finish()` returns `OffloadedLayer`s.
    """

    def __init__(
        self,
        indices: Iterable[int],
        parts: int,
        stream: torch.Tensor,
        offload_device: torch.device | None = None,
    ) -> None:
        self.indices = sorted(set(indices))
        self.parts = parts
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
        piece = max(1, COPY_PIECE_BYTES // (dim * flat.element_size()))
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
    ahead, so the next chunk's copy overlaps the work queued on the current one.
    """

    def fetch(start: int, end: int) -> tuple[dict[int, torch.Tensor], list]:
        chunk, waits = {}, []
        for index, layer in layers.items():
            if isinstance(layer, OffloadedLayer):
                chunk[index], done = layer.read_frames(start, end)
                waits.append((layer.store.compute, done))
            else:
                chunk[index] = layer[:, start:end]
        return chunk, waits

    bounds = [(s, min(s + chunk_frames, frames)) for s in range(0, frames, chunk_frames)]
    ahead = fetch(*bounds[0])
    for number, (start, end) in enumerate(bounds):
        chunk, waits = ahead
        if number + 1 < len(bounds):
            ahead = fetch(*bounds[number + 1])
        for device, done in waits:
            if done is not None:
                torch.cuda.current_stream(device).wait_event(done)
        yield start, end, chunk
