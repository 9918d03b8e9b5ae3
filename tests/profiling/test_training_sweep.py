"""The sweep's train mode (`--mode train`): its options, the phase meters, and a CPU run's
records, summary and plots."""

import csv
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.profiler import record_function

from profiling.meters.cpu import trace_cpu_memory
from profiling.meters.timelines import from_cpu_trace, from_cuda_snapshot
from profiling.report.summary import format_size
from profiling.run import main
from profiling.sweep.cases import Training, build_groups
from profiling.sweep.environment import RankInfo
from profiling.sweep.models import ModelCache
from profiling.sweep.options import parse_config
from profiling.sweep.presets import load_preset
from profiling.sweep.training_run import measure_training_group
from tests.support.profiling_records import RANK
from tests.support.training import with_small_heads
from vggt.models import variants
from vggt.models.variants import Variant, build_full, build_optimized, get_variant
from vggt.training.step import PHASES
from vggt.training.trainable import PRESETS, set_trainable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = load_preset("tiny")
FIELDS = [
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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny operators gain nothing from a second thread, and on a busy machine wait for it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """`full` and `optimized` models with narrow DPT heads, so a training step takes little."""
    for name, build in (("full", build_full), ("optimized", build_optimized)):

        def small(component: str, architecture, build=build) -> torch.nn.Module:
            return with_small_heads(build(component, architecture))

        monkeypatch.setitem(variants._REGISTRY, name, Variant(name, small))


def trainable_fp32_bytes(component: str, parts: tuple[str, ...]) -> int:
    """Bytes of fp32 gradients of `parts` of the full variant's module."""
    with torch.device("meta"):
        module = get_variant("full").build(component, TINY.architecture)
    return sum(p.numel() * 4 for p in set_trainable(module, parts))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--trainable", "aggregator"], "--trainable needs --mode train"),
        (["--checkpoint", "none"], "--checkpoint needs --mode train"),
        (["--mode", "train", "--trainable", "heads"], "unknown trainable part(s) ['heads']"),
        (
            ["--mode", "train", "--trainable", "frozen-aggregator"],
            "the component aggregator trains only 'aggregator'",
        ),
        (
            ["--mode", "train", "--component", "model", "--trainable", "all"],
            "the sweep runs no track head",
        ),
        (["--mode", "train", "--checkpoint", "most"], "argument --checkpoint: invalid choice"),
        (["--mode", "fit"], "argument --mode: invalid choice: 'fit'"),
    ],
)
def test_bad_training_options_exit_2_with_one_line(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["--preset", "tiny", "--out", str(tmp_path / "out"), *arguments])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("profiling/run.py: error: ")
    assert message in lines[0]


def test_train_mode_trains_each_components_default_and_marks_its_ids(tmp_path: Path) -> None:
    base = ["--preset", "tiny", "--out", str(tmp_path), "--component", "aggregator,model"]
    inference = parse_config(base, attempt=0)
    tag = TINY.architecture.tag()
    groups = build_groups(inference.architecture, inference.settings)
    assert {g.training for g in groups} == {None}
    case_ids = {c.case_id for g in groups for c in g.cases()}
    assert f"model-optimized-fp32-b1-f3-56x56-{tag}" in case_ids
    assert inference.describe()["mode"] == "inference"
    assert inference.describe()["trainable"] is None

    config = parse_config([*base, "--mode", "train"], attempt=0)
    training = {g.component: g.training for g in build_groups(config.architecture, config.settings)}
    assert training == {
        "aggregator": Training(("aggregator",), "blocks"),
        "model": Training(PRESETS["unfrozen-aggregator"], "blocks"),
    }
    group = next(g for g in build_groups(config.architecture, config.settings) if g.frames == 3)
    assert group.cases()[0].case_id.endswith(f"-{tag}-train-{group.training.trainable}-blocks")
    assert config.describe()["trainable"] == (
        "aggregator: aggregator; model: aggregator,camera,depth,point"
    )

    chosen = [*base[:-2], "--component", "model", "--mode", "train"]
    chosen += ["--trainable", "point,aggregator", "--checkpoint", "selective"]
    config = parse_config(chosen, attempt=0)
    (training,) = {g.training for g in build_groups(config.architecture, config.settings)}
    assert training == Training(("aggregator", "point"), "selective")
    assert training.suffix == "-train-aggregator+point-selective"


def test_the_cpu_meter_reads_the_peak_of_each_marked_range() -> None:
    def program() -> tuple[torch.Tensor, torch.Tensor]:
        with record_function("phase.first"):
            kept = torch.ones(1000)
        with record_function("phase.second"):
            temporary = torch.ones(3000)
            del temporary
            small = torch.ones(10)
        return kept, small

    _, trace = trace_cpu_memory(program, "phase.")
    assert list(trace.marks) == ["first", "second"]
    assert trace.tensor_peak_during(*trace.marks["first"]) == 4000
    assert trace.tensor_peak_during(*trace.marks["second"]) == 16000
    assert trace.end_bytes == 4040
    phases = from_cpu_trace(trace).phases
    assert list(phases) == ["first", "second"]
    assert phases["first"][1] <= phases["second"][0]
    events = [{"action": "alloc", "size": 8, "time_us": 2_000_000}]
    spans = {"forward": (2_000_500_000, 2_250_000_000)}
    timeline = from_cuda_snapshot({"device_traces": [events]}, 0, 0, spans)
    assert timeline.phases == {"forward": pytest.approx([0.0005, 0.25])}


def read_cases(out: Path) -> dict[tuple[str, int], dict]:
    cases = json.loads((out / "results.json").read_text())["cases"]
    return {(case["variant"], case["frames"]): case for case in cases}


def test_a_cpu_train_sweep_meters_each_phase_and_reports_them(tmp_path: Path, one_thread) -> None:
    out = tmp_path / "report"
    options = ["--preset", "tiny", "--device", "cpu", "--mode", "train", "--quiet"]
    assert main([*options, "--frames", "1,2", "--repeats", "2", "--out", str(out)]) == 0
    cases = read_cases(out)
    assert len(cases) == 4
    gradients = trainable_fp32_bytes("aggregator", ("aggregator",))
    for case in cases.values():
        assert case["status"] == "ok", case["error"]
        assert (case["mode"], case["trainable"], case["checkpoint"]) == (
            "train",
            "aggregator",
            "blocks",
        )
        assert case["gradient_bytes"] == gradients
        assert case["time_ms"]["repeats"] == 2
        assert all(case[f"{phase}_ms"] > 0 for phase in PHASES)
        # Absolute peaks: after a warm-up step the weights and both AdamW moments are resident
        # in every phase, the gradients from backward on.
        resident = case["weight_bytes"] + 2 * gradients + case["input_bytes"]
        assert case["forward_peak_bytes"] > resident
        assert case["backward_peak_bytes"] >= resident + gradients
        assert case["optimizer_peak_bytes"] >= resident + gradients
        assert case["activation_peak_bytes"] > 0
        timeline = json.loads((out / case["files"]["cpu-profiler"]).read_text())
        assert list(timeline["phases"]) == list(PHASES)
        bounds = [time for phase in PHASES for time in timeline["phases"][phase]]
        assert bounds == sorted(bounds)
    for frames in (1, 2):
        full, optimized = cases[("full", frames)], cases[("optimized", frames)]
        assert optimized["loss"] == pytest.approx(full["loss"], rel=1e-6)
        assert optimized["max_abs_diff"] <= 1e-6 * abs(full["loss"])
        assert (full["max_abs_diff"], optimized["compared_to"]) == (0.0, "full")
    assert cases[("full", 1)]["loss"] != cases[("full", 2)]["loss"]

    summary = (out / "summary.md").read_text().splitlines()
    heading = next(line for line in summary if line.startswith("## "))
    assert heading.endswith("· aggregator · fp32 · 56x56 · batch 1 · training")
    assert "Trains `aggregator`, checkpoint `blocks`." in summary
    header = "| frames | phase | full peak | optimized peak | optimized/full peak | full ms |"
    assert any(line.startswith(header) for line in summary)
    for phase in PHASES:
        full, optimized = cases[("full", 2)], cases[("optimized", 2)]
        peaks = [format_size(case[f"{phase}_peak_bytes"]) for case in (full, optimized)]
        assert any(line.startswith(f"| 2 | {phase} | {' | '.join(peaks)} |") for line in summary)
    with (out / "results.csv").open() as file:
        header = next(csv.reader(file))
    assert header[-len(FIELDS) :] == FIELDS

    plots = sorted(path.name for path in (out / "plots").glob("*.png"))
    for prefix in [*(f"peak-{phase}-train-aggregator" for phase in PHASES), "time-train"]:
        assert any(name.startswith(prefix) for name in plots), (prefix, plots)
    assert any(name.startswith("timeline-cpu-profiler-train-") for name in plots)
    assert not any(name.startswith("peak-memory-") for name in plots)
    for name in plots:
        assert (out / "plots" / name).read_bytes().startswith(PNG_SIGNATURE)


def test_a_model_trains_on_its_targets_and_both_variants_lose_alike(
    tmp_path: Path, one_thread, small_heads
) -> None:
    settings = dataclasses.replace(TINY.settings, components=("model",), frames=(2,), mode="train")
    (group,) = build_groups(TINY.architecture, settings)
    cache = ModelCache(torch.device("cpu"), seed=0)
    full, optimized = measure_training_group(group, cache, RANK, 0, 1, tmp_path, seed=0)
    parts = PRESETS["unfrozen-aggregator"]
    gradients = trainable_fp32_bytes("model", parts)
    # The images and the pose, depth and point targets of 2 frames of 56x56.
    pixels = 2 * 56 * 56
    assert full.input_bytes == 4 * (3 * pixels + 2 * 9 + pixels + 3 * pixels)
    for record in (full, optimized):
        assert record.status == "ok", record.error
        assert record.trainable == ",".join(parts)
        assert record.gradient_bytes == gradients
        assert record.forward_peak_bytes > record.weight_bytes + record.input_bytes
        # Without warm-up the AdamW moments appear in the measured step's optimizer phase,
        # beside the weights and gradients.
        assert record.optimizer_peak_bytes >= record.weight_bytes + 3 * gradients
    assert optimized.loss == pytest.approx(full.loss, rel=1e-6)
    assert optimized.compared_to == "full"


@pytest.mark.gpu
def test_a_cuda_step_peaks_each_phase_and_marks_them_on_its_snapshot(tmp_path: Path) -> None:
    settings = dataclasses.replace(TINY.settings, frames=(2,), mode="train")
    (group,) = build_groups(TINY.architecture, settings)
    timeline_dir = tmp_path / "timelines"
    timeline_dir.mkdir()
    device = torch.device("cuda", 0)
    rank = RankInfo.of(0, 1, 0, device)
    records = measure_training_group(group, ModelCache(device, 0), rank, 1, 2, timeline_dir, 0)
    gradients = trainable_fp32_bytes("aggregator", ("aggregator",))
    for record in records:
        assert record.status == "ok", record.error
        assert record.gradient_bytes == gradients
        resident = record.weight_bytes + 2 * gradients + record.input_bytes
        assert record.forward_peak_bytes > resident
        assert record.optimizer_peak_bytes >= resident + gradients
        peaks = [getattr(record, f"{phase}_peak_bytes") for phase in PHASES]
        assert record.cuda_max_allocated_bytes == max(peaks)
        assert (tmp_path / record.files["memory_snapshot"]).is_file()
        timeline = json.loads((tmp_path / record.files["cuda-snapshot"]).read_text())
        assert list(timeline["phases"]) == list(PHASES)
        # Timed on the host's clock, the phases lie where the allocator's events do.
        times = timeline["times_s"]
        for start, end in timeline["phases"].values():
            assert times[0] - 1 <= start <= end <= times[-1] + 1
    assert records[1].loss == pytest.approx(records[0].loss, rel=1e-6)
