"""Tests for the tracking head and its building blocks (heads/track_modules)."""

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from tests.support.repo import manifest
from vggt.heads import track_head
from vggt.heads.track_modules import blocks
from vggt.heads.track_modules.base_track_predictor import BaseTrackerPredictor
from vggt.heads.track_modules.blocks import CorrBlock, EfficientUpdateFormer
from vggt.heads.track_modules.modules import AttnBlock, CrossAttnBlock
from vggt.heads.track_modules.utils import (
    bilinear_sampler,
    get_2d_embedding,
    get_2d_sincos_pos_embed,
    sample_features4d,
)

TRACKER_PREFIX = "track_head.tracker."
VGGT_TRACKER_KWARGS = dict(
    latent_dim=128, predict_conf=True, stride=2, corr_levels=7, corr_radius=4, hidden_size=384
)


def _randomise_norms(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every LayerNorm a non-trivial affine transform so residual choices are visible."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1.0 + 0.5 * torch.randn(m.weight.shape, generator=generator))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=generator))


@pytest.fixture(scope="module")
def tracker() -> BaseTrackerPredictor:
    torch.manual_seed(0)
    return BaseTrackerPredictor(**VGGT_TRACKER_KWARGS).eval()


@pytest.fixture(scope="module")
def tracker_run(tracker):
    g = torch.Generator().manual_seed(1)
    fmaps = torch.randn(2, 3, 128, 64, 64, generator=g)
    query = torch.rand(2, 3, 2, generator=g) * 127.0
    with torch.no_grad():
        out = tracker(query_points=query, fmaps=fmaps, iters=1)
    return query, out


def test_tracker_state_dict_matches_manifest(tracker):
    expected = [
        (name[len(TRACKER_PREFIX) :], list(shape))
        for name, shape in manifest().items()
        if name.startswith(TRACKER_PREFIX)
    ]
    got = [(name, list(t.shape)) for name, t in tracker.state_dict().items()]
    assert len(expected) == 336
    assert got == expected


def test_tracker_output_shapes(tracker_run):
    query, (coord_preds, vis, conf) = tracker_run
    assert isinstance(coord_preds, list) and len(coord_preds) == 1
    coords = coord_preds[0]
    assert coords.shape == (2, 3, 3, 2)
    assert torch.isfinite(coords).all()
    torch.testing.assert_close(coords[:, 0], query, rtol=0, atol=1e-5)
    assert vis.shape == (2, 3, 3)
    assert conf.shape == (2, 3, 3)
    assert ((vis > 0) & (vis < 1)).all()
    assert ((conf > 0) & (conf < 1)).all()


def test_first_frame_equals_query_points():
    torch.manual_seed(2)
    model = BaseTrackerPredictor(
        stride=2, corr_levels=3, corr_radius=2, latent_dim=32, hidden_size=64, depth=2
    ).eval()
    g = torch.Generator().manual_seed(3)
    fmaps = torch.randn(2, 4, 32, 24, 20, generator=g)
    query = torch.rand(2, 6, 2, generator=g) * torch.tensor([39.0, 47.0])
    with torch.no_grad():
        coord_preds, vis, conf = model(query_points=query, fmaps=fmaps, iters=3)
    assert len(coord_preds) == 3
    for coords in coord_preds:
        assert coords.shape == (2, 4, 6, 2)
        torch.testing.assert_close(coords[:, 0], query, rtol=0, atol=1e-5)
        assert not torch.allclose(coords[:, 1:], query[:, None], atol=1e-3)
    assert vis.shape == conf.shape == (2, 4, 6)


def test_tracker_batch_and_point_order_consistency():
    torch.manual_seed(7)
    model = BaseTrackerPredictor(
        stride=2, corr_levels=3, corr_radius=2, latent_dim=32, hidden_size=64, depth=2
    ).eval()
    g = torch.Generator().manual_seed(8)
    fmaps = torch.randn(3, 4, 32, 24, 20, generator=g)
    query = torch.rand(3, 6, 2, generator=g) * torch.tensor([39.0, 47.0])
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        coords, vis, conf = model(query_points=query, fmaps=fmaps, iters=2)
        for b in range(3):
            c1, v1, f1 = model(query_points=query[b : b + 1], fmaps=fmaps[b : b + 1], iters=2)
            torch.testing.assert_close(c1[-1][0], coords[-1][b], rtol=0, atol=1e-4)
            torch.testing.assert_close(v1[0], vis[b], rtol=0, atol=1e-4)
            torch.testing.assert_close(f1[0], conf[b], rtol=0, atol=1e-4)
        cp, vp, _ = model(query_points=query[:, perm], fmaps=fmaps, iters=2)
    torch.testing.assert_close(cp[-1], coords[-1][:, :, perm], rtol=0, atol=1e-4)
    torch.testing.assert_close(vp, vis[:, :, perm], rtol=0, atol=1e-4)


def test_tracker_fake_tensor_forward():
    with FakeTensorMode():
        model = BaseTrackerPredictor(**VGGT_TRACKER_KWARGS)
        fmaps = torch.empty(2, 3, 128, 64, 64)
        query = torch.empty(2, 5, 2)
        coord_preds, vis, conf = model(query_points=query, fmaps=fmaps, iters=1)
    assert len(coord_preds) == 1
    assert coord_preds[0].shape == (2, 3, 5, 2)
    assert vis.shape == (2, 3, 5)
    assert conf.shape == (2, 3, 5)


def test_get_2d_embedding_hand_value():
    xy = torch.tensor([[[0.25, -1.5]]])
    C = 8
    out = get_2d_embedding(xy, C, cat_coords=False)
    assert out.shape == (1, 1, 2 * C)
    freqs = [2 * k * 1000.0 / C for k in range(C // 2)]  # 0, 250, 500, 750
    expected = []
    for value in (0.25, -1.5):
        for f in freqs:
            expected += [math.sin(value * f), math.cos(value * f)]
    torch.testing.assert_close(out[0, 0], torch.tensor(expected), rtol=0, atol=1e-5)

    with_coords = get_2d_embedding(xy, C, cat_coords=True)
    assert with_coords.shape == (1, 1, 2 * C + 2)
    assert torch.equal(with_coords[..., :2], xy)
    assert torch.equal(with_coords[..., 2:], out)


def test_get_2d_sincos_pos_embed_hand_value():
    D, HH, WW = 8, 3, 5
    pe = get_2d_sincos_pos_embed(D, grid_size=(HH, WW))
    assert pe.shape == (1, D, HH, WW)
    assert pe.dtype == torch.float32
    row, col = 2, 3
    omegas = [1.0 / 10000 ** (k / 2.0) for k in range(2)]
    expected = []
    for pos in (col, row):  # first half encodes x (the column), second half y (the row)
        expected += [math.sin(pos * w) for w in omegas] + [math.cos(pos * w) for w in omegas]
    torch.testing.assert_close(pe[0, :, row, col], torch.tensor(expected), rtol=0, atol=1e-7)


def test_bilinear_sampler_integer_pixels_and_border():
    image = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4) * 1.5 + 0.25
    coords = torch.tensor([[[[2.0, 1.0], [0.0, 0.0], [3.0, 2.0], [-5.0, 1.0], [10.0, 10.0]]]])
    out = bilinear_sampler(image, coords)
    assert out.shape == (1, 1, 1, 5)
    got = out[0, 0, 0]
    assert got[0] == image[0, 0, 1, 2]
    assert got[1] == image[0, 0, 0, 0]
    assert got[2] == image[0, 0, 2, 3]
    assert got[3] == image[0, 0, 1, 0]  # x clamped to the left border
    assert got[4] == image[0, 0, 2, 3]  # both clamped to the bottom-right corner
    half = bilinear_sampler(image, torch.tensor([[[[0.5, 0.0]]]]))
    torch.testing.assert_close(half[0, 0, 0, 0], (image[0, 0, 0, 0] + image[0, 0, 0, 1]) / 2)


def test_bilinear_sampler_zeros_padding():
    image = torch.ones(1, 1, 4, 4)
    out = bilinear_sampler(image, torch.tensor([[[[-3.0, 1.0], [1.0, 1.0]]]]), padding_mode="zeros")
    assert out[0, 0, 0, 0] == 0
    assert out[0, 0, 0, 1] == 1


def test_sample_features4d_layout():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 6, 5, 7, generator=g)
    coords = torch.tensor(
        [[[1.0, 2.0], [6.0, 0.0], [3.0, 4.0]], [[0.0, 0.0], [2.0, 3.0], [5.0, 1.0]]]
    )
    out = sample_features4d(feats, coords)
    assert out.shape == (2, 3, 6)
    for b in range(2):
        for r in range(3):
            x, y = (int(v) for v in coords[b, r])
            torch.testing.assert_close(out[b, r], feats[b, :, y, x])


def test_attn_block_residual_starts_from_normalised_input():
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    block = AttnBlock(16, 2).eval()
    _randomise_norms(block, g)
    x = torch.randn(3, 5, 16, generator=g)
    with torch.no_grad():
        out = block(x)
        h = block.norm1(x)
        h = h + block.attn(h, h, h)[0]
        expected = h + block.mlp(block.norm2(h))
        n = block.norm1(x)
        raw = x + block.attn(n, n, n)[0]
        raw = raw + block.mlp(block.norm2(raw))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert (out - raw).abs().max() > 1e-2


def test_cross_attn_block_residual_starts_from_normalised_input():
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    block = CrossAttnBlock(16, 16, num_heads=2).eval()
    _randomise_norms(block, g)
    x = torch.randn(2, 4, 16, generator=g)
    ctx = torch.randn(2, 7, 16, generator=g)
    with torch.no_grad():
        out = block(x, ctx)
        h = block.norm1(x)
        c = block.norm_context(ctx)
        h = h + block.cross_attn(h, c, c)[0]
        expected = h + block.mlp(block.norm2(h))
    assert out.shape == (2, 4, 16)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_update_former_shapes_and_virtual_track_name():
    torch.manual_seed(6)
    former = EfficientUpdateFormer(
        space_depth=2,
        time_depth=2,
        input_dim=20,
        hidden_size=16,
        num_heads=2,
        output_dim=6,
        num_virtual_tracks=3,
    ).eval()
    assert "virual_tracks" in dict(former.named_parameters())
    assert former.virual_tracks.shape == (1, 3, 1, 16)
    with torch.no_grad():
        flow, extra = former(torch.randn(2, 5, 4, 20))
    assert flow.shape == (2, 5, 4, 6)
    assert extra is None


def test_corr_block_window_is_x_offset_major():
    H, W, r = 16, 16, 2
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
    )
    fmaps = (xs + 100.0 * ys).reshape(1, 1, 1, H, W)
    block = CorrBlock(fmaps, num_levels=2, radius=r)
    levels = block.pyramid(slice(0, 1))
    assert [tuple(f.shape) for f in levels] == [(1, 1, 1, 16, 16), (1, 1, 1, 8, 8)]
    targets = torch.ones(1, 1, 1, 1)
    cx, cy = 7.0, 5.0
    out = block.corr_sample(targets, torch.tensor([[[[cx, cy]]]]))
    width = 2 * r + 1
    assert out.shape == (1, 1, 1, 2 * width * width)
    window = out[0, 0, 0, : width * width].reshape(width, width)
    lin = torch.linspace(-r, r, width)
    expected = (cx + lin)[:, None] + 100.0 * (cy + lin)[None, :]
    torch.testing.assert_close(window, expected, rtol=0, atol=1e-3)


def test_track_head_validates_query_points():
    head = track_head.TrackHead(dim_in=32).eval()
    images = torch.zeros(2, 3, 3, 140, 140)
    bad = {
        "missing": None,
        "2-D": torch.zeros(5, 2),
        "three coordinates": torch.zeros(2, 5, 3),
        "batch mismatch": torch.zeros(1, 5, 2),
    }
    for query in bad.values():
        with pytest.raises(ValueError, match="query_points"):
            head([], images, 5, query_points=query)


def test_track_head_fake_tensor_forward():
    with FakeTensorMode():
        head = track_head.TrackHead(dim_in=64)
        tokens = [torch.empty(1, 2, 5 + 100, 64) for _ in range(24)]
        images = torch.empty(1, 2, 3, 140, 140)
        coord_preds, vis, conf = head(tokens, images, 5, query_points=torch.empty(1, 8, 2))
    assert len(coord_preds) == 4
    assert coord_preds[-1].shape == (1, 2, 8, 2)
    assert vis.shape == conf.shape == (1, 2, 8)


def test_correlations_sampled_in_frame_chunks_equal_one_pass(monkeypatch):
    torch.manual_seed(0)
    fmaps = torch.randn(2, 5, 8, 16, 12)
    targets, coords = torch.randn(2, 5, 3, 8), torch.rand(2, 5, 3, 2) * 12
    whole = CorrBlock(fmaps, num_levels=3, radius=2).corr_sample(targets, coords)
    # Room for two frames' volumes at a time (2 x 3 x 16 x 12 elements each): chunks 2, 2, 1.
    monkeypatch.setattr(blocks, "CORR_ELEMENTS", 2 * 2 * 3 * 16 * 12)
    chunked = CorrBlock(fmaps, num_levels=3, radius=2).corr_sample(targets, coords)
    assert chunked.shape == (2, 5, 3, 3 * 5 * 5)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
