"""The training-step estimate: every phase holds the weights, AdamW's states and (from backward
on) the gradients; frozen and checkpointed steps need less; the fake step's peaks are a real CPU
step's; the estimator's train mode and its errors."""

import json
from functools import cache

import pytest
import torch

from profiling.estimate import format_training_table, main, parse_args
from profiling.meters.cpu import peak_live_bytes, trace_cpu_memory
from profiling.sweep.presets import load_preset
from tests.support.images import seeded_images
from vggt.heads.dpt_head import FRAMES_CHUNK_SIZE
from vggt.memory.estimate import CUDA_CONTEXT_BYTES
from vggt.memory.training import FakeTrainingModel, TrainingEstimate
from vggt.models.architecture import Architecture
from vggt.models.variants import get_variant
from vggt.parallel.group import REDUCE_BUCKET_BYTES
from vggt.precision import get_precision
from vggt.training.loss import seeded_targets
from vggt.training.step import PHASES, TrainingStep
from vggt.training.trainable import PRESETS

# Two layers, both read by the heads: few operators, so a fake step takes about a second.
SMALL = Architecture(
    img_size=56,
    patch_size=14,
    embed_dim=32,
    depth=2,
    num_heads=2,
    patch_embed="conv",
    intermediate_layer_idx=(0, 1, 0, 1),
)
FP32 = get_precision("fp32")
FRAMES, SIZE = 4, 56


@cache
def aggregator_estimate(variant: str, checkpoint: str, target_device: str) -> TrainingEstimate:
    """One fake step of the small aggregator trained alone, in fp32 (a pass each, shared)."""
    model = FakeTrainingModel(
        variant, "aggregator", SMALL, FP32, ("aggregator",), checkpoint, target_device
    )
    return model.estimate(FRAMES, 1, SIZE, SIZE)


def test_each_phase_holds_weights_adamw_states_and_gradients() -> None:
    model = FakeTrainingModel("full", "aggregator", SMALL, FP32, ("aggregator",), "none")
    estimate = model.estimate(FRAMES, 1, SIZE, SIZE)
    trained = [p for p in model.module.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in trained)
    assert trained and estimate.gradient_bytes == 4 * numel
    # exp_avg and exp_avg_sq in fp32 for each parameter, and the fused kernel's fp32 step count.
    assert estimate.optimizer_state_bytes == 2 * 4 * numel + 4 * len(trained)
    tensors = [*model.module.parameters(), *model.module.buffers()]
    assert estimate.weights_bytes == sum(t.numel() * t.element_size() for t in tensors)
    pixels = FRAMES * SIZE * SIZE
    assert estimate.input_bytes == 3 * pixels * 4
    # An aggregator trained alone reads its layers, no targets.
    assert estimate.target_bytes == 0
    held = (
        estimate.weights_bytes
        + estimate.input_bytes
        + estimate.target_bytes
        + estimate.optimizer_state_bytes
    )
    forward, backward, optimizer = (estimate.phase_peak_bytes[phase] for phase in PHASES)
    gradients = estimate.gradient_bytes
    assert forward > held
    # Backward ends with every gradient; the update adds nothing parameter-sized (fused AdamW)
    # and frees the gradients at its end.
    assert backward >= held + gradients
    assert held + gradients <= optimizer <= held + gradients + 1024
    assert estimate.live_peak_bytes == max(forward, backward, optimizer)
    assert estimate.allocated_bytes >= estimate.live_peak_bytes
    assert estimate.reserved_bound_bytes >= estimate.allocated_bytes
    assert estimate.required_bytes == estimate.reserved_bound_bytes + CUDA_CONTEXT_BYTES
    assert (estimate.trainable, estimate.checkpoint, estimate.frames) == (
        ("aggregator",),
        "none",
        FRAMES,
    )


def test_checkpointed_blocks_need_less_than_keeping_every_activation() -> None:
    kept = aggregator_estimate("full", "none", "cuda")
    checkpointed = aggregator_estimate("full", "blocks", "cuda")
    assert checkpointed.phase_peak_bytes["forward"] < kept.phase_peak_bytes["forward"]
    assert checkpointed.live_peak_bytes < kept.live_peak_bytes
    assert checkpointed.required_bytes <= kept.required_bytes
    assert checkpointed.gradient_bytes == kept.gradient_bytes


def test_a_frozen_aggregator_needs_less_than_an_unfrozen_one() -> None:
    models = {
        preset: FakeTrainingModel("optimized", "model", SMALL, FP32, PRESETS[preset], "blocks")
        for preset in ("frozen-aggregator", "unfrozen-aggregator")
    }
    frozen, unfrozen = (model.estimate(FRAMES, 1, SIZE, SIZE) for model in models.values())
    assert frozen.weights_bytes == unfrozen.weights_bytes
    # The model's targets: depth and world points per pixel, a 9-value pose encoding per frame.
    pixels = FRAMES * SIZE * SIZE
    assert frozen.target_bytes == unfrozen.target_bytes == 4 * pixels * 4 + 9 * FRAMES * 4
    assert frozen.gradient_bytes < unfrozen.gradient_bytes
    assert frozen.optimizer_state_bytes < unfrozen.optimizer_state_bytes
    assert frozen.live_peak_bytes < unfrozen.live_peak_bytes
    assert frozen.required_bytes <= unfrozen.required_bytes
    # The fit's line runs through whole chunks of the dense heads' frames.
    assert models["unfrozen-aggregator"].affine_from(1, SIZE, SIZE) == FRAMES_CHUNK_SIZE


def test_the_fake_step_peaks_as_a_real_cpu_step() -> None:
    estimate = aggregator_estimate("optimized", "blocks", "cpu")
    torch.manual_seed(0)
    real = get_variant("optimized").build("aggregator", SMALL)
    step = TrainingStep(real, ("aggregator",), "blocks", FP32, layers=SMALL.head_layers())
    images = seeded_images(1, FRAMES, SIZE, SIZE)
    targets = seeded_targets(1, FRAMES, SIZE, SIZE)
    step(images, targets)  # the first step makes AdamW's states, as the estimate's are
    forward = peak_live_bytes(lambda: step.loss(images, targets))
    _, trace = trace_cpu_memory(lambda: step(images, targets))
    held = (
        estimate.weights_bytes
        + estimate.input_bytes
        + estimate.target_bytes
        + estimate.optimizer_state_bytes
    )
    assert estimate.phase_peak_bytes["forward"] - held == pytest.approx(forward, rel=0.02)
    assert estimate.live_peak_bytes - held == pytest.approx(trace.tensor_peak_bytes, rel=0.02)
    assert estimate.gradient_bytes == step.gradient_bytes


def cli_json(argv: list[str], capsys: pytest.CaptureFixture) -> dict:
    """The JSON document the estimator prints for `argv`."""
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


TRAIN = ["--preset", "tiny", "--mode", "train", "--component", "aggregator"]


def test_cli_train_json_and_table(capsys: pytest.CaptureFixture) -> None:
    argv = [*TRAIN, "--variants", "optimized", "--frames", "1", "--checkpoint", "selective"]
    argv += ["--device-memory", "20MiB"]
    document = cli_json(argv, capsys)
    assert document["mode"] == "train"
    assert (document["trainable"], document["trained_parts"]) == ("aggregator", ["aggregator"])
    assert document["checkpoint"] == "selective" and "rates" not in document
    (entry,) = document["variants"]
    assert entry["max_frames"] == 0
    (row,) = entry["estimates"]
    assert set(row["phase_peak_bytes"]) == set(PHASES)
    assert row["live_peak_bytes"] == max(row["phase_peak_bytes"].values())
    assert row["required_bytes"] == row["reserved_bound_bytes"] + CUDA_CONTEXT_BYTES
    assert row["checkpoint"] == "selective" and row["frames"] == 1
    table = format_training_table(document["variants"], parse_args(argv), 0)
    assert "one training step" in table
    assert "trains aggregator (aggregator), checkpoint selective, AdamW" in table
    assert "| forward peak GiB | backward peak | optimizer peak |" in table
    assert "| optimized | 1 |" in table
    assert "optimized: at most 0 frames fit 0.02 GiB" in table


def test_cli_inference_json_says_its_mode(capsys: pytest.CaptureFixture) -> None:
    argv = ["--preset", "tiny", "--frames", "1", "--variants", "optimized"]
    document = cli_json([*argv, "--device-memory", "1MiB"], capsys)
    assert document["mode"] == "inference" and "rates" in document
    assert "checkpoint" not in document


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trainable", "aggregator"], "--trainable applies to --mode train only"),
        (["--checkpoint", "none"], "--checkpoint applies to --mode train only"),
        (
            [
                "--mode",
                "train",
                "--world-size",
                "2",
                "--attention",
                "ring",
                "--frames",
                "2",
                "--variants",
                "optimized",
            ],
            "training split over 2 GPUs runs ulysses attention, not ring",
        ),
        (["--mode", "train", "--offload"], "--offload applies to --mode inference only"),
        (["--mode", "train", "--gpu", "H100"], "--gpu applies to --mode inference only"),
        (["--mode", "train", "--trainable", "heads"], "unknown trainable part(s) ['heads']"),
        (["--mode", "train", "--trainable", "camera"], "trains the aggregator only"),
        (
            ["--mode", "train", "--component", "model", "--trainable", "all"],
            "training the track head needs query points (--query-points N)",
        ),
        (["--mode", "train", "--checkpoint", "all"], "argument --checkpoint: invalid choice"),
        (["--mode", "fit"], "argument --mode: invalid choice: 'fit'"),
    ],
)
def test_bad_training_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "tiny", *argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.strip().splitlines()[-1].startswith("python -m profiling.estimate: error: ")


def test_help_documents_the_training_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for text in ("--mode {inference,train}", "--trainable SPEC", "--checkpoint {none,blocks,"):
        assert text in out


def test_training_split_over_ranks_needs_less_per_rank() -> None:
    """The busiest rank of 2 holds half the frames: its frame-dependent bytes are about half of
    one device's, plus the exchanges and the gradients' all-reduce buckets."""
    architecture = load_preset("tiny").architecture
    precision = get_precision("fp32")
    parts = ("aggregator",)
    alone = FakeTrainingModel("optimized", "aggregator", architecture, precision, parts)
    split = FakeTrainingModel(
        "optimized", "aggregator", architecture, precision, parts, world_size=2
    )
    size = architecture.img_size
    one, two = (model.estimate(frames, 1, size, size) for model, frames in ((alone, 8), (split, 8)))
    assert two.world_size == 2 and two.rank_frames == 4 and two.nccl_bytes > 0
    held = one.weights_bytes + one.gradient_bytes + one.optimizer_state_bytes
    # The all-reduce sums the gradients in a flat bucket: a copy of them (up to a bucket's size).
    bucket = min(one.gradient_bytes, REDUCE_BUCKET_BYTES)
    assert two.live_peak_bytes - held - bucket < 0.75 * (one.live_peak_bytes - held)
    assert two.reserved_bound_bytes <= one.reserved_bound_bytes
