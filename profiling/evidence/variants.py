"""The variants the GPU evidence adds to the sweep's: the optimized model with its kept layers
offloaded to the host, and the optimized aggregator without token chunks."""

from torch import nn

from profiling.sweep.variants import Variant, register_variant, variant_names
from vggt.models.architecture import Architecture

OFFLOAD = "offload"
UNCHUNKED = "unchunked"


def build_offload(component: str, architecture: Architecture) -> nn.Module:
    """`VGGTOptimized(offload_outputs=True)`: kept layers in page-locked host memory."""
    from vggt.models.vggt_vram_optimized import VGGTOptimized

    if component != "model":
        raise ValueError(f"the {OFFLOAD} variant is a whole model, not a {component}")
    return VGGTOptimized(**architecture.model_kwargs(), offload_outputs=True)


def build_unchunked(component: str, architecture: Architecture) -> nn.Module:
    """The optimized aggregator with `transient_budget=None`: each in-place block runs on the
    whole residual stream at once."""
    from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized

    if component != "aggregator":
        raise ValueError(f"the {UNCHUNKED} variant is an aggregator, not a {component}")
    return AggregatorVramOptimized(
        **architecture.aggregator_kwargs(),
        selected_layer_idx=architecture.head_layers(),
        transient_budget=None,
    )


def register_evidence_variants() -> None:
    """Register both variants (once per process)."""
    for variant in (Variant(OFFLOAD, build_offload), Variant(UNCHUNKED, build_unchunked)):
        if variant.name not in variant_names():
            register_variant(variant)
