"""Peak live tensor bytes on CPU (torch.profiler memory events): optimized against full."""

import functools

import pytest
import torch

from profiling.meters.cpu import peak_live_bytes
from tests.support.configs import MEMORY_AGGREGATOR
from tests.support.images import seeded_images
from vggt.models.aggregator import Aggregator
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized

KEPT = [4, 11, 17, 23]
# The same 24 layers at half the width and side, for the sweep over frame counts.
NARROW_AGGREGATOR = {**MEMORY_AGGREGATOR, "embed_dim": 128, "img_size": 112}


def paired(config: dict) -> tuple[Aggregator, AggregatorVramOptimized]:
    """The full and optimized aggregators of `config` with the same seeded weights."""
    torch.manual_seed(0)
    full = Aggregator(**config).eval()
    optimized = AggregatorVramOptimized(**config, selected_layer_idx=KEPT).eval()
    optimized.load_state_dict(full.state_dict())
    return full, optimized


@pytest.fixture(scope="module")
def aggregators() -> tuple[Aggregator, AggregatorVramOptimized]:
    return paired(MEMORY_AGGREGATOR)


@pytest.fixture(scope="module")
def narrow_aggregators() -> tuple[Aggregator, AggregatorVramOptimized]:
    return paired(NARROW_AGGREGATOR)


def measure_peak(model: torch.nn.Module, frames: int, side: int = 224) -> int:
    """The peak live bytes of one forward on `frames` seeded images of `side` pixels."""
    images = seeded_images(1, frames, side, side)
    with torch.no_grad():
        return peak_live_bytes(lambda: model(images))


# Each module-scoped model's peak at a frame count and size, measured once for the tests that
# read it (the byte counts are deterministic: one test checks it).
peak = functools.cache(measure_peak)


def stream_bytes(frames: int) -> int:
    """Bytes of one residual stream [1, S, P, C] in float32."""
    tokens = 1 + 4 + (224 // 14) ** 2
    return frames * tokens * MEMORY_AGGREGATOR["embed_dim"] * 4


def test_optimized_peak_is_under_022_of_full_at_8_frames(aggregators: tuple) -> None:
    full, optimized = aggregators
    full_peak, optimized_peak = peak(full, 8), peak(optimized, 8)
    assert optimized_peak / full_peak <= 0.22
    assert measure_peak(optimized, 8) == optimized_peak, "CPU byte counts must be deterministic"


def test_layer_selection_alone_is_under_030_of_full(aggregators: tuple) -> None:
    full, optimized = aggregators
    unchunked = AggregatorVramOptimized(
        **MEMORY_AGGREGATOR, selected_layer_idx=KEPT, transient_budget=None
    ).eval()
    unchunked.load_state_dict(optimized.state_dict())
    chunked_peak, unchunked_peak = peak(optimized, 8), peak(unchunked, 8)
    assert chunked_peak < unchunked_peak <= 0.30 * peak(full, 8)


def test_peak_bytes_bracket_the_analytic_floor(aggregators: tuple) -> None:
    full, optimized = aggregators
    unit = stream_bytes(8)
    kept_outputs = 2 * len(KEPT) * unit
    optimized_peak = peak(optimized, 8)
    # kept outputs, the residual stream, K and V, and chunk-sized temporaries
    assert kept_outputs + 3 * unit < optimized_peak <= kept_outputs + 5 * unit
    assert peak(full, 8) >= 2 * 24 * unit


# Single frames, odd and even counts, and the sweep's end (each count costs two forwards).
@pytest.mark.parametrize("frames", [1, 2, 3, 5, 8, 13, 16])
def test_optimized_never_above_full(narrow_aggregators: tuple, frames: int) -> None:
    full, optimized = narrow_aggregators
    side = NARROW_AGGREGATOR["img_size"]
    assert peak(optimized, frames, side) <= peak(full, frames, side)
