"""A variant built on fake tensors, and the bytes one forward pass of it holds on the compute
device at its peak: weights, input, kept outputs and transient activations, counted as live
tensor storages (no kernel workspaces, no allocator fragmentation)."""

from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from profiling.meters.fake import LiveBytesTracker
from profiling.meters.outputs import named_outputs, output_bytes
from profiling.sweep.cases import Architecture
from profiling.sweep.variants import get_variant


@dataclass(frozen=True)
class Estimate:
    """Bytes on the compute device at the peak of one forward pass, and what they are."""

    variant: str
    frames: int
    peak_bytes: int
    weights_bytes: int
    input_bytes: int
    output_bytes: int
    transient_bytes: int
    host_bytes: int


class FakeModel:
    """One variant built on fake storage (no memory), reused across frame counts."""

    def __init__(
        self,
        variant: str,
        component: str,
        architecture: Architecture,
        dtype: torch.dtype,
        offload: bool = False,
    ) -> None:
        self.variant = variant
        self.dtype = dtype
        with torch.device("meta"):
            module = get_variant(variant).build(component, architecture).to(dtype)
        aggregator = getattr(module, "aggregator", module)
        if offload and hasattr(aggregator, "offload_device"):
            aggregator.offload_device = torch.device("meta")
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        with self.mode:
            self.module: nn.Module = module.to_empty(device="cpu").eval()
        self.weights_bytes = output_bytes(self.weights()).device

    def weights(self) -> list[torch.Tensor]:
        """The module's parameters and buffers (fake tensors)."""
        return [*self.module.parameters(), *self.module.buffers()]

    def estimate(self, frames: int, batch: int, height: int, width: int) -> Estimate:
        """Run one fake forward pass of `batch` x `frames` images of height x width."""
        with self.mode:
            images = torch.rand(batch, frames, 3, height, width, dtype=self.dtype)
            tracker = LiveBytesTracker("cpu")
            tracker.ignore([*self.weights(), images])
            with tracker, torch.no_grad():
                outputs = self.module(images)
            kept = output_bytes(named_outputs(outputs).values())
            peak = tracker.peak_bytes
        input_bytes = images.numel() * images.element_size()
        return Estimate(
            variant=self.variant,
            frames=frames,
            peak_bytes=self.weights_bytes + input_bytes + peak,
            weights_bytes=self.weights_bytes,
            input_bytes=input_bytes,
            output_bytes=kept.device,
            transient_bytes=peak - kept.device,
            host_bytes=kept.host,
        )
