"""The profiling suite's case grid, presets and variant registry."""

import dataclasses

import pytest
import torch

from profiling.sweep.cases import SweepSettings, build_groups
from profiling.sweep.models import ModelCache
from profiling.sweep.presets import PresetError, load_preset, preset_names
from vggt.models.architecture import Architecture
from vggt.models.variants import BASELINE, get_variant, register_variant, variant_names
from vggt.precision import get_precision

TINY = load_preset("tiny")


def settings(**changes) -> SweepSettings:
    return dataclasses.replace(TINY.settings, **changes)


def test_shipped_presets_load_with_the_required_grids() -> None:
    assert {"vggt-1b", "cpu-small", "tiny"} <= set(preset_names())
    big = load_preset("vggt-1b")
    assert big.architecture.embed_dim == 1024
    assert big.architecture.patch_embed == "dinov2_vitl14_reg"
    assert big.settings.frames == (1, 2, 4, 8, 16, 32, 64, 128, 200, 256)
    assert big.settings.image_sizes == ((518, 518),)
    assert [p.dtype for p in big.settings.precisions] == ["bf16"]
    small = load_preset("cpu-small")
    assert small.architecture.patch_embed == "conv"
    assert small.architecture.embed_dim == 256
    assert [p.dtype for p in small.settings.precisions] == ["fp32"]


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(PresetError, match=r"unknown preset 'nope'; choose from .*cpu-small"):
        load_preset("nope")


def test_grid_is_the_product_of_its_axes_with_unique_stable_ids() -> None:
    grid = settings(
        variants=("full", "optimized"),
        components=("aggregator", "model"),
        frames=(1, 2),
        batch=(1, 2),
        image_sizes=((56, 56), (28, 56)),
        precisions=(get_precision("fp32"), get_precision("bf16")),
    )
    groups = build_groups(TINY.architecture, grid)
    cases = [case for group in groups for case in group.cases()]
    assert len(groups) == 2 * 2 * 2 * 2 * 2
    assert len(cases) == 2 * len(groups)
    ids = [case.case_id for case in cases]
    assert len(set(ids)) == len(ids)
    again = [
        case.case_id for group in build_groups(TINY.architecture, grid) for case in group.cases()
    ]
    assert ids == again
    assert "aggregator-optimized-bf16-b2-f1-28x56-" in " ".join(ids)


def test_case_ids_change_with_the_architecture() -> None:
    wider = dataclasses.replace(TINY.architecture, embed_dim=64)
    one = build_groups(TINY.architecture, TINY.settings)[0].cases()[0].case_id
    other = build_groups(wider, TINY.settings)[0].cases()[0].case_id
    assert one != other


def test_groups_come_most_expensive_first() -> None:
    groups = build_groups(TINY.architecture, settings(frames=(1, 4, 2, 8)))
    assert [g.frames for g in groups] == [8, 4, 2, 1]
    costs = [g.cost() for g in groups]
    assert costs == sorted(costs, reverse=True)


def test_global_attention_makes_cost_grow_faster_than_frames() -> None:
    group = build_groups(TINY.architecture, settings(frames=(8,)))[0]
    half = build_groups(TINY.architecture, settings(frames=(4,)))[0]
    assert group.cost() > 2 * half.cost()


def test_head_layers_include_the_camera_heads_last_layer() -> None:
    arch = Architecture(56, 14, 32, 6, 2, "conv", (1, 2, -2))
    assert arch.head_layers() == [1, 2, 4, 5]


def test_registry_has_the_baseline_and_refuses_duplicates() -> None:
    assert variant_names()[:2] == [BASELINE, "optimized"]
    with pytest.raises(ValueError, match="already registered"):
        register_variant(get_variant(BASELINE))
    with pytest.raises(ValueError, match="unknown variant 'nope'; choose from full, optimized"):
        get_variant("nope")


def test_variants_share_one_set_of_weight_tensors() -> None:
    group = build_groups(TINY.architecture, TINY.settings)[0]
    modules = ModelCache(torch.device("cpu"), seed=0).modules_for(group)
    full, optimized = modules["full"].state_dict(), modules["optimized"].state_dict()
    assert full.keys() == optimized.keys()
    for name, tensor in full.items():
        assert tensor.data_ptr() == optimized[name].data_ptr(), name
    assert all(tensor.isfinite().all() for tensor in full.values())


def test_model_cache_reuses_modules_across_frame_counts() -> None:
    cache = ModelCache(torch.device("cpu"), seed=0)
    first, second = build_groups(TINY.architecture, settings(frames=(1, 2)))
    assert cache.modules_for(first) is cache.modules_for(second)
