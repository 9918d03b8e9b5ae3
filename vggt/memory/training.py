"""What one training step needs on a CUDA device, from a step on fake tensors: the forward with
its loss, backward and the AdamW update (`vggt.training.step.TrainingStep`), traced as one
program, so the caching allocator model replays every phase's allocations after the resident
tensors (weights, images, targets and AdamW's states).

The model is built as the inference estimate builds it (`FakeModel`: the precision's weights,
the target device's minimum chunk for a frozen aggregator's streamed blocks) and the step runs
under CPU autocast with CUDA autocast's dtype rules (`CudaAutocastRules`), in the blocks that
backward recomputes too. With `world_size` > 1 the sequence is split over ranks as
`TrainingStep` trains it (Ulysses attention; the ranks' gradients summed): the trace is the
busiest rank's, its frames and targets, through a simulated group.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import accumulate

import torch

from vggt.heads.dpt_head import FRAMES_CHUNK_SIZE
from vggt.memory.estimate import (
    CUBLAS_WORKSPACE_BYTES,
    CUDA_CONTEXT_BYTES,
    NCCL_BYTES,
    FakeModel,
    frozen_garbage,
    replay_allocator,
    storage_sizes,
)
from vggt.memory.tracker import LiveBytes
from vggt.models.architecture import Architecture
from vggt.parallel.group import split_evenly
from vggt.precision import Precision
from vggt.training.loss import seeded_targets
from vggt.training.step import PHASES, TrainingStep


@dataclass(frozen=True)
class TrainingEstimate:
    """What one training step needs on the device, in bytes.

    `phase_peak_bytes`: per phase of the step (forward with the loss, backward, optimizer), the
    peak of every live tensor byte: weights, images, targets, AdamW states, gradients and
    activations; `live_peak_bytes` is the largest. `gradient_bytes`: the trainable parameters'
    gradients, alive from backward to the end of the optimizer phase (set to None there);
    `optimizer_state_bytes`: AdamW's exp_avg and exp_avg_sq of each trainable parameter and its
    step count (a 4-byte tensor for the fused kernel). `allocated_bytes`,
    `reserved_bound_bytes`, `reserved_peak_bytes` and `allocations` as in `Estimate`;
    `required_bytes`: what must be free on the device, reserved bound + CUDA context.
    """

    variant: str
    frames: int
    precision: str
    trainable: tuple[str, ...]
    checkpoint: str
    phase_peak_bytes: dict[str, int]
    live_peak_bytes: int
    weights_bytes: int
    input_bytes: int
    target_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    allocated_bytes: int
    reserved_bound_bytes: int
    reserved_peak_bytes: int
    allocations: int
    cuda_context_bytes: int
    required_bytes: int
    world_size: int = 1
    rank_frames: int = 0
    nccl_bytes: int = 0


class FakeTrainingModel(FakeModel):
    """One variant built on fake storage as `FakeModel` builds it, and a `TrainingStep` that
    trains its `trainable` parts (`vggt.training.trainable`) with activations checkpointed as
    `checkpoint` says; an aggregator alone trains on the layers its heads would read. Each
    estimate traces one whole step, remembered for the next ask.

    The traced step is a later one, not the first: from the first update on, AdamW's states
    stay allocated through every forward and backward, so each later step holds them on top of
    what the first step holds in every phase (the first creates them only in its optimizer
    phase, where the weights and gradients are the same); a later step is the worst case. The
    states come from `first_update` (AdamW on zero gradients: what a first step allocates,
    without its forward) and are resident, allocated after the weights.
    """

    def __init__(
        self,
        variant: str,
        component: str,
        architecture: Architecture,
        precision: Precision,
        trainable: tuple[str, ...],
        checkpoint: str = "blocks",
        target_device: str = "cuda",
        cublas_workspace_bytes: int = CUBLAS_WORKSPACE_BYTES,
        cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
        query_points: int = 0,
        nccl_bytes: int = NCCL_BYTES,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            variant,
            component,
            architecture,
            precision,
            target_device=target_device,
            cublas_workspace_bytes=cublas_workspace_bytes,
            cuda_context_bytes=cuda_context_bytes,
            nccl_bytes=nccl_bytes,
            world_size=world_size,
            attention="ulysses" if world_size > 1 else None,
            host_predictions=False,
            query_points=query_points,
        )
        self.trainable = trainable
        self.checkpoint = checkpoint
        layers = architecture.head_layers() if component == "aggregator" else None
        with self.mode:
            self.step = TrainingStep(self.module, trainable, checkpoint, precision, layers=layers)
            self.states = first_update(self.step)
        self.state_storage_bytes = storage_sizes(self.states)
        self.optimizer_state_bytes = sum(self.state_storage_bytes)
        aggregator = getattr(self.module, "aggregator", self.module)
        if any(p.requires_grad for p in aggregator.parameters()):
            # Under autograd the blocks run whole: no streamed chunks shape the requirement.
            self.chunk_runner = None

    def affine_from(self, batch: int, height: int, width: int) -> int:
        """As `FakeModel.affine_from`, and at least one frame chunk of the dense heads, which
        keep (or checkpoint) their activations a chunk at a time: from a whole chunk on, each
        chunk's frames add the same bytes."""
        start = super().affine_from(batch, height, width)
        heads = self.module.dense_heads() if hasattr(self.module, "dense_heads") else []
        return max(start, FRAMES_CHUNK_SIZE) if heads else start

    def _trace(self, frames: int, batch: int, height: int, width: int) -> TrainingEstimate:
        """Trace one training step on `batch` x `frames` fp32 images and, for a whole model,
        seeded targets (the busiest rank's share of them, split over ranks)."""
        self.passes += 1
        counts = split_evenly(frames, self.world_size)
        if self.group is not None:
            self.group.counts = tuple(counts)
        with self.mode, frozen_garbage():
            images = torch.rand(batch, counts[-1], 3, height, width)
            points = None
            if self.query_points:
                points = torch.rand(batch, self.query_points, 2) * torch.tensor([width, height])
            targets = None
            if hasattr(self.module, "aggregator"):
                targets = seeded_targets(batch, counts[-1], height, width, self.query_points)
            inputs = [t for t in (images, points) if t is not None]
            truths = [] if targets is None else targets.tensors()
            existing = [*self.weights(), *inputs, *truths, *self.states]
            starts: dict[str, int] = {}
            with self.mode.track(existing, record_events=True) as live, self.autocast_rules():
                phase = partial(mark_phase, live, starts)
                self.step(images, targets, points, phase=phase, total_frames=batch * frames)
        input_sizes, target_sizes = storage_sizes(inputs), storage_sizes(truths)
        input_bytes, target_bytes = sum(input_sizes), sum(target_sizes)
        held = self.weights_bytes + input_bytes + target_bytes + self.optimizer_state_bytes
        peaks = {name: held + peak for name, peak in phase_peaks(live.events, starts).items()}
        resident = [
            *self.weight_storage_bytes,
            *input_sizes,
            *target_sizes,
            *self.state_storage_bytes,
            self.cublas_workspace_bytes,
        ]
        replayed = replay_allocator(live.events, resident)
        return TrainingEstimate(
            variant=self.variant,
            frames=frames,
            precision=self.precision.label,
            trainable=self.trainable,
            checkpoint=self.checkpoint,
            phase_peak_bytes=peaks,
            live_peak_bytes=max(peaks.values()),
            weights_bytes=self.weights_bytes,
            input_bytes=input_bytes,
            target_bytes=target_bytes,
            gradient_bytes=self.step.gradient_bytes,
            optimizer_state_bytes=self.optimizer_state_bytes,
            allocated_bytes=replayed.allocated_bytes,
            reserved_bound_bytes=replayed.reserved_bound_bytes,
            reserved_peak_bytes=replayed.reserved_peak_bytes,
            allocations=replayed.allocations,
            cuda_context_bytes=self.cuda_context_bytes,
            required_bytes=replayed.reserved_bound_bytes
            + self.cuda_context_bytes
            + self.nccl_bytes,
            world_size=self.world_size,
            rank_frames=counts[-1],
            nccl_bytes=self.nccl_bytes,
        )


def first_update(step: TrainingStep) -> list[torch.Tensor]:
    """Take AdamW's first step on zero gradients, which creates its states as a real first step
    does (exp_avg, exp_avg_sq and the step count of each parameter); returns them."""
    for parameter in step.parameters:
        parameter.grad = torch.zeros_like(parameter)
    step.optimizer.step()
    step.optimizer.zero_grad(set_to_none=True)
    return [
        value
        for state in step.optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    ]


@contextlib.contextmanager
def mark_phase(live: LiveBytes, starts: dict[str, int], name: str) -> Iterator[None]:
    """`TrainingStep`'s phase context: note the event at which phase `name` begins."""
    starts[name] = len(live.events)
    yield


def phase_peaks(events: list[tuple[int, int]], starts: dict[str, int]) -> dict[str, int]:
    """Per phase of `PHASES`, the peak of the live bytes the events add up to, from the phase's
    first event to the next phase's (the bytes it begins with included)."""
    levels = [0, *accumulate(delta for _, delta in events)]
    bounds = [starts[name] for name in PHASES] + [len(events)]
    return {
        name: max(levels[start : end + 1])
        for name, start, end in zip(PHASES, bounds[:-1], bounds[1:], strict=True)
    }
