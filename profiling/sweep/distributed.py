"""The process group and shared store of a run, under torchrun or as a single process."""

import dataclasses
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from profiling.sweep.environment import RankInfo
from vggt.parallel.launch import Launch

PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
OUT_KEY = "profiling/out"


@dataclass(frozen=True)
class RankContext:
    """This process's place in the run and the store all ranks share (across attempts too)."""

    info: RankInfo
    device: torch.device
    store: dist.Store
    launched_by_torchrun: bool


def restart_count() -> int:
    """How many times torchrun has restarted the workers (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def start(device_type: str) -> RankContext:
    """Join the process group (NCCL on CUDA, gloo on CPU) or stand alone with a local store."""
    if not Launch.by_torchrun():
        device = Launch(0, 1, 0).device(device_type)
        info = RankInfo.of(0, 1, restart_count(), device)
        return RankContext(info, device, dist.HashStore(), False)
    store, rank, world_size = next(dist.rendezvous("env://", timeout=PROCESS_GROUP_TIMEOUT))
    launch = dataclasses.replace(Launch.from_environment(), rank=rank, world_size=world_size)
    attempt = restart_count()
    device = launch.device(device_type)
    # torchrun's store outlives the workers of a failed attempt; a prefix per attempt keeps
    # the process group from reading the dead workers' addresses.
    group_store = dist.PrefixStore(f"profiling/attempt{attempt}/process_group", store)
    launch.join(device_type, PROCESS_GROUP_TIMEOUT, group_store)
    return RankContext(RankInfo.of(rank, world_size, attempt, device), device, store, True)


def stop(context: RankContext) -> None:
    """Leave the process group, if one was joined."""
    if context.launched_by_torchrun and dist.is_initialized():
        dist.destroy_process_group()


def default_out_dir(reports: Path) -> Path:
    """`reports/<UTC timestamp>`, suffixed with the torchrun run id's start when one is set."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    suffix = "" if run_id == "none" else f"-{run_id[:8]}"
    if suffix:
        earlier = sorted(reports.glob(f"*{suffix}"))
        if earlier:
            return earlier[-1]
    return reports / f"{stamp}{suffix}"


def agree_on_path(store: dist.Store, proposal: Path) -> Path:
    """The first proposal any rank (of any attempt of this run) made; the same for all."""
    agreed = store.compare_set(OUT_KEY, "", str(proposal))
    return Path(agreed.decode() if isinstance(agreed, bytes) else agreed)
