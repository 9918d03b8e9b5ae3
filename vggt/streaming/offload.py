"""Buffers for the kept layer outputs: filled half by half as blocks finish, on the compute
device or, offloaded, in (pinned) host memory that the heads read slice by slice."""

import torch


class OffloadedLayer:
    """A layer output held in host memory for the heads: indexing slices it on the host, and
    any other use (a torch function, a tensor method) first copies that slice to `device`."""

    __slots__ = ("device", "host")

    def __init__(self, host: torch.Tensor, device: torch.device) -> None:
        self.host = host
        self.device = device

    @property
    def shape(self) -> torch.Size:
        return self.host.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.host.dtype

    @property
    def ndim(self) -> int:
        return self.host.ndim

    def __getitem__(self, index: object) -> "OffloadedLayer":
        return OffloadedLayer(self.host[index], self.device)

    def to_device(self) -> torch.Tensor:
        """The data on the compute device (a copy of just this slice)."""
        return self.host.to(self.device, non_blocking=True)

    def __getattr__(self, name: str) -> object:
        return getattr(self.to_device(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def materialise(value: object) -> object:
            return value.to_device() if isinstance(value, OffloadedLayer) else value

        args = tuple(materialise(a) for a in args)
        kwargs = {k: materialise(v) for k, v in (kwargs or {}).items()}
        return func(*args, **kwargs)

    def __repr__(self) -> str:
        shape, host = tuple(self.shape), self.host.device
        return f"OffloadedLayer(shape={shape}, host={host}, device={self.device})"


class KeptLayers:
    """Output buffers of the kept layers, [B, S, P, parts * C] each, allocated at first write.

    `write(layer, part, stream)` copies one block's residual stream [B, S, P, C] into its part
    of the layer's buffer at once, so the stream can be overwritten by the next block. With
    `offload_device` the buffers live there (pinned when the compute device is CUDA).
    """

    def __init__(
        self, indices: list[int], parts: int, offload_device: torch.device | None = None
    ) -> None:
        self.indices = set(indices)
        self.parts = parts
        self.offload_device = offload_device
        self.layers: dict[int, torch.Tensor] = {}
        self.compute_device: torch.device | None = None

    def __contains__(self, layer: int) -> bool:
        return layer in self.indices

    def write(self, layer: int, part: int, stream: torch.Tensor) -> None:
        """Copy `stream` into part `part` of layer `layer`'s buffer."""
        dim = stream.shape[-1]
        if layer not in self.layers:
            self.compute_device = stream.device
            offload = self.offload_device
            self.layers[layer] = torch.empty(
                (*stream.shape[:-1], self.parts * dim),
                dtype=stream.dtype,
                device=offload or stream.device,
                pin_memory=offload is not None and offload.type == "cpu" and stream.is_cuda,
            )
        start = part * dim
        self.layers[layer][..., start : start + dim].copy_(stream, non_blocking=True)

    def finish(self) -> dict[int, "torch.Tensor | OffloadedLayer"]:
        """The filled buffers by layer; offloaded ones wait for their copies and are wrapped."""
        if self.offload_device is None:
            return dict(self.layers)
        if self.compute_device is not None and self.compute_device.type == "cuda":
            torch.cuda.current_stream(self.compute_device).synchronize()
        device = self.compute_device
        return {index: OffloadedLayer(host, device) for index, host in self.layers.items()}
