"""torchrun sweeps on two CPU ranks (gloo): the queue, the report, a killed worker, an OOM
(variants `oom` and `killer` from tests.support.sweep_variants); and a resumed sweep."""

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from profiling.sweep.cases import build_groups
from profiling.sweep.presets import load_preset
from tests.support.launch import torchrun
from tests.support.repo import SWEEP

VARIANT_MODULE = "tests.support.sweep_variants"
TIMEOUT_S = 240


def sweep(cwd: Path, *arguments: str, restarts: int = 0) -> subprocess.CompletedProcess:
    """The tiny preset's sweep on two CPU ranks in `cwd`, with the test variants; it must pass."""
    options = ["--preset", "tiny", "--device", "cpu", "--quiet", "--variant-module", VARIANT_MODULE]
    completed = torchrun(
        2,
        SWEEP,
        [*options, *arguments],
        timeout_s=TIMEOUT_S,
        max_restarts=restarts,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=cwd,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


def expected_case_ids(variants: tuple[str, ...], frames: tuple[int, ...]) -> set[str]:
    preset = load_preset("tiny")
    settings = dataclasses.replace(preset.settings, variants=variants, frames=frames)
    return {c.case_id for g in build_groups(preset.architecture, settings) for c in g.cases()}


def partial_case_ids(out: Path) -> list[str]:
    lines = []
    for path in (out / "partial").glob("*.jsonl"):
        lines += [json.loads(line)["case_id"] for line in path.read_text().splitlines() if line]
    return lines


@pytest.mark.distributed
def test_two_ranks_share_the_sweep_and_record_an_oom(tmp_path: Path) -> None:
    out = tmp_path / "report"
    sweep(tmp_path, "--out", str(out), "--variants", "full,optimized,oom")
    document = json.loads((out / "results.json").read_text())
    cases = document["cases"]
    expected = expected_case_ids(("full", "optimized", "oom"), (1, 2, 3))
    assert sorted(c["case_id"] for c in cases) == sorted(expected)
    assert Counter(partial_case_ids(out)) == Counter(expected)
    assert {c["rank"] for c in cases} == {0, 1}
    status = {(c["variant"], c["frames"]): c["status"] for c in cases}
    assert status[("oom", 1)] == "ok"
    assert status[("oom", 2)] == status[("oom", 3)] == "oom"
    assert {s for (variant, _), s in status.items() if variant != "oom"} == {"ok"}
    for case in cases:
        if case["variant"] == "optimized":
            assert case["max_abs_diff"] == 0.0
            assert case["time_ms"]["repeats"] == 2
    assert document["environment"]["world_size"] == 2
    assert (out / "results.csv").read_text().count("\n") == len(cases) + 1
    summary = (out / "summary.md").read_text()
    assert "| frames | full peak | oom peak | optimized peak |" in summary
    assert "optimized/full peak" in summary and "optimized/full time" in summary
    assert "| OOM |" in summary
    assert list((out / "plots").glob("peak-memory-*.png"))
    assert list((out / "timelines").glob("*.cpu-profiler.json"))


@pytest.mark.distributed
def test_a_worker_killed_mid_sweep_loses_and_repeats_nothing(tmp_path: Path) -> None:
    frames = (1, 2, 3, 4, 5, 6)
    completed = sweep(
        tmp_path,
        "--variants",
        "full,killer",
        "--frames",
        ",".join(map(str, frames)),
        "--repeats",
        "1",
        restarts=1,
    )
    assert "exitcode: -9" in completed.stderr
    (out,) = (tmp_path / "reports").iterdir()
    cases = json.loads((out / "results.json").read_text())["cases"]
    expected = expected_case_ids(("full", "killer"), frames)
    assert sorted(c["case_id"] for c in cases) == sorted(expected)
    assert {c["status"] for c in cases} == {"ok"}
    assert {c["attempt"] for c in cases} == {0, 1}
    assert Counter(partial_case_ids(out)) == Counter(expected)


def test_resume_skips_the_finished_cases(tmp_path: Path) -> None:
    out = tmp_path / "report"
    single = [sys.executable, str(SWEEP), "--preset", "tiny", "--device", "cpu", "--quiet"]
    single += ["--frames", "1"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": TIMEOUT_S}
    first = subprocess.run([*single, "--out", str(out)], env=environment, **run)
    assert first.returncode == 0, first.stderr[-4000:]
    widened = [*single[:-1], "1,2", "--resume", str(out)]
    second = subprocess.run(widened, env=environment, **run)
    assert second.returncode == 0, second.stderr[-4000:]
    cases = json.loads((out / "results.json").read_text())["cases"]
    assert len(cases) == 4
    assert Counter(partial_case_ids(out)) == Counter(c["case_id"] for c in cases)
