"""The predicted forward time: compute split over ranks, exchanges by scheme, the longest step,
and the bound on how far the host queues collectives ahead of a GPU."""

import pytest

from vggt.infer.cli import collective_timeout
from vggt.infer.memory_check import format_seconds
from vggt.memory.timing import exchange_bytes, forward_time
from vggt.models.architecture import VGGT_1B
from vggt.parallel.group import hold_back
from vggt.precision import get_precision

BF16 = get_precision("bf16")


def test_one_rank_computes_and_exchanges_nothing() -> None:
    alone = forward_time(VGGT_1B, 200, 350, 518, BF16)
    assert alone.exchange_seconds == 0 and alone.seconds == alone.compute_seconds
    assert 0 < alone.global_block_seconds < alone.seconds / VGGT_1B.depth
    faster = forward_time(VGGT_1B, 200, 350, 518, BF16, tflops=600)
    assert faster.compute_seconds == pytest.approx(alone.compute_seconds / 2)
    fp32 = forward_time(VGGT_1B, 200, 350, 518, get_precision("fp32"))
    assert fp32.compute_seconds == pytest.approx(4 * alone.compute_seconds)


def test_ranks_share_the_compute_and_pay_for_exchanges() -> None:
    alone = forward_time(VGGT_1B, 800, 518, 518, BF16)
    split = forward_time(VGGT_1B, 800, 518, 518, BF16, world_size=8)
    assert split.compute_seconds == pytest.approx(alone.compute_seconds / 8)
    assert split.exchange_seconds > 0
    slower_link = forward_time(VGGT_1B, 800, 518, 518, BF16, world_size=8, link_gbs=25)
    assert slower_link.exchange_seconds == pytest.approx(2 * split.exchange_seconds)


def test_ulysses_sends_as_much_as_ring_at_two_ranks_and_2_over_w_of_it_beyond() -> None:
    assert exchange_bytes(1000, 64, 2, 2, "ulysses") == exchange_bytes(1000, 64, 2, 2, "ring")
    ring = exchange_bytes(1000, 64, 2, 4, "ring")
    assert exchange_bytes(1000, 64, 2, 4, "ulysses") == pytest.approx(ring * 2 / 4)
    assert exchange_bytes(1000, 64, 2, 1, "ring") == 0


class Ended:
    """A collective's end event that notes when the host waited for it."""

    def __init__(self, waited: list, name: int) -> None:
        self.waited, self.name = waited, name

    def synchronize(self) -> None:
        self.waited.append(self.name)


def test_the_host_queues_at_most_two_collectives_ahead() -> None:
    waited: list[int] = []
    ends = []
    for number in range(5):
        ends.append(Ended(waited, number))
        hold_back(ends)
    assert waited == [0, 1, 2]


def test_a_slow_step_lengthens_the_collective_timeout() -> None:
    assert collective_timeout(600, 30) == 600
    assert collective_timeout(600, 800) == 2400
    predicted = forward_time(VGGT_1B, 15746, 518, 518, BF16, world_size=8).global_block_seconds
    assert collective_timeout(600, predicted) > 600


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.42, "0.4 s"), (42, "42 s"), (1800, "30.0 min"), (19000, "5.3 h")]
)
def test_seconds_read_as_people_say_them(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text
