"""What every step of the GPU evidence reads: the plan, the device, the time budget, the
estimates computing in the background, the earlier steps' results, and where files go."""

from dataclasses import dataclass
from pathlib import Path

import torch

from profiling.evidence.estimates import EstimatePool
from profiling.evidence.plan import Plan
from profiling.evidence.results import Deadline, StepResult
from profiling.sweep.environment import RankInfo


@dataclass
class Context:
    """The run's shared state. `scratch` takes the sweep's per-case files (snapshots,
    timelines), which are not part of the evidence; `native_log` takes native stderr."""

    plan: Plan
    device: torch.device
    rank: RankInfo
    out_dir: Path
    scratch: Path
    native_log: Path
    deadline: Deadline
    estimates: EstimatePool
    steps: dict[str, StepResult]
