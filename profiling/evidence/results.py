"""A step's result, the run's time budget, and results.json (rewritten after every step, so a
killed run keeps what it finished)."""

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from profiling.report.results import write_atomically

PENDING = "pending"
PASS = "pass"
FAIL = "fail"
INCOMPLETE = "incomplete"
ERROR = "error"
SKIPPED_TIME = "skipped (time)"
RESULTS_FILE = "results.json"


@dataclass
class StepResult:
    """One check: its status (pending, pass, fail, incomplete: passed what it ran but the time
    ran out for the rest, error, skipped (time)), the verdict with its figure, the one-line
    reason of an error, its seconds and its data."""

    name: str
    letter: str
    status: str = PENDING
    verdict: str = ""
    error: str | None = None
    seconds: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def judge(self, passed: bool, verdict: str, complete: bool = True) -> None:
        """Set pass or fail with the verdict's text; a pass on part of the points is
        `incomplete`."""
        self.status = (PASS if complete else INCOMPLETE) if passed else FAIL
        self.verdict = verdict


class Deadline:
    """The run's time budget in seconds, counted from its creation on `clock`."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self.budget_s - self.elapsed())

    def passed(self) -> bool:
        """Whether the budget is spent."""
        return self.left() <= 0


def write_results(
    out_dir: Path, header: dict[str, Any], steps: list[StepResult], deadline: Deadline
) -> None:
    """results.json: the header (plan, environment), the time spent and every step."""
    document = {
        **header,
        "budget_s": deadline.budget_s,
        "elapsed_s": round(deadline.elapsed(), 1),
        "steps": [asdict(step) for step in steps],
    }
    write_atomically(out_dir / RESULTS_FILE, json.dumps(document, indent=2) + "\n")
