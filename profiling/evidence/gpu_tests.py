"""Step a: the gpu-marked tests in a pytest subprocess, within the time left; its output is
kept in DIR/pytest-gpu.txt and its summary line in the step's data."""

import re
import subprocess
import sys
from pathlib import Path

from profiling.evidence.context import Context
from profiling.evidence.results import StepResult

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUT_FILE = "pytest-gpu.txt"
# The end of pytest's output that is kept (its summary is at the end).
KEPT_CHARS = 1 << 20
SUMMARY = re.compile(r"\d+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def summary_line(output: str) -> str:
    """pytest's final count line (`3 passed, 2 skipped in 4.1s`), or `no summary`."""
    lines = [line.strip("= ") for line in output.splitlines() if SUMMARY.search(line)]
    return lines[-1] if lines else "no summary"


def run_gpu_tests(context: Context, result: StepResult) -> None:
    """Run `pytest -m gpu --device <device>`; pass when it exits 0."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "--device", context.device.type]
    command += ["-q", "-p", "no:cacheprovider", *context.plan.pytest_paths]
    result.data["command"] = " ".join(command[1:])
    timeout_s = max(1.0, context.deadline.left())
    try:
        completed = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as expired:
        output = decoded(expired.stdout) + decoded(expired.stderr)
        (context.out_dir / OUTPUT_FILE).write_text(output[-KEPT_CHARS:])
        raise TimeoutError(f"pytest did not finish in the {timeout_s:.0f} s left") from None
    output = completed.stdout + completed.stderr
    (context.out_dir / OUTPUT_FILE).write_text(output[-KEPT_CHARS:])
    summary = summary_line(completed.stdout)
    result.data.update(exit_code=completed.returncode, summary=summary, output=OUTPUT_FILE)
    result.judge(completed.returncode == 0, f"{summary} (exit code {completed.returncode})")


def decoded(output: bytes | str | None) -> str:
    """Captured output of a timed-out run, which may be bytes or missing."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
