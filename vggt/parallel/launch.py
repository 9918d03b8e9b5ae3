"""Rank set-up, one way for every command: this process's place under torchrun (or alone),
its device (`LOCAL_RANK`'s GPU on CUDA) and the process group's backend (NCCL on CUDA, gloo on
the CPU)."""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Where launchers put a process's rank on its node: torchrun, Slurm's srun, Open MPI's mpirun.
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")
# Where they put the number of ranks on the node, in the same order.
LOCAL_SIZE_VARIABLES = ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE")


@dataclass(frozen=True)
class Launch:
    """What torchrun (or a plain start: one rank) says about this process."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int | None = None

    @classmethod
    def from_environment(cls) -> "Launch":
        """torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; rank 0 of 1 without
        them. Without LOCAL_RANK the node-local rank of Slurm or Open MPI is taken, else -1
        (unknown: the device is chosen from the rank); the ranks on the node likewise, else
        None (unknown)."""
        rank = int(os.environ.get("RANK", "0"))
        local = _first_integer(LOCAL_RANK_VARIABLES)
        return cls(
            rank=rank,
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=local if local is not None else (-1 if "RANK" in os.environ else 0),
            local_world_size=_first_integer(LOCAL_SIZE_VARIABLES),
        )

    @staticmethod
    def by_torchrun() -> bool:
        """True when torchrun (or another env:// launcher) set RANK and WORLD_SIZE."""
        return "RANK" in os.environ and "WORLD_SIZE" in os.environ

    def device(self, device_type: str) -> torch.device:
        """This rank's device, made current on CUDA, or the CPU. On CUDA: the GPU of
        `local_rank`; the only GPU where a launcher shows each task one; the rank modulo the
        GPU count where the local rank is unknown. ValueError when `local_rank` names a GPU
        this process cannot see."""
        if device_type != "cuda":
            return torch.device("cpu")
        device = torch.device("cuda", cuda_index(self.local_rank, self.rank))
        torch.cuda.set_device(device)
        return device

    def join(self, device_type: str, timeout: timedelta, store: dist.Store | None = None) -> None:
        """Join the process group of `world_size` ranks with the backend for `device_type`
        (`store`: a rendezvous store already made; None: torchrun's environment)."""
        dist.init_process_group(
            backend_for(device_type),
            store=store,
            rank=self.rank if store is not None else -1,
            world_size=self.world_size if store is not None else -1,
            timeout=timeout,
        )


def ranks_per_node(places: Sequence[tuple[int, int | None]]) -> int | None:
    """Ranks per node from every rank's (local rank, ranks on its node), in rank order: their
    common count when the ranks are numbered node by node, else None (topology unknown)."""
    sizes = {size for _, size in places}
    size = sizes.pop() if len(sizes) == 1 else None
    if not size or len(places) % size:
        return None
    if any(local != rank % size for rank, (local, _) in enumerate(places)):
        return None
    return size


def agreed_ranks_per_node(launch: Launch) -> int | None:
    """`ranks_per_node` of every rank's launch, gathered over the default process group (which
    must exist when there are several ranks)."""
    place = (launch.local_rank, launch.local_world_size)
    if launch.world_size == 1:
        return ranks_per_node([place])
    places: list = [None] * launch.world_size
    dist.all_gather_object(places, place)
    return ranks_per_node(places)


def _first_integer(names: Sequence[str]) -> int | None:
    """The first of the environment variables `names` that holds an integer, else None."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def cuda_index(local_rank: int, rank: int, count: int | None = None) -> int:
    """The CUDA device index for a rank (see `Launch.device`); `count`: the visible GPUs."""
    count = torch.cuda.device_count() if count is None else count
    if local_rank < 0:
        return rank % count
    if local_rank < count:
        return local_rank
    if count == 1:
        return 0
    raise ValueError(
        f"local rank {local_rank} has no GPU of its own: this process sees {count} GPUs "
        "(CUDA_VISIBLE_DEVICES); start at most as many ranks per node as GPUs"
    )


def backend_for(device_type: str) -> str:
    """The collective backend for tensors on `device_type`: NCCL on CUDA, gloo elsewhere."""
    return "nccl" if device_type == "cuda" else "gloo"
