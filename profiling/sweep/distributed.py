"""The process group and shared store of a run, under torchrun or as a single process."""

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from profiling.sweep.environment import RankInfo

PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
OUT_KEY = "profiling/out"


@dataclass(frozen=True)
class RankContext:
    """This process's place in the run and the store all ranks share (across attempts too)."""

    info: RankInfo
    device: torch.device
    store: dist.Store
    launched_by_torchrun: bool


def launched_by_torchrun() -> bool:
    """True when torchrun (or another env:// launcher) set RANK and WORLD_SIZE."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How many times torchrun has restarted the workers (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def start(device_type: str) -> RankContext:
    """Join the process group (NCCL on CUDA, gloo on CPU) or stand alone with a local store."""
    if not launched_by_torchrun():
        device = torch.device(device_type, 0) if device_type == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        info = RankInfo.of(0, 1, restart_count(), device)
        return RankContext(info, device, dist.HashStore(), False)
    store, rank, world_size = next(dist.rendezvous("env://", timeout=PROCESS_GROUP_TIMEOUT))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    attempt = restart_count()
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    # torchrun's store outlives the workers of a failed attempt; a prefix per attempt keeps
    # the process group from reading the dead workers' addresses.
    group_store = dist.PrefixStore(f"profiling/attempt{attempt}/process_group", store)
    dist.init_process_group(
        backend,
        store=group_store,
        rank=rank,
        world_size=world_size,
        timeout=PROCESS_GROUP_TIMEOUT,
    )
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
