"""Measures one configuration as a sequence split over every rank (`--parallel sequence`).

Each rank first runs the whole sequence alone (world size 1, all ranks at once, so each needs
the memory of the whole configuration) and keeps its own frames' outputs on the CPU; then the
ranks run the sequence together, each on its own frames, and each compares its outputs with
the ones it kept and logs what its collectives sent and how long it waited for them. The
stages are those of `StageScheduler`. A failure that only some ranks see in a forward leaves
the others waiting in a collective until the process group times out.
"""

import functools
import statistics
from pathlib import Path

import torch
from torch import nn

from profiling.meters.outputs import compare
from profiling.meters.timing import time_call_ms
from profiling.sweep.cases import CaseGroup, Split
from profiling.sweep.environment import RankInfo
from profiling.sweep.measure import StageScheduler, fail_all, finished, free_memory, seeded_images
from profiling.sweep.models import ModelCache
from profiling.sweep.records import CaseRecord
from vggt.parallel.group import CommunicationLog, SequenceGroup, rank_slice, split_evenly

Outputs = dict[str, torch.Tensor]


def own_frames(frames: int, world_size: int, rank: int) -> slice:
    """The consecutive frames `rank` holds when `frames` are split evenly over the ranks."""
    return rank_slice(split_evenly(frames, world_size), rank)


class ReferenceStages(StageScheduler):
    """The whole sequence on this rank alone; keeps each variant's outputs of `frames`."""

    def __init__(
        self,
        group: CaseGroup,
        modules: dict[str, nn.Module],
        images: torch.Tensor,
        records: dict[str, CaseRecord],
        timeline_dir: Path,
        frames: slice,
    ) -> None:
        super().__init__(group, modules, images, records, timeline_dir)
        self.frames = frames
        self.kept: dict[str, Outputs] = {}
        for record in records.values():
            record.comm_seconds, record.comm_bytes = 0.0, 0

    def check_outputs(self, name: str, tensors: Outputs) -> None:
        """Keep this rank's frames of every output on the CPU; the reference differs by 0."""
        self.kept[name] = {k: t[:, self.frames].to("cpu", copy=True) for k, t in tensors.items()}
        record = self.records[name]
        record.max_abs_diff, record.max_rel_diff, record.compared_to = 0.0, 0.0, record.case_id


class SplitStages(StageScheduler):
    """This rank's frames, with the sequence split over `sequence`'s ranks: outputs compared
    with the world-size-1 ones kept (`references`, by variant, with their case ids), and the
    communication of each forward logged."""

    def __init__(
        self,
        group: CaseGroup,
        modules: dict[str, nn.Module],
        images: torch.Tensor,
        records: dict[str, CaseRecord],
        timeline_dir: Path,
        sequence: SequenceGroup,
        references: dict[str, tuple[str, Outputs]],
    ) -> None:
        super().__init__(group, modules, images, records, timeline_dir)
        self.sequence = sequence
        self.references = references
        self.comm_seconds: dict[str, list[float]] = {name: [] for name in group.variants}

    def memory_run(self, name: str) -> None:
        """The measured forward starts without the exchange buffers of earlier forwards."""
        self.sequence.release()
        self.sequence.log = CommunicationLog()
        super().memory_run(name)
        self.records[name].comm_bytes = self.sequence.log.bytes_sent

    def check_outputs(self, name: str, tensors: Outputs) -> None:
        """The difference from the same frames at world size 1, when that reference ran."""
        record = self.records[name]
        if name not in self.references:
            record.add_note("no world-size-1 outputs to compare with")
            return
        reference_id, reference = self.references[name]
        try:
            difference = compare(tensors, reference)
        except ValueError as error:
            record.add_note(f"comparison failed: {error}")
            return
        record.max_abs_diff = difference.max_abs_diff
        record.max_rel_diff = difference.max_rel_diff
        record.compared_to = reference_id

    def timed_run(self, name: str) -> None:
        """A timed forward, with the seconds its collectives took."""
        self.sequence.log = CommunicationLog()
        super().timed_run(name)
        self.comm_seconds[name].append(self.sequence.log.seconds)

    def serial_run(self, name: str) -> float:
        """The seconds one forward's collectives take when each is waited for before the next
        starts (the sequence group's overlap off): what the overlapped forwards hide is
        measured against it."""
        self.sequence.log = CommunicationLog()
        self.sequence.overlap = False
        try:
            time_call_ms(functools.partial(self.forward, name), self.device)
        finally:
            self.sequence.overlap = True
        return self.sequence.log.seconds

    def run(self, warmup: int, repeats: int) -> None:
        """All stages, then one forward with serial exchanges; each variant's median
        communication seconds per timed forward and the serial forward's."""
        super().run(warmup, repeats)
        for name, samples in self.comm_seconds.items():
            record = self.records[name]
            if samples and record.status == "ok":
                record.comm_seconds = statistics.median(samples)
                record.comm_serial_seconds = self.serial_run(name)


def split_records(
    group: CaseGroup, rank: RankInfo, warmup: int, repeats: int, world_size: int, attention: str
) -> tuple[dict[str, CaseRecord], dict[str, CaseRecord]]:
    """This rank's records of `group` by variant: alone (world size 1), and split over
    `world_size` ranks by `attention`."""
    alone, together = Split(1, rank.rank, None), Split(world_size, rank.rank, attention)
    reference = {c.variant: CaseRecord.start(c, rank, warmup, repeats) for c in group.cases(alone)}
    split = {c.variant: CaseRecord.start(c, rank, warmup, repeats) for c in group.cases(together)}
    return reference, split


def measure_split_group(
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
    """This rank's records of `group` at world size 1 and split over `sequence` by
    `attention`; a failure to build, make the input or parallelize fails the records."""
    world_size = sequence.world_size
    reference, split = split_records(group, rank, warmup, repeats, world_size, attention)
    frames = own_frames(group.frames, world_size, rank.rank)
    try:
        modules = cache.modules_for(group)
        images = seeded_images(group, cache.device, seed)
    except Exception as error:
        fail_all([*reference.values(), *split.values()], error)
    else:
        stages = ReferenceStages(group, modules, images, reference, timeline_dir, frames)
        stages.run(warmup, repeats)
        kept = {name: (reference[name].case_id, out) for name, out in stages.kept.items()}
        local = images[:, frames].clone()
        del images, stages
        try:
            for module in modules.values():
                module.parallelize(sequence, attention)
            SplitStages(group, modules, local, split, timeline_dir, sequence, kept).run(
                warmup, repeats
            )
        except Exception as error:
            fail_all(split.values(), error)
        finally:
            for module in modules.values():
                module.parallelize(None)
            sequence.release()
        del local, modules
    free_memory(cache.device)
    return finished([*reference.values(), *split.values()])
