"""Measures one configuration in train mode (`--mode train`): training steps of each variant,
on one rank or, with `--parallel sequence`, split over every rank (`measure_split_training_group`).

Each variant trains a model of its own holding a copy of the same initial weights (the first
variant's seeded ones), one variant after the other, so a step's memory is one model's: its
weights, gradients and AdamW state, and no other variant's. Each variant runs its warm-up
steps, one measured step (after gc and empty_cache; on CUDA with the allocator history
recorded, on the CPU under the profiler) whose phases each get their absolute peak, then the
timed steps, each phase timed. Every step is a whole `vggt.training.step.TrainingStep`
(forward with the loss, backward, AdamW) on the group's seeded images and targets, so the
weights change from step to step alike for every variant and the measured steps' losses are
compared with the baseline's. A failure is recorded as in inference (`measure.run_guarded`):
`oom` or `error`, the variant's memory freed, and the next variant runs.

Split over ranks, every rank first trains the whole sequence alone, then each variant again from
the same initial weights on its own frames (Ulysses attention, gradients summed over the ranks);
the measured split step's loss, summed over the ranks, is compared with the same step's alone.
"""

import contextlib
import functools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from profiling.meters import cuda
from profiling.meters.cpu import max_rss_bytes, trace_cpu_memory
from profiling.meters.phases import PHASE_PREFIX, PhaseMeter
from profiling.meters.timing import time_call_ms
from profiling.sweep.cases import CaseGroup
from profiling.sweep.environment import RankInfo
from profiling.sweep.measure import fail_all, finished, free_memory, run_guarded, seeded_images
from profiling.sweep.memory_run import (
    nvml_sampler,
    record_cpu_trace,
    record_nvml,
    save_memory_snapshot,
)
from profiling.sweep.models import ModelCache, build_variant
from profiling.sweep.records import CaseRecord, TimeSummary, phase_field
from profiling.sweep.sequence import own_frames, split_records
from vggt.memory.outputs import output_bytes
from vggt.models.variants import BASELINE
from vggt.parallel.group import CommunicationLog, SequenceGroup
from vggt.training.loss import Targets, seeded_targets
from vggt.training.step import PHASES, PhaseContext, TrainingStep, no_phase


def target_tensors(targets: Targets | None) -> list[torch.Tensor]:
    """The tensors of `targets` (none for an aggregator trained alone)."""
    return [] if targets is None else targets.tensors()


class TrainingStages:
    """Trains each variant of one group in turn on prepared input, filling the records."""

    def __init__(
        self,
        group: CaseGroup,
        images: torch.Tensor,
        targets: Targets | None,
        records: dict[str, CaseRecord],
        timeline_dir: Path,
        seed: int,
        baseline: str = BASELINE,
        history_entries: int | None = cuda.HISTORY_MAX_ENTRIES,
    ) -> None:
        self.group = group
        self.images = images
        self.targets = targets
        self.device = images.device
        self.records = records
        self.timeline_dir = timeline_dir
        self.seed = seed
        self.baseline = baseline
        self.history_entries = history_entries
        # The first variant's initial weights, on the CPU, for the variants after it.
        self.initial: dict[str, torch.Tensor] | None = None
        self.trainer: TrainingStep | None = None
        # The frames of the whole sequence the loss divides by (None: the input's own).
        self.total_frames: int | None = None
        for record in records.values():
            record.input_bytes = output_bytes([images, *target_tensors(targets)]).device

    def run(self, warmup: int, repeats: int) -> None:
        """Every variant's steps, then each loss compared with the baseline's."""
        for name in self.group.variants:
            self.train_variant(name, warmup, repeats)
        self.compare_losses()

    def guarded(self, name: str, stage: Callable[[], Any], measured: bool = False) -> bool:
        """Run `stage()` as `run_guarded` does; whether the variant is still ok."""
        record = self.records[name]
        run_guarded(stage, record, self.device, self.timeline_dir, measured, self.history_entries)
        return record.status == "ok"

    def train_variant(self, name: str, warmup: int, repeats: int) -> None:
        """Build variant `name`, run its stages until one fails, and free its memory. A step
        that ran out of memory in warm-up is repeated under the allocator history on CUDA, for
        the snapshot at its failure."""
        record = self.records[name]
        ok = self.guarded(name, functools.partial(self.build, name))
        ok = ok and self.guarded(name, functools.partial(self.steps, warmup))
        history = self.device.type == "cuda" and self.history_entries is not None
        if record.status == "oom" and self.trainer is not None and history:
            self.trainer.optimizer.zero_grad(set_to_none=True)
            self.guarded(name, self.step, measured=True)
            if "oom_snapshot" not in record.files:
                record.add_note("no OOM snapshot was saved when the step was repeated")
        ok = ok and self.guarded(name, functools.partial(self.memory_step, record), True)
        if ok:
            self.guarded(name, functools.partial(self.timed_steps, record, repeats))
        self.trainer = None
        free_memory(self.device)

    def build(self, name: str) -> None:
        """Variant `name` with the group's initial weights, and its training step."""
        module = self.prepare(build_variant(self.group, name, self.device, self.seed, self.initial))
        if self.initial is None:
            self.initial = {k: v.to("cpu", copy=True) for k, v in module.state_dict().items()}
        self.records[name].weight_bytes = output_bytes(module.state_dict().values()).device
        training = self.group.training
        layers = self.group.architecture.head_layers() if self.group.component != "model" else None
        self.trainer = TrainingStep(
            module, training.parts, training.checkpoint, self.group.precision, layers=layers
        )

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """A variant's module as built, before its training step is set up."""
        return module

    def step(self, phase: PhaseContext = no_phase) -> dict[str, torch.Tensor]:
        """One training step on the group's input; its loss terms."""
        return self.trainer(self.images, self.targets, phase=phase, total_frames=self.total_frames)

    def steps(self, count: int) -> None:
        """`count` steps, unmeasured (the warm-up)."""
        for _ in range(count):
            self.step()

    def memory_step(self, record: CaseRecord) -> None:
        """One step under the device's memory meters: each phase's absolute peak, the step's
        peak above its start, the timeline marking the phases; its loss and gradient bytes."""
        if self.device.type == "cuda":
            losses = self.cuda_memory_step(record)
        else:
            losses = self.cpu_memory_step(record)
        record.loss = self.sequence_loss(losses["total"])
        record.gradient_bytes = self.trainer.gradient_bytes

    def sequence_loss(self, loss: torch.Tensor) -> float:
        """The whole sequence's loss of a step, from its total term."""
        return loss.item()

    def resident_bytes(self) -> int:
        """Bytes of the tensors alive as a step starts: the model's weights and buffers, any
        gradients, the optimizer's state, the images and targets (each storage once)."""
        trainer = self.trainer
        tensors = [*trainer.model.parameters(), *trainer.model.buffers()]
        tensors += [p.grad for p in trainer.parameters if p.grad is not None]
        for state in trainer.optimizer.state.values():
            tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
        tensors += [self.images, *target_tensors(self.targets)]
        return output_bytes(tensors).device

    def cpu_memory_step(self, record: CaseRecord) -> dict[str, torch.Tensor]:
        """The profiler's tensor bytes over one step; a phase's peak is the bytes resident
        when the step started plus the step's highest tensor bytes within the phase."""
        resident = self.resident_bytes()
        meter = PhaseMeter(self.device)
        losses, trace = trace_cpu_memory(functools.partial(self.step, meter), PHASE_PREFIX)
        for phase in PHASES:
            start, end = trace.marks[phase]
            peak = resident + trace.tensor_peak_during(start, end)
            setattr(record, phase_field(phase, "peak_bytes"), peak)
        record_cpu_trace(trace, record, self.timeline_dir)
        return losses

    def cuda_memory_step(self, record: CaseRecord) -> dict[str, torch.Tensor]:
        """The allocator's peak in each phase (its counters reset as the phase starts), NVML
        samples where NVML is installed, and the allocator snapshot with the phases marked."""
        meter = PhaseMeter(self.device, peaks=True)
        sampler = nvml_sampler(self.device, record)
        torch.cuda.synchronize(self.device)
        start = torch.cuda.memory_allocated(self.device)
        with sampler or contextlib.nullcontext():
            losses = self.step(meter)
        for phase in PHASES:
            setattr(record, phase_field(phase, "peak_bytes"), meter.peak_bytes[phase])
        record.cuda_max_allocated_bytes = max(meter.peak_bytes.values())
        record.cuda_max_reserved_bytes = max(meter.reserved_bytes.values())
        record.activation_peak_bytes = record.cuda_max_allocated_bytes - start
        record.cpu_max_rss_bytes = max_rss_bytes()
        record_nvml(sampler, record, self.timeline_dir)
        save_memory_snapshot(
            record, self.timeline_dir, self.device, self.history_entries, start, meter.spans_ns
        )
        return losses

    def timed_steps(self, record: CaseRecord, repeats: int) -> None:
        """`repeats` timed steps: the summary of whole steps and each phase's median."""
        meter = PhaseMeter(self.device)
        samples: list[float] = []
        phase_samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
        for _ in range(repeats):
            samples.append(time_call_ms(functools.partial(self.step, meter), self.device))
            for phase, values in phase_samples.items():
                values.append(meter.ms[phase])
        record.time_ms = TimeSummary.of(samples)
        for phase, values in phase_samples.items():
            setattr(record, phase_field(phase, "ms"), statistics.median(values))

    def compare_losses(self) -> None:
        """Each measured loss's difference from the baseline's, when the baseline has one."""
        base = self.records.get(self.baseline)
        for record in self.records.values():
            compare_loss(record, base, self.baseline)


def compare_loss(record: CaseRecord, base: CaseRecord | None, base_name: str) -> None:
    """`record`'s measured loss against `base`'s (named `base_name`), when both have one."""
    if base is None or base.status != "ok" or base.loss is None:
        return
    if record.status == "ok" and record.loss is not None:
        difference = abs(record.loss - base.loss)
        record.max_abs_diff = difference
        record.max_rel_diff = difference / abs(base.loss) if base.loss else 0.0
        record.compared_to = base_name


class SplitTrainingStages(TrainingStages):
    """Each variant trained on this rank's frames of the sequence split over `sequence`'s
    ranks by `attention`, from the initial weights `initial`: its loss summed over the ranks
    and compared with the same variant's alone (`references`), its collectives logged."""

    def __init__(
        self,
        group: CaseGroup,
        images: torch.Tensor,
        targets: Targets | None,
        records: dict[str, CaseRecord],
        timeline_dir: Path,
        seed: int,
        sequence: SequenceGroup,
        attention: str,
        initial: dict[str, torch.Tensor] | None,
        references: dict[str, CaseRecord],
    ) -> None:
        super().__init__(group, images, targets, records, timeline_dir, seed)
        self.sequence = sequence
        self.attention = attention
        self.initial = initial
        self.references = references
        self.total_frames = group.batch * group.frames
        self.comm_seconds: list[float] = []

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module split over the ranks."""
        module.parallelize(self.sequence, self.attention)
        return module

    def train_variant(self, name: str, warmup: int, repeats: int) -> None:
        """As alone, the exchange buffers released after the variant."""
        try:
            super().train_variant(name, warmup, repeats)
        finally:
            self.sequence.release()

    def step(self, phase: PhaseContext = no_phase) -> dict[str, torch.Tensor]:
        """One step, its collectives logged afresh (`sequence.log`) and their seconds kept."""
        self.sequence.log = CommunicationLog()
        losses = super().step(phase)
        self.comm_seconds.append(self.sequence.log.seconds)
        return losses

    def memory_step(self, record: CaseRecord) -> None:
        """As alone, with the bytes this rank's collectives sent in the step."""
        super().memory_step(record)
        record.comm_bytes = self.sequence.log.bytes_sent

    def sequence_loss(self, loss: torch.Tensor) -> float:
        """The ranks' losses summed: each divides by the whole sequence's frames."""
        summed = loss.detach().clone().reshape(1)
        self.sequence.all_reduce_sum_([summed])
        return summed.item()

    def timed_steps(self, record: CaseRecord, repeats: int) -> None:
        """As alone, with the median seconds the timed steps' collectives took."""
        self.comm_seconds.clear()
        super().timed_steps(record, repeats)
        record.comm_seconds = statistics.median(self.comm_seconds)

    def compare_losses(self) -> None:
        """Each variant's split loss against its loss alone."""
        for name, record in self.records.items():
            reference = self.references.get(name)
            compare_loss(record, reference, reference.case_id if reference else "")


def training_input(
    group: CaseGroup, device: torch.device, seed: int
) -> tuple[torch.Tensor, Targets | None]:
    """The group's seeded images and, for a whole model, its seeded targets, on `device`."""
    images = seeded_images(group, device, seed)
    if group.component != "model":
        return images, None
    shape = (group.batch, group.frames, group.height, group.width)
    return images, seeded_targets(*shape, seed=seed).to(device)


def measure_training_group(
    group: CaseGroup,
    cache: ModelCache,
    rank: RankInfo,
    warmup: int,
    repeats: int,
    timeline_dir: Path,
    seed: int,
    baseline: str = BASELINE,
    history_entries: int | None = cuda.HISTORY_MAX_ENTRIES,
) -> list[CaseRecord]:
    """The train-mode records of every variant of `group` (`measure_group`'s arguments; of
    `cache` only its device is used: each variant's model is built here, trained, and
    dropped); a failure to make the input fails them all."""
    records = {
        case.variant: CaseRecord.start(case, rank, warmup, repeats) for case in group.cases()
    }
    device = cache.device
    try:
        images, targets = training_input(group, device, seed)
    except Exception as error:
        fail_all(records.values(), error)
    else:
        stages = TrainingStages(
            group, images, targets, records, timeline_dir, seed, baseline, history_entries
        )
        stages.run(warmup, repeats)
        del images, targets, stages
    free_memory(device)
    return finished(records.values())


def measure_split_training_group(
    group: CaseGroup,
    cache: ModelCache,
    rank: RankInfo,
    warmup: int,
    repeats: int,
    timeline_dir: Path,
    seed: int,
    *,
    sequence: SequenceGroup,
    attention: str,
) -> list[CaseRecord]:
    """This rank's train-mode records of `group` at world size 1 and split over `sequence` by
    `attention` (`measure_split_group`'s arguments); a failure to make the input fails them."""
    world_size = sequence.world_size
    reference, split = split_records(group, rank, warmup, repeats, world_size, attention)
    for record in reference.values():
        record.comm_seconds, record.comm_bytes = 0.0, 0
    device = cache.device
    frames = own_frames(group.frames, world_size, rank.rank)
    try:
        images, targets = training_input(group, device, seed)
    except Exception as error:
        fail_all([*reference.values(), *split.values()], error)
    else:
        stages = TrainingStages(group, images, targets, reference, timeline_dir, seed)
        stages.run(warmup, repeats)
        for record in reference.values():
            if record.status == "ok":
                compare_loss(record, record, record.case_id)
        initial = stages.initial
        local_images = images[:, frames].clone()
        local_targets = None if targets is None else targets.frames(frames.start, frames.stop)
        del images, targets, stages
        SplitTrainingStages(
            group,
            local_images,
            local_targets,
            split,
            timeline_dir,
            seed,
            sequence,
            attention,
            initial,
            reference,
        ).run(warmup, repeats)
        del local_images, local_targets
    free_memory(device)
    return finished([*reference.values(), *split.values()])
