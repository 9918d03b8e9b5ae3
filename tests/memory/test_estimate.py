"""The fake-tensor memory estimator: agreement with measured peaks, the fit search, the CLI."""

import json

import pytest
import torch
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from profiling.estimate import main
from profiling.meters.cpu import peak_live_bytes
from profiling.sweep.presets import load_preset
from tests.support.images import seeded_images
from vggt.memory.estimate import (
    CUDA_CONTEXT_BYTES,
    NCCL_BYTES,
    CudaAutocastRules,
    Estimate,
    FakeModel,
)
from vggt.memory.fit import max_frames
from vggt.memory.units import parse_bytes
from vggt.models.architecture import VGGT_1B
from vggt.models.variants import get_variant
from vggt.precision import Precision, get_precision

CPU_SMALL = load_preset("cpu-small").architecture
TINY = load_preset("tiny").architecture


# The profiler's tensor bytes (allocations that back an operator's output) are what the fake
# pass counts; kernel scratch (oneDNN's, sized by the CPU's instruction set) is left out of both.
CPU_PRECISIONS = [get_precision(name) for name in ("fp32", "autocast", "bf16")]
FP32, AUTOCAST, BF16 = CPU_PRECISIONS


@pytest.mark.parametrize("precision", CPU_PRECISIONS, ids=lambda precision: precision.label)
@pytest.mark.parametrize("variant", ["full", "optimized"])
def test_estimate_within_5_percent_of_profiler_peak(variant: str, precision: Precision) -> None:
    model = FakeModel(variant, "aggregator", CPU_SMALL, precision, target_device="cpu")
    estimate = model.estimate(frames=6, batch=1, height=224, width=224)
    torch.manual_seed(0)
    real = precision.apply(get_variant(variant).build("aggregator", CPU_SMALL).eval())
    images = seeded_images(1, 6, 224, 224)
    with torch.no_grad(), precision.autocast("cpu"):
        measured = peak_live_bytes(lambda: real(images))
    activations = estimate.live_peak_bytes - estimate.weights_bytes - estimate.input_bytes
    assert abs(activations - measured) <= 0.05 * measured
    weights = sum(p.numel() * p.element_size() for p in real.parameters())
    assert estimate.weights_bytes == weights
    assert estimate.input_bytes == images.numel() * images.element_size()


def test_breakdown_of_the_optimized_aggregator() -> None:
    model = FakeModel("optimized", "aggregator", TINY, FP32)
    estimate = model.estimate(frames=3, batch=2, height=56, width=70)
    tokens = 1 + 4 + 4 * 5
    assert estimate.output_bytes == 4 * 2 * 3 * tokens * 2 * TINY.embed_dim * 4
    assert estimate.input_bytes == 2 * 3 * 3 * 56 * 70 * 4
    assert estimate.transient_bytes > 0
    assert estimate.precision == "fp32"


@pytest.mark.parametrize(("name", "element_bytes"), [("autocast", 4), ("bf16", 2)])
def test_kept_layers_are_fp32_under_autocast(name: str, element_bytes: int) -> None:
    estimate = FakeModel("optimized", "aggregator", TINY, get_precision(name)).estimate(
        frames=3, batch=1, height=56, width=56
    )
    tokens = 1 + 4 + 4 * 4
    assert estimate.precision == name
    assert estimate.output_bytes == 4 * 3 * tokens * 2 * TINY.embed_dim * element_bytes
    assert estimate.input_bytes == 3 * 3 * 56 * 56 * 4


def test_autocast_runs_fp32_weights_and_bf16_halves_the_aggregators() -> None:
    autocast = FakeModel("full", "aggregator", TINY, AUTOCAST)
    cast = FakeModel("full", "aggregator", TINY, BF16)
    fp32 = FakeModel("full", "aggregator", TINY, FP32)
    assert autocast.weights_bytes == fp32.weights_bytes == 2 * cast.weights_bytes


def test_bf16_keeps_the_heads_in_fp32() -> None:
    model = FakeModel("optimized", "model", TINY, BF16)
    assert {p.dtype for p in model.module.aggregator.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.module.depth_head.parameters()} == {torch.float32}
    estimate = model.estimate(frames=2, batch=1, height=56, width=56)
    assert estimate.precision == "bf16" and estimate.output_bytes > 0


def test_allocator_figures_bound_the_live_peak() -> None:
    model = FakeModel("optimized", "aggregator", TINY, FP32, cublas_workspace_bytes=7 << 20)
    estimate = model.estimate(frames=5, batch=1, height=56, width=56)
    assert estimate.allocated_bytes >= estimate.live_peak_bytes + (7 << 20)
    assert estimate.allocated_bytes - estimate.live_peak_bytes < (7 << 20) + 512 * 1000
    assert estimate.reserved_bound_bytes >= estimate.allocated_bytes
    assert estimate.reserved_bound_bytes % (2 << 20) == 0
    assert estimate.cuda_context_bytes == CUDA_CONTEXT_BYTES
    assert estimate.nccl_bytes == 0
    assert estimate.required_bytes == estimate.reserved_bound_bytes + CUDA_CONTEXT_BYTES


def test_split_runs_count_nccls_buffers() -> None:
    model = FakeModel("optimized", "aggregator", TINY, FP32, world_size=2, nccl_bytes=5 << 20)
    estimate = model.estimate(frames=4, batch=1, height=56, width=56)
    assert estimate.nccl_bytes == 5 << 20
    assert estimate.required_bytes == (
        estimate.reserved_bound_bytes + CUDA_CONTEXT_BYTES + (5 << 20)
    )
    assert FakeModel("optimized", "aggregator", TINY, FP32, world_size=2).nccl_bytes == NCCL_BYTES


def test_offload_moves_kept_layers_off_the_device() -> None:
    kept = FakeModel("optimized", "aggregator", CPU_SMALL, FP32).estimate(4, 1, 224, 224)
    offloaded = FakeModel("optimized", "aggregator", CPU_SMALL, FP32, offload=True)
    moved = offloaded.estimate(4, 1, 224, 224)
    assert moved.output_bytes == 0
    assert moved.host_bytes == kept.output_bytes
    assert moved.live_peak_bytes < kept.live_peak_bytes


def test_max_frames_is_the_exact_boundary() -> None:
    model = FakeModel("full", "aggregator", TINY, FP32)
    budget = model.estimate(37, 1, 56, 56).required_bytes + 1
    best = max_frames(model, budget, 1, 56, 56)
    assert model.estimate(best, 1, 56, 56).required_bytes <= budget
    assert model.estimate(best + 1, 1, 56, 56).required_bytes > budget
    assert best >= 37
    assert max_frames(model, CUDA_CONTEXT_BYTES, 1, 56, 56) == 0


def cli_json(argv: list[str], capsys: pytest.CaptureFixture) -> dict:
    """The JSON document the estimator prints for `argv`."""
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json(capsys: pytest.CaptureFixture) -> None:
    argv = ["--preset", "tiny", "--frames", "1,64", "--dtype", "bf16", "--cuda-context", "100MiB"]
    document = cli_json([*argv, "--device-memory", "30MiB,170MiB"], capsys)
    assert document["precision"] == "autocast"
    assert document["cuda_context_bytes"] == 100 << 20
    assert document["cublas_workspace_bytes"] == 32 << 20
    assert document["device_memory_list"] == [30 << 20, 170 << 20]
    variants = {entry["variant"]: entry for entry in document["variants"]}
    assert set(variants) == {"full", "optimized"}
    for entry in variants.values():
        assert set(entry["live_peaks"]) == {"1", "64"}
        assert entry["max_frames"] == entry["max_frames_by_budget"][str(30 << 20)] == 0
        assert entry["max_frames_by_budget"][str(170 << 20)] >= 64
        assert entry["fake_passes"] >= 2
        for row in entry["estimates"]:
            assert row["precision"] == "autocast"
            assert row["required_bytes"] == row["reserved_bound_bytes"] + (100 << 20)
    assert variants["optimized"]["live_peaks"]["64"] <= variants["full"]["live_peaks"]["64"]


def test_cli_table(capsys: pytest.CaptureFixture) -> None:
    argv = ["--preset", "tiny", "--frames", "2", "--precision", "bf16"]
    main([*argv, "--device-memory", "30MiB,1GiB", "--cuda-context", "0", "--variants", "full"])
    out = capsys.readouterr().out
    assert "bf16 (aggregator weights in bf16 under bf16 autocast)" in out
    assert "| fits 0.03 GiB | fits 1.00 GiB |" in out
    assert "| full | 2 |" in out
    assert "CUDA context: 0 B (assumptions until python -m profiling.gpu_check measures" in out
    assert "a frame count fits M when reserved bound + CUDA context (+ NCCL" in out
    assert "full: at most 0 frames fit 0.03 GiB" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nope"], "unknown preset"),
        (["--frames", "0"], "--frames must be whole numbers of at least 1, got '0'"),
        (["--frames", "a,b"], "--frames must be whole numbers of at least 1, got 'a'"),
        (["--device-memory", "lots"], "not a memory size"),
        (["--cuda-context", "some"], "not a memory size: 'some'"),
        (["--cublas-workspace", "x"], "not a memory size: 'x'"),
        (["--dtype-mode", "fused"], "argument --dtype-mode: invalid choice: 'fused'"),
        (["--height", "500"], "multiples of the patch size"),
        (["--variants", "full,fast"], "unknown variants"),
        (["--world-size", "2", "--frames", "4"], "splits only the optimized variant"),
        (
            [
                "--preset",
                "tiny",
                "--world-size",
                "4",
                "--variants",
                "optimized",
                "--attention",
                "ulysses",
            ],
            "at most 2 ranks, not 4",
        ),
        (["--precision", "bf16", "--dtype", "bf16"], "--precision replaces --dtype"),
        (["--precision", "half"], "argument --precision: invalid choice: 'half'"),
        (["--world-size", "2", "--variants", "optimized", "--frames", "1"], "a frame per rank"),
    ],
)
def test_bad_arguments_exit_2(argv: list, message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.strip().splitlines()[-1].startswith("python -m profiling.estimate: error: ")


def test_parse_bytes() -> None:
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("80 GB") == 80 * 10**9
    assert parse_bytes("24G") == 24 * 2**30
    assert parse_bytes("1024") == 1024


# A size at which activations outweigh the weights: the comparison is about activations.
GPU_FRAMES = 256


@pytest.mark.gpu
@pytest.mark.parametrize("precision", CPU_PRECISIONS, ids=lambda precision: precision.label)
def test_activation_peak_within_10_percent_of_cuda(
    device: torch.device, precision: Precision
) -> None:
    if device.type != "cuda":
        pytest.skip("run with --device cuda")
    model = FakeModel("optimized", "aggregator", CPU_SMALL, precision)
    estimate = model.estimate(frames=GPU_FRAMES, batch=1, height=224, width=224)
    expected = estimate.allocated_bytes - estimate.weights_bytes - estimate.input_bytes
    assert expected >= 0.6 * estimate.allocated_bytes
    torch.cuda.empty_cache()
    # The first matmul allocates the cuBLAS workspace, which the estimate counts.
    torch._C._cuda_clearCublasWorkspaces()
    reserved_before = torch.cuda.memory_reserved(device)
    real = get_variant("optimized").build("aggregator", CPU_SMALL).eval()
    real = precision.apply(real).to(device)
    images = seeded_images(1, GPU_FRAMES, 224, 224).to(device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.no_grad(), precision.autocast("cuda"):
        real(images)
    torch.cuda.synchronize(device)
    measured = torch.cuda.max_memory_allocated(device) - before
    assert abs(expected - measured) <= 0.10 * measured
    # Unconstrained, the allocator keeps every segment it reserved: the never-release figure.
    reserved = torch.cuda.max_memory_reserved(device) - reserved_before
    assert abs(estimate.reserved_peak_bytes - reserved) <= 0.10 * reserved


def test_a_split_sequence_costs_the_busiest_rank_less_but_more_than_its_share() -> None:
    one = FakeModel("optimized", "aggregator", CPU_SMALL, FP32).estimate(7, 1, 224, 224)
    split = FakeModel("optimized", "aggregator", CPU_SMALL, FP32, world_size=2)
    two = split.estimate(7, 1, 224, 224)
    assert (two.frames, two.world_size, two.rank_frames) == (7, 2, 4)
    assert two.input_bytes == one.input_bytes * 4 // 7
    assert two.weights_bytes == one.weights_bytes
    assert two.live_peak_bytes < one.live_peak_bytes
    # The last rank holds 4 of 7 frames, and global attention's K/V heads for all 7.
    assert (
        two.live_peak_bytes - two.weights_bytes > (one.live_peak_bytes - one.weights_bytes) * 4 / 7
    )
    assert split.affine_from(1, 224, 224) % 2 == 0


def test_the_dense_predictions_count_as_host_memory_when_they_go_there() -> None:
    def estimate(host_predictions: bool) -> Estimate:
        model = FakeModel("optimized", "model", CPU_SMALL, FP32, host_predictions=host_predictions)
        return model.estimate(16, 1, 224, 224)

    on_device, on_host = estimate(False), estimate(True)
    # depth, depth_conf, world_points (3) and world_points_conf: 6 floats per pixel.
    dense = 16 * 224 * 224 * 6 * 4
    assert (on_device.host_bytes, on_host.host_bytes) == (0, dense)
    assert on_device.output_bytes - on_host.output_bytes == dense
    assert on_host.live_peak_bytes < on_device.live_peak_bytes


def test_the_fake_pass_tracks_query_points_and_the_tracker_splits_over_ranks() -> None:
    def activations(query_points: int, world_size: int) -> int:
        model = FakeModel(
            "optimized", "model", CPU_SMALL, FP32, world_size=world_size, query_points=query_points
        )
        estimate = model.estimate(16, 1, 224, 224)
        return estimate.live_peak_bytes - estimate.weights_bytes

    alone = activations(512, 1)
    assert alone > 2 * activations(0, 1)
    # 512 points' correlations and tokens dominate; each rank tracks through its own frames.
    assert activations(512, 2) <= 0.55 * alone
    assert activations(512, 4) <= 0.55 * activations(512, 2)


def test_hybrid_attention_is_estimated_per_node() -> None:
    def activations(attention: str, ranks_per_node: int | None = None) -> int:
        model = FakeModel(
            "optimized",
            "aggregator",
            CPU_SMALL,
            FP32,
            attention=attention,
            world_size=4,
            ranks_per_node=ranks_per_node,
        )
        estimate = model.estimate(8, 1, 224, 224)
        return estimate.live_peak_bytes - estimate.weights_bytes

    # The hybrid holds its node's queries for its heads and a float32 accumulator, as ring
    # does for its own tokens: no more than a quarter over Ulysses' peak, on one node or two.
    ulysses = activations("ulysses")
    assert 0 < activations("hybrid", 4) <= 1.25 * ulysses
    assert 0 < activations("hybrid", 2) <= 1.25 * ulysses
    assert (
        FakeModel(
            "optimized", "aggregator", CPU_SMALL, FP32, world_size=4, ranks_per_node=2
        ).attention
        == "hybrid"
    )


def test_only_the_optimized_variant_splits_and_every_rank_needs_a_frame() -> None:
    with pytest.raises(ValueError, match="cannot split a sequence"):
        FakeModel("full", "aggregator", TINY, FP32, world_size=2)
    model = FakeModel("optimized", "aggregator", TINY, FP32, world_size=2)
    with pytest.raises(ValueError, match="without frames"):
        model.estimate(1, 1, 56, 56)


def test_cli_world_size(capsys: pytest.CaptureFixture) -> None:
    argv = ["--preset", "tiny", "--variants", "optimized", "--frames", "4", "--world-size", "2"]
    document = cli_json([*argv, "--device-memory", "1GiB"], capsys)
    assert document["world_size"] == 2
    (entry,) = document["variants"]
    assert entry["estimates"][0]["rank_frames"] == 2
    assert entry["max_frames"] % 2 == 0


def test_the_fake_pass_runs_qk_norms_in_fp32_as_cuda_autocast_does() -> None:
    model = FakeModel("full", "aggregator", TINY, AUTOCAST)
    seen: list[torch.dtype] = []
    attn = model.module.frame_blocks[0].attn
    attn.q_norm.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    original = attn.attend

    def attend(q, k, v):
        seen.extend((q.dtype, k.dtype, v.dtype))
        return original(q, k, v)

    attn.attend = attend
    model.estimate(frames=2, batch=1, height=56, width=56)
    assert seen == [torch.float32, torch.bfloat16, torch.bfloat16, torch.bfloat16]


def test_cuda_autocast_rules_cast_up_only_under_autocast() -> None:
    norm = torch.nn.LayerNorm(8)
    half = torch.randn(3, 8).bfloat16()
    with CudaAutocastRules():
        assert norm(half.float()).dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert norm(half).dtype == torch.float32
            assert half.softmax(-1).dtype == torch.float32
            assert (half @ half.T).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(half).dtype == torch.bfloat16


def test_cuda_autocast_rules_hold_in_the_blocks_backward_recomputes() -> None:
    """A checkpointed block recomputed by `loss.backward()` runs under the rules as its forward
    did (on any torch: the engine is started inside the mode); a backward with a gradient
    argument is refused."""
    norm = torch.nn.LayerNorm(8)
    seen = []

    def block(x: torch.Tensor) -> torch.Tensor:
        out = norm(x)
        seen.append(out.dtype)
        return out

    half = torch.randn(3, 8).bfloat16().requires_grad_()
    rules = CudaAutocastRules()
    with set_checkpoint_early_stop(False), rules, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = checkpoint(block, half, use_reentrant=False).float().square().sum()
        loss.backward()
        with pytest.raises(NotImplementedError, match="one scalar loss"):
            norm(half).sum().backward(torch.tensor(2.0))
    assert seen == [torch.float32, torch.float32]
    assert half.grad is not None


def test_unconstrained_reserve_is_at_least_the_bound() -> None:
    estimate = FakeModel("full", "aggregator", TINY, AUTOCAST).estimate(4, 1, 56, 56)
    assert estimate.reserved_peak_bytes >= estimate.reserved_bound_bytes
    assert estimate.reserved_peak_bytes % (2 << 20) == 0
    assert estimate.allocations > 4 * TINY.depth


def test_cast_bf16_keeps_the_stream_in_bf16_under_cuda_autocast_rules() -> None:
    # DINOv2's final norm runs in fp32 under CUDA autocast; the stream stays in the weights'
    # dtype anyway, so the kept layers of the bf16 precision take half the bytes.
    estimate = FakeModel("optimized", "aggregator", VGGT_1B, BF16).estimate(2, 1, 56, 56)
    tokens = VGGT_1B.tokens_per_frame(56, 56)
    kept = len(VGGT_1B.head_layers())
    assert estimate.output_bytes == kept * 2 * tokens * 2 * VGGT_1B.embed_dim * 2
