"""Rank set-up: where each launcher's variables put a rank, and which GPU it takes."""

import pytest

from vggt.parallel.launch import Launch, cuda_index

LAUNCH_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
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
