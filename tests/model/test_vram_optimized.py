"""The VRAM-optimized aggregator and model: the report's tests, selection rules, training."""

import pytest
import torch

from tests.support.compare import assert_same_predictions, rel_l2
from tests.support.configs import SMALL_AGGREGATOR, SMALL_VGGT
from tests.support.images import seeded_images
from vggt.heads.camera_head import CameraHead
from vggt.heads.dpt_head import DPTHead
from vggt.layers.attention import attention_dtype
from vggt.models.aggregator import Aggregator
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized, LayerSelectView
from vggt.models.vggt import VGGT
from vggt.models.vggt_vram_optimized import VGGTOptimized
from vggt.streaming.chunks import ChunkPolicy

# The report's unit tests use a conv patch embed with patch size 16 and 64x64 images.
REPORT_CONFIG = {
    "img_size": 64,
    "patch_size": 16,
    "embed_dim": 64,
    "depth": 24,
    "num_heads": 4,
    "patch_embed": "conv",
}
HEAD_LAYERS = [4, 11, 17, 23]


def paired_aggregators(
    config: dict, selected: list[int] | None
) -> tuple[Aggregator, AggregatorVramOptimized]:
    torch.manual_seed(0)
    full = Aggregator(**config).eval()
    optimized = AggregatorVramOptimized(**config, selected_layer_idx=selected).eval()
    optimized.load_state_dict(full.state_dict())
    return full, optimized


def test_selected_view_indexing_and_shape() -> None:
    full, optimized = paired_aggregators(REPORT_CONFIG, HEAD_LAYERS)
    images = seeded_images(1, 3, 64, 64)
    with torch.no_grad():
        layers, start = full(images)
        view, start_opt, kept = optimized(images)
    assert start == start_opt == 5
    assert kept == HEAD_LAYERS
    assert len(view) == len(layers) == 24
    assert view.selected_count == 4
    for index in HEAD_LAYERS:
        assert view[index] is view[index - 24]
        assert view[index].shape == (1, 3, 5 + 16, 128)
        torch.testing.assert_close(view[index], layers[index], rtol=0, atol=0)
    torch.testing.assert_close(view[-1], layers[-1], rtol=0, atol=0)


def test_heads_numerical_equivalence() -> None:
    full, optimized = paired_aggregators(REPORT_CONFIG, HEAD_LAYERS)
    torch.manual_seed(1)
    camera = CameraHead(dim_in=128, trunk_depth=2, num_heads=4).eval()
    dpt = DPTHead(
        dim_in=128, patch_size=16, features=32, out_channels=[16, 32, 64, 64], output_dim=2
    ).eval()
    images = seeded_images(2, 3, 64, 64)
    with torch.no_grad():
        layers, start = full(images)
        view, _, _ = optimized(images)
        pose_full = camera(layers)[-1]
        pose_view = camera(view)[-1]
        depth_full, conf_full = dpt(layers, images=images, patch_start_idx=start)
        depth_view, conf_view = dpt(view, images=images, patch_start_idx=start)
    torch.testing.assert_close(pose_view, pose_full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(depth_view, depth_full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conf_view, conf_full, rtol=1e-4, atol=1e-5)


def test_none_keeps_every_layer() -> None:
    full, optimized = paired_aggregators(SMALL_AGGREGATOR, None)
    assert optimized.selected_layer_idx is None
    images = seeded_images(1, 2, 56, 56)
    with torch.no_grad():
        layers, _ = full(images)
        view, _, kept = optimized(images)
    assert kept == list(range(6))
    assert all(torch.equal(a, b) for a, b in zip(view, layers, strict=True))


def test_selection_is_sorted_and_normalised() -> None:
    aggregator = AggregatorVramOptimized(**SMALL_AGGREGATOR, selected_layer_idx=[-1, 2, 0])
    assert aggregator.selected_layer_idx == [0, 2, 5]


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ([6], "out of range"),
        ([-7], "out of range"),
        ([1, 1], "more than once"),
        ([5, -1], "more than once"),
        ([], "at least one layer"),
        ([1.0], "must be integers"),
        ([True], "must be integers"),
    ],
)
def test_bad_selection(selection: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AggregatorVramOptimized(**SMALL_AGGREGATOR, selected_layer_idx=selection)


def test_same_state_dict_as_aggregator() -> None:
    full = Aggregator(**SMALL_AGGREGATOR)
    optimized = AggregatorVramOptimized(**SMALL_AGGREGATOR, selected_layer_idx=[1])
    assert {k: v.shape for k, v in full.state_dict().items()} == {
        k: v.shape for k, v in optimized.state_dict().items()
    }
    optimized.load_state_dict(full.state_dict(), strict=True)


def test_vggt_optimized_selects_the_layers_its_heads_read() -> None:
    assert VGGTOptimized(**SMALL_VGGT).aggregator.selected_layer_idx == [1, 2, 4, 5]
    cameras_only = VGGTOptimized(
        **SMALL_VGGT, enable_point=False, enable_depth=False, enable_track=False
    )
    assert cameras_only.aggregator.selected_layer_idx == [5]


def test_default_vggt_optimized_keeps_four_layers() -> None:
    with torch.device("meta"):
        model = VGGTOptimized()
    assert model.aggregator.selected_layer_idx == [4, 11, 17, 23]


def test_selection_missing_a_head_layer_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="misses layer 4, which point_head and depth_head and"):
        VGGTOptimized(**SMALL_VGGT, selected_layer_idx=[1, 2, 5])
    with pytest.raises(ValueError, match="misses layer 5, which camera_head and"):
        VGGTOptimized(**SMALL_VGGT, selected_layer_idx=[1, 2, 4])


def test_extra_selected_layers_are_allowed() -> None:
    model = VGGTOptimized(**SMALL_VGGT, selected_layer_idx=[0, 1, 2, 4, 5])
    assert model.aggregator.selected_layer_idx == [0, 1, 2, 4, 5]


def test_predictions_equal_vggt() -> None:
    torch.manual_seed(0)
    full = VGGT(**SMALL_VGGT).eval()
    optimized = VGGTOptimized(**SMALL_VGGT).eval()
    optimized.load_state_dict(full.state_dict())
    images = seeded_images(1, 3, 140, 140)
    points = torch.tensor([[[10.0, 20.0], [70.0, 90.0], [130.0, 5.0]]])
    with torch.no_grad():
        expected = full(images, query_points=points)
        actual = optimized(images, query_points=points)
        # Dense predictions sent elsewhere, frame chunk by frame chunk: the same values there.
        optimized.predictions_device = torch.device("cpu")
        sent = optimized(images, query_points=points)
        # The estimator's device (meta tensors count as host bytes); the tracker would read its
        # maps back from there, which only fake tensors allow, so no points here.
        optimized.predictions_device = torch.device("meta")
        elsewhere = optimized(images)
    assert_same_predictions(actual, expected)
    assert_same_predictions(sent, expected)
    dense = {"depth", "depth_conf", "world_points", "world_points_conf"}
    on_meta = {key for key, value in elsewhere.items() if getattr(value, "is_meta", False)}
    assert on_meta == dense


def test_aggregator_gradients_equal_baseline() -> None:
    full, optimized = paired_aggregators(SMALL_AGGREGATOR, [1, 3, 5])
    full.train()
    optimized.train()
    images = seeded_images(1, 2, 56, 56)
    weights = {1: 0.5, 3: -1.0, 5: 2.0}
    layers, _ = full(images)
    view, _, _ = optimized(images)
    sum(w * layers[i].square().mean() for i, w in weights.items()).backward()
    sum(w * view[i].square().mean() for i, w in weights.items()).backward()
    grads = dict(optimized.named_parameters())
    checked = 0
    for name, parameter in full.named_parameters():
        if parameter.grad is None:
            assert grads[name].grad is None, name
            continue
        torch.testing.assert_close(grads[name].grad, parameter.grad, rtol=1e-5, atol=1e-7)
        checked += 1
    assert checked > 50


def test_vggt_training_gradients_equal_baseline() -> None:
    torch.manual_seed(0)
    config = {**SMALL_VGGT, "enable_track": False}
    full = VGGT(**config).train()
    optimized = VGGTOptimized(**config).train()
    optimized.load_state_dict(full.state_dict())
    images = seeded_images(2, 2, 56, 56)
    for model in (full, optimized):
        out = model(images)
        loss = out["depth"].mean() + out["world_points"].square().mean() + out["pose_enc"].sum()
        loss.backward()
    optimized_params = dict(optimized.named_parameters())
    for name, parameter in full.named_parameters():
        other = optimized_params[name].grad
        if parameter.grad is None:
            assert other is None, name
        else:
            torch.testing.assert_close(other, parameter.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_checkpointing_is_used_in_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import vggt.training.checkpointing as checkpointing

    calls = []
    real = checkpointing.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpointing, "checkpoint", counting)
    model = AggregatorVramOptimized(**SMALL_AGGREGATOR, selected_layer_idx=[5]).train()
    model(seeded_images(1, 2, 56, 56))[0][5].sum().backward()
    assert calls == [False] * 12


class TestLayerSelectView:
    """What `in`, iteration, repr and errors do."""

    @pytest.fixture
    def view(self) -> LayerSelectView:
        return LayerSelectView({4: torch.zeros(2, 3), 11: torch.ones(2, 3)}, depth=24)

    def test_membership_takes_layer_indices(self, view: LayerSelectView) -> None:
        assert 4 in view and -13 in view
        assert 5 not in view and 24 not in view and -25 not in view
        with pytest.raises(TypeError, match="layer index, not a tensor"):
            _ = torch.zeros(2, 3) in view

    def test_partial_view_refuses_iteration(self, view: LayerSelectView) -> None:
        with pytest.raises(TypeError, match="use items\\(\\)"):
            list(view)
        with pytest.raises(TypeError, match="use items\\(\\)"):
            reversed(view)
        assert [index for index, _ in view.items()] == [4, 11]

    def test_complete_view_iterates_like_a_list(self) -> None:
        tensors = [torch.full((1,), float(i)) for i in range(3)]
        view = LayerSelectView(dict(enumerate(tensors)), depth=3)
        assert [t.item() for t in view] == [0.0, 1.0, 2.0]
        assert [t.item() for t in reversed(view)] == [2.0, 1.0, 0.0]

    def test_errors_name_the_problem(self, view: LayerSelectView) -> None:
        with pytest.raises(KeyError, match="available layers are \\[4, 11\\]"):
            view[5]
        with pytest.raises(IndexError, match="out of range for depth 24"):
            view[24]
        with pytest.raises(TypeError, match="slicing"):
            view[4:12]
        with pytest.raises(TypeError, match="integers"):
            view["4"]

    def test_read_only(self, view: LayerSelectView) -> None:
        with pytest.raises(TypeError):
            view[4] = torch.zeros(1)

    def test_repr_shows_indices_not_data(self, view: LayerSelectView) -> None:
        text = repr(view)
        assert text == (
            "LayerSelectView(depth=24, kept=[4, 11], shape=(2, 3), dtype=torch.float32)"
        )

    def test_accepts_numpy_style_integers(self, view: LayerSelectView) -> None:
        assert view[torch.tensor(11)] is view[11]

    def test_the_design_reports_constructor(self, view: LayerSelectView) -> None:
        outputs = [view[4], view[11]]
        built = LayerSelectView(24, outputs, [4, -13])
        assert built.orig_indices == [4, 11] and built[11] is view[11] and len(built) == 24
        keywords = LayerSelectView(depth=24, selected_outputs=outputs, orig_indices=[4, 11])
        assert keywords[4] is view[4]
        with pytest.raises(ValueError, match="2 selected outputs for 1 orig_indices"):
            LayerSelectView(24, outputs, [4])
        with pytest.raises(ValueError, match="more than once"):
            LayerSelectView(24, outputs, [4, 4])
        with pytest.raises(TypeError, match="takes \\(layers, depth\\) or"):
            LayerSelectView({4: outputs[0]})

    def test_the_design_reports_api_whole(self) -> None:
        outputs = [torch.full((2, 3), 4.0), torch.full((2, 3), 23.0)]
        view = LayerSelectView(24, outputs, [4, 23])
        assert len(view) == 24
        assert view.selected_count == 2
        assert view.orig_indices == [4, 23]
        assert view[4] is outputs[0] and view[23] is outputs[1]
        assert view[-1] is outputs[1] and view[-20] is outputs[0]
        with pytest.raises(KeyError, match="available layers are \\[4, 23\\]"):
            view[-2]
        assert repr(view) == (
            "LayerSelectView(depth=24, kept=[4, 23], shape=(2, 3), dtype=torch.float32)"
        )


@pytest.mark.parametrize(
    ("transient_budget", "min_chunk_tokens"),
    [(1.0, 1), (2.5, 1), (1.0, 40), (1.0, 256)],
    ids=["streamed-frames-and-global", "global-in-two-chunks", "frame-groups", "unchunked-small"],
)
def test_chunked_blocks_equal_unchunked(transient_budget: float, min_chunk_tokens: int) -> None:
    full, _ = paired_aggregators(SMALL_AGGREGATOR, [0, 3, 5])
    chunked = AggregatorVramOptimized(
        **SMALL_AGGREGATOR,
        selected_layer_idx=[0, 3, 5],
        transient_budget=transient_budget,
        min_chunk_tokens=min_chunk_tokens,
    ).eval()
    chunked.load_state_dict(full.state_dict())
    images = seeded_images(2, 3, 56, 70)
    with torch.no_grad():
        layers, _ = full(images)
        view, _, _ = chunked(images)
    for index in [0, 3, 5]:
        torch.testing.assert_close(view[index], layers[index], rtol=1e-5, atol=1e-6)


def test_chunk_size_follows_the_stream() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    policy = ChunkPolicy(transient_budget=1.0)
    assert policy.chunk_tokens(100 * 1374, cpu, 1024) == -(-100 * 1374 // 8)
    assert policy.chunk_tokens(100 * 1374, cuda, 1024) == 17175
    assert policy.chunk_tokens(8 * 1374, cuda, 1024) == 16384
    assert policy.chunk_tokens(21, cpu, 1024) == 64
    # the floor is in elements: a narrower stream takes more tokens per chunk
    assert policy.chunk_tokens(21, cpu, 64) == 1024
    assert policy.chunk_tokens(8 * 1374, cuda, 768) == 16384  # capped in tokens
    assert policy.chunk_tokens(21, cpu, 16) == 1024
    assert ChunkPolicy(0.5, min_chunk_tokens=4).chunk_tokens(800, cpu, 64) == 50
    assert ChunkPolicy(transient_budget=None).chunk_tokens(100 * 1374, cpu, 64) == 100 * 1374
    with pytest.raises(ValueError, match="transient_budget"):
        AggregatorVramOptimized(**SMALL_AGGREGATOR, transient_budget=0)
    with pytest.raises(ValueError, match="min_chunk_tokens"):
        AggregatorVramOptimized(**SMALL_AGGREGATOR, min_chunk_tokens=0)


@pytest.mark.parametrize("feature_only", [False, True])
def test_dpt_frame_chunks_equal_one_pass(feature_only: bool) -> None:
    full, _ = paired_aggregators(REPORT_CONFIG, HEAD_LAYERS)
    torch.manual_seed(2)
    dpt = DPTHead(
        dim_in=128,
        patch_size=16,
        features=16,
        out_channels=[8, 16, 32, 32],
        feature_only=feature_only,
        down_ratio=2 if feature_only else 1,
    ).eval()
    images = seeded_images(1, 7, 64, 64)
    with torch.no_grad():
        layers, start = full(images)
        whole = dpt(layers, images, start, frames_chunk_size=None)
        chunked = dpt(layers, images, start, frames_chunk_size=3)
    pairs = [(chunked, whole)] if feature_only else list(zip(chunked, whole, strict=True))
    for a, b in pairs:
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_streamed_blocks_under_cpu_autocast_match_unstreamed_ones() -> None:
    """Streamed K/V kept in bf16 (the dtype attention runs in under autocast) agree with
    whole-stream blocks to bf16 rounding: measured relative L2 error 3.7e-5 at the memory
    configuration (4 frames), bounded here by 1e-4."""
    _, whole = paired_aggregators(SMALL_AGGREGATOR, [1, 3, 5])
    streamed = AggregatorVramOptimized(
        **SMALL_AGGREGATOR, selected_layer_idx=[1, 3, 5], min_chunk_tokens=16
    ).eval()
    streamed.load_state_dict(whole.state_dict())
    whole.block_runner.policy = ChunkPolicy(transient_budget=None)
    images = seeded_images(2, 3, 56, 70)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention_dtype(images) == torch.bfloat16
        expected, _, _ = whole(images)
        actual, _, _ = streamed(images)
    for index in (1, 3, 5):
        assert rel_l2(actual[index], expected[index]) <= 1e-4
    assert attention_dtype(images) == torch.float32
