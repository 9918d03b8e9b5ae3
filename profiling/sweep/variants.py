"""The registry of model variants a sweep compares; `full` is the baseline of every comparison.

A variant builds a module for a component ("aggregator" or "model") from an `Architecture`.
All variants of a configuration must share one state dict: the sweep initialises the first
variant's weights and loads them into the others, so they run with the very same tensors.
More variants come from `--variant-module NAME`: the module is imported and its
`register_variants()` is called, which calls `register_variant` here. The builders import the
model classes when they run, so checking variant names on the command line stays light.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from profiling.sweep.cases import Architecture

BASELINE = "full"


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


def load_variant_module(module_name: str) -> None:
    """Import `module_name` and call its `register_variants()`; ValueError if either fails."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import variant module {module_name!r}: {error}") from None
    register = getattr(module, "register_variants", None)
    if not callable(register):
        raise ValueError(f"variant module {module_name!r} has no register_variants() function")
    register()


def splits_sequences(name: str, component: str, architecture: Architecture) -> bool:
    """Whether variant `name` builds a module that can split a sequence over ranks (one with
    `parallelize`); built on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        module = get_variant(name).build(component, architecture)
    return callable(getattr(module, "parallelize", None))


def build_full(component: str, architecture: Architecture) -> nn.Module:
    """The reference modules: `Aggregator` returning every layer, or `VGGT`."""
    from vggt.models.aggregator import Aggregator
    from vggt.models.vggt import VGGT

    if component == "aggregator":
        return Aggregator(**architecture.aggregator_kwargs())
    return VGGT(**architecture.model_kwargs())


def build_optimized(component: str, architecture: Architecture) -> nn.Module:
    """The modules that keep only the layers the heads read."""
    from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized
    from vggt.models.vggt_vram_optimized import VGGTOptimized

    if component == "aggregator":
        return AggregatorVramOptimized(
            **architecture.aggregator_kwargs(), selected_layer_idx=architecture.head_layers()
        )
    return VGGTOptimized(**architecture.model_kwargs())


register_variant(Variant(BASELINE, build_full))
register_variant(Variant("optimized", build_optimized))
