"""The predicted forward time: compute split over ranks, exchanges by scheme, the longest step,
the bound on how far the host queues collectives ahead of a GPU, and the rates table it reads
(per GPU type, stated or measured) as the reports name it."""

import json
from pathlib import Path

import pytest
import torch

from profiling.estimate import main as estimator_main
from tests.support.repo import REPO
from vggt.infer.cli import collective_timeout
from vggt.infer.memory_check import device_rates, format_seconds, forward_line
from vggt.memory.device_rates import (
    MEASURED,
    RATES_PATH,
    STATED,
    DeviceRates,
    rates_for,
    read_table,
)
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


def test_hybrid_sends_ulysses_bytes_inside_a_node_and_kv_blocks_between_nodes() -> None:
    # 16 ranks as 2 nodes of 8: (4 * 7/8 + 2 * 1) / 16 of 1000 tokens' 10-wide 2-byte rows.
    assert exchange_bytes(1000, 10, 2, 16, "hybrid", 8) == pytest.approx(6875)
    # One node is Ulysses; one rank per node is a ring.
    assert exchange_bytes(1000, 10, 2, 4, "hybrid", 4) == exchange_bytes(1000, 10, 2, 4, "ulysses")
    assert exchange_bytes(1000, 10, 2, 4, "hybrid", 1) == exchange_bytes(1000, 10, 2, 4, "ring")


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


H100_NAME = "NVIDIA H100 80GB HBM3"
MEASURED_H100 = DeviceRates(
    "H100",
    400.0,
    0.25,
    50.0,
    MEASURED,
    report="docs/results/2026-12-06-h100/results.json",
    date="2026-12-06",
    device=H100_NAME,
    torch="2.13.0",
)


def test_a_known_gpu_gets_its_types_rates_and_an_unknown_one_the_stated_default() -> None:
    h100 = rates_for(H100_NAME)
    assert (h100.gpu, h100.tflops, h100.link_gbs) == ("H100", 300.0, 50.0)
    assert rates_for("NVIDIA H200").gpu == "H200"
    for unknown in ("NVIDIA A100-SXM4-80GB", None, ""):
        assert rates_for(unknown) == DeviceRates("H100/H200 class", 300.0, 0.25, 50.0, STATED)


def test_the_longest_gpu_type_in_the_name_wins_and_case_does_not_matter(tmp_path: Path) -> None:
    table = read_table(RATES_PATH)
    pcie = DeviceRates("H100 PCIe", 200.0, 0.25, 25.0)
    path = tmp_path / "rates.json"
    path.write_text(json.dumps(table.with_gpu(pcie).to_json()))
    assert rates_for("NVIDIA h100 pcie", path) == pcie
    assert rates_for(H100_NAME, path).gpu == "H100"


def test_the_committed_table_is_well_formed_and_its_measured_rates_name_their_reports() -> None:
    document = json.loads(RATES_PATH.read_text())
    assert document["version"] == 1
    table = read_table(RATES_PATH)
    assert table.default == DeviceRates("H100/H200 class", 300.0, 0.25, 50.0, STATED)
    assert {"H100", "H200"} <= {rates.gpu for rates in table.gpus}
    for rates in table.gpus:
        assert rates.source in (STATED, MEASURED)
        assert rates.source == STATED or (REPO / rates.report).is_file(), rates
    assert table.to_json() == document


def test_a_table_of_another_version_or_a_measured_rate_without_its_report_is_refused(
    tmp_path: Path,
) -> None:
    document = json.loads(RATES_PATH.read_text())
    path = tmp_path / "rates.json"
    path.write_text(json.dumps({**document, "version": 2}))
    with pytest.raises(ValueError, match="version 2, not 1"):
        read_table(path)
    unnamed = {**document["default"], "gpu": "H100", "source": MEASURED}
    path.write_text(json.dumps({**document, "gpus": [unnamed]}))
    with pytest.raises(ValueError, match="names its report, date and device"):
        read_table(path)


def test_the_prediction_says_which_rates_it_used() -> None:
    # VGGT-1B, 100 frames of 350x518 (930 tokens each, 93,000 in all), by hand:
    # frame block 24·93,000·1024² + 4·100·930²·1024 = 2.694684672e12, global block
    # 24·93,000·1024² + 4·93,000²·1024 = 3.7766725632e13, 24 of each and 24 DINOv2 blocks:
    # 1.035746279424e15 FLOPs, 2.589 s at 400 TFLOP/s.
    measured = forward_time(VGGT_1B, 100, 350, 518, BF16, rates=MEASURED_H100)
    assert measured.seconds == pytest.approx(2.58937, rel=1e-5)
    assert measured.tflops == 400 and measured.source == (
        "TFLOP/s measured on NVIDIA H100 80GB HBM3 on 2026-12-06 "
        "(docs/results/2026-12-06-h100/results.json), fp32 share and GB/s stated"
    )
    stated = forward_time(VGGT_1B, 100, 350, 518, BF16)
    assert stated.seconds == pytest.approx(2.58937 * 4 / 3, rel=1e-5)
    assert stated.source == "stated rates for H100/H200 class, not measured"
    given = forward_time(VGGT_1B, 100, 350, 518, BF16, tflops=600, rates=MEASURED_H100)
    assert given.seconds == pytest.approx(2.58937 * 4 / 6, rel=1e-5)
    assert given.source == "stated rates for the caller's GPU, not measured"
    rates = "at 300 TFLOP/s and 50 GB/s per rank, stated rates for H100/H200 class, not measured;"
    assert rates in forward_line(stated)
    assert "at 400 TFLOP/s and 50 GB/s per rank, TFLOP/s measured on" in forward_line(measured)


def test_vggt_infer_reads_the_rates_of_its_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    assert device_rates(torch.device("cuda", 0)).gpu == "H200"
    assert device_rates(torch.device("cpu")).gpu == "H100/H200 class"


def test_the_estimators_table_names_the_rates_it_predicts_at(
    capsys: pytest.CaptureFixture,
) -> None:
    argv = ["--preset", "tiny", "--frames", "4", "--variants", "optimized", "--jobs", "1"]
    argv += ["--device-memory", "1MiB"]
    assert estimator_main([*argv, "--gpu", "NVIDIA H200"]) == 0
    printed = capsys.readouterr().out
    assert "at 300 TFLOP/s and 50 GB/s per rank, stated rates for H200, not measured." in printed
    assert estimator_main([*argv, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["rates"] == {
        "gpu": "H100/H200 class",
        "tflops": 300.0,
        "fp32_share": 0.25,
        "link_gbs": 50.0,
        "source": "stated",
    }
