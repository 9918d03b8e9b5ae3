"""Bad command lines stop profiling/run.py before any work, with exit code 2 and one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from profiling.native_stderr import native_stderr_to
from profiling.run import main
from profiling.sweep.options import parse_config
from profiling.sweep.records import PartialLog
from tests.support.profiling_records import sample_record
from tests.support.repo import REPO, SWEEP

MEASUREMENT_STACK = (
    "matplotlib",
    "pynvml",
    "tqdm",
    "profiling.meters",
    "profiling.report",
    "profiling.sweep.measure",
    "profiling.sweep.runner",
)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--preset", "nope"], "unknown preset 'nope'; choose from "),
        (["--variants", "full,fast"], "unknown variant 'fast'; choose from full, optimized"),
        (["--frames", "0"], "--frames must be whole numbers of at least 1, got '0'"),
        (["--frames", "2,x"], "--frames must be whole numbers of at least 1, got 'x'"),
        (["--frames", "-3"], "--frames must be whole numbers of at least 1, got '-3'"),
        (["--image-size", "50x56"], "image size 50x56 is not a positive multiple of the patch"),
        (["--image-size", "big"], "image size must be HxW or N, got 'big'"),
        (["--component", "heads"], "unknown component 'heads'"),
        (["--dtype", "fp64"], "unknown dtype 'fp64'"),
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
        (["--warmup", "many"], "argument --warmup: invalid int value: 'many'"),
        (["--variant-module", "no.such.module"], "cannot import variant module 'no.such.module'"),
        (["--memory-budget", "2", "--device", "cpu"], "--memory-budget caps CUDA memory"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["--preset", "tiny", "--out", str(tmp_path / "out"), *arguments])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("profiling/run.py: error: ")
    assert message in lines[0]


def test_unwritable_output_folder_is_refused(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["--preset", "tiny", "--out", str(blocker / "out")]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err


def test_an_earlier_runs_folder_needs_resume(tmp_path: Path, capsys) -> None:
    PartialLog(tmp_path, 0).append([sample_record()])
    assert main(["--preset", "tiny", "--out", str(tmp_path)]) == 2
    assert f"pass --resume {tmp_path}" in capsys.readouterr().err
    config = parse_config(["--preset", "tiny", "--resume", str(tmp_path)], attempt=0)
    assert config.resume and config.out_dir == tmp_path


def test_a_restarted_attempt_resumes_its_own_folder(tmp_path: Path) -> None:
    PartialLog(tmp_path, 0).append([sample_record()])
    config = parse_config(["--preset", "tiny", "--out", str(tmp_path)], attempt=1)
    assert config.resume


def test_overrides_replace_the_presets_axes(tmp_path: Path) -> None:
    argv = ["--preset", "tiny", "--out", str(tmp_path), "--frames", "4,1", "--batch", "2"]
    argv += ["--image-size", "28x56,42", "--dtype", "bf16,fp16-autocast", "--dtype-mode", "cast"]
    config = parse_config(argv, attempt=0)
    assert config.settings.frames == (4, 1)
    assert config.settings.batch == (2,)
    assert config.settings.image_sizes == ((28, 56), (42, 42))
    assert [p.label for p in config.settings.precisions] == ["bf16", "autocast-fp16"]
    argv[-4:] = ["--precision", "autocast,bf16"]
    config = parse_config(argv, attempt=0)
    assert [p.label for p in config.settings.precisions] == ["autocast", "bf16"]


def test_the_script_exits_2_without_a_traceback(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(SWEEP), "--frames", "0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "profiling/run.py: error: --frames must be whole numbers of at least 1, got '0'"
    ]
    assert not (tmp_path / "partial").exists()


def test_parsing_the_options_imports_nothing_of_the_measurement_stack(tmp_path: Path) -> None:
    script = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "from profiling.sweep.options import parse_config\n"
        f"parse_config(['--preset', 'tiny', '--out', {str(tmp_path)!r}], attempt=0)\n"
        "print(*sorted(set(sys.modules) - before))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert completed.returncode == 0, completed.stderr
    loaded = completed.stdout.split()
    assert "profiling.sweep.options" in loaded
    assert [name for name in loaded if name.startswith(MEASUREMENT_STACK)] == []


PROFILE_ONE_OPERATOR = (
    "import torch\n"
    "from torch.profiler import ProfilerActivity, profile\n"
    "with profile(activities=[ProfilerActivity.CPU], profile_memory=True):\n"
    "    torch.ones(4).add_(1)\n"
)


def test_native_stderr_goes_to_the_log_for_the_block_only(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    log = tmp_path / "logs" / "rank0.log"
    os.write(2, b"before\n")
    with native_stderr_to(log):
        os.write(2, b"native line\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "before\nafter\n"
    assert log.read_text() == "native line\n"


def test_a_sweeps_console_shows_progress_and_results_only(tmp_path: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROFILE_ONE_OPERATOR], capture_output=True, text=True, timeout=120
    )
    kineto_prints = "profiler_start" in probe.stderr
    out = tmp_path / "report"
    command = [sys.executable, str(SWEEP), "--preset", "tiny", "--device", "cpu"]
    command += ["--frames", "1,2", "--repeats", "1", "--out", str(out)]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "profiler_start" not in completed.stderr
    assert "SyncActivityProfilerHandler" not in completed.stderr
    assert "rank 0: 2config" in completed.stderr
    assert completed.stdout.startswith(f"report written to {out}/")
    log = (out / "logs" / "rank0.log").read_text()
    assert ("profiler_start" in log) == kineto_prints
