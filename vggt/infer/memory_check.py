"""Does the run fit? The busiest rank's requirement, from the same estimate and fit as
`python -m profiling.estimate --component model --variants optimized` (`vggt.memory`),
printed before the model loads; on CUDA a run that exceeds a GPU's free memory is refused
(exit 2), naming the frames that fit and the remedies. `--dry-run` answers without running.

The requirement per rank is the estimator's: the reserved bound of the caching allocator
model, the cuBLAS workspace, the CUDA context and, over several ranks, NCCL's buffers; with
query points the fake pass runs the tracker on them too. On CUDA it is compared with the
free memory each rank reads once its own CUDA context exists, so the context counts once.
The predicted forward time uses the rates table's entry for rank 0's GPU
(`vggt.memory.device_rates`); on the CPU and in a dry run, the stated default's.
"""

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace

import torch

from vggt.infer.errors import InputError
from vggt.infer.ranks import Ranks
from vggt.infer.report import gib, info
from vggt.memory.allocator import unmodelled_setting
from vggt.memory.device_rates import DeviceRates, rates_for
from vggt.memory.estimate import CUDA_CONTEXT_BYTES, Estimate, FakeModel
from vggt.memory.fit import max_frames, max_frames_by_budget
from vggt.memory.timing import ForwardTime, forward_time
from vggt.models.architecture import Architecture
from vggt.precision import Precision, get_precision

# The track head's feature maps: channels, at half the input's height and width, in fp32.


@dataclass(frozen=True)
class RunShape:
    """What sizes a run's memory: its frames over `world_size` ranks (`ranks_per_node` on each
    node; None: one node), their padded size, and how the model runs them."""

    frames: int
    world_size: int
    height: int
    width: int
    architecture: Architecture
    precision: Precision
    attention: str
    offload: bool
    query_points: int
    ranks_per_node: int | None = None

    def model(self) -> FakeModel:
        """The optimized model as the command runs it, on fake tensors."""
        return FakeModel(
            "optimized",
            "model",
            self.architecture,
            self.precision,
            self.offload,
            world_size=self.world_size,
            attention=self.attention,
            ranks_per_node=self.ranks_per_node,
            query_points=self.query_points,
        )


@dataclass(frozen=True)
class MemoryPlan:
    """The busiest rank's requirement (`per_rank_bytes`), the estimate behind it, and, against
    `device_memory_bytes` (None: not known), whether it fits and the most frames that do."""

    frames: int
    world_size: int
    precision: str
    attention: str
    per_rank_bytes: int
    device_memory_bytes: int | None
    max_frames: int | None
    estimate: Estimate
    forward: ForwardTime

    @property
    def fits(self) -> bool | None:
        """Whether the requirement fits the device memory (None when that is not known)."""
        if self.device_memory_bytes is None:
            return None
        return self.per_rank_bytes <= self.device_memory_bytes

    def to_json(self) -> dict:
        """The plan as `--dry-run --json` prints it and run.json keeps it."""
        document = asdict(self)
        document["fits"] = self.fits
        return document


def plan_memory(
    run: RunShape,
    device_memory: int | None,
    model: FakeModel | None = None,
    rates: DeviceRates | None = None,
) -> MemoryPlan:
    """One fake pass for the run's frames, and, with a device memory, the fit (a few more);
    the forward predicted at `rates` (default: the stated ones of an unknown device)."""
    model = model or run.model()
    estimate = model.estimate(run.frames, 1, run.height, run.width)
    most = None
    if device_memory is not None:
        most = max_frames_by_budget(model, [device_memory], 1, run.height, run.width)
        most = most[device_memory]
    forward = forward_time(
        run.architecture,
        run.frames,
        run.height,
        run.width,
        run.precision,
        run.world_size,
        model.attention,
        heads=True,
        ranks_per_node=run.ranks_per_node,
        rates=rates,
    )
    return MemoryPlan(
        frames=run.frames,
        world_size=run.world_size,
        precision=run.precision.label,
        attention=model.attention,
        per_rank_bytes=estimate.required_bytes,
        device_memory_bytes=device_memory,
        max_frames=most,
        estimate=estimate,
        forward=forward,
    )


def usable_memory(device: torch.device) -> int:
    """What a run may use on CUDA `device`: its free memory (read after this process's CUDA
    context exists) plus that context's assumed size, so that the requirement, which counts
    the context, is compared like for like."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + CUDA_CONTEXT_BYTES


def device_rates(device: torch.device) -> DeviceRates:
    """The rates table's entry for this CUDA device's name; the stated default elsewhere."""
    return rates_for(torch.cuda.get_device_name(device) if device.type == "cuda" else None)


def least_usable_memory(ranks: Ranks) -> int | None:
    """The least `usable_memory` over the ranks' GPUs; None on the CPU."""
    if ranks.device.type != "cuda":
        return None
    return min(ranks.all_gather(usable_memory(ranks.device)))


def check_memory(options: argparse.Namespace, ranks: Ranks, run: RunShape) -> dict | None:
    """Rank 0 plans the run and prints its requirement; on CUDA every rank raises InputError
    when it exceeds the least free GPU memory (the CPU's limit is not known, so a CPU run goes
    on). Returns the plan for run.json (None with --no-estimate)."""
    if options.no_estimate:
        return None
    memory = least_usable_memory(ranks)
    setting = unmodelled_setting()
    if memory is not None and setting:
        raise InputError(
            f"the memory check models PyTorch's caching allocator without expandable segments, "
            f"but {setting} enables them; unset it, or pass --no-estimate to run unchecked"
        )
    plan, problem = None, None
    if ranks.is_first:
        model = run.model()
        rates = device_rates(ranks.device)
        plan = plan_memory(run, None, model, rates)
        if memory is not None and plan.per_rank_bytes > memory:
            plan = plan_memory(run, memory, model, rates)
            problem = refusal(plan, run, model)
        if not options.quiet:
            info(estimate_line(plan, memory))
            info(forward_line(plan.forward))
    plan, problem = ranks.all_gather((plan, problem))[0]
    ranks.agree(problem)
    return plan.to_json()


def estimate_line(plan: MemoryPlan, memory: int | None) -> str:
    """The requirement as rank 0 prints it, against the GPUs' free memory when there is one."""
    against = (
        f"against {gib(memory)} GiB free per GPU"
        if memory is not None
        else "(not checked on the CPU)"
    )
    return (
        f"estimated requirement per rank {gib(plan.per_rank_bytes)} GiB {against}, "
        f"precision {plan.precision}; --no-estimate skips the estimate"
    )


def forward_line(forward: ForwardTime) -> str:
    """The predicted forward time, the rates it assumes and where they come from."""
    return (
        f"predicted forward {format_seconds(forward.seconds)} on the busiest rank (an estimate "
        f"at {forward.tflops:g} TFLOP/s and {forward.link_gbs:g} GB/s per rank, "
        f"{forward.source}; longest step {format_seconds(forward.global_block_seconds)})"
    )


def format_seconds(seconds: float) -> str:
    """`0.4 s`, `12 s`, `3.2 min`, `5.3 h`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 600:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def refusal(plan: MemoryPlan, run: RunShape, model: FakeModel) -> str:
    """The refusal's text: what the run needs, the most frames that fit (`model`: the run's,
    which traced them), and which of --offload, --precision bf16 or more ranks would fit (a
    fake pass each)."""
    memory = plan.device_memory_bytes
    remedies = []
    if not run.offload and plan_memory(replace(run, offload=True), None).per_rank_bytes <= memory:
        remedies.append("--offload")
    bf16 = get_precision("bf16")
    if (
        run.precision != bf16
        and plan_memory(replace(run, precision=bf16), None).per_rank_bytes <= memory
    ):
        remedies.append("--precision bf16")
    most = plan.max_frames or 0
    if most >= run.frames:
        # The requirement jitters with the allocator's segments: more frames than asked fit,
        # but not these; name the most below them that do.
        below = {run.frames: model.estimate(run.frames, 1, run.height, run.width)}
        most = max_frames(model, memory, 1, run.height, run.width, below)
    per_rank = most // run.world_size
    if per_rank > 0 and math.ceil(run.frames / per_rank) > run.world_size:
        remedies.append(f"{math.ceil(run.frames / per_rank)} ranks")
    advice = " or ".join(remedies) if remedies else "fewer or smaller frames"
    return (
        f"this run needs about {gib(plan.per_rank_bytes)} GiB on a rank, more than the "
        f"{gib(memory)} GiB a GPU has free: at most {most} frames fit "
        f"{run.world_size} rank(s) as configured; try {advice} (--no-estimate runs anyway)"
    )


def dry_run_report(plan: MemoryPlan, as_json: bool) -> str:
    """What `--dry-run` prints: JSON, or a few lines."""
    if as_json:
        return json.dumps(plan.to_json(), indent=2)
    lines = [
        f"{plan.frames} frames over {plan.world_size} rank(s), precision {plan.precision}, "
        f"{plan.attention} attention",
        f"per rank: {gib(plan.per_rank_bytes)} GiB (reserved bound "
        f"{gib(plan.estimate.reserved_bound_bytes)} GiB + CUDA context "
        f"{gib(plan.estimate.cuda_context_bytes)} GiB"
        + (f" + NCCL {gib(plan.estimate.nccl_bytes)} GiB" if plan.estimate.nccl_bytes else "")
        + ")",
        forward_line(plan.forward),
    ]
    if plan.device_memory_bytes is None:
        lines.append("device memory not known: give --device-memory (e.g. 80GiB) for the fit")
    else:
        verdict = "fits" if plan.fits else "does not fit"
        lines.append(
            f"{verdict} {gib(plan.device_memory_bytes)} GiB per GPU; at most "
            f"{plan.max_frames} frames fit {plan.world_size} rank(s)"
        )
    return "\n".join(lines)
