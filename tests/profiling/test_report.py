"""The report rank 0 writes: results.json, results.csv, summary.md and plots."""

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from profiling.meters.timelines import Timeline
from profiling.report.results import write_report
from profiling.sweep.cases import build_groups
from profiling.sweep.environment import collect_environment
from profiling.sweep.measure import measure_group
from profiling.sweep.models import ModelCache
from profiling.sweep.presets import load_preset
from profiling.sweep.records import CaseRecord, PartialLog, TimeSummary, read_partial_records
from tests.support.profiling_records import RANK, sample_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIB = 1 << 20
# The results.json and results.csv contract of a CPU case, as the dict records wrote it.
CASE_KEYS = [
    "case_id",
    "group_id",
    "variant",
    "component",
    "frames",
    "batch",
    "height",
    "width",
    "dtype",
    "dtype_mode",
    "precision",
    "architecture",
    "device",
    "device_name",
    "rank",
    "world_size",
    "attempt",
    "host",
    "status",
    "error",
    "time_ms",
    "activation_peak_bytes",
    "cuda_max_allocated_bytes",
    "cuda_max_reserved_bytes",
    "nvml_peak_used_bytes",
    "nvml_sample_rate_hz",
    "cpu_max_rss_bytes",
    "output_bytes",
    "weight_bytes",
    "input_bytes",
    "max_abs_diff",
    "max_rel_diff",
    "compared_to",
    "warmup",
    "repeats",
    "files",
    "finished_at",
    "parallel",
    "attention",
    "comm_seconds",
    "comm_bytes",
    "cpu_scratch_peak_bytes",
    "comm_serial_seconds",
    "mode",
    "trainable",
    "checkpoint",
    "forward_peak_bytes",
    "backward_peak_bytes",
    "optimizer_peak_bytes",
    "forward_ms",
    "backward_ms",
    "optimizer_ms",
    "gradient_bytes",
    "loss",
]
CSV_HEADER = (
    "case_id,group_id,variant,component,frames,batch,height,width,dtype,dtype_mode,precision,"
    "architecture,device,device_name,rank,world_size,attempt,host,status,error,time_ms_median"
    ",time_ms_min,time_ms_max,time_ms_iqr,time_ms_repeats,activation_peak_bytes,cuda_max_allo"
    "cated_bytes,cuda_max_reserved_bytes,nvml_peak_used_bytes,nvml_sample_rate_hz,cpu_max_rss"
    "_bytes,output_bytes,weight_bytes,input_bytes,max_abs_diff,max_rel_diff,compared_to,warmu"
    "p,repeats,files_cpu-profiler,finished_at,parallel,attention,comm_seconds,comm_bytes,cpu_"
    "scratch_peak_bytes,comm_serial_seconds,mode,trainable,checkpoint,forward_peak_bytes,backwar"
    "d_peak_bytes,optimizer_peak_bytes,forward_ms,backward_ms,optimizer_ms,gradient_bytes,loss"
)
ENVIRONMENT_KEYS = [
    "torch",
    "cuda",
    "cudnn",
    "nvidia_driver",
    "allocator_settings",
    "gpu_names",
    "python",
    "platform",
    "cpu",
    "cpu_count",
    "world_size",
    "hosts",
    "ranks",
    "settings",
]


def record(variant: str, frames: int, peak_mib: float | None, ms: float | None, **extra):
    status = extra.pop("status", "ok")
    return sample_record(
        case_id=f"aggregator-{variant}-fp32-b1-f{frames}-56x56-abc",
        variant=variant,
        frames=frames,
        device_name="Test CPU",
        status=status,
        error=None if status == "ok" else "injected",
        time_ms=None if ms is None else TimeSummary(ms, ms, ms, 0.0, 1),
        activation_peak_bytes=None if peak_mib is None else int(peak_mib * MIB),
        output_bytes=None if peak_mib is None else int(peak_mib * MIB / 2),
        max_abs_diff=None if variant == "full" or status != "ok" else 0.0,
        files=extra.pop("files", {}),
        **extra,
    )


def sample_records(tmp_path: Path) -> list[CaseRecord]:
    (tmp_path / "timelines").mkdir(parents=True, exist_ok=True)
    files = {}
    for variant, peak in (("full", 8 * MIB), ("optimized", 2 * MIB)):
        name = f"timelines/{variant}.cpu-profiler.json"
        Timeline("cpu-profiler", [0.0, 0.5, 1.0], [0, peak, 0]).save(tmp_path / name)
        files[variant] = {"cpu-profiler": name}
    return [
        record("full", 1, 4.0, 10.0),
        record("optimized", 1, 2.0, 9.0),
        record("full", 4, 8.0, 40.0, files=files["full"]),
        record("optimized", 4, 2.0, 30.0, files=files["optimized"]),
        record("full", 8, None, None, status="oom"),
        record("optimized", 8, 4.0, 60.0),
    ]


def environment() -> dict:
    return collect_environment([RANK], {"preset": "tiny", "memory_budget_gib": None})


def test_the_environment_names_the_allocator_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    settings = environment()["allocator_settings"]
    assert settings == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    write_report(tmp_path, sample_records(tmp_path), environment())
    summary = (tmp_path / "summary.md").read_text()
    assert "| allocator settings | `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` |" in summary
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    assert environment()["allocator_settings"] == {}


def test_report_files_exist_and_parse(tmp_path: Path) -> None:
    records = sample_records(tmp_path)
    write_report(tmp_path, records, environment())
    document = json.loads((tmp_path / "results.json").read_text())
    assert set(document) == {"environment", "cases"}
    assert document["environment"]["world_size"] == 1
    assert document["environment"]["torch"]
    assert len(document["cases"]) == 6
    with (tmp_path / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 6
    assert {"case_id", "status", "time_ms_median", "activation_peak_bytes"} <= set(rows[0])
    plots = sorted(path.name for path in (tmp_path / "plots").glob("*.png"))
    assert any(name.startswith("peak-memory-") for name in plots)
    assert any(name.startswith("time-") for name in plots)
    assert any(name.startswith("timeline-cpu-profiler-") and "-f4" in name for name in plots)
    for name in plots:
        assert (tmp_path / "plots" / name).read_bytes().startswith(PNG_SIGNATURE)


def test_summary_sets_full_against_optimized_with_ratios(tmp_path: Path) -> None:
    write_report(tmp_path, sample_records(tmp_path), environment())
    summary = (tmp_path / "summary.md").read_text()
    assert "## Test CPU · aggregator · fp32 · 56x56 · batch 1" in summary
    header = next(line for line in summary.splitlines() if line.startswith("| frames"))
    assert "full peak" in header and "optimized peak" in header
    assert "optimized/full peak" in header and "optimized/full time" in header
    row_4 = next(line for line in summary.splitlines() if line.startswith("| 4 |"))
    assert "8.0 MiB | 2.0 MiB | 0.25 |" in row_4
    assert "40.0 | 30.0 | 0.75 |" in row_4
    row_8 = next(line for line in summary.splitlines() if line.startswith("| 8 |"))
    assert "| OOM | 4.0 MiB | - |" in row_8
    assert "- full: largest frame count that ran: 4; out of memory from 8 frames" in summary
    assert "- optimized: largest frame count that ran: 8" in summary
    assert "## Environment" in summary and "| world size | 1 |" in summary


def test_results_keep_their_keys_columns_and_nesting(tmp_path: Path) -> None:
    tiny = load_preset("tiny")
    group = build_groups(tiny.architecture, dataclasses.replace(tiny.settings, frames=(1,)))[0]
    (tmp_path / "timelines").mkdir()
    cache = ModelCache(torch.device("cpu"), seed=0)
    records = measure_group(group, cache, RANK, 1, 2, tmp_path / "timelines", seed=0)
    write_report(tmp_path, records, environment())
    document = json.loads((tmp_path / "results.json").read_text())
    assert list(document["environment"]) == ENVIRONMENT_KEYS
    assert list(document["environment"]["ranks"][0]) == [
        "rank",
        "host",
        "device",
        "device_name",
        "torch_threads",
    ]
    for case in document["cases"]:
        assert list(case) == CASE_KEYS
        assert list(case["time_ms"]) == ["median", "min", "max", "iqr", "repeats"]
        assert list(case["files"]) == ["cpu-profiler"]
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == CSV_HEADER
    PartialLog(tmp_path, 0).append(records)
    assert read_partial_records(tmp_path) == records


def test_an_earlier_runs_records_read_without_their_retired_fields() -> None:
    (current,) = [record("optimized", 4, 2.0, 30.0)]
    earlier = {**current.to_json(), "peak_bytes": 123, "cpu_peak_live_bytes": 456}
    assert CaseRecord.from_json(earlier) == current
