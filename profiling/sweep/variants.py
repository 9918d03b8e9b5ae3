"""The variants a sweep compares (`vggt.models.variants`: `full`, the baseline, and
`optimized`), and more from `--variant-module NAME`: the module is imported and its
`register_variants()` is called, which calls `register_variant` (importable from here or from
`vggt.models.variants`)."""

import importlib

import torch

from vggt.models.architecture import Architecture
from vggt.models.variants import (
    BASELINE,
    Variant,
    build_full,
    build_optimized,
    get_variant,
    register_variant,
    variant_names,
)

__all__ = [
    "BASELINE",
    "Variant",
    "build_full",
    "build_optimized",
    "get_variant",
    "load_variant_module",
    "register_variant",
    "splits_sequences",
    "variant_names",
]


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
