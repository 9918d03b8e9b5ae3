"""Measuring one configuration on the CPU: figures, equality, and faults kept to one variant."""

import dataclasses
from pathlib import Path

import pytest
import torch

from profiling.meters.outputs import compare
from profiling.meters.timelines import Timeline, from_cuda_snapshot, thin
from profiling.sweep.cases import build_groups
from profiling.sweep.measure import measure_group
from profiling.sweep.models import ModelCache
from profiling.sweep.presets import load_preset
from tests.support.profiling_records import RANK
from vggt.memory.outputs import OutputBytes, named_outputs, output_bytes
from vggt.models import variants
from vggt.models.aggregator_vram_optimized import LayerSelectView
from vggt.models.variants import Variant, build_full
from vggt.streaming.offload import HostStore, OffloadedLayer

TINY = load_preset("tiny")
CPU = torch.device("cpu")


def tiny_group(variant_names: tuple[str, ...], frames: int = 2):
    grid = dataclasses.replace(TINY.settings, variants=variant_names, frames=(frames,))
    return build_groups(TINY.architecture, grid)[0]


def raising_variant(name: str, error: Exception) -> Variant:
    """Like `full`, but every forward raises `error`."""

    def build(component: str, architecture) -> torch.nn.Module:
        module = build_full(component, architecture)

        def fail(*_: object) -> None:
            raise error

        module.register_forward_pre_hook(fail)
        return module

    return Variant(name, build)


@pytest.fixture
def extra_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        variants._REGISTRY, "oom", raising_variant("oom", torch.OutOfMemoryError("injected"))
    )
    monkeypatch.setitem(
        variants._REGISTRY, "broken", raising_variant("broken", RuntimeError("bad\nthing"))
    )


def test_full_and_optimized_are_measured_and_agree(tmp_path: Path) -> None:
    group = tiny_group(("full", "optimized"))
    timeline_dir = tmp_path / "timelines"
    timeline_dir.mkdir()
    records = measure_group(group, ModelCache(CPU, 0), RANK, 1, 3, timeline_dir, seed=0)
    full, optimized = records
    for record in records:
        assert record.status == "ok"
        assert record.time_ms.repeats == 3
        assert record.activation_peak_bytes > 0
        assert record.cpu_max_rss_bytes > 0
        assert (tmp_path / record.files["cpu-profiler"]).is_file()
    assert optimized.output_bytes < full.output_bytes
    assert optimized.weight_bytes == full.weight_bytes
    assert optimized.max_abs_diff == 0.0
    assert optimized.max_rel_diff == 0.0
    depth, kept = TINY.architecture.depth, len(TINY.architecture.head_layers())
    assert optimized.output_bytes * depth == full.output_bytes * kept


def test_an_oom_and_an_error_stay_with_their_variant(tmp_path: Path, extra_variants) -> None:
    group = tiny_group(("full", "oom", "broken", "optimized"))
    records = measure_group(group, ModelCache(CPU, 0), RANK, 1, 2, tmp_path, seed=0)
    full, oom, broken, optimized = records
    assert oom.status == "oom"
    assert "injected" in oom.error
    assert broken.status == "error"
    assert broken.error == "RuntimeError: bad thing"
    assert full.status == optimized.status == "ok"
    assert optimized.max_abs_diff == 0.0
    assert [r.status for r in records] == ["ok", "oom", "error", "ok"]
    assert oom.time_ms is None
    assert optimized.time_ms.repeats == 2


def test_a_build_failure_fails_every_variant_of_the_group(tmp_path: Path) -> None:
    broken = dataclasses.replace(TINY.architecture, num_heads=5)
    group = dataclasses.replace(tiny_group(("full", "optimized")), architecture=broken)
    records = measure_group(group, ModelCache(CPU, 0), RANK, 1, 1, tmp_path, seed=0)
    assert {r.status for r in records} == {"error"}


def test_named_outputs_reads_lists_views_and_prediction_dicts() -> None:
    a, b = torch.zeros(2), torch.ones(3)
    assert list(named_outputs(([a, b], 5))) == ["layer00", "layer01"]
    view = LayerSelectView({1: b}, depth=4)
    assert list(named_outputs((view, 5, [1]))) == ["layer01"]
    assert list(named_outputs({"depth": a, "pose_enc_list": [a, b]})) == [
        "depth",
        "pose_enc_list.0",
        "pose_enc_list.1",
    ]


def test_output_bytes_counts_shared_storage_once() -> None:
    base = torch.zeros(10)
    tensors = {"x": base[:5], "y": base[5:], "z": torch.zeros(2)}
    assert output_bytes(tensors.values()) == OutputBytes(device=48, host=0)
    assert output_bytes(tensors.values(), exclude=[base]) == OutputBytes(device=8, host=0)


def test_offloaded_layers_count_as_host_memory() -> None:
    store = HostStore(16, CPU, CPU)
    layer = OffloadedLayer(store.tensor(0, (2, 1, 1, 1, 2), torch.float32), store)
    view = LayerSelectView({0: layer, 2: torch.zeros(1)}, depth=3)
    outputs = named_outputs((view, 5, [0, 2]))
    assert list(outputs) == ["layer00", "layer02"]
    assert output_bytes(outputs.values()) == OutputBytes(device=4, host=16)


def test_compare_reports_absolute_and_relative_differences() -> None:
    baseline = {"layer00": torch.tensor([1.0, -4.0]), "layer01": torch.zeros(1)}
    ours = {"layer00": torch.tensor([1.5, -4.0])}
    difference = compare(ours, baseline)
    assert difference.max_abs_diff == 0.5
    assert difference.max_rel_diff == 0.125
    assert difference.compared == 1
    with pytest.raises(ValueError, match="share no tensor"):
        compare({"other": torch.zeros(1)}, baseline)


def test_snapshot_trace_becomes_allocated_bytes_over_time() -> None:
    events = [
        {"action": "segment_alloc", "size": 4096, "time_us": 10},
        {"action": "alloc", "size": 100, "time_us": 1_000_010},
        {"action": "alloc", "size": 50, "time_us": 2_000_010},
        {"action": "free_requested", "size": 100, "time_us": 2_500_010},
        {"action": "free_completed", "size": 100, "time_us": 3_000_010},
    ]
    timeline = from_cuda_snapshot({"device_traces": [[], events]}, 1, base_bytes=1000)
    assert timeline.bytes == [1100, 1150, 1050]
    assert timeline.times_s == [1.0, 2.0, 3.0]
    assert timeline.peak_bytes == 1150


def test_thinning_keeps_the_peak(tmp_path: Path) -> None:
    values = [*range(1000), 5000, *range(1000)]
    _, kept = thin([float(i) for i in range(len(values))], values, 100)
    assert len(kept) <= 100
    assert max(kept) == 5000
    path = tmp_path / "t.json"
    Timeline("cpu-profiler", [0.0, 1.0], [1, 2]).save(path)
    assert Timeline.load(path).bytes == [1, 2]
