"""Builds the variants of a configuration on one device with one shared set of weights.

Modules are created on the meta device (no allocation), the first variant is materialised
and given deterministic weights, and every other variant loads that state dict with
`assign=True`, so all variants hold the same tensors and the weights are resident once. In
train mode each variant updates its weights, so each is built alone with a copy of the same
initial weights (`build_variant`).
"""

import math

import torch
from torch import nn

from profiling.sweep.cases import CaseGroup
from vggt.models.variants import get_variant

LAYER_SCALE_INIT = 0.1
VECTOR_NOISE = 0.02


def init_weights(module: nn.Module, seed: int) -> None:
    """Seeded, scale-aware weights: normal / sqrt(fan_in) for matrices, ones for norm weights,
    LayerScale at 0.1 and small noise for the other vectors."""
    device = next(module.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if tensor.ndim >= 2:
                tensor.normal_(generator=generator).div_(math.sqrt(math.prod(tensor.shape[1:])))
            elif leaf == "gamma":
                tensor.fill_(LAYER_SCALE_INIT)
            elif leaf == "weight":
                tensor.fill_(1.0)
            else:
                tensor.normal_(generator=generator).mul_(VECTOR_NOISE)


class ModelCache:
    """Keeps the modules of the last configuration so frame counts and sizes reuse them."""

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.seed = seed
        self._key: tuple | None = None
        self._modules: dict[str, nn.Module] = {}

    def modules_for(self, group: CaseGroup) -> dict[str, nn.Module]:
        """Variant name -> module in eval mode for this group, building them on a key change."""
        # What makes two configurations share their modules.
        key = (group.component, group.architecture, group.precision, group.variants)
        if key != self._key:
            self.clear()
            self._modules = build_shared(group, self.device, self.seed)
            self._key = key
        return self._modules

    def clear(self) -> None:
        """Drop the cached modules so their memory can be freed."""
        self._modules = {}
        self._key = None


def build_shared(group: CaseGroup, device: torch.device, seed: int) -> dict[str, nn.Module]:
    """Build every variant of `group` on `device`, all holding the first variant's weights."""
    first = build_variant(group, group.variants[0], device, seed)
    state = first.state_dict()
    modules = {group.variants[0]: first}
    for name in group.variants[1:]:
        with torch.device("meta"):
            modules[name] = get_variant(name).build(group.component, group.architecture)
        modules[name].load_state_dict(state, assign=True)
    for module in modules.values():
        module.eval()
    return modules


def build_variant(
    group: CaseGroup,
    name: str,
    device: torch.device,
    seed: int,
    state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Variant `name` of `group` on `device` with weights of its own: a copy of `state`, or
    without one the seeded weights `build_shared` gives the first variant."""
    with torch.device("meta"):
        module = get_variant(name).build(group.component, group.architecture)
    module.to_empty(device=device)
    if state is None:
        init_weights(module, seed)
        return group.precision.apply(module)
    group.precision.apply(module)
    module.load_state_dict(state)
    return module
