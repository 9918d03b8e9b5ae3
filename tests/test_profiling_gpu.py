"""The profiling suite's CUDA paths: NVML sampling, allocator snapshots, OOM under a budget."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from profiling.meters.nvml import NvmlSampler
from profiling.sweep.cases import build_groups
from profiling.sweep.environment import RankInfo
from profiling.sweep.measure import measure_group
from profiling.sweep.models import ModelCache
from profiling.sweep.presets import load_preset

RUN = Path(__file__).resolve().parent.parent / "profiling" / "run.py"
TIMEOUT_S = 300


@pytest.mark.gpu
def test_nvml_sampler_reads_at_least_100_hz_and_sees_an_allocation() -> None:
    pytest.importorskip("pynvml")
    device = torch.device("cuda", 0)
    with NvmlSampler(device) as sampler:
        time.sleep(0.2)
        block = torch.empty(512 << 20, dtype=torch.uint8, device=device)
        torch.cuda.synchronize(device)
        time.sleep(0.2)
        del block
        torch.cuda.empty_cache()
        time.sleep(0.2)
    samples = sampler.samples
    assert samples.rate_hz >= 100
    assert max(samples.used_bytes) - samples.used_bytes[0] >= 256 << 20


@pytest.mark.gpu
def test_a_cuda_group_saves_snapshots_and_timelines(tmp_path: Path) -> None:
    tiny = load_preset("tiny")
    grid = dataclasses.replace(tiny.settings, frames=(2,))
    group = build_groups(tiny.architecture, grid)[0]
    timeline_dir = tmp_path / "timelines"
    timeline_dir.mkdir()
    device = torch.device("cuda", 0)
    cache = ModelCache(device, seed=0)
    rank = RankInfo.of(0, 1, 0, device)
    records = measure_group(group, cache, rank, 1, 2, timeline_dir, seed=0)
    for record in records:
        assert record.status == "ok", (record.variant, record.error)
        assert record.peak_bytes == record.cuda_max_allocated_bytes > 0
        assert record.cuda_max_reserved_bytes >= record.cuda_max_allocated_bytes
        snapshot = pickle.loads((tmp_path / record.files["memory_snapshot"]).read_bytes())
        assert "segments" in snapshot and "device_traces" in snapshot
        assert (tmp_path / record.files["memory_snapshot_png"]).is_file()
        timeline = json.loads((tmp_path / record.files["cuda-snapshot"]).read_text())
        assert max(timeline["bytes"]) > 0
        if "nvml" in record.files:
            assert record.nvml_peak_used_bytes > 0
    assert records[1].variant == "optimized"
    assert records[1].max_abs_diff == 0.0


@pytest.mark.gpu
@pytest.mark.distributed
def test_a_memory_budget_turns_the_full_aggregator_into_an_oom(tmp_path: Path) -> None:
    out = tmp_path / "report"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        str(RUN),
        "--preset",
        "cpu-small",
        "--device",
        "cuda",
        "--dtype",
        "bf16-autocast",
        "--frames",
        "8,256",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--memory-budget",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]
    completed = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S, env=os.environ
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    cases = json.loads((out / "results.json").read_text())["cases"]
    status = {(c["variant"], c["frames"]): c for c in cases}
    full_oom = status[("full", 256)]
    assert full_oom["status"] == "oom"
    assert (out / full_oom["files"]["oom_snapshot"]).is_file()
    assert status[("optimized", 256)]["status"] == "ok"
    assert status[("optimized", 256)]["peak_bytes"] <= 2 << 30
    assert status[("full", 8)]["status"] == "ok"
    assert status[("full", 8)]["device"] == "cuda:0"
    summary = (out / "summary.md").read_text()
    assert "- full: largest frame count that ran: 8; out of memory from 256 frames" in summary
    assert "| memory_budget_gib | 2.0 |" in summary
