"""Rank set-up: where each launcher's variables put a rank, which GPU it takes, how ranks lie
over nodes and which attention that picks."""

import pytest

from vggt.parallel.launch import Launch, cuda_index, ranks_per_node
from vggt.parallel.sequence import choose_attention

LAUNCH_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "SLURM_NTASKS_PER_NODE",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_plain_start_is_rank_0_of_1(clean_environment: pytest.MonkeyPatch) -> None:
    assert Launch.from_environment() == Launch(rank=0, world_size=1, local_rank=0)


def test_the_local_rank_comes_from_the_launcher(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("RANK", "5")
    clean_environment.setenv("WORLD_SIZE", "8")
    assert Launch.from_environment().local_rank == -1
    clean_environment.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "2")
    assert Launch.from_environment().local_rank == 2
    clean_environment.setenv("SLURM_LOCALID", "3")
    assert Launch.from_environment().local_rank == 3
    clean_environment.setenv("LOCAL_RANK", "1")
    assert Launch.from_environment() == Launch(rank=5, world_size=8, local_rank=1)


def test_each_rank_gets_a_gpu_it_can_see() -> None:
    assert cuda_index(local_rank=2, rank=10, count=4) == 2
    # One GPU per task (srun --gpus-per-task=1): every local rank sees its own as cuda:0.
    assert cuda_index(local_rank=3, rank=3, count=1) == 0
    # No local rank known: the rank picks among the GPUs, not all on cuda:0.
    assert cuda_index(local_rank=-1, rank=6, count=4) == 2
    with pytest.raises(ValueError, match="local rank 5 has no GPU of its own: this process sees 4"):
        cuda_index(local_rank=5, rank=5, count=4)


def test_the_ranks_on_a_node_come_from_the_launcher(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    assert Launch.from_environment().local_world_size is None
    clean_environment.setenv("SLURM_NTASKS_PER_NODE", "4")
    assert Launch.from_environment().local_world_size == 4
    clean_environment.setenv("LOCAL_WORLD_SIZE", "2")
    assert Launch.from_environment().local_world_size == 2


def test_nodes_are_found_only_when_ranks_are_numbered_node_by_node() -> None:
    two_by_two = [(0, 2), (1, 2), (0, 2), (1, 2)]
    assert ranks_per_node(two_by_two) == 2
    assert ranks_per_node([(0, 1), (0, 1), (0, 1)]) == 1
    # Round-robin numbering (rank 1 on the second node) and unequal nodes are not nodes here.
    assert ranks_per_node([(0, 2), (0, 2), (1, 2), (1, 2)]) is None
    assert ranks_per_node([(0, 3), (1, 3), (2, 3), (0, 1)]) is None
    assert ranks_per_node([(0, 4), (1, 4)]) is None
    assert ranks_per_node([(0, None), (1, None)]) is None


def test_attention_follows_the_nodes() -> None:
    # One node: heads over ranks while there are heads enough, else a ring.
    assert choose_attention(None, 8, 16) == "ulysses"
    assert choose_attention(None, 32, 16, 32) == "ring"
    # Several nodes: Ulysses inside each, a ring between them; one level with a rank per node
    # or more ranks on a node than heads.
    assert choose_attention(None, 16, 16, 8) == "hybrid"
    assert choose_attention(None, 4, 16, 1) == "ulysses"
    assert choose_attention(None, 64, 16, 32) == "ring"
    assert choose_attention("ulysses", 16, 16, 8) == "ulysses"
    with pytest.raises(ValueError, match="12 ranks, 8 per node do not allow it"):
        choose_attention("hybrid", 12, 16, 8)
    with pytest.raises(ValueError, match="unknown attention 'tree'"):
        choose_attention("tree", 2, 16)
