"""The estimator's figures for the measured points, computed in spawned worker processes while
the GPU steps run (one fake pass of VGGT-1B takes tens of seconds of one CPU core).

`estimate_point` is the only call into the estimator (vggt.memory): of a forward, or of a
training step for a training point's jobs.
"""

import multiprocessing
import multiprocessing.pool
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from profiling.evidence.plan import Plan, Point
from profiling.native_stderr import STDERR_FD
from profiling.sweep.cases import Training
from profiling.sweep.records import one_line
from vggt.memory.allocator import round_request
from vggt.memory.estimate import CUBLAS_WORKSPACE_BYTES, FakeModel
from vggt.memory.training import FakeTrainingModel, TrainingEstimate
from vggt.models.architecture import Architecture
from vggt.precision import Precision

MAX_WORKERS = 8
# CPU cores left to the process that drives the GPU.
CORES_KEPT = 2


@dataclass(frozen=True)
class EstimateJob:
    """One point to estimate: a variant of a component, a precision, frames of height x
    width; with `training`, a training step of what it says instead of a forward."""

    variant: str
    component: str
    architecture: Architecture
    precision: Precision
    frames: int
    height: int
    width: int
    training: Training | None = None


@dataclass(frozen=True)
class EstimateFigures:
    """What the comparisons read from an estimate: the live peak, the bytes allocated at it
    and the part of them the forward allocated (`activation_bytes`: above the weights, input
    and cuBLAS workspace, each rounded as the allocator rounds it; on a CPU target the live
    activations), the bound on reserved bytes and the never-release reserve, the allocation
    count, the weights and input; of a training step, the seeded targets it holds, the
    activations above them and AdamW's states too, and `phase_peak_bytes`, each phase's peak of
    live bytes (weights, input, targets, AdamW's states, gradients and activations)."""

    peak_bytes: int
    allocated_bytes: int
    activation_bytes: int
    reserved_bound_bytes: int
    reserved_peak_bytes: int
    allocations: int
    weights_bytes: int
    input_bytes: int
    target_bytes: int = 0
    phase_peak_bytes: dict[str, int] = field(default_factory=dict)


def fake_model(job: EstimateJob, target_device: str) -> FakeModel:
    """The job's variant on fake storage as its point runs it: a forward's, or a training
    step's; on CUDA with the cuBLAS workspace resident."""
    workspace = CUBLAS_WORKSPACE_BYTES if target_device == "cuda" else 0
    if job.training is None:
        return FakeModel(
            job.variant,
            job.component,
            job.architecture,
            job.precision,
            target_device=target_device,
            cublas_workspace_bytes=workspace,
        )
    return FakeTrainingModel(
        job.variant,
        job.component,
        job.architecture,
        job.precision,
        job.training.parts,
        job.training.checkpoint,
        target_device=target_device,
        cublas_workspace_bytes=workspace,
    )


def estimate_point(job: EstimateJob, target_device: str) -> EstimateFigures:
    """The estimator's figures for `job` on a `target_device` ("cuda", or "cpu" for the dry
    run), in the job's precision, for one batch of `frames` images."""
    torch.set_num_threads(1)
    model = fake_model(job, target_device)
    estimate = model.estimate(job.frames, 1, job.height, job.width)
    targets, states, phases = 0, [], {}
    if isinstance(estimate, TrainingEstimate):
        # A training step's targets and AdamW's states are resident as its images are (the
        # targets rounded as one storage: under a KiB from rounding each).
        targets, states = estimate.target_bytes, model.state_storage_bytes
        phases = estimate.phase_peak_bytes
    inputs = [estimate.input_bytes, targets, *states]
    resident = [*model.weight_storage_bytes, *inputs, model.cublas_workspace_bytes]
    if target_device == "cuda":
        activations = estimate.allocated_bytes - sum(map(round_request, resident))
    else:
        activations = estimate.live_peak_bytes - estimate.weights_bytes - sum(inputs)
    return EstimateFigures(
        peak_bytes=estimate.live_peak_bytes,
        allocated_bytes=estimate.allocated_bytes,
        activation_bytes=activations,
        reserved_bound_bytes=estimate.reserved_bound_bytes,
        reserved_peak_bytes=estimate.reserved_peak_bytes,
        allocations=estimate.allocations,
        weights_bytes=estimate.weights_bytes,
        input_bytes=estimate.input_bytes,
        target_bytes=targets,
        phase_peak_bytes=phases,
    )


def point_jobs(point: Point, architecture: Architecture) -> list[EstimateJob]:
    """The estimates of a point's variants."""
    return [
        EstimateJob(
            variant,
            point.component,
            architecture,
            point.precision,
            point.frames,
            point.height,
            point.width,
            point.training,
        )
        for variant in point.variants
    ]


def estimate_jobs(plan: Plan) -> list[EstimateJob]:
    """The jobs of the points the estimator is checked on: the memory cap's first (its step
    waits on it), the training points' next (a fake training step is a slow pass), then the
    aggregator's and the square points', smallest first."""
    others = sorted((*plan.aggregator, *plan.square), key=lambda p: p.frames)
    points = [plan.cap, *plan.training, *others]
    jobs = [job for point in points for job in point_jobs(point, plan.architecture)]
    return list(dict.fromkeys(jobs))


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
    """Estimates of `jobs` for `target_device` computing in spawned processes from construction
    on, their stderr appended to `log`; when the processes cannot start, every result raises
    that reason."""

    def __init__(self, jobs: list[EstimateJob], log: Path, target_device: str = "cuda") -> None:
        self._pool: multiprocessing.pool.Pool | None = None
        self._pending: dict[EstimateJob, multiprocessing.pool.AsyncResult] = {}
        self._failure = ""
        try:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(worker_count(len(jobs)), log_stderr_to, (log,))
        except Exception as error:
            self._failure = one_line(error)
            return
        self._pending = {
            job: self._pool.apply_async(estimate_point, (job, target_device)) for job in jobs
        }

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
