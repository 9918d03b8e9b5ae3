"""Named ways to build the module that the estimator and the profiling sweep measure; `full`
(the reference) is the baseline of every comparison.

A variant builds a module for a component ("aggregator" or "model") from an `Architecture`.
All variants of a configuration share one state dict. More variants come from
`register_variant` (the sweep's `--variant-module NAME` imports NAME and calls its
`register_variants()`, which calls it). The builders import the model classes when they
run, so naming and checking variants (a command line's options) stays light.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vggt.models.architecture import Architecture

BASELINE = "full"
COMPONENTS = ("aggregator", "model")


@dataclass(frozen=True)
class Variant:
    """A named way to build the module measured for a component."""

    name: str
    build: Callable[[str, Architecture], nn.Module]


_REGISTRY: dict[str, Variant] = {}


def register_variant(variant: Variant) -> None:
    """Add a variant; ValueError if the name is taken."""
    if variant.name in _REGISTRY:
        raise ValueError(f"a variant named {variant.name!r} is already registered")
    _REGISTRY[variant.name] = variant


def get_variant(name: str) -> Variant:
    """The registered variant `name`; ValueError naming the known ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(variant_names())}")
    return _REGISTRY[name]


def variant_names() -> list[str]:
    """Registered names, in registration order."""
    return list(_REGISTRY)


def build_full(component: str, architecture: Architecture) -> nn.Module:
    """The reference modules: `Aggregator` returning every layer, or `VGGT`."""
    from vggt.models.aggregator import Aggregator
    from vggt.models.vggt import VGGT

    if component == "aggregator":
        return Aggregator(**architecture.aggregator_kwargs())
    return VGGT(**architecture.model_kwargs())


def build_optimized(component: str, architecture: Architecture) -> nn.Module:
    """The modules that keep only the layers the heads read; the model as `vggt.infer` runs
    it, its depth and point predictions put in host memory chunk by chunk."""
    from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized
    from vggt.models.vggt_vram_optimized import VGGTOptimized

    if component == "aggregator":
        return AggregatorVramOptimized(
            **architecture.aggregator_kwargs(), selected_layer_idx=architecture.head_layers()
        )
    model = VGGTOptimized(**architecture.model_kwargs())
    model.predictions_device = torch.device("cpu")
    return model


register_variant(Variant(BASELINE, build_full))
register_variant(Variant("optimized", build_optimized))
