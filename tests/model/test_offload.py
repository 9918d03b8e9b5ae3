"""Kept layers offloaded to host memory: same predictions, each byte copied out and back once,
host memory of the kept bytes only, released after use; on CUDA, no pageable copies and no
synchronisation inside the block loop."""

import gc
import weakref

import pytest
import torch

from tests.support.compare import assert_same_predictions
from tests.support.configs import SMALL_VGGT
from tests.support.images import seeded_images
from vggt.models.vggt_vram_optimized import VGGTOptimized
from vggt.streaming import offload
from vggt.streaming.offload import OffloadedLayer

QUERY_POINTS = torch.tensor([[[10.0, 20.0], [70.0, 90.0], [130.0, 5.0]]])
# 11 frames make two chunks of the heads' 8-frame passes: one full, one partial.
FRAMES = 11


def paired_models(device: torch.device, **config) -> tuple[VGGTOptimized, VGGTOptimized]:
    torch.manual_seed(0)
    on_device = VGGTOptimized(**SMALL_VGGT, **config).to(device).eval()
    offloaded = VGGTOptimized(**SMALL_VGGT, **config, offload_outputs=True).to(device).eval()
    offloaded.load_state_dict(on_device.state_dict())
    return on_device, offloaded


@pytest.mark.parametrize("batch", [1, 2])
def test_offloaded_predictions_equal_on_device_ones(batch: int) -> None:
    on_device, offloaded = paired_models(torch.device("cpu"))
    images = seeded_images(batch, FRAMES, 140, 140)
    points = QUERY_POINTS.expand(batch, -1, -1)
    with torch.no_grad():
        expected = on_device(images, query_points=points)
        actual = offloaded(images, query_points=points)
    assert_same_predictions(actual, expected)


def test_each_kept_byte_leaves_and_returns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _, model = paired_models(torch.device("cpu"))
    images = seeded_images(2, FRAMES, 56, 70)
    tokens = 5 + 4 * 5
    half = 2 * FRAMES * tokens * 32 * 4  # one [B, S, P, C] float32 half
    monkeypatch.setattr(offload, "COPY_PIECE_BYTES", half // 3)
    with torch.no_grad():
        view, start = model.aggregate(images)
        model.predict(view, images, start, None)
    store = view[1].store
    kept = len(view.orig_indices)
    out, back = store.transfers.device_to_host, store.transfers.host_to_device
    assert sum(out) == sum(back) == kept * 2 * half
    # each half leaves in 4 contiguous pieces (a third of its bytes, rounded to whole tokens)
    assert len(out) == kept * 2 * 4 and max(out) <= half // 3
    # back: per frame chunk (8 + 3 frames), kept layer, half and batch element, one copy
    assert len(back) == 2 * kept * 2 * 2
    assert sorted(set(back)) == [3 * tokens * 32 * 4, 8 * tokens * 32 * 4]
    assert kept * 2 * half <= store.memory.numel() <= 1.05 * kept * 2 * half


def test_host_memory_is_released_with_the_view() -> None:
    _, model = paired_models(torch.device("cpu"))
    with torch.no_grad():
        view, _, _ = model.aggregator(seeded_images(1, 3, 56, 56))
    assert all(isinstance(layer, OffloadedLayer) for _, layer in view.items())
    store = weakref.ref(view[5].store)
    del view
    gc.collect()
    assert store() is None


def test_offloaded_layers_are_not_silently_copied_whole() -> None:
    _, model = paired_models(torch.device("cpu"))
    with torch.no_grad():
        view, _, _ = model.aggregator(seeded_images(1, 3, 56, 56))
    layer = view[5]
    assert layer.shape == (1, 3, 21, 64)
    with pytest.raises(AttributeError):
        layer.mean()
    frames, _ = layer.read_frames(1, 3)
    torch.testing.assert_close(frames[..., :32], layer.host[0, :, 1:3], rtol=0, atol=0)


def test_training_keeps_layers_on_the_device() -> None:
    _, model = paired_models(torch.device("cpu"), enable_track=False)
    model.train()
    view, _ = model.aggregate(seeded_images(1, 2, 56, 56))
    assert isinstance(view[5], torch.Tensor) and view[5].requires_grad


@pytest.mark.gpu
def test_cuda_offload_is_pinned_asynchronous_and_exact() -> None:
    device = torch.device("cuda")
    on_device, offloaded = paired_models(device)
    images = seeded_images(1, FRAMES, 140, 140).to(device)
    points = QUERY_POINTS.to(device)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.no_grad():
        expected = on_device(images, query_points=points)
        offloaded(images, query_points=points)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=activities) as profile:
            view, start, _ = offloaded.aggregator(images)
            torch.cuda.synchronize()
        actual = offloaded.predict(view, images, start, points)
    assert view[1].host.is_pinned()
    assert view[1].store.pinned_bytes <= 1.05 * 4 * view[1].host.numel() * 4 + 4096
    assert_same_predictions({**actual, "images": images}, expected)
    events = profile.events()
    copies_out = [e.name for e in events if "DtoH" in e.name]
    assert copies_out and all("Pinned" in name for name in copies_out), copies_out
    loop = next(e for e in events if e.name == "aggregator.blocks")
    host_calls = [
        e.name
        for e in events
        if loop.time_range.start <= e.time_range.start < loop.time_range.end
        and e.device_type == torch.autograd.DeviceType.CPU
    ]
    assert "cudaMemcpyAsync" in host_calls
    assert not [name for name in host_calls if "Synchronize" in name]
