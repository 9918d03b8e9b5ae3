"""This process's place in the run: its rank and device, the process group under torchrun,
and the few collectives the command line needs beyond the model's."""

from datetime import timedelta

import torch
import torch.distributed as dist

from vggt.infer.errors import InputError
from vggt.parallel.group import FrameLayout, SequenceGroup, collective
from vggt.parallel.launch import Launch, agreed_ranks_per_node


class Ranks:
    """The run's ranks as this process sees them. At world size 1 there is no process group
    and every collective is local."""

    def __init__(self, launch: Launch, device_type: str, timeout_s: float) -> None:
        """Bind this rank's device (cuda: LOCAL_RANK's GPU) and, with several ranks, join the
        process group (NCCL on CUDA, gloo on the CPU) with the given timeout and learn how the
        ranks lie over nodes (`ranks_per_node`, None when the launcher does not say)."""
        self.rank = launch.rank
        self.world_size = launch.world_size
        try:
            self.device = launch.device(device_type)
        except ValueError as error:
            raise InputError(str(error)) from None
        self.group: SequenceGroup | None = None
        self.ranks_per_node: int | None = None
        if self.world_size > 1:
            launch.join(device_type, timedelta(seconds=timeout_s))
            with collective("finding the nodes"):
                self.ranks_per_node = agreed_ranks_per_node(launch)
            self.group = SequenceGroup(ranks_per_node=self.ranks_per_node)

    @property
    def is_first(self) -> bool:
        """Rank 0: the one that reports and writes the run's shared files."""
        return self.rank == 0

    def agree(self, problem: str | None) -> None:
        """Raise InputError on every rank when any rank found a problem (the first rank's
        problem), so that no rank goes on to wait for the others."""
        problems = self.all_gather(problem)
        first = next((found for found in problems if found is not None), None)
        if first is not None:
            raise InputError(first, agreed=True)

    def all_gather(self, value: object) -> list:
        """Every rank's picklable `value`, in rank order, on every rank."""
        if self.world_size == 1:
            return [value]
        gathered: list = [None] * self.world_size
        with collective("all-gather"):
            dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        """Wait for every rank (nothing at world size 1)."""
        if self.world_size > 1:
            with collective("barrier"):
                dist.barrier()

    def gather_frames(self, local: torch.Tensor, counts: list[int]) -> torch.Tensor | None:
        """Every rank's [B, n_rank, ...] tensor joined along dim 1 on rank 0 (None elsewhere);
        `counts` are the ranks' frame counts."""
        if self.group is None:
            return local
        return self.group.gather_frames(local, FrameLayout(tuple(counts), self.rank))

    def communication(self) -> dict[str, float]:
        """What this rank's sequence-parallel collectives sent (bytes) and how long its
        compute waited for them (seconds); zeros at world size 1."""
        if self.group is None:
            return {"bytes_sent": 0, "seconds": 0.0}
        return {"bytes_sent": self.group.log.bytes_sent, "seconds": self.group.log.seconds}

    def close(self) -> None:
        """Leave the process group, when there is one."""
        if self.group is not None:
            dist.destroy_process_group()
            self.group = None
