"""Runs a sweep on this rank: skip finished cases, take groups from the shared queue, measure
them, log each group's records at once, and hand everything to rank 0 at the end."""

import socket
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from profiling.cases import CaseGroup, build_groups
from profiling.cli import SweepConfig
from profiling.distributed import RankContext
from profiling.environment import collect_environment, device_name, rank_facts
from profiling.measure import measure_group
from profiling.models import ModelCache
from profiling.records import PartialLog, RunInfo, deduplicate, make_records, read_partial_records
from profiling.work_queue import WorkQueue, collect, exchange, publish

TIMELINE_DIR = "timelines"


def apply_memory_budget(budget_gib: float | None, device: torch.device) -> None:
    """Cap this process's CUDA caching allocator at `budget_gib` of the device's memory."""
    if budget_gib is None:
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(budget_gib * 2**30 / total, device)


def shared_earlier_records(
    config: SweepConfig, context: RankContext, out_dir: Path, namespace: str
) -> list[dict[str, Any]]:
    """The records of earlier runs or attempts that any rank can read from OUT/partial/.

    Every rank waits here for all the others, so no rank starts the queue early.
    """
    found = read_partial_records(out_dir) if config.resume else []
    shared = exchange(
        context.store, f"{namespace}/earlier", context.rank, context.world_size, found
    )
    return [record for rank_records in shared for record in rank_records]


def measure_pending(
    config: SweepConfig,
    context: RankContext,
    out_dir: Path,
    queue: WorkQueue,
    pending: list[CaseGroup],
) -> list[dict[str, Any]]:
    """Take groups from the queue until it is empty; log and return their records."""
    info = RunInfo(
        rank=context.rank,
        world_size=context.world_size,
        attempt=context.attempt,
        host=socket.gethostname(),
        device=str(context.device),
        device_name=device_name(context.device),
        warmup=config.settings.warmup,
        repeats=config.settings.repeats,
    )
    log = PartialLog(out_dir, context.rank)
    cache = ModelCache(context.device, config.seed)
    produced: list[dict[str, Any]] = []
    progress = tqdm(
        desc=f"rank {context.rank}",
        unit="config",
        position=context.rank,
        file=sys.stderr,
        disable=config.quiet,
        dynamic_ncols=True,
    )
    with progress:
        progress.set_postfix_str(f"{len(pending)} configurations in the queue")
        for position in queue:
            group = pending[position]
            progress.set_postfix_str(group.group_id)
            results = measure_group(
                group,
                cache,
                config.settings.warmup,
                config.settings.repeats,
                out_dir / TIMELINE_DIR,
                config.seed,
            )
            records = make_records(group, results, info)
            log.append(records)
            produced += records
            progress.update(1)
    cache.clear()
    return produced


def run_sweep(
    config: SweepConfig, context: RankContext, out_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """Measure this rank's share of the groups not finished yet.

    Rank 0 returns every record (earlier attempts included, de-duplicated) and the
    environment once all ranks are done; the other ranks return None.
    """
    namespace = f"profiling/attempt{context.attempt}"
    (out_dir / TIMELINE_DIR).mkdir(parents=True, exist_ok=True)
    apply_memory_budget(config.memory_budget_gib, context.device)
    earlier = shared_earlier_records(config, context, out_dir, namespace)
    finished = {record["case_id"] for record in earlier}
    groups = build_groups(config.architecture, config.settings)
    pending = [g for g in groups if any(c.case_id not in finished for c in g.cases())]
    queue = WorkQueue(context.store, f"{namespace}/queue", len(pending))
    produced = measure_pending(config, context, out_dir, queue, pending)
    report = {"records": produced, "facts": rank_facts(context.rank, context.device)}
    publish(context.store, f"{namespace}/done", context.rank, report)
    if context.rank != 0:
        return None
    reports = collect(context.store, f"{namespace}/done", context.world_size)
    records = deduplicate(earlier + [r for report in reports for r in report["records"]])
    facts = [report["facts"] for report in reports]
    return records, collect_environment(context.world_size, facts, config.describe())
