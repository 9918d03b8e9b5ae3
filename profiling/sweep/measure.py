"""Measures the variants of one configuration: warm-up, memory, equality and timed repeats.

Order of work for a group: warm-up runs with the variants interleaved (their order reversed
every other round); one memory run per variant, each after gc, empty_cache and a peak reset
(non-baseline variants first, so their outputs can wait on the CPU for the baseline's); then
the timed repeats, interleaved the same way. On CUDA the allocator history is recorded for the
memory runs only; a variant that ran out of memory in warm-up runs once more under it, so the
snapshot at its failure is saved. A variant that fails is recorded as `oom` or `error`, its
memory freed, and left out of the remaining runs while the others go on.
"""

import functools
import gc
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from profiling.meters import cuda
from profiling.meters.outputs import compare_each
from profiling.meters.timing import time_call_ms
from profiling.sweep.artifacts import save_snapshot
from profiling.sweep.cases import CaseGroup
from profiling.sweep.environment import RankInfo
from profiling.sweep.memory_run import cpu_memory_run, cuda_memory_run
from profiling.sweep.models import ModelCache
from profiling.sweep.records import CaseRecord, TimeSummary, one_line
from vggt.memory.outputs import named_outputs, output_bytes
from vggt.models.variants import BASELINE


def free_memory(device: torch.device) -> None:
    """Collect garbage and hand cached CUDA blocks back so the next run starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def seeded_images(group: CaseGroup, device: torch.device, seed: int) -> torch.Tensor:
    """Uniform [B, S, 3, H, W] images in [0, 1], the same on every rank and device."""
    generator = torch.Generator().manual_seed(seed)
    shape = (group.batch, group.frames, 3, group.height, group.width)
    return torch.rand(shape, generator=generator).to(device)


def run_guarded(
    stage: Callable[[], Any],
    record: CaseRecord,
    device: torch.device,
    timeline_dir: Path,
    measured: bool,
    history_entries: int | None = cuda.HISTORY_MAX_ENTRIES,
) -> None:
    """Run `stage()` of `record`'s case on `device`; an OOM or any other exception becomes the
    record's status and the memory is freed. A measured stage starts from freed memory and, on
    CUDA, records the allocator's last `history_entries` events (None: none), so an OOM there
    also saves the snapshot at the failure."""
    if measured:
        free_memory(device)
    history = measured and device.type == "cuda" and history_entries is not None
    start_bytes = torch.cuda.memory_allocated(device) if history else 0
    with cuda.recording_history(history, history_entries or 0):
        try:
            stage()
        except torch.cuda.OutOfMemoryError as error:
            record.fail("oom", error)
            if history:
                save_oom_snapshot(record, timeline_dir, device, start_bytes)
        except Exception as error:
            record.fail("error", error)
    if record.status != "ok":
        free_memory(device)


def save_oom_snapshot(
    record: CaseRecord, timeline_dir: Path, device: torch.device, start_bytes: int
) -> None:
    """Save the snapshot at an OOM; a failure to save becomes a note in the record."""
    try:
        snapshot = cuda.take_snapshot()
        save_snapshot(timeline_dir, record, "oom", snapshot, device, start_bytes)
    except Exception as error:
        record.add_note(f"the OOM snapshot could not be saved: {one_line(error)}")


class StageScheduler:
    """Runs the stages of one group on prepared modules and input, filling the records."""

    def __init__(
        self,
        group: CaseGroup,
        modules: dict[str, nn.Module],
        images: torch.Tensor,
        records: dict[str, CaseRecord],
        timeline_dir: Path,
        baseline: str = BASELINE,
        history_entries: int | None = cuda.HISTORY_MAX_ENTRIES,
    ) -> None:
        self.group = group
        self.baseline = baseline
        self.history_entries = history_entries
        self.modules = modules
        self.images = images
        self.device = images.device
        self.records = records
        self.timeline_dir = timeline_dir
        self.times_ms: dict[str, list[float]] = {name: [] for name in group.variants}
        # Outputs of the other variants, on the CPU, until the baseline's arrive.
        self.waiting: dict[str, dict[str, torch.Tensor]] = {}
        weights = output_bytes(modules[group.variants[0]].state_dict().values()).device
        for record in records.values():
            record.weight_bytes = weights
            record.input_bytes = images.numel() * images.element_size()

    def alive(self) -> list[str]:
        """Variants that have not failed, in group order."""
        return [name for name in self.group.variants if self.records[name].status == "ok"]

    def in_turn(self, round_number: int) -> list[str]:
        """The live variants, reversed every other round (ABBA) so no variant always runs
        right after the same other one."""
        names = self.alive()
        return names if round_number % 2 == 0 else names[::-1]

    def forward(self, name: str) -> Any:
        """One inference forward of variant `name` on the group's input."""
        with torch.no_grad(), self.group.precision.autocast(self.device.type):
            return self.modules[name](self.images)

    def run(self, warmup: int, repeats: int) -> None:
        """All stages, then each variant's time summary."""
        for round_number in range(warmup):
            for name in self.in_turn(round_number):
                self.guarded(name, self.forward, measured=False)
        if self.device.type == "cuda":
            for name in self.group.variants:
                if self.records[name].status == "oom":
                    self.snapshot_warmup_oom(name)
        for name in sorted(self.alive(), key=lambda variant: variant == self.baseline):
            self.guarded(name, self.memory_run, measured=True)
        self.waiting.clear()
        for round_number in range(repeats):
            for name in self.in_turn(round_number):
                self.guarded(name, self.timed_run, measured=False)
        for name, samples in self.times_ms.items():
            if samples:
                self.records[name].time_ms = TimeSummary.of(samples)

    def guarded(self, name: str, stage: Callable[[str], Any], measured: bool) -> None:
        """Run `stage(name)` as `run_guarded` does; a failed variant's outputs stop waiting."""
        record = self.records[name]
        run_guarded(
            functools.partial(stage, name),
            record,
            self.device,
            self.timeline_dir,
            measured,
            self.history_entries,
        )
        if record.status != "ok":
            self.waiting.pop(name, None)

    def snapshot_warmup_oom(self, name: str) -> None:
        """Repeat the forward of a variant that ran out of memory in warm-up (which records no
        allocator history) as a measured stage, for the snapshot at its failure."""
        self.guarded(name, self.forward, measured=True)
        if "oom_snapshot" not in self.records[name].files:
            self.records[name].add_note("no OOM snapshot was saved when the forward was repeated")

    def timed_run(self, name: str) -> None:
        """A timed forward, appended to the variant's samples."""
        self.times_ms[name].append(time_call_ms(functools.partial(self.forward, name), self.device))

    def memory_run(self, name: str) -> None:
        """Peaks and timeline of one forward; then output bytes and the baseline comparison."""
        record = self.records[name]
        forward = functools.partial(self.forward, name)
        if self.device.type == "cuda":
            outputs = cuda_memory_run(
                forward, self.device, record, self.timeline_dir, self.history_entries
            )
        else:
            outputs = cpu_memory_run(forward, record, self.timeline_dir)
        tensors = named_outputs(outputs)
        record.output_bytes = output_bytes(tensors.values()).device
        self.check_outputs(name, tensors)

    def check_outputs(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Compare with the baseline variant: its outputs now, the others' when it has run."""
        if name == self.baseline:
            self.compare_with(tensors)
        elif self.baseline in self.alive():
            self.waiting[name] = {key: t.detach().to("cpu") for key, t in tensors.items()}

    def compare_with(self, baseline: dict[str, torch.Tensor]) -> None:
        """Record each waiting variant's difference from the baseline outputs (0 for itself)."""
        own = self.records[self.baseline]
        own.max_abs_diff, own.max_rel_diff, own.compared_to = 0.0, 0.0, self.baseline
        for name, outcome in compare_each(self.waiting, baseline).items():
            record = self.records[name]
            if isinstance(outcome, ValueError):
                record.error = f"comparison failed: {outcome}"
            else:
                record.max_abs_diff = outcome.max_abs_diff
                record.max_rel_diff = outcome.max_rel_diff
                record.compared_to = self.baseline


def fail_all(records: Iterable[CaseRecord], error: Exception) -> None:
    """Mark every record `oom` or `error` with `error`: what a failure before the stages does."""
    status = "oom" if isinstance(error, torch.cuda.OutOfMemoryError) else "error"
    for record in records:
        record.fail(status, error)


def finished(records: Iterable[CaseRecord]) -> list[CaseRecord]:
    """`records` as a list, each stamped as finished now."""
    records = list(records)
    finished_at = datetime.now(UTC).isoformat()
    for record in records:
        record.finished_at = finished_at
    return records


def measure_group(
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
    """The records of every variant of `group`, each compared with `baseline`'s outputs when it
    is one of them; a failure to build or to make the input fails them all. On CUDA the memory
    runs record the allocator's last `history_entries` events (None: no history, no
    snapshot)."""
    records = {
        case.variant: CaseRecord.start(case, rank, warmup, repeats) for case in group.cases()
    }
    device = cache.device
    try:
        modules = cache.modules_for(group)
        images = seeded_images(group, device, seed)
    except Exception as error:
        fail_all(records.values(), error)
    else:
        scheduler = StageScheduler(
            group, modules, images, records, timeline_dir, baseline, history_entries
        )
        scheduler.run(warmup, repeats)
        del images, modules
    free_memory(device)
    return finished(records.values())
