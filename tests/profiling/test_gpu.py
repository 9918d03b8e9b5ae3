"""The profiling suite's CUDA paths: NVML sampling of the right device, allocator peaks against
what the case must hold, snapshots of the measured run, an OOM under a memory budget.

Where the NVML library is installed, any NVML failure fails these tests."""

import dataclasses
import json
import pickle
import time
from pathlib import Path

import pytest
import torch

from profiling.meters.device_match import cuda_device_ids, nvml_device_ids, nvml_handle_for
from profiling.meters.nvml import NvmlSampler, NvmlUnavailable, start_nvml
from profiling.sweep.cases import Architecture, build_groups
from profiling.sweep.environment import RankInfo
from profiling.sweep.measure import measure_group
from profiling.sweep.models import ModelCache
from profiling.sweep.presets import load_preset
from tests.support.launch import torchrun
from tests.support.repo import SWEEP
from vggt.memory.estimate import CUDA_CONTEXT_BYTES

TIMEOUT_S = 120
# A segment the caching allocator may round a large request up to (kLargeBuffer).
LARGE_SEGMENT = 20 << 20
# The most a small block may exceed its request: 512-byte rounding plus an unsplit remainder.
ROUNDING = 1024


def nvml_installed() -> bool:
    """Whether pynvml and the NVML library are installed (an NVML fault still says True)."""
    try:
        start_nvml().nvmlShutdown()
    except NvmlUnavailable:
        return False
    return True


def kept_output_bytes(architecture: Architecture, kept: int, frames: int, side: int) -> int:
    """Bytes of `kept` float32 aggregator layers [1, frames, tokens, 2 C] of side x side images."""
    tokens = architecture.tokens_per_frame(side, side)
    return kept * frames * tokens * 2 * architecture.embed_dim * 4


@pytest.mark.gpu
def test_nvml_sampler_reads_at_least_100_hz_and_sees_an_allocation() -> None:
    device = torch.device("cuda", 0)
    try:
        sampler = NvmlSampler(device)
    except NvmlUnavailable as reason:
        pytest.skip(str(reason))
    with sampler:
        time.sleep(0.2)
        block = torch.empty(512 << 20, dtype=torch.uint8, device=device)
        torch.cuda.synchronize(device)
        time.sleep(0.2)
        del block
        torch.cuda.empty_cache()
        time.sleep(0.2)
    samples = sampler.samples
    assert sampler.error is None
    assert samples.rate_hz >= 100
    assert max(samples.used_bytes) - samples.used_bytes[0] >= 256 << 20


@pytest.mark.gpu
def test_the_nvml_handle_is_the_cuda_devices_own() -> None:
    try:
        nvml = start_nvml()
    except NvmlUnavailable as reason:
        pytest.skip(str(reason))
    try:
        index = torch.cuda.device_count() - 1
        found = nvml_device_ids(nvml, nvml_handle_for(nvml, torch.device("cuda", index)))
    finally:
        nvml.nvmlShutdown()
    wanted = cuda_device_ids(torch.cuda.get_device_properties(index))
    assert wanted.uuid is not None or wanted.pci is not None
    if wanted.uuid is not None:
        assert found.uuid == wanted.uuid
    if wanted.pci is not None:
        assert found.pci == wanted.pci


@pytest.mark.gpu
def test_a_cuda_group_measures_what_the_case_holds(tmp_path: Path) -> None:
    tiny = load_preset("tiny")
    frames = 2
    group = build_groups(tiny.architecture, dataclasses.replace(tiny.settings, frames=(frames,)))[0]
    timeline_dir = tmp_path / "timelines"
    timeline_dir.mkdir()
    device = torch.device("cuda", 0)
    records = measure_group(
        group, ModelCache(device, seed=0), RankInfo.of(0, 1, 0, device), 1, 2, timeline_dir, 0
    )
    with_nvml = nvml_installed()
    kept = {"full": tiny.architecture.depth, "optimized": len(tiny.architecture.head_layers())}
    for record in records:
        assert record.status == "ok", (record.variant, record.error)
        assert record.error is None, record.error
        expected = kept_output_bytes(tiny.architecture, kept[record.variant], frames, group.width)
        assert record.output_bytes == expected
        assert record.activation_peak_bytes >= record.output_bytes
        held = record.weight_bytes + record.input_bytes + record.output_bytes
        assert record.cuda_max_allocated_bytes >= held
        if with_nvml:
            # What NVML sees beyond the allocator's reserve (the CUDA context, cuBLAS and
            # cuDNN handles) fits the estimator's allowance for it.
            outside = record.nvml_peak_used_bytes - record.cuda_max_reserved_bytes
            assert 0 < outside <= CUDA_CONTEXT_BYTES
            assert (tmp_path / record.files["nvml"]).is_file()
        else:
            assert record.nvml_peak_used_bytes is None
        snapshot = pickle.loads((tmp_path / record.files["memory_snapshot"]).read_bytes())
        assert snapshot["segments"] and snapshot["device_traces"][0]
        assert (tmp_path / record.files["memory_snapshot_png"]).is_file()
        # The history covers the measured forward only: its requests, counted from the bytes
        # allocated before it, peak where the allocator's counter peaked, less the rounding of
        # each block (under 1 KiB for these small ones).
        timeline = json.loads((tmp_path / record.files["cuda-snapshot"]).read_text())
        allocations = sum(e["action"] == "alloc" for e in snapshot["device_traces"][0])
        peak = record.cuda_max_allocated_bytes
        assert peak - ROUNDING * allocations <= max(timeline["bytes"]) <= peak
    assert records[1].variant == "optimized"
    assert records[1].max_abs_diff == 0.0


@pytest.mark.gpu
@pytest.mark.distributed
def test_a_memory_budget_turns_the_full_aggregator_into_an_oom(tmp_path: Path) -> None:
    out = tmp_path / "report"
    budget_gib = 2
    options = ["--preset", "cpu-small", "--device", "cuda", "--dtype", "bf16-autocast"]
    options += ["--frames", "8,256", "--warmup", "1", "--repeats", "1"]
    options += ["--memory-budget", str(budget_gib), "--quiet", "--out", str(out)]
    completed = torchrun(1, SWEEP, options, timeout_s=TIMEOUT_S, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    cases = json.loads((out / "results.json").read_text())["cases"]
    status = {(c["variant"], c["frames"]): c for c in cases}
    full_oom = status[("full", 256)]
    assert full_oom["status"] == "oom"
    # The snapshot at the failure: what was reserved then, plus the request that failed (and
    # a segment's rounding), passes the cap.
    snapshot = pickle.loads((out / full_oom["files"]["oom_snapshot"]).read_bytes())
    reserved = sum(s["total_size"] for s in snapshot["segments"] if s["device"] == 0)
    failed = [event for event in snapshot["device_traces"][0] if event["action"] == "oom"]
    cap = budget_gib << 30
    assert failed and reserved <= cap
    assert reserved + failed[-1]["size"] + LARGE_SEGMENT > cap
    optimized = status[("optimized", 256)]
    assert optimized["status"] == "ok"
    held = optimized["weight_bytes"] + optimized["input_bytes"] + optimized["output_bytes"]
    assert optimized["cuda_max_allocated_bytes"] >= held
    assert status[("full", 8)]["status"] == "ok"
    assert status[("full", 8)]["device"] == "cuda:0"
    summary = (out / "summary.md").read_text()
    assert "- full: largest frame count that ran: 8; out of memory from 256 frames" in summary
    assert "| memory_budget_gib | 2.0 |" in summary
