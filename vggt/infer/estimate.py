"""How much device memory a run needs on each rank, asked before any model is loaded."""

import dataclasses
import warnings
from collections.abc import Callable, Mapping

import torch

from vggt.parallel.group import split_evenly

# VGGT-1B's shape, as the estimator's `vggt-1b` preset names it.
VGGT_1B = "vggt-1b"
# The constructor arguments that size the estimator's model.
SHAPE_KEYS = (
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "patch_embed",
    "intermediate_layer_idx",
)


def estimate_per_rank(
    frames: int,
    world_size: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    dtype_mode: str,
    offload: bool,
    config: Mapping[str, object] | None = None,
    attention: str | None = None,
) -> tuple[int, Callable[[int], int]]:
    """Peak bytes on the busiest rank of a run, and `fits(budget)`: the most frames (over all
    `world_size` ranks) whose per-rank peak stays within `budget` bytes.

    Built on `profiling.estimate.fake_model.FakeModel` (variant "optimized", component
    "model": no track head, batch 1), on fake tensors, so without memory or a GPU. Split over
    ranks it traces rank 0, the busiest (the largest share and frame 0), through a simulated
    process group, so the exchange buffers of global attention (`attention`; default ulysses,
    ring beyond one rank per head) count. fp32 and autocast run the model with fp32 weights
    and activations (autocast is not applied: an upper bound); cast runs the aggregator's
    weights in `dtype` and the heads in fp32, as the command line does. `config` holds the
    model's constructor arguments that differ from VGGT-1B's (the `vggt-1b` preset).

    One fake pass gives the peak; `fits` makes one more (at one frame per rank, or two) and
    extends the line through the two, so a call costs at most two passes.
    """
    from profiling.estimate.fake_model import FakeModel
    from profiling.meters.outputs import output_bytes
    from profiling.sweep.presets import load_preset

    architecture = load_preset(VGGT_1B).architecture
    sizing = {key: config[key] for key in SHAPE_KEYS if config and key in config}
    if "intermediate_layer_idx" in sizing:
        sizing["intermediate_layer_idx"] = tuple(sizing["intermediate_layer_idx"])
    architecture = dataclasses.replace(architecture, **sizing)
    if attention is None:
        attention = "ulysses" if world_size <= architecture.num_heads else "ring"
    model = FakeModel(
        "optimized",
        "model",
        architecture,
        torch.float32,
        offload=offload,
        world_size=world_size,
        attention=attention,
    )
    weights_bytes = model.weights_bytes
    if dtype_mode == "cast" and dtype != torch.float32:
        with model.mode:
            _cast_parameters(model.module.aggregator, dtype)
        weights_bytes = output_bytes(model.weights()).device
    peaks: dict[int, int] = {}

    def peak(share: int) -> int:
        if share not in peaks:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = model.estimate(share * world_size, 1, height, width)
            peaks[share] = result.peak_bytes - model.weights_bytes + weights_bytes
        return peaks[share]

    share = max(split_evenly(frames, world_size))
    busiest = peak(share)

    def fits(budget: int) -> int:
        probe = 1 if share > 1 else 2
        slope = max(1.0, (peak(share) - peak(probe)) / (share - probe))
        at_zero = peak(share) - slope * share
        return max(0, int((budget - at_zero) // slope)) * world_size

    return busiest, fits


def _cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Replace every floating-point parameter of `module` by one of `dtype` (`Module.to`
    cannot swap fake parameters in place)."""
    for owner in module.modules():
        for name, parameter in list(owner.named_parameters(recurse=False)):
            if parameter.is_floating_point():
                cast = torch.nn.Parameter(parameter.detach().to(dtype), requires_grad=False)
                setattr(owner, name, cast)
