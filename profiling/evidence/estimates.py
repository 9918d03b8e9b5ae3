"""The estimator's figures for the measured points, computed in spawned worker processes while
the GPU steps run (one fake pass of VGGT-1B takes tens of seconds of one CPU core).

`estimate_point` is the only call into the estimator (vggt.memory).
"""

import multiprocessing
import multiprocessing.pool
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from profiling.evidence.plan import Plan
from profiling.native_stderr import STDERR_FD
from profiling.sweep.records import one_line
from vggt.memory.estimate import FakeModel
from vggt.models.architecture import Architecture
from vggt.precision import Precision

MAX_WORKERS = 8
# CPU cores left to the process that drives the GPU.
CORES_KEPT = 2


@dataclass(frozen=True)
class EstimateJob:
    """One point to estimate: a variant of a component, a precision, frames of side x side."""

    variant: str
    component: str
    architecture: Architecture
    precision: Precision
    frames: int
    side: int


@dataclass(frozen=True)
class EstimateFigures:
    """What the comparisons read from an estimate: the peak, the bytes allocated at it, the
    bound on reserved bytes and the CUDA context (None and 0 where the estimator has none),
    and the weights and input in it."""

    peak_bytes: int
    allocated_bytes: int
    reserved_bound_bytes: int | None
    cuda_context_bytes: int
    weights_bytes: int
    input_bytes: int


def estimate_point(job: EstimateJob) -> EstimateFigures:
    """The estimator's figures for `job`, in the job's precision, for one batch of `frames`
    square images."""
    torch.set_num_threads(1)
    model = FakeModel(job.variant, job.component, job.architecture, job.precision)
    estimate = model.estimate(job.frames, 1, job.side, job.side)
    return EstimateFigures(
        peak_bytes=estimate.live_peak_bytes,
        allocated_bytes=estimate.allocated_bytes,
        reserved_bound_bytes=estimate.reserved_bound_bytes,
        cuda_context_bytes=estimate.cuda_context_bytes,
        weights_bytes=estimate.weights_bytes,
        input_bytes=estimate.input_bytes,
    )


def aggregator_job(plan: Plan, variant: str, precision: Precision, frames: int) -> EstimateJob:
    """The estimate of one aggregator variant at `frames` of the plan's model and image size."""
    return EstimateJob(variant, "aggregator", plan.architecture, precision, frames, plan.side)


def estimate_jobs(plan: Plan) -> list[EstimateJob]:
    """The memory-budget step's two points first, then every point of the aggregator step by
    frame count."""
    budget = [
        aggregator_job(plan, variant, plan.budget_precision, plan.budget_frames)
        for variant in ("full", "optimized")
    ]
    grid = [
        aggregator_job(plan, variant, precision, frames)
        for frames in plan.frames
        for precision in plan.precisions
        for variant in ("full", "optimized")
    ]
    return budget + [job for job in grid if job not in budget]


def log_stderr_to(path: Path) -> None:
    """Pool initializer: this worker's stderr (file descriptor 2, the fake tensors' warnings
    among it) appends to `path` instead of the console."""
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, STDERR_FD)
    os.close(log)


def worker_count(jobs: int) -> int:
    """Workers for `jobs` estimates: the cores beyond CORES_KEPT, at least 1, at most 8."""
    spare = (os.cpu_count() or 1) - CORES_KEPT
    return max(1, min(MAX_WORKERS, jobs, spare))


class EstimatePool:
    """Estimates of `jobs` computing in spawned processes from construction on, their stderr
    appended to `log`; when the processes cannot start, every result raises that reason."""

    def __init__(self, jobs: list[EstimateJob], log: Path) -> None:
        self._pool: multiprocessing.pool.Pool | None = None
        self._pending: dict[EstimateJob, multiprocessing.pool.AsyncResult] = {}
        self._failure = ""
        try:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(worker_count(len(jobs)), log_stderr_to, (log,))
        except Exception as error:
            self._failure = one_line(error)
            return
        self._pending = {job: self._pool.apply_async(estimate_point, (job,)) for job in jobs}

    def result(self, job: EstimateJob, timeout_s: float) -> EstimateFigures:
        """The figures of `job`, waiting at most `timeout_s`; multiprocessing.TimeoutError when
        they are not ready by then, the worker's exception when it failed, RuntimeError when
        the workers did not start, KeyError for a job that was not submitted."""
        if self._pool is None:
            raise RuntimeError(f"the estimate workers did not start: {self._failure}")
        return self._pending[job].get(max(timeout_s, 0.001))

    def close(self) -> None:
        """Stop the workers, finished or not."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
