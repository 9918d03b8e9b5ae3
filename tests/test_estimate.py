"""The fake-tensor memory estimator: agreement with measured peaks, the fit search, the CLI."""

import json

import pytest
import torch

from profiling.estimate.cli import main
from profiling.estimate.fake_model import FakeModel
from profiling.estimate.fit import max_frames
from profiling.meters.cpu import peak_live_bytes
from profiling.sweep.presets import load_preset
from profiling.sweep.variants import get_variant
from profiling.units import parse_bytes
from tests.helpers import seeded_images

CPU_SMALL = load_preset("cpu-small").architecture
TINY = load_preset("tiny").architecture


@pytest.mark.parametrize("variant", ["full", "optimized"])
def test_estimate_within_5_percent_of_profiler_peak(variant: str) -> None:
    model = FakeModel(variant, "aggregator", CPU_SMALL, torch.float32)
    estimate = model.estimate(frames=6, batch=1, height=224, width=224)
    torch.manual_seed(0)
    real = get_variant(variant).build("aggregator", CPU_SMALL).eval()
    images = seeded_images(1, 6, 224, 224)
    with torch.no_grad():
        measured = peak_live_bytes(lambda: real(images))
    activations = estimate.peak_bytes - estimate.weights_bytes - estimate.input_bytes
    assert abs(activations - measured) <= 0.05 * measured
    weights = sum(p.numel() * p.element_size() for p in real.parameters())
    assert estimate.weights_bytes == weights


def test_breakdown_of_the_optimized_aggregator() -> None:
    model = FakeModel("optimized", "aggregator", TINY, torch.float32)
    estimate = model.estimate(frames=3, batch=2, height=56, width=70)
    tokens = 1 + 4 + 4 * 5
    assert estimate.output_bytes == 4 * 2 * 3 * tokens * 2 * TINY.embed_dim * 4
    assert estimate.input_bytes == 2 * 3 * 3 * 56 * 70 * 4
    assert estimate.transient_bytes > 0


def test_offload_moves_kept_layers_off_the_device() -> None:
    kept = FakeModel("optimized", "aggregator", CPU_SMALL, torch.float32).estimate(4, 1, 224, 224)
    offloaded = FakeModel("optimized", "aggregator", CPU_SMALL, torch.float32, offload=True)
    moved = offloaded.estimate(4, 1, 224, 224)
    assert moved.output_bytes == 0
    assert moved.host_bytes == kept.output_bytes
    assert moved.peak_bytes < kept.peak_bytes


def test_max_frames_is_the_exact_boundary() -> None:
    model = FakeModel("full", "aggregator", TINY, torch.float32)
    budget = model.estimate(37, 1, 56, 56).peak_bytes + 1
    best = max_frames(model, budget, 1, 56, 56)
    assert model.estimate(best, 1, 56, 56).peak_bytes <= budget
    assert model.estimate(best + 1, 1, 56, 56).peak_bytes > budget
    assert best >= 37
    assert max_frames(model, 1000, 1, 56, 56) == 0


def test_cli_json(capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "--preset",
            "tiny",
            "--frames",
            "1,64",
            "--dtype",
            "fp32",
            "--json",
            "--device-memory",
            "64MiB",
        ]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    variants = {entry["variant"]: entry for entry in document["variants"]}
    assert set(variants) == {"full", "optimized"}
    for entry in variants.values():
        assert set(entry["peaks"]) == {"1", "64"}
        assert entry["max_frames"] >= 64
    assert variants["optimized"]["peaks"]["64"] <= variants["full"]["peaks"]["64"]
    assert variants["optimized"]["max_frames"] >= variants["full"]["max_frames"]


def test_cli_table(capsys: pytest.CaptureFixture) -> None:
    main(["--preset", "tiny", "--frames", "2", "--dtype", "fp32", "--device-memory", "32MiB"])
    out = capsys.readouterr().out
    assert "| full | 2 |" in out and "| optimized | 2 |" in out
    assert "frames fit 0.03 GiB" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nope"], "unknown preset"),
        (["--frames", "0"], "--frames must be whole numbers of at least 1, got '0'"),
        (["--frames", "a,b"], "--frames must be whole numbers of at least 1, got 'a'"),
        (["--device-memory", "lots"], "not a memory size"),
        (["--height", "500"], "multiples of the patch size"),
        (["--variants", "full,fast"], "unknown variants"),
    ],
)
def test_bad_arguments_exit_2(argv: list, message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_parse_bytes() -> None:
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("80 GB") == 80 * 10**9
    assert parse_bytes("24G") == 24 * 2**30
    assert parse_bytes("1024") == 1024


@pytest.mark.gpu
def test_estimate_within_10_percent_of_cuda_peak() -> None:
    device = torch.device("cuda")
    model = FakeModel("optimized", "aggregator", CPU_SMALL, torch.float32)
    estimate = model.estimate(frames=8, batch=1, height=224, width=224)
    real = get_variant("optimized").build("aggregator", CPU_SMALL).to(device).eval()
    images = seeded_images(1, 8, 224, 224).to(device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        real(images)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    assert abs(estimate.peak_bytes - measured) <= 0.10 * measured
