"""What one rank of an inference run needs, asked before any model is loaded: the optimized
VGGT model as the inference command runs it (no track head, batch 1), its frames split evenly
over `world_size` GPUs, estimated on fake tensors (no memory, no GPU)."""

from dataclasses import dataclass, field

import torch

from profiling.estimate.fake_model import Estimate, FakeModel
from profiling.estimate.fit import Cache, max_frames_by_budget
from profiling.sweep.cases import Architecture
from profiling.sweep.presets import load_preset


@dataclass
class RankEstimate:
    """The busiest rank's estimate for the frames asked, and the fit for other budgets (with the
    same model and size, sharing its passes)."""

    estimate: Estimate
    height: int
    width: int
    model: FakeModel = field(repr=False)
    cache: Cache = field(repr=False)

    @property
    def required_bytes(self) -> int:
        """Device memory the busiest rank needs: reserved bound + CUDA context."""
        return self.estimate.required_bytes

    def max_frames(self, budget: int) -> int:
        """The most frames over all ranks whose busiest rank needs at most `budget` bytes of
        device memory (0: not even a frame per rank)."""
        fits = max_frames_by_budget(self.model, [budget], 1, self.height, self.width, self.cache)
        return fits[budget]


def per_rank_estimate(
    frames: int,
    world_size: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    dtype_mode: str,
    offload: bool,
    architecture: Architecture | None = None,
) -> RankEstimate:
    """One fake pass of `frames` frames (over all ranks) of height x width fp32 images through the
    optimized model split over `world_size` GPUs (ulysses attention; VGGT-1B's architecture
    by default); `dtype_mode` "autocast" (fp32 weights under `dtype` autocast) or "cast"
    (weights in `dtype`, also under autocast); `offload` keeps the aggregator's layers in host
    memory. ValueError for frames fewer than ranks or more ranks than heads."""
    architecture = architecture or load_preset("vggt-1b").architecture
    model = FakeModel(
        "optimized",
        "model",
        architecture,
        dtype,
        dtype_mode,
        offload,
        world_size=world_size,
    )
    cache = {frames: model.estimate(frames, 1, height, width)}
    return RankEstimate(cache[frames], height, width, model, cache)
