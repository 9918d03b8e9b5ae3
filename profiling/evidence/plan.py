"""What the GPU evidence runs: sizes for one H100/H200 (VGGT-1B at 518x518), or tiny ones that
run the same steps on a CPU in seconds (the dry run the tests use); and the two variants it
adds to the sweep's, offloaded and unchunked."""

import dataclasses
from dataclasses import dataclass

from torch import nn

from profiling.sweep.presets import load_preset
from vggt.models.architecture import VGGT_1B, Architecture
from vggt.models.variants import Variant, register_variant, variant_names
from vggt.precision import Precision, get_precision

GB = 10**9
# VGGT's README, the aggregator on an H100 (peak memory in GB as printed, by frame count).
REFERENCE_BYTES = {8: int(3.23 * GB), 100: int(21.15 * GB), 200: int(40.63 * GB)}
# The README's precision (fp32 weights under bf16 autocast), and the aggregator's weights in bf16.
README_PRECISION = get_precision("autocast")
CAST_PRECISION = get_precision("bf16")
OFFLOAD = "offload"
UNCHUNKED = "unchunked"


@dataclass(frozen=True)
class Plan:
    """The model and sizes of every step."""

    model: str
    architecture: Architecture
    side: int
    frames: tuple[int, ...]
    precisions: tuple[Precision, ...]
    budget_precision: Precision
    budget_frames: int
    offload_frames: int
    chunk_frames: tuple[int, ...]
    reference_bytes: dict[int, int]
    pytest_paths: tuple[str, ...]
    seed: int = 0

    def step_lines(self, device: str) -> dict[str, str]:
        """Step name -> what it runs, as the plan printed first says it."""
        precisions = " and ".join(precision.label for precision in self.precisions)
        size = f"{self.side}x{self.side}"
        tests = " ".join(self.pytest_paths) or "tests/"
        return {
            "gpu-tests": f"pytest -m gpu --device {device} {tests}",
            "aggregator": f"full and optimized aggregators at {counted(self.frames)} frames of "
            f"{size}, {precisions}: peaks, NVML, time, max abs diff",
            "estimates": "the estimator's figures for each point of `aggregator`, computed in "
            "worker processes while the other steps run",
            "memory-budget": f"full and optimized at {self.budget_frames} frames "
            f"({self.budget_precision.label}) under a memory cap between their estimates",
            "offload": f"the whole optimized model at {self.offload_frames} frames "
            f"({README_PRECISION.label}), kept layers on the device and offloaded to the host",
            "chunking": f"the optimized aggregator at {counted(self.chunk_frames)} frames "
            f"({README_PRECISION.label}) with and without token chunks",
        }


def counted(values: tuple[int, ...]) -> str:
    """1, 8, 100 and 200."""
    texts = [str(value) for value in values]
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + f" and {texts[-1]}"


def gpu_plan() -> Plan:
    """VGGT-1B's aggregator at 518x518, sized for about seven minutes on one H100 or H200. The
    memory cap is tried with bf16 weights, the precision of the README's estimator table."""
    return Plan(
        model="VGGT-1B (preset vggt-1b), random seeded weights",
        architecture=VGGT_1B,
        side=518,
        frames=(1, 8, 100, 200),
        precisions=(README_PRECISION, CAST_PRECISION),
        budget_precision=CAST_PRECISION,
        budget_frames=100,
        offload_frames=200,
        chunk_frames=(8, 200),
        reference_bytes=REFERENCE_BYTES,
        pytest_paths=(),
    )


def dry_run_plan() -> Plan:
    """The tiny preset made 12 layers deep at 28x28, so its kept layers outweigh its images
    and the optimized aggregator needs clearly less than the full one; its memory cap is
    applied in fp32, which the estimator counts exactly."""
    architecture = dataclasses.replace(load_preset("tiny").architecture, depth=12, img_size=28)
    return Plan(
        model="tiny preset made 12 layers deep, random seeded weights",
        architecture=architecture,
        side=28,
        frames=(1, 4),
        precisions=(README_PRECISION, CAST_PRECISION),
        budget_precision=get_precision("fp32"),
        budget_frames=16,
        offload_frames=3,
        chunk_frames=(4, 64),
        reference_bytes={},
        pytest_paths=("tests/profiling/test_gpu.py",),
    )


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
