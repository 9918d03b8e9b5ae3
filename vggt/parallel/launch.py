"""Rank set-up, one way for every command: this process's place under torchrun (or alone),
its device (`LOCAL_RANK`'s GPU on CUDA) and the process group's backend (NCCL on CUDA, gloo on
the CPU)."""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Launch:
    """What torchrun (or a plain start: one rank) says about this process."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environment(cls) -> "Launch":
        """torchrun's RANK, WORLD_SIZE and LOCAL_RANK; rank 0 of 1 without them."""
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @staticmethod
    def by_torchrun() -> bool:
        """True when torchrun (or another env:// launcher) set RANK and WORLD_SIZE."""
        return "RANK" in os.environ and "WORLD_SIZE" in os.environ

    def device(self, device_type: str) -> torch.device:
        """This rank's device, made current on CUDA: the GPU of `local_rank`, or the CPU."""
        if device_type != "cuda":
            return torch.device("cpu")
        device = torch.device("cuda", self.local_rank)
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


def backend_for(device_type: str) -> str:
    """The collective backend for tensors on `device_type`: NCCL on CUDA, gloo elsewhere."""
    return "nccl" if device_type == "cuda" else "gloo"
