"""Hypothesis property: heads read the same numbers from the view as from the full list."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from vggt.heads.camera_head import CameraHead
from vggt.heads.dpt_head import DPTHead
from vggt.models.aggregator import Aggregator
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized


@st.composite
def architectures(draw: st.DrawFn) -> dict:
    num_heads = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([4, 8]))
    depth = draw(st.integers(2, 6))
    patch = draw(st.sampled_from([7, 8, 14]))
    head_layers = draw(st.lists(st.integers(0, depth - 1), min_size=4, max_size=4))
    extra = draw(st.sets(st.integers(0, depth - 1)))
    return {
        "aggregator": {
            "img_size": patch * 4,
            "patch_size": patch,
            "embed_dim": num_heads * head_dim,
            "depth": depth,
            "num_heads": num_heads,
            "patch_embed": "conv",
        },
        "head_layers": head_layers,
        "kept": sorted(set(head_layers) | extra | {depth - 1}),
        "grid": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "batch": draw(st.integers(1, 2)),
        "frames": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 2**16)),
    }


@given(architectures())
def test_heads_agree_on_view_and_full_list(arch: dict) -> None:
    torch.manual_seed(arch["seed"])
    config = arch["aggregator"]
    full = Aggregator(**config).eval()
    optimized = AggregatorVramOptimized(**config, selected_layer_idx=arch["kept"]).eval()
    optimized.load_state_dict(full.state_dict())
    dim = 2 * config["embed_dim"]
    camera = CameraHead(dim_in=dim, trunk_depth=1, num_heads=2).eval()
    dpt = DPTHead(
        dim_in=dim,
        patch_size=config["patch_size"],
        features=8,
        out_channels=[4, 8, 8, 8],
        intermediate_layer_idx=arch["head_layers"],
    ).eval()
    patch = config["patch_size"]
    height, width = (patch * n for n in arch["grid"])
    images = torch.rand(arch["batch"], arch["frames"], 3, height, width)
    with torch.no_grad():
        layers, start = full(images)
        view, _, kept = optimized(images)
        assert kept == arch["kept"]
        torch.testing.assert_close(camera(view)[-1], camera(layers)[-1], rtol=1e-4, atol=1e-5)
        for ours, reference in zip(
            dpt(view, images=images, patch_start_idx=start),
            dpt(layers, images=images, patch_start_idx=start),
            strict=True,
        ):
            torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
