"""`profiling/run.py --parallel sequence`: case ids and records of each rank at world sizes 1
and N, the options it checks, its summary table, and a two-rank gloo sweep end to end."""

import json
import os
from pathlib import Path

import pytest
import torch

from profiling.report.summary import sequence_table, series_label, series_order, summary_markdown
from profiling.sweep.cases import Split, build_groups, sequence_splits
from profiling.sweep.environment import RankInfo, collect_environment
from profiling.sweep.options import UsageError, parse_config
from profiling.sweep.presets import load_preset
from profiling.sweep.records import CaseRecord, TimeSummary
from profiling.sweep.runner import expected_cases
from profiling.sweep.sequence import own_frames
from tests.support.launch import torchrun
from tests.support.profiling_records import RANK, sample_record
from tests.support.repo import SWEEP

TIMEOUT_S = 240
MIB = 2**20
BOUND = 1e-5


def test_every_rank_and_world_size_gets_its_own_case_id() -> None:
    tiny = load_preset("tiny")
    group = build_groups(tiny.architecture, tiny.settings)[0]
    splits = sequence_splits(2, "ring")
    assert splits == [
        Split(1, 0, None),
        Split(1, 1, None),
        Split(2, 0, "ring"),
        Split(2, 1, "ring"),
    ]
    ids = [case.case_id for split in splits for case in group.cases(split)]
    assert len(set(ids)) == len(ids) == 2 * len(group.variants) * 2
    plain = group.cases()[0].case_id
    assert group.cases(Split(2, 1, "ring"))[0].case_id == f"{plain}-ws2-ring-r1"
    assert group.cases(Split(1, 0, None))[0].case_id == f"{plain}-ws1-r0"


def test_a_split_record_carries_its_world_size_and_attention() -> None:
    tiny = load_preset("tiny")
    case = build_groups(tiny.architecture, tiny.settings)[0].cases(Split(2, 1, "ulysses"))[0]
    rank = RankInfo.of(1, 2, 0, torch.device("cpu"))
    record = CaseRecord.start(case, rank, 1, 2)
    assert (record.world_size, record.rank, record.parallel) == (2, 1, "sequence")
    assert record.attention == "ulysses"
    alone = CaseRecord.start(case.group.cases(Split(1, 1, None))[0], rank, 1, 2)
    assert (alone.world_size, alone.attention, alone.parallel) == (1, None, "sequence")
    three = RankInfo.of(1, 3, 0, torch.device("cpu"))
    by_case = CaseRecord.start(case.group.cases()[0], three, 1, 2)
    assert (by_case.world_size, by_case.parallel, by_case.attention) == (3, "cases", None)


@pytest.mark.parametrize(("frames", "world_size"), [(4, 2), (5, 2), (7, 3), (2, 3)])
def test_own_frames_cover_the_sequence_in_rank_order(frames: int, world_size: int) -> None:
    shares = [own_frames(frames, world_size, rank) for rank in range(world_size)]
    covered = [i for share in shares for i in range(frames)[share]]
    assert covered == list(range(frames))
    assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


def test_sequence_mode_needs_two_ranks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    arguments = ["--preset", "tiny", "--device", "cpu", "--out", str(tmp_path), "--parallel"]
    with pytest.raises(UsageError, match="at least 2 ranks"):
        parse_config([*arguments, "sequence"], 0)
    assert parse_config([*arguments, "cases"], 0).parallel == "cases"


def test_sequence_mode_keeps_the_variants_that_split(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    arguments = ["--preset", "tiny", "--device", "cpu", "--parallel", "sequence"]
    config = parse_config([*arguments, "--out", str(tmp_path / "a"), "--sp-attention", "ring"], 0)
    assert config.settings.variants == ("optimized",)
    assert (config.describe()["parallel"], config.describe()["attention"]) == ("sequence", "ring")
    with pytest.raises(UsageError, match="full cannot split a sequence"):
        parse_config([*arguments, "--out", str(tmp_path / "b"), "--variants", "full,optimized"], 0)


def test_training_split_over_ranks_runs_ulysses_attention(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The tiny preset has 2 heads: 2 ranks train with Ulysses; ring, and 3 ranks (whose
    default would be ring), are refused with what to pass instead."""
    arguments = ["--preset", "tiny", "--device", "cpu", "--parallel", "sequence"]
    arguments += ["--mode", "train", "--out", str(tmp_path)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parse_config(arguments, 0).attention == "ulysses"
    with pytest.raises(UsageError, match=r"runs Ulysses attention .* not ring"):
        parse_config([*arguments, "--sp-attention", "ring"], 0)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UsageError, match="not ring: pass --sp-attention ulysses with at most 2"):
        parse_config(arguments, 0)


def test_a_resumed_sequence_sweep_expects_every_rank_at_both_world_sizes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    arguments = ["--preset", "tiny", "--device", "cpu", "--out", str(tmp_path / "a")]
    config = parse_config([*arguments, "--parallel", "sequence"], 0)
    group = build_groups(config.architecture, config.settings)[0]
    ids = {case.case_id for case in expected_cases(group, config, 3)}
    plain = group.cases()[0].case_id
    # the tiny preset has 2 heads: over 3 ranks the default attention is ring
    assert ids == {f"{plain}-ws1-r{r}" for r in range(3)} | {
        f"{plain}-ws3-ring-r{r}" for r in range(3)
    }
    by_case = parse_config(["--preset", "tiny", "--device", "cpu", "--out", str(tmp_path / "b")], 0)
    assert expected_cases(group, by_case, 3) == group.cases()


def split_record(world_size: int, rank: int, peak_mib: float, ms: float, **changes) -> CaseRecord:
    return sample_record(
        case_id=f"aggregator-optimized-f4-ws{world_size}-r{rank}",
        variant="optimized",
        frames=4,
        device_name="Test CPU",
        rank=rank,
        world_size=world_size,
        parallel="sequence",
        attention=None if world_size == 1 else "ulysses",
        activation_peak_bytes=int(peak_mib * MIB),
        time_ms=TimeSummary(ms, ms, ms, 0.0, 1),
        comm_seconds=0.0 if world_size == 1 else 0.002 * (rank + 1),
        comm_serial_seconds=None if world_size == 1 else 0.005 * (rank + 1),
        comm_bytes=0 if world_size == 1 else MIB,
        max_abs_diff=0.0 if world_size == 1 else 1e-7 * (rank + 1),
        max_rel_diff=0.0 if world_size == 1 else 1e-8 * (rank + 1),
        **changes,
    )


def test_the_sequence_table_shows_the_largest_rank_against_one_rank() -> None:
    records = [
        split_record(1, 0, 8.0, 40.0),
        split_record(1, 1, 8.0, 44.0),
        split_record(2, 0, 4.0, 20.0),
        split_record(2, 1, 5.0, 22.0),
    ]
    header, _, row = sequence_table(records)
    assert header.startswith("| variant | frames | ranks | 1-rank peak | peak per rank |")
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells == [
        "optimized",
        "4",
        "2",
        "8.0 MiB",
        "5.0 MiB",
        "0.62",
        "44.0",
        "22.0",
        "2.00",
        "4.0",
        # The ranks waited 2 + 4 ms of the 5 + 10 ms their serial exchanges took.
        "60%",
        "1.0 MiB",
        "2.00e-07",
        "2.00e-08",
    ]
    failed = [*records[:3], split_record(2, 1, 5.0, 22.0, status="oom", error="injected")]
    cells = sequence_table(failed)[2].split("|")
    assert cells[5].strip() == cells[8].strip() == "OOM"
    assert series_order(records) == ["optimized x1", "optimized x2"]
    assert series_label(sample_record()) == sample_record().variant


def test_the_summary_puts_the_sequence_table_under_its_configuration() -> None:
    records = [split_record(1, 0, 8.0, 40.0), split_record(2, 0, 4.0, 20.0)]
    summary = summary_markdown(records, collect_environment([RANK], {}))
    assert "## Test CPU · aggregator · fp32 · 56x56 · batch 1" in summary
    assert "Sequence parallel (`--parallel sequence`)" in summary
    assert "| optimized | 4 | 2 | 8.0 MiB | 4.0 MiB | 0.50 |" in summary
    assert "\n| frames |" not in summary


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("attention", "frames", "component", "mode"),
    [
        ("ulysses", "2,4", "aggregator", "inference"),
        ("ring", "3", "model", "inference"),
        ("ulysses", "4", "aggregator", "train"),
    ],
)
def test_two_gloo_ranks_split_each_configuration(
    attention: str, frames: str, component: str, mode: str, tmp_path: Path
) -> None:
    """Inference: each rank's outputs equal its frames alone. Train mode: the step's loss
    summed over the ranks equals the same step's alone, and each rank's forward peaks lower
    (weights, gradients and AdamW states are much of the other phases' peaks, and the
    gradients' all-reduce adds a bucket to them)."""
    out = tmp_path / "report"
    options = ["--preset", "tiny", "--device", "cpu", "--quiet", "--frames", frames]
    options += ["--component", component, "--mode", mode, "--warmup", "0", "--repeats", "1"]
    options += ["--parallel", "sequence", "--sp-attention", attention, "--out", str(out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = torchrun(2, SWEEP, options, timeout_s=TIMEOUT_S, env=environment, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    cases = json.loads((out / "results.json").read_text())["cases"]
    counts = [int(f) for f in frames.split(",")]
    assert len(cases) == len(counts) * 2 * 2
    cells = {(c["frames"], c["world_size"], c["rank"]): c for c in cases}
    assert set(cells) == {(f, w, r) for f in counts for w in (1, 2) for r in (0, 1)}
    peak = "activation_peak_bytes" if mode == "inference" else "forward_peak_bytes"
    for case in cases:
        assert case["status"] == "ok", case["error"]
        assert case["parallel"] == "sequence" and case["variant"] == "optimized"
        assert case["mode"] == mode
        alone = cells[(case["frames"], 1, case["rank"])]
        assert case["compared_to"] == alone["case_id"]
        assert case["max_rel_diff"] <= BOUND
        if case["world_size"] == 1:
            assert case["attention"] is None
            assert case["comm_bytes"] == 0 and case["comm_seconds"] == 0.0
        else:
            assert case["attention"] == attention
            assert case["comm_bytes"] > 0 and case["comm_seconds"] > 0
            assert case[peak] < alone[peak]
    if mode == "train":
        assert all(case["loss"] > 0 and case["gradient_bytes"] > 0 for case in cases)
        assert all(case["comm_serial_seconds"] is None for case in cases)
    else:
        assert all(c["comm_serial_seconds"] > 0 for c in cases if c["world_size"] == 2)
    summary = (out / "summary.md").read_text()
    assert "| variant | frames | ranks | 1-rank" in summary
    for count in counts:
        assert f"| optimized | {count} | 2 |" in summary
