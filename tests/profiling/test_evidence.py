"""`python -m profiling.gpu_check`: its plan and predicted seconds, its whole flow at dry-run
sizes on the CPU (steps, summary, results, plots), exit statuses, the time budget inside and
between steps, errors kept to their step, a killed run's results, the memory cap, the training
step's verdicts, the estimates' figures, SDPA backend counting, pytest's per-test timeout, and
the measured rate and its adoption into the rates table."""

import dataclasses
import json
import multiprocessing.context
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from profiling import gpu_check
from profiling.evidence import checks
from profiling.evidence.adopt import report_name
from profiling.evidence.checks import Context, fit_need, pytest_summary
from profiling.evidence.estimates import (
    EstimateFigures,
    EstimatePool,
    estimate_jobs,
    estimate_point,
    point_jobs,
)
from profiling.evidence.plan import (
    AGGREGATORS,
    CHUNKED,
    DEFAULT_BUDGET_S,
    README_PRECISION,
    README_SIZE,
    REPEATS,
    TRAINING_GOAL_FRAMES,
    UNCHUNKED,
    Point,
    Rates,
    dry_run_plan,
    gpu_plan,
)
from profiling.evidence.rate import MeasuredRate, RatePoint, measured_rate
from profiling.evidence.results import (
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    EXIT_PASSED,
    Deadline,
    Measured,
    Pair,
    StepResult,
    exit_status,
)
from profiling.meters import sdpa
from profiling.meters.cap import memory_cap
from profiling.meters.cuda import MIN_HISTORY_ENTRIES, history_entries_for
from profiling.sweep.cases import TRAINING_COST, Training
from profiling.sweep.presets import load_preset
from profiling.sweep.records import TimeSummary
from tests.support.profiling_records import RANK, sample_record
from tests.support.repo import REPO
from vggt.layers import attention_backends
from vggt.layers.attention import Attention
from vggt.memory.device_rates import RATES_PATH, DeviceRates, rates_for, read_table
from vggt.models.variants import get_variant
from vggt.precision import get_precision
from vggt.training.step import PHASES
from vggt.training.trainable import PRESETS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIDENCE_FILES = {
    "summary.md",
    "results.json",
    "pytest-gpu.txt",
    "native-stderr.log",
    "peak-vs-frames.png",
    "time-vs-frames.png",
    "offload-and-chunking.png",
    "snapshots",
}
H100_NAME = "NVIDIA H100 80GB HBM3"
# 3.772e15 FLOPs in 9.1 s: 414.5 TFLOP/s.
RATE = MeasuredRate(
    (RatePoint("aggregator 200 frames 350x518 autocast", 3.772e15, 9.1),),
    "cuda:0",
    H100_NAME,
    "2.13.0",
    40_000,
).to_json()
STEP_NAMES = [
    "preflight",
    "cuda-context",
    "gpu-tests",
    "aggregator",
    "estimates",
    "memory-cap",
    "chunking",
    "offload",
    "training",
    "square",
    "report",
]
LETTERS = "abcdefghijk"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class NoEstimates:
    """Stands in for the estimate workers when the steps are stubs."""

    def __init__(self, jobs: list, log: Path, target_device: str) -> None:
        self.jobs = jobs

    def close(self) -> None:
        self.jobs = []


def passing(context: Context, result: StepResult) -> None:
    result.judge(True, "fine")


def stub_steps(monkeypatch: pytest.MonkeyPatch, **replaced) -> None:
    """Every step passes at once, except those `replaced` by name (dashes as underscores)."""
    steps = {
        name: (letter, replaced.get(name.replace("-", "_"), passing))
        for name, (letter, _) in checks.STEPS.items()
    }
    monkeypatch.setattr(checks, "STEPS", steps)
    monkeypatch.setattr(checks, "EstimatePool", NoEstimates)


def statuses(out: Path) -> list[str]:
    return [step["status"] for step in json.loads((out / "results.json").read_text())["steps"]]


def test_the_default_plan_fits_300_seconds_and_prints_as_json(
    capsys: pytest.CaptureFixture,
) -> None:
    assert gpu_check.main(["--plan", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [step["name"] for step in printed["steps"]] == STEP_NAMES
    total = sum(step["seconds"] for step in printed["steps"])
    assert printed["total_seconds"] == pytest.approx(total, abs=0.1 * len(STEP_NAMES))
    assert DEFAULT_BUDGET_S == 300 and 200 < printed["total_seconds"] <= 300
    plan = gpu_plan()
    assert [point.frames for point in plan.aggregator] == [1, 10, 50, 100, 200]
    assert {(point.height, point.width) for point in plan.aggregator} == {README_SIZE}
    assert all(plan.reference_for(point) for point in plan.aggregator)
    assert plan.square and {(p.height, p.width) for p in plan.square} == {(518, 518)}


def test_the_gpu_plan_trains_the_whole_model_and_counts_it_before_filling_square() -> None:
    plan = gpu_plan()
    (point,) = plan.training
    assert (point.component, point.variants, point.frames) == ("model", AGGREGATORS, 8)
    assert (point.height, point.width, point.precision) == (518, 518, README_PRECISION)
    assert point.training == Training(PRESETS["unfrozen-aggregator"], "blocks")
    assert point.warmup == 1 and not point.history
    seconds = plan.step_seconds()
    assert list(seconds)[7:10] == ["offload", "training", "square"]
    # Each variant's warm-up, memory and timed steps at TRAINING_COST forwards each, and its
    # build.
    steps = 2 * (1 + 1 + REPEATS) * TRAINING_COST
    forward = point.forward_seconds(plan.architecture, plan.rates)
    assert seconds["training"] == pytest.approx(steps * forward + 2 * plan.rates.build_s)
    assert plan.total_seconds() <= DEFAULT_BUDGET_S
    untrained = dataclasses.replace(plan, training=())
    assert plan.total_seconds() == pytest.approx(untrained.total_seconds() + seconds["training"])
    # The goal's optimized-only point does not fit 300 s at the default rate; it joins, before
    # the square points, where the budget allows.
    roomy = gpu_plan(budget_s=2 * DEFAULT_BUDGET_S)
    goal = roomy.training[1]
    assert (goal.variants, goal.frames) == (("optimized",), TRAINING_GOAL_FRAMES)
    assert len(roomy.square) > len(plan.square)
    assert roomy.total_seconds() <= 2 * DEFAULT_BUDGET_S


def test_a_slower_gpu_gets_fewer_points_within_the_same_budget(
    capsys: pytest.CaptureFixture,
) -> None:
    fast, slow = gpu_plan(), gpu_plan(rates=Rates(tflops=100))
    assert fast.square and not slow.square
    point = fast.aggregator[-1]
    seconds = [plan.point_seconds(point) for plan in (fast, slow)]
    assert 2 < seconds[1] / seconds[0] < 3
    assert gpu_check.main(["--plan", "--tflops", "100"]) == 0
    printed = capsys.readouterr().out
    assert "d. aggregator (" in printed and "at 100 TFLOP/s" in printed
    assert f"exceeds the budget of {DEFAULT_BUDGET_S:.0f} s" in printed


def test_the_flop_count_matches_pytorchs_counter() -> None:
    architecture = load_preset("tiny").architecture
    with torch.device("meta"):
        model = get_variant("full").build("aggregator", architecture).eval()
    images = torch.rand(1, 6, 3, 56, 70, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    counted = counter.get_total_flops()
    assert abs(architecture.aggregator_flops(6, 56, 70) - counted) <= 0.15 * counted


def test_the_dry_run_measures_every_step_and_writes_the_evidence(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "evidence"
    code = gpu_check.main(["--out", str(out), "--dry-run", "--device", "cpu"])
    printed = capsys.readouterr().out.splitlines()
    document = json.loads((out / "results.json").read_text())
    steps = {step["name"]: step for step in document["steps"]}
    assert list(steps) == STEP_NAMES
    failed = {name: step["verdict"] or step["error"] for name, step in steps.items()}
    assert {step["status"] for step in steps.values()} == {"pass"}, failed
    assert code == EXIT_PASSED
    assert printed[0].startswith("GPU evidence on cpu (CPU): tiny preset made 12 layers deep")
    assert [line.split(" (")[0].strip() for line in printed[1:12]] == [
        f"{letter}. {name}" for letter, name in zip(LETTERS, STEP_NAMES, strict=True)
    ]
    assert printed[-1].startswith(f"summary: {out / 'summary.md'}")
    assert {path.name for path in out.iterdir()} == EVIDENCE_FILES
    assert all(path.stat().st_size < 16 << 20 for path in out.iterdir())
    for name in EVIDENCE_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    assert document["plan"]["predicted"]["total_seconds"] > 0
    assert "cuda_context_bytes" in document and "nccl_bytes" in document
    assert steps["preflight"]["data"]["versions"]["torch"] == torch.__version__
    assert steps["gpu-tests"]["data"]["exit_code"] == 0
    assert "--test-timeout" in steps["gpu-tests"]["data"]["command"]
    pairs = steps["aggregator"]["data"]["pairs"]
    assert [pair["point"]["frames"] for pair in pairs] == [2, 128]
    assert all(pair["sdpa"]["cpu"] > 0 for pair in pairs)
    rows = steps["estimates"]["data"]["rows"]
    assert len(rows) == 4 and [row["judged"] for row in rows] == [False, False, True, True]
    assert all(abs(row["relative_error"]) <= 0.10 for row in rows if row["judged"])
    cap = steps["memory-cap"]["data"]
    runs = [run["record"]["status"] for run in cap["runs"]]
    assert runs == ["ok", "oom"] and cap["runs"][0]["cap_bytes"] > cap["need_bytes"]
    assert "equal bit for bit" in steps["offload"]["verdict"]
    training = steps["training"]["data"]["rows"]
    assert [row["record"]["variant"] for row in training] == list(AGGREGATORS)
    for row in training:
        record = row["record"]
        assert (record["mode"], record["warmup"], row["ok"]) == ("train", 1, True)
        assert set(row["estimate_phase_peak_bytes"]) == set(PHASES)
        assert all(abs(error) <= 0.10 for error in row["relative_errors"].values())
    assert training[1]["record"]["max_rel_diff"] <= checks.DIFF_TOLERANCE
    assert "6 phase peaks within 10% of the estimates" in steps["training"]["verdict"]
    summary = (out / "summary.md").read_text()
    section = summary.split("## i. training")[1].split("## j. square")[0]
    assert "| variant | status | forward peak (measured / estimated) |" in section
    assert "| full | ok | " in section and "| optimized | ok | " in section
    for letter, name in zip(LETTERS, STEP_NAMES, strict=True):
        assert f"| {letter}. {name} | {steps[name]['status']} |" in summary
        assert f"## {letter}. {name}" in summary
    assert "| allocator settings |" in summary
    rate = document["measured_rate"]
    assert [point["label"] for point in rate["points"]] == ["aggregator 128 frames 28x28 autocast"]
    assert rate["device"] == "cpu" and rate["variant"] == "optimized"
    optimized = pairs[1]["records"][1]
    assert optimized["variant"] == "optimized"
    # 12 blocks of each kind over 9 tokens a frame, 1,152 in all, 32 wide: 12 · (24·1152·32² +
    # 4·128·9²·32 + 24·1152·32² + 4·1152²·32) FLOPs.
    assert rate["points"][0] == {
        "label": "aggregator 128 frames 28x28 autocast",
        "flops": 2_733_834_240,
        "seconds": optimized["time_ms"]["median"] / 1e3,
        "tflops": rate["tflops"],
    }
    assert "Measured rate: " in summary
    table = tmp_path / "rates.json"
    shutil.copy(RATES_PATH, table)
    assert gpu_check.main(["--adopt", str(out), "--rates", str(table)]) == 1
    assert "measured on cpu, not on a GPU" in capsys.readouterr().err


def test_without_cuda_it_says_so_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "evidence")]) == EXIT_INCOMPLETE
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "evidence").exists()
    code = gpu_check.main(["--out", str(tmp_path / "evidence"), "--device", "cpu"])
    assert code == gpu_check.EXIT_USAGE


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ({}, EXIT_PASSED),
        ({"chunking": "fail"}, EXIT_FAILED),
        ({"offload": "error", "square": "skipped (time)"}, EXIT_FAILED),
        ({"square": "skipped (time)"}, EXIT_INCOMPLETE),
        ({"aggregator": "incomplete"}, EXIT_INCOMPLETE),
    ],
)
def test_the_exit_status_tells_the_truth(outcomes: dict[str, str], expected: int) -> None:
    steps = [StepResult(name, "x", status=outcomes.get(name, "pass")) for name in STEP_NAMES]
    assert exit_status(steps) == expected


def test_an_error_stays_in_its_step_and_steps_that_cannot_finish_are_not_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    clock = FakeClock()

    def broken(context: Context, result: StepResult) -> None:
        raise RuntimeError("bad\nthing")

    def slow(context: Context, result: StepResult) -> None:
        clock.now += 30
        result.judge(True, "took long")

    stub_steps(monkeypatch, gpu_tests=broken, aggregator=slow)
    plan = dry_run_plan()
    predicted = plan.step_seconds()
    # After the aggregator's 30 s, less time is left than the offload step needs; the stubs
    # take no time, so every other step fits.
    budget = 30 + predicted["offload"] / 2
    assert max(seconds for name, seconds in predicted.items() if name != "offload") < budget
    out = tmp_path / "evidence"
    steps = checks.run_evidence(plan, torch.device("cpu"), out, Deadline(budget, clock=clock))
    expected = ["pass", "pass", "error", "pass", "pass", "pass", "pass", "skipped (time)"]
    expected += ["pass", "pass", "pass"]
    assert [step.status for step in steps] == expected
    assert statuses(out) == expected
    assert exit_status(steps) == EXIT_FAILED
    assert steps[2].error == "RuntimeError: bad thing"
    assert steps[3].seconds == 30.0
    printed = capsys.readouterr().out
    assert "c. gpu-tests: error (0.0 s): RuntimeError: bad thing" in printed
    assert "h. offload: skipped (time)" in printed
    assert "| h. offload | skipped (time) | - |" in (out / "summary.md").read_text()


def test_a_killed_run_keeps_the_steps_it_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(context: Context, result: StepResult) -> None:
        raise KeyboardInterrupt

    stub_steps(monkeypatch, estimates=killed)
    out = tmp_path / "evidence"
    with pytest.raises(KeyboardInterrupt):
        checks.run_evidence(dry_run_plan(), torch.device("cpu"), out, Deadline(100))
    assert statuses(out) == ["pass"] * 4 + ["pending"] * 7


def test_points_that_cannot_finish_are_skipped_and_the_step_is_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    plan = dry_run_plan()

    def fake_measure(context, cache, point):
        clock.now += 60
        return [
            sample_record(
                variant=variant,
                frames=point.frames,
                precision=point.precision.label,
                activation_peak_bytes=(3 if variant == "full" else 2) * point.frames,
                max_rel_diff=0.0,
            )
            for variant in point.variants
        ]

    monkeypatch.setattr(checks, "measure_point", fake_measure)
    first = plan.point_seconds(plan.aggregator[0])
    context = Context(
        plan, torch.device("cpu"), RANK, tmp_path, tmp_path, tmp_path / "log",
        Deadline(60 + first, clock=clock), None, {},
    )  # fmt: skip
    result = StepResult("aggregator", "d")
    checks.run_aggregator(context, result)
    assert result.status == "incomplete", result.verdict
    assert len(result.data.pairs) == 1
    assert result.data.skipped == [plan.aggregator[1].label]
    assert result.verdict.startswith(f"at {plan.aggregator[0].label}: optimized")


# A training step's peak in each phase, measured and estimated alike unless a test changes it.
TRAINING_PEAKS = {"forward": 300 << 20, "backward": 400 << 20, "optimizer": 200 << 20}


class ReadyEstimates:
    """Estimate workers whose every figure is ready: TRAINING_PEAKS for each phase."""

    def result(self, job: object, timeout_s: float) -> EstimateFigures:
        return EstimateFigures(0, 0, 0, 0, 0, 1, 0, 0, phase_peak_bytes=TRAINING_PEAKS)


def training_context(tmp_path: Path, budget_s: float = 100) -> Context:
    """The dry run's plan on the CPU with ready estimates."""
    return Context(
        dry_run_plan(), torch.device("cpu"), RANK, tmp_path, tmp_path, tmp_path / "log",
        Deadline(budget_s), ReadyEstimates(), {},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changed", "problem"),
    [
        ({}, None),
        ({"max_rel_diff": 0.5}, "2 frames optimized: loss rel diff 5.00e-01"),
        ({"backward_peak_bytes": 410 << 20}, "backward peak 410.0 MiB above full's 400.0 MiB"),
        ({"forward_peak_bytes": 250 << 20}, "2 frames optimized: forward peak +20.0% off its"),
        ({"status": "oom", "error": "out of memory"}, "2 frames optimized: oom: out of memory"),
    ],
)
def test_the_training_step_judges_runs_losses_peaks_and_estimates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changed: dict, problem: str | None
) -> None:
    def fake_measure(context, cache, point):
        peaks = {f"{phase}_peak_bytes": peak for phase, peak in TRAINING_PEAKS.items()}
        records = [
            sample_record(variant=variant, mode="train", max_rel_diff=0.0, **peaks)
            for variant in point.variants
        ]
        records[1] = dataclasses.replace(records[1], **changed)
        return records

    monkeypatch.setattr(checks, "measure_point", fake_measure)
    result = StepResult("training", "i")
    checks.run_training(training_context(tmp_path), result)
    if problem is None:
        assert result.status == "pass", result.verdict
        assert "6 phase peaks within 10% of the estimates: largest error +0.0%" in result.verdict
    else:
        assert result.status == "fail"
        assert problem in result.verdict


def test_a_training_point_that_cannot_finish_is_skipped(tmp_path: Path) -> None:
    result = StepResult("training", "i")
    checks.run_training(training_context(tmp_path, budget_s=0.1), result)
    assert result.status == "skipped (time)"
    assert result.data.skipped == [dry_run_plan().training[0].label]


def test_a_cpu_cap_counts_new_storages_only() -> None:
    weight = torch.zeros(4096)
    with memory_cap(torch.device("cpu"), 4096):
        weight.detach().add_(1)
        kept = torch.zeros(512)
        with pytest.raises(torch.OutOfMemoryError, match="pass the CPU cap of 4096"):
            torch.zeros(1024)
        del kept
        torch.zeros(1000)


def test_the_need_under_a_cap() -> None:
    figures = EstimateFigures(
        peak_bytes=100,
        allocated_bytes=120,
        activation_bytes=60,
        reserved_bound_bytes=140,
        reserved_peak_bytes=160,
        allocations=7,
        weights_bytes=30,
        input_bytes=10,
    )
    assert fit_need(figures, torch.device("cuda", 0)) == 140
    assert fit_need(figures, torch.device("cpu")) == 70


def test_estimates_start_with_the_caps_point_and_name_their_parts() -> None:
    plan = dry_run_plan()
    jobs = estimate_jobs(plan)
    assert len(jobs) == len(set(jobs)) == 1 + 2 + 2 * 2 + 2
    assert jobs[0] == point_jobs(plan.cap, plan.architecture)[0]
    # The training steps' fake passes, the slowest, come next.
    assert jobs[1:3] == point_jobs(plan.training[0], plan.architecture)
    assert all(job.training == plan.training[0].training for job in jobs[1:3])
    assert not any(job.training for job in jobs[3:])
    job = point_jobs(plan.aggregator[1], plan.architecture)[1]
    on_cpu, on_cuda = estimate_point(job, "cpu"), estimate_point(job, "cuda")
    assert on_cpu.activation_bytes == on_cpu.peak_bytes - on_cpu.weights_bytes - 128 * 3 * 28**2 * 4
    assert on_cuda.allocated_bytes > on_cuda.peak_bytes > on_cuda.weights_bytes > 0
    assert 0 < on_cuda.activation_bytes < on_cuda.allocated_bytes - on_cuda.weights_bytes
    assert on_cuda.reserved_peak_bytes >= on_cuda.reserved_bound_bytes >= on_cuda.allocated_bytes
    assert on_cuda.allocations > 0


def test_estimates_whose_workers_cannot_start_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_processes(context: object, *arguments: object) -> None:
        raise OSError("no more processes")

    monkeypatch.setattr(multiprocessing.context.SpawnContext, "Pool", no_processes)
    jobs = estimate_jobs(dry_run_plan())
    pool = EstimatePool(jobs, Path("unused.log"))
    with pytest.raises(RuntimeError, match="did not start: OSError: no more processes"):
        pool.result(jobs[0], 1.0)
    pool.close()


def test_history_holds_every_event_of_the_traced_allocations() -> None:
    assert history_entries_for(10) == MIN_HISTORY_ENTRIES
    assert history_entries_for(68_000) >= 2 * 68_000


def test_attention_calls_are_counted_by_backend() -> None:
    attention = Attention(dim=16, num_heads=2)
    tokens = torch.randn(1, 5, 16)
    original = F.scaled_dot_product_attention
    with sdpa.counting_backends() as counts:
        attention(tokens)
        F.scaled_dot_product_attention(*tokens.view(1, 1, 5, 16).expand(3, -1, -1, -1))
    assert counts == {attention_backends.CPU: 2}
    assert F.scaled_dot_product_attention is original
    attention(tokens)
    assert counts == {attention_backends.CPU: 2}


def test_pytests_summary_line_is_found() -> None:
    output = "....s\n=== 4 passed, 1 skipped, 2 deselected in 3.20s ===\n"
    assert pytest_summary(output) == "4 passed, 1 skipped, 2 deselected in 3.20s"
    assert pytest_summary("4 skipped in 1.1s\n") == "4 skipped in 1.1s"
    assert pytest_summary("collected nothing") == "no summary"


def test_a_test_past_its_timeout_fails_and_the_next_runs(tmp_path: Path) -> None:
    (tmp_path / "test_sleepy.py").write_text(
        "import time\n\ndef test_sleeps():\n    time.sleep(30)\n\ndef test_quick():\n    pass\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider"]
    command += ["-q", "--test-timeout", "1", "test_sleepy.py"]
    completed = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "1 failed, 1 passed" in completed.stdout
    assert "ran past --test-timeout 1 s" in completed.stdout


def test_preflight_fails_on_allocator_settings_the_estimator_does_not_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = Context(
        dry_run_plan(), torch.device("cpu"), RANK, tmp_path, tmp_path, tmp_path / "log",
        Deadline(100), None, {},
    )  # fmt: skip
    result = StepResult("preflight", "a")
    checks.run_preflight(context, result)
    assert result.status == "pass", result.verdict
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    checks.run_preflight(context, result)
    assert result.status == "fail"
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in result.verdict


class FlatArchitecture:
    """1,000 tokens and 1e12 FLOPs a frame at any size, so rates are easy to check by hand."""

    def tokens_per_frame(self, height: int, width: int) -> int:
        return 1000

    def aggregator_flops(self, frames: int, height: int, width: int) -> float:
        return frames * 1e12


def timed_pair(frames: int, precision: str, times_ms: dict[str, float | None]) -> Pair:
    """A point of `frames` whose variants took `times_ms` (None: ran out of memory) on an
    H100."""
    variants = tuple(times_ms)
    point = Point("aggregator", variants, frames, 28, 28, get_precision(precision))
    records = [
        sample_record(
            variant=variant,
            frames=frames,
            precision=precision,
            device="cuda:0",
            device_name=H100_NAME,
            status="ok" if ms is not None else "oom",
            time_ms=None if ms is None else TimeSummary(ms, ms, ms, 0.0, 1),
        )
        for variant, ms in times_ms.items()
    ]
    return Pair(point, *records)


def test_the_measured_rate_pools_the_optimized_forwards_of_enough_tokens_in_16_bits() -> None:
    plan = dataclasses.replace(
        dry_run_plan(), architecture=FlatArchitecture(), rate_min_tokens=40_000
    )
    full, optimized = AGGREGATORS
    aggregator = Measured(
        [
            timed_pair(10, "autocast", {full: 10.0, optimized: 20.0}),  # 10,000 tokens
            timed_pair(50, "autocast", {full: 300.0, optimized: 250.0}),  # 200 TFLOP/s
            timed_pair(100, "fp32", {full: 1000.0, optimized: 900.0}),  # fp32
            timed_pair(200, "bf16", {full: 2000.0, optimized: None}),  # out of memory
        ]
    )
    square = Measured([timed_pair(100, "bf16", {full: 500.0, optimized: 400.0})])  # 250 TFLOP/s
    chunking = Measured([timed_pair(100, "autocast", {UNCHUNKED: 100.0, CHUNKED: 100.0})])
    steps = [
        StepResult("aggregator", "d", data=aggregator),
        StepResult("chunking", "g", data=chunking),
        StepResult("square", "i", data=square),
    ]
    rate = measured_rate(plan, steps, "2.13.0")
    assert rate is not None
    # 150e12 FLOPs in 0.65 s.
    assert rate.tflops == pytest.approx(230.769, rel=1e-5)
    assert [point.tflops for point in rate.points] == pytest.approx([200, 250])
    assert [point.label for point in rate.points] == [
        "aggregator 50 frames 28x28 autocast",
        "aggregator 100 frames 28x28 bf16",
    ]
    assert (rate.device, rate.device_name, rate.torch) == ("cuda:0", H100_NAME, "2.13.0")
    assert measured_rate(plan, steps[1:2], "2.13.0") is None
    assert RATE["tflops"] == pytest.approx(414.5055, rel=1e-6)


def evidence_folder(folder: Path, outcomes: dict[str, str], rate: dict | None) -> Path:
    """A results.json in `folder`: every step passed unless `outcomes` says otherwise, and
    `rate` measured."""
    steps = [
        {"name": name, "letter": letter, "status": outcomes.get(name, "pass")}
        for letter, name in zip(LETTERS, STEP_NAMES, strict=True)
    ]
    document = {"started_at": "2026-12-06T09:30:00+00:00", "measured_rate": rate, "steps": steps}
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(document))
    return folder


def test_adopting_a_gpu_run_makes_its_rate_its_gpu_types(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    table = tmp_path / "rates.json"
    shutil.copy(RATES_PATH, table)
    committed = RATES_PATH.read_bytes()
    folder = evidence_folder(tmp_path / "h100", {"square": "skipped (time)"}, RATE)
    assert gpu_check.main(["--adopt", str(folder), "--rates", str(table)]) == 0
    assert "H100 now predicts at 414.5 TFLOP/s, measured on NVIDIA H100" in capsys.readouterr().out
    assert rates_for(H100_NAME, table) == DeviceRates(
        "H100",
        414.5,
        0.25,
        50.0,
        "measured",
        report=str(folder / "results.json"),
        date="2026-12-06",
        device=H100_NAME,
        torch="2.13.0",
    )
    assert rates_for("NVIDIA H200", table).source == "stated"
    other = {**RATE, "device_name": "NVIDIA A100-SXM4-80GB"}
    folder = evidence_folder(tmp_path / "a100", {}, other)
    assert gpu_check.main(["--adopt", str(folder), "--rates", str(table)]) == 0
    a100 = rates_for("NVIDIA A100-SXM4-80GB", table)
    assert (a100.gpu, a100.tflops, a100.source) == ("NVIDIA A100-SXM4-80GB", 414.5, "measured")
    assert [rates.gpu for rates in read_table(table).gpus] == ["H100", "H200", a100.gpu]
    assert RATES_PATH.read_bytes() == committed
    committed_folder = REPO / "docs" / "results" / "2026-12-06-h100"
    assert report_name(committed_folder) == "docs/results/2026-12-06-h100/results.json"


@pytest.mark.parametrize(
    ("outcomes", "rate", "reason"),
    [
        ({"chunking": "fail"}, RATE, "chunking (fail); a run with a failed check is not adopted"),
        ({"gpu-tests": "error"}, RATE, "gpu-tests (error)"),
        ({}, None, "holds no measured rate"),
        ({}, {**RATE, "device": "cpu"}, "measured on cpu, not on a GPU"),
    ],
)
def test_a_run_with_a_failed_check_or_no_gpu_rate_is_not_adopted(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    outcomes: dict[str, str],
    rate: dict | None,
    reason: str,
) -> None:
    table = tmp_path / "rates.json"
    shutil.copy(RATES_PATH, table)
    before = table.read_bytes()
    folder = evidence_folder(tmp_path / "run", outcomes, rate)
    assert gpu_check.main(["--adopt", str(folder), "--rates", str(table)]) == 1
    assert reason in capsys.readouterr().err
    assert table.read_bytes() == before
