"""Runs a sweep on this rank: skip finished cases, take groups from the shared queue (or, with
`--parallel sequence`, every group in turn, together with the other ranks), measure them
(forwards, or training steps with `--mode train`), log each group's records at once, and hand
everything to rank 0 at the end. The console shows progress only: native messages printed while
a group is measured (the CPU profiler's among them) go to OUT/logs/rank<k>.log."""

import dataclasses
import functools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from profiling.native_stderr import native_stderr_to
from profiling.sweep.artifacts import TIMELINE_DIR
from profiling.sweep.cases import Case, CaseGroup, build_groups, sequence_splits
from profiling.sweep.distributed import RankContext
from profiling.sweep.environment import RankInfo, collect_environment
from profiling.sweep.measure import measure_group
from profiling.sweep.models import ModelCache
from profiling.sweep.options import SweepConfig
from profiling.sweep.records import CaseRecord, PartialLog, deduplicate, read_partial_records
from profiling.sweep.sequence import measure_split_group
from profiling.sweep.training_run import measure_split_training_group, measure_training_group
from profiling.sweep.work_queue import WorkQueue, collect, exchange, publish
from vggt.parallel.group import SequenceGroup
from vggt.parallel.launch import Launch, agreed_ranks_per_node

LOG_DIR = "logs"


def apply_memory_budget(budget_gib: float | None, device: torch.device) -> None:
    """Cap this process's CUDA caching allocator at `budget_gib` (set_per_process_memory_fraction):
    what PyTorch reserves, not the CUDA context nor other processes' memory."""
    if budget_gib is None:
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(budget_gib * 2**30 / total, device)


def shared_earlier_records(
    config: SweepConfig, context: RankContext, out_dir: Path, namespace: str
) -> list[CaseRecord]:
    """The records of earlier runs or attempts that any rank finds in OUT/partial/; every rank
    waits here for all the others, so no rank starts the queue early."""
    found = [record.to_json() for record in read_partial_records(out_dir)] if config.resume else []
    shared = exchange(
        context.store, f"{namespace}/earlier", context.info.rank, context.info.world_size, found
    )
    return [CaseRecord.from_json(record) for rank_records in shared for record in rank_records]


def measure_pending(
    config: SweepConfig,
    context: RankContext,
    out_dir: Path,
    pending: list[CaseGroup],
    queue: Iterable[int],
    measure: Callable[..., list[CaseRecord]],
) -> list[CaseRecord]:
    """Measure the groups at the positions `queue` yields; log and return their records."""
    rank = context.info
    log = PartialLog(out_dir, rank.rank)
    cache = ModelCache(context.device, config.seed)
    settings = config.settings
    produced: list[CaseRecord] = []
    progress = tqdm(
        desc=f"rank {rank.rank}",
        unit="config",
        position=rank.rank,
        file=sys.stderr,
        disable=config.quiet,
        dynamic_ncols=True,
    )
    with progress:
        progress.set_postfix_str(f"{len(pending)} configurations in the queue")
        for position in queue:
            group = pending[position]
            progress.set_postfix_str(group.group_id)
            timeline_dir = out_dir / TIMELINE_DIR
            with native_stderr_to(out_dir / LOG_DIR / f"rank{rank.rank}.log"):
                records = measure(
                    group, cache, rank, settings.warmup, settings.repeats, timeline_dir, config.seed
                )
            log.append(records)
            produced += records
            progress.update(1)
    cache.clear()
    return produced


def expected_cases(group: CaseGroup, config: SweepConfig, world_size: int) -> list[Case]:
    """The cases a group leaves records of: one per variant, or with `--parallel sequence` one
    per variant, rank and world size (1 and all ranks)."""
    if config.parallel == "cases":
        return group.cases()
    splits = sequence_splits(world_size, config.attention)
    return [case for split in splits for case in group.cases(split)]


def run_sweep(
    config: SweepConfig, context: RankContext, out_dir: Path
) -> tuple[list[CaseRecord], dict[str, Any]] | None:
    """Measure this rank's share of the unfinished groups. Rank 0 returns every record (earlier
    attempts included, de-duplicated) and the environment; the other ranks return None."""
    rank = context.info
    namespace = f"profiling/attempt{rank.attempt}"
    (out_dir / TIMELINE_DIR).mkdir(parents=True, exist_ok=True)
    apply_memory_budget(config.memory_budget_gib, context.device)
    earlier = shared_earlier_records(config, context, out_dir, namespace)
    finished = {record.case_id for record in earlier}
    groups = build_groups(config.architecture, config.settings)
    pending = [
        group
        for group in groups
        if any(c.case_id not in finished for c in expected_cases(group, config, rank.world_size))
    ]
    if config.parallel == "sequence":
        nodes = agreed_ranks_per_node(Launch.from_environment())
        sequence = SequenceGroup(ranks_per_node=nodes)
        training = config.settings.mode == "train"
        split = functools.partial(
            measure_split_training_group if training else measure_split_group,
            sequence=sequence,
            attention=config.attention,
        )
        produced = measure_pending(config, context, out_dir, pending, range(len(pending)), split)
    else:
        queue = WorkQueue(context.store, f"{namespace}/queue", len(pending))
        measure = measure_training_group if config.settings.mode == "train" else measure_group
        produced = measure_pending(config, context, out_dir, pending, queue, measure)
    done = {"records": [r.to_json() for r in produced], "rank": dataclasses.asdict(rank)}
    publish(context.store, f"{namespace}/done", rank.rank, done)
    if rank.rank != 0:
        return None
    reports = collect(context.store, f"{namespace}/done", rank.world_size)
    produced = [CaseRecord.from_json(r) for report in reports for r in report["records"]]
    ranks = [RankInfo(**report["rank"]) for report in reports]
    return deduplicate(earlier + produced), collect_environment(ranks, config.describe())
