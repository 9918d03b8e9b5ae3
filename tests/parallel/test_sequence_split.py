"""A sequence split over gloo ranks (torchrun) matches one device within a bound per precision
(relative L2: fp32 1e-5; bf16 weights 2e-2 and fp32 weights under bf16 autocast 1e-2, where
ring attention's log-sum-exp merge rounds differently from one attention call: measured on the
CPU at 7 frames over 2 and 3 ranks, at most 1.25e-2 and 5.7e-3, Ulysses 0; the sharded
tracker's outputs within TRACK_BOUNDS), refuses impossible splits, lowers each rank's peak, and
reproduces the golden recipe at 2 ranks; a training step split over 2 and 3 ranks sums to one
device's gradients within the fp32 bound."""

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.parallel_cases import run_cases
from tests.support.recipe import TOLERANCE, TRACKER_BOUNDS

pytestmark = pytest.mark.distributed

BOUNDS = {"fp32": 1e-5, "autocast": 1e-2, "bf16": 2e-2}
# The tracker's outputs: its time attention runs on every rank's share of the tracks, in
# batches of another size than at world size 1, and four refinements amplify the rounding
# (measured on conf at 3 ranks: fp32 1.03e-5, bf16 2.19e-2); within the tracker golden's
# tolerances (3e-3 on tracks, 1.5e-1 on visibility and confidence).
TRACK_BOUNDS = {"fp32": 1e-4, "autocast": 5e-2, "bf16": 5e-2}
TRACKER_OUTPUTS = ("track", "vis", "conf")
FOUR_HEADS = {"embed_dim": 64, "num_heads": 4}
# The 2-rank cases of each test, run together in one launch by `two_rank_findings`.
TWO_RANK_CASES = {
    "test_two_ranks": [
        {"name": "ulysses-5", "attention": "ulysses", "frames": 5, "batch": 1},
        {"name": "ulysses-7-b2", "attention": "ulysses", "frames": 7, "batch": 2},
        {"name": "ring-5", "attention": "ring", "frames": 5, "batch": 1, "tracks": False},
        {"name": "one-frame", "attention": "ulysses", "frames": 1, "batch": 1},
        {
            "name": "ring-7-bf16",
            "attention": "ring",
            "frames": 7,
            "batch": 1,
            "tracks": False,
            "precision": "bf16",
        },
        {
            "name": "ulysses-7-autocast",
            "attention": "ulysses",
            "frames": 7,
            "batch": 1,
            "precision": "autocast",
        },
        {
            "name": "memory",
            "kind": "memory",
            "attention": "ulysses",
            "frames": 16,
            "preset": "tiny",
        },
        {
            "name": "hybrid-two-nodes",
            "attention": "hybrid",
            "frames": 5,
            "batch": 1,
            "ranks_per_node": 1,
            "tracks": False,
        },
        {
            "name": "hybrid-one-node",
            "attention": "hybrid",
            "frames": 5,
            "batch": 1,
            "ranks_per_node": 2,
            "tracks": False,
        },
    ],
    "test_training_split_over_two_ranks": [
        {
            "name": "train-unfrozen",
            "kind": "train",
            "attention": "ulysses",
            "frames": 5,
            "trainable": "unfrozen-aggregator",
            "checkpoint": "blocks",
        },
        {
            "name": "train-frozen",
            "kind": "train",
            "attention": "ulysses",
            "frames": 3,
            "trainable": "frozen-aggregator",
            "checkpoint": "none",
            "size": 42,
        },
    ],
    "test_golden_recipe_on_two_ranks": [
        {"name": "golden", "kind": "golden", "attention": "ulysses"},
    ],
}


@pytest.fixture(scope="module")
def two_rank_findings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[dict]:
    """Every rank's findings of one 2-rank launch with the cases of this module's selected tests
    (the golden case loads the session's saved recipe weights)."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    cases = [case for test, cases in TWO_RANK_CASES.items() if test in selected for case in cases]
    cases = [
        {**case, "weights": str(request.getfixturevalue("recipe_weights_file"))}
        if case.get("kind") == "golden"
        else case
        for case in cases
    ]
    return run_cases(tmp_path_factory.mktemp("two-ranks"), 2, cases)


def assert_exact(findings: list[dict], name: str, precision: str = "fp32") -> None:
    covered = []
    for rank, found in enumerate(findings):
        result = found[name]
        assert "error" not in result, (rank, result)
        worst = {
            key: value
            for key, value in result["errors"].items()
            if value > (TRACK_BOUNDS if key in TRACKER_OUTPUTS else BOUNDS)[precision]
        }
        assert not worst, (name, rank, worst)
        covered.append(result["frames"])
    assert covered[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))


def test_two_ranks(two_rank_findings: list[dict]) -> None:
    findings = two_rank_findings
    for name in ("ulysses-5", "ulysses-7-b2", "ring-5", "hybrid-two-nodes", "hybrid-one-node"):
        assert_exact(findings, name)
    assert_exact(findings, "ring-7-bf16", "bf16")
    assert_exact(findings, "ulysses-7-autocast", "autocast")
    for found in findings:
        assert "rank 0: holds no frames" in found["one-frame"]["error"]
    # Half the frames, plus Ulysses' exchange buffers (two sets of half-chunk pieces, as the
    # exchanges of one piece overlap the compute of the next).
    memory = findings[0]["memory"]
    assert memory["split"] <= 0.6 * memory["alone"], memory
    assert findings[1]["memory"]["split"] <= 0.6 * memory["alone"]


def assert_trains_as_one_device(findings: list[dict], name: str) -> None:
    """Every summed gradient within the fp32 bound of one device's; the ranks' losses add up to
    one device's."""
    for rank, found in enumerate(findings):
        result = found[name]
        assert "error" not in result, (rank, result)
        assert result["errors"] and not result["missing"], (rank, result["missing"])
        worst = max(result["errors"].items(), key=lambda item: item[1])
        assert worst[1] <= BOUNDS["fp32"], (name, rank, worst)
    for term, expected in findings[0][name]["expected"].items():
        total = sum(found[name]["losses"][term] for found in findings)
        assert total == pytest.approx(expected, rel=1e-5), (name, term)


def test_training_split_over_two_ranks(two_rank_findings: list[dict]) -> None:
    assert_trains_as_one_device(two_rank_findings, "train-unfrozen")
    assert_trains_as_one_device(two_rank_findings, "train-frozen")


@pytest.mark.slow
def test_golden_recipe_on_two_ranks(two_rank_findings: list[dict]) -> None:
    for rank, found in enumerate(two_rank_findings):
        result = found["golden"]
        assert result["frames"] == [rank, rank + 1]
        for name, error in result["errors"].items():
            assert error <= TRACKER_BOUNDS.get(name, TOLERANCE), (rank, name, error)


def test_three_ranks(tmp_path: Path) -> None:
    cases = [
        {
            "name": "ulysses-7-chunked",
            "attention": "ulysses",
            "frames": 7,
            "batch": 1,
            "architecture": FOUR_HEADS,
            "min_chunk_tokens": 40,
        },
        {"name": "ring-5-b2", "attention": "ring", "frames": 5, "batch": 2, "tracks": False},
        {"name": "too-many-ranks", "attention": "ulysses", "frames": 5, "batch": 1},
        {"name": "ring-7-autocast", "attention": "ring", "frames": 7, "batch": 1,
         "tracks": False, "precision": "autocast"},
        {"name": "ulysses-7-bf16", "attention": "ulysses", "frames": 7, "batch": 1,
         "architecture": FOUR_HEADS, "precision": "bf16"},
        {"name": "train-5", "kind": "train", "attention": "ulysses", "frames": 5,
         "architecture": FOUR_HEADS, "trainable": "unfrozen-aggregator",
         "checkpoint": "selective", "counts": [1, 2, 2], "size": 42},
    ]  # fmt: skip
    findings = run_cases(tmp_path, 3, cases)
    assert_exact(findings, "ulysses-7-chunked")
    assert_exact(findings, "ring-5-b2")
    assert_exact(findings, "ring-7-autocast", "autocast")
    assert_exact(findings, "ulysses-7-bf16", "bf16")
    assert_trains_as_one_device(findings, "train-5")
    for found in findings:
        assert "at most 2 ranks, not 3: use ring attention" in found["too-many-ranks"]["error"]


def test_hybrid_on_two_nodes_of_two_ranks(tmp_path: Path) -> None:
    """Ulysses inside each pair of ranks, a ring between the pairs: exact at uneven splits
    (7 frames: 1, 2, 2, 2), in chunks, and within the bound in bf16 autocast."""
    hybrid = {
        "attention": "hybrid",
        "frames": 7,
        "batch": 1,
        "ranks_per_node": 2,
        "architecture": FOUR_HEADS,
        "tracks": False,
    }
    cases = [
        {**hybrid, "name": "hybrid-7-chunked", "min_chunk_tokens": 40},
        {**hybrid, "name": "hybrid-7-autocast", "precision": "autocast"},
        {**hybrid, "name": "hybrid-too-many-per-node", "ranks_per_node": 4,
         "architecture": {}},
    ]  # fmt: skip
    findings = run_cases(tmp_path, 4, cases)
    assert_exact(findings, "hybrid-7-chunked")
    assert_exact(findings, "hybrid-7-autocast", "autocast")
    for found in findings:
        assert "4 ranks, 4 per node do not allow it" in found["hybrid-too-many-per-node"]["error"]


@st.composite
def split_cases(draw: st.DrawFn) -> dict:
    """A small architecture and an arbitrary split of a few frames over 2 ranks."""
    heads = draw(st.sampled_from([2, 4]))
    frames = draw(st.integers(2, 6))
    first = draw(st.integers(1, frames - 1))
    return {
        "name": "case",
        "attention": draw(st.sampled_from(["ulysses", "ring"])),
        "frames": frames,
        "counts": [first, frames - first],
        "batch": draw(st.integers(1, 2)),
        "architecture": {
            "embed_dim": 16 * heads,
            "num_heads": heads,
            "depth": draw(st.integers(2, 4)),
            "intermediate_layer_idx": (0, 1, -2, -1),
        },
        "min_chunk_tokens": draw(st.sampled_from([None, 24, 64])),
        "size": draw(st.sampled_from([56, 84])),
        "tracks": False,
        "seed": draw(st.integers(0, 3)),
    }


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=split_cases())
def test_any_split_of_any_small_model_is_exact(tmp_path: Path, case: dict) -> None:
    assert_exact(run_cases(tmp_path, 2, [case]), "case")
