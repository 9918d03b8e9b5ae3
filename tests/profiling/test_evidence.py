"""`python -m profiling.gpu_check`: its whole flow at dry-run sizes on the CPU (plan, steps,
summary, results, plots), the time budget, errors kept to their step, a killed run's results,
and the pieces that choose a memory cap and read pytest's summary."""

import json
import multiprocessing.context
from pathlib import Path

import pytest
import torch

from profiling import gpu_check
from profiling.evidence import checks
from profiling.evidence.checks import Context, choose_cap, fit_need, memory_cap, pytest_summary
from profiling.evidence.estimates import (
    EstimateFigures,
    EstimateJob,
    EstimatePool,
    estimate_jobs,
    estimate_point,
)
from profiling.evidence.plan import CAST_PRECISION, README_PRECISION, dry_run_plan
from profiling.evidence.results import Deadline, Skipped, StepResult
from tests.support.profiling_records import RANK, sample_record
from vggt.memory.estimate import CUDA_CONTEXT_BYTES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIDENCE_FILES = {
    "summary.md",
    "results.json",
    "pytest-gpu.txt",
    "native-stderr.log",
    "peak-vs-frames.png",
    "time-vs-frames.png",
    "offload-and-chunking.png",
}
STEP_NAMES = ["gpu-tests", "aggregator", "estimates", "memory-budget", "offload", "chunking"]
GIB = 1 << 30


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class NoEstimates:
    """Stands in for the estimate workers when the steps are stubs."""

    def __init__(self, jobs: list, log: Path) -> None:
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


def test_the_dry_run_measures_every_step_and_writes_the_evidence(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "evidence"
    code = gpu_check.main(["--out", str(out), "--dry-run", "--device", "cpu"])
    printed = capsys.readouterr().out.splitlines()
    document = json.loads((out / "results.json").read_text())
    steps = {step["name"]: step for step in document["steps"]}
    assert list(steps) == STEP_NAMES
    assert code == (1 if {"fail", "error"} & {s["status"] for s in steps.values()} else 0)
    assert printed[0].startswith("GPU evidence on cpu (CPU): tiny preset made 12 layers deep")
    assert [line.split(":")[0].strip() for line in printed[1:7]] == [
        f"{letter}. {name}" for letter, name in zip("abcdef", STEP_NAMES, strict=True)
    ]
    assert printed[8].startswith("a. gpu-tests: pass (")
    assert printed[-1].startswith(f"summary: {out / 'summary.md'}")
    assert {path.name for path in out.iterdir()} == EVIDENCE_FILES
    assert all(path.stat().st_size < 16 << 20 for path in out.iterdir())
    for name in EVIDENCE_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    assert {step["status"] for step in steps.values()} <= {"pass", "fail"}
    assert steps["gpu-tests"]["data"]["exit_code"] == 0
    assert " in " in steps["gpu-tests"]["data"]["summary"]
    assert len(steps["aggregator"]["data"]["records"]) == 2 * 2 * 2
    rows = steps["estimates"]["data"]["rows"]
    assert len(rows) == 8 and all(row["estimate_allocated_bytes"] > 0 for row in rows)
    # fp32 on a CPU: the estimate is exact, so the cap between the estimates must separate.
    assert steps["memory-budget"]["status"] == "pass", steps["memory-budget"]["verdict"]
    budget = {r["variant"]: r for r in steps["memory-budget"]["data"]["records"]}
    assert budget["full"]["status"] == "oom" and "emulated" in budget["full"]["error"]
    assert steps["offload"]["status"] == "pass", steps["offload"]["verdict"]
    assert "equal bit for bit" in steps["offload"]["verdict"]
    assert [r["frames"] for r in steps["chunking"]["data"]["records"]] == [4, 4, 64, 64]
    summary = (out / "summary.md").read_text()
    for letter, name in zip("abcdef", STEP_NAMES, strict=True):
        assert f"| {letter}. {name} | {steps[name]['status']} |" in summary
        assert f"## {letter}. {name}" in summary
    assert "| allocator settings |" in summary


def test_without_cuda_it_says_so_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "evidence")]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "evidence").exists()
    code = gpu_check.main(["--out", str(tmp_path / "evidence"), "--device", "cpu"])
    assert code == gpu_check.EXIT_USAGE


def test_an_error_stays_in_its_step_and_the_budget_skips_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    clock = FakeClock()

    def broken(context: Context, result: StepResult) -> None:
        raise RuntimeError("bad\nthing")

    def slow(context: Context, result: StepResult) -> None:
        clock.now += 101
        result.judge(True, "took long")

    stub_steps(monkeypatch, gpu_tests=broken, aggregator=slow)
    out = tmp_path / "evidence"
    steps = checks.run_evidence(
        dry_run_plan(), torch.device("cpu"), out, Deadline(100, clock=clock)
    )
    expected = ["error", "pass", *["skipped (time)"] * 4]
    assert [step.status for step in steps] == expected
    assert statuses(out) == expected
    assert steps[0].error == "RuntimeError: bad thing"
    assert steps[1].seconds == 101.0
    printed = capsys.readouterr().out
    assert "a. gpu-tests: error (0.0 s): RuntimeError: bad thing" in printed
    assert "c. estimates: skipped (time)" in printed
    assert "| c. estimates | skipped (time) | - |" in (out / "summary.md").read_text()
    assert (out / "peak-vs-frames.png").is_file()


def test_a_killed_run_keeps_the_steps_it_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(context: Context, result: StepResult) -> None:
        raise KeyboardInterrupt

    stub_steps(monkeypatch, estimates=killed)
    out = tmp_path / "evidence"
    with pytest.raises(KeyboardInterrupt):
        checks.run_evidence(dry_run_plan(), torch.device("cpu"), out, Deadline(100))
    assert statuses(out) == ["pass", "pass", *["pending"] * 4]


def test_points_past_the_budget_are_skipped_and_the_step_is_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()

    def fake_measure(context, group, cache, warmup, baseline="full"):
        clock.now += 60
        return [
            sample_record(
                variant=variant,
                frames=group.frames,
                precision=group.precision.label,
                activation_peak_bytes=(3 if variant == "full" else 2) * group.frames,
                max_rel_diff=0.0,
            )
            for variant in group.variants
        ]

    monkeypatch.setattr(checks, "measure", fake_measure)
    plan = dry_run_plan()
    context = Context(
        plan, torch.device("cpu"), RANK, tmp_path, tmp_path, tmp_path / "log",
        Deadline(100, clock=clock), None, {},
    )  # fmt: skip
    result = StepResult("aggregator", "b")
    checks.run_aggregator(context, result)
    assert result.status == "incomplete", result.verdict
    assert len(result.data.records) == 2 * 2
    assert result.data.skipped == [Skipped(CAST_PRECISION, 1), Skipped(CAST_PRECISION, 4)]
    assert result.verdict.startswith(f"at 4 frames, {README_PRECISION.label}: optimized")


def test_the_cap_lies_between_the_estimates() -> None:
    assert choose_cap(100, 300) == 200
    assert choose_cap(10 * GIB, 40 * GIB) == int(13.5 * GIB)
    with pytest.raises(ValueError, match="at or above full"):
        choose_cap(300, 300)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert fit_need(EstimateFigures(10, 8, None, 0, 1, 1), cuda) == 8
    assert fit_need(EstimateFigures(10, 8, 12, 500, 1, 1), cuda) == 12
    assert fit_need(EstimateFigures(10, 8, 12, 500, 1, 1), cpu) == 10


def test_a_cpu_cap_raises_out_of_memory_above_it() -> None:
    with memory_cap(torch.device("cpu"), 4096):
        kept = torch.zeros(512)
        with pytest.raises(torch.OutOfMemoryError, match="pass the CPU cap of 4096"):
            torch.zeros(1024)
        del kept
        torch.zeros(1000)


def test_estimates_start_with_the_memory_budgets_points_and_fall_back_to_the_peak() -> None:
    plan = dry_run_plan()
    jobs = estimate_jobs(plan)
    assert len(jobs) == len(set(jobs)) == 2 + 2 * 2 * 2
    assert [(job.precision, job.frames) for job in jobs[:2]] == [
        (plan.budget_precision, plan.budget_frames)
    ] * 2
    figures = estimate_point(
        EstimateJob("optimized", "aggregator", plan.architecture, plan.budget_precision, 2, 28)
    )
    assert figures.allocated_bytes > figures.peak_bytes > figures.weights_bytes > 0
    assert figures.reserved_bound_bytes >= figures.allocated_bytes
    assert figures.cuda_context_bytes == CUDA_CONTEXT_BYTES > 0


def test_estimates_whose_workers_cannot_start_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_processes(context: object, *arguments: object) -> None:
        raise OSError("no more processes")

    monkeypatch.setattr(multiprocessing.context.SpawnContext, "Pool", no_processes)
    jobs = estimate_jobs(dry_run_plan())
    pool = EstimatePool(jobs, Path("unused.log"))
    with pytest.raises(RuntimeError, match="did not start: OSError: no more processes"):
        pool.result(jobs[0], 1.0)
    pool.close()


def test_pytests_summary_line_is_found() -> None:
    output = "....s\n=== 4 passed, 1 skipped, 2 deselected in 3.20s ===\n"
    assert pytest_summary(output) == "4 passed, 1 skipped, 2 deselected in 3.20s"
    assert pytest_summary("4 skipped in 1.1s\n") == "4 skipped in 1.1s"
    assert pytest_summary("collected nothing") == "no summary"
