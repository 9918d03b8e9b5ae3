"""More variants for a sweep than `vggt.models.variants`' `full` and `optimized`:
`--variant-module NAME` imports NAME and calls its `register_variants()`, which calls
`vggt.models.variants.register_variant`; and which variants can split a sequence."""

import importlib

import torch

from vggt.models.architecture import Architecture
from vggt.models.variants import get_variant


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
